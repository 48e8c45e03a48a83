//! The ingress guard: XDP on the uplink, before the stack and before any crypto.
//!
//! Checks, in this order:
//! - a frame that cannot be parsed as far as its IPv4 addresses (truncated, bad version or IHL,
//!   still VLAN-tagged behind the looked-through tags) is dropped: the kernel might still
//!   deliver what it hides; non-IP frames pass;
//! - anything from an address in the cluster's pod space (`cluster_pod_cidrs`) is plaintext or
//!   spoofed, whatever its protocol (tunnel-mode ESP carries node IPs outside): dropped. The pod
//!   space, not the current peer list, decides, so a peer whose entry is missing is no gap;
//! - ESP from a peer node must carry an SPI that peer may currently use: anything else is
//!   dropped before xfrm spends a decryption on it, and valid ESP is counted per peer.
//!
//! ESP from hosts that are not peers belongs to someone else's IPsec and passes untouched. The
//! typical packet, ESP from a peer, costs the parse, one short loop over the pod space and the
//! set of valid SPIs its SPI's node ID indexes: array reads all, which the verifier inlines.
//! The (peer, SPI) hash, a call into the kernel, is read only for a node ID whose set is
//! flagged as incomplete, and `peer_nodes` only for ESP the sets did not accept.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use aya_log_ebpf::debug;
use xsteer_common::counters::Counter;

use crate::{
    maps::{cluster_pod_space, count, count_valid_esp, is_local_pod, is_peer},
    parse::{Frame, IPPROTO_ESP, Ipv4, Vlan, frame},
};

#[xdp]
pub fn ingress_guard(ctx: XdpContext) -> u32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let ip = match frame(data, data_end, Vlan::LookThrough) {
        Frame::Ipv4(ip) => ip,
        Frame::NotIpv4 => return pass(),
        Frame::Malformed => return dropped(Counter::IngressMalformedDropped),
        Frame::TooManyTags => return dropped(Counter::IngressVlanDepthDropped),
    };
    if from_a_pod(&ip) {
        debug!(
            &ctx,
            "ingress guard: dropped plaintext {:i} -> {:i}", ip.src, ip.dst
        );
        return dropped(Counter::IngressPlaintextDropped);
    }
    // Later fragments carry no SPI; reassembly drops them if the first was dropped.
    if ip.protocol != IPPROTO_ESP || ip.later_fragment {
        return pass();
    }
    let Some(spi) = ip.esp_spi(data, data_end) else {
        return pass();
    };
    if count_valid_esp(ip.src, spi, (data_end - data) as u64) {
        count(Counter::IngressEspAccepted);
        return xdp_action::XDP_PASS;
    }
    if is_peer(ip.src) {
        debug!(
            &ctx,
            "ingress guard: dropped ESP from {:i} with SPI {:x}", ip.src, spi
        );
        return dropped(Counter::IngressBadSpiDropped);
    }
    pass()
}

/// Whether `ip` comes from a pod address of the cluster.
#[inline(always)]
fn from_a_pod(ip: &Ipv4) -> bool {
    match cluster_pod_space() {
        Some(space) => space.contains(ip.src),
        // Not filled yet (userspace fills it before attaching): at least nothing reaches this
        // node's own pods in clear, a superset of what a peer-list guard dropped.
        None => is_local_pod(ip.dst),
    }
}

#[inline(always)]
fn pass() -> u32 {
    count(Counter::IngressPassed);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn dropped(counter: Counter) -> u32 {
    count(counter);
    xdp_action::XDP_DROP
}
