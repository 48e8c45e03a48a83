//! The DaemonSet's pod in a real container runtime: the 3-node lab with each node's agent started
//! from the OCI image (`cargo xtask image`) under podman, with the DaemonSet's command line,
//! capabilities, security options, environment and mounts — the key as a Secret volume and the
//! config as a ConfigMap volume, both laid out as the kubelet writes them — but for the
//! substitutions a lab node forces (lab_pod/mod.rs, docs/testing.md). Then:
//!
//! 1. every cross-node pod pair answers over ICMP, TCP and UDP, and a capture of what the nodes
//!    send on the wire counts ESP and no plaintext pod packet;
//! 2. a key rotation the kubelet's way (a new generation in a new timestamped directory,
//!    `..data` swapped) under a UDP stream on every pair loses nothing, and every agent sends
//!    with the new generation;
//! 3. each agent runs in a container with only the DaemonSet's capabilities.
//!
//! The image archive comes from `XSTEER_IMAGE_ARCHIVE`, which `cargo xtask test` sets after
//! building it; without it, or without podman, the test fails.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use xsteer::{
    apply::DEFAULT_PIN_DIR,
    dataplane::Dataplane,
    keys::KeyFile,
    lab::{
        self,
        capture::{Capture, Packet},
        netns, pods,
        probe::{self, ECHO_PORT, Proto},
        topology::{self, Size},
    },
    nodes::alloc,
};
use xsteer_kind::{
    agent::{AgentPod, VolumeSource},
    names,
};

use crate::lab_pod::{self, LabNode, Podman, Substitutions};

/// The variable that names the image archive.
const IMAGE_ENV: &str = "XSTEER_IMAGE_ARCHIVE";
/// The lab's files: per node its volumes, state directory and agent log; the node records.
const DIR: &str = "/tmp/xsteer-e2e-podman";
/// podman's storage: /run is a tmpfs in the VM bed.
const PODMAN_ROOT: &str = "/run/xsteer-e2e-podman";
/// The streams' rate during the rotation, datagrams per second.
const RATE: u32 = 100;
/// How long the streams run; the kubelets swap the key at 2, 3 and 4 s.
const STREAM: Duration = Duration::from_secs(12);
const SWAPS_AT: [f64; 3] = [2.0, 3.0, 4.0];

/// The lab: its nodes, their pods' view of them, podman. Cleaned up when dropped, so the tests
/// after it find no container, namespace, pin or file of it.
struct Lab {
    nodes: Vec<topology::LabNode>,
    pods: Vec<LabNode>,
    podman: Podman,
}

impl Lab {
    fn new() -> Lab {
        let nodes = topology::plan(Size { nodes: 3, pods: 2 });
        let pods = nodes
            .iter()
            .map(|n| LabNode {
                name: n.name.clone(),
                ip: n.ip,
                netns: n.netns.clone(),
                dir: Path::new(DIR).join(&n.name),
                nodes_dir: Path::new(DIR).join("nodes"),
            })
            .collect();
        let lab = Lab {
            nodes,
            pods,
            podman: Podman {
                root: PathBuf::from(PODMAN_ROOT),
            },
        };
        lab.clean();
        lab
    }

