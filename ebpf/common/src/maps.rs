//! Names and key/value layouts of the maps the programs read and the agent writes.
//!
//! Addresses are in network byte order (`[u8; 4]` for IPv4, `[u8; 16]` for IPv6, as they sit in
//! the packet), so neither side converts on the hot path and `bpftool` prints them as readable
//! octets. Every map is pinned under the agent's pin directory by the name given here.
//!
//! IPv6 has maps of its own, beside the IPv4 ones (whose layouts pinned maps of earlier builds
//! still have): their names fit the kernel's 15 bytes without clashing with the IPv4 names'.

use crate::spi;

/// LPM trie: remote pod CIDR → [`RemotePodCidr`]. Read by the pod classifier.
pub const REMOTE_POD_CIDRS: &str = "remote_pod_cidrs";
/// Array of one [`ClusterPodSpace`]: every address a pod of the cluster can have. Read by both
/// guards, which decide "pod address" from it and never from the current peers.
pub const CLUSTER_POD_CIDRS: &str = "cluster_pod_cidrs";
/// LPM trie: local pod CIDR → [`LocalPodCidr`]. Read by both guards.
pub const LOCAL_POD_CIDRS: &str = "local_pod_cidrs";
/// Hash: peer node IP → [`PeerNode`]. Tells the ingress guard which ESP senders are peers.
pub const PEER_NODES: &str = "peer_nodes";
/// Per-CPU hash: [`PeerSpi`] → [`EspStats`]. Every SA set currently valid per peer, by the SPI
/// of its slot-0 SA ([`spi::shared`]): the authority the sets in [`PEER_SPI_SETS`] are written
/// from. The ingress guard reads it only for a node ID
/// whose set is flagged [`SPI_SET_CONSULT_HASH`], and counts there what it accepts there.
pub const PEER_SPIS: &str = "peer_spis";
/// Array: node ID → [`PeerSpiSet`], the valid SPIs that carry that node ID (wire SPI `>> 16`)
/// and the peer that may send them. The ingress guard's constant-time front for [`PEER_SPIS`].
pub const PEER_SPI_SETS: &str = "peer_spi_sets";
/// Per-CPU array: node ID → [`EspStats`], the ESP its set in [`PEER_SPI_SETS`] accepted.
pub const PEER_ESP_STATS: &str = "peer_esp_stats";
/// Per-CPU array of packet counters indexed by [`crate::counters::Counter`].
pub const COUNTERS: &str = "counters";
/// Array of one [`PodCidrGrid`]: the cluster CIDR whose /24s index [`REMOTE_POD_SLOTS`].
pub const POD_CIDR_GRID: &str = "pod_cidr_grid";
/// Array: slot of the grid → [`RemotePodCidr`], a constant-time front for [`REMOTE_POD_CIDRS`].
pub const REMOTE_POD_SLOTS: &str = "remote_pod_slots";

/// LPM trie: remote IPv6 pod CIDR → [`RemotePodCidr`]. Read by the pod classifier.
pub const REMOTE_POD_CIDRS_V6: &str = "remote6_cidrs";
/// Array of one [`PodCidrGridV6`]: the cluster IPv6 prefix whose /64s index
/// [`REMOTE_POD_SLOTS_V6`].
pub const POD_CIDR_GRID_V6: &str = "pod6_cidr_grid";
/// Array: /64 slot of the IPv6 grid → [`RemotePodCidr`], a constant-time front for
/// [`REMOTE_POD_CIDRS_V6`].
pub const REMOTE_POD_SLOTS_V6: &str = "remote6_slots";
/// Array of one [`ClusterPodSpaceV6`]: every IPv6 address a pod of the cluster can have. Empty,
/// the guards leave IPv6 alone.
pub const CLUSTER_POD_CIDRS_V6: &str = "cluster6_cidrs";
/// LPM trie: local IPv6 pod CIDR → [`LocalPodCidr`]. Read by both guards.
pub const LOCAL_POD_CIDRS_V6: &str = "local6_cidrs";
/// Hash: peer node IPv6 address → [`PeerNode`]. Tells the ingress guard which senders of ESP
/// over IPv6 are peers.
pub const PEER_NODES_V6: &str = "peer6_nodes";
/// Array: node ID → that peer's IPv6 node address (zero: none), the ingress guard's
/// constant-time check that ESP over IPv6 comes from the node its SPI names.
pub const PEER_ADDRS_V6: &str = "peer6_addrs";
/// Array of one [`UdpEncap`]: the UDP port on which this node receives ESP in UDP (RFC 3948)
/// from peers behind NAT. The ingress guard at tc checks the SPI there and strips the UDP
/// header, so that xfrm takes the packet for plain ESP. Port 0, as loaded: none.
pub const UDP_ENCAP: &str = "udp_encap";

