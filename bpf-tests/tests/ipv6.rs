//! IPv6 through every program: the classifier marks IPv6 to remote pods as it marks IPv4, the
//! guards drop plaintext to and from remote pods and ESP over IPv6 with a bad SPI, neighbour
//! discovery and non-pod traffic pass, and the extension-header walk holds at its bound and at
//! every truncation.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use xsteer::dataplane::{Dataplane, links::IngressHook};
use xsteer_bpf_tests::{
    INGRESS_HOOKS, TC_NEXT, TC_SHOT, TcOutcome, XDP_DROP, XDP_PASS, dataplane,
    packet::{ETH_P_8021Q, Ext, IPPROTO_NONE, Ipv4, Ipv6, vlan_tagged_times},
    run_ingress, run_tc,
    topology::*,
};
use xsteer_common::{
    counters::Counter,
    maps::{PeerNode, RemotePodCidr},
    mark,
    programs::IPV6_EXT_HEADERS_MAX,
};

/// Loads the object with both halves of the topology (the IPv6 grid on when `grid`), or skips.
fn node(test: &str, grid: bool) -> Option<Dataplane> {
    let mut dp = dataplane(test)?;
    populate(&mut dp);
    populate_v6(&mut dp, grid);
    Some(dp)
}

fn counter(dp: &mut Dataplane, c: Counter) -> u64 {
    dp.counters().unwrap().read().unwrap().get(c)
}

fn classify(dp: &mut Dataplane, frame: &[u8], mark_in: u32) -> TcOutcome {
    run_tc(dp.pod_classifier().unwrap(), frame, mark_in)
}

fn egress(dp: &mut Dataplane, frame: &[u8]) -> u32 {
    run_tc(dp.egress_guard().unwrap(), frame, 0).verdict
}

/// The ingress guard's verdict at `hook`, in XDP's terms.
fn ingress(dp: &mut Dataplane, hook: IngressHook, frame: &[u8]) -> u32 {
    run_ingress(dp, hook, frame)
}

/// Every extension header the walk knows, one of each, as RFC 8200 orders them.
fn every_kind() -> Vec<Ext> {
    vec![
        Ext::HopByHop(0),
        Ext::DestOpts(1),
        Ext::Routing(2),
        Ext::Fragment(0, true),
        Ext::Auth(4),
        Ext::DestOpts(0),
    ]
}

/// A chain of `n` destination options headers (hop-by-hop first when `n` > 0).
fn chain(n: usize) -> Vec<Ext> {
    (0..n)
        .map(|i| {
            if i == 0 {
                Ext::HopByHop(0)
            } else {
                Ext::DestOpts(0)
            }
        })
        .collect()
}

#[test]
fn ipv6_to_a_remote_pod_gets_the_same_mark_as_ipv4() {
    for grid in [false, true] {
        let Some(mut dp) = node("ipv6_to_a_remote_pod_gets_the_same_mark_as_ipv4", grid) else {
            return;
        };
        let cases = [
            // An exact /64.
            (PEER_B_POD6, mark::encrypt(PEER_B_SPI, PEER_B_ID)),
            // A /80 inside a /64 (the slot defers to the trie): the longest prefix wins.
            (PEER_C_POD6, mark::encrypt(PEER_C_SPI, PEER_C_ID)),
            (PEER_D_POD6, mark::encrypt(1, PEER_D_ID)),
            // A /56, wider than a slot.
            (NODE_5_POD6, mark::encrypt(2, NODE_5_ID)),
        ];
        for (dst, want) in cases {
            let frame = Ipv6::udp(LOCAL_POD6, dst).frame();
            let out = classify(&mut dp, &frame, 0x0000_00A5);
            assert_eq!(
                out,
                TcOutcome {
                    verdict: TC_NEXT,
                    mark: want | 0xA5
                },
                "{dst}, grid {grid}"
            );
        }
        // One mark layout: the IPv4 and IPv6 pods of peer B get the same mark.
        let v4 = classify(&mut dp, &Ipv4::udp(LOCAL_POD, PEER_B_POD).frame(), 0);
        let v6 = classify(&mut dp, &Ipv6::udp(LOCAL_POD6, PEER_B_POD6).frame(), 0);
        assert_eq!(v4.mark, 0x0002_3E00);
        assert_eq!(v6.mark, v4.mark);
        // Extension headers do not hide the destination.
        let behind = Ipv6::udp(LOCAL_POD6, PEER_B_POD6).with_ext(&every_kind());
        assert_eq!(classify(&mut dp, &behind.frame(), 0).mark, 0x0002_3E00);
        assert_eq!(counter(&mut dp, Counter::PodMarked), 7);
        assert_eq!(counter(&mut dp, Counter::PodUnmatched), 0);
    }
}

