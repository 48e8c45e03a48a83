//! ns/packet of the pod classifier against an empty tc program, via BPF_PROG_TEST_RUN.
//!
//! Both programs run through the same raw `BPF_PROG_TEST_RUN` call on the same frame; the
//! kernel times its own loop of `REPEAT` runs and reports the mean per run, so syscall and
//! harness overhead stay out of the figure. Rounds interleave the configurations so that drift
//! (frequency, noise from the other core) hits all of them alike; the table reports medians.
//! IPv4 and IPv6 are measured in the same run: /24s of 10.0.0.0/8, and /64s of fd00:10::/48.
//! Prints a markdown section for docs/benchmarks.md (`cargo xtask bench` writes it there).

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
    TC_NEXT,
    bench::{Empty, median, ns_per_packet},
    packet::{Ipv4, Ipv6},
};
use xsteer_common::maps::RemotePodCidr;

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 7;
const SIZES: [u32; 3] = [1, 1_000, 65_536];

/// A loaded classifier whose map holds `n` /24s of 10.0.0.0/8, with the grid of /24 slots over
/// 10.0.0.0/8 in front of the trie when `grid`; returns it and a frame that hits the last CIDR
/// inserted.
fn classifier_with(n: u32, grid: bool) -> (Dataplane, Vec<u8>) {
    let mut dataplane = Dataplane::load().expect("load the object (root?)");
    dataplane.load_programs().expect("verifier");
    let mut remote = dataplane.remote_pod_cidrs().unwrap();
    let cidr = |i: u32| Ipv4Cidr::new(Ipv4Addr::from(0x0A00_0000 | (i << 8)), 24).unwrap();
    for i in 0..n {
        let value = RemotePodCidr {
            node_id: (i % 65_535 + 1) as u16,
            generation: 3,
            flags: 0,
        };
        remote.insert(cidr(i), value).unwrap();
    }
    if grid {
        let grid = Grid::new("10.0.0.0/8".parse().unwrap(), 24).unwrap();
        remote.set_grid(Some(grid)).unwrap();
    }
    let last = cidr(n - 1).addr().octets();
    let dst = Ipv4Addr::new(last[0], last[1], last[2], 9);
    let frame = Ipv4::udp(Ipv4Addr::new(10, 255, 255, 1), dst).frame();
    (dataplane, frame)
}

/// As [`classifier_with`], for IPv6: `n` /64s of fd00:10::/48, with the grid of /64 slots over
/// it when `grid`.
fn classifier_v6_with(n: u32, grid: bool) -> (Dataplane, Vec<u8>) {
    let mut dataplane = Dataplane::load().expect("load the object (root?)");
    dataplane.load_programs().expect("verifier");
    let mut remote = dataplane.remote_pod_cidrs_v6().unwrap();
    let base = u128::from("fd00:10::".parse::<Ipv6Addr>().unwrap());
    let cidr = |i: u32| Ipv6Cidr::new(Ipv6Addr::from(base | u128::from(i) << 64), 64).unwrap();
    for i in 0..n {
        let value = RemotePodCidr {
            node_id: (i % 65_535 + 1) as u16,
            generation: 3,
            flags: 0,
        };
        remote.insert(cidr(i), value).unwrap();
    }
    if grid {
        let grid = GridV6::new("fd00:10::/48".parse().unwrap()).unwrap();
        remote.set_grid(Some(grid)).unwrap();
    }
    let dst = Ipv6Addr::from(u128::from(cidr(n - 1).addr()) | 9);
    let src = "fd00:11::1".parse().unwrap();
    (dataplane, Ipv6::udp(src, dst).frame())
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the classifier benchmark loads BPF programs: run it as root");
        std::process::exit(1);
    }
    let baseline = Empty::Tc.load();
    let configs: Vec<(bool, u32, bool)> = [false, true]
        .into_iter()
        .flat_map(|v6| {
            [false, true]
                .into_iter()
                .flat_map(move |grid| SIZES.iter().map(move |&n| (v6, n, grid)))
        })
        .collect();
    let mut classifiers: Vec<(u32, Dataplane, Vec<u8>)> = configs
        .iter()
        .map(|&(v6, n, grid)| {
            let (dataplane, frame) = if v6 {
                classifier_v6_with(n, grid)
            } else {
                classifier_with(n, grid)
            };
            (n, dataplane, frame)
        })
        .collect();
    let fds: Vec<i32> = classifiers
        .iter_mut()
        .map(|(_, dp, _)| {
            dp.pod_classifier()
                .unwrap()
                .fd()
                .unwrap()
                .as_fd()
                .as_raw_fd()
        })
        .collect();

    let mut base_samples = Vec::new();
    let mut samples = vec![Vec::new(); configs.len()];
    for round in 0..ROUNDS {
        base_samples.push(ns_per_packet(baseline, &classifiers[0].2, REPEAT, TC_NEXT));
        for (i, (_, _, frame)) in classifiers.iter().enumerate() {
            samples[i].push(ns_per_packet(fds[i], frame, REPEAT, TC_NEXT));
        }
        eprintln!("round {}/{ROUNDS} done", round + 1);
    }
    // A hit must really have marked: check once outside the timed loop.
    for (n, dp, frame) in &mut classifiers {
        let out = xsteer_bpf_tests::run_tc(dp.pod_classifier().unwrap(), frame, 0);
        assert_eq!(
            out.mark & 0xF00,
            0xE00,
            "{n} CIDRs: the benchmark frame must hit"
        );
    }

    let base = median(&mut base_samples);
    println!(
        "| family | remote CIDRs | lookup | classifier ns/packet | empty tc program ns/packet | classifier − empty | ratio |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|");
    for (i, &(v6, n, grid)) in configs.iter().enumerate() {
        let m = median(&mut samples[i]);
        let (family, lookup) = match (v6, grid) {
            (false, true) => ("IPv4", "grid of /24 slots, trie behind"),
            (true, true) => ("IPv6", "grid of /64 slots, trie behind"),
            (false, false) => ("IPv4", "trie only"),
            (true, false) => ("IPv6", "trie only"),
        };
        println!(
            "| {family} | {n} | {lookup} | {m} | {base} | {:+} | {:.2} |",
            i64::from(m) - i64::from(base),
            f64::from(m) / f64::from(base.max(1))
        );
    }
    println!();
    println!(
        "Medians of {ROUNDS} interleaved rounds of {REPEAT} runs each; frame: UDP to the last of n /24s (IPv4) or /64s (IPv6)."
    );
}
