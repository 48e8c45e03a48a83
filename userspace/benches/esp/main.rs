//! Pod-to-pod TCP throughput through xsteer, through a hand-built `ip xfrm` tunnel and without
//! encryption, side by side in one VM run (`cargo xtask bench esp` boots the VM bed once per CPU
//! count and runs this in it; docs/benchmarks.md has the method).
//!
//! Each round brings every setup up in turn on a fresh two-node lab (same namespaces, pods and
//! addresses), warms it up, runs iperf3 from node1's pod to node2's pod with one stream and with
//! N = vCPUs streams, and tears it down; xsteer's setups are measured twice in place, with and
//! without RPS on node2's uplink, in alternating order. One more xsteer setup puts the ingress
//! guard at XDP instead of tc ingress on the veth uplinks, to show what that hook costs there. Around each run both nodes' /proc/net/xfrm_stat, the
//! lab links' drop counters and the VM's per-CPU softirq counters are read. Under TCG only the
//! medians' ratios mean anything, so nothing here asserts a figure: the report compares them with
//! the targets.

// Test code: a failed unwrap is a failed benchmark, with its message.
#![allow(clippy::unwrap_used)]

mod iperf;
mod kstat;
#[path = "../support/lab_cli.rs"]
mod lab_cli;
mod report;
mod setup;

use std::thread;

use iperf::{Servers, Throughput};
use kstat::{Counters, CpuWork};
use setup::{Receive, Setup};
use xsteer::lab::topology::plan;

/// Rounds: each configuration is measured once per round.
pub const ROUNDS: usize = 3;
/// Length of one iperf3 run.
pub const SECONDS: u32 = 10;
/// Length of the unrecorded run after each bring-up (ARP, path MTU, slow start).
const WARM_UP_SECONDS: u32 = 1;

/// The setups a run alternates. Per-CPU SAs and the guard's hook are fields of the xsteer
/// setup, which become the lab's `--per-cpu-sas` and `--ingress-hook xdp`.
const SETUPS: &[Setup] = &[
    Setup::Xsteer {
        per_cpu_sas: false,
        guard_at_xdp: false,
    },
    Setup::Xsteer {
        per_cpu_sas: true,
        guard_at_xdp: false,
    },
    Setup::Xsteer {
        per_cpu_sas: false,
        guard_at_xdp: true,
    },
    Setup::HandTunnel,
    Setup::Plain,
];

/// One measured configuration: a setup, and how node2's uplink receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// What carries the traffic.
    pub setup: Setup,
    /// How the receiving node's uplink hands packets to the stack.
    pub receive: Receive,
}

/// The receive modes `setup` is measured in, in one bring-up: xsteer's also with RPS (does
/// spreading the receiver's decryption pay?), but for the guard-at-XDP comparison.
fn receive_modes(setup: Setup) -> &'static [Receive] {
    match setup {
        Setup::Xsteer {
            guard_at_xdp: false,
            ..
        } => &[Receive::AsSetUp, Receive::Rps],
        _ => &[Receive::AsSetUp],
    }
}

/// What was measured of one configuration over the rounds.
#[derive(Default)]
pub struct Samples {
    /// One-stream runs.
    pub one: Vec<Throughput>,
    /// N-stream runs.
    pub many: Vec<Throughput>,
    /// Deltas of both nodes' xfrm_stat and the lab links' drops over the one-stream runs.
    pub counters_one: Counters,
    /// …and over the N-stream runs.
    pub counters_many: Counters,
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
            receive_modes(setup)
                .iter()
                .map(move |&receive| Config { setup, receive })
        })
        .collect();
    let mut samples: Vec<Samples> = configs.iter().map(|_| Samples::default()).collect();
    for round in 1..=ROUNDS {
        for &setup in SETUPS {
            setup::up(setup, &dir, &nodes);
            let servers = Servers::start(to, streams);
            iperf::run(from, to, 1, WARM_UP_SECONDS);
            let mut modes = receive_modes(setup).to_vec();
            if round % 2 == 0 {
                modes.reverse();
            }
            let mut payload = 0;
            for receive in modes {
                setup::set_receive(receiver, cpus, receive);
                let config = Config { setup, receive };
                let i = configs.iter().position(|c| *c == config).unwrap();
                let s = &mut samples[i];
                for n in [1, streams] {
                    let counters_before = kstat::counters(&nodes);
                    let cpu_before = CpuWork::now();
                    let t = iperf::run(from, to, n, SECONDS);
                    let cpu_after = CpuWork::now();
                    let counters_after = kstat::counters(&nodes);
                    let (runs, counters, cpu) = if n == 1 {
                        (&mut s.one, &mut s.counters_one, &mut s.cpu_one)
                    } else {
                        (&mut s.many, &mut s.counters_many, &mut s.cpu_many)
                    };
                    cpu.add_delta(&cpu_before, &cpu_after);
                    kstat::add_delta(counters, &counters_before, &counters_after);
                    runs.push(t);
                    payload += t.bytes;
                    eprintln!(
                        "round {round}/{ROUNDS}, {}{}, {n} streams: {:.1} Mbit/s, {} retransmits",
                        setup.label(),
                        receive.label(),
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
