//! The ingress guard: nothing from a pod address of the cluster gets in, ESP with a bad SPI
//! stops at XDP, and so does anything the guard cannot parse.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use xsteer::dataplane::{Dataplane, links::IngressHook};
use xsteer_bpf_tests::{
    INGRESS_HOOKS, XDP_DROP, XDP_PASS, dataplane,
    packet::{self, ETH_P_8021AD, ETH_P_8021Q, Ipv4, vlan_tagged, vlan_tagged_times},
    run_ingress,
    topology::*,
};
use xsteer_common::{
    counters::Counter,
    maps::{PeerNode, SPI_PAIRINGS_MAX},
    spi,
};

/// Loads and populates the object, lets `setup` change the maps, and runs the guard at `hook`
/// on each frame.
fn guard_with(
    test: &str,
    hook: IngressHook,
    setup: impl FnOnce(&mut Dataplane),
    frames: &[Vec<u8>],
) -> Option<(Vec<u32>, Dataplane)> {
    // Printed, and shown with a failure: which hook the failing run was at.
    println!("{test}: the ingress guard at {hook}");
    let mut dp = dataplane(test)?;
    populate(&mut dp);
    setup(&mut dp);
    let verdicts = frames
        .iter()
        .map(|frame| run_ingress(&mut dp, hook, frame))
        .collect();
    Some((verdicts, dp))
}

fn guard(test: &str, hook: IngressHook, frames: &[Vec<u8>]) -> Option<(Vec<u32>, Dataplane)> {
    guard_with(test, hook, |_| {}, frames)
}

fn counter(dp: &mut Dataplane, c: Counter) -> u64 {
    dp.counters().unwrap().read().unwrap().get(c)
}

/// Every counter of the ingress guard, so a test can say which one moved.
fn ingress_counters(dp: &mut Dataplane) -> [u64; 6] {
    [
        Counter::IngressPassed,
        Counter::IngressEspAccepted,
        Counter::IngressPlaintextDropped,
        Counter::IngressBadSpiDropped,
        Counter::IngressMalformedDropped,
        Counter::IngressVlanDepthDropped,
    ]
    .map(|c| counter(dp, c))
}

#[test]
fn plaintext_from_remote_pod_to_local_pod_is_dropped() {
    for hook in INGRESS_HOOKS {
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
        let Some((verdicts, mut dp)) = guard(
            "plaintext_from_remote_pod_to_local_pod_is_dropped",
            hook,
            &frames,
        ) else {
            return;
        };
        assert_eq!(verdicts, vec![XDP_DROP; frames.len()]);
        assert_eq!(
            counter(&mut dp, Counter::IngressPlaintextDropped),
            frames.len() as u64
        );
    }
}

/// The source alone decides: a pod address outside is never xsteer's ciphertext, whichever
/// node the pod is on, whether that node is a peer, and whatever the protocol or destination.
#[test]
fn anything_from_a_cluster_pod_address_is_dropped_without_any_peer_entry() {
    for hook in INGRESS_HOOKS {
        let frames = [
            // A pod of a node in no map: plaintext, and "ESP" with an SPI that is valid for a peer.
            Ipv4::udp(UNKNOWN_POD, LOCAL_POD).frame(),
            Ipv4::esp(UNKNOWN_POD, LOCAL_NODE_IP, PEER_B_WIRE_SPI).frame(),
            // Peer B's pod, with peer B gone from every map (see the setup).
            Ipv4::udp(PEER_B_POD, LOCAL_POD).frame(),
            Ipv4::esp(PEER_B_POD, LOCAL_NODE_IP, PEER_B_WIRE_SPI).frame(),
            // To the node itself, or to an address that is no pod's.
            Ipv4::udp(PEER_C_POD, LOCAL_NODE_IP).frame(),
            Ipv4::udp(PEER_D_POD, OUTSIDE).frame(),
            Ipv4::icmp_unreachable(UNKNOWN_POD, LOCAL_POD, &Ipv4::udp(LOCAL_POD, UNKNOWN_POD))
                .frame(),
        ];
        let peer_b_left = |dp: &mut Dataplane| {
            dp.remote_pod_cidrs()
                .unwrap()
                .remove(cidr("10.244.2.0/24"))
                .unwrap();
            dp.peer_nodes().unwrap().remove(PEER_B_IP).unwrap();
        };
        let Some((verdicts, mut dp)) = guard_with(
            "anything_from_a_cluster_pod_address_is_dropped_without_any_peer_entry",
            hook,
            peer_b_left,
            &frames,
        ) else {
            return;
        };
        assert_eq!(verdicts, vec![XDP_DROP; frames.len()]);
        assert_eq!(
            ingress_counters(&mut dp),
            [0, 0, frames.len() as u64, 0, 0, 0]
        );
    }
}

