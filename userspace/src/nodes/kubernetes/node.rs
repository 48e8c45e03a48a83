//! What xsteer reads from a Node object, and the record it makes of it.
//!
//! A Node's pod CIDR (`spec.podCIDRs`, written by the controller manager) and its addresses
//! (`status.addresses`, written by its kubelet) are trusted; the record annotation is not: every
//! agent may patch `nodes/status`, so any of them could write any Node's annotation. The record
//! is therefore checked against the Node it is on, field by field, and the node ID is derived
//! from the pod CIDR rather than believed.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Node;

use super::RECORD_ANNOTATION;
use crate::{
    cidr::{Ipv4Cidr, Ipv6Cidr},
    config::node_name_problem,
    nodes::{NodeRecord, RecordError, dir::MAX_RECORD_BYTES},
};

/// The parts of a Node object xsteer uses. Kept instead of the object, so that the status
/// updates that change none of them (conditions, images, heartbeats) wake nobody.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct NodeFacts {
    /// `metadata.name`.
    pub(super) name: String,
    /// `spec.podCIDRs`, or `spec.podCIDR` when that list is empty (clusters before 1.16).
    pub(super) pod_cidrs: Vec<String>,
    /// The addresses in `status.addresses` of type `InternalIP`, in order.
    pub(super) internal_ips: Vec<String>,
    /// The record annotation, as its agent wrote it.
    pub(super) record: Option<String>,
}

impl NodeFacts {
    /// The facts of `node`.
    pub(super) fn of(node: &Node) -> NodeFacts {
        let spec = node.spec.as_ref();
        let mut pod_cidrs = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
        if pod_cidrs.is_empty() {
            pod_cidrs.extend(spec.and_then(|s| s.pod_cidr.clone()));
        }
        let internal_ips = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .map(|a| a.address.clone())
            .collect();
        NodeFacts {
            name: node.metadata.name.clone().unwrap_or_default(),
            pod_cidrs,
            internal_ips,
            record: node
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(RECORD_ANNOTATION))
                .cloned(),
        }
    }

    fn field(&self, field: &'static str, problem: String) -> RecordError {
        RecordError::Field {
            origin: format!("Node {}", self.name),
            field,
            problem,
        }
    }

    /// The node's IPv4 pod CIDR: the first of `spec.podCIDRs` that is IPv4.
    fn pod_cidr(&self) -> Result<Ipv4Cidr, RecordError> {
        let Some(first) = self.pod_cidrs.iter().find(|c| !c.contains(':')) else {
            return Err(self.field(
                "spec.podCIDRs",
                format!(
                    "no IPv4 pod CIDR in {:?}: the controller manager gives each Node one when it \
                     allocates node CIDRs (--allocate-node-cidrs)",
                    self.pod_cidrs
                ),
            ));
        };
        first
            .parse()
            .map_err(|e| self.field("spec.podCIDRs", format!("{e}")))
    }

    /// The node's IPv6 pod CIDR in a dual-stack cluster: the first of `spec.podCIDRs` that is
    /// IPv6, if there is one.
    pub(super) fn pod_cidr_v6(&self) -> Result<Option<Ipv6Cidr>, RecordError> {
        self.pod_cidrs
            .iter()
            .find(|c| c.contains(':'))
            .map(|c| c.parse())
            .transpose()
            .map_err(|e| self.field("spec.podCIDRs", format!("{e}")))
    }

    /// The node's IPv4 InternalIP addresses; whatever does not parse is no address of its.
    fn ipv4_addresses(&self) -> Vec<Ipv4Addr> {
        self.internal_ips
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    /// The node ID and pod CIDR that every node derives alike for this Node: the pod CIDR, and
    /// its place in `cluster`.
    pub(super) fn identity(&self, cluster: Ipv4Cidr) -> Result<(u16, Ipv4Cidr), RecordError> {
        let pod_cidr = self.pod_cidr()?;
        let id = node_id(pod_cidr, cluster).map_err(|why| self.field("spec.podCIDRs", why))?;
        Ok((id, pod_cidr))
    }

    /// Checks that `ip`, this node's tunnel endpoint, is one of the Node's InternalIPs, as its
    /// peers will check it in its record.
    pub(super) fn check_ip(&self, ip: Ipv4Addr) -> Result<(), RecordError> {
        if self.ipv4_addresses().contains(&ip) {
            return Ok(());
        }
        Err(self.field(
            "status.addresses",
            format!(
                "{ip} is not one of the Node's InternalIP addresses {:?}",
                self.internal_ips
            ),
        ))
    }

    /// The record its agent published, checked against the Node: `None` when it has published
    /// none yet.
    pub(super) fn record(&self, cluster: Ipv4Cidr) -> Option<Result<NodeRecord, RecordError>> {
        let text = self.record.as_ref()?;
        Some(self.checked(text, cluster))
    }

    fn checked(&self, text: &str, cluster: Ipv4Cidr) -> Result<NodeRecord, RecordError> {
        if let Some(why) = node_name_problem(&self.name) {
            return Err(self.field("metadata.name", why));
        }
        let origin = format!("Node {} annotation {RECORD_ANNOTATION}", self.name);
        let field = |field, problem| RecordError::Field {
            origin: origin.clone(),
            field,
            problem,
        };
        if text.len() as u64 > MAX_RECORD_BYTES {
            return Err(field(
                "value",
                format!("larger than {MAX_RECORD_BYTES} bytes"),
            ));
        }
        let record = NodeRecord::parse(&origin, text)?;
        let (id, pod_cidr) = self.identity(cluster)?;
        if record.name != self.name {
            return Err(field(
                "name",
                format!("{:?} is not the Node it is on", record.name),
            ));
        }
        if record.pod_cidr != pod_cidr {
            return Err(field(
                "pod_cidr",
                format!("{} is not the Node's pod CIDR {pod_cidr}", record.pod_cidr),
            ));
        }
        // An IPv6 pod CIDR, if the record gives one, is the Node's: the controller manager
        // hands them out, not the record's writer. A record without one is an IPv4-only peer.
        if let Some(claimed) = record.pod_cidr_v6 {
            let node_v6 = self.pod_cidr_v6()?;
            if node_v6 != Some(claimed) {
                let shown = node_v6.map_or("none".to_owned(), |c| c.to_string());
                return Err(field(
                    "pod_cidr_v6",
                    format!("{claimed} is not the Node's IPv6 pod CIDR ({shown})"),
                ));
            }
        }
        if record.id != id {
            return Err(field(
                "id",
                format!(
                    "{} is not {id}, the ID of pod CIDR {pod_cidr} in cluster_cidr {cluster}",
                    record.id
                ),
            ));
        }
        if !self.ipv4_addresses().contains(&record.ip) {
            return Err(field(
                "ip",
                format!(
                    "{} is not one of the Node's InternalIP addresses {:?}",
                    record.ip, self.internal_ips
                ),
            ));
        }
        Ok(record)
    }
}

