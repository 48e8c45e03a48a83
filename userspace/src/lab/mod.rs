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
use agents::AgentSettings;
use capture::{Capture, IPPROTO_ESP, IpPacket, Packet};
use topology::{LabNode, Size, Stack};

/// Where the lab keeps its files by default.
pub const DEFAULT_DIR: &str = "/run/xsteer-lab";

fn size_path(dir: &Path) -> PathBuf {
    dir.join("size")
}

/// The word in the `size` file that marks a dual-stack lab.
const DUAL_STACK: &str = "dual-stack";
/// The word in the `size` file that marks a lab of IPv6 node IPs.
const IPV6_NODES: &str = "ipv6-nodes";

/// The word in the `size` file that lists the nodes behind NAT: `nat=1,3`.
const NAT: &str = "nat=";

/// What a lab is made of: its size, its address families, and which nodes sit behind NAT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabPlan {
    /// Nodes and pods per node.
    pub size: Size,
    /// Address families.
    pub stack: Stack,
    /// The indexes of the nodes behind a masquerading router each (IPv4 labs only).
    pub nat: Vec<u8>,
}

impl LabPlan {
    /// Its nodes and pods.
    pub fn nodes(&self) -> Vec<LabNode> {
        let mut nodes = topology::plan_stack(self.size, self.stack);
        topology::put_behind_nat(&mut nodes, &self.nat);
        nodes
    }
}

/// The `size` file's text: `NODES PODS`, then `dual-stack` or `ipv6-nodes` for those labs,
/// then `nat=K,...` for a lab with nodes behind NAT.
fn size_text(plan: &LabPlan) -> String {
    let Size { nodes, pods } = plan.size;
    let mut text = match plan.stack {
        Stack::V4 => format!("{nodes} {pods}"),
        Stack::Dual => format!("{nodes} {pods} {DUAL_STACK}"),
        Stack::Ipv6Nodes => format!("{nodes} {pods} {IPV6_NODES}"),
    };
    if !plan.nat.is_empty() {
        let nat: Vec<String> = plan.nat.iter().map(u8::to_string).collect();
        let _ = write!(text, " {NAT}{}", nat.join(","));
    }
    text + "\n"
}

/// How a report names the lab's families.
fn stack_note(stack: Stack) -> &'static str {
    match stack {
        Stack::V4 => "",
        Stack::Dual => ", dual-stack",
        Stack::Ipv6Nodes => ", dual-stack, IPv6 node IPs",
    }
}

/// How a report names the nodes behind NAT.
fn nat_note(nodes: &[LabNode]) -> String {
    let behind: Vec<&str> = nodes
        .iter()
        .filter(|n| n.nat)
        .map(|n| n.name.as_str())
        .collect();
    match behind.as_slice() {
        [] => String::new(),
        names => format!(", {} behind NAT (ESP in UDP)", names.join(", ")),
    }
}

/// What a `size` file says (one written before dual-stack labs says `NODES PODS` only).
fn parse_size(text: &str) -> Option<LabPlan> {
    let mut words = text.split_whitespace().peekable();
    let nodes = words.next()?.parse().ok()?;
    let pods = words.next()?.parse().ok()?;
    let stack = match words.peek() {
        Some(&DUAL_STACK) => Stack::Dual,
        Some(&IPV6_NODES) => Stack::Ipv6Nodes,
        _ => Stack::V4,
    };
    if stack != Stack::V4 {
        words.next();
    }
    let nat = match words.next() {
        None => Vec::new(),
        Some(word) => word
            .strip_prefix(NAT)?
            .split(',')
            .map(|k| k.parse().ok())
            .collect::<Option<_>>()?,
    };
    words.next().is_none().then_some(LabPlan {
        size: Size { nodes, pods },
        stack,
        nat,
    })
}