#[test]
fn esp_with_a_valid_spi_passes_and_is_counted_per_peer() {
    for hook in INGRESS_HOOKS {
        let esp = Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, PEER_B_WIRE_SPI).frame();
        let frames = [esp.clone(), esp.clone()];
        let Some((verdicts, mut dp)) = guard(
            "esp_with_a_valid_spi_passes_and_is_counted_per_peer",
            hook,
            &frames,
        ) else {
            return;
        };
        assert_eq!(verdicts, vec![XDP_PASS; 2]);
        assert_eq!(counter(&mut dp, Counter::IngressEspAccepted), 2);
        let stats = dp.peer_spis().unwrap().stats().unwrap();
        assert_eq!(stats.len(), 1, "{stats:?}");
        assert_eq!(stats[&PEER_B_ID].packets, 2);
        assert_eq!(stats[&PEER_B_ID].bytes, 2 * esp.len() as u64);
    }
}

#[test]
fn esp_from_a_peer_with_an_invalid_spi_is_dropped() {
    for hook in INGRESS_HOOKS {
        let frames = [
            // Another generation of the right peer.
            Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, PEER_B_WIRE_SPI + 1).frame(),
            // Peer B's node ID and generation under other epoch tags.
            Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, PEER_B_WIRE_SPI | 0x0120).frame(),
            // Peer C's SPI set is empty.
            Ipv4::esp(PEER_C_IP, LOCAL_NODE_IP, PEER_B_WIRE_SPI).frame(),
        ];
        let Some((verdicts, mut dp)) = guard(
            "esp_from_a_peer_with_an_invalid_spi_is_dropped",
            hook,
            &frames,
        ) else {
            return;
        };
        assert_eq!(verdicts, vec![XDP_DROP; frames.len()]);
        assert_eq!(ingress_counters(&mut dp), [0, 0, 0, 3, 0, 0]);
    }
}

/// Peer C's SPI carries node ID 0x1234 in its top bits; only C's node IP may send it.
const PEER_C_WIRE_SPI: u32 = (PEER_C_ID as u32) << 16 | 0x027F;

#[test]
fn an_spi_that_names_another_peer_is_dropped() {
    for hook in INGRESS_HOOKS {
        let frames = [
            // B sending C's valid SPI, and C sending B's.
            Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, PEER_C_WIRE_SPI).frame(),
            Ipv4::esp(PEER_C_IP, LOCAL_NODE_IP, PEER_B_WIRE_SPI).frame(),
            // C's own, for contrast.
            Ipv4::esp(PEER_C_IP, LOCAL_NODE_IP, PEER_C_WIRE_SPI).frame(),
        ];
        let c_valid = |dp: &mut Dataplane| {
            dp.peer_spis()
                .unwrap()
                .insert(PEER_C_IP, PEER_C_WIRE_SPI)
                .unwrap()
        };
        let Some((verdicts, mut dp)) = guard_with(
            "an_spi_that_names_another_peer_is_dropped",
            hook,
            c_valid,
            &frames,
        ) else {
            return;
        };
        assert_eq!(verdicts, [XDP_DROP, XDP_DROP, XDP_PASS]);
        assert_eq!(ingress_counters(&mut dp), [0, 1, 0, 2, 0, 0]);
    }
}

