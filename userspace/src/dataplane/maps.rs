//! Typed views of the maps: CIDRs and addresses in, kernel layouts out.
//!
//! Each view borrows its map from the [`super::Dataplane`] and converts between the agent's
//! types (`Ipv4Cidr`, `Ipv4Addr`) and the `#[repr(C)]` layouts of `xsteer_common::maps`.

use std::{collections::BTreeMap, net::Ipv4Addr, ops::Range};

use aya::{
    Pod,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray},
};
use xsteer_common::{
    counters::Counter,
    maps::{
        self as names, CLUSTER_POD_CIDRS_MAX, ClusterPodCidr, ClusterPodSpace, Ipv4, LocalPodCidr,
        PeerNode, RemotePodCidr, UdpEncap,
    },
};

use super::{
    DataplaneError,
    family::{MapCidr, SlotGrid},
};
use crate::cidr::Ipv4Cidr;

pub(super) fn map_err(name: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |error| DataplaneError::Map { name, error }
}

/// An LPM trie keyed by CIDRs of one family.
pub struct CidrMap<'a, C: MapCidr, V: Pod> {
    name: &'static str,
    trie: LpmTrie<&'a mut MapData, C::Addr, V>,
}

/// This node's pod CIDRs.
pub type LocalPodCidrs<'a> = CidrMap<'a, Ipv4Cidr, LocalPodCidr>;

impl<'a, C: MapCidr, V: Pod> CidrMap<'a, C, V> {
    pub(super) fn new(map: &'a mut Map, name: &'static str) -> Result<Self, DataplaneError> {
        let trie = LpmTrie::try_from(map).map_err(map_err(name))?;
        Ok(CidrMap { name, trie })
    }

    /// Adds or replaces the entry for `cidr`: one atomic update as the programs see it.
    pub fn insert(&mut self, cidr: C, value: V) -> Result<(), DataplaneError> {
        self.trie
            .insert(&cidr.lpm_key(), value, 0)
            .map_err(map_err(self.name))
    }

    /// Removes the entry for `cidr`.
    pub fn remove(&mut self, cidr: C) -> Result<(), DataplaneError> {
        self.trie
            .remove(&cidr.lpm_key())
            .map_err(map_err(self.name))
    }

    /// Every entry.
    ///
    /// The kernel stores an LPM key as written, so a key with bits set past its prefix (which
    /// xsteer never writes, but bpftool can) is an error naming the map and the key.
    pub fn entries(&self) -> Result<Vec<(C, V)>, DataplaneError> {
        self.trie
            .iter()
            .map(|entry| {
                let (key, value) = entry.map_err(map_err(self.name))?;
                let cidr = C::from_lpm_key(&key).ok_or_else(|| DataplaneError::BadEntry {
                    name: self.name,
                    entry: C::show_lpm_key(&key),
                    problem: "bits are set past its prefix length",
                })?;
                Ok((cidr, value))
            })
            .collect()
    }
}

/// The cluster's pod space: the CIDRs that hold every pod of the cluster, which the guards
/// decide "pod address" by (one array slot of [`ClusterPodSpace`]).
pub struct ClusterPodCidrs<'a> {
    map: Array<&'a mut MapData, ClusterPodSpace>,
}

impl<'a> ClusterPodCidrs<'a> {
    pub(super) fn new(map: &'a mut Map) -> Result<Self, DataplaneError> {
        let map = Array::try_from(map).map_err(map_err(names::CLUSTER_POD_CIDRS))?;
        Ok(ClusterPodCidrs { map })
    }

    fn raw(&self) -> Result<ClusterPodSpace, DataplaneError> {
        self.map
            .get(&0, 0)
            .map_err(map_err(names::CLUSTER_POD_CIDRS))
    }

    /// Makes the pod space exactly `cidrs` (duplicates count once), in one map write; an empty
    /// list empties it.
    ///
    /// The kernel copies an array value in place, so a program may read it half written. A
    /// CIDR in both the old and the new list keeps its slot, so its bytes do not change and it
    /// stays guarded throughout the write; one being added is guarded once this returns.
    pub fn set(&mut self, cidrs: &[Ipv4Cidr]) -> Result<(), DataplaneError> {
        let value = space_layout(&self.raw()?, cidrs)?;
        self.map
            .set(0, value, 0)
            .map_err(map_err(names::CLUSTER_POD_CIDRS))
    }