/// Capacity of [`REMOTE_POD_CIDRS`]: one CIDR per node ID with room for extra pools.
pub const REMOTE_POD_CIDRS_MAX: u32 = 65_536;
/// Capacity of [`REMOTE_POD_SLOTS`]: a /8 cluster CIDR in /24s.
pub const REMOTE_POD_SLOTS_MAX: u32 = 65_536;
/// [`RemotePodCidr::flags`] bit of a slot that cannot answer alone (a CIDR finer than the slot
/// lies in it): the trie decides.
pub const SLOT_CONSULT_TRIE: u8 = 0x01;
/// How many CIDRs the cluster's pod space ([`CLUSTER_POD_CIDRS`]) can be made of.
pub const CLUSTER_POD_CIDRS_MAX: usize = 8;
/// Capacity of [`LOCAL_POD_CIDRS`].
pub const LOCAL_POD_CIDRS_MAX: u32 = 16;
/// Capacity of [`PEER_NODES`]: every node ID.
pub const PEER_NODES_MAX: u32 = 65_536;
/// Capacity of [`PEER_SPIS`]: two live generations per peer (four during a rotation overlap).
pub const PEER_SPIS_MAX: u32 = 4 * 65_536;
/// Capacity of [`PEER_SPI_SETS`] and [`PEER_ESP_STATS`]: every node ID.
pub const PEER_SPI_SETS_MAX: u32 = 65_536;
/// How many epoch pairings a [`PeerSpiSet`] holds: a peer and this node, each with its epoch
/// and the one it re-keys to, make at most four (docs/marks.md, docs/benchmarks.md).
pub const SPI_PAIRINGS_MAX: usize = 4;
/// [`PeerSpiSet::flags`] bit of a set that does not hold every valid SPI of its node ID (more
/// pairings than it has room for, or SPIs of that node ID from a second node IP): an SPI the
/// set does not accept is looked up in [`PEER_SPIS`].
pub const SPI_SET_CONSULT_HASH: u16 = 0x0001;

/// Capacity of [`REMOTE_POD_CIDRS_V6`], as for IPv4.
pub const REMOTE_POD_CIDRS_V6_MAX: u32 = 65_536;
/// Capacity of [`REMOTE_POD_SLOTS_V6`]: a /48 cluster prefix in /64s.
pub const REMOTE_POD_SLOTS_V6_MAX: u32 = 65_536;
/// Capacity of [`LOCAL_POD_CIDRS_V6`].
pub const LOCAL_POD_CIDRS_V6_MAX: u32 = 16;
/// Capacity of [`PEER_NODES_V6`] and [`PEER_ADDRS_V6`]: every node ID.
pub const PEER_NODES_V6_MAX: u32 = 65_536;

/// An IPv4 address in network byte order.
pub type Ipv4 = [u8; 4];
/// An IPv6 address in network byte order.
pub type Ipv6 = [u8; 16];

/// The two halves of an IPv6 address as 64-bit words (in memory order, not numeric), as the
/// programs load them from the packet: a compare or a masked compare is two operations.
#[inline(always)]
pub fn ipv6_words(addr: &Ipv6) -> [u64; 2] {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&addr[..8]);
    lo.copy_from_slice(&addr[8..]);
    [u64::from_ne_bytes(hi), u64::from_ne_bytes(lo)]
}

