//! The egress guard: a local pod's packet to a remote pod never reaches the wire as is.

use xsteer::dataplane::Dataplane;
use xsteer_bpf_tests::{
    TC_NEXT, TC_SHOT, dataplane,
    packet::{self, ETH_P_8021AD, ETH_P_8021Q, Ipv4, vlan_tagged},
    run_tc,
    topology::*,
};
use xsteer_common::counters::Counter;

fn guard(test: &str, frames: &[Vec<u8>]) -> Option<(Vec<u32>, Dataplane)> {
    let mut dp = dataplane(test)?;
    populate(&mut dp);
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

fn counter(dp: &mut Dataplane, c: Counter) -> u64 {
    dp.counters().unwrap().read().unwrap().get(c)
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
    ];
    let Some((verdicts, mut dp)) = guard(
        "plaintext_pod_to_remote_pod_is_dropped_and_counted",
        &frames,
    ) else {
        return;
    };
    assert_eq!(verdicts, vec![TC_SHOT; frames.len()]);
    assert_eq!(
        counter(&mut dp, Counter::EgressLeakDropped),
        frames.len() as u64
    );
    assert_eq!(counter(&mut dp, Counter::EgressPassed), 0);
}

#[test]
fn everything_else_passes() {
    let frames = [
        // The encrypted form: ESP between node IPs.
        Ipv4::esp(LOCAL_NODE_IP, PEER_B_IP, 0x0001_0003).frame(),
        // A pod talking to the internet, or to a local pod.
        Ipv4::udp(LOCAL_POD, OUTSIDE).frame(),
        Ipv4::udp(LOCAL_POD, LOCAL_POD).frame(),
        // The node itself talking to a remote pod (source is no local pod).
        Ipv4::udp(LOCAL_NODE_IP, PEER_B_POD).frame(),
        packet::ipv6_frame(),
        packet::arp_frame(),
        // Not a valid IPv4 header (IHL 4): the kernel would not route it.
        Ipv4 {
            ihl: Some(4),
            ..Ipv4::udp(LOCAL_POD, PEER_B_POD)
        }
        .frame(),
    ];
    let Some((verdicts, mut dp)) = guard("everything_else_passes", &frames) else {
        return;
    };
    assert_eq!(verdicts, vec![TC_NEXT; frames.len()]);
    assert_eq!(counter(&mut dp, Counter::EgressPassed), frames.len() as u64);
    assert_eq!(counter(&mut dp, Counter::EgressLeakDropped), 0);
}