/// Peer B's SA in CPU slot `slot` of the set [`PEER_B_WIRE_SPI`] is the shared SA of.
fn b_cpu_spi(slot: u32) -> u32 {
    PEER_B_WIRE_SPI | slot << spi::CPU_SLOT_SHIFT
}

/// The per-CPU SAs a peer sends on are accepted, in its set and through the hash, up to the
/// number its set says; one past it is dropped like any SPI the peer does not have.
#[test]
fn per_cpu_sas_are_accepted_up_to_the_peers_count() {
    for hook in INGRESS_HOOKS {
        let hashed = b_spi(SPI_PAIRINGS_MAX as u32 + 1);
        let frames = [
            Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, b_cpu_spi(1)).frame(),
            Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, b_cpu_spi(3)).frame(),
            Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, hashed | 3 << spi::CPU_SLOT_SHIFT).frame(),
            // One past the count: in the set and in the hash.
            Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, b_cpu_spi(4)).frame(),
            Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, hashed | 4 << spi::CPU_SLOT_SHIFT).frame(),
            Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, b_cpu_spi(63)).frame(),
        ];
        let three = |dp: &mut Dataplane| {
            let mut spis = dp.peer_spis().unwrap();
            // Fill the set's other pairings, so that `hashed` lives in the hash alone.
            for tags in 1..=SPI_PAIRINGS_MAX as u32 + 1 {
                spis.insert(PEER_B_IP, b_spi(tags)).unwrap();
            }
            spis.set_per_cpu_sas(PEER_B_ID, 3).unwrap();
            assert_eq!(spis.per_cpu_sas().unwrap()[&PEER_B_ID], 3);
        };
        let Some((verdicts, mut dp)) = guard_with(
            "per_cpu_sas_are_accepted_up_to_the_peers_count",
            hook,
            three,
            &frames,
        ) else {
            return;
        };
        assert_eq!(
            verdicts,
            [XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP, XDP_DROP]
        );
        assert_eq!(ingress_counters(&mut dp), [0, 3, 0, 3, 0, 0]);
        // Back to shared SAs only: per-CPU SPIs are dropped, the shared one still passes.
        dp.peer_spis()
            .unwrap()
            .set_per_cpu_sas(PEER_B_ID, 0)
            .unwrap();
        let per_cpu = Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, b_cpu_spi(1)).frame();
        assert_eq!(run_ingress(&mut dp, hook, &per_cpu), XDP_DROP);
        let shared = Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, PEER_B_WIRE_SPI).frame();
        assert_eq!(run_ingress(&mut dp, hook, &shared), XDP_PASS);
    }
}

#[test]
fn esp_from_a_host_that_is_not_a_peer_passes_whatever_its_spi() {
    for hook in INGRESS_HOOKS {
        let frames = [
            // SPIs valid for peer B and for no one, from a host in no map.
            Ipv4::esp(OUTSIDE, LOCAL_NODE_IP, PEER_B_WIRE_SPI).frame(),
            Ipv4::esp(OUTSIDE, LOCAL_NODE_IP, 0xDEAD_BEEF).frame(),
        ];
        let Some((verdicts, mut dp)) = guard(
            "esp_from_a_host_that_is_not_a_peer_passes_whatever_its_spi",
            hook,
            &frames,
        ) else {
            return;
        };
        assert_eq!(verdicts, vec![XDP_PASS; frames.len()]);
        assert_eq!(ingress_counters(&mut dp), [2, 0, 0, 0, 0, 0]);
        assert!(dp.peer_spis().unwrap().stats().unwrap()[&PEER_B_ID].packets == 0);
    }
}