/// The address whose [`ipv6_words`] are `words`.
#[inline(always)]
pub fn ipv6_from_words(words: [u64; 2]) -> Ipv6 {
    let (hi, lo) = (words[0].to_ne_bytes(), words[1].to_ne_bytes());
    [
        hi[0], hi[1], hi[2], hi[3], hi[4], hi[5], hi[6], hi[7], lo[0], lo[1], lo[2], lo[3], lo[4],
        lo[5], lo[6], lo[7],
    ]
}

/// Where to send a packet bound for a remote pod CIDR, and with which key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemotePodCidr {
    /// The node that owns the CIDR (1..=65535): bits 16..31 of the encrypt mark.
    pub node_id: u16,
    /// The key generation to send with (1..=15): bits 12..15 of the encrypt mark.
    pub generation: u8,
    /// Zero in the trie; in a grid slot, [`SLOT_CONSULT_TRIE`] or zero.
    pub flags: u8,
}

/// The grid of remote pod slots: `base/prefix_len` cut into `/slot_prefix_len` slots, slot `i`
/// holding what the trie answers for the whole of `base + i * slot size`. With the grid on, a
/// lookup inside it costs one array read instead of a walk down the trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodCidrGrid {
    /// The cluster CIDR's address.
    pub base: Ipv4,
    /// The cluster CIDR's prefix length (8..=24).
    pub prefix_len: u8,
    /// The slots' prefix length (at most 16 more than `prefix_len`).
    pub slot_prefix_len: u8,
    /// Non-zero when the slots are filled and may be used.
    pub enabled: u8,
    /// Reserved, zero.
    pub reserved: u8,
}

/// The grid of remote IPv6 pod slots: `base/prefix_len` cut into /64s, slot `i` holding what
/// [`REMOTE_POD_CIDRS_V6`] answers for the whole of the /64 `base + i`. /64 is what Kubernetes
/// gives a node out of an IPv6 cluster CIDR by default (`--node-cidr-mask-size-ipv6`), and
/// kind too, so the slots are fixed at that size.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodCidrGridV6 {
    /// The first 64 bits of the cluster prefix; its bits past `prefix_len` are zero.
    pub base: [u8; 8],
    /// The cluster prefix's length (48..=64).
    pub prefix_len: u8,
    /// Non-zero when the slots are filled and may be used.
    pub enabled: u8,
    /// Reserved, zero.
    pub reserved: [u8; 6],
}

/// One CIDR of the cluster's pod space: network and netmask, both in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterPodCidr {
    /// The network address (bits past the mask are ignored).
    pub addr: Ipv4,
    /// The netmask, e.g. `[255, 0, 0, 0]` for a /8.
    pub mask: Ipv4,
}

/// The cluster's pod address space: up to [`CLUSTER_POD_CIDRS_MAX`] CIDRs that together contain
/// every pod of the cluster, whichever node it is on and whether or not that node is a peer
/// right now. The guards check it in a bounded loop: cheaper than an LPM trie for a handful
/// of CIDRs (docs/benchmarks.md).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterPodSpace {
    /// How many of `cidrs` are in use, from the first; 0 means "not filled".
    pub count: u32,
    /// The CIDRs; those at `count` and beyond are ignored.
    pub cidrs: [ClusterPodCidr; CLUSTER_POD_CIDRS_MAX],
}

