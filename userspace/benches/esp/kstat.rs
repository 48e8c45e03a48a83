//! Kernel counters read around a measurement: the nodes' /proc/net/xfrm_stat, the drops of the
//! lab's links, and how the VM's CPUs shared the softirq work (where ESP is decrypted).

use std::{collections::BTreeMap, fs};

use xsteer::lab::{
    netns::run_in,
    topology::{self, LabNode},
};

/// Counter name → value.
pub type Counters = BTreeMap<String, u64>;

/// The name under which [`counters`] adds up the lab links' receive drops…
pub const LINK_RX_DROPS: &str = "links: rx dropped";
/// …and their transmit drops (a veth whose peer's NAPI ring is full counts its drop here).
pub const LINK_TX_DROPS: &str = "links: tx dropped";

/// The xfrm MIB counters of the lab's nodes, added up, and the drops of every interface of the
/// nodes and the wire (their veths, the bridge) under [`LINK_RX_DROPS`] and [`LINK_TX_DROPS`].
pub fn counters(nodes: &[LabNode]) -> Counters {
    let mut sum = Counters::new();
    for node in nodes {
        for (name, value) in parse_xfrm_stat(&read_in(&node.netns, "xfrm_stat")) {
            *sum.entry(name).or_default() += value;
        }
    }
    let namespaces = nodes
        .iter()
        .map(|n| n.netns.as_str())
        .chain([topology::WIRE]);
    for netns in namespaces {
        let (rx, tx) = parse_drops(&read_in(netns, "dev"));
        *sum.entry(LINK_RX_DROPS.into()).or_default() += rx;
        *sum.entry(LINK_TX_DROPS.into()).or_default() += tx;
    }
    sum
}

/// /proc/net/`file` as namespace `netns` sees it.
fn read_in(netns: &str, file: &'static str) -> String {
    // /proc/net follows the reading thread's namespace only through thread-self.
    run_in(netns, move || {
        Ok(fs::read_to_string(format!("/proc/thread-self/net/{file}"))?)
    })
    .unwrap()
}

fn parse_xfrm_stat(text: &str) -> impl Iterator<Item = (String, u64)> + '_ {
    text.lines().filter_map(|line| {
        let (name, value) = line.split_once(char::is_whitespace)?;
        Some((name.to_owned(), value.trim().parse().ok()?))
    })
}

/// The receive and transmit drops of every interface in /proc/net/dev, added up.
fn parse_drops(text: &str) -> (u64, u64) {
    // Two header lines, then `name: rx bytes packets errs drop … (8 fields) tx bytes packets
    // errs drop …`.
    text.lines().skip(2).fold((0, 0), |(rx, tx), line| {
        let Some((_, fields)) = line.split_once(':') else {
            return (rx, tx);
        };
        let fields: Vec<u64> = fields
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        (rx + fields[3], tx + fields[11])
    })
}

/// `after − before`, counter by counter, added into `into`.
pub fn add_delta(into: &mut Counters, before: &Counters, after: &Counters) {
    for (name, value) in after {
        let delta = value - before.get(name).copied().unwrap_or(0);
        *into.entry(name.clone()).or_default() += delta;
    }
}

/// Per CPU: busy and softirq time (ticks of /proc/stat), NET_RX softirqs run (/proc/softirqs),
/// and packets other CPUs' RPS handed it (/proc/net/softnet_stat).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuWork {
    /// Ticks in all, per CPU.
    pub ticks: Vec<u64>,
    /// Ticks neither idle nor waiting for I/O, per CPU: whether a CPU was left free.
    pub busy_ticks: Vec<u64>,
    /// Ticks spent in softirqs, per CPU.
    pub softirq_ticks: Vec<u64>,
    /// NET_RX softirqs run, per CPU.
    pub net_rx: Vec<u64>,
    /// Times RPS woke this CPU to process packets another CPU received, per CPU.
    pub rps_received: Vec<u64>,
}

impl CpuWork {
    /// The counters now (they are the whole VM's, not a namespace's).
    pub fn now() -> CpuWork {
        let stat = fs::read_to_string("/proc/stat").unwrap();
        let softirqs = fs::read_to_string("/proc/softirqs").unwrap();
        let softnet = fs::read_to_string("/proc/net/softnet_stat").unwrap();
        CpuWork::parse(&stat, &softirqs, &softnet)
    }

    fn parse(stat: &str, softirqs: &str, softnet: &str) -> CpuWork {
        // `cpuN user nice system idle iowait irq softirq steal ...`; the `cpu` line is the
        // total. Guest time is counted in user already.
        let per_cpu: Vec<Vec<u64>> = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .take(8)
                    .map(|n| n.parse().unwrap())
                    .collect()
            })
            .collect();
        let ticks = per_cpu.iter().map(|f| f.iter().sum()).collect();
        let busy_ticks = per_cpu
            .iter()
            .map(|f| f.iter().sum::<u64>() - f[3] - f[4])
            .collect();
        let softirq_ticks = per_cpu.iter().map(|f| f[6]).collect();
        let net_rx = softirqs
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("NET_RX:"))
            .unwrap()
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        // One line per CPU of hex fields; the tenth is received_rps.
        let rps_received = softnet
            .lines()
            .map(|l| u64::from_str_radix(l.split_whitespace().nth(9).unwrap(), 16).unwrap())
            .collect();
        CpuWork {
            ticks,
            busy_ticks,
            softirq_ticks,
            net_rx,
            rps_received,
        }
    }

    /// Adds `after − before` into `self`.
    pub fn add_delta(&mut self, before: &CpuWork, after: &CpuWork) {
        let add = |sum: &mut Vec<u64>, b: &[u64], a: &[u64]| {
            sum.resize(a.len(), 0);
            for (s, (a, b)) in sum.iter_mut().zip(a.iter().zip(b)) {
                *s += a - b;
            }
        };
        add(&mut self.ticks, &before.ticks, &after.ticks);
        add(&mut self.busy_ticks, &before.busy_ticks, &after.busy_ticks);
        add(
            &mut self.softirq_ticks,
            &before.softirq_ticks,
            &after.softirq_ticks,
        );
        add(&mut self.net_rx, &before.net_rx, &after.net_rx);
        add(
            &mut self.rps_received,
            &before.rps_received,
            &after.rps_received,
        );
    }
}
