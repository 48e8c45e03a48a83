//! The SPIs each peer may send with: `peer_spis`, the authority, and the per-node-ID sets in
//! front of it that the ingress guard reads.
//!
//! A wire SPI carries its sender's node ID in its top 16 bits (docs/marks.md), so the guard
//! finds the valid SPIs of ESP it receives in one array slot, `peer_spi_sets[spi >> 16]`: the
//! node IP they may come from and up to [`SPI_PAIRINGS_MAX`] epoch pairings, each with a bitmap
//! of generations. An array read is inlined by the verifier; a hash lookup is a call into the
//! kernel that costs several times the rest of the guard (docs/benchmarks.md).
//!
//! A set names SA sets, not SAs: the hash and the pairings hold the SPI of each SA set's shared
//! SA, and the set's `per_cpu_sas` says how many per-CPU SAs (CPU slots 1 and up of the same
//! SPI) the peer sends on besides, for all its SA sets at once.
//!
//! `peer_spis` still holds every valid (peer, SPI): it is what [`PeerSpis::keys`] reads and
//! the sets are written from. An SPI the set of its node ID cannot hold — a fifth pairing, or
//! an SPI of that node ID from a second node IP (a node ID handed on while its old owner's SPIs
//! are still valid) — stays in the hash alone, and the set is flagged
//! [`SPI_SET_CONSULT_HASH`]: for that node ID only, the guard looks up in the hash what the set
//! does not accept. Nothing valid is ever refused for want of room.
//!
//! # Updates the guard may read half done
//!
//! The kernel copies an array value in place, so a program may read a set half written, byte
//! by byte old or new, or even across two writes. Every write here changes one thing that is
//! safe to see either way, so an SPI valid before and after an update is accepted throughout:
//! - an SPI keeps its place (its slot and generation bit, or the hash behind the flag) for as
//!   long as it is valid: adding or removing others never moves it;
//! - adding sets one generation bit, removing clears one; a bit set before and after reads as
//!   set in any mix of old and new bytes;
//! - a slot's tags change only while the slot holds no generation, and the node IP only while
//!   no slot does, so a mix of old and new tags or addresses accepts nothing;
//! - the flag is set before the write returns for the SPI that needs it (which is in the hash
//!   already), and cleared only when no valid SPI of the node ID relies on it.
//!
//! On an insert the hash is written first, the set after; on a removal the set first.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr},
};

use aya::{
    maps::{Array, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues},
    sys::SyscallError,
    util::nr_cpus,
};
#[cfg(doc)]
use xsteer_common::maps::SPI_PAIRINGS_MAX;
use xsteer_common::{
    maps::{
        self as names, EpochPairing, EspStats, Ipv4, PeerSpi, PeerSpiSet, SPI_SET_CONSULT_HASH,
    },
    spi,
};

use super::{DataplaneError, maps::map_err};

/// The node IP the SPIs of the peer at `node_ip` are kept under in `peer_spis` and its set: its
/// IPv4 address, or `0.0.0.0` for a peer with an IPv6 one. ESP over IPv6 is checked against the
/// sender's address in `peer6_addrs` instead, and the set's node IP only keys the hash behind
/// it; no IPv4 packet comes from `0.0.0.0` to a tunnel.
pub fn spi_owner(node_ip: IpAddr) -> Ipv4Addr {
    match node_ip {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    }
}

/// The node ID a wire SPI carries: its top 16 bits, the index of its set.
fn node_id(spi: u32) -> u32 {
    spi::node_id(spi)
}

/// The tags of a wire SPI and the bit of its generation.
fn pairing_of(spi: u32) -> (u16, u16) {
    (spi::pairing(spi), 1 << (spi & spi::GENERATION_MASK))
}

/// One write of an update, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Zero the node ID's ESP counts: its set is about to change hands.
    ResetStats,
    /// Write the set.
    Set(PeerSpiSet),
}

