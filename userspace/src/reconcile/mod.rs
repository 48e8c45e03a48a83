//! Reconciling: read what xsteer owns in the kernel, compute what it should own, apply only the
//! difference — never a flush.
//!
//! [`desired`] turns config, keys and the local network into a [`Snapshot`]; [`read`] takes the
//! same snapshot of the kernel and the maps, seeing only xsteer's objects (SAs by reqid,
//! policies by priority, the encrypt rule by its fwmark, routes by protocol in xsteer's table,
//! the maps it pins); [`plan::plan`] orders the difference so that no packet can leave in
//! plaintext at any step; [`execute`] writes it. Applying the same desired state twice writes
//! nothing.

pub mod desired;
pub mod mtu;
pub mod plan;

use std::{collections::BTreeMap, net::IpAddr};

use crate::{
    cidr::{IpCidr, Ipv4Cidr, Ipv6Cidr},
    dataplane::{Dataplane, DataplaneError},
    kernel::{
        Netlink,
        routing::{self, RoutingError},
        xfrm::{self, Crypto, XfrmError},
    },
    keys::Epoch,
    protocol,
    state::{KeyLedger, StateError},
    view::View,
};
pub use plan::{Change, MapSnapshot, Snapshot};

/// Why a reconcile step failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// An SA or policy operation failed.
    #[error(transparent)]
    Xfrm(#[from] XfrmError),
    /// A rule, route or link operation failed.
    #[error(transparent)]
    Routing(#[from] RoutingError),
    /// A map operation failed.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// The ledger of outbound keys could not be read or written.
    #[error(transparent)]
    Ledger(#[from] StateError),
    /// Outbound SAs would get keys they had before, with restarted sequence counters.
    #[error(
        "refusing to install {count} outbound SA{} (the first: {first}): this node used {} on \
         earlier SAs, and a restarted sequence counter would repeat AES-GCM nonces; {}",
        plural(*count),
        if *count == 1 { "its key" } else { "their keys" },
        key_reuse_remedy(peers)
    )]
    KeyReuse {
        /// How many SAs the plan would have installed with a used key.
        count: usize,
        /// The first of them, without key material.
        first: String,
        /// The peers they go to, each once.
        peers: Vec<RefusedPeer>,
    },
    /// This node's epoch is one it left, whose keys the ledger no longer holds.
    #[error(
        "refusing to install SAs under this node's epoch {epoch}: it was in service before and \
         has been retired, so its keys could come back with restarted sequence counters, which \
         would repeat AES-GCM nonces; give the node a new epoch (node.epoch in the config; \
         xsteer agent takes one by itself)"
    )]
    RetiredEpoch {
        /// The epoch.
        epoch: Epoch,
    },
}

/// A peer whose outbound SAs were refused, as the refusal names it: a new epoch of that peer
/// derives new keys for its SAs alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefusedPeer {
    /// A peer of this node's config file (`[[peers]] epoch`), by name.
    Configured(String),
    /// A peer from a node record, by name: its agent draws its epochs.
    Recorded(String),
    /// An outer address no peer of the view has.
    Unknown(IpAddr),
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

/// What the operator can do about refused keys: the cheapest first.
fn key_reuse_remedy(peers: &[RefusedPeer]) -> String {
    let node = "give this node a new epoch (node.epoch in the config; xsteer agent takes one by \
                itself), which replaces every SA of this node";
    if peers.is_empty() || peers.iter().any(|p| matches!(p, RefusedPeer::Unknown(_))) {
        let to: Vec<String> = peers.iter().map(ToString::to_string).collect();
        return format!("they go to {}: {node}", to.join(", "));
    }
    let how: Vec<String> = peers.iter().map(RefusedPeer::remedy).collect();
    format!(
        "a new epoch of the peer{} they go to suffices: {}; or {node}",
        plural(peers.len()),
        how.join("; ")
    )
}

