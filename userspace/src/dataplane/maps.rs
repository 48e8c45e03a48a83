//! Typed views of the maps: CIDRs and addresses in, kernel layouts out.
//!
//! Each view borrows its map from the [`super::Dataplane`] and converts between the agent's
//! types (`Ipv4Cidr`, `Ipv4Addr`) and the `#[repr(C)]` layouts of `xsteer_common::maps`.

use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::{
    Pod,
    maps::{
        Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues,
        lpm_trie::Key,
    },
    util::nr_cpus,
};
use xsteer_common::{
    counters::Counter,
    maps::{
        self as names, EspStats, Ipv4, LocalPodCidr, PeerNode, PeerSpi, PodCidrGrid, RemotePodCidr,
    },
};

use super::{
    DataplaneError,
    grid::{Grid, slot_value},
};
use crate::cidr::Ipv4Cidr;

fn map_err(name: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |error| DataplaneError::Map { name, error }
}

/// An LPM trie keyed by IPv4 CIDR.
pub struct CidrMap<'a, V: Pod> {
    name: &'static str,
    trie: LpmTrie<&'a mut MapData, Ipv4, V>,
}

/// This node's pod CIDRs.
pub type LocalPodCidrs<'a> = CidrMap<'a, LocalPodCidr>;

impl<'a, V: Pod> CidrMap<'a, V> {
    pub(super) fn new(map: &'a mut Map, name: &'static str) -> Result<Self, DataplaneError> {
        let trie = LpmTrie::try_from(map).map_err(map_err(name))?;
        Ok(CidrMap { name, trie })
    }

    fn key(cidr: Ipv4Cidr) -> Key<Ipv4> {
        Key::new(u32::from(cidr.prefix_len()), cidr.addr().octets())
    }

    /// Adds or replaces the entry for `cidr`: one atomic update as the programs see it.
    pub fn insert(&mut self, cidr: Ipv4Cidr, value: V) -> Result<(), DataplaneError> {
        self.trie
            .insert(&Self::key(cidr), value, 0)
            .map_err(map_err(self.name))
    }

    /// Removes the entry for `cidr`.
    pub fn remove(&mut self, cidr: Ipv4Cidr) -> Result<(), DataplaneError> {
        self.trie
            .remove(&Self::key(cidr))
            .map_err(map_err(self.name))
    }

    /// Every entry.
    pub fn entries(&self) -> Result<Vec<(Ipv4Cidr, V)>, DataplaneError> {
        self.trie
            .iter()
            .map(|entry| {
                let (key, value) = entry.map_err(map_err(self.name))?;
                let cidr = Ipv4Cidr::new(Ipv4Addr::from(key.data()), key.prefix_len() as u8)
                    .expect("the kernel stores LPM keys masked to their prefix");
                Ok((cidr, value))
            })
            .collect()
    }
}

/// Remote pod CIDR → where and with which key to send: the trie, and the grid of slots in
/// front of it (see [`super::grid`]), kept in step.
pub struct RemotePodCidrs<'a> {
    trie: CidrMap<'a, RemotePodCidr>,
    grid: Array<&'a mut MapData, PodCidrGrid>,
    slots: Array<&'a mut MapData, RemotePodCidr>,
    /// The trie's entries, as this process last wrote or read them.
    mirror: &'a mut BTreeMap<Ipv4Cidr, RemotePodCidr>,
}

impl<'a> RemotePodCidrs<'a> {
    pub(super) fn new(
        trie: &'a mut Map,
        grid: &'a mut Map,
        slots: &'a mut Map,
        mirror: &'a mut Option<BTreeMap<Ipv4Cidr, RemotePodCidr>>,
    ) -> Result<Self, DataplaneError> {
        let trie = CidrMap::new(trie, names::REMOTE_POD_CIDRS)?;
        let mirror = match mirror {
            Some(m) => m,
            None => mirror.insert(trie.entries()?.into_iter().collect()),
        };
        Ok(RemotePodCidrs {
            trie,
            grid: Array::try_from(grid).map_err(map_err(names::POD_CIDR_GRID))?,
            slots: Array::try_from(slots).map_err(map_err(names::REMOTE_POD_SLOTS))?,
            mirror,
        })
    }

    /// The grid in use, if any.
    pub fn grid(&self) -> Result<Option<Grid>, DataplaneError> {
        let raw = self
            .grid
            .get(&0, 0)
            .map_err(map_err(names::POD_CIDR_GRID))?;
        Ok(Grid::from_raw(&raw))
    }

