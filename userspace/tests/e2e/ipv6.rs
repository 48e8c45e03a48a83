//! Dual-stack end to end: the lab with `--dual-stack` (three nodes, two pods each, an IPv6 pod
//! CIDR per node beside the IPv4 one, IPv4 node IPs), each test counting on a capture of what
//! the nodes send on the wire:
//!
//! Its ingress guards run at XDP (`--ingress-hook xdp`), the rest of the suite's at tc ingress.
//!
//! 1. every cross-node pod pair over ICMPv6, TCP and UDP on IPv6, and over IPv4 as before, with
//!    0 IPv6 (and IPv4) pod packets in plaintext on the wire;
//! 2. plaintext IPv6 from a remote pod's address, injected on the wire towards a node, is dropped
//!    by its ingress guard (XDP) and counted; the pod never sees it; the same frame from a
//!    node's address (no pod) is delivered, so the path itself works;
//! 3. extension-header chains between pods of different nodes (hop-by-hop, destination options,
//!    fragments of a datagram larger than the MTU, both at once, and a chain of eight
//!    destination options built by hand, past the eBPF walk's bound): each arrives encrypted or
//!    is dropped, 0 plaintext on the wire;
//! 4. neighbour discovery with the guards attached: node to node on the uplink (ULA and
//!    link-local) and pod to its host veth, with NS and NA seen;
//! 5. a key rotation under IPv6 streams on every pair of nodes: nothing lost, the wire moves
//!    from the old generation to the new, nothing in plaintext;
//! 6. IPv6 node IPs (`--ipv6-node-ips`): every pair on both families through ESP over IPv6,
//!    not one ESP packet over IPv4, 0 plaintext; ESP over IPv6 from a peer's address with an SPI
//!    it may not use is dropped by the guard (at tc ingress in this lab) and counted.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv6Addr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use aya::programs::{SchedClassifier, TcAttachType};
use xsteer::lab::{
    self, agents,
    capture::{Capture, IpPacket, Packet6},
    netns,
    probe::{self, Proto},
    topology::{self, LabNode, LabPod, Size, Stack},
};
use xsteer_common::{counters::Counter, programs};

use crate::labs::{self, xsteer};

const DIR: &str = "/tmp/xsteer-e2e-ipv6";

/// A dual-stack lab of three nodes with two pods each, taken down when dropped.
struct Lab {
    dir: PathBuf,
    nodes: Vec<LabNode>,
}

impl Lab {
    /// The dual-stack lab, its ingress guards at XDP: the other labs of the suite run them at tc
    /// ingress, as the agent chooses for a veth uplink, so both hooks are tested end to end.
    fn up() -> Lab {
        Lab::up_with(&["--dual-stack", "--ingress-hook", "xdp"], Stack::Dual)
    }

    /// A lab of `stack`, which `flags` of `xsteer lab up` ask for.
    fn up_with(flags: &[&str], stack: Stack) -> Lab {
        let dir = PathBuf::from(DIR);
        let _ = lab::down(&dir);
        let mut args = vec!["lab", "up", "--nodes", "3", "--pods", "2", "--dir", DIR];
        args.extend(flags);
        let (ok, text) = xsteer(&args);
        assert!(ok, "lab up {flags:?}:\n{text}");
        let nodes = topology::plan_stack(Size { nodes: 3, pods: 2 }, stack);
        assert_eq!(
            lab::existing(&dir).unwrap(),
            nodes,
            "the lab remembers dual-stack"
        );
        Lab { dir, nodes }
    }

    fn pod(&self, node: usize, pod: usize) -> &LabPod {
        &self.nodes[node].pods[pod]
    }

    fn capture(&self) -> Vec<Capture> {
        self.nodes
            .iter()
            .map(|n| Capture::start(&n.netns, "eth0").unwrap())
            .collect()
    }

    fn counter(&self, node: usize, counter: Counter) -> u64 {
        labs::counter(&self.nodes[node], counter)
    }

    fn agent_logs(&self) -> String {
        labs::agent_logs(&self.dir, &self.nodes)
    }

    /// What `ip ARGS` shows in every node, for failure messages.
    fn kernel(&self, args: &[&str]) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "--- {}: ip {} ---\n{}",
                    n.name,
                    args.join(" "),
                    netns::ip_in(&n.netns, args).unwrap_or_else(|e| format!("{e:#}"))
                )
            })
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = lab::down(&self.dir);
    }
}

