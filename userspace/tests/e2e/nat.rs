//! ESP in UDP through NAT, end to end: the lab with node3 behind a masquerading router
//! (`xsteer lab up --nat node3`) that maps its ESP in UDP from port 4500 to 4501 and forgets
//! an idle UDP mapping after 30 s. Every agent speaks ESP in UDP.
//!
//! 1. every cross-node pod pair over ICMP, TCP and UDP works, node3's included; on the wire,
//!    captured on both sides of the router, no pod packet in plaintext and no bare ESP at all,
//!    to or from node3 or elsewhere; node3's SAs carry traffic to both peers;
//! 2. left idle for longer than the router keeps a mapping, node3 is still reachable from a
//!    pod of node1 at once: the kernel's NAT keepalives kept the mapping open, and the peers'
//!    guards counted them;
//! 3. a key rotation under streams to and from node3 loses nothing, and the senders' ESP in UDP
//!    moves from the old generation to the new, on both sides of the NAT;
//! 4. ESP in UDP with an SPI no peer may use, and plaintext from a remote pod, injected towards
//!    node1 from the router's address, are dropped by its guard and counted.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use xsteer::lab::{
    self, agents,
    capture::{Capture, IpPacket},
    netns,
    probe::{self, ECHO_PORT, Proto},
    topology::{self, LabNode},
};
use xsteer_common::counters::Counter;

use crate::labs::{self, xsteer};

const DIR: &str = "/tmp/xsteer-e2e-nat";

/// A lab of three nodes with two pods each, node3 behind NAT; taken down when dropped.
struct Lab {
    dir: PathBuf,
    nodes: Vec<LabNode>,
}

impl Lab {
    fn up() -> Lab {
        let dir = PathBuf::from(DIR);
        let _ = lab::down(&dir);
        let (ok, text) = xsteer(&[
            "lab", "up", "--nodes", "3", "--pods", "2", "--nat", "node3", "--dir", DIR,
        ]);
        assert!(ok, "lab up --nat node3:\n{text}");
        assert!(text.contains("node3 behind NAT (ESP in UDP)"), "{text}");
        let nodes = lab::existing(&dir).unwrap();
        assert!(nodes[2].nat && !nodes[0].nat && !nodes[1].nat);
        Lab { dir, nodes }
    }

    fn counter(&self, node: usize, counter: Counter) -> u64 {
        labs::counter(&self.nodes[node], counter)
    }

    fn agent_logs(&self) -> String {
        labs::agent_logs(&self.dir, &self.nodes)
    }

    /// What each node and node3's router send, on both sides of the router.
    fn capture(&self) -> Vec<Capture> {
        let router = self.nodes[2].router_netns().unwrap();
        let mut captures: Vec<Capture> = self
            .nodes
            .iter()
            .map(|n| Capture::start(&n.netns, "eth0").unwrap())
            .collect();
        captures.push(Capture::start(&router, "wan").unwrap());
        captures.push(Capture::start(&router, "lan").unwrap());
        captures
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = lab::down(&self.dir);
    }
}

/// `xsteer status` of `node`, run in its namespace.
fn status_of(node: &LabNode) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xsteer"));
    command.args([
        "status",
        "--config",
        &format!("{DIR}/{}/xsteer.toml", node.name),
        "--pin-dir",
        agents::pin_dir(&node.name).to_str().unwrap(),
        "--state-dir",
        &format!("{DIR}/{}/state", node.name),
    ]);
    netns::command_in(&mut command, &node.netns, false).unwrap();
    let out = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "xsteer status:\n{text}");
    text
}

