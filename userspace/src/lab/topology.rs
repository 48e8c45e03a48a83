//! The lab's address plan and the wiring of its nodes: node namespaces on a bridge that plays
//! the wire, routed to each other's pod CIDRs as a native-routing CNI (kindnet) routes them.
//!
//! - the wire: namespace `xsl-wire` with bridge `br0`; node k's uplink `eth0` (192.168.100.k/24)
//!   is a veth whose other end, `node{k}`, is a port of the bridge;
//! - node k: namespace `xsl-node{k}`, pod CIDR 10.244.k.0/24, a route to every other node's pod
//!   CIDR via that node, forwarding on;
//! - pod j of node k: namespace `xsl-node{k}-pod{j}` at 10.244.k.(j+1), wired by CNI plugins
//!   (see [`super::pods`]), not here.
//!
//! A dual-stack lab ([`Stack::Dual`]) adds IPv6 beside it, as kindnet does in a dual-stack kind
//! cluster: node k's uplink also has fd00:192:168:100::k/64 (a ULA: the node IPs xsteer uses stay
//! IPv4), its pod CIDR fd00:10:244:k::/64 (k in hex, as an address segment), routed to from every
//! other node via that ULA, IPv6 forwarding on; pod j of node k also has fd00:10:244:k::(j+1).
//! Those routes make plaintext IPv6 between pods of different nodes routable without xsteer, so
//! a capture of the wire shows whether xsteer is what encrypts it. A lab of IPv6 node IPs
//! ([`Stack::Ipv6Nodes`]) is wired the same, and its agents take the ULAs as their node IPs:
//! every tunnel is ESP over IPv6.
//!
//! A node put behind NAT ([`put_behind_nat`], IPv4 labs) sits behind a router namespace
//! `xsl-nat{k}`, as a node at an edge site or in another VPC sits behind its gateway: the router
//! holds 192.168.100.k on the wire (port `node{k}` of the bridge, its `wan`), the node
//! 172.31.k.2/24 behind it (its `eth0` to the router's `lan`, 172.31.k.1, its default route).
//! The router masquerades everything the node sends, ESP in UDP from port 4500 to port
//! [`NAT_PORT`] (a port change, as NATs make them), and forgets an idle UDP mapping after
//! [`NAT_UDP_TIMEOUT_S`]. It routes the node's pod CIDR to it, so that plaintext to its pods
//! stays routable and the wire shows what encrypts it; ESP in UDP reaches the node only
//! through a mapping the node opened.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
};

use anyhow::{Context, Result};

use super::netns::{ip, ip_in, run_in};

/// The port a lab router maps a node's ESP in UDP (from port 4500) to on the wire.
pub const NAT_PORT: u16 = 4501;
/// Seconds a lab router keeps an idle UDP mapping (both of conntrack's UDP timeouts): shorter
/// than the kernel's defaults (30 and 120), so that a test can outwait it.
pub const NAT_UDP_TIMEOUT_S: u32 = 30;

/// Every lab namespace starts with this.
pub const PREFIX: &str = "xsl-";
/// The namespace of the bridge.
pub const WIRE: &str = "xsl-wire";

/// The address families of a lab.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Stack {
    /// IPv4 only.
    #[default]
    V4,
    /// IPv4 and IPv6: pods get an address of each family, as kindnet gives them in a dual-stack
    /// kind cluster.
    Dual,
    /// Dual-stack pods, and the uplinks' IPv6 addresses as the node IPs xsteer's tunnels join:
    /// an IPv6-only node network.
    Ipv6Nodes,
}

impl Stack {
    /// Whether pods get IPv6 addresses too.
    pub fn is_dual(self) -> bool {
        self != Stack::V4
    }
}

/// The cluster's IPv6 pod space in a dual-stack lab (`cluster_cidr_v6` in the agents' configs).
pub const CLUSTER_CIDR_V6: &str = "fd00:10:244::/48";

/// Whether `ip` lies in the dual-stack lab's IPv6 pod space, fd00:10:244::/48.
pub fn in_pod_space_v6(ip: Ipv6Addr) -> bool {
    ip.segments()[..3] == [0xfd00, 0x10, 0x244]
}

/// How big the lab is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    /// Nodes, 2..=250.
    pub nodes: u8,
    /// Pods per node, 1..=250.
    pub pods: u8,
}

