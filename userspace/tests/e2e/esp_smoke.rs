//! The ESP smoke test: the kernel mechanism xsteer stands on, through xsteer's own xfrm layer.
//!
//! Two nodes (network namespaces) joined by a veth that plays the wire, each with a pod address
//! behind it. A tunnel-mode rfc4106(gcm(aes)) SA pair, an OUT policy that matches only the
//! encrypt mark 0x3e00/0xff00, and IN/FWD policies on the receiver that require ESP. Then, from
//! a capture of what node A sends on the wire: marked datagrams leave as ESP only and arrive;
//! unmarked ones leave in plaintext and the receiver's policy refuses them.

use std::{
    net::{Ipv4Addr, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use xsteer::kernel::{
    Netlink,
    xfrm::{self, Crypto, Direction, Mark, PEER_POLICY_PRIORITY, Policy, PolicyAction, State},
};
use zeroize::Zeroizing;

use crate::{
    support::{self, Netns},
    wire::Capture,
};

const WIRE_A: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
const WIRE_B: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 1);
const POD_B_PORT: u16 = 7000;
const ENCRYPT_MARK: u32 = 0x3E00;
const DATAGRAMS: usize = 20;

fn sa(src: Ipv4Addr, dst: Ipv4Addr, spi: u32, mark: Option<Mark>, key_byte: u8) -> State {
    State {
        src: src.into(),
        dst: dst.into(),
        spi,
        mark,
        crypto: Crypto::Gcm {
            // 16-byte AES key + 4-byte salt; a test key, never used elsewhere.
            key: Zeroizing::new(vec![key_byte; 20]),
            icv_bits: 128,
        },
        esn: false,
        cpu: None,
        encap: None,
    }
}

fn policy(
    direction: Direction,
    src: &str,
    dst: &str,
    mark: Option<Mark>,
    tunnel: (Ipv4Addr, Ipv4Addr),
) -> Policy {
    Policy {
        direction,
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        mark,
        priority: PEER_POLICY_PRIORITY,
        action: PolicyAction::Tunnel {
            src: tunnel.0.into(),
            dst: tunnel.1.into(),
            // OUT picks the SA set both SPIs below name; IN and FWD take any SA.
            reqid: if direction == Direction::Out {
                xfrm::set_reqid(0x0031)
            } else {
                0
            },
        },
    }
}

/// One node's kernel state: its SAs (out and in) and policies, written through xsteer's layer.
fn install(node: &Netns, states: Vec<State>, policies: Vec<Policy>) {
    node.block_on(move || async move {
        let netlink = Netlink::connect().unwrap();
        for state in &states {
            xfrm::add_state(&netlink, state).await.unwrap();
        }
        for policy in &policies {
            xfrm::put_policy(&netlink, policy, false).await.unwrap();
        }
        let listed = xfrm::states(&netlink).await.unwrap();
        assert_eq!(listed.len(), states.len(), "the SAs read back");
    });
}

/// Packets counted on one SA (`ip -s xfrm state`: "N(bytes), M(packets)").
fn sa_packets(node: &Netns, src: Ipv4Addr, dst: Ipv4Addr, spi: u32) -> u64 {
    let (src, dst, spi) = (src.to_string(), dst.to_string(), format!("{spi:#x}"));
    let out = node.ip(&[
        "-s", "xfrm", "state", "list", "src", &src, "dst", &dst, "proto", "esp", "spi", &spi,
    ]);
    out.split_whitespace()
        .find_map(|word| word.strip_suffix("(packets)")?.parse().ok())
        .unwrap_or_else(|| panic!("no packet counter in:\n{out}"))
}

/// Sends `DATAGRAMS` datagrams from pod A to pod B, with `mark` set on the socket when given.
fn send_from_pod_a(node_a: &Netns, mark: Option<u32>) {
    node_a.run(move || {
        let socket = UdpSocket::bind((POD_A, 0)).unwrap();
        if let Some(mark) = mark {
            support::set_mark(&socket, mark);
        }
        for i in 0..DATAGRAMS {
            socket
                .send_to(format!("datagram {i}").as_bytes(), (POD_B, POD_B_PORT))
                .unwrap();
        }
    });
}

/// Datagrams that reach `socket` within `wait`, stopping early once `expected` arrived.
fn receive(socket: &UdpSocket, expected: usize, wait: Duration) -> usize {
    let deadline = Instant::now() + wait;
    let mut got = 0;
    let mut buf = [0u8; 64];
    while Instant::now() < deadline && got < expected {
        match socket.recv(&mut buf) {
            Ok(_) => got += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("receiving on pod B: {e}"),
        }
    }
    got
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn marked_traffic_leaves_as_esp_and_unmarked_is_refused() {
    assert!(support::require_root(
        "marked_traffic_leaves_as_esp_and_unmarked_is_refused"
    ));
    assert!(
        support::kernel_has_esp(),
        "this kernel has no ESP: run it with `cargo xtask test`, which boots the VM bed"
    );

    let a = Netns::new("xs-smoke-a");
    let b = Netns::new("xs-smoke-b");
    a.ip(&[
        "link", "add", "wire-a", "type", "veth", "peer", "name", "wire-b", "netns", &b.name,
    ]);
    for (node, dev, wire, pod, peer_wire, peer_pods) in [
        (&a, "wire-a", WIRE_A, POD_A, WIRE_B, "10.244.2.0/24"),
        (&b, "wire-b", WIRE_B, POD_B, WIRE_A, "10.244.1.0/24"),
    ] {
        node.ip(&["addr", "add", &format!("{wire}/24"), "dev", dev]);
        node.ip(&["addr", "add", &format!("{pod}/32"), "dev", "lo"]);
        node.ip(&["link", "set", dev, "up"]);
        node.ip(&[
            "route",
            "add",
            peer_pods,
            "via",
            &peer_wire.to_string(),
            "dev",
            dev,
            "src",
            &pod.to_string(),
        ]);
    }

    let mark = Some(Mark {
        value: ENCRYPT_MARK,
        mask: 0xFF00,
    });
    let (a_to_b, b_to_a) = ((WIRE_A, WIRE_B), (WIRE_B, WIRE_A));
    let (spi_ab, spi_ba) = (0x0001_0031, 0x0002_0031);
    install(
        &a,
        vec![
            sa(WIRE_A, WIRE_B, spi_ab, mark, 0xA1),
            sa(WIRE_B, WIRE_A, spi_ba, None, 0xB2),
        ],
        vec![
            policy(
                Direction::Out,
                "10.244.1.0/24",
                "10.244.2.0/24",
                mark,
                a_to_b,
            ),
            policy(
                Direction::In,
                "10.244.2.0/24",
                "10.244.1.0/24",
                None,
                b_to_a,
            ),
            policy(
                Direction::Fwd,
                "10.244.2.0/24",
                "10.244.1.0/24",
                None,
                b_to_a,
            ),
        ],
    );
    install(
        &b,
        vec![
            sa(WIRE_B, WIRE_A, spi_ba, mark, 0xB2),
            sa(WIRE_A, WIRE_B, spi_ab, None, 0xA1),
        ],
        vec![
            policy(
                Direction::Out,
                "10.244.2.0/24",
                "10.244.1.0/24",
                mark,
                b_to_a,
            ),
            policy(
                Direction::In,
                "10.244.1.0/24",
                "10.244.2.0/24",
                None,
                a_to_b,
            ),
            policy(
                Direction::Fwd,
                "10.244.1.0/24",
                "10.244.2.0/24",
                None,
                a_to_b,
            ),
        ],
    );

    let wire = Capture::start(&a, "wire-a");
    let pod_b = b.run(|| UdpSocket::bind((POD_B, POD_B_PORT)).unwrap());
    pod_b.set_nonblocking(true).unwrap();

    // Marked: ESP only on the wire, every datagram delivered, both SAs count them.
    send_from_pod_a(&a, Some(ENCRYPT_MARK));
    let delivered = receive(&pod_b, DATAGRAMS, Duration::from_secs(10));
    let sent = wire.take();
    let esp = sent
        .iter()
        .filter(|p| p.is_esp() && p.spi == Some(spi_ab))
        .count();
    let plaintext = sent.iter().filter(|p| p.is_udp_to(POD_B)).count();
    eprintln!(
        "marked: {esp} ESP and {plaintext} plaintext packets on the wire, {delivered} delivered"
    );
    assert_eq!(
        plaintext, 0,
        "a marked datagram left in plaintext: {sent:?}"
    );
    assert_eq!(
        esp, DATAGRAMS,
        "every marked datagram leaves as ESP with A's SPI: {sent:?}"
    );
    assert_eq!(
        delivered, DATAGRAMS,
        "every marked datagram is decrypted and delivered"
    );
    assert_eq!(
        sa_packets(&a, WIRE_A, WIRE_B, spi_ab),
        DATAGRAMS as u64,
        "A's OUT SA counter"
    );
    assert_eq!(
        sa_packets(&b, WIRE_A, WIRE_B, spi_ab),
        DATAGRAMS as u64,
        "B's IN SA counter"
    );

    // Unmarked: plaintext on the wire, refused by B's IN policy, nothing delivered.
    let refused_before = b.xfrm_stat("XfrmInTmplMismatch");
    send_from_pod_a(&a, None);
    let delivered = receive(&pod_b, DATAGRAMS, Duration::from_secs(2));
    let sent = wire.take();
    let esp = sent.iter().filter(|p| p.is_esp()).count();
    let plaintext = sent.iter().filter(|p| p.is_udp_to(POD_B)).count();
    let refused = b.xfrm_stat("XfrmInTmplMismatch") - refused_before;
    eprintln!(
        "unmarked: {esp} ESP and {plaintext} plaintext packets on the wire, {delivered} delivered, {refused} refused"
    );
    assert_eq!(
        (esp, plaintext),
        (0, DATAGRAMS),
        "unmarked datagrams are not xsteer's: plaintext, as sent"
    );
    assert_eq!(
        delivered, 0,
        "B's policy must refuse plaintext from A's pods"
    );
    assert_eq!(
        refused, DATAGRAMS as u64,
        "B counts each refusal as XfrmInTmplMismatch"
    );
    assert_eq!(
        sa_packets(&a, WIRE_A, WIRE_B, spi_ab),
        DATAGRAMS as u64,
        "the SA did not move"
    );
}
