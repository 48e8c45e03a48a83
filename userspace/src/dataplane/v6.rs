//! Typed views of the IPv6 maps: `Ipv6Cidr` and `Ipv6Addr` in, kernel layouts out.
//!
//! They follow the IPv4 views in [`super::maps`]: the remote pod trie with a grid of slots in
//! front (here /64 slots over a cluster prefix of /48 to /64), the cluster's pod space, this
//! node's pod CIDRs, and the peers by IPv6 node address.

use std::{collections::BTreeMap, net::Ipv6Addr, ops::Range};

use aya::maps::{Array, HashMap, Map, MapData, MapError, lpm_trie::Key};
use xsteer_common::maps::{
    self as names, CLUSTER_POD_CIDRS_MAX, ClusterPodCidrV6, ClusterPodSpaceV6, Ipv6, LocalPodCidr,
    PeerNode, PodCidrGridV6, RemotePodCidr, SLOT_CONSULT_TRIE,
};

use super::{
    DataplaneError,
    family::{MapCidr, RemoteMapNames, SlotGrid},
    maps::{CidrMap, RemoteCidrs, keep_slots, map_err},
};
use crate::cidr::{Ipv6Cidr, NODE_POD_PREFIX_LEN_V6};

/// This node's IPv6 pod CIDRs.
pub type LocalPodCidrsV6<'a> = CidrMap<'a, Ipv6Cidr, LocalPodCidr>;

/// Remote IPv6 pod CIDRs, with the grid of /64 slots in front.
pub type RemotePodCidrsV6<'a> = RemoteCidrs<'a, Ipv6Cidr>;

/// The cluster's IPv6 pod space, which the guards decide "IPv6 pod address" by. Empty, the
/// guards leave IPv6 alone.
pub struct ClusterPodCidrsV6<'a> {
    map: Array<&'a mut MapData, ClusterPodSpaceV6>,
}

fn cluster_cidr_raw(cidr: Ipv6Cidr) -> ClusterPodCidrV6 {
    ClusterPodCidrV6 {
        addr: cidr.addr().octets(),
        mask: Ipv6Cidr::mask(cidr.prefix_len()).to_be_bytes(),
    }
}

impl<'a> ClusterPodCidrsV6<'a> {
    pub(super) fn new(map: &'a mut Map) -> Result<Self, DataplaneError> {
        let map = Array::try_from(map).map_err(map_err(names::CLUSTER_POD_CIDRS_V6))?;
        Ok(ClusterPodCidrsV6 { map })
    }

    fn raw(&self) -> Result<ClusterPodSpaceV6, DataplaneError> {
        self.map
            .get(&0, 0)
            .map_err(map_err(names::CLUSTER_POD_CIDRS_V6))
    }

    /// Makes the IPv6 pod space exactly `cidrs` (duplicates count once), in one map write; an
    /// empty list empties it. A CIDR in both the old and the new list keeps its slot, as for
    /// IPv4, so it stays guarded throughout the write.
    pub fn set(&mut self, cidrs: &[Ipv6Cidr]) -> Result<(), DataplaneError> {
        let current = self.raw()?;
        let in_use = (current.count as usize).min(CLUSTER_POD_CIDRS_MAX);
        let wanted: Vec<ClusterPodCidrV6> = cidrs.iter().copied().map(cluster_cidr_raw).collect();
        let slots = keep_slots(
            &current.cidrs[..in_use],
            &wanted,
            names::CLUSTER_POD_CIDRS_V6,
        )?;
        let mut value = ClusterPodSpaceV6 {
            count: slots.len() as u32,
            ..Default::default()
        };
        value.cidrs[..slots.len()].copy_from_slice(&slots);
        self.map
            .set(0, value, 0)
            .map_err(map_err(names::CLUSTER_POD_CIDRS_V6))
    }