/// The node ID of the node whose pod CIDR is `pod_cidr`: its block number in `cluster`, counted
/// in blocks of its own size, plus one (IDs start at 1).
///
/// Every node computes the same ID for a Node from the same two facts, so IDs need no
/// coordination; they are unique because the controller manager hands out pod CIDRs of one size
/// that never overlap (and a clash would be refused by admission all the same). 10.244.2.0/24 in
/// 10.244.0.0/16 is node 3.
fn node_id(pod_cidr: Ipv4Cidr, cluster: Ipv4Cidr) -> Result<u16, String> {
    if !cluster.covers(&pod_cidr) {
        return Err(format!(
            "{pod_cidr} is not inside cluster_cidr {cluster}, where node IDs are counted"
        ));
    }
    let offset = u32::from(pod_cidr.addr()) - u32::from(cluster.addr());
    let block = offset
        .checked_shr(32 - u32::from(pod_cidr.prefix_len()))
        .unwrap_or(0);
    block
        .checked_add(1)
        .and_then(|id| u16::try_from(id).ok())
        .ok_or_else(|| {
            format!(
                "{pod_cidr} is block {block} of cluster_cidr {cluster}: node IDs end at 65535 \
                 (block 65534)"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_count_blocks_of_the_pod_cidr_size() {
        let cidr = |s: &str| s.parse::<Ipv4Cidr>().unwrap();
        let cluster = cidr("10.244.0.0/16");
        assert_eq!(node_id(cidr("10.244.0.0/24"), cluster), Ok(1));
        assert_eq!(node_id(cidr("10.244.2.0/24"), cluster), Ok(3));
        assert_eq!(node_id(cidr("10.244.255.0/24"), cluster), Ok(256));
        assert_eq!(node_id(cidr("10.244.0.128/25"), cluster), Ok(2));
        let big = cidr("10.0.0.0/8");
        assert_eq!(node_id(cidr("10.255.253.0/24"), big), Ok(65534));
        assert_eq!(node_id(cidr("10.255.254.0/24"), big), Ok(65535));
        assert_eq!(
            node_id(cidr("10.255.255.0/24"), big).unwrap_err(),
            "10.255.255.0/24 is block 65535 of cluster_cidr 10.0.0.0/8: node IDs end at 65535 \
             (block 65534)"
        );
        assert_eq!(
            node_id(cidr("10.9.0.0/24"), cluster).unwrap_err(),
            "10.9.0.0/24 is not inside cluster_cidr 10.244.0.0/16, where node IDs are counted"
        );
        assert_eq!(node_id(cidr("0.0.0.0/0"), cidr("0.0.0.0/0")), Ok(1));
    }

    #[test]
    fn a_records_ipv6_pod_cidr_must_be_the_nodes() {
        let cluster: Ipv4Cidr = "10.244.0.0/16".parse().unwrap();
        let mut record = crate::nodes::record::test_record("b", 3);
        record.pod_cidr = "10.244.2.0/24".parse().unwrap();
        let facts = |pod_cidrs: &[&str], record: &NodeRecord| NodeFacts {
            name: "b".into(),
            pod_cidrs: pod_cidrs.iter().map(|c| (*c).to_owned()).collect(),
            internal_ips: vec!["192.168.0.3".into()],
            record: Some(record.render_compact()),
        };
        let dual = ["10.244.2.0/24", "fd00:10:244:2::/64"];
        assert_eq!(
            facts(&dual, &record).pod_cidr_v6().unwrap(),
            Some("fd00:10:244:2::/64".parse().unwrap())
        );
        // An IPv4-only record on a dual-stack Node: an IPv4-only peer.
        assert!(facts(&dual, &record).record(cluster).unwrap().is_ok());
        record.pod_cidr_v6 = Some("fd00:10:244:2::/64".parse().unwrap());
        assert_eq!(
            facts(&dual, &record).record(cluster).unwrap().unwrap(),
            record
        );
        // Another node's /64, or one on a Node without any: refused, naming the field.
        record.pod_cidr_v6 = Some("fd00:10:244:1::/64".parse().unwrap());
        let e = facts(&dual, &record).record(cluster).unwrap().unwrap_err();
        assert!(
            e.to_string().ends_with(
                "pod_cidr_v6: fd00:10:244:1::/64 is not the Node's IPv6 pod CIDR \
                 (fd00:10:244:2::/64)"
            ),
            "{e}"
        );
        let e = facts(&dual[..1], &record)
            .record(cluster)
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().ends_with("IPv6 pod CIDR (none)"), "{e}");
    }
}
