//! ESP in UDP (RFC 3948) at the ingress guard: to the encapsulation port, valid ESP from a peer
//! leaves the guard at tc as plain ESP, byte for byte what the peer would have sent without
//! NAT; a bad SPI, a keepalive or anything the kernel could not decapsulate stops there; with
//! the port off, or to another port, UDP is UDP.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use xsteer::dataplane::{Dataplane, links::IngressHook};
use xsteer_bpf_tests::{
    INGRESS_HOOKS, TC_NEXT, XDP_DROP, XDP_PASS, dataplane,
    packet::{ETH_P_8021Q, Ipv4, ipv4_checksum_ok, vlan_tagged, with_ipv4_checksum},
    run_ingress, run_tc_rewrite,
    topology::*,
};
use xsteer_common::counters::Counter;

/// The encapsulation port the tests set.
const PORT: u16 = 4500;

/// The object, populated, with decapsulation on `port` (or off).
fn guard(test: &str, port: Option<u16>) -> Option<Dataplane> {
    let mut dp = dataplane(test)?;
    populate(&mut dp);
    dp.udp_encap().unwrap().set(port).unwrap();
    assert_eq!(dp.udp_encap().unwrap().get().unwrap(), port);
    Some(dp)
}

fn counter(dp: &mut Dataplane, c: Counter) -> u64 {
    dp.counters().unwrap().read().unwrap().get(c)
}

/// Every counter the ingress guard keeps, so a test can say which one moved.
fn ingress_counters(dp: &mut Dataplane) -> [u64; 7] {
    [
        Counter::IngressPassed,
        Counter::IngressEspAccepted,
        Counter::IngressUdpEspAccepted,
        Counter::IngressKeepaliveDropped,
        Counter::IngressPlaintextDropped,
        Counter::IngressBadSpiDropped,
        Counter::IngressMalformedDropped,
    ]
    .map(|c| counter(dp, c))
}

#[test]
fn valid_esp_in_udp_from_a_peer_leaves_the_guard_at_tc_as_plain_esp() {
    let test = "valid_esp_in_udp_from_a_peer_leaves_the_guard_at_tc_as_plain_esp";
    let Some(mut dp) = guard(test, Some(PORT)) else {
        return;
    };
    let sent = with_ipv4_checksum(
        Ipv4::esp_in_udp(PEER_B_IP, LOCAL_NODE_IP, PORT, PEER_B_WIRE_SPI).frame(),
    );
    let (verdict, out) = run_tc_rewrite(dp.ingress_guard_tc().unwrap(), &sent);
    assert_eq!(verdict, TC_NEXT);
    // Protocol 50, total length 8 less, the checksum updated to match, the ESP packet intact.
    let plain_esp =
        with_ipv4_checksum(Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, PEER_B_WIRE_SPI).frame());
    assert_eq!(out, plain_esp);
    assert!(ipv4_checksum_ok(&out));
    assert_eq!(ingress_counters(&mut dp), [0, 0, 1, 0, 0, 0, 0]);

    // At XDP the checks are the same, but nothing is stripped (the agent attaches at tc).
    let verdict = run_ingress(&mut dp, IngressHook::Xdp, &sent);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(counter(&mut dp, Counter::IngressUdpEspAccepted), 2);
}

#[test]
fn esp_in_udp_with_an_spi_not_valid_for_its_sender_is_dropped() {
    for hook in INGRESS_HOOKS {
        let test = "esp_in_udp_with_an_spi_not_valid_for_its_sender_is_dropped";
        println!("{test}: at {hook}");
        let Some(mut dp) = guard(test, Some(PORT)) else {
            return;
        };
        let frames = [
            // A peer with an SPI of no set, and with another peer's SPI.
            Ipv4::esp_in_udp(PEER_B_IP, LOCAL_NODE_IP, PORT, 0x0002_0009).frame(),
            Ipv4::esp_in_udp(PEER_C_IP, LOCAL_NODE_IP, PORT, PEER_B_WIRE_SPI).frame(),
            // A host that is no peer, with a valid SPI of a peer: the port is xsteer's.
            Ipv4::esp_in_udp(OUTSIDE, LOCAL_NODE_IP, PORT, PEER_B_WIRE_SPI).frame(),
        ];
        for frame in &frames {
            assert_eq!(run_ingress(&mut dp, hook, frame), XDP_DROP);
        }
        assert_eq!(ingress_counters(&mut dp), [0, 0, 0, 0, 0, 3, 0]);
    }
}