impl RefusedPeer {
    /// How this peer takes a new epoch.
    fn remedy(&self) -> String {
        match self {
            RefusedPeer::Configured(name) => format!(
                "{name} is a peer of the config: set a new `[[peers]] epoch` of {name} here, and \
                 the same epoch on {name} itself"
            ),
            RefusedPeer::Recorded(name) => format!(
                "{name} publishes its epoch in its node record: its agent takes a new one when it \
                 starts while its kernel holds none of its SAs"
            ),
            RefusedPeer::Unknown(ip) => format!("{ip} is no peer's address"),
        }
    }
}

impl std::fmt::Display for RefusedPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefusedPeer::Configured(name) | RefusedPeer::Recorded(name) => f.write_str(name),
            RefusedPeer::Unknown(ip) => write!(f, "{ip} (no peer of the config or records)"),
        }
    }
}

/// Reads everything xsteer owns: SAs, policies, the encrypt rule, the routes in `table`, and the
/// maps.
pub async fn read(
    netlink: &Netlink,
    dataplane: &mut Dataplane,
    table: u32,
) -> Result<Snapshot, ReconcileError> {
    let mut snapshot = Snapshot::default();
    for state in xfrm::states(netlink).await? {
        snapshot.states.insert(state.key(), state);
    }
    for policy in xfrm::policies(netlink).await? {
        snapshot.policies.insert(policy.key(), policy);
    }
    snapshot.rules = routing::encrypt_rules(netlink).await?.into_iter().collect();
    snapshot.routes = routing::pod_routes(netlink, table)
        .await?
        .into_iter()
        .collect();
    snapshot.maps = MapSnapshot {
        cluster_pod_cidrs: (dataplane.cluster_pod_cidrs()?.get()?.into_iter())
            .map(IpCidr::from)
            .chain((dataplane.cluster_pod_cidrs_v6()?.get()?.into_iter()).map(IpCidr::from))
            .collect(),
        remote_pod_cidrs: (dataplane.remote_pod_cidrs()?.entries()?.into_iter())
            .map(either)
            .chain((dataplane.remote_pod_cidrs_v6()?.entries()?.into_iter()).map(either))
            .collect(),
        local_pod_cidrs: (dataplane.local_pod_cidrs()?.entries()?.into_iter())
            .map(either)
            .chain((dataplane.local_pod_cidrs_v6()?.entries()?.into_iter()).map(either))
            .collect(),
        peer_nodes: (dataplane.peer_nodes()?.entries()?.into_iter())
            .map(|(ip, n)| (IpAddr::from(ip), n))
            .chain(
                (dataplane.peer_nodes_v6()?.entries()?.into_iter())
                    .map(|(ip, n)| (IpAddr::from(ip), n)),
            )
            .collect(),
        peer_spis: dataplane.peer_spis()?.keys()?.into_iter().collect(),
        peer_per_cpu_sas: dataplane.peer_spis()?.per_cpu_sas()?,
        udp_encap_port: dataplane.udp_encap()?.get()?,
    };
    Ok(snapshot)
}

/// The ledger of the keys this node has put on outbound SAs, and what tells an outbound SA from
/// an inbound one: its tunnel source is this node's IP (OUT SAs carry no mark, so that an OUT
/// policy that selects by destination alone can use them as well as a marked one).
pub struct Outbound<'a> {
    /// The ledger.
    pub ledger: &'a mut KeyLedger,
    /// This node's IP.
    pub node_ip: IpAddr,
    /// The peers, by where their ESP goes ([`crate::view::Peer::path`]): a refusal names them.
    pub peers: BTreeMap<(IpAddr, Option<u16>), RefusedPeer>,
    /// This node's epochs in service, current then next: each key is recorded with the one it
    /// is derived under, and the ledger prunes the keys of all others.
    pub epochs: Vec<Epoch>,
}