/// Peer B's SPI under epoch tags `tags` (the 6 bits of a pairing) and its generation.
fn b_spi(tags: u32) -> u32 {
    PEER_B_WIRE_SPI & !(spi::PAIRING_MASK << spi::PAIRING_SHIFT) | tags << spi::PAIRING_SHIFT
}

/// More epoch pairings than a set has room for: the SPIs that do not fit are looked up in
/// `peer_spis`, for peer B only, and nothing valid is refused.
#[test]
fn spis_the_set_has_no_room_for_are_accepted_through_the_hash() {
    for hook in INGRESS_HOOKS {
        let extra = (1..=SPI_PAIRINGS_MAX as u32).map(b_spi).collect::<Vec<_>>();
        let overflowing = |dp: &mut Dataplane| {
            let mut spis = dp.peer_spis().unwrap();
            for &spi in &extra {
                spis.insert(PEER_B_IP, spi).unwrap();
            }
        };
        // B's first SPI and the next three pairings fill the set; the last one overflows.
        let last = *extra.last().unwrap();
        let frames = [
            Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, PEER_B_WIRE_SPI).frame(),
            Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, extra[0]).frame(),
            Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, last).frame(),
            Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, last).frame(),
            // Still dropped: another generation under the hashed pairing, and from C.
            Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, last + 1).frame(),
            Ipv4::esp(PEER_C_IP, LOCAL_NODE_IP, last).frame(),
        ];
        let Some((verdicts, mut dp)) = guard_with(
            "spis_the_set_has_no_room_for_are_accepted_through_the_hash",
            hook,
            overflowing,
            &frames,
        ) else {
            return;
        };
        assert_eq!(
            verdicts,
            [XDP_PASS, XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP]
        );
        assert_eq!(ingress_counters(&mut dp), [0, 4, 0, 2, 0, 0]);
        let mut spis = dp.peer_spis().unwrap();
        // Counted per peer wherever accepted: two through the set, two through the hash.
        assert_eq!(spis.stats().unwrap()[&PEER_B_ID].packets, 4);
        let mut keys = spis.keys().unwrap();
        keys.sort();
        let mut want: Vec<_> = std::iter::once(PEER_B_WIRE_SPI)
            .chain(extra.iter().copied())
            .map(|spi| (PEER_B_IP, spi))
            .collect();
        want.sort();
        assert_eq!(keys, want);
        // Once the hashed SPI is withdrawn, it is refused like any other.
        spis.remove(PEER_B_IP, last).unwrap();
        let frame = Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, last).frame();
        assert_eq!(run_ingress(&mut dp, hook, &frame), XDP_DROP);
    }
}

/// A node ID handed on to another node IP while the SPIs of its old owner are still valid:
/// both are accepted, each from its own address only.
#[test]
fn a_node_id_at_a_new_node_ip_is_accepted_beside_the_old_one() {
    for hook in INGRESS_HOOKS {
        const NEW_B_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 20);
        let new_spi = b_spi(0x25);
        let moved = |dp: &mut Dataplane| {
            let node = PeerNode {
                node_id: PEER_B_ID,
                flags: 0,
            };
            dp.peer_nodes().unwrap().insert(NEW_B_IP, node).unwrap();
            dp.peer_spis().unwrap().insert(NEW_B_IP, new_spi).unwrap();
        };
        let frames = [
            Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, PEER_B_WIRE_SPI).frame(),
            Ipv4::esp(NEW_B_IP, LOCAL_NODE_IP, new_spi).frame(),
            Ipv4::esp(NEW_B_IP, LOCAL_NODE_IP, PEER_B_WIRE_SPI).frame(),
            Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, new_spi).frame(),
        ];
        let Some((verdicts, mut dp)) = guard_with(
            "a_node_id_at_a_new_node_ip_is_accepted_beside_the_old_one",
            hook,
            moved,
            &frames,
        ) else {
            return;
        };
        assert_eq!(verdicts, [XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP]);
        // Counted by node ID (the top of the SPI): both owners' packets, one each.
        let stats = dp.peer_spis().unwrap().stats().unwrap();
        assert_eq!(stats[&PEER_B_ID].packets, 2, "{stats:?}");
    }
}

