//! The egress guard: tc egress of the uplink, the last hook before the wire.
//!
//! A packet whose source is a local pod and whose destination is a remote pod must not be on
//! the wire in this form: encrypted traffic leaves in an ESP tunnel whose outer addresses are
//! node IPs. Seeing one here means the pod's veth has no classifier yet, or a policy is
//! missing, so the packet is dropped and counted: the fail-closed net. The protocol is not
//! consulted, so a pod cannot slip past by sending raw protocol-50 packets.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use xsteer_common::counters::Counter;

use crate::{
    maps::{count, is_local_pod, remote_pod_cidr},
    parse::{Frame, Vlan, tc_frame},
};

#[classifier]
pub fn egress_guard(ctx: TcContext) -> i32 {
    if let Frame::Ipv4(ip) = tc_frame(&ctx, Vlan::LookThrough) {
        if is_local_pod(ip.src) && remote_pod_cidr(ip.dst).is_some() {
            count(Counter::EgressLeakDropped);
            debug!(
                &ctx,
                "egress guard: dropped plaintext {:i} -> {:i}", ip.src, ip.dst
            );
            return TC_ACT_SHOT as i32;
        }
    }
    count(Counter::EgressPassed);
    TC_ACT_UNSPEC
}