impl<'a> Outbound<'a> {
    /// The outbound side of `view`'s node, with `ledger`.
    pub fn of(ledger: &'a mut KeyLedger, view: &View) -> Outbound<'a> {
        let peers = view.peers.iter().map(|peer| {
            let name = peer.name.clone();
            let how = match peer.generations {
                None => RefusedPeer::Configured(name),
                Some(_) => RefusedPeer::Recorded(name),
            };
            (peer.path(&view.node), how)
        });
        Outbound {
            ledger,
            node_ip: view.node.ip,
            peers: peers.collect(),
            epochs: protocol::epochs(view.node.epoch, view.node.next_epoch).collect(),
        }
    }

    /// Drops from the ledger the keys of this node's epochs not in service; refuses, before,
    /// an epoch in service that the ledger retired.
    pub fn prune(&mut self) -> Result<(), ReconcileError> {
        // No epochs known (uninstall): none can be told from the others.
        if self.epochs.is_empty() {
            return Ok(());
        }
        if let Some(&epoch) = self.epochs.iter().find(|e| self.ledger.is_retired(e)) {
            return Err(ReconcileError::RetiredEpoch { epoch });
        }
        self.ledger.prune(&self.epochs)?;
        Ok(())
    }

    /// The peer an outbound SA goes to.
    fn peer(&self, state: &xfrm::State) -> RefusedPeer {
        let path = (state.dst, state.encap.map(|e| e.dport));
        (self.peers.get(&path).cloned()).unwrap_or(RefusedPeer::Unknown(state.dst))
    }

    /// The key of `state` if it is an outbound SA, whose key must never be installed twice.
    fn key<'s>(&self, state: &'s xfrm::State) -> Option<&'s [u8]> {
        (state.src == self.node_ip).then_some(match &state.crypto {
            Crypto::Gcm { key, .. } => key,
            Crypto::CbcHmacSha256 { enc_key, .. } => enc_key,
        })
    }
}

/// Refuses the plan, before anything is written, if it would reinstall an outbound key; the
/// refusal counts every such SA and names the peers they go to.
pub fn check_key_reuse(changes: &[Change], outbound: &Outbound<'_>) -> Result<(), ReconcileError> {
    let refused: Vec<&xfrm::State> = changes
        .iter()
        .filter_map(|change| match change {
            Change::AddState(state) => Some(state),
            _ => None,
        })
        .filter(|state| (outbound.key(state)).is_some_and(|key| outbound.ledger.contains(key)))
        .collect();
    let Some(first) = refused.first() else {
        return Ok(());
    };
    let mut peers = Vec::new();
    for peer in refused.iter().map(|state| outbound.peer(state)) {
        if !peers.contains(&peer) {
            peers.push(peer);
        }
    }
    Err(ReconcileError::KeyReuse {
        count: refused.len(),
        first: first.to_string(),
        peers,
    })
}