#[test]
fn ipv6_elsewhere_is_untouched_by_the_classifier() {
    for grid in [false, true] {
        let Some(mut dp) = node("ipv6_elsewhere_is_untouched_by_the_classifier", grid) else {
            return;
        };
        let frames = [
            Ipv6::udp(LOCAL_POD6, LOCAL_POD6).frame(),
            Ipv6::udp(LOCAL_POD6, UNKNOWN_POD6).frame(),
            Ipv6::udp(LOCAL_POD6, OUTSIDE6).frame(),
            Ipv6::udp(LOCAL_POD6, LOCAL_NODE_IP6).frame(),
            Ipv6::icmpv6(LINK_LOCAL6, "ff02::1:ff00:2".parse().unwrap(), 135).frame(),
        ];
        for frame in &frames {
            let out = classify(&mut dp, frame, 0xDEAD_BEEF);
            assert_eq!(
                out,
                TcOutcome {
                    verdict: TC_NEXT,
                    mark: 0xDEAD_BEEF
                }
            );
        }
        assert_eq!(counter(&mut dp, Counter::PodUnmatched), frames.len() as u64);
        // Version 4 behind the IPv6 EtherType.
        let bad = Ipv6 {
            version: 4,
            ..Ipv6::udp(LOCAL_POD6, PEER_B_POD6)
        };
        assert_eq!(classify(&mut dp, &bad.frame(), 7).mark, 7);
        assert_eq!(counter(&mut dp, Counter::PodMalformed), 1);
        assert_eq!(counter(&mut dp, Counter::PodMarked), 0);
    }
}

#[test]
fn the_grid_follows_inserts_and_removals() {
    let Some(mut dp) = node("the_grid_follows_inserts_and_removals", true) else {
        return;
    };
    let frame = Ipv6::udp(LOCAL_POD6, UNKNOWN_POD6).frame();
    assert_eq!(classify(&mut dp, &frame, 0).mark, 0);
    let value = RemotePodCidr {
        node_id: 77,
        generation: 4,
        flags: 0,
    };
    let net = cidr6("fd00:10:244:77::/64");
    dp.remote_pod_cidrs_v6()
        .unwrap()
        .insert(net, value)
        .unwrap();
    assert_eq!(classify(&mut dp, &frame, 0).mark, mark::encrypt(4, 77));
    dp.remote_pod_cidrs_v6().unwrap().remove(net).unwrap();
    assert_eq!(classify(&mut dp, &frame, 0).mark, 0);
    let entries = dp.remote_pod_cidrs_v6().unwrap().entries().unwrap();
    assert_eq!(entries.len(), 4);
}