impl ClusterPodSpace {
    /// Whether `addr` (network byte order) lies in one of the CIDRs in use.
    #[inline(always)]
    pub fn contains(&self, addr: Ipv4) -> bool {
        // Any byte order works for a masked compare as long as all three agree.
        let addr = u32::from_ne_bytes(addr);
        let mut i = 0;
        while i < CLUSTER_POD_CIDRS_MAX {
            if i as u32 >= self.count {
                return false;
            }
            let cidr = &self.cidrs[i];
            let mask = u32::from_ne_bytes(cidr.mask);
            // Masking the stored address too: an entry with host bits set (written by hand)
            // still covers its network instead of matching nothing.
            if addr & mask == u32::from_ne_bytes(cidr.addr) & mask {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// One IPv6 CIDR of the cluster's pod space: network and netmask, in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterPodCidrV6 {
    /// The network address (bits past the mask are ignored).
    pub addr: Ipv6,
    /// The netmask, e.g. `ffff:ffff:ffff::` for a /48.
    pub mask: Ipv6,
}

/// The cluster's IPv6 pod address space, as [`ClusterPodSpace`] is the IPv4 one. Empty (count
/// 0), the guards do nothing for IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterPodSpaceV6 {
    /// How many of `cidrs` are in use, from the first; 0 means "not filled".
    pub count: u32,
    /// Reserved, zero (keeps the CIDRs 8-aligned for the guards' 64-bit loads).
    pub reserved: u32,
    /// The CIDRs; those at `count` and beyond are ignored.
    pub cidrs: [ClusterPodCidrV6; CLUSTER_POD_CIDRS_MAX],
}

impl ClusterPodSpaceV6 {
    /// Whether the address whose [`ipv6_words`] are `addr` lies in one of the CIDRs in use.
    #[inline(always)]
    pub fn contains(&self, addr: [u64; 2]) -> bool {
        let [a_hi, a_lo] = addr;
        let mut i = 0;
        while i < CLUSTER_POD_CIDRS_MAX {
            if i as u32 >= self.count {
                return false;
            }
            let cidr = &self.cidrs[i];
            let [m_hi, m_lo] = ipv6_words(&cidr.mask);
            let [n_hi, n_lo] = ipv6_words(&cidr.addr);
            // Masking the stored address too, as for IPv4.
            if a_hi & m_hi == n_hi & m_hi && a_lo & m_lo == n_lo & m_lo {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// A pod CIDR of this node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalPodCidr {
    /// This node's ID, for readability in map dumps.
    pub node_id: u16,
    /// Reserved, zero.
    pub flags: u16,
}

/// Where ESP in UDP arrives (see [`UDP_ENCAP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpEncap {
    /// The UDP destination port, in host byte order; 0 turns decapsulation off.
    pub port: u16,
    /// Reserved, zero.
    pub reserved: u16,
}

/// A peer node, keyed by its node IP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerNode {
    /// The peer's node ID.
    pub node_id: u16,
    /// Reserved, zero.
    pub flags: u16,
}

/// An SA set a peer may currently send with, by the SPI of its slot-0 SA.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerSpi {
    /// The peer's node IP: the outer source of its ESP packets.
    pub node_ip: Ipv4,
    /// The 32-bit wire SPI of the set's slot-0 SA ([`spi::shared`]), in host byte order.
    pub spi: u32,
}

/// The SPIs of one epoch pairing: the two tags of the wire SPI ([`spi::pairing`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpochPairing {
    /// The epoch tags of the wire SPIs this slot holds ([`spi::pairing`]).
    pub tags: u16,
    /// Bit `g` set: the SPIs with these tags and generation `g` (bits 0..3) are valid. Zero: the
    /// slot is free, whatever `tags` says.
    pub generations: u16,
}

/// The valid wire SPIs that carry one node ID, and the node IP they may come from: a few
/// pairings with a bitmap of generations each hold every SA set a peer needs, even during a
/// rotation and a re-key at once, and `per_cpu_sas` says which SAs of each set exist.
// Aligned to 4 so that the guard compares the node IP in one load.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerSpiSet {
    /// The peer's node IP: the outer source its ESP over IPv4 must have. ESP over IPv6 is
    /// checked against [`PEER_ADDRS_V6`] instead, and its [`PEER_SPIS`] entries, when the set
    /// is flagged, are keyed by this field all the same (0.0.0.0 for a peer with no IPv4 node
    /// IP: the SPI names the node, so the key stays unique).
    pub node_ip: Ipv4,
    /// [`SPI_SET_CONSULT_HASH`] or zero.
    pub flags: u16,
    /// How many per-CPU SAs the peer sends on besides each set's shared one: SPIs with CPU slot
    /// ([`spi::cpu_slot`]) 0 up to this are valid. Zero, as in maps of earlier builds: the
    /// shared SAs only.
    pub per_cpu_sas: u16,
    /// The pairings; free ones have no generation set.
    pub pairings: [EpochPairing; SPI_PAIRINGS_MAX],
}

