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

use std::net::IpAddr;

use crate::{
    cidr::{IpCidr, Ipv4Cidr, Ipv6Cidr},
    dataplane::{Dataplane, DataplaneError},
    kernel::{
        Netlink,
        routing::{self, RoutingError},
        xfrm::{self, Crypto, XfrmError},
    },
    state::{KeyLedger, StateError},
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
    /// An outbound SA would get a key it had before, with a restarted sequence counter.
    #[error(
        "refusing to install {state}: this node used its key on an earlier SA, and a restarted \
         sequence counter would repeat AES-GCM nonces; give the node a new epoch (node.epoch in \
         the config; xsteer agent takes one by itself)"
    )]
    KeyReuse {
        /// The SA, without key material.
        state: String,
    },
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
}

impl Outbound<'_> {
    /// The key of `state` if it is an outbound SA, whose key must never be installed twice.
    fn key<'s>(&self, state: &'s xfrm::State) -> Option<&'s [u8]> {
        (state.src == self.node_ip).then_some(match &state.crypto {
            Crypto::Gcm { key, .. } => key,
            Crypto::CbcHmacSha256 { enc_key, .. } => enc_key,
        })
    }
}

/// Refuses the plan, before anything is written, if it would reinstall an outbound key.
pub fn check_key_reuse(changes: &[Change], outbound: &Outbound<'_>) -> Result<(), ReconcileError> {
    for change in changes {
        if let Change::AddState(state) = change
            && outbound
                .key(state)
                .is_some_and(|key| outbound.ledger.contains(key))
        {
            return Err(ReconcileError::KeyReuse {
                state: state.to_string(),
            });
        }
    }
    Ok(())
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
                    outbound.ledger.record(key)?;
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