    /// The CIDRs of the IPv6 pod space, in slot order; empty when it is not filled.
    pub fn get(&self) -> Result<Vec<Ipv6Cidr>, DataplaneError> {
        let space = self.raw()?;
        let bad = |entry: String, problem| DataplaneError::BadEntry {
            name: names::CLUSTER_POD_CIDRS_V6,
            entry,
            problem,
        };
        let count = space.count as usize;
        if count > CLUSTER_POD_CIDRS_MAX {
            return Err(bad(
                format!("count {count}"),
                "more CIDRs than the map has slots",
            ));
        }
        let mut out = Vec::new();
        for raw in &space.cidrs[..count] {
            let (addr, mask) = (Ipv6Addr::from(raw.addr), u128::from_be_bytes(raw.mask));
            let entry = || format!("{addr} mask {}", Ipv6Addr::from(mask));
            let prefix_len = mask.leading_ones() as u8;
            if Ipv6Cidr::mask(prefix_len) != mask {
                return Err(bad(entry(), "its netmask is not contiguous"));
            }
            let cidr = Ipv6Cidr::new(addr, prefix_len)
                .map_err(|_| bad(entry(), "bits are set past its netmask"))?;
            if !out.contains(&cidr) {
                out.push(cidr);
            }
        }
        Ok(out)
    }
}

/// The IPv6 cluster prefix cut into /64 slots (the grid in front of `remote6_cidrs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GridV6 {
    cidr: Ipv6Cidr,
}

/// Why an IPv6 grid cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("IPv6 grid {0} in /64 slots: the cluster prefix must be 48..=64 (at most 65,536 slots)")]
pub struct GridV6Error(pub Ipv6Cidr);

impl GridV6 {
    /// `cidr` cut into /64 slots.
    pub fn new(cidr: Ipv6Cidr) -> Result<GridV6, GridV6Error> {
        if (48..=NODE_POD_PREFIX_LEN_V6).contains(&cidr.prefix_len()) {
            Ok(GridV6 { cidr })
        } else {
            Err(GridV6Error(cidr))
        }
    }

    /// The cluster prefix.
    pub fn cidr(&self) -> Ipv6Cidr {
        self.cidr
    }
}

impl SlotGrid for GridV6 {
    type Cidr = Ipv6Cidr;
    type Raw = PodCidrGridV6;

    /// The number of slots.
    fn slots(&self) -> u32 {
        1 << (NODE_POD_PREFIX_LEN_V6 - self.cidr.prefix_len())
    }

    /// The /64 slot `index` covers.
    fn slot(&self, index: u32) -> Ipv6Cidr {
        let addr = u128::from(self.cidr.addr()) + (u128::from(index) << 64);
        Ipv6Cidr::new(Ipv6Addr::from(addr), NODE_POD_PREFIX_LEN_V6)
            .expect("aligned by construction")
    }

    /// The slots that `cidr` overlaps.
    fn slots_of(&self, cidr: Ipv6Cidr) -> Range<u32> {
        if !cidr.overlaps(&self.cidr) {
            return 0..0;
        }
        // In units of /64: the grid's first, and the CIDR's first and last.
        let base = u128::from(self.cidr.addr()) >> 64;
        let first = (u128::from(cidr.addr()) >> 64).max(base);
        let last = ((u128::from(cidr.addr()) | !Ipv6Cidr::mask(cidr.prefix_len())) >> 64)
            .min(base + u128::from(self.slots()) - 1);
        (first - base) as u32..(last - base) as u32 + 1
    }

    /// The map value of this grid.
    fn raw(&self, enabled: bool) -> PodCidrGridV6 {
        let mut base = [0u8; 8];
        base.copy_from_slice(&self.cidr.addr().octets()[..8]);
        PodCidrGridV6 {
            base,
            prefix_len: self.cidr.prefix_len(),
            enabled: u8::from(enabled),
            reserved: [0; 6],
        }
    }

    /// The grid a map value describes, if it is enabled and well formed.
    fn from_raw(raw: &PodCidrGridV6) -> Option<GridV6> {
        if raw.enabled == 0 {
            return None;
        }
        let mut addr = [0u8; 16];
        addr[..8].copy_from_slice(&raw.base);
        let cidr = Ipv6Cidr::new(Ipv6Addr::from(addr), raw.prefix_len).ok()?;
        GridV6::new(cidr).ok()
    }