#[test]
fn keepalives_and_what_cannot_be_decapsulated_are_dropped_ike_passes() {
    for hook in INGRESS_HOOKS {
        let test = "keepalives_and_what_cannot_be_decapsulated_are_dropped_ike_passes";
        println!("{test}: at {hook}");
        let Some(mut dp) = guard(test, Some(PORT)) else {
            return;
        };
        let datagram = |payload: &[u8]| {
            Ipv4::udp_datagram(PEER_B_IP, LOCAL_NODE_IP, 4500, PORT, payload).frame()
        };
        let esp = Ipv4::esp_in_udp(PEER_B_IP, LOCAL_NODE_IP, PORT, PEER_B_WIRE_SPI);
        let keepalive = datagram(&[0xFF]);
        let ike = datagram(&[0, 0, 0, 0, 0x21, 0x20, 0x22, 0x08]);
        let cannot = [
            // Too short to be ESP, and a one-byte datagram that is no keepalive.
            datagram(&[1, 2, 3]),
            datagram(&[0x7F]),
            // A UDP length below the header's.
            {
                let mut frame = esp.frame();
                frame[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&4u16.to_be_bytes());
                frame
            },
            // IP options, a VLAN tag, a first fragment: no stripping these.
            Ipv4 {
                options: vec![1, 1, 1, 1],
                ..esp.clone()
            }
            .frame(),
            vlan_tagged(&esp.frame(), ETH_P_8021Q, 7),
            Ipv4 {
                more_fragments: true,
                ..esp.clone()
            }
            .frame(),
        ];
        assert_eq!(run_ingress(&mut dp, hook, &keepalive), XDP_DROP);
        assert_eq!(run_ingress(&mut dp, hook, &ike), XDP_PASS);
        for frame in &cannot {
            assert_eq!(run_ingress(&mut dp, hook, frame), XDP_DROP);
        }
        assert_eq!(
            ingress_counters(&mut dp),
            [1, 0, 0, 1, 0, 0, cannot.len() as u64]
        );
    }
}

#[test]
fn with_the_port_off_or_to_another_port_udp_is_udp_and_pods_are_still_plaintext() {
    let test = "with_the_port_off_or_to_another_port_udp_is_udp_and_pods_are_still_plaintext";
    let esp = with_ipv4_checksum(
        Ipv4::esp_in_udp(PEER_B_IP, LOCAL_NODE_IP, PORT, PEER_B_WIRE_SPI).frame(),
    );
    let Some(mut off) = guard(test, None) else {
        return;
    };
    let (verdict, out) = run_tc_rewrite(off.ingress_guard_tc().unwrap(), &esp);
    assert_eq!((verdict, &out), (TC_NEXT, &esp));
    assert_eq!(ingress_counters(&mut off), [1, 0, 0, 0, 0, 0, 0]);

    let Some(mut on) = guard(test, Some(PORT + 1)) else {
        return;
    };
    let (verdict, out) = run_tc_rewrite(on.ingress_guard_tc().unwrap(), &esp);
    assert_eq!((verdict, &out), (TC_NEXT, &esp));
    // A pod's datagram to the port is plaintext from a pod, whatever it carries.
    let from_pod = Ipv4::esp_in_udp(PEER_B_POD, LOCAL_POD, PORT + 1, PEER_B_WIRE_SPI).frame();
    assert_eq!(run_ingress(&mut on, IngressHook::Tc, &from_pod), XDP_DROP);
    assert_eq!(ingress_counters(&mut on), [1, 0, 0, 0, 1, 0, 0]);
}