impl PeerSpiSet {
    /// The slot that holds `spi`'s tags with `spi`'s generation set, if `spi`'s CPU slot is
    /// valid too. The node ID and the node IP are the caller's to check.
    #[inline(always)]
    pub fn slot_of(&self, spi: u32) -> Option<usize> {
        if !self.has_cpu_slot(spi) {
            return None;
        }
        let tags = spi::pairing(spi);
        let generation = 1u16 << (spi & spi::GENERATION_MASK);
        let mut i = 0;
        while i < SPI_PAIRINGS_MAX {
            let pairing = &self.pairings[i];
            if pairing.tags == tags && pairing.generations & generation != 0 {
                return Some(i);
            }
            i += 1;
        }
        None
    }

    /// Whether the peer sends with `spi`'s CPU slot.
    #[inline(always)]
    pub fn has_cpu_slot(&self, spi: u32) -> bool {
        spi::cpu_slot(spi) <= u32::from(self.per_cpu_sas)
    }

    /// Whether ESP from `node_ip` under `spi` is accepted by this set alone (the set of node ID
    /// `spi >> 16`).
    #[inline(always)]
    pub fn accepts(&self, node_ip: Ipv4, spi: u32) -> bool {
        self.node_ip == node_ip && self.slot_of(spi).is_some()
    }

    /// Whether an SPI this set does not accept must be looked up in [`PEER_SPIS`].
    #[inline(always)]
    pub fn consults_hash(&self) -> bool {
        self.flags & SPI_SET_CONSULT_HASH != 0
    }
}

/// ESP traffic accepted from one peer (per CPU; sum for the total): under one SPI in
/// [`PEER_SPIS`], under one node ID's set in [`PEER_ESP_STATS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EspStats {
    /// Packets accepted.
    pub packets: u64,
    /// Bytes accepted, link-layer frame included.
    pub bytes: u64,
}

// `aya::Pod` asks for a `Copy` type that any bit pattern of its size is a valid value of, with
// no padding: each of the types below is `#[repr(C)]` and made only of integers and byte arrays
// whose sizes and alignments add up without gaps.
#[cfg(feature = "user")]
mod pod {
    // SAFETY: u16, u8, u8: 4 bytes, no padding; every bit pattern is a value.
    unsafe impl aya::Pod for super::RemotePodCidr {}
    // SAFETY: u16, u16: 4 bytes, no padding; every bit pattern is a value.
    unsafe impl aya::Pod for super::LocalPodCidr {}
    // SAFETY: u16, u16: 4 bytes, no padding; every bit pattern is a value.
    unsafe impl aya::Pod for super::PeerNode {}
    // SAFETY: [u8; 4], u32: 8 bytes, the u32 at offset 4, no padding; every bit pattern is a
    // value.
    unsafe impl aya::Pod for super::PeerSpi {}
    // SAFETY: u64, u64: 16 bytes, no padding; every bit pattern is a value.
    unsafe impl aya::Pod for super::EspStats {}
    // SAFETY: [u8; 4] and four u8: 8 bytes, no padding; every bit pattern is a value.
    unsafe impl aya::Pod for super::PodCidrGrid {}
    // SAFETY: u32, then 8 × ([u8; 4], [u8; 4]): 68 bytes, align 4, no padding; every bit
    // pattern is a value (a count past 8 is read as 8).
    unsafe impl aya::Pod for super::ClusterPodSpace {}
    // SAFETY: [u8; 4], u16, u16, then 4 × (u16, u16): 24 bytes, align 4, no padding; every
    // bit pattern is a value.
    unsafe impl aya::Pod for super::PeerSpiSet {}
    // SAFETY: [u8; 8], u8, u8, [u8; 6]: 16 bytes, align 1, no padding; every bit pattern is a
    // value.
    unsafe impl aya::Pod for super::PodCidrGridV6 {}
    // SAFETY: u32, u32, then 8 × ([u8; 16], [u8; 16]): 264 bytes, align 4, no padding; every
    // bit pattern is a value (a count past 8 is read as 8).
    unsafe impl aya::Pod for super::ClusterPodSpaceV6 {}
    // SAFETY: u16, u16: 4 bytes, no padding; every bit pattern is a value.
    unsafe impl aya::Pod for super::UdpEncap {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_what_the_pod_safety_comments_say() {
        use core::mem::size_of;
        assert_eq!(size_of::<RemotePodCidr>(), 4);
        assert_eq!(size_of::<LocalPodCidr>(), 4);
        assert_eq!(size_of::<PeerNode>(), 4);
        assert_eq!(size_of::<PeerSpi>(), 8);
        assert_eq!(size_of::<EspStats>(), 16);
        assert_eq!(size_of::<PodCidrGrid>(), 8);
        assert_eq!(size_of::<ClusterPodSpace>(), 68);
        assert_eq!(size_of::<EpochPairing>(), 4);
        assert_eq!(size_of::<PeerSpiSet>(), 8 + 4 * SPI_PAIRINGS_MAX);
        assert_eq!(size_of::<PodCidrGridV6>(), 16);
        assert_eq!(size_of::<ClusterPodSpaceV6>(), 264);
    }