    /// An entry finer than a slot is a /80, say.
    fn slot_value(entries: &BTreeMap<Ipv6Cidr, RemotePodCidr>, slot: Ipv6Cidr) -> RemotePodCidr {
        let start = u128::from(slot.addr());
        let end = start | !Ipv6Cidr::mask(slot.prefix_len());
        let lo = slot;
        let hi = Ipv6Cidr::new(Ipv6Addr::from(end), 128).expect("a /128 is aligned");
        if entries
            .range(lo..=hi)
            .any(|(c, _)| c.prefix_len() > slot.prefix_len())
        {
            return RemotePodCidr {
                flags: SLOT_CONSULT_TRIE,
                ..RemotePodCidr::default()
            };
        }
        (0..=slot.prefix_len())
            .rev()
            .find_map(|len| {
                let addr = Ipv6Addr::from(start & Ipv6Cidr::mask(len));
                entries.get(&Ipv6Cidr::new(addr, len).ok()?).copied()
            })
            .unwrap_or_default()
    }
}

/// Peer node IPv6 address → peer node: the hash the ingress guard asks "is this a peer", and
/// the array by node ID it checks valid ESP's sender against, written together.
pub struct PeerNodesV6<'a> {
    map: HashMap<&'a mut MapData, Ipv6, PeerNode>,
    addrs: Array<&'a mut MapData, Ipv6>,
}

impl<'a> PeerNodesV6<'a> {
    pub(super) fn new(map: &'a mut Map, addrs: &'a mut Map) -> Result<Self, DataplaneError> {
        Ok(PeerNodesV6 {
            map: HashMap::try_from(map).map_err(map_err(names::PEER_NODES_V6))?,
            addrs: Array::try_from(addrs).map_err(map_err(names::PEER_ADDRS_V6))?,
        })
    }

    /// Adds or replaces the peer at `node_addr`; its node ID's ESP over IPv6 is then accepted
    /// from this address (the last one inserted for the ID, when there are several). An
    /// address that moves to another node ID stops being accepted for the one it had.
    pub fn insert(&mut self, node_addr: Ipv6Addr, node: PeerNode) -> Result<(), DataplaneError> {
        let old = match self.map.get(&node_addr.octets(), 0) {
            Ok(old) => Some(old),
            Err(MapError::KeyNotFound) => None,
            Err(error) => return Err(map_err(names::PEER_NODES_V6)(error)),
        };
        if let Some(old) = old
            && old.node_id != node.node_id
        {
            self.clear_addr(old.node_id, node_addr)?;
        }
        self.map
            .insert(node_addr.octets(), node, 0)
            .map_err(map_err(names::PEER_NODES_V6))?;
        self.addrs
            .set(u32::from(node.node_id), node_addr.octets(), 0)
            .map_err(map_err(names::PEER_ADDRS_V6))
    }

    /// Removes the peer at `node_addr`, and its node ID's address if it is this one.
    pub fn remove(&mut self, node_addr: Ipv6Addr) -> Result<(), DataplaneError> {
        let node = self
            .map
            .get(&node_addr.octets(), 0)
            .map_err(map_err(names::PEER_NODES_V6))?;
        // The array first: ESP from the address stops being accepted before the address stops
        // being a peer, so it is refused, never passed unchecked, in between.
        self.clear_addr(node.node_id, node_addr)?;
        self.map
            .remove(&node_addr.octets())
            .map_err(map_err(names::PEER_NODES_V6))
    }

    /// Zeroes `node_id`'s address in the array if it is `node_addr`.
    fn clear_addr(&mut self, node_id: u16, node_addr: Ipv6Addr) -> Result<(), DataplaneError> {
        let index = u32::from(node_id);
        let have = self
            .addrs
            .get(&index, 0)
            .map_err(map_err(names::PEER_ADDRS_V6))?;
        if have == node_addr.octets() {
            self.addrs
                .set(index, [0; 16], 0)
                .map_err(map_err(names::PEER_ADDRS_V6))?;
        }
        Ok(())
    }

    /// Every peer.
    pub fn entries(&self) -> Result<Vec<(Ipv6Addr, PeerNode)>, DataplaneError> {
        self.map
            .iter()
            .map(|entry| {
                let (addr, node) = entry.map_err(map_err(names::PEER_NODES_V6))?;
                Ok((Ipv6Addr::from(addr), node))
            })
            .collect()
    }

