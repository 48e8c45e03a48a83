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
        ClusterPodSpace, EspStats, Ipv4, LOCAL_POD_CIDRS_MAX, LocalPodCidr, PEER_NODES_MAX,
        PEER_SPI_SETS_MAX, PEER_SPIS_MAX, PeerNode, PeerSpi, PeerSpiSet, PodCidrGrid,
        REMOTE_POD_CIDRS_MAX, REMOTE_POD_SLOTS_MAX, RemotePodCidr, SLOT_CONSULT_TRIE,
    },
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
    let node_id = spi >> 16;
    let Some(set) = PEER_SPI_SETS.get(node_id) else {
        return false;
    };
    if set.accepts(node_ip, spi) {
        add(PEER_ESP_STATS.get_ptr_mut(node_id), len);
        return true;
    }
    if !set.consults_hash() {
        return false;
    }
    match PEER_SPIS.get_ptr_mut(PeerSpi { node_ip, spi }) {
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