#[test]
fn egress_drops_plaintext_ipv6_to_remote_pods() {
    let Some(mut dp) = node("egress_drops_plaintext_ipv6_to_remote_pods", true) else {
        return;
    };
    let frames = [
        Ipv6::udp(LOCAL_POD6, PEER_B_POD6).frame(),
        // A pod of a node in no map but the pod space.
        Ipv6::udp(LOCAL_POD6, UNKNOWN_POD6).frame(),
        // The host, or any source, to a remote pod.
        Ipv6::udp(LOCAL_NODE_IP6, PEER_C_POD6).frame(),
        Ipv6::udp(OUTSIDE6, NODE_5_POD6).frame(),
        // Raw protocol 50 to a pod is not a tunnel packet.
        Ipv6::esp(LOCAL_POD6, PEER_B_POD6, PEER_B_WIRE_SPI).frame(),
        // ICMPv6 that is not ND, and ND-typed ICMPv6 a router forwarded (hop limit < 255).
        Ipv6::icmpv6(LOCAL_POD6, PEER_B_POD6, 128).frame(),
        Ipv6 {
            hop_limit: 254,
            ..Ipv6::icmpv6(LOCAL_POD6, PEER_B_POD6, 135)
        }
        .frame(),
        // Whatever the extension headers, up to the bound and past it, and fragments.
        Ipv6::udp(LOCAL_POD6, PEER_B_POD6)
            .with_ext(&every_kind())
            .frame(),
        Ipv6::udp(LOCAL_POD6, PEER_B_POD6)
            .with_ext(&chain(IPV6_EXT_HEADERS_MAX + 1))
            .frame(),
        Ipv6::udp(LOCAL_POD6, PEER_B_POD6)
            .with_ext(&[Ext::Fragment(100, false)])
            .frame(),
        // ND behind a chain past the bound cannot be proved to be ND.
        Ipv6::icmpv6(LOCAL_NODE_IP6, PEER_B_POD6, 135)
            .with_ext(&chain(IPV6_EXT_HEADERS_MAX + 1))
            .frame(),
        // Behind VLAN tags.
        vlan_tagged_times(&Ipv6::udp(LOCAL_POD6, PEER_B_POD6).frame(), ETH_P_8021Q, 4),
    ];
    for (i, frame) in frames.iter().enumerate() {
        assert_eq!(egress(&mut dp, frame), TC_SHOT, "frame {i}");
    }
    assert_eq!(
        counter(&mut dp, Counter::EgressLeakDropped),
        frames.len() as u64
    );
    assert_eq!(counter(&mut dp, Counter::EgressPassed), 0);
}

#[test]
fn egress_passes_esp_local_pods_neighbour_discovery_and_non_pod_ipv6() {
    let Some(mut dp) = node(
        "egress_passes_esp_local_pods_neighbour_discovery_and_non_pod_ipv6",
        true,
    ) else {
        return;
    };
    let frames = [
        // The encrypted form: ESP between node addresses, bare and behind headers.
        Ipv6::esp(LOCAL_NODE_IP6, PEER_B_IP6, 0x0001_0003).frame(),
        Ipv6::esp(LOCAL_NODE_IP6, PEER_B_IP6, 0x0001_0003)
            .with_ext(&every_kind())
            .frame(),
        // To this node's own pods, to the internet, between nodes.
        Ipv6::udp(LOCAL_NODE_IP6, LOCAL_POD6).frame(),
        Ipv6::udp(LOCAL_POD6, OUTSIDE6).frame(),
        Ipv6::udp(LOCAL_NODE_IP6, PEER_B_IP6).frame(),
        // Neighbour discovery, every type, even to a pod address, and behind a hop-by-hop
        // header (as MLD has one).
        Ipv6::icmpv6(LINK_LOCAL6, "ff02::2".parse().unwrap(), 133).frame(),
        Ipv6::icmpv6(LINK_LOCAL6, PEER_B_POD6, 134).frame(),
        Ipv6::icmpv6(LOCAL_NODE_IP6, PEER_B_POD6, 135).frame(),
        Ipv6::icmpv6(LOCAL_NODE_IP6, UNKNOWN_POD6, 136).frame(),
        Ipv6::icmpv6(LINK_LOCAL6, PEER_C_POD6, 137).frame(),
        Ipv6::icmpv6(LOCAL_NODE_IP6, PEER_B_POD6, 135)
            .with_ext(&[Ext::HopByHop(0)])
            .frame(),
        // A chain past the bound to a non-pod address.
        Ipv6::udp(LOCAL_NODE_IP6, OUTSIDE6)
            .with_ext(&chain(IPV6_EXT_HEADERS_MAX + 3))
            .frame(),
    ];
    for (i, frame) in frames.iter().enumerate() {
        assert_eq!(egress(&mut dp, frame), TC_NEXT, "frame {i}");
    }
    assert_eq!(counter(&mut dp, Counter::EgressPassed), frames.len() as u64);
    assert_eq!(counter(&mut dp, Counter::EgressLeakDropped), 0);
}

