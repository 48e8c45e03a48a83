//! The markdown a VM run prints: throughput medians, their ratios against the targets, the
//! xfrm_stat deltas and how the receive work spread over the CPUs.

use std::collections::BTreeSet;

use crate::{
    Config, ROUNDS, SECONDS, Samples,
    iperf::Throughput,
    kstat::{LINK_RX_DROPS, LINK_TX_DROPS},
    setup::{Receive, Setup, Setup::Xsteer},
};

/// Counters always shown, zero or not: the ones the replay window is sized from, and the
/// links' drops, the other place a segment can be lost.
const ALWAYS: &[&str] = &[
    "XfrmInStateProtoError",
    "XfrmInStateSeqError",
    "XfrmInNoStates",
    LINK_RX_DROPS,
    LINK_TX_DROPS,
];
/// Target for (a) / (b), with one SA per direction.
const XSTEER_VS_TUNNEL: f64 = 0.97;
/// Target for per-CPU SAs on / off, N streams, at 2 vCPUs.
const PER_CPU_GAIN_AT_2: f64 = 1.6;

fn median_mbits(runs: &[Throughput]) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(|t| t.bits_per_second / 1e6).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn range_mbits(runs: &[Throughput]) -> (f64, f64) {
    let v = runs.iter().map(|t| t.bits_per_second / 1e6);
    (v.clone().fold(f64::MAX, f64::min), v.fold(0.0, f64::max))
}

fn median_retransmits(runs: &[Throughput]) -> u64 {
    let mut v: Vec<u64> = runs.iter().map(|t| t.retransmits).collect();
    v.sort();
    v[v.len() / 2]
}

/// A ratio of two configurations' medians, with the range of the ratios within each round
/// (measured minutes apart at most, so the machine's slower drift cancels in them).
struct Ratio {
    of_medians: f64,
    per_round: (f64, f64),
}

impl Ratio {
    fn of(a: &[Throughput], b: &[Throughput]) -> Ratio {
        // Runs are pushed round by round, so equal indices are the same round.
        let rounds = a
            .iter()
            .zip(b)
            .map(|(a, b)| a.bits_per_second / b.bits_per_second);
        Ratio {
            of_medians: median_mbits(a) / median_mbits(b),
            per_round: (
                rounds.clone().fold(f64::MAX, f64::min),
                rounds.fold(0.0, f64::max),
            ),
        }
    }
}

impl std::fmt::Display for Ratio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (lo, hi) = self.per_round;
        write!(f, "{:.2} (rounds {lo:.2} – {hi:.2})", self.of_medians)
    }
}

fn label(config: &Config) -> String {
    format!("{}{}", config.setup.label(), config.receive.label())
}

fn met(ok: bool) -> &'static str {
    if ok { "**met**" } else { "**not met**" }
}

/// Prints the section of one VM run with `cpus` vCPUs.
pub fn print(cpus: usize, streams: usize, configs: &[Config], samples: &[Samples]) {
    let find = |setup: Setup, receive: Receive| {
        configs
            .iter()
            .position(|c| c.setup == setup && c.receive == receive)
            .map(|i| &samples[i])
    };
    println!(
        "**{cpus} vCPUs** (`--cpus {cpus}`), N = {streams}: pod-to-pod TCP throughput, Mbit/s, medians of {ROUNDS} runs of {SECONDS} s each"
    );
    println!();
    println!(
        "| configuration | 1 stream | min – max | {streams} streams | min – max | retransmits per run, 1 / {streams} streams |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (config, s) in configs.iter().zip(samples) {
        let (lo1, hi1) = range_mbits(&s.one);
        let (lo, hi) = range_mbits(&s.many);
        println!(
            "| {} | {:.1} | {lo1:.1} – {hi1:.1} | {:.1} | {lo:.1} – {hi:.1} | {} / {} |",
            label(config),
            median_mbits(&s.one),
            median_mbits(&s.many),
            median_retransmits(&s.one),
            median_retransmits(&s.many),
        );
    }
    println!();
    let ratio = |a: &Samples, b: &Samples| (Ratio::of(&a.one, &b.one), Ratio::of(&a.many, &b.many));
    let xsteer = |per_cpu_sas, guard_at_xdp| {
        find(
            Xsteer {
                per_cpu_sas,
                guard_at_xdp,
            },
            Receive::AsSetUp,
        )
    };
    let (off, on, at_xdp) = (
        xsteer(false, false),
        xsteer(true, false),
        xsteer(false, true),
    );
    let tunnel = find(Setup::HandTunnel, Receive::AsSetUp);
    let plain = find(Setup::Plain, Receive::AsSetUp);
    if let (Some(a), Some(b)) = (off, tunnel) {
        let (one, many) = ratio(a, b);
        println!(
            "- (a) / (b), one SA per direction: 1 stream {one}, {streams} streams {many}; target ≥ {XSTEER_VS_TUNNEL}: {}.",
            met(one.of_medians >= XSTEER_VS_TUNNEL && many.of_medians >= XSTEER_VS_TUNNEL)
        );
    }
    if let (Some(x), Some(b)) = (at_xdp, tunnel) {
        let (one, many) = ratio(x, b);
        println!(
            "- (a) with the ingress guard at XDP on the veth uplinks / (b): 1 stream {one}, {streams} streams {many}."
        );
    }
    for (name, x) in [("(a)", off), ("(b)", tunnel)] {
        if let (Some(x), Some(c)) = (x, plain) {
            let (one, many) = ratio(x, c);
            println!("- {name} / (c): 1 stream {one}, {streams} streams {many}.");
        }
    }
    if let (Some(on), Some(off)) = (on, off) {
        let (one, many) = ratio(on, off);
        let target = if cpus == 2 {
            format!(
                "; target ≥ {PER_CPU_GAIN_AT_2} at 2 vCPUs: {}",
                met(many.of_medians >= PER_CPU_GAIN_AT_2)
            )
        } else {
            String::new()
        };
        println!("- per-CPU SAs on / off: {streams} streams {many}{target}; 1 stream {one}.");
    }
    for per_cpu_sas in [false, true] {
        let setup = Xsteer {
            per_cpu_sas,
            guard_at_xdp: false,
        };
        if let (Some(rps), Some(plain)) = (find(setup, Receive::Rps), find(setup, Receive::AsSetUp))
        {
            let (one, many) = ratio(rps, plain);
            println!(
                "- {}: RPS on / off on node2's uplink: 1 stream {one}, {streams} streams {many}.",
                setup.label()
            );
        }
    }
    println!();
    print_counters(streams, configs, samples);
    println!();
    print_spread(streams, configs, samples);
    println!();
}