/// The figure just before `label` in `text`, e.g. `3` before "ESP in UDP" in "3 ESP in UDP".
fn figure_before(text: &str, label: &str) -> usize {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("{label:?} not in:\n{text}"));
    text[..at]
        .split_whitespace()
        .last()
        .and_then(|word| word.parse().ok())
        .unwrap_or_else(|| panic!("no figure before {label:?} in:\n{text}"))
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn through_a_nat_every_pair_talks_esp_in_udp_idle_mappings_stay_and_rotation_loses_nothing() {
    let lab = Lab::up();

    // 1. Every pair, the wire on both sides of the router.
    let (ok, text) = xsteer(&["lab", "test", "--dir", DIR]);
    eprintln!("{text}");
    assert!(ok, "lab test:\n{text}\n{}", lab.agent_logs());
    for proto in ["icmp", "tcp ", "udp "] {
        assert!(text.contains(&format!("over {proto}: 24/24 ok")), "{text}");
    }
    assert!(text.trim_end().ends_with("plaintext packets: 0"), "{text}");
    assert_eq!(
        figure_before(&text, "ESP, "),
        0,
        "no bare ESP anywhere:\n{text}"
    );
    assert!(figure_before(&text, "ESP in UDP, ") > 0, "{text}");
    assert_eq!(figure_before(&text, "plain ESP"), 0, "{text}");
    // "node3 sent over its SAs to: node1 N, node2 M": both through the NAT.
    let sas = text
        .lines()
        .find(|l| l.contains("node3 sent over its SAs to:"))
        .unwrap();
    for peer in ["node1", "node2"] {
        let packets: u64 = sas
            .split(&format!("{peer} "))
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no count for {peer} in {sas:?}"));
        assert!(packets > 0, "{sas}");
    }

    // What an operator sees on node1: where node3's ESP goes, and ESP in UDP accepted.
    let status = status_of(&lab.nodes[0]);
    assert!(
        status
            .lines()
            .any(|l| l.trim() == "node3            192.168.100.3:4501"),
        "xsteer status on node1:\n{status}"
    );
    assert!(
        lab.counter(0, Counter::IngressUdpEspAccepted) > 0,
        "{status}"
    );
    assert_eq!(lab.counter(0, Counter::IngressEspAccepted), 0, "{status}");

    // 2. Idle past the router's UDP timeout; then node1 opens a flow to node3 first.
    let keepalives_before = lab.counter(0, Counter::IngressKeepaliveDropped);
    let idle = Duration::from_secs(u64::from(topology::NAT_UDP_TIMEOUT_S) + 15);
    eprintln!("idle for {} s", idle.as_secs());
    thread::sleep(idle);
    let keepalives = lab.counter(0, Counter::IngressKeepaliveDropped) - keepalives_before;
    // Echo servers in every node's first pod, for this probe and the streams below.
    let firsts: Vec<_> = lab.nodes.iter().map(|n| n.pods[0].clone()).collect();
    let _servers = probe::serve(&firsts).unwrap();
    let from = firsts[0].clone();
    let to = IpAddr::from(firsts[2].ip);
    let started = Instant::now();
    let reached = probe::check_to(&from, to, Proto::Udp);
    eprintln!(
        "after {} s idle: {keepalives} NAT keepalives from node3 reached node1's guard; \
         node1's pod -> node3's pod: {reached:?} in {:?}",
        idle.as_secs(),
        started.elapsed()
    );
    assert!(keepalives > 0, "no keepalive in {} s", idle.as_secs());
    reached.unwrap_or_else(|e| panic!("node3 unreachable after idling: {e:#}"));

    // 3. A rotation under streams to and from node3.
    const RATE: u32 = 200;
    const STREAM: Duration = Duration::from_secs(14);
    let captures = lab.capture();
    let key_file = format!("{DIR}/keys");
    let pairs = [(0, 2), (2, 1)];
    let streams: Vec<_> = pairs
        .iter()
        .map(|&(i, j)| (firsts[i].clone(), IpAddr::from(firsts[j].ip)))
        .collect();
    let reports: Vec<(usize, usize, probe::StreamReport)> = pairs
        .into_iter()
        .zip(labs::streams_through_a_rotation(
            &streams, RATE, STREAM, &key_file,
        ))
        .map(|((i, j), report)| (i, j, report))
        .collect();
    // Per capture: node1's, node2's and node3's uplinks, then the router's two sides.
    let seen: Vec<Vec<IpPacket>> = captures.iter().map(|c| c.take_all().unwrap()).collect();
    let packets: Vec<IpPacket> = seen.iter().flatten().cloned().collect();
    let census = lab::census_all(&packets);
    let nat = lab::nat_census(&lab.nodes, &packets).unwrap();
    // The generations node `from` sent ESP in UDP to `to` under, in order (on its uplink).
    let generations = |from: usize, to: usize| {
        let to = lab.nodes[to].ip;
        let mut order: Vec<u32> = seen[from]
            .iter()
            .filter_map(|p| match p {
                IpPacket::V4(p) if p.dst == to => p.esp_in_udp_spi(&[4500, topology::NAT_PORT]),
                _ => None,
            })
            .map(|spi| spi & 0xF)
            .collect();
        order.dedup();
        order
    };
    // node1 to node3's NAT, node3 (before its NAT) to node2.
    let (node1_sent, node3_sent) = (generations(0, 2), generations(2, 1));
    for (i, j, report) in &reports {
        eprintln!(
            "{} -> {} through the NAT at {RATE}/s: {} sent, {} lost",
            lab.nodes[*i].name,
            lab.nodes[*j].name,
            report.sent,
            report.lost()
        );
    }
    eprintln!(
        "during the rotation: {census:?}; around the NAT: {nat:?}; generations sent in UDP by \
         node1 to node3 {node1_sent:?}, by node3 to node2 {node3_sent:?}"
    );
    assert_eq!(census.plaintext_total(), 0, "{census:?}");
    assert_eq!((census.esp, nat.plain_esp), (0, 0), "{census:?} {nat:?}");
    assert_eq!(node1_sent, [1, 2]);
    assert_eq!(node3_sent, [1, 2]);
    for (i, j, report) in &reports {
        assert!(report.sent >= u64::from(RATE) * 10, "{report:?}");
        assert_eq!(
            report.lost(),
            0,
            "{} -> {}\n{}",
            lab.nodes[*i].name,
            lab.nodes[*j].name,
            lab.agent_logs()
        );
    }
}

