//! ns/packet of each program against an empty program of its own type, via BPF_PROG_TEST_RUN,
//! on one node of a large cluster.
//!
//! One object is loaded and its maps filled as a node of a 65,536-node cluster would hold them:
//! the cluster pod space 10.0.0.0/8 in `cluster_pod_cidrs`, 65,536 remote /24s in
//! `remote_pod_cidrs` with the grid of /24 slots in front, this node's 10.0.0.0/24 in
//! `local_pod_cidrs`, 65,534 peers in `peer_nodes` and two wire SPIs each (generations 3 and 4
//! of one epoch pairing) in `peer_spis` and its sets; one peer has one pairing more than a set
//! holds, the last accepted through the hash. The IPv6 maps hold the same node's IPv6 half: the
//! pod space fd00:10::/48, 65,536 remote /64s of it with the grid of /64 slots in front, this
//! node's fd00:10::/64, and the 65,534 peers' IPv6 addresses (fd00:ffff:: + node ID), which
//! share the peers' SPI sets. Each row runs one program on one frame and, right
//! before it, the empty program of the same type (tc or XDP) on the same frame; rounds
//! interleave every row so that drift (frequency, noise from the other core) hits them alike,
//! and the table reports medians. Prints a markdown section for docs/benchmarks.md (`cargo
//! xtask bench guards` writes it there).

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd},
};

use xsteer::{
    cidr::{Ipv4Cidr, Ipv6Cidr},
    dataplane::{Dataplane, GridV6, grid::Grid},
};
use xsteer_bpf_tests::{
    TC_NEXT, TC_SHOT, XDP_DROP, XDP_PASS,
    bench::{Empty, median, ns_per_packet},
    packet::{Ext, Ipv4, Ipv6},
};
use xsteer_common::maps::{LocalPodCidr, PeerNode, RemotePodCidr, SPI_PAIRINGS_MAX};

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 15;
/// Target for each guard's typical packet, ns over the empty program.
const TARGET_NS: i64 = 10;

/// This node's ID; node `id` has the IP 100.64.0.0 + `id`.
const LOCAL_ID: u16 = 1;
/// The peer the benchmark frames come from and go to (the last one inserted).
const PEER_ID: u16 = 65_535;
/// A peer with one epoch pairing more than its set holds: the last is in the hash alone.
const BUSY_PEER_ID: u16 = 65_534;

fn node_ip(id: u16) -> Ipv4Addr {
    Ipv4Addr::from(0x6440_0000 | u32::from(id))
}

/// Node `id`'s IPv6 address: fd00:ffff:: + `id`.
fn node_ip6(id: u16) -> Ipv6Addr {
    Ipv6Addr::from(0xfd00_ffff_u128 << 96 | u128::from(id))
}

/// Pod `host` of /64 number `index` of fd00:10::/48 (this node has /64 0).
fn pod6(index: u16, host: u64) -> Ipv6Addr {
    Ipv6Addr::from(0xfd00_0010_u128 << 96 | u128::from(index) << 64 | u128::from(host))
}

/// The wire SPI of key generation `generation` from node `id`, under the epoch pairing whose
/// tags are `tags` (6 bits), in CPU slot 0.
fn wire_spi(id: u16, tags: u32, generation: u32) -> u32 {
    u32::from(id) << 16 | tags << 4 | generation
}

/// Tags of the busy peer's pairings beyond the first (tags 0): all but the last fill its set,
/// the last goes to the hash.
const MORE_PAIRINGS: [u32; SPI_PAIRINGS_MAX] = {
    let mut tags = [0; SPI_PAIRINGS_MAX];
    let mut i = 0;
    while i < SPI_PAIRINGS_MAX {
        tags[i] = 0x09 * (i as u32 + 1);
        i += 1;
    }
    tags
};

fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().expect("benchmark CIDR")
}

