//! The ingress guard: plaintext from peers' pods and ESP with a bad SPI stop at XDP.

use xsteer::dataplane::Dataplane;
use xsteer_bpf_tests::{
    XDP_DROP, XDP_PASS, dataplane,
    packet::{self, ETH_P_8021Q, Ipv4, vlan_tagged},
    run_xdp,
    topology::*,
};
use xsteer_common::counters::Counter;

fn guard(test: &str, frames: &[Vec<u8>]) -> Option<(Vec<u32>, Dataplane)> {
    let mut dp = dataplane(test)?;
    populate(&mut dp);
    let verdicts = frames
        .iter()
        .map(|frame| run_xdp(dp.ingress_guard().unwrap(), frame))
        .collect();
    Some((verdicts, dp))
}

fn counter(dp: &mut Dataplane, c: Counter) -> u64 {
    dp.counters().unwrap().read().unwrap().get(c)
}

#[test]
fn plaintext_from_remote_pod_to_local_pod_is_dropped() {
    let plain = Ipv4::udp(PEER_B_POD, LOCAL_POD);
    let frames = [
        plain.frame(),
        Ipv4::esp(PEER_B_POD, LOCAL_POD, PEER_B_WIRE_SPI).frame(),
        vlan_tagged(&plain.frame(), ETH_P_8021Q, 5),
        Ipv4 {
            fragment_offset: 9,
            ..plain.clone()
        }
        .frame(),
    ];
    let Some((verdicts, mut dp)) =
        guard("plaintext_from_remote_pod_to_local_pod_is_dropped", &frames)
    else {
        return;
    };
    assert_eq!(verdicts, vec![XDP_DROP; frames.len()]);
    assert_eq!(
        counter(&mut dp, Counter::IngressPlaintextDropped),
        frames.len() as u64
    );
}

#[test]
fn esp_with_a_valid_spi_passes_and_is_counted_per_peer_and_spi() {
    let esp = Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, PEER_B_WIRE_SPI).frame();
    let frames = [esp.clone(), esp.clone()];
    let Some((verdicts, mut dp)) = guard(
        "esp_with_a_valid_spi_passes_and_is_counted_per_peer_and_spi",
        &frames,
    ) else {
        return;
    };
    assert_eq!(verdicts, vec![XDP_PASS; 2]);
    assert_eq!(counter(&mut dp, Counter::IngressEspAccepted), 2);
    let stats = dp
        .peer_spis()
        .unwrap()
        .stats(PEER_B_IP, PEER_B_WIRE_SPI)
        .unwrap();
    assert_eq!(stats.packets, 2);
    assert_eq!(stats.bytes, 2 * esp.len() as u64);
}

#[test]
fn esp_from_a_peer_with_an_invalid_spi_is_dropped() {
    let frames = [
        // Another generation of the right peer.
        Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, PEER_B_WIRE_SPI + 1).frame(),
        // Peer C's SPI set is empty.
        Ipv4::esp(PEER_C_IP, LOCAL_NODE_IP, PEER_B_WIRE_SPI).frame(),
    ];
    let Some((verdicts, mut dp)) = guard("esp_from_a_peer_with_an_invalid_spi_is_dropped", &frames)
    else {
        return;
    };
    assert_eq!(verdicts, vec![XDP_DROP; 2]);
    assert_eq!(counter(&mut dp, Counter::IngressBadSpiDropped), 2);
    assert_eq!(counter(&mut dp, Counter::IngressEspAccepted), 0);
}

#[test]
fn everything_else_passes() {
    let esp = Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, 0xDEAD);
    let frames = [
        // ESP from a host that is not a peer: someone else's IPsec.
        Ipv4::esp(OUTSIDE, LOCAL_NODE_IP, 0xDEAD).frame(),
        // A later ESP fragment has no SPI to check.
        Ipv4 {
            fragment_offset: 185,
            ..esp.clone()
        }
        .frame(),
        // ESP cut off before its SPI.
        esp.frame()[..14 + 20 + 2].to_vec(),
        // Ordinary traffic between nodes, and from a remote pod to a non-pod address.
        Ipv4::udp(PEER_B_IP, LOCAL_NODE_IP).frame(),
        Ipv4::udp(PEER_B_POD, OUTSIDE).frame(),
        packet::ipv6_frame(),
        packet::arp_frame(),
        // Half an IPv4 header, a bare Ethernet header, and IHL below 5, all from a peer's pod.
        Ipv4::udp(PEER_B_POD, LOCAL_POD).frame()[..14 + 8].to_vec(),
        Ipv4::udp(PEER_B_POD, LOCAL_POD).frame()[..14].to_vec(),
        Ipv4 {
            ihl: Some(3),
            ..Ipv4::udp(PEER_B_POD, LOCAL_POD)
        }
        .frame(),
    ];
    let Some((verdicts, mut dp)) = guard("everything_else_passes", &frames) else {
        return;
    };
    assert_eq!(verdicts, vec![XDP_PASS; frames.len()]);
    assert_eq!(
        counter(&mut dp, Counter::IngressPassed),
        frames.len() as u64
    );
    assert_eq!(counter(&mut dp, Counter::IngressBadSpiDropped), 0);
    assert_eq!(counter(&mut dp, Counter::IngressPlaintextDropped), 0);
}
