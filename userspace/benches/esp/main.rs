//! Pod-to-pod TCP throughput through xsteer, through a hand-built `ip xfrm` tunnel and without
//! encryption, side by side in one VM run (`cargo xtask bench esp` boots the VM bed once per CPU
//! count and runs this in it; docs/benchmarks.md has the method).
//!
//! Each round brings every setup up in turn on a fresh two-node lab (same namespaces, pods and
//! addresses), warms it up, runs iperf3 from node1's pod to node2's pod with one stream and with
//! N = vCPUs streams, and tears it down; xsteer's setups are measured twice in place, with and
//! without RPS on node2's uplink, in alternating order. Around each run both nodes'
//! /proc/net/xfrm_stat and the VM's per-CPU softirq counters are read. Under TCG only the
//! medians' ratios mean anything, so nothing here asserts a figure: the report compares them with
//! the targets.

// Test code: a failed unwrap is a failed benchmark, with its message.
#![allow(clippy::unwrap_used)]

mod iperf;
mod kstat;
mod report;
mod setup;

use std::thread;

use iperf::{Servers, Throughput};
use kstat::{Counters, CpuWork};
use setup::Setup;
use xsteer::lab::topology::plan;

/// Rounds: each configuration is measured once per round.
pub const ROUNDS: usize = 3;
/// Length of one iperf3 run.
pub const SECONDS: u32 = 10;
/// Length of the unrecorded run after each bring-up (ARP, path MTU, slow start).
const WARM_UP_SECONDS: u32 = 1;

/// The setups a run alternates. Per-CPU SAs are one field of the xsteer setup, which becomes
/// the lab's `--per-cpu-sas`.
const SETUPS: &[Setup] = &[
    Setup::Xsteer { per_cpu_sas: false },
    Setup::Xsteer { per_cpu_sas: true },
    Setup::HandTunnel,
    Setup::Plain,
];

/// One measured configuration: a setup, and whether RPS spreads node2's uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// What carries the traffic.
    pub setup: Setup,
    /// RPS over every CPU on the receiving node's uplink.
    pub rps: bool,
}

/// The RPS states `setup` is measured in: xsteer's with and without (the question is whether
/// spreading the receiver's decryption pays), the baselines without.
fn rps_states(setup: Setup) -> &'static [bool] {
    match setup {
        Setup::Xsteer { .. } => &[false, true],
        Setup::HandTunnel | Setup::Plain => &[false],
    }
}

/// What was measured of one configuration over the rounds.
#[derive(Default)]
pub struct Samples {
    /// One-stream runs.
    pub one: Vec<Throughput>,
    /// N-stream runs.
    pub many: Vec<Throughput>,
    /// xfrm_stat deltas of both nodes over the one-stream runs.
    pub xfrm_one: Counters,
    /// …and over the N-stream runs.
    pub xfrm_many: Counters,
    /// Per-CPU softirq work over the one-stream runs.
    pub cpu_one: CpuWork,
    /// …and over the N-stream runs.
    pub cpu_many: CpuWork,
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test` runs benches once without --bench: nothing to check here.
    }
    let cpus = thread::available_parallelism().unwrap().get();
    let streams = cpus;
    let dir = std::env::temp_dir().join("xsteer-bench-esp");
    let nodes = plan(setup::SIZE);
    let (sender, receiver) = (&nodes[0], &nodes[1]);
    let (from, to) = (&sender.pods[0], &receiver.pods[0]);
    let configs: Vec<Config> = SETUPS
        .iter()
        .flat_map(|&setup| {
            rps_states(setup)
                .iter()
                .map(move |&rps| Config { setup, rps })
        })
        .collect();
    let mut samples: Vec<Samples> = configs.iter().map(|_| Samples::default()).collect();
    for round in 1..=ROUNDS {
        for &setup in SETUPS {
            setup::up(setup, &dir, &nodes);
            let servers = Servers::start(to, streams);
            iperf::run(from, to, 1, WARM_UP_SECONDS);
            let mut rps_order = rps_states(setup).to_vec();
            if round % 2 == 0 {
                rps_order.reverse();
            }
            let mut payload = 0;
            for rps in rps_order {
                setup::set_rps(receiver, cpus, rps);
                let config = Config { setup, rps };
                let i = configs.iter().position(|c| *c == config).unwrap();
                let s = &mut samples[i];
                for n in [1, streams] {
                    let xfrm_before = [
                        kstat::xfrm_stat(&sender.netns),
                        kstat::xfrm_stat(&receiver.netns),
                    ];
                    let cpu_before = CpuWork::now();
                    let t = iperf::run(from, to, n, SECONDS);
                    let cpu_after = CpuWork::now();
                    let xfrm_after = [
                        kstat::xfrm_stat(&sender.netns),
                        kstat::xfrm_stat(&receiver.netns),
                    ];
                    let (runs, xfrm, cpu) = if n == 1 {
                        (&mut s.one, &mut s.xfrm_one, &mut s.cpu_one)
                    } else {
                        (&mut s.many, &mut s.xfrm_many, &mut s.cpu_many)
                    };
                    cpu.add_delta(&cpu_before, &cpu_after);
                    for (before, after) in xfrm_before.iter().zip(&xfrm_after) {
                        kstat::add_delta(xfrm, before, after);
                    }
                    runs.push(t);
                    payload += t.bytes;
                    eprintln!(
                        "round {round}/{ROUNDS}, {}{}, {n} streams: {:.1} Mbit/s, {} retransmits",
                        setup.label(),
                        if rps { ", RPS" } else { "" },
                        t.bits_per_second / 1e6,
                        t.retransmits
                    );
                }
            }
            drop(servers);
            setup::check_path(setup, sender, payload);
            setup::down(&dir);
        }
    }
    report::print(cpus, streams, &configs, &samples);
}