    /// The CIDRs of the pod space, in slot order; empty when it is not filled.
    pub fn get(&self) -> Result<Vec<Ipv4Cidr>, DataplaneError> {
        space_cidrs(&self.raw()?)
    }
}

/// The UDP port this node receives ESP in UDP on (one array slot of [`UdpEncap`]).
pub struct UdpEncapPort<'a> {
    map: Array<&'a mut MapData, UdpEncap>,
}

impl<'a> UdpEncapPort<'a> {
    pub(super) fn new(map: &'a mut Map) -> Result<Self, DataplaneError> {
        let map = Array::try_from(map).map_err(map_err(names::UDP_ENCAP))?;
        Ok(UdpEncapPort { map })
    }

    /// Makes the ingress guard decapsulate ESP in UDP to `port`; `None` stops it. One
    /// atomic write of four bytes.
    pub fn set(&mut self, port: Option<u16>) -> Result<(), DataplaneError> {
        let value = UdpEncap {
            port: port.unwrap_or(0),
            reserved: 0,
        };
        self.map.set(0, value, 0).map_err(map_err(names::UDP_ENCAP))
    }

    /// The port, or `None` when decapsulation is off.
    pub fn get(&self) -> Result<Option<u16>, DataplaneError> {
        let value = self.map.get(&0, 0).map_err(map_err(names::UDP_ENCAP))?;
        Ok(Some(value.port).filter(|&port| port != 0))
    }
}

fn cluster_cidr_raw(cidr: Ipv4Cidr) -> ClusterPodCidr {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(cidr.prefix_len()))
        .unwrap_or(0);
    ClusterPodCidr {
        addr: cidr.addr().octets(),
        mask: mask.to_be_bytes(),
    }
}

/// The value that makes the pod space `cidrs`, written over `current` (see [`keep_slots`]).
fn space_layout(
    current: &ClusterPodSpace,
    cidrs: &[Ipv4Cidr],
) -> Result<ClusterPodSpace, DataplaneError> {
    let in_use = (current.count as usize).min(CLUSTER_POD_CIDRS_MAX);
    let wanted: Vec<ClusterPodCidr> = cidrs.iter().copied().map(cluster_cidr_raw).collect();
    let slots = keep_slots(&current.cidrs[..in_use], &wanted, names::CLUSTER_POD_CIDRS)?;
    let mut value = ClusterPodSpace {
        count: slots.len() as u32,
        ..Default::default()
    };
    value.cidrs[..slots.len()].copy_from_slice(&slots);
    Ok(value)
}

/// The slots in use of a pod space (IPv4 or IPv6) that holds `wanted`, written over the slots
/// `current` uses: CIDRs already there keep their slots, new ones take the lowest free slots,
/// and a free slot below the last one used repeats the first CIDR (a duplicate changes nothing
/// and needs no "unused" marker the programs would have to test).
pub(super) fn keep_slots<T: Copy + PartialEq>(
    current: &[T],
    wanted: &[T],
    name: &'static str,
) -> Result<Vec<T>, DataplaneError> {
    let mut distinct: Vec<T> = Vec::new();
    for raw in wanted {
        if !distinct.contains(raw) {
            distinct.push(*raw);
        }
    }
    if distinct.len() > CLUSTER_POD_CIDRS_MAX {
        return Err(DataplaneError::TooMany {
            name,
            given: distinct.len(),
            max: CLUSTER_POD_CIDRS_MAX,
        });
    }
    let Some(&first) = distinct.first() else {
        return Ok(Vec::new());
    };
    let mut slots: [Option<T>; CLUSTER_POD_CIDRS_MAX] = [None; CLUSTER_POD_CIDRS_MAX];
    for (i, have) in current.iter().take(CLUSTER_POD_CIDRS_MAX).enumerate() {
        if distinct.contains(have) && !slots.contains(&Some(*have)) {
            slots[i] = Some(*have);
        }
    }
    for cidr in &distinct {
        if !slots.contains(&Some(*cidr)) {
            let free = slots
                .iter()
                .position(Option::is_none)
                .expect("room checked above");
            slots[free] = Some(*cidr);
        }
    }
    let count = slots
        .iter()
        .rposition(Option::is_some)
        .map_or(0, |last| last + 1);
    Ok(slots[..count].iter().map(|s| s.unwrap_or(first)).collect())
}