/// An Ethernet frame from `from_mac` to `to_mac` with an IPv4 header (checksum filled in)
/// around `payload` of `protocol`.
fn ipv4_frame(
    to_mac: [u8; 6],
    from_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&(20 + payload.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0, 0, 64, protocol, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let mut sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    ip.extend_from_slice(payload);
    let mut frame = to_mac.to_vec();
    frame.extend_from_slice(&from_mac);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend(ip);
    frame
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = sport.to_be_bytes().to_vec();
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn the_guard_drops_esp_in_udp_with_a_bad_spi_and_plaintext_from_pods_through_the_nat() {
    let lab = Lab::up();
    let (node1, node3) = (&lab.nodes[0], &lab.nodes[2]);
    let router = node3.router_netns().unwrap();
    let (to_mac, from_mac) = (mac(&node1.netns, "eth0"), mac(&router, "wan"));
    let nat_ip = node3.ip;
    // node3's node ID with a generation no key file has, then the SPI of no node at all.
    let bad_spis = [0x0003_0000u32 | 0x3F0 | 0xE, 0xFFFF_FFF0];
    let esp = |spi: u32| {
        let mut esp = spi.to_be_bytes().to_vec();
        esp.extend_from_slice(&1u32.to_be_bytes());
        esp.extend_from_slice(&[0xAB; 48]);
        esp
    };
    let bad: Vec<Vec<u8>> = bad_spis
        .iter()
        .map(|&spi| {
            ipv4_frame(
                to_mac,
                from_mac,
                nat_ip,
                node1.ip,
                17,
                &udp(topology::NAT_PORT, 4500, &esp(spi)),
            )
        })
        .collect();
    let plaintext = ipv4_frame(
        to_mac,
        from_mac,
        node3.pods[0].ip,
        node1.pods[0].ip,
        17,
        &udp(4000, ECHO_PORT, b"plaintext from a pod behind the NAT"),
    );
    let (bad_before, plain_before, accepted_before) = (
        lab.counter(0, Counter::IngressBadSpiDropped),
        lab.counter(0, Counter::IngressPlaintextDropped),
        lab.counter(0, Counter::IngressUdpEspAccepted),
    );
    let frames: Vec<Vec<u8>> = bad
        .iter()
        .cycle()
        .take(6)
        .cloned()
        .chain(std::iter::repeat_n(plaintext, 4))
        .collect();
    netns::run_in(topology::WIRE, move || {
        crate::support::send_frames("node1", &frames);
        Ok(())
    })
    .unwrap();
    thread::sleep(Duration::from_millis(500));
    let bad_dropped = lab.counter(0, Counter::IngressBadSpiDropped) - bad_before;
    let plain_dropped = lab.counter(0, Counter::IngressPlaintextDropped) - plain_before;
    let accepted = lab.counter(0, Counter::IngressUdpEspAccepted) - accepted_before;
    eprintln!(
        "injected towards node1 from the NAT's address: 6 ESP in UDP with bad SPIs -> \
         {bad_dropped} dropped; 4 plaintext from node3's pod -> {plain_dropped} dropped; \
         {accepted} accepted meanwhile (the agents' own traffic)"
    );
    assert_eq!(bad_dropped, 6, "{}", lab.agent_logs());
    assert_eq!(plain_dropped, 4, "{}", lab.agent_logs());
    // The path the frames took is the one real ESP in UDP takes: node3's own gets through.
    let _servers = probe::serve(&node1.pods).unwrap();
    probe::check_to(&node3.pods[0], node1.pods[0].ip.into(), Proto::Udp).unwrap();
    assert!(lab.counter(0, Counter::IngressUdpEspAccepted) > accepted_before);
}

/// The MAC address of `ifname` in the namespace `netns_name`.
fn mac(netns_name: &str, ifname: &str) -> [u8; 6] {
    labs::mac(&netns::ip_in(netns_name, &["link", "show", ifname]).unwrap())
}
