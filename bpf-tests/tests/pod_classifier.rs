//! The pod classifier: marks what goes to remote pods, touches nothing else, never drops.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use xsteer::dataplane::Dataplane;
use xsteer_bpf_tests::{
    TC_NEXT, TcOutcome, dataplane,
    packet::{self, ETH_P_8021AD, ETH_P_8021Q, Ipv4, vlan_tagged, vlan_tagged_times},
    run_tc,
    topology::*,
};
use xsteer_common::{counters::Counter, mark};

/// Loads and populates the object, runs the classifier on each frame with `mark_in`, and
/// returns the outcomes and the counters.
fn classify(test: &str, frames: &[Vec<u8>], mark_in: u32) -> Option<(Vec<TcOutcome>, Dataplane)> {
    let mut dp = dataplane(test)?;
    populate(&mut dp);
    let outcomes = frames
        .iter()
        .map(|frame| run_tc(dp.pod_classifier().unwrap(), frame, mark_in))
        .collect();
    Some((outcomes, dp))
}

fn counter(dp: &mut Dataplane, c: Counter) -> u64 {
    dp.counters().unwrap().read().unwrap().get(c)
}

#[test]
fn remote_pod_destination_gets_the_encrypt_mark() {
    let frames = [Ipv4::udp(LOCAL_POD, PEER_B_POD).frame()];
    let Some((out, mut dp)) = classify("remote_pod_destination_gets_the_encrypt_mark", &frames, 0)
    else {
        return;
    };
    assert_eq!(
        out[0],
        TcOutcome {
            verdict: TC_NEXT,
            mark: 0x0002_3E00
        }
    );
    assert_eq!(out[0].mark, mark::encrypt(PEER_B_SPI, PEER_B_ID));
    assert_eq!(counter(&mut dp, Counter::PodMarked), 1);
    assert_eq!(counter(&mut dp, Counter::PodUnmatched), 0);
}

#[test]
fn longest_prefix_wins() {
    let frames = [
        Ipv4::udp(LOCAL_POD, PEER_C_POD).frame(),
        Ipv4::udp(LOCAL_POD, PEER_D_POD).frame(),
    ];
    let Some((out, _)) = classify("longest_prefix_wins", &frames, 0) else {
        return;
    };
    assert_eq!(
        out[0].mark, 0x1234_FE00,
        "10.250.9.0/24 belongs to node 0x1234, SPI 15"
    );
    assert_eq!(
        out[1].mark, 0x0004_1E00,
        "the rest of 10.250.0.0/16 belongs to node 4"
    );
}

#[test]
fn foreign_mark_bits_are_preserved() {
    let frame = Ipv4::udp(LOCAL_POD, PEER_B_POD).frame();
    for (mark_in, expected) in [
        (0x0000_00A5, 0x0002_3EA5),
        // Stale owned bits are replaced, not OR-ed into.
        (0xFFFF_FFFF, 0x0002_3EFF),
    ] {
        let Some((out, _)) = classify(
            "foreign_mark_bits_are_preserved",
            std::slice::from_ref(&frame),
            mark_in,
        ) else {
            return;
        };
        assert_eq!(out[0].mark, expected, "mark in {mark_in:#010x}");
    }
}

#[test]
fn non_pod_destinations_are_untouched() {
    let frames = [
        Ipv4::udp(LOCAL_POD, OUTSIDE).frame(),
        Ipv4::udp(LOCAL_POD, LOCAL_POD).frame(),
        Ipv4::udp(LOCAL_POD, PEER_B_IP).frame(),
    ];
    let Some((out, mut dp)) = classify("non_pod_destinations_are_untouched", &frames, 0x42) else {
        return;
    };
    for o in &out {
        assert_eq!(
            *o,
            TcOutcome {
                verdict: TC_NEXT,
                mark: 0x42
            }
        );
    }
    assert_eq!(counter(&mut dp, Counter::PodUnmatched), 3);
    assert_eq!(counter(&mut dp, Counter::PodMarked), 0);
}

