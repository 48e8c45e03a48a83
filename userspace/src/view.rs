//! What a node reconciles: itself and its peers, as its config, its state and the node records
//! make them.
//!
//! The config file says who the node is and which peers it knows statically; the state directory
//! says which epochs the node is using; node records add the peers that publish themselves, with
//! the key generations and epochs they advertise. [`crate::inputs`] puts them together; the
//! reconcile, the agent's rotation and re-key steps and `status` read only this.

use std::net::{IpAddr, SocketAddr};

use crate::{
    cidr::{Ipv4Cidr, Ipv6Cidr},
    config::{Config, LocalEncap, PeerConfig},
    kernel::xfrm,
    keys::{Epoch, Generation},
};

/// One node's picture of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// The routing table for the routes of remote pod CIDRs.
    pub route_table: u32,
    /// The cluster's pod address space: every pod CIDR is inside it, no node IP is.
    pub cluster_cidrs: Vec<Ipv4Cidr>,
    /// The cluster's IPv6 pod space, in a dual-stack cluster; empty otherwise.
    pub cluster_cidrs_v6: Vec<Ipv6Cidr>,
    /// This node.
    pub node: LocalNode,
    /// The other nodes: the config's, then those learned from node records.
    pub peers: Vec<Peer>,
}

/// The node xsteer runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalNode {
    /// Node name.
    pub name: String,
    /// The IP the node's ESP tunnels start and end at: IPv4, or IPv6 on IPv6-only nodes.
    pub ip: IpAddr,
    /// Node ID, 1..=65535: bits 16–31 of the skb mark.
    pub id: u16,
    /// The interface that carries the tunnels.
    pub uplink: String,
    /// The CIDR of this node's pods.
    pub pod_cidr: Ipv4Cidr,
    /// The IPv6 CIDR of this node's pods, in a dual-stack cluster.
    pub pod_cidr_v6: Option<Ipv6Cidr>,
    /// The epoch in service, an input of every SA key the node shares.
    pub epoch: Epoch,
    /// The epoch the node is re-keying to, if it is: SAs under both exist until every peer has
    /// moved over.
    pub next_epoch: Option<Epoch>,
    /// How many per-CPU SAs the node sends on besides each set's shared SA, if the kernel can
    /// bind SAs to CPUs: one per CPU with `per_cpu_sas = true`, else 0.
    pub per_cpu_sas: u8,
    /// This node's ESP in UDP (`encap = "udp"`), if on.
    pub encap: Option<LocalEncap>,
}

/// Another node that pod traffic is encrypted to and from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Node name.
    pub name: String,
    /// The peer's tunnel endpoint IP, of the family of this node's.
    pub ip: IpAddr,
    /// The peer's node ID, 1..=65535.
    pub id: u16,
    /// The CIDRs of the peer's pods; at least one.
    pub pod_cidrs: Vec<Ipv4Cidr>,
    /// The IPv6 CIDRs of the peer's pods, in a dual-stack cluster.
    pub pod_cidrs_v6: Vec<Ipv6Cidr>,
    /// The peer's epoch.
    pub epoch: Epoch,
    /// The epoch the peer is re-keying to, from its node record.
    pub next_epoch: Option<Epoch>,
    /// Which of this node's epochs the peer has SAs for when this node is re-keying, from its
    /// record: the re-keyed SAs are used towards it only once it names this node's
    /// `next_epoch` here.
    pub acked_epoch: Option<Epoch>,
    /// The key generations the peer says it can receive (it has their IN SAs), from its node
    /// record; `None` for a peer from the config file, which is assumed to receive them all.
    pub generations: Option<Vec<Generation>>,
    /// How many per-CPU SAs the peer sends on besides each set's shared SA, from its record or
    /// the config: this node installs an IN SA for each.
    pub per_cpu_sas: u8,
    /// Where the peer receives ESP in UDP, if it does (`encap = "udp"` on it): from its record's
    /// `esp_in_udp`, or the config.
    pub esp_in_udp: Option<SocketAddr>,
    /// Whether the peer's SAs take 64-bit extended sequence numbers (its kernel can, per its
    /// record; `esn = false` in the config for one that cannot): a pair uses ESN only when both
    /// ends can, or each would drop the other's ESP.
    pub esn: bool,
}

