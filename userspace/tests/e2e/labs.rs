//! Shared by the end-to-end tests that drive `xsteer lab` (lab.rs, ipv6.rs, nat.rs) or put
//! frames on a wire by hand (guards.rs): the CLI, a lab node's counters and agent logs, streams
//! through a key rotation, and the MAC address `ip link show` prints.

use std::{net::IpAddr, path::Path, process::Command, thread, time::Duration};

use xsteer::{
    dataplane::Dataplane,
    lab::{
        agents, netns,
        probe::{self, ECHO_PORT, StreamReport},
        topology::{LabNode, LabPod},
    },
};
use xsteer_common::counters::Counter;

/// Runs `xsteer ARGS`; returns whether it succeeded, and its stdout and stderr together.
pub fn xsteer(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xsteer"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The value of `counter` in the pinned maps of lab node `node`.
pub fn counter(node: &LabNode, counter: Counter) -> u64 {
    let mut dataplane = Dataplane::load_pinned(&agents::pin_dir(&node.name)).unwrap();
    dataplane.counters().unwrap().read().unwrap().get(counter)
}

/// The agent logs of the lab in `dir`, each under its node's name.
pub fn agent_logs(dir: &Path, nodes: &[LabNode]) -> String {
    nodes
        .iter()
        .map(|n| {
            format!(
                "--- {} ---\n{}",
                n.name,
                std::fs::read_to_string(agents::log_path(dir, n)).unwrap_or_default()
            )
        })
        .collect()
}

/// Streams from each pod to its address (an echo server's) at `rate` per second for `length`,
/// all at once, while `xsteer keys rotate` adds a generation to `key_file` 3 s in; returns each
/// stream's report, in order.
pub fn streams_through_a_rotation(
    streams: &[(LabPod, IpAddr)],
    rate: u32,
    length: Duration,
    key_file: &str,
) -> Vec<StreamReport> {
    thread::scope(|s| {
        let handles: Vec<_> = streams
            .iter()
            .map(|(from, to)| {
                let (netns, to) = (from.netns.clone(), *to);
                s.spawn(move || {
                    netns::run_in(&netns, move || probe::stream(to, ECHO_PORT, rate, length))
                        .unwrap()
                })
            })
            .collect();
        thread::sleep(Duration::from_secs(3));
        let (ok, text) = xsteer(&["keys", "rotate", "--key-file", key_file]);
        assert!(ok, "keys rotate:\n{text}");
        eprintln!("3 s in: {}", text.trim());
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The MAC address in `ip link show IFNAME`'s output.
pub fn mac(ip_link_show: &str) -> [u8; 6] {
    let text = ip_link_show
        .split("link/ether ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no MAC in {ip_link_show}"));
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}
