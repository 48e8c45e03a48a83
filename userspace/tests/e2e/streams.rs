//! Shared by the tests that stream traffic across a cluster while its keys change (rotation,
//! re-keying): sequence-numbered UDP streams between pods, a capture of everything the nodes put
//! on the wire, the agents, their status, and the SAs the kernel holds.

use std::{
    collections::BTreeMap,
    net::UdpSocket,
    process::Child,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    cluster::{self, Node},
    support::{self, Netns},
    wire::{Capture, Packet},
};

/// The result of one stream.
pub struct Streamed {
    pub sent: u32,
    pub received: usize,
    pub duplicates: usize,
}

impl Streamed {
    pub fn lost(&self) -> usize {
        self.sent as usize - self.received
    }
}

/// A stream of sequence-numbered datagrams at `rate` per second for `seconds` from the pod of
/// `from` to the pod of `to`.
pub fn stream(from: &Node, to: &Node, port: u16, rate: u32, seconds: u32) -> Streamed {
    let (src, dst) = (from.pod_ip, to.pod_ip);
    let receiver = to.pod.run(move || UdpSocket::bind((dst, port)).unwrap());
    support::set_receive_buffer(&receiver, 16 << 20);
    receiver
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let sender = from.pod.run(move || UdpSocket::bind((src, 0)).unwrap());
    thread::scope(|s| {
        let received = s.spawn(|| {
            let mut seen: BTreeMap<u32, usize> = BTreeMap::new();
            let mut buf = [0u8; 4];
            while let Ok(n) = receiver.recv(&mut buf) {
                if n == 4 {
                    *seen.entry(u32::from_be_bytes(buf)).or_default() += 1;
                }
            }
            (seen.len(), seen.values().map(|c| c - 1).sum::<usize>())
        });
        let start = Instant::now();
        let mut sent = 0;
        for seq in 0..rate * seconds {
            let due = start + Duration::from_secs(1) * seq / rate;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            if sender.send_to(&seq.to_be_bytes(), (dst, port)).is_ok() {
                sent += 1;
            }
        }
        let (received, duplicates) = received.join().unwrap();
        Streamed {
            sent,
            received,
            duplicates,
        }
    })
}

/// Captures on every node's wire side, drained as packets come (tens of thousands outgrow a
/// capture socket's buffer), until dropped.
pub struct Wire {
    done: Arc<AtomicBool>,
    drain: Option<thread::JoinHandle<Vec<Packet>>>,
}

impl Wire {
    pub fn start(nodes: &[&Node]) -> Wire {
        let captures: Vec<Capture> = nodes
            .iter()
            .map(|n| Capture::start(&n.netns, "eth0"))
            .collect();
        let done = Arc::new(AtomicBool::new(false));
        let stop = done.clone();
        let drain = thread::spawn(move || {
            let mut packets = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                captures.iter().for_each(|c| packets.extend(c.take()));
                thread::sleep(Duration::from_millis(100));
            }
            captures.iter().for_each(|c| packets.extend(c.take()));
            packets
        });
        Wire {
            done,
            drain: Some(drain),
        }
    }

    /// Everything every node sent on the wire since the start.
    pub fn stop(mut self) -> Vec<Packet> {
        self.done.store(true, Ordering::Relaxed);
        self.drain.take().unwrap().join().unwrap()
    }
}

/// The SPIs of the ESP packets from `from` to `to` on the wire, one per packet, in the order
/// `from` sent them.
pub fn spis_on_wire(packets: &[Packet], from: &Node, to: &Node) -> Vec<u32> {
    packets
        .iter()
        .filter(|p| p.is_esp() && p.src == from.wire_ip && p.dst == to.wire_ip)
        .filter_map(|p| p.spi)
        .collect()
}

/// Plaintext pod packets on the wire: UDP whose outer destination is a pod.
pub fn plaintext(packets: &[Packet], nodes: &[&Node]) -> usize {
    packets
        .iter()
        .filter(|p| nodes.iter().any(|n| p.is_udp_to(n.pod_ip)))
        .count()
}