/// The plan of the lab set up in `dir`.
pub fn existing_plan(dir: &Path) -> Result<LabPlan> {
    let text = fs::read_to_string(size_path(dir))
        .with_context(|| format!("no lab in {} (run `xsteer lab up` first)", dir.display()))?;
    parse_size(&text).with_context(|| format!("{} is damaged: {text:?}", size_path(dir).display()))
}

/// The lab set up in `dir`.
pub fn existing(dir: &Path) -> Result<Vec<LabNode>> {
    Ok(existing_plan(dir)?.nodes())
}

/// Builds the lab and starts its agents, configured with `settings`; when they all know each
/// other, it is up. With nodes behind NAT, every agent speaks ESP in UDP.
pub fn up(plan: &LabPlan, dir: &Path, settings: AgentSettings) -> Result<()> {
    let LabPlan { size, stack, .. } = *plan;
    if !(2..=250).contains(&size.nodes) || !(1..=250).contains(&size.pods) {
        bail!("a lab has 2..=250 nodes and 1..=250 pods per node");
    }
    if let Some(k) = plan.nat.iter().find(|&&k| k == 0 || k > size.nodes) {
        bail!("--nat {k}: the lab's nodes are 1..={}", size.nodes);
    }
    if !plan.nat.is_empty() && stack != Stack::V4 {
        bail!(
            "--nat: nodes behind NAT are for IPv4 labs (ESP in UDP is taken apart for IPv4 only)"
        );
    }
    if !netns::list(topology::PREFIX).is_empty() || size_path(dir).exists() {
        bail!(
            "a lab is already up (namespaces xsl-* or {}): run `xsteer lab down` first",
            dir.display()
        );
    }
    let nodes = plan.nodes();
    let settings = AgentSettings {
        esp_in_udp: settings.esp_in_udp || !plan.nat.is_empty(),
        ..settings
    };
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::write(size_path(dir), size_text(plan))?;
    topology::wire_up(&nodes)?;
    agents::write_files(dir, &nodes, settings)?;
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
        "lab up: {} nodes x {} pods{}{}, agents running (logs in {}/node*/agent.log)",
        size.nodes,
        size.pods,
        stack_note(stack),
        nat_note(&nodes),
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

/// Prints the namespaces, their addresses and whether each agent runs; in a dual-stack lab
/// their IPv6 addresses too.
pub fn status(dir: &Path) -> Result<()> {
    let nodes = existing(dir)?;
    let v6 = |ip: Option<std::net::Ipv6Addr>| ip.map(|ip| format!(" {ip:<22}")).unwrap_or_default();
    let dual = nodes.iter().any(|n| n.ip6.is_some());
    let v6_head = if dual {
        format!(" {:<22}", "IPv6")
    } else {
        String::new()
    };
    let wire_v6 = if dual {
        format!(" {:<22}", "")
    } else {
        String::new()
    };
    println!("{:<20} {:<16}{v6_head} agent", "namespace", "address");
    println!("{:<20} {:<16}{wire_v6} -", topology::WIRE, "bridge br0");
    for node in &nodes {
        let agent = if agents::is_running(dir, node) {
            "running"
        } else {
            "NOT running"
        };
        println!("{:<20} {:<16}{} {agent}", node.netns, node.ip, v6(node.ip6));
        for pod in &node.pods {
            println!("{:<20} {:<16}{} -", pod.netns, pod.ip, v6(pod.ip6));
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
    let ips: Vec<String> = pod.ips().iter().map(ToString::to_string).collect();
    println!(
        "pod {netns} added at {} by {} (host side {})",
        ips.join(" and "),
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
    /// ESP packets (over IPv4 or IPv6; each carries pod packets of either family).
    pub esp: usize,
    /// ESP in UDP between node addresses (to or from the agents' port or the lab routers').
    pub esp_in_udp: usize,
    /// IPv4 pod-to-pod packets between different nodes, not in ESP: must be 0.
    pub plaintext: usize,
    /// Every other IPv4 packet (ARP is not IPv4 and not counted; this is e.g. node-to-node
    /// traffic).
    pub other: usize,
    /// IPv6 packets from or to an address of the IPv6 pod space (fd00:10:244::/48), not in ESP:
    /// must be 0.
    pub plaintext6: usize,
    /// Every other IPv6 packet (neighbour discovery, node-to-node between the uplinks' ULAs).
    pub other6: usize,
}

impl Census {
    /// Pod packets in plaintext, of either family.
    pub fn plaintext_total(&self) -> usize {
        self.plaintext + self.plaintext6
    }

    fn count(&mut self, packet: &IpPacket) {
        match packet {
            IpPacket::V4(p) if p.proto == IPPROTO_ESP => self.esp += 1,
            IpPacket::V4(p) => match (pod_node(p.src), pod_node(p.dst)) {
                (Some(a), Some(b)) if a != b => self.plaintext += 1,
                _ if p.esp_in_udp_spi(&ENCAP_PORTS).is_some() => self.esp_in_udp += 1,
                _ => self.other += 1,
            },
            IpPacket::V6(p) if p.is_esp() => self.esp += 1,
            IpPacket::V6(p)
                if topology::in_pod_space_v6(p.src) || topology::in_pod_space_v6(p.dst) =>
            {
                self.plaintext6 += 1
            }
            IpPacket::V6(_) => self.other6 += 1,
        }
    }
}

/// Sorts captured IPv4 packets into ESP, cross-node pod plaintext and the rest.
pub fn census(packets: &[Packet]) -> Census {
    let mut c = Census::default();
    for p in packets {
        c.count(&IpPacket::V4(*p));
    }
    c
}

/// Sorts captured packets of both families into ESP, pod plaintext of each family and the rest.
pub fn census_all(packets: &[IpPacket]) -> Census {
    let mut c = Census::default();
    for p in packets {
        c.count(p);
    }
    c
}

/// The ports ESP in UDP uses in a lab: the agents' and the one the routers map it to.
const ENCAP_PORTS: [u16; 2] = [crate::config::DEFAULT_ENCAP_PORT, topology::NAT_PORT];

/// ESP to and from the nodes behind NAT, as captured on either side of their routers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NatCensus {
    /// ESP in UDP.
    pub esp_in_udp: usize,
    /// NAT keepalives.
    pub keepalives: usize,
    /// Bare ESP (protocol 50), which most NATs cannot carry: must be 0.
    pub plain_esp: usize,
}

/// Counts the ESP to and from the nodes of `nodes` that sit behind NAT, by their addresses on
/// either side of their routers; `None` when none does.
pub fn nat_census(nodes: &[LabNode], packets: &[IpPacket]) -> Option<NatCensus> {
    let behind: Vec<std::net::IpAddr> = nodes
        .iter()
        .filter(|n| n.nat)
        .flat_map(|n| [n.ip.into(), n.tunnel_ip])
        .collect();
    if behind.is_empty() {
        return None;
    }
    let mut census = NatCensus::default();
    for packet in packets {
        let IpPacket::V4(p) = packet else { continue };
        if !behind.contains(&p.src.into()) && !behind.contains(&p.dst.into()) {
            continue;
        }
        if p.is_esp() {
            census.plain_esp += 1;
        } else if p.esp_in_udp_spi(&ENCAP_PORTS).is_some() {
            census.esp_in_udp += 1;
        } else if p.is_nat_keepalive(&ENCAP_PORTS) {
            census.keepalives += 1;
        }
    }
    Some(census)
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
            // A peer behind NAT is sent to at its router's address.
            let packets: u64 = counters
                .iter()
                .filter(|(key, _)| key.dst == peer.tunnel_ip || peer.nat && key.dst == peer.ip)
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

/// Checks every cross-node pod pair over ICMP, TCP and UDP and same-node pairs over UDP (in a
/// dual-stack lab over IPv4 and over IPv6), captures the wire, prints the report; fails if any
/// pair failed or any plaintext was seen.
pub fn test(dir: &Path) -> Result<()> {
    let plan = existing_plan(dir)?;
    let stack = plan.stack;
    let nodes = plan.nodes();
    let dual = stack.is_dual();
    let pods: Vec<_> = nodes.iter().flat_map(|n| n.pods.clone()).collect();
    let _servers = probe::serve(&pods)?;
    // What each node sends, and around each NAT what its router sends on either side: the
    // node's traffic as the wire sees it, and the wire's as the node gets it.
    let mut captures = nodes
        .iter()
        .map(|n| Capture::start(&n.netns, "eth0"))
        .collect::<Result<Vec<_>>>()?;
    for router in nodes.iter().filter_map(LabNode::router_netns) {
        captures.push(Capture::start(&router, "wan")?);
        captures.push(Capture::start(&router, "lan")?);
    }

    let families: &[&str] = if dual { &["IPv4", "IPv6"] } else { &["IPv4"] };
    let mut failures = Vec::new();
    // Per family, per protocol.
    let mut ok = [[0usize; 3]; 2];
    let mut pairs = 0;
    let mut same_node = [(0, 0); 2];
    for (f, family) in families.iter().enumerate() {
        let dst_of = |pod: &topology::LabPod| -> std::net::IpAddr {
            match f {
                0 => pod.ip.into(),
                _ => pod.ip6.expect("a dual-stack lab's pods have IPv6").into(),
            }
        };
        pairs = 0;
        for from in &pods {
            for to in pods.iter().filter(|to| to.node != from.node) {
                pairs += 1;
                for (i, proto) in probe::Proto::ALL.into_iter().enumerate() {
                    let dst = dst_of(to);
                    match probe::check_to(from, dst, proto) {
                        Ok(()) => ok[f][i] += 1,
                        Err(e) => failures.push(format!(
                            "{family} {} {} -> {dst}: {e:#}",
                            proto.name(),
                            from.netns
                        )),
                    }
                }
            }
        }
        for node in &nodes {
            for (from, to) in node.pods.iter().zip(node.pods.iter().skip(1)) {
                same_node[f].0 += 1;
                let dst = dst_of(to);
                match probe::check_to(from, dst, probe::Proto::Udp) {
                    Ok(()) => same_node[f].1 += 1,
                    Err(e) => failures.push(format!(
                        "{family} udp {} -> {dst} (same node): {e:#}",
                        from.netns
                    )),
                }
            }
        }
    }
    let mut packets = Vec::new();
    for capture in &captures {
        packets.extend(capture.take_all()?);
    }
    let seen = census_all(&packets);
    let through_nat = nat_census(&nodes, &packets);
    let same_node_on_wire = packets
        .iter()
        .filter(|p| match p {
            IpPacket::V4(p) => {
                matches!((pod_node(p.src), pod_node(p.dst)), (Some(a), Some(b)) if a == b)
            }
            // Every IPv6 pod packet on the wire is plaintext in the census already.
            IpPacket::V6(_) => false,
        })
        .count();

    let mut report = String::new();
    let _ = writeln!(
        report,
        "xsteer lab test: {} nodes, {} pods{}",
        nodes.len(),
        pods.len(),
        stack_note(stack)
    );
    for (f, family) in families.iter().enumerate() {
        // The IPv4 lines keep the form they had before dual-stack labs.
        let over = if f == 0 {
            String::new()
        } else {
            format!("{family} ")
        };
        for (i, proto) in probe::Proto::ALL.into_iter().enumerate() {
            let _ = writeln!(
                report,
                "  cross-node pod pairs over {over}{:<4}: {}/{pairs} ok",
                proto.name(),
                ok[f][i]
            );
        }
        let _ = writeln!(
            report,
            "  same-node pod pairs over {over}udp : {}/{} ok",
            same_node[f].1, same_node[f].0
        );
    }
    let _ = writeln!(
        report,
        "  same-node pod packets on the wire: {same_node_on_wire}"
    );
    let _ = writeln!(
        report,
        "  packets the nodes sent on the wire: {} ESP, {} ESP in UDP, {} other IPv4, {} cross-node pod packets in plaintext",
        seen.esp, seen.esp_in_udp, seen.other, seen.plaintext
    );
    let nat_failed = match through_nat {
        Some(nat) => {
            let _ = writeln!(
                report,
                "  to and from nodes behind NAT, both sides of each: {} ESP in UDP, {} NAT keepalives, {} plain ESP",
                nat.esp_in_udp, nat.keepalives, nat.plain_esp
            );
            nat.plain_esp > 0 || nat.esp_in_udp == 0
        }
        None => false,
    };
    if dual {
        let _ = writeln!(
            report,
            "  IPv6 packets the nodes sent on the wire: {} other IPv6 (neighbour discovery, node to node), {} pod packets in plaintext",
            seen.other6, seen.plaintext6
        );
    }
    report.push_str(&sa_counters(&nodes)?);
    for failure in &failures {
        let _ = writeln!(report, "  FAILED {failure}");
    }
    let _ = writeln!(report, "plaintext packets: {}", seen.plaintext_total());
    print!("{report}");
    if seen.plaintext_total() > 0 || !failures.is_empty() || same_node_on_wire > 0 {
        bail!(
            "lab test failed: {} plaintext packets, {} failed checks, {same_node_on_wire} same-node packets on the wire",
            seen.plaintext_total(),
            failures.len()
        );
    }
    if nat_failed {
        bail!("lab test failed: ESP to or from a node behind NAT was not all ESP in UDP");
    }
    Ok(())
}

/// Up, test, a bpftool dump of node1's `remote_pod_cidrs` (and, dual-stack, `remote6_cidrs`),
/// down; fails if the test did.
pub fn run(plan: &LabPlan, dir: &Path, settings: AgentSettings) -> Result<()> {
    let result = up(plan, dir, settings).and_then(|()| test(dir));
    if result.is_ok() {
        let mut maps = vec![xsteer_common::maps::REMOTE_POD_CIDRS];
        if plan.stack.is_dual() {
            maps.push(xsteer_common::maps::REMOTE_POD_CIDRS_V6);
        }
        for name in maps {
            let map = agents::pin_dir("node1").join(name);
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
    }
    let down = down(dir);
    result.and(down)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn packet6(proto: u8, src: &str, dst: &str) -> IpPacket {
        IpPacket::V6(capture::Packet6 {
            proto,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            ext: vec![],
            spi: None,
            icmp_type: None,
        })
    }

    #[test]
    fn the_census_counts_ipv6_pod_packets_outside_esp_as_plaintext() {
        let packets = [
            IpPacket::V4(packet(50, [192, 168, 100, 1], [192, 168, 100, 2])),
            IpPacket::V4(packet(17, [10, 244, 1, 2], [10, 244, 2, 2])),
            packet6(17, "fd00:10:244:1::2", "fd00:10:244:2::2"),
            // From a node to a pod, and a pod to outside: pod packets in plaintext too.
            packet6(58, "fd00:192:168:100::1", "fd00:10:244:2::3"),
            packet6(6, "fd00:10:244:3::2", "2001:db8::1"),
            // ESP over IPv6, neighbour discovery, node to node.
            packet6(50, "fd00:192:168:100::1", "fd00:192:168:100::2"),
            packet6(58, "fe80::1", "ff02::1:ff00:2"),
            packet6(58, "fd00:192:168:100::1", "fd00:192:168:100::2"),
            // Just outside the pod space.
            packet6(17, "fd00:10:245::2", "fd00:10:243::2"),
        ];
        let seen = census_all(&packets);
        assert_eq!(
            seen,
            Census {
                esp: 2,
                esp_in_udp: 0,
                plaintext: 1,
                other: 0,
                plaintext6: 3,
                other6: 3,
            }
        );
        assert_eq!(seen.plaintext_total(), 4);
    }

    #[test]
    fn the_size_file_remembers_a_dual_stack_lab_and_the_nodes_behind_nat() {
        let size = Size { nodes: 3, pods: 2 };
        let plan = |stack, nat: &[u8]| LabPlan {
            size,
            stack,
            nat: nat.to_vec(),
        };
        for plan in [
            plan(Stack::V4, &[]),
            plan(Stack::Dual, &[]),
            plan(Stack::Ipv6Nodes, &[]),
            plan(Stack::V4, &[1, 3]),
        ] {
            assert_eq!(parse_size(&size_text(&plan)), Some(plan.clone()));
        }
        assert_eq!(size_text(&plan(Stack::Dual, &[])), "3 2 dual-stack\n");
        assert_eq!(size_text(&plan(Stack::V4, &[1, 3])), "3 2 nat=1,3\n");
        assert_eq!(parse_size("3 2\n"), Some(plan(Stack::V4, &[])));
        for bad in [
            "",
            "3",
            "3 x",
            "3 2 v6",
            "3 2 dual-stack more",
            "3 2 nat=",
            "3 2 nat=1,x",
            "3 2 nat=1 more",
        ] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
        let nodes = plan(Stack::V4, &[3]).nodes();
        assert_eq!(nodes[2].router_netns().as_deref(), Some("xsl-nat3"));
        assert_eq!(nodes[2].tunnel_ip, Ipv4Addr::new(172, 31, 3, 2));
        assert_eq!(nodes[2].ip, Ipv4Addr::new(192, 168, 100, 3));
        assert_eq!(nodes[0].router_netns(), None);
    }

    #[test]
    fn through_a_nat_esp_counts_only_in_udp() {
        let nodes = LabPlan {
            size: Size { nodes: 2, pods: 1 },
            stack: Stack::V4,
            nat: vec![2],
        }
        .nodes();
        let udp = |src: [u8; 4], dst: [u8; 4], sport, dport, len, head| {
            IpPacket::V4(Packet {
                udp: Some(capture::Udp {
                    sport,
                    dport,
                    payload_len: len,
                    head,
                }),
                ..packet(17, src, dst)
            })
        };
        let packets = [
            // node2 (172.31.2.2) to node1, then as the router puts it on the wire.
            udp(
                [172, 31, 2, 2],
                [192, 168, 100, 1],
                4500,
                4500,
                100,
                0x0002_0003,
            ),
            udp(
                [192, 168, 100, 2],
                [192, 168, 100, 1],
                4501,
                4500,
                100,
                0x0002_0003,
            ),
            udp(
                [192, 168, 100, 2],
                [192, 168, 100, 1],
                4501,
                4500,
                1,
                0xFF00_0000,
            ),
            // Plain ESP towards the NAT, and ESP between nodes not behind one.
            IpPacket::V4(packet(50, [192, 168, 100, 1], [192, 168, 100, 2])),
            IpPacket::V4(packet(50, [192, 168, 100, 1], [192, 168, 100, 3])),
        ];
        assert_eq!(
            nat_census(&nodes, &packets),
            Some(NatCensus {
                esp_in_udp: 2,
                keepalives: 1,
                plain_esp: 1,
            })
        );
        assert_eq!(census_all(&packets).esp_in_udp, 2);
        let no_nat = topology::plan(Size { nodes: 2, pods: 1 });
        assert_eq!(nat_census(&no_nat, &packets), None);
    }

    fn packet(proto: u8, src: [u8; 4], dst: [u8; 4]) -> Packet {
        Packet {
            proto,
            src: Ipv4Addr::from(src),
            dst: Ipv4Addr::from(dst),
            spi: None,
            udp: None,
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
                other: 2,
                ..Census::default()
            }
        );
    }
}