/// The distinct CIDRs a pod space value holds, in slot order.
fn space_cidrs(space: &ClusterPodSpace) -> Result<Vec<Ipv4Cidr>, DataplaneError> {
    let bad = |entry: String, problem| DataplaneError::BadEntry {
        name: names::CLUSTER_POD_CIDRS,
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
    let mut cidrs = Vec::new();
    for raw in &space.cidrs[..count] {
        let (addr, mask) = (Ipv4Addr::from(raw.addr), u32::from_be_bytes(raw.mask));
        let entry = || format!("{addr} mask {}", Ipv4Addr::from(mask));
        let prefix_len = mask.leading_ones() as u8;
        if mask.checked_shl(u32::from(prefix_len)).unwrap_or(0) != 0 {
            return Err(bad(entry(), "its netmask is not contiguous"));
        }
        let cidr = Ipv4Cidr::new(addr, prefix_len)
            .map_err(|_| bad(entry(), "bits are set past its netmask"))?;
        if !cidrs.contains(&cidr) {
            cidrs.push(cidr);
        }
    }
    Ok(cidrs)
}

/// Remote pod CIDR → where and with which key to send: the trie, and the grid of slots in
/// front of it (see [`super::grid`]), kept in step. One family's: `remote_pod_cidrs` with a
/// grid of /24s, or `remote6_cidrs` with a grid of /64s.
pub struct RemoteCidrs<'a, C: MapCidr> {
    trie: CidrMap<'a, C, RemotePodCidr>,
    grid: Array<&'a mut MapData, <C::Grid as SlotGrid>::Raw>,
    slots: Array<&'a mut MapData, RemotePodCidr>,
    /// The trie's entries, as this process last wrote or read them.
    mirror: &'a mut BTreeMap<C, RemotePodCidr>,
}

/// Remote IPv4 pod CIDRs.
pub type RemotePodCidrs<'a> = RemoteCidrs<'a, Ipv4Cidr>;

impl<'a, C: MapCidr> RemoteCidrs<'a, C> {
    pub(super) fn new(
        trie: &'a mut Map,
        grid: &'a mut Map,
        slots: &'a mut Map,
        mirror: &'a mut Option<BTreeMap<C, RemotePodCidr>>,
    ) -> Result<Self, DataplaneError> {
        let names = C::REMOTE_MAPS;
        let trie = CidrMap::new(trie, names.trie)?;
        let mirror = match mirror {
            Some(m) => m,
            None => mirror.insert(trie.entries()?.into_iter().collect()),
        };
        Ok(RemoteCidrs {
            trie,
            grid: Array::try_from(grid).map_err(map_err(names.grid))?,
            slots: Array::try_from(slots).map_err(map_err(names.slots))?,
            mirror,
        })
    }

    /// The grid in use, if any.
    pub fn grid(&self) -> Result<Option<C::Grid>, DataplaneError> {
        let raw = self.grid.get(&0, 0).map_err(map_err(C::REMOTE_MAPS.grid))?;
        Ok(C::Grid::from_raw(&raw))
    }

    /// Writes the slots `range` of `grid` where they differ from what the trie's entries say.
    fn write_slots(&mut self, grid: &C::Grid, range: Range<u32>) -> Result<(), DataplaneError> {
        let name = C::REMOTE_MAPS.slots;
        for index in range {
            let want = C::Grid::slot_value(self.mirror, grid.slot(index));
            let have = self.slots.get(&index, 0).map_err(map_err(name))?;
            if have != want {
                self.slots.set(index, want, 0).map_err(map_err(name))?;
            }
        }
        Ok(())
    }

    /// Puts `grid` in front of the trie (filling its slots before enabling it), or takes the
    /// grid away (`None`: every lookup goes to the trie).
    pub fn set_grid(&mut self, grid: Option<C::Grid>) -> Result<(), DataplaneError> {
        if self.grid()? == grid {
            return Ok(());
        }
        let name = C::REMOTE_MAPS.grid;
        // Off first: the slots are about to change under a different shape.
        self.grid
            .set(0, <C::Grid as SlotGrid>::Raw::default(), 0)
            .map_err(map_err(name))?;
        if let Some(grid) = grid {
            self.write_slots(&grid, 0..grid.slots())?;
            self.grid.set(0, grid.raw(true), 0).map_err(map_err(name))?;
        }
        Ok(())
    }