/// Writes `changes` in order, recording each outbound key in the ledger before it is installed.
///
/// `on_change` is called after each successful write (for logs and output). Stops at the first
/// failure; the changes before it stay, and the next reconcile picks up from there.
pub async fn execute(
    netlink: &Netlink,
    dataplane: &mut Dataplane,
    outbound: &mut Outbound<'_>,
    table: u32,
    changes: &[Change],
    mut on_change: impl FnMut(&Change),
) -> Result<(), ReconcileError> {
    check_key_reuse(changes, outbound)?;
    for change in changes {
        match change {
            Change::AddState(s) => {
                if let Some(key) = outbound.key(s) {
                    let epoch = protocol::sender_epoch(s.spi, &outbound.epochs);
                    outbound.ledger.record(key, epoch)?;
                }
                xfrm::add_state(netlink, s).await?
            }
            Change::DeleteState(s) => xfrm::delete_state(netlink, s).await?,
            Change::AddPolicy(p) => xfrm::put_policy(netlink, p, false).await?,
            Change::ReplacePolicy(p) => xfrm::put_policy(netlink, p, true).await?,
            Change::DeletePolicy(p) => xfrm::delete_policy(netlink, p).await?,
            Change::AddRule(r) => routing::add_rule(netlink, r).await?,
            Change::DeleteRule(r) => routing::delete_rule(netlink, r).await?,
            Change::AddRoute(r) => routing::add_route(netlink, table, r).await?,
            Change::ReplaceRoute(r) => routing::replace_route(netlink, table, r).await?,
            Change::DeleteRoute(r) => routing::delete_route(netlink, table, r).await?,
            Change::SetClusterPodCidrs(cidrs) => {
                let (v4, v6) = split(cidrs);
                dataplane.cluster_pod_cidrs()?.set(&v4)?;
                dataplane.cluster_pod_cidrs_v6()?.set(&v6)?;
            }
            Change::SetLocalPodCidr(IpCidr::V4(c), v) => {
                dataplane.local_pod_cidrs()?.insert(*c, *v)?
            }
            Change::SetLocalPodCidr(IpCidr::V6(c), v) => {
                dataplane.local_pod_cidrs_v6()?.insert(*c, *v)?
            }
            Change::DeleteLocalPodCidr(IpCidr::V4(c)) => dataplane.local_pod_cidrs()?.remove(*c)?,
            Change::DeleteLocalPodCidr(IpCidr::V6(c)) => {
                dataplane.local_pod_cidrs_v6()?.remove(*c)?
            }
            Change::SetPeerNode(IpAddr::V4(ip), n) => dataplane.peer_nodes()?.insert(*ip, *n)?,
            Change::SetPeerNode(IpAddr::V6(ip), n) => dataplane.peer_nodes_v6()?.insert(*ip, *n)?,
            Change::DeletePeerNode(IpAddr::V4(ip)) => dataplane.peer_nodes()?.remove(*ip)?,
            Change::DeletePeerNode(IpAddr::V6(ip)) => dataplane.peer_nodes_v6()?.remove(*ip)?,
            Change::AddPeerSpi(ip, spi) => dataplane.peer_spis()?.insert(*ip, *spi)?,
            Change::DeletePeerSpi(ip, spi) => dataplane.peer_spis()?.remove(*ip, *spi)?,
            Change::SetPeerPerCpuSas(id, n) => dataplane.peer_spis()?.set_per_cpu_sas(*id, *n)?,
            Change::SetUdpEncapPort(port) => dataplane.udp_encap()?.set(*port)?,
            Change::SetRemotePodCidr(IpCidr::V4(c), v) => {
                dataplane.remote_pod_cidrs()?.insert(*c, *v)?
            }
            Change::SetRemotePodCidr(IpCidr::V6(c), v) => {
                dataplane.remote_pod_cidrs_v6()?.insert(*c, *v)?
            }
            Change::DeleteRemotePodCidr(IpCidr::V4(c)) => {
                dataplane.remote_pod_cidrs()?.remove(*c)?
            }
            Change::DeleteRemotePodCidr(IpCidr::V6(c)) => {
                dataplane.remote_pod_cidrs_v6()?.remove(*c)?
            }
        }
        on_change(change);
    }
    Ok(())
}

/// The CIDRs of each family in `cidrs`, in order.
fn split(cidrs: &[IpCidr]) -> (Vec<Ipv4Cidr>, Vec<Ipv6Cidr>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for &cidr in cidrs {
        match cidr {
            IpCidr::V4(c) => v4.push(c),
            IpCidr::V6(c) => v6.push(c),
        }
    }
    (v4, v6)
}

