//! The maps, as declared in the object, and the helpers that read them.
//!
//! Layouts and names come from `xsteer_common::maps`; every map is BTF-described so that
//! `bpftool map dump` prints field names.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap},
    macros::btf_map,
    maps::lpm_trie::Key,
};
use xsteer_common::{
    counters::Counter,
    maps::{
        ClusterPodSpace, ClusterPodSpaceV6, EspStats, Ipv4, Ipv6, LOCAL_POD_CIDRS_MAX,
        LOCAL_POD_CIDRS_V6_MAX, LocalPodCidr, PEER_NODES_MAX, PEER_NODES_V6_MAX, PEER_SPI_SETS_MAX,
        PEER_SPIS_MAX, PeerNode, PeerSpi, PeerSpiSet, PodCidrGrid, PodCidrGridV6,
        REMOTE_POD_CIDRS_MAX, REMOTE_POD_CIDRS_V6_MAX, REMOTE_POD_SLOTS_MAX,
        REMOTE_POD_SLOTS_V6_MAX, RemotePodCidr, SLOT_CONSULT_TRIE, UdpEncap, ipv6_from_words,
        ipv6_words,
    },
    spi,
};

#[btf_map(name = "remote_pod_cidrs")]
static REMOTE_POD_CIDRS: LpmTrie<Ipv4, RemotePodCidr, { REMOTE_POD_CIDRS_MAX as usize }> =
    LpmTrie::new();

#[btf_map(name = "pod_cidr_grid")]
static POD_CIDR_GRID: Array<PodCidrGrid, 1> = Array::new();

#[btf_map(name = "remote_pod_slots")]
static REMOTE_POD_SLOTS: Array<RemotePodCidr, { REMOTE_POD_SLOTS_MAX as usize }> = Array::new();

#[btf_map(name = "cluster_pod_cidrs")]
static CLUSTER_POD_CIDRS: Array<ClusterPodSpace, 1> = Array::new();

#[btf_map(name = "local_pod_cidrs")]
static LOCAL_POD_CIDRS: LpmTrie<Ipv4, LocalPodCidr, { LOCAL_POD_CIDRS_MAX as usize }> =
    LpmTrie::new();

#[btf_map(name = "peer_nodes")]
static PEER_NODES: HashMap<Ipv4, PeerNode, { PEER_NODES_MAX as usize }> = HashMap::new();

#[btf_map(name = "peer_spis")]
static PEER_SPIS: PerCpuHashMap<PeerSpi, EspStats, { PEER_SPIS_MAX as usize }> =
    PerCpuHashMap::new();

#[btf_map(name = "peer_spi_sets")]
static PEER_SPI_SETS: Array<PeerSpiSet, { PEER_SPI_SETS_MAX as usize }> = Array::new();

#[btf_map(name = "peer_esp_stats")]
static PEER_ESP_STATS: PerCpuArray<EspStats, { PEER_SPI_SETS_MAX as usize }> = PerCpuArray::new();

#[btf_map(name = "counters")]
static COUNTERS: PerCpuArray<u64, { Counter::COUNT as usize }> = PerCpuArray::new();

#[btf_map(name = "remote6_cidrs")]
static REMOTE_POD_CIDRS_V6: LpmTrie<Ipv6, RemotePodCidr, { REMOTE_POD_CIDRS_V6_MAX as usize }> =
    LpmTrie::new();

#[btf_map(name = "pod6_cidr_grid")]
static POD_CIDR_GRID_V6: Array<PodCidrGridV6, 1> = Array::new();

#[btf_map(name = "remote6_slots")]
static REMOTE_POD_SLOTS_V6: Array<RemotePodCidr, { REMOTE_POD_SLOTS_V6_MAX as usize }> =
    Array::new();

#[btf_map(name = "cluster6_cidrs")]
static CLUSTER_POD_CIDRS_V6: Array<ClusterPodSpaceV6, 1> = Array::new();

#[btf_map(name = "local6_cidrs")]
static LOCAL_POD_CIDRS_V6: LpmTrie<Ipv6, LocalPodCidr, { LOCAL_POD_CIDRS_V6_MAX as usize }> =
    LpmTrie::new();

#[btf_map(name = "peer6_nodes")]
static PEER_NODES_V6: HashMap<Ipv6, PeerNode, { PEER_NODES_V6_MAX as usize }> = HashMap::new();

#[btf_map(name = "peer6_addrs")]
static PEER_ADDRS_V6: Array<Ipv6, { PEER_NODES_V6_MAX as usize }> = Array::new();

