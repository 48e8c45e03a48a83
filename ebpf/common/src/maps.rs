//! Names and key/value layouts of the maps the programs read and the agent writes.
//!
//! Addresses are IPv4 in network byte order (`[u8; 4]`, as they sit in the packet), so neither
//! side converts on the hot path and `bpftool` prints them as four readable octets. Every map is
//! pinned under the agent's pin directory by the name given here.

/// LPM trie: remote pod CIDR → [`RemotePodCidr`]. Read by the pod classifier and both guards.
pub const REMOTE_POD_CIDRS: &str = "remote_pod_cidrs";
/// LPM trie: local pod CIDR → [`LocalPodCidr`]. Read by both guards.
pub const LOCAL_POD_CIDRS: &str = "local_pod_cidrs";
/// Hash: peer node IP → [`PeerNode`]. Tells the ingress guard which ESP senders are peers.
pub const PEER_NODES: &str = "peer_nodes";
/// Per-CPU hash: [`PeerSpi`] → [`EspStats`]. The SPIs currently valid per peer, with counts.
pub const PEER_SPIS: &str = "peer_spis";
/// Per-CPU array of packet counters indexed by [`crate::counters::Counter`].
pub const COUNTERS: &str = "counters";
/// Array of one [`PodCidrGrid`]: the cluster CIDR whose /24s index [`REMOTE_POD_SLOTS`].
pub const POD_CIDR_GRID: &str = "pod_cidr_grid";
/// Array: slot of the grid → [`RemotePodCidr`], a constant-time front for [`REMOTE_POD_CIDRS`].
pub const REMOTE_POD_SLOTS: &str = "remote_pod_slots";

/// Capacity of [`REMOTE_POD_CIDRS`]: one CIDR per node ID with room for extra pools.
pub const REMOTE_POD_CIDRS_MAX: u32 = 65_536;
/// Capacity of [`REMOTE_POD_SLOTS`]: a /8 cluster CIDR in /24s.
pub const REMOTE_POD_SLOTS_MAX: u32 = 65_536;
/// [`RemotePodCidr::flags`] bit of a slot that cannot answer alone (a CIDR finer than the slot
/// lies in it): the trie decides.
pub const SLOT_CONSULT_TRIE: u8 = 0x01;
/// Capacity of [`LOCAL_POD_CIDRS`].
pub const LOCAL_POD_CIDRS_MAX: u32 = 16;
/// Capacity of [`PEER_NODES`]: every node ID.
pub const PEER_NODES_MAX: u32 = 65_536;
/// Capacity of [`PEER_SPIS`]: two live generations per peer (four during a rotation overlap).
pub const PEER_SPIS_MAX: u32 = 4 * 65_536;

/// An IPv4 address in network byte order.
pub type Ipv4 = [u8; 4];

/// Where to send a packet bound for a remote pod CIDR, and with which key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemotePodCidr {
    /// The node that owns the CIDR (1..=65535): bits 16..31 of the encrypt mark.
    pub node_id: u16,
    /// The key generation to send with (1..=15): bits 12..15 of the encrypt mark.
    pub spi: u8,
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

/// A pod CIDR of this node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalPodCidr {
    /// This node's ID, for readability in map dumps.
    pub node_id: u16,
    /// Reserved, zero.
    pub flags: u16,
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

/// An ESP SPI a peer may currently send with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerSpi {
    /// The peer's node IP: the outer source of its ESP packets.
    pub node_ip: Ipv4,
    /// The 32-bit wire SPI, in host byte order.
    pub spi: u32,
}

/// ESP traffic accepted from one peer under one SPI (per CPU; sum for the total).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EspStats {
    /// Packets accepted.
    pub packets: u64,
    /// Bytes accepted, link-layer frame included.
    pub bytes: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, `Copy`, and have no padding and no invalid bit
    // patterns, which is what `aya::Pod` requires.
    unsafe impl aya::Pod for super::RemotePodCidr {}
    unsafe impl aya::Pod for super::LocalPodCidr {}
    unsafe impl aya::Pod for super::PeerNode {}
    unsafe impl aya::Pod for super::PeerSpi {}
    unsafe impl aya::Pod for super::EspStats {}
    unsafe impl aya::Pod for super::PodCidrGrid {}
}
