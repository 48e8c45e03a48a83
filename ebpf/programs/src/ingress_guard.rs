//! The ingress guard: XDP on the uplink, before the stack and before any crypto.
//!
//! Two checks, both cheap:
//! - a packet from a remote pod to a local pod that is not inside ESP is plaintext or spoofed
//!   (tunnel-mode ESP carries node IPs outside): dropped;
//! - ESP from a peer node must carry an SPI that peer may currently use: anything else is
//!   dropped before xfrm spends a decryption on it, and valid ESP is counted per (peer, SPI).
//!
//! ESP from hosts that are not peers belongs to someone else's IPsec and passes untouched.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use aya_log_ebpf::debug;
use xsteer_common::counters::Counter;

use crate::{
    maps::{count, count_valid_esp, is_local_pod, is_peer, remote_pod_cidr},
    parse::{Frame, IPPROTO_ESP, Vlan, frame},
};

#[xdp]
pub fn ingress_guard(ctx: XdpContext) -> u32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let Frame::Ipv4(ip) = frame(data, data_end, Vlan::LookThrough) else {
        return pass();
    };
    if remote_pod_cidr(ip.src).is_some() && is_local_pod(ip.dst) {
        count(Counter::IngressPlaintextDropped);
        debug!(
            &ctx,
            "ingress guard: dropped plaintext {:i} -> {:i}", ip.src, ip.dst
        );
        return xdp_action::XDP_DROP;
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
        count(Counter::IngressBadSpiDropped);
        debug!(
            &ctx,
            "ingress guard: dropped ESP from {:i} with SPI {:x}", ip.src, spi
        );
        return xdp_action::XDP_DROP;
    }
    pass()
}

#[inline(always)]
fn pass() -> u32 {
    count(Counter::IngressPassed);
    xdp_action::XDP_PASS
}