#[test]
fn up_to_four_vlan_tags_are_looked_through() {
    for hook in INGRESS_HOOKS {
        let plain = Ipv4::udp(PEER_B_POD, LOCAL_POD).frame();
        let esp = Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, PEER_B_WIRE_SPI).frame();
        let frames = [
            // Plaintext from a pod behind one to four tags of VLAN 0: dropped as plaintext.
            vlan_tagged_times(&plain, ETH_P_8021Q, 1),
            vlan_tagged(&vlan_tagged(&plain, ETH_P_8021Q, 0), ETH_P_8021AD, 0),
            vlan_tagged_times(&plain, ETH_P_8021Q, 3),
            vlan_tagged_times(&plain, ETH_P_8021AD, 4),
            // Valid ESP behind one and two tags: accepted.
            vlan_tagged(&esp, ETH_P_8021Q, 7),
            vlan_tagged(&vlan_tagged(&esp, ETH_P_8021Q, 7), ETH_P_8021AD, 8),
        ];
        let Some((verdicts, mut dp)) =
            guard("up_to_four_vlan_tags_are_looked_through", hook, &frames)
        else {
            return;
        };
        assert_eq!(
            verdicts,
            [XDP_DROP, XDP_DROP, XDP_DROP, XDP_DROP, XDP_PASS, XDP_PASS]
        );
        assert_eq!(ingress_counters(&mut dp), [0, 2, 4, 0, 0, 0]);
    }
}

/// The kernel strips any number of tags and delivers what is inside, so what the guard cannot
/// look behind must not pass.
#[test]
fn frames_tagged_deeper_than_the_guard_looks_are_dropped() {
    for hook in INGRESS_HOOKS {
        let plain = Ipv4::udp(PEER_B_POD, LOCAL_POD).frame();
        let frames = [
            vlan_tagged_times(&plain, ETH_P_8021Q, 5),
            vlan_tagged_times(&plain, ETH_P_8021AD, 8),
            vlan_tagged_times(
                &Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, PEER_B_WIRE_SPI).frame(),
                ETH_P_8021Q,
                5,
            ),
            vlan_tagged_times(&packet::arp_frame(), ETH_P_8021Q, 5),
        ];
        let Some((verdicts, mut dp)) = guard(
            "frames_tagged_deeper_than_the_guard_looks_are_dropped",
            hook,
            &frames,
        ) else {
            return;
        };
        assert_eq!(verdicts, vec![XDP_DROP; frames.len()]);
        assert_eq!(
            ingress_counters(&mut dp),
            [0, 0, 0, 0, 0, frames.len() as u64]
        );
    }
}