impl Peer {
    /// Where ESP between `local` and this peer goes: the peer's `esp_in_udp` address and port
    /// when both nodes have ESP in UDP on, else its node IP and no port. Both ends decide
    /// alike from each other's records, so a pair never mixes the two.
    pub fn path(&self, local: &LocalNode) -> (IpAddr, Option<u16>) {
        match (local.encap, self.esp_in_udp) {
            (Some(_), Some(public)) => (public.ip(), Some(public.port())),
            _ => (self.ip, None),
        }
    }

    /// A peer as the config file gives it: no record, so nothing advertised.
    pub fn from_config(peer: &PeerConfig) -> Peer {
        Peer {
            name: peer.name.clone(),
            ip: peer.ip,
            id: peer.id,
            pod_cidrs: peer.pod_cidrs.clone(),
            pod_cidrs_v6: peer.pod_cidrs_v6.clone(),
            epoch: peer.epoch,
            next_epoch: None,
            acked_epoch: None,
            generations: None,
            per_cpu_sas: peer.per_cpu_sas,
            esp_in_udp: peer.esp_in_udp,
            esn: peer.esn,
        }
    }
}

/// A peer of the config that clashes with this node's allocated identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("peers: {name}: {why}")]
pub struct ConfigClash {
    /// The peer.
    pub name: String,
    /// How it clashes.
    pub why: String,
}

impl View {
    /// The node of `config` with the node ID and pod CIDR of `identity` and the epochs in
    /// service, and the config's peers. Fails only if a peer clashes with an allocated
    /// identity (a configured one was checked with the config).
    pub fn from_config(
        config: &Config,
        identity: (u16, Ipv4Cidr),
        epoch: Epoch,
        next_epoch: Option<Epoch>,
    ) -> Result<View, ConfigClash> {
        let mut view = View::alone(config, identity, epoch, next_epoch);
        for peer in &config.peers {
            view.admit(Peer::from_config(peer))
                .map_err(|why| ConfigClash {
                    name: peer.name.clone(),
                    why,
                })?;
        }
        Ok(view)
    }

    fn alone(
        config: &Config,
        identity: (u16, Ipv4Cidr),
        epoch: Epoch,
        next_epoch: Option<Epoch>,
    ) -> View {
        let node = &config.node;
        View {
            route_table: config.route_table,
            cluster_cidrs: config.cluster_cidrs.clone(),
            cluster_cidrs_v6: config.cluster_cidrs_v6.clone(),
            node: LocalNode {
                name: node.name.clone(),
                ip: node.ip,
                id: identity.0,
                uplink: node.uplink.clone(),
                pod_cidr: identity.1,
                pod_cidr_v6: node.pod_cidr_v6,
                epoch,
                next_epoch,
                per_cpu_sas: if node.per_cpu_sas {
                    xfrm::per_cpu_sa_count()
                } else {
                    0
                },
                encap: node.encap,
            },
            peers: Vec::new(),
        }
    }

    /// Adds `peer`, unless it clashes with this node or a peer already in: then says why. A
    /// node with no IPv6 pod space leaves a dual-stack peer's IPv6 CIDRs out (IPv6 is not pod
    /// traffic to it), so that nodes can turn dual-stack one by one.
    pub fn admit(&mut self, mut peer: Peer) -> Result<(), String> {
        if self.cluster_cidrs_v6.is_empty() {
            peer.pod_cidrs_v6.clear();
        }
        match self.clash(&peer) {
            Some(why) => Err(why),
            None => {
                self.peers.push(peer);
                Ok(())
            }
        }
    }