/// The writes that make `set` accept (`node_ip`, `spi`), whose SPI carries the set's node ID;
/// `in_hash` says whether the pair was in `peer_spis` before this insert.
fn insert_steps(set: &PeerSpiSet, node_ip: Ipv4, spi: u32, in_hash: bool) -> Vec<Step> {
    if set.accepts(node_ip, spi) || (in_hash && set.consults_hash()) {
        // Accepted already, by the set or through the hash: it stays where it is.
        return Vec::new();
    }
    let (tags, generation) = pairing_of(spi);
    let empty = set.pairings.iter().all(|p| p.generations == 0);
    let slot = set
        .pairings
        .iter()
        .position(|p| p.tags == tags)
        .or_else(|| set.pairings.iter().position(|p| p.generations == 0));
    let mut steps = Vec::new();
    let mut next = *set;
    match slot {
        Some(slot) if set.node_ip == node_ip || empty => {
            if set.node_ip != node_ip {
                // Counts go with the node IP; the set holds no generation, so no packet is
                // accepted (and counted) under it until the last step.
                steps.push(Step::ResetStats);
            }
            // Node IP and tags first, with no generation in this slot (and, when the node IP
            // changes, none in any slot): the write accepts nothing new however it is read.
            if next.node_ip != node_ip || next.pairings[slot].tags != tags {
                next.node_ip = node_ip;
                next.pairings[slot].tags = tags;
                steps.push(Step::Set(next));
            }
            next.pairings[slot].generations |= generation;
            steps.push(Step::Set(next));
        }
        // No room, or the node ID's SPIs come from another node IP: the hash holds it.
        _ if !set.consults_hash() => {
            next.flags |= SPI_SET_CONSULT_HASH;
            steps.push(Step::Set(next));
        }
        _ => {}
    }
    steps
}

/// The writes that make `set` stop accepting (`node_ip`, `spi`); `remaining` are the pairs of
/// the set's node ID that stay in `peer_spis`.
fn remove_steps(
    set: &PeerSpiSet,
    node_ip: Ipv4,
    spi: u32,
    remaining: impl IntoIterator<Item = (Ipv4, u32)>,
) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut next = *set;
    if set.node_ip == node_ip
        && let Some(slot) = set.slot_of(spi)
    {
        next.pairings[slot].generations &= !pairing_of(spi).1;
        steps.push(Step::Set(next));
    }
    if next.consults_hash() && remaining.into_iter().all(|(ip, spi)| next.accepts(ip, spi)) {
        // Nothing of this node ID is in the hash alone any more.
        next.flags &= !SPI_SET_CONSULT_HASH;
        steps.push(Step::Set(next));
    }
    steps
}

/// The (node IP, SPI) pairs `set`, the set of node ID `id`, accepts on its own.
fn set_spis(id: u32, set: &PeerSpiSet) -> impl Iterator<Item = (Ipv4, u32)> + '_ {
    set.pairings
        .iter()
        .flat_map(move |&EpochPairing { tags, generations }| {
            (0..16)
                .filter(move |g| generations & (1 << g) != 0)
                .map(move |g| {
                    let spi = id << spi::NODE_ID_SHIFT | u32::from(tags) << spi::PAIRING_SHIFT | g;
                    (set.node_ip, spi)
                })
        })
}

/// (peer node IP, wire SPI) → valid; and the ESP accepted per peer.
pub struct PeerSpis<'a> {
    hash: PerCpuHashMap<&'a mut MapData, PeerSpi, EspStats>,
    sets: Array<&'a mut MapData, PeerSpiSet>,
    stats: PerCpuArray<&'a mut MapData, EspStats>,
    /// `peer_spis`' keys as (SPI, node IP), so those of one node ID are a range; as this
    /// process last read or wrote them.
    mirror: &'a mut Option<BTreeSet<(u32, Ipv4Addr)>>,
}

impl<'a> PeerSpis<'a> {
    pub(super) fn new(
        hash: &'a mut Map,
        sets: &'a mut Map,
        stats: &'a mut Map,
        mirror: &'a mut Option<BTreeSet<(u32, Ipv4Addr)>>,
    ) -> Result<Self, DataplaneError> {
        Ok(PeerSpis {
            hash: PerCpuHashMap::try_from(hash).map_err(map_err(names::PEER_SPIS))?,
            sets: Array::try_from(sets).map_err(map_err(names::PEER_SPI_SETS))?,
            stats: PerCpuArray::try_from(stats).map_err(map_err(names::PEER_ESP_STATS))?,
            mirror,
        })
    }

    fn key(node_ip: Ipv4Addr, spi: u32) -> PeerSpi {
        PeerSpi {
            node_ip: node_ip.octets(),
            spi,
        }
    }

    fn zeros() -> Result<PerCpuValues<EspStats>, DataplaneError> {
        let cpus = nr_cpus().map_err(|(_, io)| DataplaneError::Cpus(io))?;
        PerCpuValues::try_from(vec![EspStats::default(); cpus]).map_err(DataplaneError::Cpus)
    }