#[test]
fn with_no_ipv6_pod_space_the_guards_leave_ipv6_alone() {
    for hook in INGRESS_HOOKS {
        println!("the ingress guard at {hook}");
        let Some(mut dp) = dataplane("with_no_ipv6_pod_space_the_guards_leave_ipv6_alone") else {
            return;
        };
        populate(&mut dp);
        // Everything IPv6 but the pod space: still nothing is dropped.
        populate_v6(&mut dp, true);
        dp.cluster_pod_cidrs_v6().unwrap().set(&[]).unwrap();
        assert!(dp.cluster_pod_cidrs_v6().unwrap().get().unwrap().is_empty());
        let bad_version = Ipv6 {
            version: 4,
            ..Ipv6::udp(PEER_B_POD6, LOCAL_POD6)
        };
        let frames = [
            Ipv6::udp(LOCAL_POD6, PEER_B_POD6).frame(),
            Ipv6::udp(PEER_B_POD6, LOCAL_POD6).frame(),
            Ipv6::udp(LOCAL_POD6, PEER_B_POD6)
                .with_ext(&chain(IPV6_EXT_HEADERS_MAX + 1))
                .frame(),
            bad_version.frame(),
        ];
        for (i, frame) in frames.iter().enumerate() {
            assert_eq!(egress(&mut dp, frame), TC_NEXT, "egress, frame {i}");
            assert_eq!(
                ingress(&mut dp, hook, frame),
                XDP_PASS,
                "ingress, frame {i}"
            );
        }
        // A header cut short, which only XDP can be given.
        let cut = &Ipv6::udp(PEER_B_POD6, LOCAL_POD6).frame()[..14 + 39];
        if hook == IngressHook::Xdp {
            assert_eq!(ingress(&mut dp, hook, cut), XDP_PASS);
        }
        assert_eq!(counter(&mut dp, Counter::EgressPassed), 4);
        let cut_runs = u64::from(hook == IngressHook::Xdp);
        assert_eq!(counter(&mut dp, Counter::IngressPassed), 4 + cut_runs);
        // And a freshly loaded object, with no IPv6 map filled at all.
        let Some(mut fresh) = dataplane("with_no_ipv6_pod_space_the_guards_leave_ipv6_alone")
        else {
            return;
        };
        populate(&mut fresh);
        for frame in &frames {
            assert_eq!(egress(&mut fresh, frame), TC_NEXT);
            assert_eq!(ingress(&mut fresh, hook, frame), XDP_PASS);
        }
    }
}

#[test]
fn ingress_drops_plaintext_ipv6_from_pods() {
    for hook in INGRESS_HOOKS {
        println!("the ingress guard at {hook}");
        let Some(mut dp) = node("ingress_drops_plaintext_ipv6_from_pods", false) else {
            return;
        };
        let frames = [
            Ipv6::udp(PEER_B_POD6, LOCAL_POD6).frame(),
            Ipv6::udp(UNKNOWN_POD6, LOCAL_NODE_IP6).frame(),
            // A spoofed local pod, and ESP with a pod outside: tunnel ESP has node addresses.
            Ipv6::udp(LOCAL_POD6, LOCAL_NODE_IP6).frame(),
            Ipv6::esp(PEER_B_POD6, LOCAL_NODE_IP6, PEER_B_WIRE_SPI).frame(),
            // ICMPv6 that is not ND, ND-typed with a forwarded hop limit.
            Ipv6::icmpv6(PEER_B_POD6, LOCAL_POD6, 129).frame(),
            Ipv6 {
                hop_limit: 64,
                ..Ipv6::icmpv6(PEER_B_POD6, LOCAL_POD6, 136)
            }
            .frame(),
            // Whatever the headers.
            Ipv6::udp(PEER_B_POD6, LOCAL_POD6)
                .with_ext(&chain(IPV6_EXT_HEADERS_MAX + 1))
                .frame(),
            Ipv6::udp(PEER_B_POD6, LOCAL_POD6)
                .with_ext(&[Ext::Fragment(10, false)])
                .frame(),
            vlan_tagged_times(&Ipv6::udp(PEER_B_POD6, LOCAL_POD6).frame(), ETH_P_8021Q, 2),
        ];
        for (i, frame) in frames.iter().enumerate() {
            assert_eq!(ingress(&mut dp, hook, frame), XDP_DROP, "frame {i}");
        }
        assert_eq!(
            counter(&mut dp, Counter::IngressPlaintextDropped),
            frames.len() as u64
        );
    }
}