/// A map entry keyed by a CIDR of one family, keyed by [`IpCidr`].
fn either<C: Into<IpCidr>, V>((cidr, value): (C, V)) -> (IpCidr, V) {
    (cidr.into(), value)
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, path::PathBuf};

    use zeroize::Zeroizing;

    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1));

    fn sa(src: [u8; 4], dst: [u8; 4], spi: u32, key: u8) -> Change {
        Change::AddState(xfrm::State {
            src: src.into(),
            dst: dst.into(),
            spi,
            mark: None,
            crypto: Crypto::Gcm {
                key: Zeroizing::new(vec![key; 20]),
                icv_bits: 128,
            },
            esn: true,
            cpu: None,
            encap: None,
        })
    }

    fn ledger(name: &str) -> (PathBuf, KeyLedger) {
        let dir = std::env::temp_dir().join(format!("xsteer-reuse-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ledger = KeyLedger::open(&dir).unwrap();
        (dir, ledger)
    }

    #[test]
    fn a_refusal_counts_every_reused_key_and_names_each_peer_once() {
        let (dir, mut ledger) = ledger("peers");
        for key in [1, 2, 3, 4] {
            ledger.record(&[key; 20], None).unwrap();
        }
        let (b, c) = ([192, 168, 0, 2], [192, 168, 0, 3]);
        let outbound = Outbound {
            ledger: &mut ledger,
            node_ip: LOCAL,
            peers: [
                ((b.into(), None), RefusedPeer::Configured("node-b".into())),
                ((c.into(), None), RefusedPeer::Recorded("node-c".into())),
            ]
            .into(),
            epochs: Vec::new(),
        };
        let changes = [
            sa([192, 168, 0, 1], b, 0x0001_0011, 5),
            sa([192, 168, 0, 1], b, 0x0001_0012, 1),
            sa([192, 168, 0, 1], c, 0x0001_0013, 2),
            sa([192, 168, 0, 1], b, 0x0001_0014, 3),
            // Inbound: its key is the peer's outbound key, never this node's.
            sa(b, [192, 168, 0, 1], 0x0002_0011, 4),
        ];
        let err = check_key_reuse(&changes, &outbound).unwrap_err();
        let ReconcileError::KeyReuse { count, peers, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(*count, 3);
        assert_eq!(
            peers,
            &[
                RefusedPeer::Configured("node-b".into()),
                RefusedPeer::Recorded("node-c".into())
            ]
        );
        let text = err.to_string();
        for part in [
            "refusing to install 3 outbound SAs (the first: SA 192.168.0.1 -> 192.168.0.2 spi \
             0x00010012",
            "a new epoch of the peers they go to suffices",
            "set a new `[[peers]] epoch` of node-b here, and the same epoch on node-b itself",
            "node-c publishes its epoch in its node record",
            "or give this node a new epoch (node.epoch in the config",
            "which replaces every SA of this node",
        ] {
            assert!(text.contains(part), "{text:?} lacks {part:?}");
        }
        assert!(
            check_key_reuse(&changes[..1], &outbound).is_ok(),
            "a new key"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_refused_sa_to_no_known_peer_leaves_only_the_node_epoch() {
        let (dir, mut ledger) = ledger("unknown");
        ledger.record(&[1; 20], None).unwrap();
        let outbound = Outbound {
            ledger: &mut ledger,
            node_ip: LOCAL,
            peers: BTreeMap::new(),
            epochs: Vec::new(),
        };
        let changes = [sa([192, 168, 0, 1], [192, 168, 0, 9], 0x0001_0011, 1)];
        let text = check_key_reuse(&changes, &outbound)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("1 outbound SA (the first")
                && text.contains("used its key")
                && text.contains(
                    "they go to 192.168.0.9 (no peer of the config or records): give this node a \
                     new epoch"
                )
                && !text.contains("suffices"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn pruning_refuses_a_retired_epoch_in_service() {
        let (dir, mut ledger) = ledger("retired");
        let (old, current) = (Epoch::from_bytes([0x11; 16]), Epoch::from_bytes([0x44; 16]));
        ledger.record(&[1; 20], Some(old)).unwrap();
        ledger.record(&[2; 20], Some(current)).unwrap();
        let mut outbound = Outbound {
            ledger: &mut ledger,
            node_ip: LOCAL,
            peers: BTreeMap::new(),
            epochs: vec![current],
        };
        outbound.prune().unwrap();
        assert!(!outbound.ledger.contains(&[1; 20]) && outbound.ledger.contains(&[2; 20]));
        // The operator configures the old epoch again.
        outbound.epochs = vec![old];
        let err = outbound.prune().unwrap_err();
        assert!(matches!(err, ReconcileError::RetiredEpoch { epoch } if epoch == old));
        assert!(
            err.to_string().contains(&format!(
                "this node's epoch {old}: it was in service before and has been retired"
            )),
            "{err}"
        );
        assert!(
            outbound.ledger.contains(&[2; 20]),
            "a refusal prunes nothing"
        );
        // No epochs known: nothing is pruned.
        outbound.epochs.clear();
        outbound.prune().unwrap();
        assert!(outbound.ledger.contains(&[2; 20]));
        let _ = std::fs::remove_dir_all(dir);
    }
}