/// One SA as `ip xfrm state show` prints it.
pub struct Sa {
    pub spi: u32,
    /// 0 when `ip` prints none.
    pub reqid: u32,
    /// The words after `flag`: `["af-unspec", "esn"]`.
    pub flags: Vec<String>,
}

/// Every SA in `netns`, xsteer's or not, from `ip xfrm state show`.
pub fn sas(netns: &Netns) -> Vec<Sa> {
    let text = netns.ip(&["xfrm", "state", "show"]);
    let mut sas: Vec<Sa> = Vec::new();
    for line in text.lines() {
        // Each SA starts with an unindented `src A dst B` line.
        if line.starts_with("src ") {
            sas.push(Sa {
                spi: 0,
                reqid: 0,
                flags: Vec::new(),
            });
            continue;
        }
        let Some(sa) = sas.last_mut() else { continue };
        let words: Vec<&str> = line.split_whitespace().collect();
        for w in words.windows(2) {
            match w[0] {
                "spi" => {
                    if let Ok(spi) = u32::from_str_radix(w[1].trim_start_matches("0x"), 16) {
                        sa.spi = spi;
                    }
                }
                "reqid" => sa.reqid = w[1].parse().unwrap_or(0),
                _ => {}
            }
        }
        if let Some(at) = words.iter().position(|w| *w == "flag") {
            sa.flags = words[at + 1..].iter().map(|w| (*w).to_owned()).collect();
        }
    }
    sas
}

/// Starts `xsteer agent EXTRA..` on every node in `nodes`.
pub fn start_agents(nodes: &[&Node], extra: &[&str]) -> Vec<Child> {
    nodes.iter().map(|n| n.start_agent_with(extra)).collect()
}

pub fn stop(agents: &mut [Child]) {
    for agent in agents {
        let _ = agent.kill();
        let _ = agent.wait();
    }
}

/// The agent logs of `nodes`, each under its node's name.
pub fn agent_logs(nodes: &[&Node]) -> String {
    nodes
        .iter()
        .map(|n| format!("{}:\n{}", n.name, n.agent_log()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where a packet can be dropped on each of `nodes`, for a loss to be traced: the links'
/// counters and the kernel's xfrm error counters, then the backlog drops of every CPU.
pub fn drop_counters(nodes: &[&Node]) -> String {
    nodes
        .iter()
        .map(|n| {
            let xfrm_stat = n.netns.run(|| {
                std::process::Command::new("cat")
                    .arg("/proc/net/xfrm_stat")
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            });
            let errors: Vec<&str> = xfrm_stat
                .lines()
                .filter(|l| l.split_whitespace().nth(1).is_some_and(|v| v != "0"))
                .collect();
            let udp = n.pod.run(support::udp_errors);
            format!(
                "{}: xfrm errors {errors:?}, pod UDP errors {udp:?}\n{}",
                n.name,
                n.netns.ip(&["-s", "link", "show"])
            )
        })
        .chain(std::iter::once(format!(
            "softnet_stat (per CPU: processed, dropped, ...):\n{}",
            std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default()
        )))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `xsteer status --output json` of `node`.
pub fn status(node: &Node) -> serde_json::Value {
    let mut command = node.xsteer("status", &["--output", "json"]);
    let out = node.netns.run(move || command.output().unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every ordered pair of `nodes` exchanges a datagram within 30 s (each has learned the others).
pub fn connected(nodes: &[&Node], port: u16) {
    for from in nodes {
        for to in nodes.iter().filter(|n| n.id != from.id) {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut got = 0;
            while got == 0 && Instant::now() < deadline {
                got = cluster::exchange(
                    (&from.pod, from.pod_ip),
                    (&to.pod, to.pod_ip),
                    port,
                    1,
                    Duration::from_secs(1),
                );
            }
            assert_eq!(
                got,
                1,
                "{} -> {} never connected\n{}:\n{}\n{}\n{}:\n{}\n{}",
                from.name,
                to.name,
                from.name,
                from.agent_log(),
                from.kernel_state(),
                to.name,
                to.agent_log(),
                to.kernel_state()
            );
        }
    }
}
