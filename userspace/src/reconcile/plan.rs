//! The difference between what the kernel holds and what it should hold, as an ordered list of
//! changes that never opens a window for plaintext.
//!
//! Order of a plan:
//! 1. policies are added or replaced — the catch-all block policy before any other, so a packet
//!    marked for encryption is dropped rather than sent in clear from the first change on;
//!    SAs are added before the policies that use them;
//! 2. rules and routes;
//! 3. the cluster's pod space, which only makes the guards drop more; map entries that only
//!    widen what is accepted (local CIDRs, peers, valid SPIs), then the remote CIDRs, whose
//!    entries make the classifier start marking: by then everything the mark leads to exists;
//! 4. removals in the reverse order: marking stops first, SAs go last.
//!
//! The plan is pure: it reads two snapshots and writes nothing, so it is tested without a kernel.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr},
};

use xsteer_common::maps::{LocalPodCidr, PeerNode, RemotePodCidr};

use crate::{
    cidr::IpCidr,
    kernel::{
        routing::{EncryptRule, PodRoute},
        xfrm::{Policy, PolicyAction, PolicyKey, State, StateKey},
    },
};

/// Everything xsteer owns in the kernel, in one comparable snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// SAs by kernel identity.
    pub states: BTreeMap<StateKey, State>,
    /// Policies by kernel identity.
    pub policies: BTreeMap<PolicyKey, Policy>,
    /// `fwmark 0xe00/0xf00` rules, one per family.
    pub rules: BTreeSet<EncryptRule>,
    /// Routes in xsteer's table.
    pub routes: BTreeSet<PodRoute>,
    /// The maps the programs read.
    pub maps: MapSnapshot,
}

/// The content of the maps the programs read. CIDR maps come in one map per family in the
/// kernel (`remote_pod_cidrs` and `remote6_cidrs`, ...); here each holds both, and writing an
/// entry picks the map of its family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapSnapshot {
    /// `cluster_pod_cidrs` and `cluster6_cidrs`: the cluster's pod space, which the guards
    /// check.
    pub cluster_pod_cidrs: Vec<IpCidr>,
    /// `remote_pod_cidrs` and `remote6_cidrs`.
    pub remote_pod_cidrs: BTreeMap<IpCidr, RemotePodCidr>,
    /// `local_pod_cidrs` and `local6_cidrs`.
    pub local_pod_cidrs: BTreeMap<IpCidr, LocalPodCidr>,
    /// `peer_nodes` and `peer6_nodes` (with `peer6_addrs`), by the peer's node IP.
    pub peer_nodes: BTreeMap<IpAddr, PeerNode>,
    /// Keys of `peer_spis`: (peer node IP, shared SPI of an SA set), with `0.0.0.0` for peers
    /// with IPv6 node IPs ([`crate::dataplane::spi_owner`]).
    pub peer_spis: BTreeSet<(Ipv4Addr, u32)>,
    /// How many per-CPU SAs each peer node ID sends on besides its shared SAs, where not 0, as
    /// its set in `peer_spi_sets` says.
    pub peer_per_cpu_sas: BTreeMap<u16, u16>,
    /// `udp_encap`: the port the ingress guard takes ESP in UDP apart on, if any.
    pub udp_encap_port: Option<u16>,
}