#[btf_map(name = "udp_encap")]
static UDP_ENCAP: Array<UdpEncap, 1> = Array::new();

/// The UDP port ESP in UDP arrives on, or `None` while this node receives plain ESP only.
#[inline(always)]
pub fn udp_encap_port() -> Option<u16> {
    UDP_ENCAP
        .get(0)
        .map(|encap| encap.port)
        .filter(|&port| port != 0)
}

/// The remote pod CIDR that contains `addr`, if any: from the grid's slot when `addr` lies in
/// the grid and the slot can answer alone, from the trie otherwise.
#[inline(always)]
pub fn remote_pod_cidr(addr: Ipv4) -> Option<RemotePodCidr> {
    if let Some(grid) = POD_CIDR_GRID.get(0) {
        if grid.enabled != 0 {
            let offset = u32::from_be_bytes(addr).wrapping_sub(u32::from_be_bytes(grid.base));
            // Inside the grid when the offset fits in its host bits; `& 31` keeps the shifts
            // defined for the verifier (userspace only enables prefixes 8..=24).
            let host_bits = (32 - u32::from(grid.prefix_len)) & 31;
            if offset >> host_bits == 0 {
                let index = offset >> ((32 - u32::from(grid.slot_prefix_len)) & 31);
                if let Some(slot) = REMOTE_POD_SLOTS.get(index) {
                    if slot.flags & SLOT_CONSULT_TRIE == 0 {
                        return (slot.node_id != 0).then_some(*slot);
                    }
                }
            }
        }
    }
    REMOTE_POD_CIDRS.get(&Key::new(32, addr)).copied()
}

/// The remote IPv6 pod CIDR that contains `addr`, if any: from the /64 slot of the grid when
/// `addr` lies in it and the slot can answer alone, from the trie otherwise.
///
/// Why a grid and not a hash keyed by the /64: a hash lookup, like a trie's, is a call into
/// the kernel (about 20 ns on the development machine, docs/benchmarks.md), over the 15 ns the
/// classifier may cost; an array read is inlined by the verifier. The /64 of a cluster's
/// pods lie in one prefix of at most 16 bits more (a /48 holds 65,536), as IPv4's /24s lie
/// in the cluster CIDR.
#[inline(always)]
pub fn remote_pod_cidr_v6(addr: [u64; 2]) -> Option<RemotePodCidr> {
    if let Some(grid) = POD_CIDR_GRID_V6.get(0) {
        if grid.enabled != 0 {
            let prefix = u64::from_be_bytes(addr[0].to_ne_bytes());
            let offset = prefix.wrapping_sub(u64::from_be_bytes(grid.base));
            // Inside the grid when the offset fits in the /64's bits past the cluster prefix;
            // `& 63` keeps the shift defined for the verifier (userspace enables 48..=64).
            let host_bits = (64 - u32::from(grid.prefix_len)) & 63;
            // The second test only matters for a grid wider than userspace writes: it keeps
            // the index from wrapping in the cast.
            if offset >> host_bits == 0 && offset < u64::from(REMOTE_POD_SLOTS_V6_MAX) {
                if let Some(slot) = REMOTE_POD_SLOTS_V6.get(offset as u32) {
                    if slot.flags & SLOT_CONSULT_TRIE == 0 {
                        return (slot.node_id != 0).then_some(*slot);
                    }
                }
            }
        }
    }
    REMOTE_POD_CIDRS_V6.get(&key_v6(addr).key).copied()
}

/// An IPv6 LPM key placed so that its address is 8-aligned on the stack.
#[repr(C, align(8))]
struct KeyV6 {
    _pad: u32,
    key: Key<Ipv6>,
}

/// The /128 key of `addr`. `Key<[u8; 16]>` alone is 4-aligned, and with misaligned loads
/// allowed LLVM copies the address into it in 8-byte stores at offset 4, which the verifier
/// refuses on the stack ("misaligned stack access"); four bytes in front put the address on an
/// 8-byte boundary.
#[inline(always)]
fn key_v6(addr: [u64; 2]) -> KeyV6 {
    KeyV6 {
        _pad: 0,
        key: Key::new(128, ipv6_from_words(addr)),
    }
}

/// The cluster's pod space, or `None` while it has not been filled (no CIDR in it).
#[inline(always)]
pub fn cluster_pod_space() -> Option<&'static ClusterPodSpace> {
    CLUSTER_POD_CIDRS.get(0).filter(|space| space.count != 0)
}