/// The xfrm_stat and link drop deltas, added up over each configuration's runs.
fn print_counters(streams: usize, configs: &[Config], samples: &[Samples]) {
    let shown: BTreeSet<&str> = samples
        .iter()
        .flat_map(|s| s.counters_one.iter().chain(&s.counters_many))
        .filter(|(_, v)| **v > 0)
        .map(|(name, _)| name.as_str())
        .chain(ALWAYS.iter().copied())
        .collect();
    println!(
        "Deltas over the {ROUNDS} runs of each: /proc/net/xfrm_stat, both nodes added up (counters that stayed 0 everywhere are left out, but for the three the replay window is sized from), and the drops of every interface of both nodes and the wire:"
    );
    println!();
    let names: Vec<&str> = ALWAYS
        .iter()
        .copied()
        .chain(shown.iter().copied().filter(|n| !ALWAYS.contains(n)))
        .collect();
    println!("| configuration | streams | {} |", names.join(" | "));
    println!("|---|---:|{}", "---:|".repeat(names.len()));
    for (config, s) in configs.iter().zip(samples) {
        for (n, counters) in [(1, &s.counters_one), (streams, &s.counters_many)] {
            let values: Vec<String> = names
                .iter()
                .map(|name| counters.get(*name).copied().unwrap_or(0).to_string())
                .collect();
            println!("| {} | {n} | {} |", label(config), values.join(" | "));
        }
    }
}

/// How the VM's softirq work (where the receiving node decrypts) spread over the CPUs.
fn print_spread(streams: usize, configs: &[Config], samples: &[Samples]) {
    println!(
        "Where the work ran (the whole VM's /proc/stat, /proc/softirqs and /proc/net/softnet_stat, both nodes and the wire, over the {ROUNDS} runs of each): how busy each vCPU was (not idle, not waiting for I/O), how the softirq time split between them, NET_RX softirqs and RPS wake-ups:"
    );
    println!();
    println!(
        "| configuration | streams | busy per CPU | softirq time per CPU | NET_RX softirqs per CPU | RPS wake-ups received per CPU |"
    );
    println!("|---|---:|---|---|---|---|");
    let join = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(" / ");
    for (config, s) in configs.iter().zip(samples) {
        for (n, cpu) in [(1, &s.cpu_one), (streams, &s.cpu_many)] {
            let total: u64 = cpu.softirq_ticks.iter().sum::<u64>().max(1);
            let shares: Vec<String> = cpu
                .softirq_ticks
                .iter()
                .map(|t| format!("{:.0} %", *t as f64 * 100.0 / total as f64))
                .collect();
            let busy: Vec<String> = cpu
                .busy_ticks
                .iter()
                .zip(&cpu.ticks)
                .map(|(b, t)| format!("{:.0} %", *b as f64 * 100.0 / (*t).max(1) as f64))
                .collect();
            println!(
                "| {} | {n} | {} | {} | {} | {} |",
                label(config),
                busy.join(" / "),
                shares.join(" / "),
                join(&cpu.net_rx),
                join(&cpu.rps_received)
            );
        }
    }
}