/// A node of the lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabNode {
    /// 1-based.
    pub index: u8,
    /// Its name, also in its namespace's name.
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// Its address on the wire.
    pub ip: Ipv4Addr,
    /// Its IPv6 address on the wire (a ULA), in a dual-stack lab.
    pub ip6: Option<Ipv6Addr>,
    /// The node IP xsteer's tunnels start and end at: `ip`, or `ip6` in a lab of IPv6 node IPs;
    /// behind NAT its private address, 172.31.k.2.
    pub tunnel_ip: IpAddr,
    /// Whether it sits behind a masquerading router, which then holds `ip` on the wire.
    pub nat: bool,
    /// Its pods.
    pub pods: Vec<LabPod>,
}

/// A pod of the lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabPod {
    /// Its namespace.
    pub netns: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its IPv6 address, in a dual-stack lab.
    pub ip6: Option<Ipv6Addr>,
    /// The index of its node.
    pub node: u8,
}

impl LabNode {
    /// The namespace of its router, if it sits behind NAT.
    pub fn router_netns(&self) -> Option<String> {
        self.nat.then(|| format!("{PREFIX}nat{}", self.index))
    }

    /// Its pod CIDR.
    pub fn pod_cidr(&self) -> String {
        format!("10.244.{}.0/24", self.index)
    }

    /// Its IPv6 pod CIDR, fd00:10:244:k::/64, in a dual-stack lab.
    pub fn pod_cidr_v6(&self) -> Option<String> {
        self.ip6.map(|_| format!("{}/64", pod_ip6(self.index, 0)))
    }
}

impl LabPod {
    /// Its addresses: IPv4, then IPv6 in a dual-stack lab.
    pub fn ips(&self) -> Vec<std::net::IpAddr> {
        std::iter::once(self.ip.into())
            .chain(self.ip6.map(Into::into))
            .collect()
    }
}

/// fd00:10:244:k::h: host h of node k's IPv6 pod CIDR (h 0: the CIDR's own address).
fn pod_ip6(k: u8, h: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x244, k.into(), 0, 0, 0, h.into())
}

/// The nodes and pods of an IPv4 lab of `size`.
pub fn plan(size: Size) -> Vec<LabNode> {
    plan_stack(size, Stack::V4)
}

/// The nodes and pods of a lab of `size` with the address families of `stack`.
pub fn plan_stack(size: Size, stack: Stack) -> Vec<LabNode> {
    let dual = stack.is_dual();
    (1..=size.nodes)
        .map(|k| {
            let name = format!("node{k}");
            let ip = Ipv4Addr::new(192, 168, 100, k);
            let ip6 = dual.then(|| Ipv6Addr::new(0xfd00, 0x192, 0x168, 0x100, 0, 0, 0, k.into()));
            LabNode {
                index: k,
                netns: format!("{PREFIX}{name}"),
                ip,
                ip6,
                tunnel_ip: match (stack, ip6) {
                    (Stack::Ipv6Nodes, Some(ip6)) => ip6.into(),
                    _ => ip.into(),
                },
                nat: false,
                pods: (1..=size.pods)
                    .map(|j| LabPod {
                        netns: format!("{PREFIX}{name}-pod{j}"),
                        ip: Ipv4Addr::new(10, 244, k, j + 1),
                        ip6: dual.then(|| pod_ip6(k, j + 1)),
                        node: k,
                    })
                    .collect(),
                name,
            }
        })
        .collect()
}

/// Puts the nodes whose indexes are in `nat` behind a router each: their node IPs become
/// private (172.31.k.2). IPv4 labs only: ESP in UDP is decapsulated for IPv4 alone.
pub fn put_behind_nat(nodes: &mut [LabNode], nat: &[u8]) {
    for node in nodes.iter_mut().filter(|n| nat.contains(&n.index)) {
        node.nat = true;
        node.tunnel_ip = private_ip(node.index, 2).into();
    }
}

/// 172.31.k.h: host h of the private link behind node k's router.
fn private_ip(k: u8, h: u8) -> Ipv4Addr {
    Ipv4Addr::new(172, 31, k, h)
}

fn sysctl(netns: &str, path: String) -> Result<()> {
    sysctl_value(netns, path, "1".into())
}