    /// Why `candidate` cannot be a peer beside this node and its peers, if it cannot: a name,
    /// node ID or node IP already taken, a pod CIDR that overlaps another or lies outside the
    /// cluster's pod space, a node IP inside it (tunnel traffic must never look like pod
    /// traffic), or no pod CIDR at all.
    pub fn clash(&self, candidate: &Peer) -> Option<String> {
        let local = &self.node;
        if candidate.pod_cidrs.is_empty() {
            return Some("it has no pod CIDR".into());
        }
        let clusters = &self.cluster_cidrs;
        if let Some(outside) = candidate
            .pod_cidrs
            .iter()
            .find(|c| !clusters.iter().any(|cluster| cluster.covers(c)))
        {
            return Some(format!(
                "pod CIDR {outside} is outside the cluster's pod space"
            ));
        }
        // An IPv6 pod CIDR outside the IPv6 pod space (or any, where there is none) would
        // have the node encrypt and route what the guards do not hold as pod traffic.
        if let Some(outside) = candidate.pod_cidrs_v6.iter().find(|c| {
            !self
                .cluster_cidrs_v6
                .iter()
                .any(|cluster| cluster.covers(c))
        }) {
            return Some(format!(
                "IPv6 pod CIDR {outside} is outside the cluster's IPv6 pod space"
            ));
        }
        if candidate.ip.is_ipv4() != local.ip.is_ipv4() {
            return Some(format!(
                "node IP {} is not of this node's family ({}): no tunnel joins them",
                candidate.ip, local.ip
            ));
        }
        let inside = match candidate.ip {
            IpAddr::V4(ip) => clusters
                .iter()
                .find(|c| c.contains(ip))
                .map(|c| c.to_string()),
            IpAddr::V6(ip) => (self.cluster_cidrs_v6.iter())
                .find(|c| c.contains(ip))
                .map(|c| c.to_string()),
        };
        if let Some(cluster) = inside {
            return Some(format!(
                "node IP {} is inside the cluster's pod space {cluster}",
                candidate.ip
            ));
        }
        if let Some(public) = candidate.esp_in_udp
            && public.is_ipv4() != local.ip.is_ipv4()
        {
            return Some(format!(
                "ESP-in-UDP address {public} is not of this node's family ({})",
                local.ip
            ));
        }
        let others = std::iter::once((
            format!("this node ({})", local.name),
            local.name.as_str(),
            local.id,
            local.ip,
            std::slice::from_ref(&local.pod_cidr),
            local.pod_cidr_v6.as_slice(),
        ))
        .chain(self.peers.iter().map(|p| {
            (
                format!("node {}", p.name),
                p.name.as_str(),
                p.id,
                p.ip,
                p.pod_cidrs.as_slice(),
                p.pod_cidrs_v6.as_slice(),
            )
        }));
        for (who, name, id, ip, cidrs, cidrs_v6) in others {
            if name == candidate.name {
                return Some(format!("its name is already {who}'s"));
            }
            if id == candidate.id {
                return Some(format!("node ID {id} is already {who}'s"));
            }
            if ip == candidate.ip {
                return Some(format!("node IP {ip} is already {who}'s"));
            }
            // Node IPs are outside the pod space and pod CIDRs inside, so neither can hold
            // the other.
            for cidr in cidrs {
                if let Some(mine) = candidate.pod_cidrs.iter().find(|c| c.overlaps(cidr)) {
                    return Some(format!("pod CIDR {mine} overlaps {cidr} of {who}"));
                }
            }
            for cidr in cidrs_v6 {
                if let Some(mine) = candidate.pod_cidrs_v6.iter().find(|c| c.overlaps(cidr)) {
                    return Some(format!("IPv6 pod CIDR {mine} overlaps {cidr} of {who}"));
                }
            }
        }
        // ESP is told apart by its outer source: two peers behind one NAT address would
        // share it.
        let (outer, _) = candidate.path(local);
        if let Some(other) = self.peers.iter().find(|p| p.path(local).0 == outer) {
            return Some(format!(
                "its ESP goes to {outer}, as node {}'s does: nodes behind one NAT address \
                 cannot be told apart",
                other.name
            ));
        }
        None
    }

    /// The peer named `name`, if there is one.
    pub fn peer(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.name == name)
    }
}

