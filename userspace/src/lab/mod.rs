//! `xsteer lab`: a cluster on one machine out of network namespaces, the way people wire docker
//! containers together by hand, with one `xsteer agent` per node; and a test that proves every
//! cross-node pod packet on its wire is ESP.
//!
//! The lab's files live in one directory (`/run/xsteer-lab` by default): the key file, the node
//! records the agents share, and per node its config, agent log, pid and key ledger. Its
//! namespaces all start with `xsl-`; `xsteer lab status` lists them for `xsteer lab exec`.

pub mod agents;
pub mod capture;
pub mod netns;
pub mod pods;
pub mod probe;
pub mod runtime;
pub mod topology;

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::kernel::{Netlink, xfrm};
use capture::{Capture, IPPROTO_ESP, Packet};
use topology::{LabNode, Size};

/// Where the lab keeps its files by default.
pub const DEFAULT_DIR: &str = "/run/xsteer-lab";

fn size_path(dir: &Path) -> PathBuf {
    dir.join("size")
}

/// The lab set up in `dir`.
fn existing(dir: &Path) -> Result<Vec<LabNode>> {
    let text = fs::read_to_string(size_path(dir))
        .with_context(|| format!("no lab in {} (run `xsteer lab up` first)", dir.display()))?;
    let mut numbers = text.split_whitespace().map(str::parse::<u8>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(nodes)), Some(Ok(pods))) => Ok(topology::plan(Size { nodes, pods })),
        _ => bail!("{} is damaged: {text:?}", size_path(dir).display()),
    }
}

/// Builds the lab and starts its agents; when they all know each other, it is up.
pub fn up(size: Size, dir: &Path) -> Result<()> {
    if !(2..=250).contains(&size.nodes) || !(1..=250).contains(&size.pods) {
        bail!("a lab has 2..=250 nodes and 1..=250 pods per node");
    }
    if !netns::list(topology::PREFIX).is_empty() || size_path(dir).exists() {
        bail!(
            "a lab is already up (namespaces xsl-* or {}): run `xsteer lab down` first",
            dir.display()
        );
    }
    let nodes = topology::plan(size);
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::write(size_path(dir), format!("{} {}\n", size.nodes, size.pods))?;
    topology::wire_up(&nodes)?;
    agents::write_files(dir, &nodes)?;
    for node in &nodes {
        pods::write_conflist(dir, node)?;
    }
    let xsteer = std::env::current_exe().context("finding the xsteer binary")?;
    agents::start(dir, &nodes, &xsteer)?;
    agents::wait_for_peers(&nodes, Duration::from_secs(60))?;
    // Pods come last, through ptp, host-local and xsteer-cni, as on a node where the agent has
    // installed its plugin before the kubelet starts pods.
    agents::wait_for_plugin(dir, &nodes, Duration::from_secs(30))?;
    pods::add_all(dir, &nodes)?;
    println!(
        "lab up: {} nodes x {} pods, agents running (logs in {}/node*/agent.log)",
        size.nodes,
        size.pods,
        dir.display()
    );
    Ok(())
}