fn sysctl_value(netns: &str, path: String, value: String) -> Result<()> {
    run_in(netns, move || {
        std::fs::write(&path, &value).with_context(|| format!("writing {value} to {path}"))
    })
}

/// Plugs namespace `netns` into the wire: a veth whose end `port` is on the bridge and whose
/// other end, `ifname` in `netns`, holds `addr`/24.
fn plug_into_wire(port: &str, netns: &str, ifname: &str, addr: Ipv4Addr) -> Result<()> {
    ip_in(
        WIRE,
        &[
            "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", netns,
        ],
    )?;
    ip_in(WIRE, &["link", "set", port, "master", "br0", "up"])?;
    ip_in(
        netns,
        &["addr", "add", &format!("{addr}/24"), "dev", ifname],
    )?;
    Ok(())
}

/// Wires node `node`'s router: the wire on `wan`, the node on `lan`, masquerading out of `wan`
/// with ESP in UDP mapped to [`NAT_PORT`], idle UDP mappings forgotten after
/// [`NAT_UDP_TIMEOUT_S`]. The node's own end is `eth0` in its namespace, left to the caller.
fn wire_router(node: &LabNode, router: &str, nodes: &[LabNode]) -> Result<()> {
    let ns = node.netns.as_str();
    ip(&["netns", "add", router])?;
    ip_in(router, &["link", "set", "lo", "up"])?;
    plug_into_wire(&node.name, router, "wan", node.ip)?;
    ip_in(router, &["link", "set", "wan", "up"])?;
    ip_in(
        router,
        &[
            "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )?;
    let lan = private_ip(node.index, 1);
    ip_in(router, &["addr", "add", &format!("{lan}/24"), "dev", "lan"])?;
    ip_in(router, &["link", "set", "lan", "up"])?;
    sysctl(router, "/proc/sys/net/ipv4/ip_forward".into())?;
    // What is routed to the node's pods arrives at the router; and the router reaches the
    // other nodes' pods as the nodes do.
    ip_in(
        router,
        &[
            "route",
            "add",
            &node.pod_cidr(),
            "via",
            &node.tunnel_ip.to_string(),
        ],
    )?;
    for other in nodes.iter().filter(|o| o.index != node.index) {
        ip_in(
            router,
            &[
                "route",
                "add",
                &other.pod_cidr(),
                "via",
                &other.ip.to_string(),
            ],
        )?;
    }
    // One rule per line, its words split on whitespace.
    let iptables = |rule: &str| -> Result<()> {
        let mut command = Command::new("iptables");
        command.args(rule.split_whitespace());
        super::netns::command_in(&mut command, router, false)?;
        let out = command.output().context("running iptables (install it)")?;
        if !out.status.success() {
            anyhow::bail!(
                "iptables {rule} in {router}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    iptables(&format!(
        "-t nat -A POSTROUTING -o wan -p udp --sport 4500 -j MASQUERADE --to-ports {NAT_PORT}"
    ))?;
    iptables("-t nat -A POSTROUTING -o wan -j MASQUERADE")?;
    // A firewall, as NAT gateways have: nothing unasked from the wire (replies to the node are
    // forwarded, not delivered here). Without it, ESP in UDP from a peer that arrives before
    // the node opened its mapping leaves a conntrack entry in the mapping's place (MASQUERADE
    // to port 4501 then finds the port taken) for as long as the peer keeps sending.
    iptables("-A INPUT -i wan -j DROP")?;
    // The namespace's conntrack exists once a NAT rule loaded it.
    for timeout in [
        "nf_conntrack_udp_timeout",
        "nf_conntrack_udp_timeout_stream",
    ] {
        sysctl_value(
            router,
            format!("/proc/sys/net/netfilter/{timeout}"),
            NAT_UDP_TIMEOUT_S.to_string(),
        )?;
    }
    Ok(())
}

/// Creates the namespaces, links, addresses and routes of `nodes` (not their pods).
pub fn wire_up(nodes: &[LabNode]) -> Result<()> {
    ip(&["netns", "add", WIRE])?;
    ip_in(WIRE, &["link", "set", "lo", "up"])?;
    ip_in(WIRE, &["link", "add", "br0", "type", "bridge"])?;
    ip_in(WIRE, &["link", "set", "br0", "up"])?;
    for node in nodes {
        let ns = node.netns.as_str();
        ip(&["netns", "add", ns])?;
        ip_in(ns, &["link", "set", "lo", "up"])?;
        let router = node.router_netns();
        if let Some(router) = &router {
            wire_router(node, router, nodes)?;
            ip_in(
                ns,
                &[
                    "addr",
                    "add",
                    &format!("{}/24", node.tunnel_ip),
                    "dev",
                    "eth0",
                ],
            )?;
        } else {
            plug_into_wire(&node.name, ns, "eth0", node.ip)?;
        }
        if let Some(ip6) = node.ip6 {
            // nodad: usable at once, not tentative for the second DAD takes.
            ip_in(
                ns,
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{ip6}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            )?;
        }
        ip_in(ns, &["link", "set", "eth0", "up"])?;
        if router.is_some() {
            let gateway = private_ip(node.index, 1).to_string();
            ip_in(ns, &["route", "add", "default", "via", &gateway])?;
        }
        sysctl(ns, "/proc/sys/net/ipv4/ip_forward".into())?;
        if node.ip6.is_some() {
            sysctl(ns, "/proc/sys/net/ipv6/conf/all/forwarding".into())?;
        }
        for other in nodes.iter().filter(|o| o.index != node.index) {
            // Behind NAT, everything goes by the router (the default route).
            if router.is_some() {
                continue;
            }
            ip_in(
                ns,
                &[
                    "route",
                    "add",
                    &other.pod_cidr(),
                    "via",
                    &other.ip.to_string(),
                ],
            )?;
            // As kindnet routes a dual-stack cluster: each family's pod CIDR via the node's
            // address of that family.
            if let (Some(cidr), Some(via)) = (other.pod_cidr_v6(), other.ip6) {
                ip_in(ns, &["-6", "route", "add", &cidr, "via", &via.to_string()])?;
            }
        }
    }
    Ok(())
}

/// Deletes every lab namespace; the kernel objects in them go with them.
pub fn wire_down() -> Result<()> {
    for ns in super::netns::list(PREFIX) {
        ip(&["netns", "delete", &ns])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_gives_each_node_a_24_and_each_pod_an_address_in_it() {
        let nodes = plan(Size { nodes: 3, pods: 2 });
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[2].netns, "xsl-node3");
        assert_eq!(nodes[2].ip, Ipv4Addr::new(192, 168, 100, 3));
        assert_eq!(nodes[2].pod_cidr(), "10.244.3.0/24");
        let pods: Vec<_> = nodes[2]
            .pods
            .iter()
            .map(|p| (p.netns.as_str(), p.ip))
            .collect();
        assert_eq!(
            pods,
            [
                ("xsl-node3-pod1", Ipv4Addr::new(10, 244, 3, 2)),
                ("xsl-node3-pod2", Ipv4Addr::new(10, 244, 3, 3))
            ]
        );
        assert_eq!(nodes[2].ip6, None);
        assert_eq!(nodes[2].pod_cidr_v6(), None);
        assert_eq!(nodes[2].pods[0].ips().len(), 1);
    }

    #[test]
    fn a_dual_stack_plan_gives_each_node_a_64_and_each_pod_an_address_in_it() {
        let nodes = plan_stack(Size { nodes: 12, pods: 2 }, Stack::Dual);
        assert_eq!(nodes[2].ip6, Some("fd00:192:168:100::3".parse().unwrap()));
        assert_eq!(nodes[2].pod_cidr_v6().unwrap(), "fd00:10:244:3::/64");
        assert_eq!(nodes[11].pod_cidr_v6().unwrap(), "fd00:10:244:c::/64");
        assert_eq!(nodes[2].pod_cidr(), "10.244.3.0/24");
        let pod = &nodes[2].pods[1];
        assert_eq!(pod.ip6, Some("fd00:10:244:3::3".parse().unwrap()));
        assert_eq!(
            pod.ips(),
            [
                std::net::IpAddr::from(Ipv4Addr::new(10, 244, 3, 3)),
                "fd00:10:244:3::3".parse::<std::net::IpAddr>().unwrap()
            ]
        );
        assert!(in_pod_space_v6(pod.ip6.unwrap()));
        assert!(!in_pod_space_v6(nodes[2].ip6.unwrap()));
        assert!(!in_pod_space_v6("fd00:10:245::1".parse().unwrap()));
    }
}
