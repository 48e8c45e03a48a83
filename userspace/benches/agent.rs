//! The node agent's footprint and reaction time, on a kernel with ESP (`cargo xtask bench agent`
//! runs it in the VM bed).
//!
//! 1. Resident memory: an agent in a fresh network namespace with 3, then 50 peers in its
//!    config, measured from /proc/PID/status (VmRSS) one second after it reports running, i.e.
//!    with its programs loaded and attached, its maps filled and all SAs installed. Median of 3
//!    runs per size.
//! 2. Node record to encryption: an agent with a node-records directory; a new node's record is
//!    published and the time until the agent has installed everything to encrypt to it is
//!    measured, polling every 2 ms for the new pod CIDR in the pinned `remote_pod_cidrs` (the
//!    reconcile writes that entry last, after the node's SAs, policies and route, so its
//!    presence means traffic to the node is encrypted). The record is then withdrawn and its
//!    entry awaited, untimed. Median of 9 trials.
//!
//! Under emulation (TCG) the absolute figures are slow. The agent watches the directory with
//! inotify, so the second figure is mostly one reconcile.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::{
    fs,
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use xsteer::{
    cidr::Ipv4Cidr,
    dataplane::Dataplane,
    keys::{self, Epoch, Generation},
    lab::netns::{command_in, ip, ip_in},
    nodes::{DirSource, NodeRecord, NodeSource},
};

const NETNS: &str = "xsb-agent";

fn scratch() -> PathBuf {
    std::env::temp_dir().join("xsteer-bench-agent")
}

fn pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/xsteer-bench-agent")
}

/// A fresh namespace with an uplink `xs0` at 192.168.0.1/16, on which every peer is on-link.
fn namespace() {
    let _ = ip(&["netns", "delete", NETNS]);
    ip(&["netns", "add", NETNS]).unwrap();
    ip_in(NETNS, &["link", "set", "lo", "up"]).unwrap();
    ip_in(
        NETNS,
        &["link", "add", "xs0", "type", "veth", "peer", "name", "xs1"],
    )
    .unwrap();
    ip_in(NETNS, &["addr", "add", "192.168.0.1/16", "dev", "xs0"]).unwrap();
    ip_in(NETNS, &["link", "set", "xs0", "up"]).unwrap();
    ip_in(NETNS, &["link", "set", "xs1", "up"]).unwrap();
}

fn peer_text(i: u32) -> String {
    format!(
        "\n[[peers]]\nname = \"peer{i}\"\nip = \"192.168.1.{i}\"\nid = {}\npod_cidrs = [\"10.250.{i}.0/24\"]\nepoch = \"{}\"\n",
        i + 1,
        Epoch::random().unwrap()
    )
}

/// Writes the key file and a config with `peers` peers (and a nodes dir if given).
fn config(peers: u32, nodes_dir: Option<&Path>) -> PathBuf {
    let dir = scratch();
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    fs::write(
        &keys,
        format!(
            "{}\n",
            keys::generate_gcm_line(Generation::MIN).unwrap().as_str()
        ),
    )
    .unwrap();
    fs::set_permissions(&keys, fs::Permissions::from_mode(0o600)).unwrap();
    let mut text = String::from("key_file = \"keys\"\n");
    if let Some(nodes) = nodes_dir {
        text.push_str(&format!("nodes_dir = \"{}\"\n", nodes.display()));
    }
    text.push_str(&format!(
        "\n[node]\nname = \"bench\"\nip = \"192.168.0.1\"\nid = 1\nuplink = \"xs0\"\npod_cidr = \"10.255.0.0/24\"\nepoch = \"{}\"\n",
        Epoch::random().unwrap()
    ));
    for i in 1..=peers {
        text.push_str(&peer_text(i));
    }
    let path = dir.join("xsteer.toml");
    fs::write(&path, text).unwrap();
    path
}

