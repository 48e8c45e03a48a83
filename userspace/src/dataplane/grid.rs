//! The grid of remote pod slots: a constant-time front for the `remote_pod_cidrs` trie.
//!
//! An LPM trie lookup walks one node per prefix bit it shares with its neighbours, which at
//! 65,536 pod CIDRs costs the classifier ~110 ns a packet. Pod CIDRs are carved from one cluster
//! CIDR in equal blocks, so the cluster CIDR cut into /24 slots can be an array: slot `i` holds
//! what the trie answers for the whole of its /24, and a lookup inside the grid is one array read.
//!
//! The trie stays the authority; the slots are derived from it (through an in-memory mirror of
//! its entries) and written so that no lookup ever sees an answer the trie would not give: on an
//! insert the trie first, then the slots; on a removal the slots first, then the trie. A slot
//! that a CIDR finer than the slot lies in cannot answer alone: it says "ask the trie"
//! ([`SLOT_CONSULT_TRIE`]). Addresses outside the grid always go to the trie.
//!
//! Here too is how an IPv4 CIDR keys the maps ([`MapCidr`]).

use std::{collections::BTreeMap, net::Ipv4Addr, ops::Range};

use aya::maps::lpm_trie::Key;
use xsteer_common::maps::{self as names, Ipv4, PodCidrGrid, RemotePodCidr, SLOT_CONSULT_TRIE};

use super::family::{MapCidr, RemoteMapNames, SlotGrid};
use crate::cidr::Ipv4Cidr;

/// The cluster CIDR cut into slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    cidr: Ipv4Cidr,
    slot_prefix_len: u8,
}

/// Why a grid cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GridError {
    /// The shape is outside what the programs and the slot map support.
    #[error(
        "grid {cidr} in /{slot_prefix_len} slots: the cluster prefix must be 8..=24, the slot \
         prefix at least as long and at most 16 bits longer (65,536 slots)"
    )]
    Shape {
        /// The cluster CIDR.
        cidr: Ipv4Cidr,
        /// The slots' prefix length.
        slot_prefix_len: u8,
    },
}

fn mask(addr: u32, prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else {
        addr & (u32::MAX << (32 - u32::from(prefix_len)))
    }
}

impl Grid {
    /// `cidr` cut into `/slot_prefix_len` slots.
    pub fn new(cidr: Ipv4Cidr, slot_prefix_len: u8) -> Result<Grid, GridError> {
        let ok = (8..=24).contains(&cidr.prefix_len())
            && slot_prefix_len >= cidr.prefix_len()
            && slot_prefix_len <= 32
            && slot_prefix_len - cidr.prefix_len() <= 16;
        if ok {
            Ok(Grid {
                cidr,
                slot_prefix_len,
            })
        } else {
            Err(GridError::Shape {
                cidr,
                slot_prefix_len,
            })
        }
    }

    /// The cluster CIDR.
    pub fn cidr(&self) -> Ipv4Cidr {
        self.cidr
    }
}

impl SlotGrid for Grid {
    type Cidr = Ipv4Cidr;
    type Raw = PodCidrGrid;

    /// The number of slots.
    fn slots(&self) -> u32 {
        1 << (self.slot_prefix_len - self.cidr.prefix_len())
    }

    /// The CIDR slot `index` covers.
    fn slot(&self, index: u32) -> Ipv4Cidr {
        let addr = u32::from(self.cidr.addr()) + (index << (32 - u32::from(self.slot_prefix_len)));
        Ipv4Cidr::new(Ipv4Addr::from(addr), self.slot_prefix_len).expect("aligned by construction")
    }

    /// The slots that `cidr` overlaps.
    fn slots_of(&self, cidr: Ipv4Cidr) -> Range<u32> {
        if !cidr.overlaps(&self.cidr) {
            return 0..0;
        }
        let base = u32::from(self.cidr.addr());
        let shift = 32 - u32::from(self.slot_prefix_len);
        let first = u32::from(cidr.addr()).max(base);
        let size = if cidr.prefix_len() == 0 {
            u64::from(u32::MAX) + 1
        } else {
            1u64 << (32 - u32::from(cidr.prefix_len()))
        };
        let last = (u64::from(u32::from(cidr.addr())) + size - 1)
            .min(u64::from(base) + (u64::from(self.slots()) << shift) - 1)
            as u32;
        ((first - base) >> shift)..((last - base) >> shift) + 1
    }

    /// The map value of this grid.
    fn raw(&self, enabled: bool) -> PodCidrGrid {
        PodCidrGrid {
            base: self.cidr.addr().octets(),
            prefix_len: self.cidr.prefix_len(),
            slot_prefix_len: self.slot_prefix_len,
            enabled: u8::from(enabled),
            reserved: 0,
        }
    }

    /// The grid a map value describes, if it is enabled and well formed.
    fn from_raw(raw: &PodCidrGrid) -> Option<Grid> {
        if raw.enabled == 0 {
            return None;
        }
        let cidr = Ipv4Cidr::new(Ipv4Addr::from(raw.base), raw.prefix_len).ok()?;
        Grid::new(cidr, raw.slot_prefix_len).ok()
    }