/// Whether `addr` is in one of this node's pod CIDRs.
#[inline(always)]
pub fn is_local_pod(addr: Ipv4) -> bool {
    LOCAL_POD_CIDRS.get(&Key::new(32, addr)).is_some()
}

/// The cluster's IPv6 pod space, or `None` while it has not been filled: the guards then
/// leave IPv6 alone.
#[inline(always)]
pub fn cluster_pod_space_v6() -> Option<&'static ClusterPodSpaceV6> {
    CLUSTER_POD_CIDRS_V6.get(0).filter(|space| space.count != 0)
}

/// Whether `addr` is in one of this node's IPv6 pod CIDRs.
#[inline(always)]
pub fn is_local_pod_v6(addr: [u64; 2]) -> bool {
    LOCAL_POD_CIDRS_V6.get(&key_v6(addr).key).is_some()
}

/// Whether `node_addr` is the IPv6 address of a peer node.
#[inline(always)]
pub fn is_peer_v6(node_addr: [u64; 2]) -> bool {
    PEER_NODES_V6.get_ptr(ipv6_from_words(node_addr)).is_some()
}

/// Counts an ESP-over-IPv6 packet of `len` bytes if `spi` is currently valid for the peer at
/// `node_addr`.
///
/// The node ID the SPI carries indexes two arrays the verifier inlines: that node's IPv6
/// address in `peer6_addrs`, which must be the sender, and its set of valid SPIs, the same
/// set ESP over IPv4 is checked against. A flagged set sends what it does not accept on to
/// the (node IP, SPI) hash under the set's IPv4 node IP field.
#[inline(always)]
pub fn count_valid_esp_v6(node_addr: [u64; 2], spi: u32, len: u64) -> bool {
    let node_id = spi::node_id(spi);
    let Some(addr) = PEER_ADDRS_V6.get(node_id) else {
        return false;
    };
    let [a_hi, a_lo] = ipv6_words(addr);
    let [s_hi, s_lo] = node_addr;
    // A zero slot is a node ID with no IPv6 address, not `::`.
    if a_hi | a_lo == 0 || a_hi != s_hi || a_lo != s_lo {
        return false;
    }
    let Some(set) = PEER_SPI_SETS.get(node_id) else {
        return false;
    };
    if set.slot_of(spi).is_some() {
        add(PEER_ESP_STATS.get_ptr_mut(node_id), len);
        return true;
    }
    if !set.consults_hash() || !set.has_cpu_slot(spi) {
        return false;
    }
    match PEER_SPIS.get_ptr_mut(PeerSpi {
        node_ip: set.node_ip,
        spi: spi::shared(spi),
    }) {
        Some(stats) => {
            add(Some(stats), len);
            true
        }
        None => false,
    }
}

/// Whether `node_ip` is a peer node.
#[inline(always)]
pub fn is_peer(node_ip: Ipv4) -> bool {
    PEER_NODES.get_ptr(node_ip).is_some()
}

/// Counts an ESP packet of `len` bytes if `spi` is currently valid for the peer at `node_ip`.
///
/// The set of the node ID the SPI carries decides, with one array read the verifier inlines;
/// only a set flagged as not holding all of its node ID's SPIs sends what it does not accept
/// on to the (peer, SPI) hash.
#[inline(always)]
pub fn count_valid_esp(node_ip: Ipv4, spi: u32, len: u64) -> bool {
    let node_id = spi::node_id(spi);
    let Some(set) = PEER_SPI_SETS.get(node_id) else {
        return false;
    };
    if set.accepts(node_ip, spi) {
        add(PEER_ESP_STATS.get_ptr_mut(node_id), len);
        return true;
    }
    if !set.consults_hash() || !set.has_cpu_slot(spi) {
        return false;
    }
    match PEER_SPIS.get_ptr_mut(PeerSpi {
        node_ip,
        spi: spi::shared(spi),
    }) {
        Some(stats) => {
            add(Some(stats), len);
            true
        }
        None => false,
    }
}

/// Adds one packet of `len` bytes to a per-CPU `stats` slot.
#[inline(always)]
fn add(stats: Option<*mut EspStats>, len: u64) {
    if let Some(stats) = stats {
        // SAFETY: a per-CPU slot; nothing else writes it while this program runs here.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += len;
        }
    }
}

/// Adds one to `counter` on this CPU.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot; nothing else writes it while this program runs here.
        unsafe { *slot += 1 }
    }
}