#[test]
fn ip_options_and_fragments_are_still_marked() {
    let with_options = Ipv4 {
        options: vec![0x94, 0x04, 0, 0, 0x01, 0x01, 0x01, 0x00], // router alert, NOPs, EOL
        ..Ipv4::udp(LOCAL_POD, PEER_B_POD)
    };
    let first_fragment = Ipv4 {
        more_fragments: true,
        ..Ipv4::udp(LOCAL_POD, PEER_B_POD)
    };
    let later_fragment = Ipv4 {
        fragment_offset: 185,
        ..Ipv4::udp(LOCAL_POD, PEER_B_POD)
    };
    let frames = [
        with_options.frame(),
        first_fragment.frame(),
        later_fragment.frame(),
    ];
    let Some((out, mut dp)) = classify("ip_options_and_fragments_are_still_marked", &frames, 0)
    else {
        return;
    };
    for (i, o) in out.iter().enumerate() {
        assert_eq!(
            *o,
            TcOutcome {
                verdict: TC_NEXT,
                mark: 0x0002_3E00
            },
            "frame {i}"
        );
    }
    assert_eq!(counter(&mut dp, Counter::PodMarked), 3);
}

/// Truncated headers cannot be fed to a tc program: the kernel refuses to test-run IPv4 frames
/// shorter than an IP header (EINVAL). The classifier shares `parse::frame` with the ingress
/// guard, whose tests drive the truncated cases.
#[test]
fn malformed_ipv4_is_untouched_and_counted() {
    let udp = Ipv4::udp(LOCAL_POD, PEER_B_POD);
    let frames = [
        // IHL 4 is below the minimum.
        Ipv4 {
            ihl: Some(4),
            ..udp.clone()
        }
        .frame(),
        // Version 6 behind the IPv4 EtherType.
        Ipv4 {
            version: 6,
            ..udp.clone()
        }
        .frame(),
    ];
    let Some((out, mut dp)) = classify("malformed_ipv4_is_untouched_and_counted", &frames, 0x7)
    else {
        return;
    };
    for (i, o) in out.iter().enumerate() {
        assert_eq!(
            *o,
            TcOutcome {
                verdict: TC_NEXT,
                mark: 0x7
            },
            "frame {i}"
        );
    }
    assert_eq!(counter(&mut dp, Counter::PodMalformed), 2);
    assert_eq!(counter(&mut dp, Counter::PodMarked), 0);
}

#[test]
fn other_protocols_are_untouched() {
    let to_remote = Ipv4::udp(LOCAL_POD, PEER_B_POD).frame();
    let frames = [
        packet::arp_frame(),
        vlan_tagged(&to_remote, ETH_P_8021Q, 100),
        vlan_tagged(&vlan_tagged(&to_remote, ETH_P_8021Q, 100), ETH_P_8021AD, 7),
        // Deeper than the guards look: the classifier still only leaves it alone.
        vlan_tagged_times(&to_remote, ETH_P_8021Q, 5),
    ];
    let Some((out, mut dp)) = classify("other_protocols_are_untouched", &frames, 0) else {
        return;
    };
    for (i, o) in out.iter().enumerate() {
        assert_eq!(
            *o,
            TcOutcome {
                verdict: TC_NEXT,
                mark: 0
            },
            "frame {i}"
        );
    }
    assert_eq!(counter(&mut dp, Counter::PodNotIpv4), 4);
}

/// IPv6 is classified now; to no remote pod (the IPv6 maps are empty here) it is unmatched.
#[test]
fn ipv6_to_no_remote_pod_is_untouched() {
    let frames = [packet::ipv6_frame()];
    let Some((out, mut dp)) = classify("ipv6_to_no_remote_pod_is_untouched", &frames, 0x5) else {
        return;
    };
    assert_eq!(
        out[0],
        TcOutcome {
            verdict: TC_NEXT,
            mark: 0x5
        }
    );
    assert_eq!(counter(&mut dp, Counter::PodUnmatched), 1);
    assert_eq!(counter(&mut dp, Counter::PodNotIpv4), 0);
}