/// One write to the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Install an SA.
    AddState(State),
    /// Remove an SA.
    DeleteState(State),
    /// Install a policy.
    AddPolicy(Policy),
    /// Replace the policy with the same key, atomically.
    ReplacePolicy(Policy),
    /// Remove a policy.
    DeletePolicy(Policy),
    /// Add the encrypt rule.
    AddRule(EncryptRule),
    /// Remove an encrypt rule.
    DeleteRule(EncryptRule),
    /// Add a route to a remote pod CIDR.
    AddRoute(PodRoute),
    /// Replace the route to the same pod CIDR (a new MTU or next hop), atomically.
    ReplaceRoute(PodRoute),
    /// Remove a route.
    DeleteRoute(PodRoute),
    /// Write the cluster's pod space, whole, in one map write per family.
    SetClusterPodCidrs(Vec<IpCidr>),
    /// Write a `local_pod_cidrs` entry.
    SetLocalPodCidr(IpCidr, LocalPodCidr),
    /// Remove a `local_pod_cidrs` entry.
    DeleteLocalPodCidr(IpCidr),
    /// Write a `peer_nodes` entry.
    SetPeerNode(IpAddr, PeerNode),
    /// Remove a `peer_nodes` entry.
    DeletePeerNode(IpAddr),
    /// Make an SPI valid for a peer.
    AddPeerSpi(Ipv4Addr, u32),
    /// Withdraw an SPI from a peer.
    DeletePeerSpi(Ipv4Addr, u32),
    /// Set how many per-CPU SAs a peer node ID sends on.
    SetPeerPerCpuSas(u16, u16),
    /// Set the port of ESP in UDP (`None`: off).
    SetUdpEncapPort(Option<u16>),
    /// Write a `remote_pod_cidrs` entry: one atomic update as the programs see it.
    SetRemotePodCidr(IpCidr, RemotePodCidr),
    /// Remove a `remote_pod_cidrs` entry.
    DeleteRemotePodCidr(IpCidr),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::AddState(s) => write!(f, "add {s}"),
            Change::DeleteState(s) => write!(f, "delete {s}"),
            Change::AddPolicy(p) => write!(f, "add {p}"),
            Change::ReplacePolicy(p) => write!(f, "replace {p}"),
            Change::DeletePolicy(p) => write!(f, "delete {p}"),
            Change::AddRule(r) => write!(f, "add {r}"),
            Change::DeleteRule(r) => write!(f, "delete {r}"),
            Change::AddRoute(r) => write!(f, "add {r}"),
            Change::ReplaceRoute(r) => write!(f, "replace {r}"),
            Change::DeleteRoute(r) => write!(f, "delete {r}"),
            Change::SetClusterPodCidrs(cidrs) => {
                let shown: Vec<String> = cidrs.iter().map(IpCidr::to_string).collect();
                write!(f, "set cluster_pod_cidrs [{}]", shown.join(", "))
            }
            Change::SetLocalPodCidr(c, _) => write!(f, "set local_pod_cidrs {c}"),
            Change::DeleteLocalPodCidr(c) => write!(f, "delete local_pod_cidrs {c}"),
            Change::SetPeerNode(ip, n) => write!(f, "set peer_nodes {ip} -> node {}", n.node_id),
            Change::DeletePeerNode(ip) => write!(f, "delete peer_nodes {ip}"),
            Change::AddPeerSpi(ip, spi) => write!(f, "add peer_spis {ip} spi {spi:#010x}"),
            Change::DeletePeerSpi(ip, spi) => write!(f, "delete peer_spis {ip} spi {spi:#010x}"),
            Change::SetPeerPerCpuSas(id, n) => {
                write!(f, "set peer_spi_sets {id} per-CPU SAs {n}")
            }
            Change::SetUdpEncapPort(Some(port)) => write!(f, "set udp_encap port {port}"),
            Change::SetUdpEncapPort(None) => write!(f, "set udp_encap off"),
            Change::SetRemotePodCidr(c, v) => write!(
                f,
                "set remote_pod_cidrs {c} -> node {} generation {}",
                v.node_id, v.generation
            ),
            Change::DeleteRemotePodCidr(c) => write!(f, "delete remote_pod_cidrs {c}"),
        }
    }
}

/// What to add, change and remove to turn `current` into `desired` in a map keyed by `K`.
struct Delta<'a, K, V> {
    added: Vec<(&'a K, &'a V)>,
    changed: Vec<(&'a K, &'a V)>,
    removed: Vec<(&'a K, &'a V)>,
}

fn delta<'a, K: Ord, V: PartialEq>(
    current: &'a BTreeMap<K, V>,
    desired: &'a BTreeMap<K, V>,
) -> Delta<'a, K, V> {
    let mut d = Delta {
        added: Vec::new(),
        changed: Vec::new(),
        removed: Vec::new(),
    };
    for (k, v) in desired {
        match current.get(k) {
            None => d.added.push((k, v)),
            Some(old) if old != v => d.changed.push((k, v)),
            Some(_) => {}
        }
    }
    d.removed = current
        .iter()
        .filter(|(k, _)| !desired.contains_key(k))
        .collect();
    d
}

fn set_delta<'a, T: Ord>(
    current: &'a BTreeSet<T>,
    desired: &'a BTreeSet<T>,
) -> (Vec<&'a T>, Vec<&'a T>) {
    (
        desired.difference(current).collect(),
        current.difference(desired).collect(),
    )
}

