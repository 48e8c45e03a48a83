//! What the CIDR maps need of an address family, so that one implementation serves the IPv4
//! maps and their IPv6 twins (`remote_pod_cidrs` and `remote6_cidrs`, `local_pod_cidrs` and
//! `local6_cidrs`): the LPM trie's key, and the grid of slots in front of the remote trie. Each
//! family implements them beside its grid (`grid` for IPv4, `v6` for IPv6), so that this module
//! depends on neither.

use std::{collections::BTreeMap, fmt, ops::Range};

use aya::{Pod, maps::lpm_trie::Key};
use xsteer_common::maps::RemotePodCidr;

/// A CIDR of one family as the maps key it.
pub trait MapCidr: Copy + Ord + fmt::Display {
    /// The address bytes of an LPM trie key.
    type Addr: Pod;
    /// The grid of slots in front of this family's remote pod trie.
    type Grid: SlotGrid<Cidr = Self>;
    /// The names of this family's remote pod trie, grid and slots.
    const REMOTE_MAPS: RemoteMapNames;

    /// The LPM trie key of this CIDR.
    fn lpm_key(self) -> Key<Self::Addr>;
    /// The CIDR an LPM key holds; `None` when bits are set past its prefix (written by hand).
    fn from_lpm_key(key: &Key<Self::Addr>) -> Option<Self>;
    /// An LPM key as text, for errors.
    fn show_lpm_key(key: &Key<Self::Addr>) -> String;
}

/// The names of one family's remote pod maps, for errors.
pub struct RemoteMapNames {
    /// The trie, the authority.
    pub trie: &'static str,
    /// The grid's one slot of shape.
    pub grid: &'static str,
    /// The slots.
    pub slots: &'static str,
}

/// A cluster prefix cut into slots, each an array entry that answers for its whole CIDR.
pub trait SlotGrid: Copy + PartialEq + Sized {
    /// The CIDRs it is cut from and into.
    type Cidr;
    /// Its map value.
    type Raw: Pod + Default;

    /// The number of slots.
    fn slots(&self) -> u32;
    /// The CIDR slot `index` covers.
    fn slot(&self, index: u32) -> Self::Cidr;
    /// The slots that `cidr` overlaps.
    fn slots_of(&self, cidr: Self::Cidr) -> Range<u32>;
    /// The map value of this grid.
    fn raw(&self, enabled: bool) -> Self::Raw;
    /// The grid a map value describes, if it is enabled and well formed.
    fn from_raw(raw: &Self::Raw) -> Option<Self>;
    /// What `slot` must hold, given every entry of the trie: the longest entry covering the
    /// whole slot; "ask the trie" if an entry finer than the slot lies in it; empty otherwise.
    fn slot_value(entries: &BTreeMap<Self::Cidr, RemotePodCidr>, slot: Self::Cidr)
    -> RemotePodCidr;
}