#[test]
fn ingress_checks_esp_over_ipv6_against_the_peers_spis() {
    for hook in INGRESS_HOOKS {
        println!("the ingress guard at {hook}");
        let Some(mut dp) = node("ingress_checks_esp_over_ipv6_against_the_peers_spis", false)
        else {
            return;
        };
        let valid = Ipv6::esp(PEER_B_IP6, LOCAL_NODE_IP6, PEER_B_WIRE_SPI);
        let accepted = [
            valid.frame(),
            valid.with_ext(&every_kind()).frame(),
            valid.with_ext(&chain(IPV6_EXT_HEADERS_MAX)).frame(),
        ];
        for (i, frame) in accepted.iter().enumerate() {
            assert_eq!(ingress(&mut dp, hook, frame), XDP_PASS, "accepted {i}");
        }
        assert_eq!(
            counter(&mut dp, Counter::IngressEspAccepted),
            accepted.len() as u64
        );
        let refused = [
            // Another generation, another node's SPI, the right SPI behind headers.
            Ipv6::esp(PEER_B_IP6, LOCAL_NODE_IP6, PEER_B_WIRE_SPI + 1).frame(),
            Ipv6::esp(PEER_B_IP6, LOCAL_NODE_IP6, 0x1234_0003).frame(),
            Ipv6::esp(PEER_B_IP6, LOCAL_NODE_IP6, 0x0002_0009)
                .with_ext(&[Ext::DestOpts(3)])
                .frame(),
        ];
        for (i, frame) in refused.iter().enumerate() {
            assert_eq!(ingress(&mut dp, hook, frame), XDP_DROP, "refused {i}");
        }
        assert_eq!(
            counter(&mut dp, Counter::IngressBadSpiDropped),
            refused.len() as u64
        );
        // Peer B's SPI from peer B's IPv4 address over IPv4 is still accepted: one set, two
        // address families.
        let v4 = Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, PEER_B_WIRE_SPI).frame();
        assert_eq!(ingress(&mut dp, hook, &v4), XDP_PASS);
        // Peer B's SPI from another IPv6 address that is a peer is refused; from one that is not
        // a peer it is someone else's IPsec and passes.
        let other: std::net::Ipv6Addr = "fd00:ffff::99".parse().unwrap();
        let from_other = Ipv6::esp(other, LOCAL_NODE_IP6, PEER_B_WIRE_SPI).frame();
        assert_eq!(ingress(&mut dp, hook, &from_other), XDP_PASS);
        let node_99 = PeerNode {
            node_id: 99,
            flags: 0,
        };
        dp.peer_nodes_v6().unwrap().insert(other, node_99).unwrap();
        assert_eq!(ingress(&mut dp, hook, &from_other), XDP_DROP);
        // An address that moves to another node ID is no longer node 99's.
        let node_98 = PeerNode {
            node_id: 98,
            flags: 0,
        };
        dp.peer_nodes_v6().unwrap().insert(other, node_98).unwrap();
        assert_eq!(dp.peer_nodes_v6().unwrap().addr_of(99).unwrap(), None);
        assert_eq!(
            dp.peer_nodes_v6().unwrap().addr_of(98).unwrap(),
            Some(other)
        );
        // Removing peer B's address: its ESP is someone else's, and passes unchecked.
        dp.peer_nodes_v6().unwrap().remove(PEER_B_IP6).unwrap();
        assert_eq!(
            dp.peer_nodes_v6().unwrap().addr_of(PEER_B_ID).unwrap(),
            None
        );
        assert_eq!(dp.peer_nodes_v6().unwrap().entries().unwrap().len(), 1);
        let before = counter(&mut dp, Counter::IngressEspAccepted);
        assert_eq!(ingress(&mut dp, hook, &valid.frame()), XDP_PASS);
        assert_eq!(counter(&mut dp, Counter::IngressEspAccepted), before);
    }
}