    #[test]
    fn a_set_accepts_its_pairings_generations_and_cpu_slots_only() {
        let mut set = PeerSpiSet {
            node_ip: [10, 0, 0, 2],
            per_cpu_sas: 2,
            ..Default::default()
        };
        set.pairings[1] = EpochPairing {
            tags: 0b101_011,
            generations: 1 << 4,
        };
        let spi = |slot, generation| spi::compose(2, slot, 0b101, 0b011, generation);
        assert_eq!(set.slot_of(spi(0, 4)), Some(1));
        assert_eq!(set.slot_of(spi(2, 4)), Some(1), "the last valid CPU slot");
        assert_eq!(set.slot_of(spi(3, 4)), None, "past the peer's CPU slots");
        assert_eq!(set.slot_of(spi(0, 5)), None, "another generation");
        assert_eq!(set.slot_of(spi::compose(2, 0, 0b101, 0b010, 4)), None);
        assert!(set.accepts([10, 0, 0, 2], spi(1, 4)));
        assert!(!set.accepts([10, 0, 0, 3], spi(1, 4)));
        set.per_cpu_sas = 0;
        assert_eq!(set.slot_of(spi(0, 4)), Some(1), "the shared SA's slot");
        assert_eq!(set.slot_of(spi(1, 4)), None, "no per-CPU SA");
    }

    fn v6(s: &str) -> Ipv6 {
        s.parse::<core::net::Ipv6Addr>().unwrap().octets()
    }

    fn space_v6(cidrs: &[(&str, &str)]) -> ClusterPodSpaceV6 {
        let mut space = ClusterPodSpaceV6 {
            count: cidrs.len() as u32,
            ..Default::default()
        };
        for (slot, &(addr, mask)) in space.cidrs.iter_mut().zip(cidrs) {
            *slot = ClusterPodCidrV6 {
                addr: v6(addr),
                mask: v6(mask),
            };
        }
        space
    }

    #[test]
    fn an_ipv6_space_checks_both_halves_and_only_the_cidrs_in_use() {
        let s = space_v6(&[
            ("fd00:10:244::", "ffff:ffff:ffff::"),
            ("fd00:99::1:0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:0"),
        ]);
        let has = |s: &ClusterPodSpaceV6, a: &str| s.contains(ipv6_words(&v6(a)));
        assert!(has(&s, "fd00:10:244:7::9"));
        assert!(!has(&s, "fd00:10:245::1"));
        assert!(has(&s, "fd00:99::1:ffff"), "the second CIDR's low half");
        assert!(!has(&s, "fd00:99::2:1"), "differs in the low half");
        assert!(!has(&ClusterPodSpaceV6::default(), "::"));
        let mut one = space_v6(&[("fd00::", "ff00::")]);
        one.count = 1;
        assert!(
            !has(&one, "fe80::1"),
            "zeroed slots past count are not read"
        );
        let a = v6("fd00:10:244:7::9");
        assert_eq!(ipv6_from_words(ipv6_words(&a)), a);
    }