fn start_agent(config: &Path) -> Child {
    let _ = fs::remove_dir_all(pin_dir());
    let log_path = scratch().join("agent.log");
    let log = fs::File::create(&log_path).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_xsteer"));
    command
        .arg("agent")
        .arg("--config")
        .arg(config)
        .arg("--pin-dir")
        .arg(pin_dir())
        .arg("--state-dir")
        .arg(scratch().join("state"))
        .args(["--metrics-addr", "off"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    command_in(&mut command, NETNS, false).unwrap();
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("agent running:") {
            return child;
        }
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            panic!("the agent did not start:\n{text}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn stop(mut agent: Child) {
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = ip(&["netns", "delete", NETNS]);
    let _ = fs::remove_dir_all(pin_dir());
}

fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

fn median<T: Ord + Copy>(mut v: Vec<T>) -> T {
    v.sort();
    v[v.len() / 2]
}

fn has_cidr(cidr: Ipv4Cidr) -> bool {
    Dataplane::load_pinned(&pin_dir())
        .and_then(|mut d| d.remote_pod_cidrs()?.entries())
        .is_ok_and(|entries| entries.iter().any(|(c, _)| *c == cidr))
}

fn join_latency() -> Duration {
    let nodes = scratch().with_extension("nodes");
    let _ = fs::remove_dir_all(&nodes);
    namespace();
    let agent = start_agent(&config(0, Some(&nodes)));
    let mut source = DirSource::new(&nodes).unwrap();
    let mut trials = Vec::new();
    for trial in 1..=9u8 {
        let record = NodeRecord {
            name: format!("joiner{trial}"),
            ip: Ipv4Addr::new(192, 168, 2, trial).into(),
            id: 100 + u16::from(trial),
            pod_cidr: format!("10.251.{trial}.0/24").parse().unwrap(),
            pod_cidr_v6: None,
            epoch: Epoch::random().unwrap(),
            next_epoch: None,
            acks: Default::default(),
            generations: vec![Generation::MIN],
            per_cpu_sas: 0,
            esp_in_udp: None,
            esn: true,
        };
        let started = Instant::now();
        source.publish(&record).unwrap();
        while !has_cidr(record.pod_cidr) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "never encrypted to {}",
                record.name
            );
            thread::sleep(Duration::from_millis(2));
        }
        trials.push(started.elapsed());
        source.withdraw(&record.name).unwrap();
        while has_cidr(record.pod_cidr) {
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("join {trial}/9: {:?}", trials.last().unwrap());
    }
    stop(agent);
    let _ = fs::remove_dir_all(nodes);
    median(trials)
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "the agent benchmark creates network namespaces and SAs: run it as root, with ESP"
        );
        std::process::exit(1);
    }
    let mut rows = Vec::new();
    for peers in [3u32, 50] {
        let mut samples = Vec::new();
        for round in 1..=3 {
            namespace();
            let agent = start_agent(&config(peers, None));
            thread::sleep(Duration::from_secs(1));
            // The figure means something only with every peer's SAs in: in and out, per peer.
            let count = ip_in(NETNS, &["xfrm", "state", "count"]).unwrap();
            assert_eq!(
                count.split_whitespace().last(),
                Some((2 * peers).to_string().as_str()),
                "{peers} peers: {count}"
            );
            samples.push(rss_kib(agent.id()));
            eprintln!(
                "{peers} peers, round {round}/3: {} KiB",
                samples.last().unwrap()
            );
            stop(agent);
        }
        rows.push((peers, median(samples)));
    }
    let join = join_latency();
    println!("| agent | resident memory (VmRSS) |");
    println!("|---|---:|");
    for (peers, kib) in rows {
        println!("| {peers} peers | {:.1} MiB |", kib as f64 / 1024.0);
    }
    println!();
    println!(
        "Node record published → everything to encrypt to that node installed: **{} ms** (median of 9; the agent watches the directory with inotify, and polls it every 1,000 ms besides).",
        join.as_millis()
    );
    let _ = fs::remove_dir_all(scratch());
}
