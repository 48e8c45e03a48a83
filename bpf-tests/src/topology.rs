//! A small cluster the tests load into the maps: this node, two peers, and the pod space.

use std::net::Ipv4Addr;

use xsteer::{cidr::Ipv4Cidr, dataplane::Dataplane};
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
