//! The maps, as declared in the object, and the helpers that read them.
//!
//! Layouts and names come from `xsteer_common::maps`; every map is BTF-described so that
//! `bpftool map dump` prints field names.

use aya_ebpf::{
    btf_maps::{HashMap, LpmTrie, PerCpuArray, PerCpuHashMap},
    macros::btf_map,
    maps::lpm_trie::Key,
};
use xsteer_common::{
    counters::Counter,
    maps::{
        EspStats, Ipv4, LOCAL_POD_CIDRS_MAX, LocalPodCidr, PEER_NODES_MAX, PEER_SPIS_MAX, PeerNode,
        PeerSpi, REMOTE_POD_CIDRS_MAX, RemotePodCidr,
    },
};

#[btf_map(name = "remote_pod_cidrs")]
static REMOTE_POD_CIDRS: LpmTrie<Ipv4, RemotePodCidr, { REMOTE_POD_CIDRS_MAX as usize }> =
    LpmTrie::new();

#[btf_map(name = "local_pod_cidrs")]
static LOCAL_POD_CIDRS: LpmTrie<Ipv4, LocalPodCidr, { LOCAL_POD_CIDRS_MAX as usize }> =
    LpmTrie::new();

#[btf_map(name = "peer_nodes")]
static PEER_NODES: HashMap<Ipv4, PeerNode, { PEER_NODES_MAX as usize }> = HashMap::new();

#[btf_map(name = "peer_spis")]
static PEER_SPIS: PerCpuHashMap<PeerSpi, EspStats, { PEER_SPIS_MAX as usize }> =
    PerCpuHashMap::new();

#[btf_map(name = "counters")]
static COUNTERS: PerCpuArray<u64, { Counter::COUNT as usize }> = PerCpuArray::new();

/// The remote pod CIDR that contains `addr`, if any.
#[inline(always)]
pub fn remote_pod_cidr(addr: Ipv4) -> Option<RemotePodCidr> {
    REMOTE_POD_CIDRS.get(&Key::new(32, addr)).copied()
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
#[inline(always)]
pub fn count_valid_esp(node_ip: Ipv4, spi: u32, len: u64) -> bool {
    match PEER_SPIS.get_ptr_mut(PeerSpi { node_ip, spi }) {
        Some(stats) => {
            // SAFETY: a per-CPU slot; nothing else writes it while this program runs here.
            unsafe {
                (*stats).packets += 1;
                (*stats).bytes += len;
            }
            true
        }
        None => false,
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
