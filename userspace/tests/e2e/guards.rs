//! What arrives from the wire, and bad input while the agent runs.
//!
//! Frames injected onto node b's side of the wire, addressed to node a: plaintext with a remote
//! pod source, and ESP from b with an SPI b never had. The ingress guard (at tc ingress of a's
//! veth uplink, where the agent puts it on a veth) drops both before any pod sees them and
//! counts each. Then the key file and the config are broken in turn under a running agent: each
//! is refused with a log line naming the problem, and traffic keeps flowing encrypted under the
//! last good state.

use std::{
    fs,
    net::{Ipv4Addr, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use xsteer_common::{counters::Counter, programs};

use crate::{
    cluster::{self, Node},
    labs,
    support::Netns,
    wire::Capture,
};

/// An Ethernet + IPv4 frame carrying `payload` as protocol `proto`.
fn frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = 20 + payload.len();
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let sum = (sum & 0xFFFF) + (sum >> 16);
    let sum = !(((sum & 0xFFFF) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(payload);
    f
}

/// A UDP datagram (checksum 0: none) from `sport` to `dport`.
fn udp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    u
}

/// Sends raw `frames` out of `ifname` in `netns`.
fn inject(netns: &Netns, ifname: &'static str, frames: Vec<Vec<u8>>) {
    netns.run(move || crate::support::send_frames(ifname, &frames));
}

fn wait_for_log(node: &Node, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !node.agent_log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "never logged {text:?}:\n{}",
            node.agent_log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// 10 datagrams a-pod -> b-pod: (delivered, ESP on a's wire, plaintext on a's wire).
fn still_encrypted(a: &Node, b: &Node, wire: &Capture, port: u16) -> (usize, usize, usize) {
    let got = cluster::exchange(
        (&a.pod, a.pod_ip),
        (&b.pod, b.pod_ip),
        port,
        10,
        Duration::from_secs(10),
    );
    let sent = wire.take();
    let esp = sent
        .iter()
        .filter(|p| p.is_esp() && p.src == a.wire_ip)
        .count();
    let plaintext = sent.iter().filter(|p| p.is_udp_to(b.pod_ip)).count();
    (got, esp, plaintext)
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn the_wire_is_guarded_and_bad_input_keeps_the_last_good_state() {
    let (a, b) = cluster::pair("guards");
    let mut agents = [a.start_agent(), b.start_agent()];
    // The uplink is a veth: the agent runs the ingress guard at tc ingress, not at XDP.
    let at_tc = a.netns.run(|| {
        let (_, programs) = SchedClassifier::query_tcx("eth0", TcAttachType::Ingress).unwrap();
        programs
            .iter()
            .map(|p| p.name_as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    });
    assert_eq!(
        at_tc,
        [programs::INGRESS_GUARD_TC],
        "tc ingress of a's uplink"
    );
    let link = a.netns.ip(&["-d", "link", "show", "eth0"]);
    assert!(
        !link.contains("xdp"),
        "an XDP program on a veth uplink: {link}"
    );

    // Injected from b's side of the wire to a: a plaintext datagram "from" a pod of b to a's
    // pod, and ESP from b under an SPI b never had.
    let mac = |netns: &Netns| labs::mac(&netns.ip(&["link", "show", "eth0"]));
    let (a_mac, b_mac) = (mac(&a.netns), mac(&b.netns));
    let pod_port = 7300;
    let listener = {
        let ip = a.pod_ip;
        a.pod.run(move || UdpSocket::bind((ip, pod_port)).unwrap())
    };
    listener.set_nonblocking(true).unwrap();
    let spoofed = frame(
        a_mac,
        b_mac,
        17,
        Ipv4Addr::new(10, 244, 2, 9),
        a.pod_ip,
        &udp(4000, pod_port, b"plaintext"),
    );
    let bad_spi = 0x0002_0FFFu32;
    let mut esp = bad_spi.to_be_bytes().to_vec();
    esp.extend_from_slice(&[0u8; 36]);
    let unknown_esp = frame(a_mac, b_mac, 50, b.wire_ip, a.wire_ip, &esp);
    let (plain_before, spi_before) = (
        a.counter(Counter::IngressPlaintextDropped),
        a.counter(Counter::IngressBadSpiDropped),
    );
    inject(
        &b.netns,
        "eth0",
        vec![spoofed; 5]
            .into_iter()
            .chain(vec![unknown_esp; 5])
            .collect(),
    );
    thread::sleep(Duration::from_millis(500));
    let plain = a.counter(Counter::IngressPlaintextDropped) - plain_before;
    let spi = a.counter(Counter::IngressBadSpiDropped) - spi_before;
    let mut buf = [0u8; 64];
    let delivered = listener.recv(&mut buf).is_ok();
    eprintln!(
        "injected: 5 plaintext -> {plain} dropped, 5 ESP with an unknown SPI -> {spi} dropped, delivered: {delivered}"
    );
    assert_eq!(
        (plain, spi),
        (5, 5),
        "the ingress guard drops and counts each"
    );
    assert!(!delivered, "a spoofed plaintext datagram reached the pod");

    // Bad input under a running agent: refused, logged, the last good state keeps working.
    let wire = Capture::start(&a.netns, "eth0");
    assert_eq!(still_encrypted(&a, &b, &wire, 7301), (10, 10, 0), "before");
    let keys = a.dir.join("keys");
    let good_keys = fs::read_to_string(&keys).unwrap();
    fs::write(&keys, "4 rfc4106(gcm(aes)) 0xnothex 128\n").unwrap();
    wait_for_log(&a, "ignoring the changed config or key file");
    assert!(
        a.agent_log().contains("line 1"),
        "the error names the line:\n{}",
        a.agent_log()
    );
    assert_eq!(
        still_encrypted(&a, &b, &wire, 7302),
        (10, 10, 0),
        "after a corrupt key file"
    );

    fs::write(&keys, &good_keys).unwrap();
    let config = fs::read_to_string(a.config()).unwrap();
    let overlapping = config.replace(
        "pod_cidrs = [\"10.244.2.0/24\"]",
        "pod_cidrs = [\"10.244.0.0/16\"]",
    );
    assert_ne!(overlapping, config);
    fs::write(a.config(), overlapping).unwrap();
    wait_for_log(&a, "overlaps");
    assert_eq!(
        still_encrypted(&a, &b, &wire, 7303),
        (10, 10, 0),
        "after an overlapping CIDR"
    );
    fs::write(a.config(), &config).unwrap();

    for agent in &mut agents {
        let _ = agent.kill();
        let _ = agent.wait();
    }
}