#[test]
fn ipv4_without_a_readable_header_is_dropped() {
    for hook in INGRESS_HOOKS {
        let plain = Ipv4::udp(PEER_B_POD, LOCAL_POD);
        let from_node = Ipv4::udp(PEER_B_IP, LOCAL_NODE_IP);
        let frames = [
            // Half an IPv4 header, and a bare Ethernet header that says IPv4. (The kernel refuses
            // to test-run frames shorter than an Ethernet header.)
            plain.frame()[..14 + 8].to_vec(),
            plain.frame()[..14].to_vec(),
            // A VLAN tag cut off before its inner EtherType.
            vlan_tagged(&plain.frame(), ETH_P_8021Q, 0)[..16].to_vec(),
            // IHL below 5, version 6, options past the end of the frame; from a node, too.
            Ipv4 {
                ihl: Some(3),
                ..plain.clone()
            }
            .frame(),
            Ipv4 {
                version: 6,
                ..from_node.clone()
            }
            .frame(),
            Ipv4 {
                ihl: Some(15),
                ..from_node.clone()
            }
            .frame(),
            // Behind tags that are looked through.
            vlan_tagged_times(&plain.frame()[..14 + 8], ETH_P_8021Q, 2),
        ];
        // The kernel refuses to test-run a tc program on an IPv4 frame shorter than an IPv4
        // header; at tc those frames are left to the XDP run, which shares the parser.
        let frames: Vec<Vec<u8>> = frames
            .into_iter()
            .filter(|f| hook == IngressHook::Xdp || !(f.len() < 14 + 20 && f[12..14] == [8, 0]))
            .collect();
        let Some((verdicts, mut dp)) =
            guard("ipv4_without_a_readable_header_is_dropped", hook, &frames)
        else {
            return;
        };
        assert_eq!(verdicts, vec![XDP_DROP; frames.len()]);
        assert_eq!(
            ingress_counters(&mut dp),
            [0, 0, 0, 0, frames.len() as u64, 0]
        );
    }
}

#[test]
fn everything_else_passes() {
    for hook in INGRESS_HOOKS {
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
            // ESP from a peer cut off before its SPI: no SPI to check (xfrm drops it).
            esp.frame()[..14 + 20 + 2].to_vec(),
            // Ordinary traffic between nodes, and from the internet to the node.
            Ipv4::udp(PEER_B_IP, LOCAL_NODE_IP).frame(),
            Ipv4::udp(OUTSIDE, LOCAL_NODE_IP).frame(),
            // Not IP at all, bare or behind four tags; and an EtherType alone is not malformed.
            packet::ipv6_frame(),
            packet::arp_frame(),
            packet::lldp_frame(),
            vlan_tagged_times(&packet::arp_frame(), ETH_P_8021Q, 4),
            packet::ethernet(0x88B5, &[]),
        ];
        let Some((verdicts, mut dp)) = guard("everything_else_passes", hook, &frames) else {
            return;
        };
        assert_eq!(verdicts, vec![XDP_PASS; frames.len()]);
        assert_eq!(
            ingress_counters(&mut dp),
            [frames.len() as u64, 0, 0, 0, 0, 0]
        );
    }
}

/// Userspace fills the pod space before attaching the guards; should it be empty all the same,
/// the guard falls back to this node's pod CIDRs: nothing reaches a local pod from outside in
/// the clear, which covers every drop of the old peer-list guard. A pod address sending to
/// anything else is not caught then.
#[test]
fn with_the_pod_space_empty_nothing_reaches_a_local_pod() {
    for hook in INGRESS_HOOKS {
        let drops = [
            Ipv4::udp(PEER_B_POD, LOCAL_POD).frame(),
            Ipv4::udp(UNKNOWN_POD, LOCAL_POD).frame(),
            Ipv4::udp(OUTSIDE, LOCAL_POD).frame(),
        ];
        let passes = [
            Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, PEER_B_WIRE_SPI).frame(),
            Ipv4::udp(PEER_B_POD, LOCAL_NODE_IP).frame(),
        ];
        let frames: Vec<Vec<u8>> = drops.iter().chain(&passes).cloned().collect();
        let empty = |dp: &mut Dataplane| dp.cluster_pod_cidrs().unwrap().set(&[]).unwrap();
        let Some((verdicts, mut dp)) = guard_with(
            "with_the_pod_space_empty_nothing_reaches_a_local_pod",
            hook,
            empty,
            &frames,
        ) else {
            return;
        };
        assert_eq!(verdicts[..drops.len()], vec![XDP_DROP; drops.len()]);
        assert_eq!(verdicts[drops.len()..], vec![XDP_PASS; passes.len()]);
        assert_eq!(ingress_counters(&mut dp), [1, 1, 3, 0, 0, 0]);
    }
}