    fn slot_value(entries: &BTreeMap<Ipv4Cidr, RemotePodCidr>, slot: Ipv4Cidr) -> RemotePodCidr {
        let start = u32::from(slot.addr());
        let end = start | !mask(u32::MAX, slot.prefix_len());
        let lo =
            Ipv4Cidr::new(Ipv4Addr::from(start), slot.prefix_len()).expect("a slot is aligned");
        let hi = Ipv4Cidr::new(Ipv4Addr::from(end), 32).expect("a /32 is aligned");
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
                let cover = Ipv4Cidr::new(Ipv4Addr::from(mask(start, len)), len).ok()?;
                entries.get(&cover).copied()
            })
            .unwrap_or_default()
    }
}

impl MapCidr for Ipv4Cidr {
    type Addr = Ipv4;
    type Grid = Grid;
    const REMOTE_MAPS: RemoteMapNames = RemoteMapNames {
        trie: names::REMOTE_POD_CIDRS,
        grid: names::POD_CIDR_GRID,
        slots: names::REMOTE_POD_SLOTS,
    };

    fn lpm_key(self) -> Key<Ipv4> {
        Key::new(u32::from(self.prefix_len()), self.addr().octets())
    }

    fn from_lpm_key(key: &Key<Ipv4>) -> Option<Self> {
        let len = u8::try_from(key.prefix_len()).ok()?;
        Ipv4Cidr::new(key.data().into(), len).ok()
    }

    fn show_lpm_key(key: &Key<Ipv4>) -> String {
        format!("{}/{}", Ipv4Addr::from(key.data()), key.prefix_len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    fn value(node_id: u16) -> RemotePodCidr {
        RemotePodCidr {
            node_id,
            generation: 3,
            flags: 0,
        }
    }

    const ASK: RemotePodCidr = RemotePodCidr {
        node_id: 0,
        generation: 0,
        flags: SLOT_CONSULT_TRIE,
    };

    #[test]
    fn slots_answer_as_the_trie_would() {
        let grid = Grid::new(cidr("10.244.0.0/16"), 24).unwrap();
        assert_eq!(grid.slots(), 256);
        let mut entries = BTreeMap::new();
        entries.insert(cidr("10.244.1.0/24"), value(1));
        entries.insert(cidr("10.244.2.0/23"), value(2));
        entries.insert(cidr("10.244.5.0/25"), value(5));
        entries.insert(cidr("10.244.64.0/18"), value(64));
        entries.insert(cidr("10.244.70.0/24"), value(70));
        let at = |i: u32| Grid::slot_value(&entries, grid.slot(i));
        assert_eq!(at(1), value(1), "an exact /24");
        assert_eq!(
            (at(2), at(3)),
            (value(2), value(2)),
            "a /23 spans two slots"
        );
        assert_eq!(at(5), ASK, "a /25 inside a slot: the trie decides");
        assert_eq!(at(65), value(64), "a /18 covers many slots");
        assert_eq!(at(70), value(70), "a /24 inside the /18 wins in its slot");
        assert_eq!(at(4), RemotePodCidr::default(), "nothing there");
        // Removing the /24 inside the /18 brings the /18 back in that slot.
        entries.remove(&cidr("10.244.70.0/24"));
        assert_eq!(Grid::slot_value(&entries, grid.slot(70)), value(64));
    }

    #[test]
    fn slots_of_a_cidr_are_clipped_to_the_grid() {
        let grid = Grid::new(cidr("10.244.0.0/16"), 24).unwrap();
        assert_eq!(grid.slots_of(cidr("10.244.3.0/24")), 3..4);
        assert_eq!(grid.slots_of(cidr("10.244.5.128/25")), 5..6);
        assert_eq!(grid.slots_of(cidr("10.244.64.0/18")), 64..128);
        assert_eq!(
            grid.slots_of(cidr("10.0.0.0/8")),
            0..256,
            "wider than the grid"
        );
        assert_eq!(grid.slots_of(cidr("10.245.0.0/24")), 0..0, "outside it");
        let big = Grid::new(cidr("10.0.0.0/8"), 24).unwrap();
        assert_eq!(big.slots(), 65_536);
        assert_eq!(big.slot(65_535), cidr("10.255.255.0/24"));
    }

    #[test]
    fn odd_shapes_are_refused() {
        for (c, slot) in [
            ("0.0.0.0/0", 16),
            ("10.0.0.0/8", 25),
            ("10.0.0.0/16", 8),
            ("10.0.0.0/25", 26),
        ] {
            assert!(Grid::new(cidr(c), slot).is_err(), "{c} /{slot}");
        }
        let grid = Grid::new(cidr("10.244.0.0/16"), 24).unwrap();
        assert_eq!(Grid::from_raw(&grid.raw(true)), Some(grid));
        assert_eq!(Grid::from_raw(&grid.raw(false)), None);
    }
}