    /// Reads `peer_spis`' keys from the kernel, and keeps them as the mirror.
    fn read_hash(&mut self) -> Result<&BTreeSet<(u32, Ipv4Addr)>, DataplaneError> {
        let keys = self
            .hash
            .keys()
            .map(|key| {
                let key = key.map_err(map_err(names::PEER_SPIS))?;
                Ok((key.spi, Ipv4Addr::from(key.node_ip)))
            })
            .collect::<Result<_, DataplaneError>>()?;
        Ok(self.mirror.insert(keys))
    }

    fn mirror(&mut self) -> Result<&mut BTreeSet<(u32, Ipv4Addr)>, DataplaneError> {
        if self.mirror.is_none() {
            self.read_hash()?;
        }
        Ok(self.mirror.get_or_insert_default())
    }

    fn set(&self, id: u32) -> Result<PeerSpiSet, DataplaneError> {
        self.sets.get(&id, 0).map_err(map_err(names::PEER_SPI_SETS))
    }

    fn write(&mut self, id: u32, steps: &[Step]) -> Result<(), DataplaneError> {
        for step in steps {
            match step {
                Step::ResetStats => self
                    .stats
                    .set(id, Self::zeros()?, 0)
                    .map_err(map_err(names::PEER_ESP_STATS))?,
                Step::Set(set) => self
                    .sets
                    .set(id, set, 0)
                    .map_err(map_err(names::PEER_SPI_SETS))?,
            }
        }
        Ok(())
    }

    /// Marks `spi` valid for the peer at `node_ip`: in `peer_spis` (with zeroed counts), then in
    /// the set of the SPI's node ID, or behind its flag when the set has no room for it.
    pub fn insert(&mut self, node_ip: Ipv4Addr, spi: u32) -> Result<(), DataplaneError> {
        let in_hash = self.mirror()?.contains(&(spi, node_ip));
        self.hash
            .insert(Self::key(node_ip, spi), Self::zeros()?, 0)
            .map_err(map_err(names::PEER_SPIS))?;
        self.mirror()?.insert((spi, node_ip));
        let id = node_id(spi);
        let steps = insert_steps(&self.set(id)?, node_ip.octets(), spi, in_hash);
        self.write(id, &steps)
    }

    /// Withdraws `spi` from the peer at `node_ip`: from the set of the SPI's node ID (clearing
    /// its flag once nothing relies on it), then from `peer_spis`.
    pub fn remove(&mut self, node_ip: Ipv4Addr, spi: u32) -> Result<(), DataplaneError> {
        let id = node_id(spi);
        let mirror = self.mirror()?;
        mirror.remove(&(spi, node_ip));
        let remaining: Vec<(Ipv4, u32)> = mirror
            .range((id << 16, Ipv4Addr::UNSPECIFIED)..)
            .take_while(|(s, _)| node_id(*s) == id)
            .map(|&(s, ip)| (ip.octets(), s))
            .collect();
        let steps = remove_steps(&self.set(id)?, node_ip.octets(), spi, remaining);
        self.write(id, &steps)?;
        match self.hash.remove(&Self::key(node_ip, spi)) {
            // Only in the set (written there by hand, say): gone from it now, which is the point.
            Err(MapError::SyscallError(SyscallError { io_error, .. }))
                if io_error.kind() == ErrorKind::NotFound =>
            {
                Ok(())
            }
            result => result.map_err(map_err(names::PEER_SPIS)),
        }
    }

    /// Every (peer node IP, wire SPI) the ingress guard accepts, for every node ID with an SPI in
    /// `peer_spis`: the hash's pairs that the set of their node ID accepts or sends to the hash,
    /// and whatever that set accepts besides (which the hash lacks, so a reconcile removes it).
    ///
    /// A pair only in the hash, which its set neither holds nor is flagged for (a write cut off
    /// between the two maps, or maps from a build without sets), is left out, so a reconcile adds
    /// it again. Sets of node IDs with nothing in the hash are not read (65,536 reads).
    pub fn keys(&mut self) -> Result<Vec<(Ipv4Addr, u32)>, DataplaneError> {
        let hash = self.read_hash()?.clone();
        let mut keys = BTreeSet::new();
        // The hash's keys come sorted by SPI, so those of one node ID are together.
        let mut current: Option<(u32, PeerSpiSet)> = None;
        for &(spi, ip) in &hash {
            let id = node_id(spi);
            let set = match current {
                Some((have, set)) if have == id => set,
                _ => {
                    let set = self.set(id)?;
                    keys.extend(set_spis(id, &set).map(|(ip, spi)| (Ipv4Addr::from(ip), spi)));
                    current = Some((id, set));
                    set
                }
            };
            if set.accepts(ip.octets(), spi) || set.consults_hash() {
                keys.insert((ip, spi));
            }
        }
        Ok(keys.into_iter().collect())
    }