/// Stops the agents and removes everything the lab made. Works after a partial `up` too.
pub fn down(dir: &Path) -> Result<()> {
    if let Ok(nodes) = existing(dir) {
        agents::stop(dir, &nodes);
    }
    topology::wire_down()?;
    for entry in fs::read_dir("/sys/fs/bpf").into_iter().flatten().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("xsteer-lab-")
        {
            fs::remove_dir_all(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    println!("lab down");
    Ok(())
}

/// Prints the namespaces, their addresses and whether each agent runs.
pub fn status(dir: &Path) -> Result<()> {
    let nodes = existing(dir)?;
    println!("{:<20} {:<16} agent", "namespace", "address");
    println!("{:<20} {:<16} -", topology::WIRE, "bridge br0");
    for node in &nodes {
        let agent = if agents::is_running(dir, node) {
            "running"
        } else {
            "NOT running"
        };
        println!("{:<20} {:<16} {agent}", node.netns, node.ip);
        for pod in &node.pods {
            println!("{:<20} {:<16} -", pod.netns, pod.ip);
        }
    }
    Ok(())
}

/// The lab node and planned pod whose namespace is `netns`.
fn planned_pod(dir: &Path, netns: &str) -> Result<(LabNode, topology::LabPod)> {
    existing(dir)?
        .into_iter()
        .find_map(|node| {
            let pod = node.pods.iter().find(|p| p.netns == netns)?.clone();
            Some((node, pod))
        })
        .with_context(|| format!("no pod {netns:?} in the lab; `xsteer lab status` lists them"))
}

/// Creates the pod `netns` of the lab (one `lab status` lists) through its node's CNI plugins.
pub fn pod_add(dir: &Path, netns: &str) -> Result<()> {
    let (node, pod) = planned_pod(dir, netns)?;
    let result = pods::add(dir, &node, &pod)?;
    println!(
        "pod {netns} added at {} by {} (host side {})",
        pod.ip,
        pods::runtime(dir, &node).conflist()?.types().join(" + "),
        runtime::host_interfaces(&result).join(", ")
    );
    Ok(())
}

/// Deletes the pod `netns` of the lab through its node's CNI plugins.
pub fn pod_del(dir: &Path, netns: &str) -> Result<()> {
    let (node, pod) = planned_pod(dir, netns)?;
    pods::del(dir, &node, &pod)?;
    println!("pod {netns} deleted");
    Ok(())
}

/// Runs `command` inside namespace `name` (as `lab status` lists them); returns its exit code.
pub fn exec(name: &str, command: &[String]) -> Result<i32> {
    let Some((program, args)) = command.split_first() else {
        bail!("no command given");
    };
    if !netns::list(topology::PREFIX).iter().any(|n| n == name) {
        bail!("no lab namespace {name:?}; `xsteer lab status` lists them");
    }
    let mut child = Command::new(program);
    child.args(args);
    netns::command_in(&mut child, name, false)?;
    let status = child
        .status()
        .with_context(|| format!("running {program} in {name}"))?;
    Ok(status.code().unwrap_or(128))
}

/// Whether an address is a lab pod address, and on which node.
fn pod_node(ip: std::net::Ipv4Addr) -> Option<u8> {
    let o = ip.octets();
    (o[0] == 10 && o[1] == 244).then_some(o[2])
}

/// Counts of what the nodes sent on the wire.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// ESP packets.
    pub esp: usize,
    /// Pod-to-pod packets between different nodes, not in ESP: must be 0.
    pub plaintext: usize,
    /// Everything else (ARP is not IPv4 and not counted; this is e.g. node-to-node traffic).
    pub other: usize,
}

/// Sorts captured packets into ESP, cross-node pod plaintext and the rest.
pub fn census(packets: &[Packet]) -> Census {
    let mut c = Census::default();
    for p in packets {
        if p.proto == IPPROTO_ESP {
            c.esp += 1;
        } else {
            match (pod_node(p.src), pod_node(p.dst)) {
                (Some(a), Some(b)) if a != b => c.plaintext += 1,
                _ => c.other += 1,
            }
        }
    }
    c
}

/// Per node: packets on its OUT SAs, by peer node name.
fn sa_counters(nodes: &[LabNode]) -> Result<String> {
    let mut out = String::new();
    for node in nodes {
        let counters = netns::run_in(&node.netns, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let netlink = Netlink::connect()?;
                Ok(xfrm::state_counters(&netlink).await?)
            })
        })?;
        let mut parts = Vec::new();
        for peer in nodes.iter().filter(|p| p.index != node.index) {
            let packets: u64 = counters
                .iter()
                .filter(|(key, _)| key.dst == peer.ip)
                .map(|(_, c)| c.packets)
                .sum();
            parts.push(format!("{} {packets}", peer.name));
        }
        let _ = writeln!(
            out,
            "  {} sent over its SAs to: {}",
            node.name,
            parts.join(", ")
        );
    }
    Ok(out)
}