#[test]
fn ingress_passes_neighbour_discovery_non_pod_ipv6_and_later_fragments() {
    for hook in INGRESS_HOOKS {
        println!("the ingress guard at {hook}");
        let Some(mut dp) = node(
            "ingress_passes_neighbour_discovery_non_pod_ipv6_and_later_fragments",
            false,
        ) else {
            return;
        };
        let frames = [
            // ND and RA, from link-local and from pod addresses with hop limit 255.
            Ipv6::icmpv6(LINK_LOCAL6, "ff02::1".parse().unwrap(), 134).frame(),
            Ipv6::icmpv6(LINK_LOCAL6, "ff02::1:ff00:1".parse().unwrap(), 135).frame(),
            Ipv6::icmpv6(PEER_B_POD6, LOCAL_NODE_IP6, 136).frame(),
            Ipv6::icmpv6(PEER_B_POD6, LINK_LOCAL6, 133).frame(),
            Ipv6::icmpv6(UNKNOWN_POD6, LOCAL_POD6, 137).frame(),
            // Between nodes, from the internet.
            Ipv6::udp(PEER_B_IP6, LOCAL_NODE_IP6).frame(),
            Ipv6::udp(OUTSIDE6, LOCAL_POD6).frame(),
            // A later fragment of ESP from a peer: no SPI in it; reassembly follows the first.
            Ipv6::esp(PEER_B_IP6, LOCAL_NODE_IP6, 0x0002_0009)
                .with_ext(&[Ext::Fragment(185, false)])
                .frame(),
            // "No next header" from a peer, and a long chain from a host that is no peer.
            Ipv6 {
                protocol: IPPROTO_NONE,
                payload: Vec::new(),
                ..Ipv6::udp(PEER_B_IP6, LOCAL_NODE_IP6)
            }
            .frame(),
            Ipv6::esp(OUTSIDE6, LOCAL_NODE_IP6, 0x1000)
                .with_ext(&chain(IPV6_EXT_HEADERS_MAX + 1))
                .frame(),
        ];
        for (i, frame) in frames.iter().enumerate() {
            assert_eq!(ingress(&mut dp, hook, frame), XDP_PASS, "frame {i}");
        }
        assert_eq!(
            counter(&mut dp, Counter::IngressPassed),
            frames.len() as u64
        );
    }
}

#[test]
fn ingress_drops_esp_from_a_peer_that_the_walk_cannot_prove() {
    for hook in INGRESS_HOOKS {
        println!("the ingress guard at {hook}");
        let Some(mut dp) = node(
            "ingress_drops_esp_from_a_peer_that_the_walk_cannot_prove",
            false,
        ) else {
            return;
        };
        let esp = Ipv6::esp(PEER_B_IP6, LOCAL_NODE_IP6, PEER_B_WIRE_SPI);
        let udp = Ipv6::udp(PEER_B_IP6, LOCAL_NODE_IP6);
        let frames = [
            // One header past the bound, valid SPI or not, ESP or not: unprovable.
            esp.with_ext(&chain(IPV6_EXT_HEADERS_MAX + 1)).frame(),
            udp.with_ext(&chain(IPV6_EXT_HEADERS_MAX + 1)).frame(),
            // ESP whose SPI is cut off.
            esp.frame()[..14 + 40 + 3].to_vec(),
        ];
        for (i, frame) in frames.iter().enumerate() {
            assert_eq!(ingress(&mut dp, hook, frame), XDP_DROP, "frame {i}");
        }
        assert_eq!(
            counter(&mut dp, Counter::IngressMalformedDropped),
            frames.len() as u64
        );
        assert_eq!(counter(&mut dp, Counter::IngressEspAccepted), 0);
    }
}

