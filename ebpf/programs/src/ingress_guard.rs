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
//!
//! IPv6 gets the same checks through its own maps: anything from the IPv6 pod space
//! (`cluster6_cidrs`) is dropped, save the link's neighbour discovery (hop limit 255); ESP over
//! IPv6 from a peer's IPv6 address (`peer6_nodes`, `peer6_addrs`) must carry an SPI of that
//! peer's set. ESP is found by walking the extension headers; a chain from a peer too long or
//! cut short to walk is dropped, since the kernel would walk it further and might find ESP the
//! guard never checked. While the IPv6 pod space is empty nothing from a pod is dropped, and
//! with no IPv6 peers nothing else is, as before the guard knew IPv6.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use aya_log_ebpf::debug;
use xsteer_common::{counters::Counter, maps::ipv6_from_words};

use crate::{
    maps::{
        cluster_pod_space, cluster_pod_space_v6, count, count_valid_esp, count_valid_esp_v6,
        is_local_pod, is_peer, is_peer_v6,
    },
    parse::{Frame, IPPROTO_ESP, Ipv4, Ipv6, Vlan, frame},
};

#[xdp]
pub fn ingress_guard(ctx: XdpContext) -> u32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let ip = match frame(data, data_end, Vlan::LookThrough) {
        Frame::Ipv4(ip) => ip,
        Frame::Ipv6(ip) => return ipv6(&ctx, &ip, data, data_end),
        Frame::NotIp => return pass(),
        Frame::MalformedIpv6 if cluster_pod_space_v6().is_none() => return pass(),
        Frame::Malformed | Frame::MalformedIpv6 => {
            return dropped(Counter::IngressMalformedDropped);
        }
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

/// The checks above, for IPv6.
#[inline(always)]
fn ipv6(ctx: &XdpContext, ip: &Ipv6, data: usize, data_end: usize) -> u32 {
    if let Some(space) = cluster_pod_space_v6() {
        if space.contains(ip.src) && !ip.is_neighbour_discovery(data, data_end) {
            debug!(
                ctx,
                "ingress guard: dropped plaintext {:i} -> {:i}",
                ipv6_from_words(ip.src),
                ipv6_from_words(ip.dst)
            );
            return dropped(Counter::IngressPlaintextDropped);
        }
    }
    let spi = match ip.esp_spi(data, data_end) {
        Ok(Some(spi)) => spi,
        // Not ESP, or a later fragment: reassembly drops it if the first was dropped.
        Ok(None) => return pass(),
        Err(()) if is_peer_v6(ip.src) => return dropped(Counter::IngressMalformedDropped),
        Err(()) => return pass(),
    };
    if count_valid_esp_v6(ip.src, spi, (data_end - data) as u64) {
        count(Counter::IngressEspAccepted);
        return xdp_action::XDP_PASS;
    }
    if is_peer_v6(ip.src) {
        debug!(
            ctx,
            "ingress guard: dropped ESP from {:i} with SPI {:x}",
            ipv6_from_words(ip.src),
            spi
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