    /// `podman GLOBAL.. ARGS..`; panics with its stderr when it fails.
    fn podman(&self, args: &[&str]) -> String {
        let out = Command::new("podman")
            .args(self.podman.global())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run podman: {e} (the VM bed installs it)"));
        assert!(
            out.status.success(),
            "podman {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops and removes the containers (SIGTERM first, as the kubelet does), the namespaces,
    /// the pins, the files and podman's storage; whatever is not there is skipped.
    fn clean(&self) {
        for pod in &self.pods {
            let _ = Command::new("podman")
                .args(self.podman.global())
                .args(["rm", "--force", "--time=10", &pod.container()])
                .output();
        }
        let _ = topology::wire_down();
        for pod in &self.pods {
            let _ = fs::remove_dir_all(bpffs_dir(pod));
        }
        let _ = fs::remove_dir_all(DIR);
        if Path::new(PODMAN_ROOT).exists() {
            let _ = Command::new("podman")
                .args(self.podman.global())
                .args(["system", "reset", "--force"])
                .output();
            let _ = fs::remove_dir_all(PODMAN_ROOT);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.clean();
    }
}

/// The node's own directory for the DaemonSet's hostPath `/sys/fs/bpf`.
fn bpffs_dir(node: &LabNode) -> PathBuf {
    let pod = AgentPod::load().unwrap();
    Substitutions::of(&pod, node)
        .unwrap()
        .host_path("/sys/fs/bpf")
        .expect("the DaemonSet mounts bpffs")
        .to_owned()
}

/// Where the agent in the container pins (DEFAULT_PIN_DIR), seen from the lab: under the lab
/// node's directory for the hostPath mounted there.
fn pin_dir(pod: &AgentPod, node: &LabNode) -> PathBuf {
    let subs = Substitutions::of(pod, node).unwrap();
    let pin = Path::new(DEFAULT_PIN_DIR);
    pod.agent()
        .mounts
        .iter()
        .filter(|m| pin.starts_with(&m.path))
        .find_map(|m| match &pod.volume(&m.volume)?.source {
            VolumeSource::HostPath { path, .. } => {
                Some(subs.host_path(path)?.join(pin.strip_prefix(&m.path).ok()?))
            }
            _ => None,
        })
        .expect("the agent pins under a hostPath mount")
}

/// The image archive `cargo xtask test` built; a missing one fails the test.
fn image_archive() -> PathBuf {
    let path = std::env::var_os(IMAGE_ENV).unwrap_or_else(|| {
        panic!(
            "{IMAGE_ENV} is not set: this test runs the agent from the image, which `cargo xtask \
             test` builds and names there (by hand: `cargo xtask image`, then {IMAGE_ENV}=\
             target/oci/xsteer-dev.tar cargo xtask vm -- ...)"
        )
    });
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "{IMAGE_ENV}={} is not a file",
        path.display()
    );
    path
}

/// A fresh key file: `xsteer keys generate`.
fn generate_keys() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_xsteer"))
        .args(["keys", "generate"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// `keys` with the next generation added by `xsteer keys rotate`, as docs/kubernetes.md rotates
/// the Secret's key; and that generation.
fn rotate_keys(keys: &str) -> (String, u8) {
    let file = Path::new(DIR).join("keys.rotating");
    fs::write(&file, keys).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xsteer"))
        .args(["keys", "rotate", "--key-file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated = fs::read_to_string(&file).unwrap();
    let generation = KeyFile::parse(&rotated)
        .unwrap()
        .newest()
        .unwrap()
        .generation()
        .get();
    fs::remove_file(&file).unwrap();
    (rotated, generation)
}

/// The newest generation of a key file.
fn newest(keys: &str) -> u8 {
    KeyFile::parse(keys)
        .unwrap()
        .newest()
        .unwrap()
        .generation()
        .get()
}

/// Writes every volume of the agent's pod on `node` that is not a hostPath, as the kubelet does;
/// and creates the node's hostPath directories (bpffs is mounted at boot, the state directory
/// is `DirectoryOrCreate`).
fn prepare_node(pod: &AgentPod, node: &LabNode, keys: &str) {
    for volume in &pod.volumes {
        if let VolumeSource::HostPath { path, .. } = &volume.source {
            let subs = Substitutions::of(pod, node).unwrap();
            fs::create_dir_all(subs.host_path(path).unwrap()).unwrap();
            continue;
        }
        let (files, mode) = lab_pod::volume_files(volume, keys).unwrap();
        lab_pod::write_volume(&node.volume_dir(volume).unwrap(), &files, mode).unwrap();
    }
}

/// The kubelet's update of the key Secret's volume on `node`: the new key file swapped in.
fn swap_keys(pod: &AgentPod, node: &LabNode, keys: &str) -> String {
    let volume = pod
        .volumes
        .iter()
        .find(
            |v| matches!(&v.source, VolumeSource::Secret { name, .. } if name == names::KEY_SECRET),
        )
        .expect("the DaemonSet mounts the key Secret");
    let (files, mode) = lab_pod::volume_files(volume, keys).unwrap();
    lab_pod::write_volume(&node.volume_dir(volume).unwrap(), &files, mode).unwrap()
}

/// The PID of the agent (the container's first process), as the machine sees it.
fn agent_pid(lab: &Lab, node: &LabNode) -> u32 {
    lab.podman(&["inspect", "--format={{.State.Pid}}", &node.container()])
        .trim()
        .parse()
        .unwrap()
}

/// Waits until the agent of `node` says it runs; fails with its log if it exits first.
fn wait_running(node: &LabNode, pid: u32) -> Duration {
    let start = Instant::now();
    loop {
        let log = fs::read_to_string(node.log()).unwrap_or_default();
        if log.contains("agent running:") {
            return start.elapsed();
        }
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "the agent of {} exited; its log:\n{log}",
            node.name
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the agent of {} did not start in 120 s; its log:\n{log}",
            node.name
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every agent's `remote_pod_cidrs` holds the other nodes' pod CIDRs.
fn wait_for_peers(lab: &Lab, pod: &AgentPod) -> Duration {
    let start = Instant::now();
    for node in &lab.pods {
        loop {
            let pins = pin_dir(pod, node);
            let known = (|| -> anyhow::Result<usize> {
                let mut dataplane = Dataplane::load_pinned(&pins)?;
                Ok(dataplane.remote_pod_cidrs()?.entries()?.len())
            })()
            .unwrap_or(0);
            if known == lab.pods.len() - 1 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{} knows {known} of the other nodes' pod CIDRs after 60 s; its log:\n{}",
                node.name,
                fs::read_to_string(node.log()).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
    start.elapsed()
}

/// `xsteer status --output json` in the agent's container (`kubectl exec`'s way).
fn status(lab: &Lab, node: &LabNode) -> serde_json::Value {
    let out = lab.podman(&[
        "exec",
        &node.container(),
        "xsteer",
        "status",
        "--config",
        names::CONFIG_PATH,
        "--output",
        "json",
    ]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{}: {e}: {out}", node.name))
}

/// The capabilities the DaemonSet adds, as a CapEff mask.
fn capability_mask(names: &[String]) -> u64 {
    names
        .iter()
        .map(|name| {
            let bit = CAPABILITIES
                .iter()
                .position(|c| *c == name.as_str())
                .unwrap_or_else(|| panic!("capability {name} is not one of Linux's"));
            1u64 << bit
        })
        .fold(0, |a, b| a | b)
}

/// Linux's capabilities, by number (linux/capability.h).
const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A field of /proc/PID/status.
fn proc_status(pid: u32, field: &str) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// Checks that the agent of `node` runs in a container as the DaemonSet says: its command, only
/// the DaemonSet's capabilities, no_new_privs, no seccomp filter, a read-only root from the
/// image, its own mount namespace, and the node's network.
fn check_container(pod: &AgentPod, node: &LabNode, pid: u32) -> String {
    let agent = pod.agent();
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let words: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    assert_eq!(
        words, agent.command,
        "{}: the agent's command line",
        node.name
    );

    let mask = capability_mask(&agent.cap_add);
    let caps: Vec<(&str, String)> = ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"]
        .into_iter()
        .map(|f| (f, proc_status(pid, f)))
        .collect();
    let value = |f: &str| {
        let hex = &caps.iter().find(|(n, _)| *n == f).unwrap().1;
        u64::from_str_radix(hex, 16).unwrap()
    };
    assert_eq!(agent.cap_drop, ["ALL"]);
    assert_eq!(value("CapEff"), mask, "{}: {caps:?}", node.name);
    assert_eq!(value("CapPrm"), mask, "{}: {caps:?}", node.name);
    assert_eq!(value("CapBnd"), mask, "{}: {caps:?}", node.name);
    assert_eq!(value("CapAmb"), 0, "{}: {caps:?}", node.name);
    assert_eq!(
        proc_status(pid, "NoNewPrivs"),
        if agent.no_new_privileges { "1" } else { "0" }
    );
    assert_eq!(
        proc_status(pid, "Seccomp"),
        "0",
        "{}: seccomp Unconfined",
        node.name
    );

    // In a container: its own mount namespace, the image as its root (xsteer, and no shell),
    // read-only; the node's network namespace.
    let ns = |pid: &str, ns: &str| fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
    assert_ne!(ns(&pid.to_string(), "mnt"), ns("self", "mnt"));
    assert_ne!(ns(&pid.to_string(), "pid"), ns("self", "pid"));
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    assert!(root.join("usr/bin/xsteer").is_file());
    assert!(!root.join("bin/sh").exists(), "the image has no shell");
    let mountinfo = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root_mount = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .unwrap();
    assert_eq!(
        agent.read_only_root,
        root_mount
            .split(' ')
            .nth(5)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "{}: {root_mount}",
        node.name
    );
    let netns_inode = fs::metadata(Path::new("/run/netns").join(&node.netns))
        .unwrap()
        .ino();
    let agent_net = fs::metadata(format!("/proc/{pid}/ns/net")).unwrap().ino();
    assert_eq!(agent_net, netns_inode, "{}: the node's network", node.name);
    format!(
        "{} (pid {pid}): CapEff {} CapPrm {} CapBnd {} CapAmb {} = {}, NoNewPrivs {}, Seccomp {}, \
         root read-only, network {}",
        node.name,
        caps[0].1,
        caps[1].1,
        caps[2].1,
        caps[4].1,
        agent.cap_add.join("|"),
        proc_status(pid, "NoNewPrivs"),
        proc_status(pid, "Seccomp"),
        node.netns
    )
}

/// A capture of every node's wire side, drained as packets come, until stopped.
struct Wire {
    done: Arc<AtomicBool>,
    drain: thread::JoinHandle<Vec<Packet>>,
}

impl Wire {
    fn start(nodes: &[topology::LabNode]) -> Wire {
        let captures: Vec<Capture> = nodes
            .iter()
            .map(|n| Capture::start(&n.netns, "eth0").unwrap())
            .collect();
        let done = Arc::new(AtomicBool::new(false));
        let stop = done.clone();
        let drain = thread::spawn(move || {
            let mut packets = Vec::new();
            loop {
                let last = stop.load(Ordering::Relaxed);
                for capture in &captures {
                    packets.extend(capture.take().unwrap());
                }
                if last {
                    return packets;
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        Wire { done, drain }
    }

    fn stop(self) -> Vec<Packet> {
        self.done.store(true, Ordering::Relaxed);
        self.drain.join().unwrap()
    }
}

/// The generations of the ESP packets from `from` to `to`, in order, repeats folded.
fn generations_on_wire(
    packets: &[Packet],
    from: &topology::LabNode,
    to: &topology::LabNode,
) -> Vec<u32> {
    let mut order: Vec<u32> = packets
        .iter()
        .filter(|p| p.is_esp() && p.src == from.ip && p.dst == to.ip)
        .filter_map(|p| p.spi)
        .map(|spi| spi & 0xF)
        .collect();
    order.dedup();
    order
}

#[test]
#[ignore = "needs a kernel with ESP, podman and the image: runs in the VM bed (cargo xtask test)"]
fn the_daemonsets_pod_under_podman_encrypts_every_pair_and_rotates_through_a_secret_swap() {
    let started = Instant::now();
    let archive = image_archive();
    let pod = AgentPod::load().unwrap();
    let lab = Lab::new();
    let version = lab.podman(&["--version"]);
    let loaded = lab.podman(&["load", "--input", archive.to_str().unwrap()]);
    eprintln!(
        "{}: {} ({})",
        version.trim(),
        loaded.trim(),
        archive.display()
    );

    topology::wire_up(&lab.nodes).unwrap();
    // The pods before the agents, wired by ptp and host-local alone: the agents' veth watch
    // classifies them when they start.
    for node in &lab.nodes {
        pods::write_conflist(Path::new(DIR), node).unwrap();
    }
    pods::add_all(Path::new(DIR), &lab.nodes).unwrap();
    let keys = generate_keys();
    let old = newest(&keys);
    for (node, pod_node) in lab.nodes.iter().zip(&lab.pods) {
        // The control plane's pod CIDR for the node, and the ID the lab gives it.
        alloc::reserve(
            &pod_node.nodes_dir,
            &node.name,
            u16::from(node.index),
            node.pod_cidr().parse().unwrap(),
        )
        .unwrap();
        prepare_node(&pod, pod_node, &keys);
    }

    let mut pids = Vec::new();
    for node in &lab.pods {
        let words = lab.podman.agent(&pod, node).unwrap();
        let out = Command::new("podman").args(&words).output().unwrap();
        assert!(
            out.status.success(),
            "podman {} failed: {}",
            words.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if node.name == "node1" {
            eprintln!("node1's agent: podman {}", words.join(" "));
        }
        pids.push(agent_pid(&lab, node));
    }
    for (node, pid) in lab.pods.iter().zip(&pids) {
        let took = wait_running(node, *pid);
        eprintln!("{}: agent running after {took:.1?}", node.name);
    }
    let took = wait_for_peers(&lab, &pod);
    eprintln!("every agent knows the other nodes' pod CIDRs {took:.1?} later");

    // 3. In containers, with the DaemonSet's capabilities only.
    for (node, pid) in lab.pods.iter().zip(&pids) {
        eprintln!("{}", check_container(&pod, node, *pid));
    }

    // The agent, with the DaemonSet's mounts and rights, chained xsteer-cni into the node's
    // conflist and copied the plugin from the image into the node's bin dir.
    for node in &lab.nodes {
        let dirs = pods::CniDirs::of(Path::new(DIR), node);
        let runtime = pods::runtime(Path::new(DIR), node);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !runtime
            .conflist()
            .unwrap()
            .types()
            .contains(&pods::XSTEER_CNI)
        {
            assert!(
                Instant::now() < deadline,
                "{}: xsteer-cni not chained: {:?}",
                node.name,
                runtime.conflist().unwrap().types()
            );
            thread::sleep(Duration::from_millis(100));
        }
        let plugin = dirs.bin.join(pods::XSTEER_CNI);
        let version = Command::new(&plugin)
            .env("CNI_COMMAND", "VERSION")
            .output()
            .unwrap();
        assert!(version.status.success(), "{}", plugin.display());
        eprintln!(
            "{}: conflist {:?}, {} answers VERSION {}",
            node.name,
            runtime.conflist().unwrap().types(),
            plugin.display(),
            String::from_utf8_lossy(&version.stdout).trim()
        );
    }

    // 1. Every cross-node pod pair, and the wire.
    let pods: Vec<_> = lab.nodes.iter().flat_map(|n| n.pods.clone()).collect();
    let _servers = probe::serve(&pods).unwrap();
    let captures: Vec<Capture> = lab
        .nodes
        .iter()
        .map(|n| Capture::start(&n.netns, "eth0").unwrap())
        .collect();
    let mut ok = [0usize; 3];
    let mut pairs = 0;
    let mut failures = Vec::new();
    for from in &pods {
        for to in pods.iter().filter(|to| to.node != from.node) {
            pairs += 1;
            for (i, proto) in Proto::ALL.into_iter().enumerate() {
                match probe::check(from, to, proto) {
                    Ok(()) => ok[i] += 1,
                    Err(e) => {
                        failures.push(format!("{} {} -> {}: {e:#}", proto.name(), from.ip, to.ip))
                    }
                }
            }
        }
    }
    let packets: Vec<Packet> = captures.iter().flat_map(|c| c.take().unwrap()).collect();
    let census = lab::census(&packets);
    for (i, proto) in Proto::ALL.into_iter().enumerate() {
        eprintln!(
            "cross-node pod pairs over {:<4}: {}/{pairs} ok",
            proto.name(),
            ok[i]
        );
    }
    eprintln!(
        "packets the nodes sent on the wire: {} ESP, {} other IPv4, {} cross-node pod packets in \
         plaintext",
        census.esp, census.other, census.plaintext
    );
    eprintln!("plaintext packets: {}", census.plaintext);
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(census.plaintext, 0);
    assert!(census.esp >= pairs * 3 * 2, "{census:?}");

    // 2. The key rotated through the Secret, under a stream on every pair of nodes.
    let (rotated, new) = rotate_keys(&keys);
    assert_eq!(new, old + 1, "xsteer keys rotate adds the next generation");
    let wire = Wire::start(&lab.nodes);
    let streams: Vec<(usize, usize, probe::StreamReport)> = thread::scope(|s| {
        let handles: Vec<_> = (0..lab.nodes.len())
            .map(|i| {
                let j = (i + 1) % lab.nodes.len();
                let (from, to) = (lab.nodes[i].pods[0].clone(), lab.nodes[j].pods[0].ip);
                s.spawn(move || {
                    let report = netns::run_in(&from.netns, move || {
                        probe::stream(to, ECHO_PORT, RATE, STREAM)
                    })
                    .unwrap();
                    (i, j, report)
                })
            })
            .collect();
        let start = Instant::now();
        for (node, at) in lab.pods.iter().zip(SWAPS_AT) {
            let due = start + Duration::from_secs_f64(at);
            thread::sleep(due.saturating_duration_since(Instant::now()));
            let dir = swap_keys(&pod, node, &rotated);
            eprintln!(
                "{:>4.1} s: {}'s kubelet swapped ..data to {dir}",
                start.elapsed().as_secs_f64(),
                node.name
            );
        }
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let packets = wire.stop();
    let plaintext = lab::census(&packets).plaintext;
    for (i, j, report) in &streams {
        let (from, to) = (&lab.nodes[*i], &lab.nodes[*j]);
        eprintln!(
            "{} -> {} at {RATE}/s: {} sent, {} lost; generations on the wire {:?} there, {:?} back",
            from.name,
            to.name,
            report.sent,
            report.lost(),
            generations_on_wire(&packets, from, to),
            generations_on_wire(&packets, to, from)
        );
    }
    eprintln!("plaintext pod packets on the wire during the rotation: {plaintext}");
    assert_eq!(plaintext, 0);
    let logs = || {
        lab.pods
            .iter()
            .map(|n| {
                format!(
                    "{}:\n{}",
                    n.name,
                    fs::read_to_string(n.log()).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (i, j, report) in &streams {
        let (from, to) = (&lab.nodes[*i], &lab.nodes[*j]);
        assert!(report.sent >= u64::from(RATE) * 10, "{report:?}");
        assert_eq!(report.lost(), 0, "{} -> {}\n{}", from.name, to.name, logs());
        for (a, b) in [(from, to), (to, from)] {
            assert_eq!(
                generations_on_wire(&packets, a, b),
                [u32::from(old), u32::from(new)],
                "{} -> {}: the wire moves to the new generation under the stream\n{}",
                a.name,
                b.name,
                logs()
            );
        }
    }
    for node in &lab.pods {
        let json = status(&lab, node);
        let sending: BTreeSet<(String, u64)> = json["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_owned(),
                    p["sending_generation"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        eprintln!("{}: xsteer status: sending with {sending:?}", node.name);
        assert_eq!(sending.len(), lab.pods.len() - 1, "{json}");
        assert!(
            sending.iter().all(|(_, g)| *g == u64::from(new)),
            "{}: {json}",
            node.name
        );
    }

    // Nothing left for the next test: containers, namespaces, pins, files, podman's storage.
    let cleaning = Instant::now();
    let bpffs: Vec<PathBuf> = lab.pods.iter().map(bpffs_dir).collect();
    drop(lab);
    assert!(netns::list(topology::PREFIX).is_empty());
    for dir in bpffs
        .iter()
        .map(PathBuf::as_path)
        .chain([Path::new(DIR), Path::new(PODMAN_ROOT)])
    {
        assert!(!dir.exists(), "{} is left", dir.display());
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(PODMAN_ROOT), "{mounts}");
    eprintln!(
        "cleaned up in {:.1} s; the DaemonSet's pod under podman: {:.0} s",
        cleaning.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
