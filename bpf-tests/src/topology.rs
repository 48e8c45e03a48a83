//! A small cluster the tests load into the maps: this node, two peers, and the pod space; and
//! its IPv6 half, loaded on demand.

use std::net::{Ipv4Addr, Ipv6Addr};

use xsteer::{
    cidr::{Ipv4Cidr, Ipv6Cidr},
    dataplane::{Dataplane, GridV6},
};
use xsteer_common::maps::{LocalPodCidr, PeerNode, RemotePodCidr};

/// This node.
pub const LOCAL_NODE_ID: u16 = 1;
/// This node's IP.
pub const LOCAL_NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
/// A pod on this node (in 10.244.1.0/24).
pub const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);

/// Peer B: node ID 2, sends and receives with key generation 3.
pub const PEER_B_ID: u16 = 2;
/// Peer B's node IP.
pub const PEER_B_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
/// A pod on peer B (in 10.244.2.0/24).
pub const PEER_B_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 7);
/// Key generation used towards peer B.
pub const PEER_B_SPI: u8 = 3;
/// The wire SPI peer B may currently send with.
pub const PEER_B_WIRE_SPI: u32 = 0x0002_0003;

/// Peer C: node ID 0x1234, key generation 15, with a /16 and a more specific /24.
pub const PEER_C_ID: u16 = 0x1234;
/// Peer C's node IP.
pub const PEER_C_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 3);
/// A pod in peer C's /24 carved out of the shared /16.
pub const PEER_C_POD: Ipv4Addr = Ipv4Addr::new(10, 250, 9, 9);
/// Key generation used towards peer C.
pub const PEER_C_SPI: u8 = 15;
/// Node ID that owns the rest of 10.250.0.0/16.
pub const PEER_D_ID: u16 = 4;
/// A pod in 10.250.0.0/16 outside peer C's /24.
pub const PEER_D_POD: Ipv4Addr = Ipv4Addr::new(10, 250, 1, 1);

/// An address that is no pod's.
pub const OUTSIDE: Ipv4Addr = Ipv4Addr::new(8, 8, 8, 8);

/// The cluster's pod space: every pod above lies in it.
pub const CLUSTER_POD_CIDRS: [&str; 2] = ["10.244.0.0/16", "10.250.0.0/16"];
/// A pod of a node that is in no map but the pod space: one that left, or whose record was
/// lost. Its traffic is never marked, so only the pod space can guard it.
pub const UNKNOWN_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 77, 7);

/// Parses a CIDR the tests spell out.
pub fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().expect("test CIDR")
}

/// Writes the topology into the maps.
pub fn populate(dataplane: &mut Dataplane) {
    let space: Vec<Ipv4Cidr> = CLUSTER_POD_CIDRS.iter().map(|c| cidr(c)).collect();
    dataplane.cluster_pod_cidrs().unwrap().set(&space).unwrap();
    dataplane
        .local_pod_cidrs()
        .unwrap()
        .insert(
            cidr("10.244.1.0/24"),
            LocalPodCidr {
                node_id: LOCAL_NODE_ID,
                flags: 0,
            },
        )
        .unwrap();
    let mut remote = dataplane.remote_pod_cidrs().unwrap();
    for (net, node_id, generation) in [
        ("10.244.2.0/24", PEER_B_ID, PEER_B_SPI),
        ("10.250.0.0/16", PEER_D_ID, 1),
        ("10.250.9.0/24", PEER_C_ID, PEER_C_SPI),
    ] {
        let value = RemotePodCidr {
            node_id,
            generation,
            flags: 0,
        };
        remote.insert(cidr(net), value).unwrap();
    }
    let mut peers = dataplane.peer_nodes().unwrap();
    peers
        .insert(
            PEER_B_IP,
            PeerNode {
                node_id: PEER_B_ID,
                flags: 0,
            },
        )
        .unwrap();
    peers
        .insert(
            PEER_C_IP,
            PeerNode {
                node_id: PEER_C_ID,
                flags: 0,
            },
        )
        .unwrap();
    dataplane
        .peer_spis()
        .unwrap()
        .insert(PEER_B_IP, PEER_B_WIRE_SPI)
        .unwrap();
}

/// This node's IPv6 address.
pub const LOCAL_NODE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xffff, 0, 0, 0, 0, 0, 1);
/// A pod on this node (in fd00:10:244:1::/64).
pub const LOCAL_POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 5);
/// Peer B's IPv6 node address.
pub const PEER_B_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xffff, 0, 0, 0, 0, 0, 2);
/// A pod on peer B (in fd00:10:244:2::/64).
pub const PEER_B_POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 7);
/// A pod in peer C's /80, carved out of peer D's /64 (fd00:10:244:9::/64).
pub const PEER_C_POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 9, 1, 0, 0, 9);
/// A pod in peer D's /64 outside peer C's /80.
pub const PEER_D_POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 9, 2, 0, 0, 1);
/// Node 5, whose pods have a /56 (wider than a grid slot).
pub const NODE_5_ID: u16 = 5;
/// A pod in node 5's fd00:10:244:100::/56.
pub const NODE_5_POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0x1a7, 0, 0, 0, 1);
/// A pod of a node in no map but the IPv6 pod space.
pub const UNKNOWN_POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0x77, 0, 0, 0, 7);
/// An IPv6 address that is no pod's.
pub const OUTSIDE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 8);
/// A link-local address, as neighbour discovery uses.
pub const LINK_LOCAL6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
/// The cluster's IPv6 pod space.
pub const CLUSTER_POD_CIDRS_V6: [&str; 1] = ["fd00:10:244::/48"];

/// Parses an IPv6 CIDR the tests spell out.
pub fn cidr6(s: &str) -> Ipv6Cidr {
    s.parse().expect("test CIDR")
}

/// Writes the IPv6 half of the topology into the maps, with the grid of /64 slots over
/// fd00:10:244::/48 in front of the remote trie when `grid`.
pub fn populate_v6(dataplane: &mut Dataplane, grid: bool) {
    let space: Vec<Ipv6Cidr> = CLUSTER_POD_CIDRS_V6.iter().map(|c| cidr6(c)).collect();
    dataplane
        .cluster_pod_cidrs_v6()
        .unwrap()
        .set(&space)
        .unwrap();
    let local = LocalPodCidr {
        node_id: LOCAL_NODE_ID,
        flags: 0,
    };
    dataplane
        .local_pod_cidrs_v6()
        .unwrap()
        .insert(cidr6("fd00:10:244:1::/64"), local)
        .unwrap();
    let mut remote = dataplane.remote_pod_cidrs_v6().unwrap();
    for (net, node_id, generation) in [
        ("fd00:10:244:2::/64", PEER_B_ID, PEER_B_SPI),
        ("fd00:10:244:9::/64", PEER_D_ID, 1),
        ("fd00:10:244:9:1::/80", PEER_C_ID, PEER_C_SPI),
        ("fd00:10:244:100::/56", NODE_5_ID, 2),
    ] {
        let value = RemotePodCidr {
            node_id,
            generation,
            flags: 0,
        };
        remote.insert(cidr6(net), value).unwrap();
    }
    if grid {
        let grid = GridV6::new(cidr6("fd00:10:244::/48")).unwrap();
        remote.set_grid(Some(grid)).unwrap();
    }
    dataplane
        .peer_nodes_v6()
        .unwrap()
        .insert(
            PEER_B_IP6,
            PeerNode {
                node_id: PEER_B_ID,
                flags: 0,
            },
        )
        .unwrap();
}