    /// Writes the slots `range` of `grid` where they differ from what the trie's entries say.
    fn write_slots(
        &mut self,
        grid: &Grid,
        range: std::ops::Range<u32>,
    ) -> Result<(), DataplaneError> {
        for index in range {
            let want = slot_value(self.mirror, grid.slot(index));
            let have = self
                .slots
                .get(&index, 0)
                .map_err(map_err(names::REMOTE_POD_SLOTS))?;
            if have != want {
                self.slots
                    .set(index, want, 0)
                    .map_err(map_err(names::REMOTE_POD_SLOTS))?;
            }
        }
        Ok(())
    }

    /// Puts `grid` in front of the trie (filling its slots before enabling it), or takes the
    /// grid away (`None`: every lookup goes to the trie).
    pub fn set_grid(&mut self, grid: Option<Grid>) -> Result<(), DataplaneError> {
        if self.grid()? == grid {
            return Ok(());
        }
        // Off first: the slots are about to change under a different shape.
        self.grid
            .set(0, PodCidrGrid::default(), 0)
            .map_err(map_err(names::POD_CIDR_GRID))?;
        if let Some(grid) = grid {
            self.write_slots(&grid, 0..grid.slots())?;
            self.grid
                .set(0, grid.raw(true), 0)
                .map_err(map_err(names::POD_CIDR_GRID))?;
        }
        Ok(())
    }

    /// Adds or replaces the entry for `cidr`: the trie first, then the slots it covers.
    pub fn insert(&mut self, cidr: Ipv4Cidr, value: RemotePodCidr) -> Result<(), DataplaneError> {
        self.trie.insert(cidr, value)?;
        self.mirror.insert(cidr, value);
        if let Some(grid) = self.grid()? {
            self.write_slots(&grid, grid.slots_of(cidr))?;
        }
        Ok(())
    }

    /// Removes the entry for `cidr`: the slots first (to what the trie will answer without
    /// it), then the trie.
    pub fn remove(&mut self, cidr: Ipv4Cidr) -> Result<(), DataplaneError> {
        self.mirror.remove(&cidr);
        if let Some(grid) = self.grid()? {
            self.write_slots(&grid, grid.slots_of(cidr))?;
        }
        self.trie.remove(cidr)
    }

    /// Every entry of the trie (the authority).
    pub fn entries(&self) -> Result<Vec<(Ipv4Cidr, RemotePodCidr)>, DataplaneError> {
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

/// (peer node IP, wire SPI) → ESP accepted under it; presence means "valid".
pub struct PeerSpis<'a> {
    map: PerCpuHashMap<&'a mut MapData, PeerSpi, EspStats>,
}

impl<'a> PeerSpis<'a> {
    pub(super) fn new(map: &'a mut Map) -> Result<Self, DataplaneError> {
        let map = PerCpuHashMap::try_from(map).map_err(map_err(names::PEER_SPIS))?;
        Ok(PeerSpis { map })
    }

    fn key(node_ip: Ipv4Addr, spi: u32) -> PeerSpi {
        PeerSpi {
            node_ip: node_ip.octets(),
            spi,
        }
    }

    /// Marks `spi` valid for the peer at `node_ip`, with zeroed counts.
    pub fn insert(&mut self, node_ip: Ipv4Addr, spi: u32) -> Result<(), DataplaneError> {
        let cpus = nr_cpus().map_err(|(_, io)| DataplaneError::Cpus(io))?;
        let zeros = PerCpuValues::try_from(vec![EspStats::default(); cpus])
            .map_err(DataplaneError::Cpus)?;
        self.map
            .insert(Self::key(node_ip, spi), zeros, 0)
            .map_err(map_err(names::PEER_SPIS))
    }

    /// Withdraws `spi` from the peer at `node_ip`.
    pub fn remove(&mut self, node_ip: Ipv4Addr, spi: u32) -> Result<(), DataplaneError> {
        self.map
            .remove(&Self::key(node_ip, spi))
            .map_err(map_err(names::PEER_SPIS))
    }

    /// Every valid (peer node IP, wire SPI).
    pub fn keys(&self) -> Result<Vec<(Ipv4Addr, u32)>, DataplaneError> {
        self.map
            .keys()
            .map(|key| {
                let key = key.map_err(map_err(names::PEER_SPIS))?;
                Ok((Ipv4Addr::from(key.node_ip), key.spi))
            })
            .collect()
    }

    /// ESP accepted from `node_ip` under `spi`, summed over CPUs.
    pub fn stats(&self, node_ip: Ipv4Addr, spi: u32) -> Result<EspStats, DataplaneError> {
        let per_cpu = self
            .map
            .get(&Self::key(node_ip, spi), 0)
            .map_err(map_err(names::PEER_SPIS))?;
        Ok(per_cpu
            .iter()
            .fold(EspStats::default(), |sum, cpu| EspStats {
                packets: sum.packets + cpu.packets,
                bytes: sum.bytes + cpu.bytes,
            }))
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
