//! The egress guard: nothing bound for another node's pod reaches the wire as is, and nothing
//! it cannot parse does either.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use xsteer::dataplane::Dataplane;
use xsteer_bpf_tests::{
    TC_NEXT, TC_SHOT, dataplane,
    packet::{self, ETH_P_8021AD, ETH_P_8021Q, Ipv4, vlan_tagged, vlan_tagged_times},
    run_tc,
    topology::*,
};
use xsteer_common::counters::Counter;

/// Loads and populates the object, lets `setup` change the maps, and runs the guard on each
/// frame.
fn guard_with(
    test: &str,
    setup: impl FnOnce(&mut Dataplane),
    frames: &[Vec<u8>],
) -> Option<(Vec<u32>, Dataplane)> {
    let mut dp = dataplane(test)?;
    populate(&mut dp);
    setup(&mut dp);
    let verdicts = frames
        .iter()
        .map(|frame| {
            let out = run_tc(dp.egress_guard().unwrap(), frame, 0x0002_3E00);
            assert_eq!(out.mark, 0x0002_3E00, "the guard never changes the mark");
            out.verdict
        })
        .collect();
    Some((verdicts, dp))
}

fn guard(test: &str, frames: &[Vec<u8>]) -> Option<(Vec<u32>, Dataplane)> {
    guard_with(test, |_| {}, frames)
}

fn counter(dp: &mut Dataplane, c: Counter) -> u64 {
    dp.counters().unwrap().read().unwrap().get(c)
}

/// Every counter of the egress guard, so a test can say which one moved.
fn egress_counters(dp: &mut Dataplane) -> [u64; 4] {
    [
        Counter::EgressPassed,
        Counter::EgressLeakDropped,
        Counter::EgressMalformedDropped,
        Counter::EgressVlanDepthDropped,
    ]
    .map(|c| counter(dp, c))
}

#[test]
fn plaintext_pod_to_remote_pod_is_dropped_and_counted() {
    let leak = Ipv4::udp(LOCAL_POD, PEER_B_POD);
    let frames = [
        leak.frame(),
        // Raw protocol 50 from a pod is not a tunnel packet: still a leak.
        Ipv4::esp(LOCAL_POD, PEER_B_POD, PEER_B_WIRE_SPI).frame(),
        Ipv4 {
            fragment_offset: 100,
            ..leak.clone()
        }
        .frame(),
        vlan_tagged(&leak.frame(), ETH_P_8021Q, 10),
        vlan_tagged(
            &vlan_tagged(&leak.frame(), ETH_P_8021Q, 10),
            ETH_P_8021AD,
            20,
        ),
        // Up to four tags are looked through.
        vlan_tagged_times(&leak.frame(), ETH_P_8021Q, 3),
        vlan_tagged_times(&leak.frame(), ETH_P_8021Q, 4),
    ];
    let Some((verdicts, mut dp)) = guard(
        "plaintext_pod_to_remote_pod_is_dropped_and_counted",
        &frames,
    ) else {
        return;
    };
    assert_eq!(verdicts, vec![TC_SHOT; frames.len()]);
    assert_eq!(egress_counters(&mut dp), [0, frames.len() as u64, 0, 0]);
}

/// A peer that left `remote_pod_cidrs` (record lost, key mismatch, clash) is not marked; the
/// guard must not care.
#[test]
fn pods_of_nodes_missing_from_the_peer_maps_are_still_guarded() {
    let frames = [
        Ipv4::udp(LOCAL_POD, UNKNOWN_POD).frame(),
        Ipv4::udp(LOCAL_POD, PEER_B_POD).frame(),
        Ipv4::udp(LOCAL_POD, PEER_C_POD).frame(),
    ];
    let peer_b_left = |dp: &mut Dataplane| {
        dp.remote_pod_cidrs()
            .unwrap()
            .remove(cidr("10.244.2.0/24"))
            .unwrap();
        dp.peer_nodes().unwrap().remove(PEER_B_IP).unwrap();
        dp.peer_spis()
            .unwrap()
            .remove(PEER_B_IP, PEER_B_WIRE_SPI)
            .unwrap();
    };
    let Some((verdicts, mut dp)) = guard_with(
        "pods_of_nodes_missing_from_the_peer_maps_are_still_guarded",
        peer_b_left,
        &frames,
    ) else {
        return;
    };
    assert!(dp.remote_pod_cidrs().unwrap().entries().unwrap().len() == 2);
    assert_eq!(verdicts, vec![TC_SHOT; frames.len()]);
    assert_eq!(egress_counters(&mut dp), [0, frames.len() as u64, 0, 0]);
}

/// The source does not matter: the host, a router's ICMP error, anything.
#[test]
fn host_sourced_packets_and_icmp_errors_to_a_remote_pod_are_dropped() {
    let reply = Ipv4::udp(PEER_B_POD, LOCAL_NODE_IP);
    let frames = [
        Ipv4::udp(LOCAL_NODE_IP, PEER_B_POD).frame(),
        Ipv4::udp(OUTSIDE, UNKNOWN_POD).frame(),
        Ipv4::icmp_unreachable(LOCAL_NODE_IP, PEER_B_POD, &reply).frame(),
        Ipv4::icmp_unreachable(OUTSIDE, PEER_C_POD, &reply).frame(),
    ];
    let Some((verdicts, mut dp)) = guard(
        "host_sourced_packets_and_icmp_errors_to_a_remote_pod_are_dropped",
        &frames,
    ) else {
        return;
    };
    assert_eq!(verdicts, vec![TC_SHOT; frames.len()]);
    assert_eq!(egress_counters(&mut dp), [0, frames.len() as u64, 0, 0]);
}