    const PEER: Ipv4 = [192, 168, 0, 2];

    fn set(pairings: &[(u16, u16)]) -> PeerSpiSet {
        let mut set = PeerSpiSet {
            node_ip: PEER,
            ..Default::default()
        };
        for (slot, &(tags, generations)) in set.pairings.iter_mut().zip(pairings) {
            *slot = EpochPairing { tags, generations };
        }
        set
    }

    #[test]
    fn a_set_accepts_its_generations_under_its_tags_from_its_node_ip() {
        // Node 2; tags 0b101_110 with generations 3 and 4; tags 0b110_101 with generation 3.
        let s = set(&[(0b101_110, 1 << 3 | 1 << 4), (0b110_101, 1 << 3)]);
        assert!(s.accepts(PEER, 0x0002_02E3));
        assert!(s.accepts(PEER, 0x0002_02E4));
        assert!(s.accepts(PEER, 0x0002_0353));
        assert_eq!(s.slot_of(0x0002_0353), Some(1));
        assert!(
            !s.accepts(PEER, 0x0002_0354),
            "generation 4 only under the first tags"
        );
        assert!(!s.accepts(PEER, 0x0002_02E5));
        assert!(!s.accepts(PEER, 0x0002_03B3), "tags in no slot");
        assert!(
            !s.accepts(PEER, 0x0002_06E3),
            "a CPU slot the peer does not send on"
        );
        assert!(!s.accepts([192, 168, 0, 3], 0x0002_02E3), "another node IP");
        assert!(!s.consults_hash());
    }

    #[test]
    fn a_free_slot_accepts_nothing_whatever_its_tags() {
        // Slots 2 and 3 are zero: tags 0, no generation. SPIs with tags 0 are not accepted.
        let s = set(&[(0, 0), (0b101_110, 1 << 3)]);
        for generation in 0..16 {
            assert!(!s.accepts(PEER, 0x0002_0000 | generation));
        }
        assert!(!PeerSpiSet::default().accepts([0; 4], 0));
        let flagged = PeerSpiSet {
            flags: SPI_SET_CONSULT_HASH,
            ..s
        };
        assert!(flagged.consults_hash());
    }

    fn space(cidrs: &[([u8; 4], [u8; 4])]) -> ClusterPodSpace {
        let mut space = ClusterPodSpace {
            count: cidrs.len() as u32,
            ..Default::default()
        };
        for (slot, &(addr, mask)) in space.cidrs.iter_mut().zip(cidrs) {
            *slot = ClusterPodCidr { addr, mask };
        }
        space
    }

    #[test]
    fn contains_checks_every_cidr_in_use_and_nothing_else() {
        let s = space(&[
            ([10, 244, 0, 0], [255, 255, 0, 0]),
            ([172, 16, 0, 0], [255, 240, 0, 0]),
        ]);
        assert!(s.contains([10, 244, 9, 9]));
        assert!(s.contains([172, 31, 255, 255]));
        assert!(!s.contains([172, 32, 0, 0]));
        assert!(!s.contains([10, 245, 0, 1]));
        assert!(!s.contains([192, 168, 0, 1]));
    }

    #[test]
    fn slots_past_count_are_ignored_and_an_empty_space_holds_nothing() {
        let mut s = space(&[([10, 0, 0, 0], [255, 0, 0, 0])]);
        // A zeroed slot would match everything, were it read.
        s.count = 1;
        assert!(!s.contains([8, 8, 8, 8]));
        assert!(!ClusterPodSpace::default().contains([10, 0, 0, 1]));
        // A corrupt count reads no further than the array.
        s.count = u32::MAX;
        assert!(s.contains([8, 8, 8, 8]));
        assert_eq!(s.cidrs.len(), CLUSTER_POD_CIDRS_MAX);
    }

    #[test]
    fn host_bits_in_the_stored_address_do_not_hide_its_network() {
        let s = space(&[([10, 0, 0, 1], [255, 0, 0, 0])]);
        assert!(s.contains([10, 200, 0, 1]));
    }
}