/// Loads the object and fills its maps as a node of a 65,536-node cluster.
fn node() -> Dataplane {
    let mut dp = Dataplane::load().expect("load the object (root?)");
    dp.load_programs().expect("verifier");
    let mut remote = dp.remote_pod_cidrs().unwrap();
    for i in 0..65_536u32 {
        let value = RemotePodCidr {
            node_id: (i % 65_535 + 1) as u16,
            generation: 3,
            flags: 0,
        };
        let net = Ipv4Cidr::new(Ipv4Addr::from(0x0A00_0000 | (i << 8)), 24).unwrap();
        remote.insert(net, value).unwrap();
    }
    remote
        .set_grid(Some(Grid::new(cidr("10.0.0.0/8"), 24).unwrap()))
        .unwrap();
    dp.cluster_pod_cidrs()
        .unwrap()
        .set(&[cidr("10.0.0.0/8")])
        .unwrap();
    let local = LocalPodCidr {
        node_id: LOCAL_ID,
        flags: 0,
    };
    dp.local_pod_cidrs()
        .unwrap()
        .insert(cidr("10.0.0.0/24"), local)
        .unwrap();
    let mut peers = dp.peer_nodes().unwrap();
    for id in 2..=PEER_ID {
        let node = PeerNode {
            node_id: id,
            flags: 0,
        };
        peers.insert(node_ip(id), node).unwrap();
    }
    let mut spis = dp.peer_spis().unwrap();
    for id in 2..=PEER_ID {
        for generation in [3, 4] {
            spis.insert(node_ip(id), wire_spi(id, 0, generation))
                .unwrap();
        }
    }
    for tags in MORE_PAIRINGS {
        let spi = wire_spi(BUSY_PEER_ID, tags, 3);
        spis.insert(node_ip(BUSY_PEER_ID), spi).unwrap();
    }
    fill_v6(&mut dp, local);
    dp
}

/// The IPv6 half of the node: pod space, remote /64s and their grid, local /64, peers.
fn fill_v6(dp: &mut Dataplane, local: LocalPodCidr) {
    let mut remote = dp.remote_pod_cidrs_v6().unwrap();
    for i in 0..65_536u32 {
        let value = RemotePodCidr {
            node_id: (i % 65_535 + 1) as u16,
            generation: 3,
            flags: 0,
        };
        let net = Ipv6Cidr::new(pod6(i as u16, 0), 64).unwrap();
        remote.insert(net, value).unwrap();
    }
    let cluster: Ipv6Cidr = "fd00:10::/48".parse().unwrap();
    remote
        .set_grid(Some(GridV6::new(cluster).unwrap()))
        .unwrap();
    dp.cluster_pod_cidrs_v6().unwrap().set(&[cluster]).unwrap();
    dp.local_pod_cidrs_v6()
        .unwrap()
        .insert(Ipv6Cidr::new(pod6(0, 0), 64).unwrap(), local)
        .unwrap();
    let mut peers = dp.peer_nodes_v6().unwrap();
    for id in 2..=PEER_ID {
        let node = PeerNode {
            node_id: id,
            flags: 0,
        };
        peers.insert(node_ip6(id), node).unwrap();
    }
}

/// The program a row runs.
#[derive(Clone, Copy)]
enum Program {
    Classifier,
    EgressGuard,
    IngressGuard,
    /// The ingress guard's tc entry point, which the agent attaches on a veth uplink.
    IngressGuardTc,
}

impl Program {
    fn name(self) -> &'static str {
        match self {
            Program::Classifier => "pod_classifier",
            Program::EgressGuard => "egress_guard",
            Program::IngressGuard => "ingress_guard",
            Program::IngressGuardTc => "ingress_tc",
        }
    }

    fn empty(self) -> Empty {
        match self {
            Program::Classifier | Program::EgressGuard | Program::IngressGuardTc => Empty::Tc,
            Program::IngressGuard => Empty::Xdp,
        }
    }

    fn fd(self, dp: &mut Dataplane) -> i32 {
        match self {
            Program::Classifier => dp
                .pod_classifier()
                .unwrap()
                .fd()
                .unwrap()
                .as_fd()
                .as_raw_fd(),
            Program::EgressGuard => dp.egress_guard().unwrap().fd().unwrap().as_fd().as_raw_fd(),
            Program::IngressGuard => dp
                .ingress_guard()
                .unwrap()
                .fd()
                .unwrap()
                .as_fd()
                .as_raw_fd(),
            Program::IngressGuardTc => dp
                .ingress_guard_tc()
                .unwrap()
                .fd()
                .unwrap()
                .as_fd()
                .as_raw_fd(),
        }
    }
}

/// One row: a program, the packet it sees, the verdict it must give, and whether it is the
/// program's typical packet (held to the target).
struct Row {
    program: Program,
    packet: &'static str,
    frame: Vec<u8>,
    verdict: u32,
    typical: bool,
}