    /// Adds or replaces the entry for `cidr`: the trie first, then the slots it covers.
    pub fn insert(&mut self, cidr: C, value: RemotePodCidr) -> Result<(), DataplaneError> {
        self.trie.insert(cidr, value)?;
        self.mirror.insert(cidr, value);
        if let Some(grid) = self.grid()? {
            self.write_slots(&grid, grid.slots_of(cidr))?;
        }
        Ok(())
    }

    /// Removes the entry for `cidr`: the slots first (to what the trie will answer without
    /// it), then the trie.
    pub fn remove(&mut self, cidr: C) -> Result<(), DataplaneError> {
        self.mirror.remove(&cidr);
        if let Some(grid) = self.grid()? {
            self.write_slots(&grid, grid.slots_of(cidr))?;
        }
        self.trie.remove(cidr)
    }

    /// Every entry of the trie (the authority).
    pub fn entries(&self) -> Result<Vec<(C, RemotePodCidr)>, DataplaneError> {
        self.trie.entries()
    }
}

/// Peer node IP → peer node.
pub struct PeerNodes<'a> {
    map: HashMap<&'a mut MapData, Ipv4, PeerNode>,
}

impl<'a> PeerNodes<'a> {
    pub(super) fn new(map: &'a mut Map) -> Result<Self, DataplaneError> {
        let map = HashMap::try_from(map).map_err(map_err(names::PEER_NODES))?;
        Ok(PeerNodes { map })
    }

    /// Adds or replaces the peer at `node_ip`.
    pub fn insert(&mut self, node_ip: Ipv4Addr, node: PeerNode) -> Result<(), DataplaneError> {
        self.map
            .insert(node_ip.octets(), node, 0)
            .map_err(map_err(names::PEER_NODES))
    }

    /// Removes the peer at `node_ip`.
    pub fn remove(&mut self, node_ip: Ipv4Addr) -> Result<(), DataplaneError> {
        self.map
            .remove(&node_ip.octets())
            .map_err(map_err(names::PEER_NODES))
    }

    /// Every peer.
    pub fn entries(&self) -> Result<Vec<(Ipv4Addr, PeerNode)>, DataplaneError> {
        self.map
            .iter()
            .map(|entry| {
                let (ip, node) = entry.map_err(map_err(names::PEER_NODES))?;
                Ok((Ipv4Addr::from(ip), node))
            })
            .collect()
    }
}

/// The per-verdict counters.
pub struct Counters<'a> {
    map: PerCpuArray<&'a mut MapData, u64>,
}

/// A snapshot of every counter, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterValues([u64; Counter::COUNT as usize]);

impl CounterValues {
    /// The value of one counter.
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }

    /// Every counter with its name, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL.iter().map(|&c| (c, self.get(c)))
    }
}

impl<'a> Counters<'a> {
    pub(super) fn new(map: &'a mut Map) -> Result<Self, DataplaneError> {
        let map = PerCpuArray::try_from(map).map_err(map_err(names::COUNTERS))?;
        Ok(Counters { map })
    }

