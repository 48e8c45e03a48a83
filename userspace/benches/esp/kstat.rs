//! Kernel counters read around a measurement: a namespace's /proc/net/xfrm_stat, and how the
//! VM's CPUs shared the softirq work (where ESP is decrypted).

use std::{collections::BTreeMap, fs};

use xsteer::lab::netns::run_in;

/// Counter name → value.
pub type Counters = BTreeMap<String, u64>;

/// The xfrm MIB counters of namespace `netns`.
pub fn xfrm_stat(netns: &str) -> Counters {
    // /proc/net follows the reading thread's namespace only through thread-self.
    let text = run_in(netns, || {
        Ok(fs::read_to_string("/proc/thread-self/net/xfrm_stat")?)
    })
    .unwrap();
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(char::is_whitespace)?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// `after − before`, counter by counter, added into `into`.
pub fn add_delta(into: &mut Counters, before: &Counters, after: &Counters) {
    for (name, value) in after {
        let delta = value - before.get(name).copied().unwrap_or(0);
        *into.entry(name.clone()).or_default() += delta;
    }
}

/// Per CPU: softirq time (ticks of /proc/stat), NET_RX softirqs run (/proc/softirqs), and
/// packets other CPUs' RPS handed it (/proc/net/softnet_stat).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuWork {
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
        // `cpuN user nice system idle iowait irq softirq ...`; the `cpu` line is the total.
        let softirq_ticks = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .map(|l| l.split_whitespace().nth(7).unwrap().parse().unwrap())
            .collect();
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