/// The ordered changes that turn `current` into `desired`; empty when they are equal.
pub fn plan(current: &Snapshot, desired: &Snapshot) -> Vec<Change> {
    let mut changes = Vec::new();

    let policies = delta(&current.policies, &desired.policies);
    let is_block = |p: &Policy| p.action == PolicyAction::Block;
    // The block policy first of all.
    for (_, p) in policies.added.iter().filter(|(_, p)| is_block(p)) {
        changes.push(Change::AddPolicy(**p));
    }
    for (_, p) in policies.changed.iter().filter(|(_, p)| is_block(p)) {
        changes.push(Change::ReplacePolicy(**p));
    }

    // An SA whose content changed under the same SPI cannot be updated in place: it is
    // deleted and added again after the policies moved on (the wire SPI carries the epoch, so
    // a key change normally arrives under a new SPI and this path stays unused).
    let states = delta(&current.states, &desired.states);
    for (_, s) in states.added.iter().chain(&states.changed) {
        if current.states.contains_key(&s.key()) {
            changes.push(Change::DeleteState(current.states[&s.key()].clone()));
        }
        changes.push(Change::AddState((*s).clone()));
    }

    for (_, p) in policies.added.iter().filter(|(_, p)| !is_block(p)) {
        changes.push(Change::AddPolicy(**p));
    }
    for (_, p) in policies.changed.iter().filter(|(_, p)| !is_block(p)) {
        changes.push(Change::ReplacePolicy(**p));
    }

    let (rules_added, rules_removed) = set_delta(&current.rules, &desired.rules);
    let (routes_added, mut routes_removed) = set_delta(&current.routes, &desired.routes);
    changes.extend(rules_added.into_iter().map(|r| Change::AddRule(*r)));
    // A table holds one route per pod CIDR: one whose MTU or next hop changed (a generation
    // with another ESP overhead, say) is replaced in place, never added beside the old one.
    for route in routes_added {
        if routes_removed.iter().any(|old| old.dst == route.dst) {
            routes_removed.retain(|old| old.dst != route.dst);
            changes.push(Change::ReplaceRoute(*route));
        } else {
            changes.push(Change::AddRoute(*route));
        }
    }

    let (cm, dm) = (&current.maps, &desired.maps);
    // The pod space only makes the guards drop more: a new one goes in before anything else
    // of the maps, and an empty one (uninstall) after every removal.
    let pod_space = (cm.cluster_pod_cidrs != dm.cluster_pod_cidrs)
        .then(|| Change::SetClusterPodCidrs(dm.cluster_pod_cidrs.clone()));
    let pod_space_last = dm.cluster_pod_cidrs.is_empty();
    if !pod_space_last {
        changes.extend(pod_space.clone());
    }
    // The port goes on with the maps that admit peers; peers send ESP in UDP only once this
    // node's record advertises it, which is published after the reconcile. Off, it goes last.
    let encap_port = (cm.udp_encap_port != dm.udp_encap_port)
        .then_some(Change::SetUdpEncapPort(dm.udp_encap_port));
    if dm.udp_encap_port.is_some() {
        changes.extend(encap_port.clone());
    }
    let local = delta(&cm.local_pod_cidrs, &dm.local_pod_cidrs);
    let peers = delta(&cm.peer_nodes, &dm.peer_nodes);
    let (spis_added, spis_removed) = set_delta(&cm.peer_spis, &dm.peer_spis);
    let remote = delta(&cm.remote_pod_cidrs, &dm.remote_pod_cidrs);
    for (c, v) in local.added.iter().chain(&local.changed) {
        changes.push(Change::SetLocalPodCidr(**c, **v));
    }
    for (ip, n) in peers.added.iter().chain(&peers.changed) {
        changes.push(Change::SetPeerNode(**ip, **n));
    }
    changes.extend(
        spis_added
            .iter()
            .map(|(ip, spi)| Change::AddPeerSpi(*ip, *spi)),
    );
    let per_cpu = delta(&cm.peer_per_cpu_sas, &dm.peer_per_cpu_sas);
    for (id, n) in per_cpu.added.iter().chain(&per_cpu.changed) {
        changes.push(Change::SetPeerPerCpuSas(**id, **n));
    }
    for (c, v) in remote.added.iter().chain(&remote.changed) {
        changes.push(Change::SetRemotePodCidr(**c, **v));
    }

    // Removals, in reverse: stop marking first.
    changes.extend(
        remote
            .removed
            .iter()
            .map(|(c, _)| Change::DeleteRemotePodCidr(**c)),
    );
    changes.extend(
        spis_removed
            .iter()
            .map(|(ip, spi)| Change::DeletePeerSpi(*ip, *spi)),
    );
    changes.extend(
        per_cpu
            .removed
            .iter()
            .map(|(id, _)| Change::SetPeerPerCpuSas(**id, 0)),
    );
    changes.extend(
        peers
            .removed
            .iter()
            .map(|(ip, _)| Change::DeletePeerNode(**ip)),
    );
    changes.extend(
        local
            .removed
            .iter()
            .map(|(c, _)| Change::DeleteLocalPodCidr(**c)),
    );
    if dm.udp_encap_port.is_none() {
        changes.extend(encap_port);
    }
    if pod_space_last {
        changes.extend(pod_space);
    }
    changes.extend(routes_removed.into_iter().map(|r| Change::DeleteRoute(*r)));
    changes.extend(rules_removed.into_iter().map(|r| Change::DeleteRule(*r)));
    // The block policy last of all.
    let (blocks, others): (Vec<_>, Vec<_>) =
        policies.removed.iter().partition(|(_, p)| is_block(p));
    changes.extend(
        others
            .iter()
            .chain(&blocks)
            .map(|(_, p)| Change::DeletePolicy(**p)),
    );
    changes.extend(
        states
            .removed
            .iter()
            .map(|(_, s)| Change::DeleteState((*s).clone())),
    );
    changes
}