/// Every prefix of frames with chains up to and past the bound: nothing crashes, no plaintext
/// between pods passes either guard, and ESP from a peer cut anywhere in its headers is
/// refused, never accepted unchecked.
#[test]
fn truncation_at_every_length_of_the_walk() {
    for hook in INGRESS_HOOKS {
        println!("the ingress guard at {hook}");
        let Some(mut dp) = node("truncation_at_every_length_of_the_walk", true) else {
            return;
        };
        let chains: Vec<Vec<Ext>> = vec![
            Vec::new(),
            every_kind(),
            chain(IPV6_EXT_HEADERS_MAX),
            chain(IPV6_EXT_HEADERS_MAX + 1),
            vec![Ext::Fragment(0, true), Ext::Auth(1)],
            vec![Ext::Routing(30)],
        ];
        for ext in &chains {
            let to_remote = Ipv6::udp(LOCAL_POD6, PEER_B_POD6).with_ext(ext);
            let from_remote = Ipv6::udp(PEER_B_POD6, LOCAL_POD6).with_ext(ext);
            let esp = Ipv6::esp(PEER_B_IP6, LOCAL_NODE_IP6, PEER_B_WIRE_SPI).with_ext(ext);
            let headers = esp.headers_len();
            let (to_remote, from_remote, esp) =
                (to_remote.frame(), from_remote.frame(), esp.frame());
            for len in 0..=esp.len() {
                // The kernel refuses to test-run tc on less than an Ethernet and IPv6 header.
                if len >= 14 + 40 && len <= to_remote.len() {
                    let out = run_tc(dp.egress_guard().unwrap(), &to_remote[..len], 0);
                    assert_eq!(
                        out.verdict,
                        TC_SHOT,
                        "egress, {} headers, {len} bytes",
                        ext.len()
                    );
                }
                // XDP takes any frame from an Ethernet header on: the EtherType says IPv6, so
                // from 14 bytes on the guard must decide; tc, as above, from an IPv6 header on.
                let runs = if hook == IngressHook::Xdp {
                    14
                } else {
                    14 + 40
                };
                if len >= runs && len <= from_remote.len() {
                    let verdict = ingress(&mut dp, hook, &from_remote[..len]);
                    assert_eq!(
                        verdict,
                        XDP_DROP,
                        "ingress, {} headers, {len} bytes",
                        ext.len()
                    );
                }
                if len >= runs {
                    let verdict = ingress(&mut dp, hook, &esp[..len]);
                    let whole = ext.len() <= IPV6_EXT_HEADERS_MAX && len >= headers + 4;
                    let want = if whole { XDP_PASS } else { XDP_DROP };
                    assert_eq!(verdict, want, "ESP, {} headers, {len} bytes", ext.len());
                }
            }
        }
    }
}

#[test]
fn esp_over_ipv6_is_found_after_every_kind_of_header() {
    for hook in INGRESS_HOOKS {
        println!("the ingress guard at {hook}");
        let Some(mut dp) = node("esp_over_ipv6_is_found_after_every_kind_of_header", false) else {
            return;
        };
        let bad = Ipv6::esp(PEER_B_IP6, LOCAL_NODE_IP6, 0x0002_000A);
        for ext in every_kind() {
            if let Ext::Fragment(..) = ext {
                // A first fragment is walked through like any header.
                let first = bad.with_ext(&[Ext::Fragment(0, true)]).frame();
                assert_eq!(ingress(&mut dp, hook, &first), XDP_DROP, "first fragment");
                continue;
            }
            for n in 1..=IPV6_EXT_HEADERS_MAX {
                let frame = bad.with_ext(&vec![ext; n]).frame();
                assert_eq!(ingress(&mut dp, hook, &frame), XDP_DROP, "{n} × {ext:?}");
            }
            let past = bad.with_ext(&[ext; IPV6_EXT_HEADERS_MAX + 1]).frame();
            assert_eq!(ingress(&mut dp, hook, &past), XDP_DROP, "past the bound");
        }
        // Five kinds besides the fragment header, each at every count up to the bound.
        assert_eq!(
            counter(&mut dp, Counter::IngressBadSpiDropped),
            1 + 5 * IPV6_EXT_HEADERS_MAX as u64
        );
        assert_eq!(counter(&mut dp, Counter::IngressMalformedDropped), 5);
    }
}