/// Runs this build's `xsteer` with `args`, inside `netns_name` if given (entered with setns, so
/// bpffs stays visible).
fn xsteer_in(netns_name: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xsteer"));
    command.args(args);
    if let Some(name) = netns_name {
        netns::command_in(&mut command, name, false).unwrap();
    }
    let out = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn take(captures: &[Capture]) -> Vec<IpPacket> {
    captures
        .iter()
        .flat_map(|c| c.take_all().unwrap())
        .collect()
}

fn v6(packets: &[IpPacket]) -> impl Iterator<Item = &Packet6> {
    packets.iter().filter_map(|p| match p {
        IpPacket::V6(p) => Some(p),
        IpPacket::V4(_) => None,
    })
}

/// ESP packets on the wire from node `from` to node `to` (outer IPv4: the node IPs).
fn esp_between(packets: &[IpPacket], from: &LabNode, to: &LabNode) -> Vec<u32> {
    packets
        .iter()
        .filter_map(|p| match p {
            IpPacket::V4(p) if p.is_esp() && p.src == from.ip && p.dst == to.ip => p.spi,
            _ => None,
        })
        .collect()
}

fn ip6(pod: &LabPod) -> Ipv6Addr {
    pod.ip6.expect("a dual-stack pod has IPv6")
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn dual_stack_pods_talk_over_ipv6_and_ipv4_with_nothing_in_plaintext() {
    let lab = Lab::up();
    let (ok, text) = xsteer(&["lab", "status", "--dir", DIR]);
    assert!(
        ok && text.contains("fd00:10:244:2::3"),
        "lab status:\n{text}"
    );

    // The CLI's own test: every pair on both families, and the wire.
    let (ok, text) = xsteer(&["lab", "test", "--dir", DIR]);
    eprintln!("{text}");
    assert!(
        ok,
        "lab test:\n{text}\n{}{}",
        lab.kernel(&["-6", "route", "show", "table", "all"]),
        lab.kernel(&["xfrm", "policy"])
    );
    for proto in ["icmp", "tcp ", "udp "] {
        for over in ["", "IPv6 "] {
            assert!(
                text.contains(&format!("over {over}{proto}: 24/24 ok")),
                "{over}{proto}:\n{text}"
            );
        }
    }
    assert!(text.contains("0 pod packets in plaintext"), "{text}");
    assert!(text.trim_end().ends_with("plaintext packets: 0"), "{text}");

    // Again through the library, IPv6 alone, to count what each pair put on the wire.
    let pods: Vec<LabPod> = lab.nodes.iter().flat_map(|n| n.pods.clone()).collect();
    let _servers = probe::serve(&pods).unwrap();
    let captures = lab.capture();
    let mut pairs = 0;
    let mut failures = Vec::new();
    for from in &pods {
        for to in pods.iter().filter(|to| to.node != from.node) {
            pairs += 1;
            for proto in Proto::ALL {
                if let Err(e) = probe::check6(from, to, proto) {
                    failures.push(format!(
                        "{} {} -> {}: {e:#}",
                        proto.name(),
                        ip6(from),
                        ip6(to)
                    ));
                }
            }
        }
    }
    let packets = take(&captures);
    let census = lab::census_all(&packets);
    eprintln!(
        "IPv6: {pairs} cross-node pairs x 3 protocols, {} failed; on the wire {} ESP, {} other \
         IPv6, {} IPv6 pod packets in plaintext, {} IPv4 pod packets in plaintext",
        failures.len(),
        census.esp,
        census.other6,
        census.plaintext6,
        census.plaintext
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(census.plaintext6, 0, "{census:?}");
    assert_eq!(census.plaintext, 0, "{census:?}");
    // A request and a reply at least per pair and protocol, each ESP.
    assert!(census.esp >= pairs * 3 * 2, "{census:?}");
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum()
}

/// A UDP datagram from `sport` to `dport` with its IPv6 checksum (mandatory over IPv6).
fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let len = 8 + data.len();
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(len as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    let sum = fold(sum16(&pseudo) + sum16(&u));
    u[6..8].copy_from_slice(&if sum == 0 { 0xFFFF } else { sum }.to_be_bytes());
    u
}

/// An IPv6 packet: the fixed header, `chain` extension headers of destination options (8 bytes
/// each, PadN), then `udp`.
fn ipv6_packet(src: Ipv6Addr, dst: Ipv6Addr, chain: usize, udp: &[u8]) -> Vec<u8> {
    const DEST_OPTS: u8 = 60;
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&((chain * 8 + udp.len()) as u16).to_be_bytes());
    p.push(if chain > 0 { DEST_OPTS } else { 17 });
    p.push(64);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    for i in 0..chain {
        let next = if i + 1 < chain { DEST_OPTS } else { 17 };
        p.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    }
    p.extend_from_slice(udp);
    p
}

/// Sends raw Ethernet `frames` out of `ifname` in `netns_name`, past its qdisc.
fn inject(netns_name: &str, ifname: &'static str, frames: Vec<Vec<u8>>) {
    netns::run_in(netns_name, move || {
        crate::support::send_frames(ifname, &frames);
        Ok(())
    })
    .unwrap();
}

/// A UDP socket bound at `pod`'s IPv6 address and `port`, reading with a short timeout.
fn listen6(pod: &LabPod, port: u16) -> UdpSocket {
    let ip = ip6(pod);
    let socket = netns::run_in(&pod.netns, move || Ok(UdpSocket::bind((ip, port))?)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    socket
}

/// Every datagram waiting on `socket`.
fn received(socket: &UdpSocket) -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while let Ok(n) = socket.recv(&mut buf) {
        all.push(buf[..n].to_vec());
    }
    all
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn spoofed_plaintext_ipv6_from_a_remote_pod_is_dropped_at_the_ingress_guard() {
    let lab = Lab::up();
    let (node1, node2) = (&lab.nodes[0], &lab.nodes[1]);
    let target = lab.pod(0, 0);
    let port = 7400;
    let listener = listen6(target, port);
    let (to_mac, from_mac) = (mac(&node1.netns, "eth0"), mac(&node2.netns, "eth0"));
    let frame = |src: Ipv6Addr, tag: &[u8]| {
        let mut f = Vec::new();
        f.extend_from_slice(&to_mac);
        f.extend_from_slice(&from_mac);
        f.extend_from_slice(&0x86ddu16.to_be_bytes());
        f.extend(ipv6_packet(
            src,
            ip6(target),
            0,
            &udp6(src, ip6(target), 4000, port, tag),
        ));
        f
    };
    // From node2's pod: what only a compromised or misconfigured node2 would put on the wire.
    let spoofed = frame(ip6(lab.pod(1, 0)), b"spoofed from a pod");
    // From node2's ULA on the uplink: not a pod address, so the guard lets it by, and node1
    // forwards it to its pod: the injection path delivers.
    let control = frame(node2.ip6.unwrap(), b"from a node");
    let before = lab.counter(0, Counter::IngressPlaintextDropped);
    // Onto node1's port of the wire bridge, towards node1's uplink (XDP).
    inject(topology::WIRE, "node1", vec![spoofed; 5]);
    thread::sleep(Duration::from_millis(500));
    let dropped = lab.counter(0, Counter::IngressPlaintextDropped) - before;
    let after_spoofed = received(&listener);
    inject(topology::WIRE, "node1", vec![control; 3]);
    thread::sleep(Duration::from_millis(500));
    let after_control = received(&listener);
    let control_dropped = lab.counter(0, Counter::IngressPlaintextDropped) - before - dropped;
    let (ok, status) = status_of(node1);
    eprintln!(
        "injected towards node1: 5 plaintext IPv6 datagrams from a pod of node2 -> {dropped} \
         dropped by the ingress guard, {} reached the pod; 3 from node2's ULA -> {} reached \
         the pod, {control_dropped} dropped\nxsteer status on node1 ({ok}):\n{status}",
        after_spoofed.len(),
        after_control.len()
    );
    assert_eq!(
        dropped,
        5,
        "the ingress guard drops and counts each\n{}",
        lab.agent_logs()
    );
    assert!(
        after_spoofed.is_empty(),
        "a spoofed datagram reached the pod"
    );
    assert_eq!(control_dropped, 0);
    assert_eq!(
        after_control.len(),
        3,
        "the same frame from a node address is delivered: the path works"
    );
}

/// `setsockopt(IPPROTO_IPV6, opt)` with an extension header of options.
fn sticky(socket: &UdpSocket, opt: libc::c_int, header: &[u8]) {
    // SAFETY: valid fd, option value of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            opt,
            header.as_ptr().cast(),
            header.len() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt {opt}: {}",
        std::io::Error::last_os_error()
    );
}

/// Sends one IPv6 packet built by hand (the header included) from inside `pod`.
fn send_raw6(pod: &LabPod, dst: Ipv6Addr, packet: Vec<u8>) {
    netns::run_in(&pod.netns, move || {
        // SAFETY: plain socket(2); owned at once. IPPROTO_RAW: the header is ours.
        let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor nobody else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed sockaddr_in6 is valid.
        let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        addr.sin6_family = libc::AF_INET6 as u16;
        addr.sin6_addr.s6_addr = dst.octets();
        // SAFETY: valid buffers of the lengths passed.
        let n = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        };
        assert_eq!(
            n,
            packet.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
        Ok(())
    })
    .unwrap();
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn extension_header_chains_between_nodes_are_encrypted_or_dropped_never_plaintext() {
    const IPV6_HOPOPTS: libc::c_int = 54;
    const IPV6_DSTOPTS: libc::c_int = 59;
    // An options header of PadN only (the kernel fills in its next header).
    const PADN: [u8; 8] = [0, 0, 1, 4, 0, 0, 0, 0];
    let lab = Lab::up();
    let (from, to) = (lab.pod(0, 0), lab.pod(1, 0));
    let (node1, node2) = (&lab.nodes[0], &lab.nodes[1]);
    let captures = lab.capture();
    let leaks_before = lab.counter(0, Counter::EgressLeakDropped);

    // Each case a fresh socket and port; a datagram is tagged with its case and try, and is
    // sent up to 5 times, 300 ms apart, until one arrives (the first of a datagram larger than
    // the path MTU can cost a Packet Too Big before the pod's kernel fragments to fit).
    let big = |tag: &str| {
        let mut d = tag.as_bytes().to_vec();
        d.resize(4000, b'x');
        d
    };
    /// Sticky options, each a socket option and its header.
    type Options = &'static [(libc::c_int, [u8; 8])];
    let cases: [(&str, Options, bool); 4] = [
        ("hop-by-hop", &[(IPV6_HOPOPTS, PADN)], false),
        ("destination options", &[(IPV6_DSTOPTS, PADN)], false),
        ("fragments", &[], true),
        (
            "hop-by-hop + destination options + fragments",
            &[(IPV6_HOPOPTS, PADN), (IPV6_DSTOPTS, PADN)],
            true,
        ),
    ];
    let mut report = Vec::new();
    let mut all = Vec::new();
    for (i, (name, options, large)) in cases.iter().enumerate() {
        let port = 7410 + i as u16;
        let listener = listen6(to, port);
        let src = ip6(from);
        let sender = netns::run_in(&from.netns, move || Ok(UdpSocket::bind((src, 0))?)).unwrap();
        for (opt, header) in options.iter() {
            sticky(&sender, *opt, header);
        }
        let mut arrived = 0;
        let mut tries = 0;
        while tries < 5 && arrived == 0 {
            tries += 1;
            let tag = format!("{name} try {tries}");
            let data = if *large { big(&tag) } else { tag.into_bytes() };
            sender.send_to(&data, (ip6(to), port)).unwrap();
            thread::sleep(Duration::from_millis(300));
            arrived += received(&listener).len();
        }
        let packets = take(&captures);
        let census = lab::census_all(&packets);
        let esp = esp_between(&packets, node1, node2).len();
        let chains: BTreeSet<Vec<u8>> = v6(&packets)
            .filter(|p| p.dst == ip6(to))
            .map(|p| p.ext.clone())
            .collect();
        report.push(format!(
            "{name}: {tries} sent, {arrived} arrived; on the wire {esp} ESP node1 -> node2, {} \
             IPv6 pod packets in plaintext (extension headers seen in clear: {chains:?})",
            census.plaintext6
        ));
        all.push((*name, arrived, esp, census));
    }

    // Eight destination options headers, past the eBPF walk's bound (6), built by hand.
    let port = 7420;
    let listener = listen6(to, port);
    let udp = udp6(ip6(from), ip6(to), 4001, port, b"eight destination options");
    for _ in 0..3 {
        send_raw6(from, ip6(to), ipv6_packet(ip6(from), ip6(to), 8, &udp));
        thread::sleep(Duration::from_millis(300));
    }
    let arrived = received(&listener).len();
    let packets = take(&captures);
    let census = lab::census_all(&packets);
    let esp = esp_between(&packets, node1, node2).len();
    report.push(format!(
        "eight destination options (raw): 3 sent, {arrived} arrived; on the wire {esp} ESP node1 \
         -> node2, {} IPv6 pod packets in plaintext",
        census.plaintext6
    ));
    all.push(("eight destination options", arrived, esp, census));
    let leaks = lab.counter(0, Counter::EgressLeakDropped) - leaks_before;
    eprintln!(
        "{}\nnode1's egress guard dropped {leaks} leaks meanwhile",
        report.join("\n")
    );

    for (name, arrived, esp, census) in &all {
        assert_eq!(
            census.plaintext6, 0,
            "{name}: plaintext on the wire\n{report:#?}"
        );
        assert_eq!(census.plaintext, 0, "{name}\n{report:#?}");
        if *arrived > 0 {
            assert!(*esp > 0, "{name}: arrived, but not as ESP\n{report:#?}");
        }
    }
    // The chains a socket builds must get through, fragments too (within the tries: the first
    // datagram larger than the path MTU costs a Packet Too Big, as the tunnel's overhead makes
    // the path narrower than the pod's 1500): xsteer carries them, not just drops them. The
    // chain past the walk's bound may go either way.
    for (name, arrived, ..) in &all[..4] {
        assert!(
            *arrived > 0,
            "{name}: nothing arrived\n{report:#?}\n{}",
            lab.agent_logs()
        );
    }
}

/// The link-local address of `ifname` in `netns_name`.
fn link_local(netns_name: &str, ifname: &str) -> Ipv6Addr {
    let out = netns::ip_in(
        netns_name,
        &["-6", "addr", "show", "dev", ifname, "scope", "link"],
    )
    .unwrap();
    out.split("inet6 ")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no link-local address in {out}"))
        .parse()
        .unwrap()
}

/// `busybox ping -6` in `netns_name` (busybox-static is in the VM bed; it pings link-local
/// addresses with a zone, which the lab's probe does not).
fn busybox_ping6(netns_name: &str, target: &str) -> (bool, String) {
    let mut command = Command::new("busybox");
    command.args(["ping", "-6", "-c", "2", "-W", "3", target]);
    netns::command_in(&mut command, netns_name, false).unwrap();
    let out = command.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn neighbour_discovery_works_with_the_guards_attached() {
    let lab = Lab::up();
    let (node1, node2) = (&lab.nodes[0], &lab.nodes[1]);
    for node in [node1, node2] {
        let link = netns::ip_in(&node.netns, &["-d", "link", "show", "eth0"]).unwrap();
        assert!(
            link.contains("xdp"),
            "{}: no ingress guard: {link}",
            node.name
        );
    }
    let captures = lab.capture();

    // Node to node on the uplink: the ULA, then the link-local address, each after the
    // neighbour caches are flushed, so that NS and NA must cross the guards.
    let ula = node2.ip6.unwrap();
    let link_local2 = link_local(&node2.netns, "eth0");
    for node in [node1, node2] {
        netns::ip_in(&node.netns, &["-6", "neigh", "flush", "dev", "eth0"]).unwrap();
    }
    netns::run_in(&node1.netns, move || probe::reach(ula, 0, Proto::Icmp)).unwrap();
    for node in [node1, node2] {
        netns::ip_in(&node.netns, &["-6", "neigh", "flush", "dev", "eth0"]).unwrap();
    }
    let (ok, text) = busybox_ping6(&node1.netns, &format!("{link_local2}%eth0"));
    assert!(ok, "ping6 {link_local2}%eth0 from node1:\n{text}");
    let packets = take(&captures);
    let sent_by = |node: &LabNode, kind: u8| {
        v6(&packets)
            .filter(|p| p.icmp_type == Some(kind))
            .filter(|p| p.src == node.ip6.unwrap() || p.src == link_local(&node.netns, "eth0"))
            .count()
    };
    let (ns1, na2) = (sent_by(node1, 135), sent_by(node2, 136));
    let echo = v6(&packets).filter(|p| p.icmp_type == Some(128)).count();
    let replies = v6(&packets).filter(|p| p.icmp_type == Some(129)).count();
    eprintln!(
        "uplink: node1 sent {ns1} NS, node2 sent {na2} NA; {echo} echo requests, {replies} \
         replies on the wire"
    );
    assert!(
        ns1 >= 1 && na2 >= 1,
        "NS from node1 and NA from node2 on the wire"
    );
    assert!(
        replies >= 3,
        "the ULA ping and the link-local ping were answered"
    );

    // Pod to its host veth: the pod's gateway, fd00:10:244:1::1, is on ptp's host veth.
    let pod = lab.pod(0, 0);
    let route = netns::ip_in(&node1.netns, &["-6", "route", "get", &ip6(pod).to_string()]).unwrap();
    let veth: &'static str = route
        .split(" dev ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(|v| &*v.to_owned().leak())
        .unwrap_or_else(|| panic!("no dev in {route}"));
    let pod_side = Capture::start(&pod.netns, "eth0").unwrap();
    let host_side = Capture::start(&node1.netns, veth).unwrap();
    netns::ip_in(&pod.netns, &["-6", "neigh", "flush", "dev", "eth0"]).unwrap();
    netns::ip_in(&node1.netns, &["-6", "neigh", "flush", "dev", veth]).unwrap();
    let gateway: Ipv6Addr = "fd00:10:244:1::1".parse().unwrap();
    netns::run_in(&pod.netns, move || probe::reach(gateway, 0, Proto::Icmp)).unwrap();
    // And on to a pod of another node, which needs the gateway's link address.
    let remote = ip6(lab.pod(2, 1));
    netns::run_in(&pod.netns, move || probe::reach(remote, 0, Proto::Icmp)).unwrap();
    let from_pod = pod_side.take_all().unwrap();
    let from_host = host_side.take_all().unwrap();
    let (ns, na) = (
        v6(&from_pod).filter(|p| p.icmp_type == Some(135)).count(),
        v6(&from_host).filter(|p| p.icmp_type == Some(136)).count(),
    );
    eprintln!(
        "pod {}: sent {ns} NS, its host veth {veth} sent {na} NA",
        pod.netns
    );
    assert!(ns >= 1 && na >= 1, "ND between the pod and its host veth");
    let census = lab::census_all(&take(&captures));
    assert_eq!(census.plaintext6, 0, "{census:?}");
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn a_key_rotation_loses_nothing_of_ipv6_streams() {
    const RATE: u32 = 200;
    const STREAM: Duration = Duration::from_secs(14);
    let lab = Lab::up();
    let firsts: Vec<LabPod> = lab.nodes.iter().map(|n| n.pods[0].clone()).collect();
    let _servers = probe::serve(&firsts).unwrap();

    // Drained as packets come, until the streams end.
    let done = Arc::new(AtomicBool::new(false));
    let drain = {
        let captures = lab.capture();
        let done = done.clone();
        thread::spawn(move || {
            let mut packets = Vec::new();
            while !done.load(Ordering::Relaxed) {
                packets.extend(take(&captures));
                thread::sleep(Duration::from_millis(100));
            }
            packets.extend(take(&captures));
            packets
        })
    };
    let key_file = format!("{DIR}/keys");
    let pairs: Vec<(usize, usize)> = (0..3).map(|i| (i, (i + 1) % 3)).collect();
    let to_and_from: Vec<_> = pairs
        .iter()
        .map(|&(i, j)| (firsts[i].clone(), IpAddr::from(ip6(&firsts[j]))))
        .collect();
    let streams: Vec<(usize, usize, probe::StreamReport)> = pairs
        .into_iter()
        .zip(labs::streams_through_a_rotation(
            &to_and_from,
            RATE,
            STREAM,
            &key_file,
        ))
        .map(|((i, j), report)| (i, j, report))
        .collect();
    done.store(true, Ordering::Relaxed);
    let packets = drain.join().unwrap();
    let census = lab::census_all(&packets);
    let generations = |from: &LabNode, to: &LabNode| {
        let mut order: Vec<u32> = esp_between(&packets, from, to)
            .into_iter()
            .map(|spi| spi & 0xF)
            .collect();
        order.dedup();
        order
    };
    for (i, j, report) in &streams {
        let (from, to) = (&lab.nodes[*i], &lab.nodes[*j]);
        eprintln!(
            "{} -> {} over IPv6 at {RATE}/s: {} sent, {} lost; generations on the wire {:?} \
             there, {:?} back",
            from.name,
            to.name,
            report.sent,
            report.lost(),
            generations(from, to),
            generations(to, from)
        );
    }
    eprintln!(
        "{} packets on the wire: {} ESP, {} IPv6 and {} IPv4 pod packets in plaintext",
        packets.len(),
        census.esp,
        census.plaintext6,
        census.plaintext
    );
    assert_eq!(census.plaintext_total(), 0, "{census:?}");
    for (i, j, report) in &streams {
        let (from, to) = (&lab.nodes[*i], &lab.nodes[*j]);
        assert!(report.sent >= u64::from(RATE) * 10, "{report:?}");
        assert_eq!(
            report.lost(),
            0,
            "{} -> {}\n{}",
            from.name,
            to.name,
            lab.agent_logs()
        );
        for (a, b) in [(from, to), (to, from)] {
            let order = generations(a, b);
            assert_eq!(order.len(), 2, "{} -> {}: {order:?}", a.name, b.name);
            assert_eq!(
                order[1],
                order[0] + 1,
                "{} -> {}: {order:?}",
                a.name,
                b.name
            );
        }
    }
}

/// An ESP packet over IPv6 from `src` to `dst` under `spi`: the header and 64 bytes of what
/// would be ciphertext.
fn esp6(src: Ipv6Addr, dst: Ipv6Addr, spi: u32) -> Vec<u8> {
    let mut esp = spi.to_be_bytes().to_vec();
    esp.extend_from_slice(&1u32.to_be_bytes());
    esp.extend_from_slice(&[0xA5; 64]);
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(esp.len() as u16).to_be_bytes());
    p.extend_from_slice(&[50, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend(esp);
    p
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn ipv6_node_ips_carry_both_families_in_esp_over_ipv6() {
    let lab = Lab::up_with(&["--ipv6-node-ips"], Stack::Ipv6Nodes);
    let captures = lab.capture();
    let (ok, text) = xsteer(&["lab", "test", "--dir", DIR]);
    eprintln!("{text}");
    assert!(
        ok,
        "lab test:\n{text}\n{}{}",
        lab.kernel(&["xfrm", "state"]),
        lab.kernel(&["-6", "route", "show", "table", "all"])
    );
    for proto in ["icmp", "tcp ", "udp "] {
        for over in ["", "IPv6 "] {
            assert!(
                text.contains(&format!("over {over}{proto}: 24/24 ok")),
                "{over}{proto}:\n{text}"
            );
        }
    }
    assert!(text.contains("IPv6 node IPs"), "{text}");
    assert!(text.trim_end().ends_with("plaintext packets: 0"), "{text}");

    // What lab test put on the wire: ESP, all of it over IPv6 between the nodes' ULAs.
    let packets = take(&captures);
    let census = lab::census_all(&packets);
    let esp_v4 = packets
        .iter()
        .filter(|p| matches!(p, IpPacket::V4(p) if p.is_esp()))
        .count();
    let ulas: BTreeSet<Ipv6Addr> = lab.nodes.iter().map(|n| n.ip6.unwrap()).collect();
    let esp_v6: Vec<&Packet6> = v6(&packets).filter(|p| p.is_esp()).collect();
    let between_nodes = esp_v6
        .iter()
        .filter(|p| ulas.contains(&p.src) && ulas.contains(&p.dst))
        .count();
    eprintln!(
        "on the wire: {} ESP over IPv6 ({between_nodes} between node ULAs), {esp_v4} ESP over \
         IPv4, {} IPv4 and {} IPv6 pod packets in plaintext",
        esp_v6.len(),
        census.plaintext,
        census.plaintext6
    );
    assert_eq!(census.plaintext_total(), 0, "{census:?}");
    assert_eq!(esp_v4, 0, "no tunnel is IPv4");
    // Two families x 24 pairs x 3 protocols, a request and a reply each, at the least.
    assert!(esp_v6.len() >= 2 * 24 * 3 * 2, "{census:?}");
    assert_eq!(between_nodes, esp_v6.len());
    let states = lab.kernel(&["xfrm", "state"]);
    assert!(
        states.contains("src fd00:192:168:100::1 dst fd00:192:168:100::2"),
        "{states}"
    );

    // ESP over IPv6 from node2's address under an SPI node2 may not use (node ID 2 in its top
    // half, a generation no key file has): dropped by node1's ingress guard and counted.
    let (node1, node2) = (&lab.nodes[0], &lab.nodes[1]);
    let (to_mac, from_mac) = (mac(&node1.netns, "eth0"), mac(&node2.netns, "eth0"));
    let mut frame = Vec::new();
    frame.extend_from_slice(&to_mac);
    frame.extend_from_slice(&from_mac);
    frame.extend_from_slice(&0x86ddu16.to_be_bytes());
    frame.extend(esp6(node2.ip6.unwrap(), node1.ip6.unwrap(), 0x0002_0FFF));
    let before = lab.counter(0, Counter::IngressBadSpiDropped);
    inject(topology::WIRE, "node1", vec![frame; 4]);
    thread::sleep(Duration::from_millis(500));
    let dropped = lab.counter(0, Counter::IngressBadSpiDropped) - before;
    eprintln!("4 ESP packets over IPv6 from node2 with SPI 0x00020fff -> {dropped} dropped");
    assert_eq!(dropped, 4, "{}", lab.agent_logs());
}

/// The programs at tc `direction` of `node`'s uplink, by name.
fn tcx_programs(node: &LabNode, direction: TcAttachType) -> Vec<String> {
    netns::run_in(&node.netns, move || {
        let (_, programs) = SchedClassifier::query_tcx("eth0", direction)?;
        Ok(programs
            .iter()
            .map(|p| p.name_as_str().unwrap_or_default().to_owned())
            .collect())
    })
    .unwrap()
}

/// `xsteer status` of a node of the lab, in its namespace: whether it succeeded, and its output.
fn status_of(node: &LabNode) -> (bool, String) {
    xsteer_in(
        Some(&node.netns),
        &[
            "status",
            "--config",
            &format!("{DIR}/{}/xsteer.toml", node.name),
            "--pin-dir",
            agents::pin_dir(&node.name).to_str().unwrap(),
            "--state-dir",
            &format!("{DIR}/{}/state", node.name),
        ],
    )
}

/// An agent that restarts with another `ingress_hook` attaches the guard at the new hook before
/// it removes the pin of the old one, as an agent upgraded from XDP-only does on a veth: the
/// uplink ends with one ingress guard, at tc, and pods of both families still reach the node's
/// pods encrypted only, while plaintext from a pod address is still dropped there.
#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn an_agent_restarted_with_another_ingress_hook_moves_the_guard() {
    let lab = Lab::up();
    let node1 = &lab.nodes[0];
    let link = netns::ip_in(&node1.netns, &["-d", "link", "show", "eth0"]).unwrap();
    assert!(link.contains("xdp"), "the lab starts at XDP: {link}");
    assert!(tcx_programs(node1, TcAttachType::Ingress).is_empty());
    let (ok, status) = status_of(node1);
    assert!(
        ok && status.contains("ingress guard eth0 at xdp\negress guard eth0\n"),
        "xsteer status names the hook:\n{status}"
    );
    assert_eq!(
        lab.counter(0, Counter::IngressDecryptedPassed),
        0,
        "XDP runs before xfrm: it never sees a decrypted packet"
    );

    agents::stop(&lab.dir, std::slice::from_ref(node1));
    let config = agents::log_path(&lab.dir, node1).with_file_name("xsteer.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("ingress_hook = \"xdp\""), "{text}");
    // Back to the default: the agent sees a veth and chooses tc.
    std::fs::write(&config, text.replace("ingress_hook = \"xdp\"\n", "")).unwrap();
    agents::start(
        &lab.dir,
        std::slice::from_ref(node1),
        std::path::Path::new(env!("CARGO_BIN_EXE_xsteer")),
    )
    .unwrap();

    let link = netns::ip_in(&node1.netns, &["-d", "link", "show", "eth0"]).unwrap();
    assert!(!link.contains("xdp"), "XDP left behind: {link}");
    assert_eq!(
        tcx_programs(node1, TcAttachType::Ingress),
        [programs::INGRESS_GUARD_TC]
    );
    let pin_dir = agents::pin_dir(&node1.name);
    let pins: Vec<String> = std::fs::read_dir(pin_dir.join("links"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with("@eth0"))
        .collect();
    assert!(
        pins.contains(&format!("{}@eth0", programs::INGRESS_GUARD_TC))
            && !pins.contains(&format!("{}@eth0", programs::INGRESS_GUARD)),
        "{pins:?}"
    );
    let (ok, status) = status_of(node1);
    assert!(
        ok && status.contains("ingress guard eth0 at tc\negress guard eth0\n"),
        "xsteer status names the new hook alone:\n{status}"
    );
    let log = std::fs::read_to_string(agents::log_path(&lab.dir, node1)).unwrap();
    assert!(
        log.contains("ingress guard detached from xdp"),
        "the agent says it moved the guard:\n{log}"
    );

    // Into node1's pods from the other nodes, both families: decrypted traffic passes the guard
    // at tc, and nothing crosses the wire in clear.
    let pods: Vec<LabPod> = lab.nodes.iter().flat_map(|n| n.pods.clone()).collect();
    let _servers = probe::serve(&pods).unwrap();
    let captures = lab.capture();
    let dropped_before = lab.counter(0, Counter::IngressPlaintextDropped);
    let mut failures = Vec::new();
    for from in [lab.pod(1, 0), lab.pod(2, 1)] {
        for to in &node1.pods {
            for proto in Proto::ALL {
                for result in [
                    probe::check(from, to, proto),
                    probe::check6(from, to, proto),
                ] {
                    if let Err(e) = result {
                        failures.push(format!(
                            "{} {} -> {}: {e:#}",
                            proto.name(),
                            from.netns,
                            to.netns
                        ));
                    }
                }
            }
        }
    }
    let census = lab::census_all(&take(&captures));
    assert!(failures.is_empty(), "{failures:?}\n{}", lab.agent_logs());
    assert_eq!((census.plaintext, census.plaintext6), (0, 0), "{census:?}");
    assert!(census.esp > 0, "{census:?}");
    assert_eq!(
        lab.counter(0, Counter::IngressPlaintextDropped),
        dropped_before,
        "decrypted packets are not taken for plaintext"
    );
    // ESP from each peer reached node1's guard at tc and was accepted, and the inner packets
    // came past it again, decrypted.
    assert!(lab.counter(0, Counter::IngressEspAccepted) > 0);
    assert!(lab.counter(0, Counter::IngressDecryptedPassed) > 0);
}

/// The MAC address of `ifname` in the namespace `netns_name`.
fn mac(netns_name: &str, ifname: &str) -> [u8; 6] {
    labs::mac(&netns::ip_in(netns_name, &["link", "show", ifname]).unwrap())
}