    /// Reads every counter.
    pub fn read(&self) -> Result<CounterValues, DataplaneError> {
        let mut values = CounterValues::default();
        for counter in Counter::ALL {
            let per_cpu = self
                .map
                .get(&(counter as u32), 0)
                .map_err(map_err(names::COUNTERS))?;
            values.0[counter as usize] = per_cpu.iter().sum();
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Ipv4Cidr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn slots(space: &ClusterPodSpace) -> Vec<Ipv4Cidr> {
        space.cidrs[..space.count as usize]
            .iter()
            .map(|raw| {
                let prefix_len = u32::from_be_bytes(raw.mask).leading_ones() as u8;
                Ipv4Cidr::new(Ipv4Addr::from(raw.addr), prefix_len).unwrap()
            })
            .collect()
    }

    #[test]
    fn a_first_fill_takes_the_slots_in_order_and_reads_back() {
        let value = space_layout(
            &ClusterPodSpace::default(),
            &cidrs(&["10.0.0.0/8", "172.16.0.0/12", "10.0.0.0/8"]),
        )
        .unwrap();
        assert_eq!(value.count, 2);
        assert_eq!(value.cidrs[0].mask, [255, 0, 0, 0]);
        assert_eq!(value.cidrs[1].mask, [255, 240, 0, 0]);
        assert_eq!(value.cidrs[2], ClusterPodCidr::default());
        assert_eq!(
            space_cidrs(&value).unwrap(),
            cidrs(&["10.0.0.0/8", "172.16.0.0/12"])
        );
    }

    /// Goes from `old` to `want` and checks the promise of `set`: every CIDR in both lists has
    /// a slot, in use before and after, whose bytes the write does not change.
    fn step(old: &ClusterPodSpace, want: &[&str]) -> ClusterPodSpace {
        let want = cidrs(want);
        let new = space_layout(old, &want).unwrap();
        let in_use = old.count.min(new.count) as usize;
        for cidr in space_cidrs(old).unwrap() {
            if want.contains(&cidr) {
                let raw = cluster_cidr_raw(cidr);
                assert!(
                    (0..in_use).any(|i| old.cidrs[i] == raw && new.cidrs[i] == raw),
                    "{cidr} moved: {:?} -> {:?}",
                    slots(old),
                    slots(&new)
                );
            }
        }
        let mut read = space_cidrs(&new).unwrap();
        let mut wanted = want.clone();
        read.sort();
        wanted.sort();
        wanted.dedup();
        assert_eq!(read, wanted);
        assert!(
            new.cidrs[new.count as usize..]
                .iter()
                .all(|c| *c == ClusterPodCidr::default())
        );
        new
    }

    #[test]
    fn cidrs_that_stay_keep_their_slots() {
        let s = step(
            &ClusterPodSpace::default(),
            &["10.0.0.0/16", "10.1.0.0/16", "10.2.0.0/16"],
        );
        // Removing the first: its slot repeats a CIDR that stays, nothing moves.
        let s = step(&s, &["10.2.0.0/16", "10.1.0.0/16"]);
        assert_eq!(
            slots(&s),
            cidrs(&["10.2.0.0/16", "10.1.0.0/16", "10.2.0.0/16"])
        );
        let s = step(&s, &["10.1.0.0/16", "10.2.0.0/16", "10.9.0.0/16"]);
        let s = step(&s, &["10.9.0.0/16", "10.1.0.0/16"]);
        let s = step(&s, &["10.1.0.0/16"]);
        let s = step(
            &s,
            &[
                "10.3.0.0/16",
                "10.4.0.0/16",
                "10.5.0.0/16",
                "10.6.0.0/16",
                "10.7.0.0/16",
                "10.8.0.0/16",
                "10.9.0.0/16",
                "10.1.0.0/16",
            ],
        );
        assert_eq!(s.count, 8);
        let s = step(&s, &["10.8.0.0/16"]);
        assert_eq!(step(&s, &[]), ClusterPodSpace::default());
    }

    #[test]
    fn more_cidrs_than_slots_are_refused() {
        let many: Vec<Ipv4Cidr> = (0..=CLUSTER_POD_CIDRS_MAX as u8)
            .map(|i| Ipv4Cidr::new(Ipv4Addr::new(10, i, 0, 0), 16).unwrap())
            .collect();
        assert!(matches!(
            space_layout(&ClusterPodSpace::default(), &many),
            Err(DataplaneError::TooMany {
                given: 9,
                max: 8,
                ..
            })
        ));
        assert!(space_layout(&ClusterPodSpace::default(), &many[..8]).is_ok());
    }

    #[test]
    fn values_written_by_hand_are_errors_naming_the_entry() {
        let mut value = ClusterPodSpace {
            count: 1,
            ..Default::default()
        };
        value.cidrs[0] = ClusterPodCidr {
            addr: [10, 0, 0, 1],
            mask: [255, 0, 0, 0],
        };
        let err = space_cidrs(&value).unwrap_err().to_string();
        assert!(
            err.contains("cluster_pod_cidrs") && err.contains("10.0.0.1 mask 255.0.0.0"),
            "{err}"
        );
        value.cidrs[0] = ClusterPodCidr {
            addr: [10, 0, 0, 0],
            mask: [255, 0, 255, 0],
        };
        assert!(
            space_cidrs(&value)
                .unwrap_err()
                .to_string()
                .contains("not contiguous")
        );
        value.count = 9;
        assert!(
            space_cidrs(&value)
                .unwrap_err()
                .to_string()
                .contains("count 9")
        );
    }

    #[test]
    fn a_slash_zero_and_a_slash_32_round_trip() {
        let both = cidrs(&["0.0.0.0/0", "10.1.2.3/32"]);
        let value = space_layout(&ClusterPodSpace::default(), &both).unwrap();
        assert_eq!(space_cidrs(&value).unwrap(), both);
    }
}
