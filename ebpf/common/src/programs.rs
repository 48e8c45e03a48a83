//! Names of the eBPF programs, as they appear in the object, in `bpftool prog` and in pin paths,
//! and the limits of what they parse.
//!
//! Kernel object names are cut at 15 bytes; every name here fits.

/// tc ingress of a pod's host-side veth (traffic leaving the pod): stamps the encrypt mark.
pub const POD_CLASSIFIER: &str = "pod_classifier";
/// tc egress of the uplink: drops any IPv4 packet to a pod address of another node (the
/// cluster's pod space minus this node's pod CIDRs) that would leave unencrypted.
pub const EGRESS_GUARD: &str = "egress_guard";
/// XDP on the uplink: drops anything from a pod address of the cluster, and ESP from a peer with
/// an SPI not valid for it.
pub const INGRESS_GUARD: &str = "ingress_guard";
/// The same guard at tc ingress of the uplink, attached instead of the XDP one on a veth.
pub const INGRESS_GUARD_TC: &str = "ingress_tc";

/// How many VLAN tags (802.1Q, 802.1ad) the guards look through; a frame still tagged behind
/// that many is dropped, since the kernel would strip the tags and deliver what they hide.
pub const VLAN_TAGS_MAX: usize = 4;

/// How many IPv6 extension headers the guards walk to find ESP or ICMPv6: six, one each of the
/// headers RFC 8200 (section 4.1) orders before the upper layer (hop-by-hop, destination
/// options, routing, fragment, AH, destination options again). A longer chain, or one cut
/// short by the frame, cannot be proved to end in ESP: the ingress guard drops it from a peer,
/// and the egress guard (which never needs the walk to drop a packet to a remote pod) does not
/// take it for neighbour discovery. Cilium walks four (`IPV6_MAX_HEADERS`).
pub const IPV6_EXT_HEADERS_MAX: usize = 6;