#[test]
fn everything_else_passes() {
    let frames = [
        // The encrypted form: ESP between node IPs.
        Ipv4::esp(LOCAL_NODE_IP, PEER_B_IP, 0x0001_0003).frame(),
        // A pod talking to the internet, or to a local pod.
        Ipv4::udp(LOCAL_POD, OUTSIDE).frame(),
        Ipv4::udp(LOCAL_POD, LOCAL_POD).frame(),
        // The node talking to a peer node, to the internet, to its own pods.
        Ipv4::udp(LOCAL_NODE_IP, PEER_B_IP).frame(),
        Ipv4::udp(LOCAL_NODE_IP, OUTSIDE).frame(),
        Ipv4::udp(LOCAL_NODE_IP, LOCAL_POD).frame(),
        // Behind four tags, still looked into.
        vlan_tagged_times(&Ipv4::udp(LOCAL_POD, OUTSIDE).frame(), ETH_P_8021AD, 4),
        // Not IP at all.
        packet::ipv6_frame(),
        packet::arp_frame(),
        packet::lldp_frame(),
    ];
    let Some((verdicts, mut dp)) = guard("everything_else_passes", &frames) else {
        return;
    };
    assert_eq!(verdicts, vec![TC_NEXT; frames.len()]);
    assert_eq!(egress_counters(&mut dp), [frames.len() as u64, 0, 0, 0]);
}

/// The kernel refuses to test-run tc programs on IPv4 frames shorter than an IPv4 header, so
/// the truncated cases are driven through the ingress guard, which shares the parser; a failed
/// `bpf_skb_pull_data` leaves exactly such a short linear area and ends here too.
#[test]
fn ipv4_without_a_readable_header_is_dropped() {
    let leak = Ipv4::udp(LOCAL_POD, OUTSIDE);
    let frames = [
        // IHL 4 is below the minimum, whatever the addresses.
        Ipv4 {
            ihl: Some(4),
            ..leak.clone()
        }
        .frame(),
        // Version 6 behind the IPv4 EtherType.
        Ipv4 {
            version: 6,
            ..leak.clone()
        }
        .frame(),
        // IHL 15: options past the end of the frame.
        Ipv4 {
            ihl: Some(15),
            ..leak.clone()
        }
        .frame(),
    ];
    let Some((verdicts, mut dp)) = guard("ipv4_without_a_readable_header_is_dropped", &frames)
    else {
        return;
    };
    assert_eq!(verdicts, vec![TC_SHOT; frames.len()]);
    assert_eq!(egress_counters(&mut dp), [0, 0, frames.len() as u64, 0]);
}

#[test]
fn frames_tagged_deeper_than_the_guard_looks_are_dropped() {
    let frames = [
        vlan_tagged_times(&Ipv4::udp(LOCAL_POD, PEER_B_POD).frame(), ETH_P_8021Q, 5),
        vlan_tagged_times(&Ipv4::udp(LOCAL_POD, OUTSIDE).frame(), ETH_P_8021AD, 5),
        vlan_tagged_times(&packet::arp_frame(), ETH_P_8021Q, 6),
    ];
    let Some((verdicts, mut dp)) = guard(
        "frames_tagged_deeper_than_the_guard_looks_are_dropped",
        &frames,
    ) else {
        return;
    };
    assert_eq!(verdicts, vec![TC_SHOT; frames.len()]);
    assert_eq!(egress_counters(&mut dp), [0, 0, 0, frames.len() as u64]);
}

/// Userspace fills the pod space before attaching the guards; should it be empty all the same,
/// the guard falls back to this node's pod CIDRs: nothing from a local pod leaves, which covers
/// every drop of the old peer-list guard. Traffic of the host itself is not guarded then.
#[test]
fn with_the_pod_space_empty_nothing_from_a_local_pod_leaves() {
    let drops = [
        Ipv4::udp(LOCAL_POD, PEER_B_POD).frame(),
        Ipv4::udp(LOCAL_POD, UNKNOWN_POD).frame(),
        Ipv4::udp(LOCAL_POD, OUTSIDE).frame(),
    ];
    let passes = [
        Ipv4::esp(LOCAL_NODE_IP, PEER_B_IP, 0x0001_0003).frame(),
        Ipv4::udp(LOCAL_NODE_IP, PEER_B_POD).frame(),
    ];
    let frames: Vec<Vec<u8>> = drops.iter().chain(&passes).cloned().collect();
    let empty = |dp: &mut Dataplane| {
        let mut space = dp.cluster_pod_cidrs().unwrap();
        space.set(&[]).unwrap();
        assert!(space.get().unwrap().is_empty());
    };
    let Some((verdicts, mut dp)) = guard_with(
        "with_the_pod_space_empty_nothing_from_a_local_pod_leaves",
        empty,
        &frames,
    ) else {
        return;
    };
    assert_eq!(verdicts[..drops.len()], vec![TC_SHOT; drops.len()]);
    assert_eq!(verdicts[drops.len()..], vec![TC_NEXT; passes.len()]);
    assert_eq!(
        egress_counters(&mut dp),
        [passes.len() as u64, drops.len() as u64, 0, 0]
    );
}