    /// The IPv6 address ESP of node `node_id` is accepted from, if any.
    pub fn addr_of(&self, node_id: u16) -> Result<Option<Ipv6Addr>, DataplaneError> {
        let addr = self
            .addrs
            .get(&u32::from(node_id), 0)
            .map_err(map_err(names::PEER_ADDRS_V6))?;
        Ok((addr != [0; 16]).then(|| Ipv6Addr::from(addr)))
    }
}

impl MapCidr for Ipv6Cidr {
    type Addr = Ipv6;
    type Grid = GridV6;
    const REMOTE_MAPS: RemoteMapNames = RemoteMapNames {
        trie: names::REMOTE_POD_CIDRS_V6,
        grid: names::POD_CIDR_GRID_V6,
        slots: names::REMOTE_POD_SLOTS_V6,
    };

    fn lpm_key(self) -> Key<Ipv6> {
        Key::new(u32::from(self.prefix_len()), self.addr().octets())
    }

    fn from_lpm_key(key: &Key<Ipv6>) -> Option<Self> {
        let len = u8::try_from(key.prefix_len()).ok()?;
        Ipv6Cidr::new(key.data().into(), len).ok()
    }

    fn show_lpm_key(key: &Key<Ipv6>) -> String {
        format!("{}/{}", Ipv6Addr::from(key.data()), key.prefix_len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv6Cidr {
        s.parse().unwrap()
    }

    fn value(node_id: u16) -> RemotePodCidr {
        RemotePodCidr {
            node_id,
            generation: 3,
            flags: 0,
        }
    }

    #[test]
    fn slots_answer_as_the_trie_would() {
        let grid = GridV6::new(cidr("fd00:10:244::/56")).unwrap();
        assert_eq!(grid.slots(), 256);
        assert_eq!(grid.slot(1), cidr("fd00:10:244:1::/64"));
        let mut entries = BTreeMap::new();
        entries.insert(cidr("fd00:10:244:1::/64"), value(1));
        entries.insert(cidr("fd00:10:244:2::/63"), value(2));
        entries.insert(cidr("fd00:10:244:5::/80"), value(5));
        entries.insert(cidr("fd00:10:244:40::/58"), value(64));
        entries.insert(cidr("fd00:10:244:46::/64"), value(70));
        let at = |i: u32| GridV6::slot_value(&entries, grid.slot(i));
        assert_eq!(at(1), value(1), "an exact /64");
        assert_eq!((at(2), at(3)), (value(2), value(2)), "a /63 spans two");
        assert_eq!(
            at(5).flags,
            SLOT_CONSULT_TRIE,
            "a /80 inside: the trie decides"
        );
        assert_eq!(at(0x41), value(64), "a /58 covers many slots");
        assert_eq!(at(0x46), value(70), "a /64 inside the /58 wins in its slot");
        assert_eq!(at(4), RemotePodCidr::default());
    }

    #[test]
    fn slots_of_a_cidr_are_clipped_to_the_grid_and_odd_shapes_refused() {
        let grid = GridV6::new(cidr("fd00:10:244::/48")).unwrap();
        assert_eq!(grid.slots(), 65_536);
        assert_eq!(grid.slots_of(cidr("fd00:10:244:3::/64")), 3..4);
        assert_eq!(grid.slots_of(cidr("fd00:10:244:5:1::/80")), 5..6);
        assert_eq!(grid.slots_of(cidr("fd00:10:244:100::/56")), 256..512);
        assert_eq!(grid.slots_of(cidr("fd00::/16")), 0..65_536);
        assert_eq!(grid.slots_of(cidr("fd00:10:245::/64")), 0..0);
        assert_eq!(grid.slot(65_535), cidr("fd00:10:244:ffff::/64"));
        for bad in ["fd00::/47", "fd00::/65", "::/0"] {
            assert!(GridV6::new(cidr(bad)).is_err(), "{bad}");
        }
        assert_eq!(GridV6::from_raw(&grid.raw(true)), Some(grid));
        assert_eq!(GridV6::from_raw(&grid.raw(false)), None);
        let single = GridV6::new(cidr("fd00:1:2:3::/64")).unwrap();
        assert_eq!(single.slots(), 1);
        assert_eq!(single.slots_of(cidr("fd00:1:2:3:4::/80")), 0..1);
    }
}
