//! The egress guard: tc egress of the uplink, the last hook before the wire.
//!
//! A packet to a pod of another node must not be on the wire in this form: encrypted traffic
//! leaves in an ESP tunnel whose outer addresses are node IPs. "Pod of another node" is any
//! address in the cluster's pod space (`cluster_pod_cidrs`) outside this node's pod CIDRs,
//! never the current peer list, so a peer whose entry is missing (record lost, key mismatch,
//! clash) is guarded like any other. Seeing such a packet here means the pod's veth has no
//! classifier yet, a policy is missing, or the host sent it itself, so it is dropped and
//! counted: the fail-closed net. Neither the source nor the protocol is consulted, so neither
//! the host, an ICMP error nor a pod sending raw protocol-50 packets slips past. A frame that
//! cannot be parsed as far as its IPv4 addresses is dropped too; non-IP frames pass.
//!
//! IPv6 is decided the same way by the IPv6 pod space (`cluster6_cidrs`) and this node's IPv6
//! pod CIDRs, with one exemption: neighbour discovery with hop limit 255 (the link's own,
//! never a forwarded pod's) passes, found by walking the extension headers. The node's own ESP
//! has node addresses outside and passes; a packet to a remote pod is dropped whatever its
//! headers, so a chain too long or cut short to walk is dropped too. While the IPv6 pod space
//! is empty, IPv6 passes untouched, malformed or not, as it did before the guard knew IPv6.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use xsteer_common::{counters::Counter, maps::ipv6_from_words};

use crate::{
    maps::{cluster_pod_space, cluster_pod_space_v6, count, is_local_pod, is_local_pod_v6},
    parse::{Frame, Ipv4, Ipv6, Vlan, tc_frame},
};

#[classifier]
pub fn egress_guard(ctx: TcContext) -> i32 {
    let verdict = match tc_frame(&ctx, Vlan::LookThrough, false) {
        Frame::Ipv4(ip) if !to_another_nodes_pod(&ip) => Counter::EgressPassed,
        Frame::Ipv4(ip) => {
            debug!(
                &ctx,
                "egress guard: dropped plaintext {:i} -> {:i}", ip.src, ip.dst
            );
            Counter::EgressLeakDropped
        }
        Frame::Ipv6(ip) if !to_another_nodes_pod_v6(&ip, ctx.data(), ctx.data_end()) => {
            Counter::EgressPassed
        }
        Frame::Ipv6(ip) => {
            debug!(
                &ctx,
                "egress guard: dropped plaintext {:i} -> {:i}",
                ipv6_from_words(ip.src),
                ipv6_from_words(ip.dst)
            );
            Counter::EgressLeakDropped
        }
        Frame::NotIp => Counter::EgressPassed,
        Frame::MalformedIpv6 if cluster_pod_space_v6().is_none() => Counter::EgressPassed,
        Frame::Malformed | Frame::MalformedIpv6 => Counter::EgressMalformedDropped,
        Frame::TooManyTags => Counter::EgressVlanDepthDropped,
    };
    count(verdict);
    match verdict {
        Counter::EgressPassed => TC_ACT_UNSPEC,
        _ => TC_ACT_SHOT as i32,
    }
}

/// Whether `ip` is bound for a pod address that is not this node's. The node's own ESP has
/// node IPs outside, so the typical packet costs one short loop over the pod space.
#[inline(always)]
fn to_another_nodes_pod(ip: &Ipv4) -> bool {
    match cluster_pod_space() {
        Some(space) => space.contains(ip.dst) && !is_local_pod(ip.dst),
        // Not filled yet (userspace fills it before attaching): at least nothing of this
        // node's own pods leaves in clear, a superset of what a peer-list guard dropped.
        None => is_local_pod(ip.src),
    }
}

/// Whether `ip` is bound for an IPv6 pod address that is not this node's, and is not the
/// link's neighbour discovery. The walk to tell ND runs only for such a packet.
#[inline(always)]
fn to_another_nodes_pod_v6(ip: &Ipv6, data: usize, data_end: usize) -> bool {
    match cluster_pod_space_v6() {
        Some(space) => {
            space.contains(ip.dst)
                && !is_local_pod_v6(ip.dst)
                && !ip.is_neighbour_discovery(data, data_end)
        }
        // Not filled: this cluster has no IPv6 pods, or userspace does not guard them yet.
        None => false,
    }
}