#[cfg(test)]
mod tests {
    use zeroize::Zeroizing;

    use super::*;
    use crate::kernel::xfrm::{
        BLOCK_POLICY_PRIORITY, Crypto, Direction, Mark, PEER_POLICY_PRIORITY, set_reqid,
    };

    fn cidr(s: &str) -> IpCidr {
        s.parse().unwrap()
    }

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1));
    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 0, 2));

    fn block() -> Policy {
        Policy {
            direction: Direction::Out,
            src: cidr("0.0.0.0/0"),
            dst: cidr("0.0.0.0/0"),
            mark: Some(Mark {
                value: 0xE00,
                mask: 0xF00,
            }),
            priority: BLOCK_POLICY_PRIORITY,
            action: PolicyAction::Block,
        }
    }

    fn out_policy(spi: u32) -> Policy {
        Policy {
            direction: Direction::Out,
            src: cidr("0.0.0.0/0"),
            dst: cidr("10.244.2.0/24"),
            mark: Some(Mark {
                value: 0x0002_0E00 | spi << 12,
                mask: 0xFFFF_FF00,
            }),
            priority: PEER_POLICY_PRIORITY,
            action: PolicyAction::Tunnel {
                src: LOCAL,
                dst: PEER,
                reqid: set_reqid(0x0001_0000 | spi),
            },
        }
    }

    fn sa(spi: u32, key: u8) -> State {
        State {
            src: LOCAL,
            dst: PEER,
            spi,
            mark: None,
            crypto: Crypto::Gcm {
                key: Zeroizing::new(vec![key; 20]),
                icv_bits: 128,
            },
            esn: true,
            cpu: None,
            encap: None,
        }
    }

    fn snapshot(states: &[State], policies: &[Policy], remote_spi: Option<u8>) -> Snapshot {
        let mut s = Snapshot {
            states: states.iter().map(|s| (s.key(), s.clone())).collect(),
            policies: policies.iter().map(|p| (p.key(), *p)).collect(),
            ..Snapshot::default()
        };
        if let Some(spi) = remote_spi {
            s.maps.remote_pod_cidrs.insert(
                cidr("10.244.2.0/24"),
                RemotePodCidr {
                    node_id: 2,
                    generation: spi,
                    flags: 0,
                },
            );
            s.maps
                .peer_spis
                .insert((Ipv4Addr::new(192, 168, 0, 2), 0x0002_0010 | u32::from(spi)));
        }
        s
    }

    fn position(changes: &[Change], wanted: impl Fn(&Change) -> bool) -> usize {
        changes.iter().position(wanted).expect("change present")
    }

    #[test]
    fn a_route_whose_mtu_changes_is_replaced_in_place() {
        let route = |mtu| PodRoute {
            dst: cidr("10.244.2.0/24"),
            via: Some(PEER),
            oif: 2,
            mtu,
        };
        let mut current = Snapshot::default();
        current.routes.insert(route(1446));
        let mut desired = Snapshot::default();
        desired.routes.insert(route(1438));
        // Adding the new route beside the old one fails (one route per CIDR and table), and
        // deleting the old one after a replace would take the new one with it.
        assert_eq!(
            plan(&current, &desired),
            [Change::ReplaceRoute(route(1438))]
        );
        desired.routes.clear();
        assert_eq!(plan(&current, &desired), [Change::DeleteRoute(route(1446))]);
    }

    #[test]
    fn equal_snapshots_need_no_change() {
        let s = snapshot(&[sa(0x20013, 1)], &[block(), out_policy(3)], Some(3));
        assert!(plan(&s, &s.clone()).is_empty());
    }

    #[test]
    fn a_fresh_node_gets_block_policy_first_and_marking_last() {
        let desired = snapshot(&[sa(0x20013, 1)], &[out_policy(3), block()], Some(3));
        let changes = plan(&Snapshot::default(), &desired);
        assert_eq!(changes.len(), 5, "{changes:#?}");
        assert_eq!(changes[0], Change::AddPolicy(block()));
        let state = position(&changes, |c| matches!(c, Change::AddState(_)));
        let policy = position(&changes, |c| *c == Change::AddPolicy(out_policy(3)));
        let spi = position(&changes, |c| matches!(c, Change::AddPeerSpi(..)));
        let mark = position(&changes, |c| matches!(c, Change::SetRemotePodCidr(..)));
        assert!(state < policy && policy < spi && spi < mark, "{changes:#?}");
        assert_eq!(mark, changes.len() - 1);
    }

    #[test]
    fn a_generation_switch_adds_before_it_switches_and_removes_after() {
        let current = snapshot(&[sa(0x20013, 1)], &[block(), out_policy(3)], Some(3));
        let desired = snapshot(&[sa(0x20014, 2)], &[block(), out_policy(4)], Some(4));
        let changes = plan(&current, &desired);
        let add_sa = position(
            &changes,
            |c| matches!(c, Change::AddState(s) if s.spi == 0x20014),
        );
        let add_policy = position(&changes, |c| *c == Change::AddPolicy(out_policy(4)));
        let switch = position(
            &changes,
            |c| matches!(c, Change::SetRemotePodCidr(_, v) if v.generation == 4),
        );
        let old_policy = position(&changes, |c| *c == Change::DeletePolicy(out_policy(3)));
        let old_sa = position(
            &changes,
            |c| matches!(c, Change::DeleteState(s) if s.spi == 0x20013),
        );
        assert!(add_sa < add_policy && add_policy < switch, "{changes:#?}");
        assert!(switch < old_policy && old_policy < old_sa, "{changes:#?}");
    }

    #[test]
    fn removal_stops_marking_first_and_keeps_the_block_policy_to_the_end() {
        let current = snapshot(&[sa(0x20013, 1)], &[block(), out_policy(3)], Some(3));
        let changes = plan(&current, &Snapshot::default());
        assert!(
            matches!(changes[0], Change::DeleteRemotePodCidr(_)),
            "{changes:#?}"
        );
        let out = position(&changes, |c| *c == Change::DeletePolicy(out_policy(3)));
        let blk = position(&changes, |c| *c == Change::DeletePolicy(block()));
        assert!(out < blk);
        assert!(matches!(changes.last(), Some(Change::DeleteState(_))));
    }

    #[test]
    fn a_key_change_under_the_same_spi_deletes_then_adds() {
        let current = snapshot(&[sa(0x20013, 1)], &[], None);
        let desired = snapshot(&[sa(0x20013, 9)], &[], None);
        assert_eq!(
            plan(&current, &desired),
            vec![
                Change::DeleteState(sa(0x20013, 1)),
                Change::AddState(sa(0x20013, 9))
            ]
        );
    }

    #[test]
    fn a_changed_policy_is_replaced_atomically() {
        let mut moved = out_policy(3);
        moved.action = PolicyAction::Tunnel {
            src: LOCAL,
            dst: Ipv4Addr::new(192, 168, 0, 9).into(),
            reqid: set_reqid(0x0001_0003),
        };
        let changes = plan(
            &snapshot(&[], &[out_policy(3)], None),
            &snapshot(&[], &[moved], None),
        );
        assert_eq!(changes, vec![Change::ReplacePolicy(moved)]);
    }

    #[test]
    fn display_never_shows_keys() {
        let text = format!(
            "{} {:?}",
            Change::AddState(sa(0x20013, 0xAB)),
            sa(0x20013, 0xAB)
        );
        assert!(!text.to_lowercase().contains("abab"), "{text}");
        assert!(text.contains("spi 0x00020013"), "{text}");
    }
}