    /// How many per-CPU SAs the set of each node ID with an SPI in `peer_spis` accepts, where
    /// not 0.
    pub fn per_cpu_sas(&mut self) -> Result<BTreeMap<u16, u16>, DataplaneError> {
        let ids: BTreeSet<u32> = self.read_hash()?.iter().map(|&(s, _)| node_id(s)).collect();
        let mut out = BTreeMap::new();
        for id in ids {
            let n = self.set(id)?.per_cpu_sas;
            if n > 0 {
                out.insert(id as u16, n);
            }
        }
        Ok(out)
    }

    /// Makes the set of node `id` accept `n` per-CPU SAs besides each SA set's shared one: one
    /// write of one field below 256, which the guard reads old or new, never anything else.
    pub fn set_per_cpu_sas(&mut self, id: u16, n: u16) -> Result<(), DataplaneError> {
        let id = u32::from(id);
        let mut set = self.set(id)?;
        if set.per_cpu_sas != n {
            set.per_cpu_sas = n;
            self.write(id, &[Step::Set(set)])?;
        }
        Ok(())
    }

    /// ESP accepted per peer node ID, summed over CPUs: what the sets accepted (counted per
    /// node ID since the ID's set last changed hands), plus what was accepted through the hash
    /// under each SPI that is still valid. By node ID, the top of the SPI, so that peers with
    /// IPv6 node IPs (whose SPIs share the owner `0.0.0.0`) are told apart.
    pub fn stats(&mut self) -> Result<BTreeMap<u16, EspStats>, DataplaneError> {
        let hash = self.read_hash()?.clone();
        let mut stats: BTreeMap<u16, EspStats> = BTreeMap::new();
        let mut add = |id: u32, per_cpu: PerCpuValues<EspStats>| {
            let sum = stats.entry(id as u16).or_default();
            for cpu in per_cpu.iter() {
                sum.packets += cpu.packets;
                sum.bytes += cpu.bytes;
            }
        };
        let mut last = None;
        for &(spi, ip) in &hash {
            let id = node_id(spi);
            match self.hash.get(&Self::key(ip, spi), 0) {
                Ok(per_cpu) => add(id, per_cpu),
                // Removed by the agent since the keys were read: nothing left to count under it.
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(names::PEER_SPIS)(e)),
            }
            if last != Some(id) {
                last = Some(id);
                let per_cpu = self
                    .stats
                    .get(&id, 0)
                    .map_err(map_err(names::PEER_ESP_STATS))?;
                add(id, per_cpu);
            }
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4 = [192, 168, 0, 2];
    const B: Ipv4 = [192, 168, 0, 9];

    /// Node 2's SPI under tags `tags` and generation `generation`.
    fn spi(tags: u32, generation: u32) -> u32 {
        2 << 16 | tags << 4 | generation
    }

    /// The maps as the program sees them, the pairs inserted and not removed since, and the
    /// writes so far.
    #[derive(Default)]
    struct Model {
        set: PeerSpiSet,
        hash: BTreeSet<(Ipv4, u32)>,
        valid: BTreeSet<(Ipv4, u32)>,
        writes: usize,
    }

    impl Model {
        fn accepts(set: &PeerSpiSet, hash: &BTreeSet<(Ipv4, u32)>, ip: Ipv4, spi: u32) -> bool {
            set.accepts(ip, spi) || (set.consults_hash() && hash.contains(&(ip, spi)))
        }

        /// Every value a program may read while `from` is overwritten with `to`: each field
        /// old or new (byte-wise mixes of one field are covered by the field's own rules:
        /// bits of a bitmap, tags and addresses only changing under no generation).
        fn mixes(from: &PeerSpiSet, to: &PeerSpiSet) -> Vec<PeerSpiSet> {
            let mut out = vec![*from];
            let fields = 2 + 2 * from.pairings.len();
            for mask in 1..(1u32 << fields) {
                let mut v = *from;
                let pick = |bit: usize| mask & (1 << bit) != 0;
                if pick(0) {
                    v.node_ip = to.node_ip;
                }
                if pick(1) {
                    v.flags = to.flags;
                }
                for i in 0..v.pairings.len() {
                    if pick(2 + 2 * i) {
                        v.pairings[i].tags = to.pairings[i].tags;
                    }
                    if pick(3 + 2 * i) {
                        v.pairings[i].generations = to.pairings[i].generations;
                    }
                }
                out.push(v);
            }
            out
        }

        /// Applies `steps` with the hash change `hash_after` (made first on an insert, last on
        /// a removal), checking that every pair valid before and after is accepted in every
        /// mix of any two values of the set written in turn (a reader may straddle writes),
        /// and that no mix of one write accepts a pair valid neither before nor after.
        fn apply(
            &mut self,
            steps: &[Step],
            hash_after: BTreeSet<(Ipv4, u32)>,
            valid_after: BTreeSet<(Ipv4, u32)>,
            insert: bool,
        ) {
            let before_hash = self.hash.clone();
            let both: Vec<(Ipv4, u32)> = self.valid.intersection(&valid_after).copied().collect();
            if insert {
                self.hash = hash_after.clone();
            }
            let mut values = vec![self.set];
            values.extend(steps.iter().filter_map(|step| match step {
                Step::Set(set) => Some(*set),
                Step::ResetStats => None,
            }));
            for (i, from) in values.iter().enumerate() {
                for (j, to) in values.iter().enumerate().skip(i + 1) {
                    for mix in Self::mixes(from, to) {
                        for &(ip, spi) in &both {
                            assert!(
                                Self::accepts(&mix, &self.hash, ip, spi),
                                "{ip:?} {spi:#x} refused mid-update {from:?} -> {to:?}: {mix:?}"
                            );
                        }
                        if j > i + 1 {
                            continue;
                        }
                        for &(ip, spi) in SPIS.iter() {
                            assert!(
                                !Self::accepts(&mix, &self.hash, ip, spi)
                                    || before_hash.contains(&(ip, spi))
                                    || hash_after.contains(&(ip, spi)),
                                "{ip:?} {spi:#x} accepted, valid neither before nor after"
                            );
                        }
                    }
                }
            }
            self.writes += values.len() - 1;
            self.set = *values.last().expect("the set before");
            self.hash = hash_after;
            self.valid = valid_after;
        }

        fn insert(&mut self, ip: Ipv4, spi: u32) {
            let steps = insert_steps(&self.set, ip, spi, self.hash.contains(&(ip, spi)));
            let mut after = self.hash.clone();
            after.insert((ip, spi));
            let mut valid = self.valid.clone();
            valid.insert((ip, spi));
            self.apply(&steps, after, valid, true);
            self.check();
        }

        fn remove(&mut self, ip: Ipv4, spi: u32) {
            let mut after = self.hash.clone();
            after.remove(&(ip, spi));
            let mut valid = self.valid.clone();
            valid.remove(&(ip, spi));
            let steps = remove_steps(&self.set, ip, spi, after.iter().copied());
            self.apply(&steps, after, valid, false);
            self.check();
        }

        /// After each update: exactly the valid pairs are accepted, and the flag is set only
        /// while some pair is in the hash alone.
        fn check(&self) {
            for &(ip, spi) in SPIS.iter() {
                assert_eq!(
                    Self::accepts(&self.set, &self.hash, ip, spi),
                    self.valid.contains(&(ip, spi)),
                    "{ip:?} {spi:#x} in {:?}",
                    self.set
                );
            }
            let in_hash_alone = self
                .hash
                .iter()
                .any(|&(ip, spi)| !self.set.accepts(ip, spi));
            assert!(in_hash_alone || !self.set.consults_hash(), "{:?}", self.set);
        }

        fn in_set(&self, ip: Ipv4, spi: u32) -> bool {
            self.set.accepts(ip, spi)
        }
    }

    /// Every pair the tests use, for the "nothing else accepted" checks.
    static SPIS: std::sync::LazyLock<Vec<(Ipv4, u32)>> = std::sync::LazyLock::new(|| {
        let mut all = Vec::new();
        for ip in [A, B] {
            for tags in 0..8 {
                for generation in 0..16 {
                    all.push((ip, spi(tags, generation)));
                }
            }
        }
        all
    });

    #[test]
    fn a_rotation_and_a_rekey_stay_in_the_set() {
        let mut m = Model::default();
        // Generation 3 under one pairing; then generation 4 beside it (a rotation).
        m.insert(A, spi(1, 3));
        assert_eq!(m.writes, 2, "node IP and tags, then the generation");
        m.insert(A, spi(1, 4));
        assert_eq!(m.writes, 3, "one bit");
        // Both sides re-key at once: four pairings, two generations each.
        for tags in 2..5 {
            for generation in [3, 4] {
                m.insert(A, spi(tags, generation));
            }
        }
        assert!(!m.set.consults_hash());
        assert!((1..5).all(|t| m.in_set(A, spi(t, 3)) && m.in_set(A, spi(t, 4))));
        // The re-key ends: the old pairings go; generation 3 retires.
        for tags in 1..4 {
            m.remove(A, spi(tags, 3));
            m.remove(A, spi(tags, 4));
        }
        m.remove(A, spi(4, 3));
        assert_eq!(m.valid, BTreeSet::from([(A, spi(4, 4))]));
        // A new re-key takes a freed slot: its tags first, then its generation.
        let before = m.writes;
        m.insert(A, spi(5, 4));
        assert_eq!(m.writes - before, 2);
        assert!(!m.set.consults_hash());
    }

    #[test]
    fn a_fifth_pairing_goes_to_the_hash_and_stays_there_while_valid() {
        let mut m = Model::default();
        for tags in 1..=4 {
            m.insert(A, spi(tags, 1));
        }
        m.insert(A, spi(5, 1));
        assert!(m.set.consults_hash() && !m.in_set(A, spi(5, 1)));
        // A slot frees: the hashed SPI does not move (moving is a write a reader could straddle).
        m.remove(A, spi(1, 1));
        assert!(!m.in_set(A, spi(5, 1)) && m.set.consults_hash());
        // Another generation under the fifth pairing's tags takes the free slot.
        m.insert(A, spi(5, 2));
        assert!(m.in_set(A, spi(5, 2)) && m.set.consults_hash());
        // Inserting the hashed one again moves nothing either.
        let before = m.writes;
        m.insert(A, spi(5, 1));
        assert_eq!(m.writes, before);
        // Once it goes, the flag goes.
        m.remove(A, spi(5, 1));
        assert!(!m.set.consults_hash());
    }

    #[test]
    fn a_node_id_handed_on_serves_the_new_node_ip_through_the_hash_until_the_old_is_gone() {
        let mut m = Model::default();
        m.insert(A, spi(1, 3));
        m.insert(A, spi(1, 4));
        // Node 2 is now at B, while A's SPIs are still valid.
        m.insert(B, spi(7, 3));
        assert!(m.set.consults_hash() && m.set.node_ip == A);
        m.remove(A, spi(1, 3));
        m.remove(A, spi(1, 4));
        assert!(m.set.consults_hash(), "B's SPI is still in the hash alone");
        // The set is empty: B's next SPI takes it over (counts reset), the hashed one stays.
        let steps = insert_steps(&m.set, B, spi(7, 4), false);
        assert_eq!(steps.first(), Some(&Step::ResetStats));
        m.insert(B, spi(7, 4));
        assert!(m.set.node_ip == B && m.in_set(B, spi(7, 4)) && !m.in_set(B, spi(7, 3)));
        m.remove(B, spi(7, 3));
        assert!(!m.set.consults_hash());
    }

    #[test]
    fn maps_filled_without_sets_are_completed_by_inserting_again() {
        // peer_spis from a build without sets: the pairs are in the hash, the set is empty.
        let mut m = Model {
            hash: BTreeSet::from([(A, spi(1, 3)), (A, spi(2, 3))]),
            ..Default::default()
        };
        // Not accepted, so not valid yet as far as the guard goes; the reconcile adds them.
        m.hash.clone().into_iter().for_each(|(ip, spi)| {
            assert!(!Model::accepts(&m.set, &m.hash, ip, spi));
        });
        m.insert(A, spi(1, 3));
        m.insert(A, spi(2, 3));
        assert!(m.in_set(A, spi(1, 3)) && m.in_set(A, spi(2, 3)));
    }

    #[test]
    fn set_spis_lists_what_the_set_accepts() {
        let mut m = Model::default();
        for (tags, generation) in [(1, 3), (1, 15), (6, 1)] {
            m.insert(A, spi(tags, generation));
        }
        let listed: BTreeSet<_> = set_spis(2, &m.set).collect();
        assert_eq!(listed, m.valid);
    }

    #[test]
    fn removing_what_is_not_there_writes_nothing() {
        let mut m = Model::default();
        m.insert(A, spi(1, 3));
        assert!(remove_steps(&m.set, A, spi(1, 4), [(A, spi(1, 3))]).is_empty());
        assert!(remove_steps(&m.set, B, spi(1, 3), [(A, spi(1, 3))]).is_empty());
    }
}