fn rows() -> Vec<Row> {
    let local_pod = Ipv4Addr::new(10, 0, 0, 5);
    let remote_pod = Ipv4Addr::new(10, 255, 255, 9);
    let (local, peer, busy) = (node_ip(LOCAL_ID), node_ip(PEER_ID), node_ip(BUSY_PEER_ID));
    let (local_pod6, remote_pod6) = (pod6(0, 5), pod6(0xFFFF, 9));
    let (local6, peer6) = (node_ip6(LOCAL_ID), node_ip6(PEER_ID));
    let row = |program, packet, frame: Vec<u8>, verdict, typical| Row {
        program,
        packet,
        frame,
        verdict,
        typical,
    };
    vec![
        row(
            Program::Classifier,
            "UDP from a local pod to a remote pod (marked)",
            Ipv4::udp(local_pod, remote_pod).frame(),
            TC_NEXT,
            false,
        ),
        row(
            Program::EgressGuard,
            "the node's own ESP to a peer (passes)",
            Ipv4::esp(local, peer, wire_spi(LOCAL_ID, 0, 3)).frame(),
            TC_NEXT,
            true,
        ),
        row(
            Program::EgressGuard,
            "plaintext from a local pod to a remote pod (dropped)",
            Ipv4::udp(local_pod, remote_pod).frame(),
            TC_SHOT,
            false,
        ),
        row(
            Program::IngressGuard,
            "ESP from a peer with a valid SPI (accepted)",
            Ipv4::esp(peer, local, wire_spi(PEER_ID, 0, 3)).frame(),
            XDP_PASS,
            true,
        ),
        row(
            Program::IngressGuard,
            "ESP from a peer, valid SPI in the last pairing of its set (accepted)",
            Ipv4::esp(
                busy,
                local,
                wire_spi(BUSY_PEER_ID, MORE_PAIRINGS[SPI_PAIRINGS_MAX - 2], 3),
            )
            .frame(),
            XDP_PASS,
            false,
        ),
        row(
            Program::IngressGuard,
            "ESP from a peer, valid SPI its set has no room for (accepted through the hash)",
            Ipv4::esp(
                busy,
                local,
                wire_spi(BUSY_PEER_ID, MORE_PAIRINGS[SPI_PAIRINGS_MAX - 1], 3),
            )
            .frame(),
            XDP_PASS,
            false,
        ),
        row(
            Program::IngressGuard,
            "ESP from a peer with an SPI not valid for it (dropped)",
            Ipv4::esp(peer, local, wire_spi(PEER_ID, 0, 9)).frame(),
            XDP_DROP,
            false,
        ),
        row(
            Program::IngressGuard,
            "ESP from a host that is not a peer (passes)",
            Ipv4::esp(Ipv4Addr::new(198, 51, 100, 1), local, 0x1000).frame(),
            XDP_PASS,
            false,
        ),
        row(
            Program::IngressGuard,
            "UDP between nodes (passes)",
            Ipv4::udp(peer, local).frame(),
            XDP_PASS,
            false,
        ),
        row(
            Program::IngressGuard,
            "plaintext from a remote pod (dropped)",
            Ipv4::udp(remote_pod, local_pod).frame(),
            XDP_DROP,
            false,
        ),
        row(
            Program::IngressGuardTc,
            "ESP from a peer with a valid SPI (accepted)",
            Ipv4::esp(peer, local, wire_spi(PEER_ID, 0, 3)).frame(),
            TC_NEXT,
            true,
        ),
        row(
            Program::IngressGuardTc,
            "plaintext from a remote pod (dropped; not decrypted, so the secpath is asked)",
            Ipv4::udp(remote_pod, local_pod).frame(),
            TC_SHOT,
            false,
        ),
        row(
            Program::Classifier,
            "IPv6: UDP from a local pod to a remote pod (marked)",
            Ipv6::udp(local_pod6, remote_pod6).frame(),
            TC_NEXT,
            false,
        ),
        row(
            Program::EgressGuard,
            "IPv6: the node's own ESP to a peer (passes)",
            Ipv6::esp(local6, peer6, wire_spi(LOCAL_ID, 0, 3)).frame(),
            TC_NEXT,
            true,
        ),
        row(
            Program::EgressGuard,
            "IPv6: plaintext from a local pod to a remote pod (dropped)",
            Ipv6::udp(local_pod6, remote_pod6).frame(),
            TC_SHOT,
            false,
        ),
        row(
            Program::IngressGuard,
            "IPv6: ESP from a peer with a valid SPI (accepted)",
            Ipv6::esp(peer6, local6, wire_spi(PEER_ID, 0, 3)).frame(),
            XDP_PASS,
            true,
        ),
        row(
            Program::IngressGuard,
            "IPv6: ESP from a peer with a valid SPI behind hop-by-hop and destination options (accepted)",
            Ipv6::esp(peer6, local6, wire_spi(PEER_ID, 0, 3))
                .with_ext(&[Ext::HopByHop(0), Ext::DestOpts(0)])
                .frame(),
            XDP_PASS,
            false,
        ),
        row(
            Program::IngressGuard,
            "IPv6: ESP from a peer with an SPI not valid for it (dropped)",
            Ipv6::esp(peer6, local6, wire_spi(PEER_ID, 0, 9)).frame(),
            XDP_DROP,
            false,
        ),
        row(
            Program::IngressGuard,
            "IPv6: UDP between nodes (passes)",
            Ipv6::udp(peer6, local6).frame(),
            XDP_PASS,
            false,
        ),
        row(
            Program::IngressGuard,
            "IPv6: plaintext from a remote pod (dropped)",
            Ipv6::udp(remote_pod6, local_pod6).frame(),
            XDP_DROP,
            false,
        ),
        row(
            Program::IngressGuardTc,
            "IPv6: ESP from a peer with a valid SPI (accepted)",
            Ipv6::esp(peer6, local6, wire_spi(PEER_ID, 0, 3)).frame(),
            TC_NEXT,
            true,
        ),
    ]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the guards benchmark loads BPF programs: run it as root");
        std::process::exit(1);
    }
    let mut dp = node();
    let rows = rows();
    let fds: Vec<i32> = rows.iter().map(|r| r.program.fd(&mut dp)).collect();
    let empty_tc = Empty::Tc.load();
    let empty_xdp = Empty::Xdp.load();
    let empty_fd = |empty| match empty {
        Empty::Tc => empty_tc,
        Empty::Xdp => empty_xdp,
    };

    let mut program_samples = vec![Vec::new(); rows.len()];
    let mut empty_samples = vec![Vec::new(); rows.len()];
    for round in 0..ROUNDS {
        for (i, row) in rows.iter().enumerate() {
            let empty = row.program.empty();
            empty_samples[i].push(ns_per_packet(
                empty_fd(empty),
                &row.frame,
                REPEAT,
                empty.verdict(),
            ));
            program_samples[i].push(ns_per_packet(fds[i], &row.frame, REPEAT, row.verdict));
        }
        eprintln!("round {}/{ROUNDS} done", round + 1);
    }

    println!(
        "| program | packet | program ns/packet | empty program of its type ns/packet | program − empty | ratio |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    let mut verdicts = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let m = median(&mut program_samples[i]);
        let base = median(&mut empty_samples[i]);
        let over = i64::from(m) - i64::from(base);
        let (name, packet) = if row.typical {
            (
                format!("**{}**", row.program.name()),
                format!("**{}**", row.packet),
            )
        } else {
            (row.program.name().to_owned(), row.packet.to_owned())
        };
        println!(
            "| {name} | {packet} | {m} | {base} ({}) | {over:+} | {:.2} |",
            match row.program.empty() {
                Empty::Tc => "tc",
                Empty::Xdp => "XDP",
            },
            f64::from(m) / f64::from(base.max(1))
        );
        if row.typical {
            let family = if row.frame[12..14] == [0x86, 0xDD] {
                "IPv6"
            } else {
                "IPv4"
            };
            verdicts.push(format!(
                "{} on its typical {family} packet: {over:+} ns over empty, target ≤ {TARGET_NS} ns: **{}**",
                row.program.name(),
                if over <= TARGET_NS { "met" } else { "not met" }
            ));
        }
    }
    println!();
    for line in verdicts {
        println!("- {line}.");
    }
    println!();
    println!(
        "Medians of {ROUNDS} interleaved rounds of {REPEAT} runs each; bold: each guard's typical packet."
    );
}
