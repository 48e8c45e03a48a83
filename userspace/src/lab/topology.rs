//! The lab's address plan and the wiring of its nodes: node namespaces on a bridge that plays
//! the wire, routed to each other's pod CIDRs as a native-routing CNI (kindnet) routes them.
//!
//! - the wire: namespace `xsl-wire` with bridge `br0`; node k's uplink `eth0` (192.168.100.k/24)
//!   is a veth whose other end, `node{k}`, is a port of the bridge;
//! - node k: namespace `xsl-node{k}`, pod CIDR 10.244.k.0/24, a route to every other node's pod
//!   CIDR via that node, forwarding on;
//! - pod j of node k: namespace `xsl-node{k}-pod{j}` at 10.244.k.(j+1), wired by CNI plugins
//!   (see [`super::pods`]), not here.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};

use super::netns::{ip, ip_in, run_in};

/// Every lab namespace starts with this.
pub const PREFIX: &str = "xsl-";
/// The namespace of the bridge.
pub const WIRE: &str = "xsl-wire";

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
    /// The index of its node.
    pub node: u8,
}

impl LabNode {
    /// Its pod CIDR.
    pub fn pod_cidr(&self) -> String {
        format!("10.244.{}.0/24", self.index)
    }
}

/// The nodes and pods of a lab of `size`.
pub fn plan(size: Size) -> Vec<LabNode> {
    (1..=size.nodes)
        .map(|k| {
            let name = format!("node{k}");
            LabNode {
                index: k,
                netns: format!("{PREFIX}{name}"),
                ip: Ipv4Addr::new(192, 168, 100, k),
                pods: (1..=size.pods)
                    .map(|j| LabPod {
                        netns: format!("{PREFIX}{name}-pod{j}"),
                        ip: Ipv4Addr::new(10, 244, k, j + 1),
                        node: k,
                    })
                    .collect(),
                name,
            }
        })
        .collect()
}

fn sysctl(netns: &str, path: String) -> Result<()> {
    run_in(netns, move || {
        std::fs::write(&path, "1").with_context(|| format!("writing 1 to {path}"))
    })
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
        let port = node.name.as_str();
        ip_in(
            WIRE,
            &[
                "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        )?;
        ip_in(WIRE, &["link", "set", port, "master", "br0", "up"])?;
        ip_in(
            ns,
            &["addr", "add", &format!("{}/24", node.ip), "dev", "eth0"],
        )?;
        ip_in(ns, &["link", "set", "eth0", "up"])?;
        sysctl(ns, "/proc/sys/net/ipv4/ip_forward".into())?;
        for other in nodes.iter().filter(|o| o.index != node.index) {
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
    }
}
