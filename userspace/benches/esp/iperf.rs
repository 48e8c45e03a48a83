//! iperf3 between two lab pods: one server per stream in the receiving pod, one client process
//! per stream in the sending pod.
//!
//! Debian 12's iperf3 (3.12) runs all the streams of one `-P N` test in one thread, so N
//! streams from one process could never use more than one sending CPU; N processes with one
//! stream each can, as N pods' flows would.

use std::{
    fs,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use xsteer::lab::{
    netns::{command_in, run_in},
    topology::LabPod,
};

/// The first server's port; stream i uses the port after it.
const FIRST_PORT: u16 = 5201;

/// iperf3 servers listening in a pod, killed when dropped.
pub struct Servers {
    children: Vec<Child>,
}

impl Servers {
    /// Starts `count` servers in `pod` and waits until each listens.
    pub fn start(pod: &LabPod, count: usize) -> Servers {
        let mut children = Vec::new();
        for port in ports(count) {
            let mut command = Command::new("iperf3");
            command
                .args(["--server", "--bind", &pod.ip.to_string()])
                .args(["--port", &port.to_string()])
                .stdout(Stdio::null());
            command_in(&mut command, &pod.netns, false).unwrap();
            children.push(command.spawn().unwrap());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !listening(pod, count) {
            assert!(
                Instant::now() < deadline,
                "iperf3 servers not listening in {}",
                pod.netns
            );
            thread::sleep(Duration::from_millis(100));
        }
        Servers { children }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn ports(count: usize) -> impl Iterator<Item = u16> {
    (FIRST_PORT..).take(count)
}

/// Whether `pod` has a TCP socket listening on each of the first `count` ports.
fn listening(pod: &LabPod, count: usize) -> bool {
    // /proc/net follows the reading thread's namespace only through thread-self.
    let table = run_in(&pod.netns, || {
        Ok(fs::read_to_string("/proc/thread-self/net/tcp")?)
    })
    .unwrap();
    ports(count).all(|port| {
        table.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is ADDR:PORT in hex; state 0A is LISTEN.
            fields
                .get(1)
                .is_some_and(|a| a.ends_with(&format!(":{port:04X}")))
                && fields.get(3) == Some(&"0A")
        })
    })
}

/// What one test measured, summed over its streams.
#[derive(Clone, Copy, Debug, Default)]
pub struct Throughput {
    /// Bits per second the receivers counted.
    pub bits_per_second: f64,
    /// Payload bytes the receivers counted.
    pub bytes: u64,
    /// TCP retransmissions the senders counted.
    pub retransmits: u64,
}

/// Runs `streams` clients at once from `from` to the servers in `to`, for `seconds`.
pub fn run(from: &LabPod, to: &LabPod, streams: usize, seconds: u32) -> Throughput {
    let clients: Vec<Child> = ports(streams)
        .map(|port| {
            let mut command = Command::new("iperf3");
            command
                .args(["--client", &to.ip.to_string(), "--json"])
                .args(["--port", &port.to_string(), "--time", &seconds.to_string()])
                .stdout(Stdio::piped());
            command_in(&mut command, &from.netns, false).unwrap();
            command.spawn().unwrap()
        })
        .collect();
    clients.into_iter().fold(Throughput::default(), |sum, c| {
        let out = c.wait_with_output().unwrap();
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            out.status.success(),
            "iperf3 failed: {}",
            report["error"].as_str().unwrap_or("(no error given)")
        );
        let end = &report["end"];
        Throughput {
            bits_per_second: sum.bits_per_second
                + end["sum_received"]["bits_per_second"].as_f64().unwrap(),
            bytes: sum.bytes + end["sum_received"]["bytes"].as_u64().unwrap(),
            retransmits: sum.retransmits + end["sum_sent"]["retransmits"].as_u64().unwrap(),
        }
    })
}