/// Views for the unit tests of other modules.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::View;
    use crate::config::{Config, fixtures};

    /// The view of node a in `text` (a config with `node.id` and `node.pod_cidr` given).
    pub fn view(text: &str) -> View {
        let config: Config = text.parse().expect("a valid fixture");
        let identity = config.node.identity().expect("the fixture gives both");
        View::from_config(
            &config,
            identity,
            config.node.epoch.expect("the fixture gives an epoch"),
            None,
        )
        .expect("the fixture's peers fit together")
    }

    /// Node a (ID 1) with peer b (ID 2): [`fixtures::TWO_NODES`].
    pub fn two_nodes() -> View {
        view(fixtures::TWO_NODES)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn two_peers_behind_one_nat_address_cannot_both_be_admitted() {
        let mut view = fixtures::two_nodes();
        view.node.encap = Some(LocalEncap {
            port: 4500,
            public: "192.168.0.1:4500".parse().unwrap(),
        });
        view.peers[0].esp_in_udp = Some("203.0.113.9:4501".parse().unwrap());
        let behind_the_same = Peer {
            name: "c".into(),
            ip: Ipv4Addr::new(192, 168, 0, 3).into(),
            id: 3,
            pod_cidrs: vec!["10.244.3.0/24".parse().unwrap()],
            esp_in_udp: Some("203.0.113.9:4502".parse().unwrap()),
            ..view.peers[0].clone()
        };
        assert_eq!(
            view.clash(&behind_the_same).unwrap(),
            "its ESP goes to 203.0.113.9, as node b's does: nodes behind one NAT address cannot \
             be told apart"
        );
        // With ESP in UDP off here, the pair speaks plain ESP to the node IP: no clash.
        view.node.encap = None;
        assert_eq!(view.clash(&behind_the_same), None);
        let v6 = Peer {
            esp_in_udp: Some("[2001:db8::9]:4500".parse().unwrap()),
            ..behind_the_same
        };
        assert_eq!(
            view.clash(&v6).unwrap(),
            "ESP-in-UDP address [2001:db8::9]:4500 is not of this node's family (192.168.0.1)"
        );
    }

    #[test]
    fn a_clashing_peer_is_refused_with_the_reason() {
        let view = fixtures::two_nodes();
        let fresh = Peer {
            name: "c".into(),
            ip: Ipv4Addr::new(192, 168, 0, 3).into(),
            id: 3,
            pod_cidrs: vec!["10.244.3.0/24".parse().unwrap()],
            ..view.peers[0].clone()
        };
        assert_eq!(view.clash(&fresh), None);
        let with = |edit: &dyn Fn(&mut Peer)| {
            let mut peer = fresh.clone();
            edit(&mut peer);
            view.clash(&peer).expect("a clash")
        };
        assert_eq!(
            with(&|p| p.name = "b".into()),
            "its name is already node b's"
        );
        assert_eq!(with(&|p| p.id = 1), "node ID 1 is already this node (a)'s");
        assert_eq!(
            with(&|p| p.ip = Ipv4Addr::new(192, 168, 0, 2).into()),
            "node IP 192.168.0.2 is already node b's"
        );
        assert_eq!(
            with(&|p| p.pod_cidrs = vec!["10.244.0.0/16".parse().unwrap()]),
            "pod CIDR 10.244.0.0/16 overlaps 10.244.1.0/24 of this node (a)"
        );
        assert_eq!(
            with(&|p| p.ip = Ipv4Addr::new(10, 244, 2, 9).into()),
            "node IP 10.244.2.9 is inside the cluster's pod space 10.244.0.0/16"
        );
        assert_eq!(
            with(&|p| p.pod_cidrs = vec!["192.168.0.0/24".parse().unwrap()]),
            "pod CIDR 192.168.0.0/24 is outside the cluster's pod space"
        );
        assert_eq!(with(&|p| p.pod_cidrs.clear()), "it has no pod CIDR");
        assert_eq!(
            with(&|p| p.pod_cidrs = vec!["10.9.0.0/24".parse().unwrap()]),
            "pod CIDR 10.9.0.0/24 is outside the cluster's pod space"
        );
    }

    #[test]
    fn an_ipv6_pod_cidr_outside_the_space_or_overlapping_is_refused() {
        let mut view = fixtures::two_nodes();
        view.cluster_cidrs_v6 = vec!["fd00:10:244::/48".parse().unwrap()];
        view.node.pod_cidr_v6 = Some("fd00:10:244:1::/64".parse().unwrap());
        let fresh = Peer {
            name: "c".into(),
            ip: Ipv4Addr::new(192, 168, 0, 3).into(),
            id: 3,
            pod_cidrs: vec!["10.244.3.0/24".parse().unwrap()],
            pod_cidrs_v6: vec!["fd00:10:244:3::/64".parse().unwrap()],
            ..view.peers[0].clone()
        };
        assert_eq!(view.clash(&fresh), None);
        let with = |cidr: &str| {
            let peer = Peer {
                pod_cidrs_v6: vec![cidr.parse().unwrap()],
                ..fresh.clone()
            };
            view.clash(&peer).expect("a clash")
        };
        assert_eq!(
            with("fd00:10:244:1::/80"),
            "IPv6 pod CIDR fd00:10:244:1::/80 overlaps fd00:10:244:1::/64 of this node (a)"
        );
        assert_eq!(
            with("fd00:99::/64"),
            "IPv6 pod CIDR fd00:99::/64 is outside the cluster's IPv6 pod space"
        );
        // A node that is not dual-stack admits the peer without its IPv6 pods.
        view.cluster_cidrs_v6.clear();
        view.admit(fresh).unwrap();
        assert!(view.peer("c").unwrap().pod_cidrs_v6.is_empty());
    }
}