/// Checks every cross-node pod pair over ICMP, TCP and UDP and same-node pairs over UDP,
/// captures the wire, prints the report; fails if any pair failed or any plaintext was seen.
pub fn test(dir: &Path) -> Result<()> {
    let nodes = existing(dir)?;
    let pods: Vec<_> = nodes.iter().flat_map(|n| n.pods.clone()).collect();
    let _servers = probe::serve(&pods)?;
    let captures = nodes
        .iter()
        .map(|n| Capture::start(&n.netns, "eth0"))
        .collect::<Result<Vec<_>>>()?;

    let mut failures = Vec::new();
    let mut ok = [0usize; 3];
    let mut pairs = 0;
    for from in &pods {
        for to in pods.iter().filter(|to| to.node != from.node) {
            pairs += 1;
            for (i, proto) in probe::Proto::ALL.into_iter().enumerate() {
                match probe::check(from, to, proto) {
                    Ok(()) => ok[i] += 1,
                    Err(e) => {
                        failures.push(format!("{} {} -> {}: {e:#}", proto.name(), from.ip, to.ip))
                    }
                }
            }
        }
    }
    let mut same_node = (0, 0);
    for node in &nodes {
        for (from, to) in node.pods.iter().zip(node.pods.iter().skip(1)) {
            same_node.0 += 1;
            match probe::check(from, to, probe::Proto::Udp) {
                Ok(()) => same_node.1 += 1,
                Err(e) => failures.push(format!("udp {} -> {} (same node): {e:#}", from.ip, to.ip)),
            }
        }
    }
    let mut packets = Vec::new();
    for capture in &captures {
        packets.extend(capture.take()?);
    }
    let seen = census(&packets);
    let same_node_on_wire = packets
        .iter()
        .filter(|p| matches!((pod_node(p.src), pod_node(p.dst)), (Some(a), Some(b)) if a == b))
        .count();

    let mut report = String::new();
    let _ = writeln!(
        report,
        "xsteer lab test: {} nodes, {} pods",
        nodes.len(),
        pods.len()
    );
    for (i, proto) in probe::Proto::ALL.into_iter().enumerate() {
        let _ = writeln!(
            report,
            "  cross-node pod pairs over {:<4}: {}/{pairs} ok",
            proto.name(),
            ok[i]
        );
    }
    let _ = writeln!(
        report,
        "  same-node pod pairs over udp : {}/{} ok, {same_node_on_wire} of their packets on the wire",
        same_node.1, same_node.0
    );
    let _ = writeln!(
        report,
        "  packets the nodes sent on the wire: {} ESP, {} other IPv4, {} cross-node pod packets in plaintext",
        seen.esp, seen.other, seen.plaintext
    );
    report.push_str(&sa_counters(&nodes)?);
    for failure in &failures {
        let _ = writeln!(report, "  FAILED {failure}");
    }
    let _ = writeln!(report, "plaintext packets: {}", seen.plaintext);
    print!("{report}");
    if seen.plaintext > 0 || !failures.is_empty() || same_node_on_wire > 0 {
        bail!(
            "lab test failed: {} plaintext packets, {} failed checks, {same_node_on_wire} same-node packets on the wire",
            seen.plaintext,
            failures.len()
        );
    }
    Ok(())
}

/// Up, test, a bpftool dump of node1's `remote_pod_cidrs`, down; fails if the test did.
pub fn run(size: Size, dir: &Path) -> Result<()> {
    let result = up(size, dir).and_then(|()| test(dir));
    if result.is_ok() {
        let map = agents::pin_dir("node1").join("remote_pod_cidrs");
        println!("\n$ bpftool map dump pinned {}", map.display());
        match Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(&map)
            .status()
        {
            Ok(_) => {}
            Err(e) => println!("(bpftool not available: {e})"),
        }
    }
    let down = down(dir);
    result.and(down)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn packet(proto: u8, src: [u8; 4], dst: [u8; 4]) -> Packet {
        Packet {
            proto,
            src: Ipv4Addr::from(src),
            dst: Ipv4Addr::from(dst),
            spi: None,
        }
    }

    #[test]
    fn the_census_counts_only_cross_node_pod_packets_as_plaintext() {
        let packets = [
            packet(50, [192, 168, 100, 1], [192, 168, 100, 2]),
            packet(17, [10, 244, 1, 2], [10, 244, 2, 2]),
            packet(1, [10, 244, 3, 3], [10, 244, 1, 2]),
            packet(17, [10, 244, 1, 2], [10, 244, 1, 3]),
            packet(6, [192, 168, 100, 1], [192, 168, 100, 2]),
        ];
        assert_eq!(
            census(&packets),
            Census {
                esp: 1,
                plaintext: 2,
                other: 2
            }
        );
    }
}
