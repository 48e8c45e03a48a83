//! The pod classifier: tc ingress of a pod's host-side veth, i.e. traffic leaving the pod.
//!
//! A packet bound for a remote pod, IPv4 or IPv6, gets the encrypt mark for that pod's node and
//! the node's current key generation (one mark layout for both); policy routing and the xfrm
//! OUT policy take it from there. Anything else passes untouched. The classifier never drops:
//! the guards do that. It reads only the fixed IPv6 header: the destination decides, and no
//! extension header changes it (a routing header's segments are the pod's to send).

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};
use xsteer_common::{counters::Counter, mark};

use crate::{
    maps::{count, remote_pod_cidr, remote_pod_cidr_v6},
    parse::{Frame, Vlan, tc_frame},
};

#[classifier]
pub fn pod_classifier(ctx: TcContext) -> i32 {
    let remote = match tc_frame(&ctx, Vlan::Stop, false) {
        Frame::Ipv4(ip) => remote_pod_cidr(ip.dst),
        Frame::Ipv6(ip) => remote_pod_cidr_v6(ip.dst),
        // TooManyTags only comes from looking through tags, which the classifier does not.
        Frame::NotIp | Frame::TooManyTags => {
            count(Counter::PodNotIpv4);
            return TC_ACT_UNSPEC;
        }
        Frame::Malformed | Frame::MalformedIpv6 => {
            count(Counter::PodMalformed);
            return TC_ACT_UNSPEC;
        }
    };
    let verdict = match remote {
        Some(remote) => {
            // SAFETY: `skb` is the context pointer the kernel handed this program.
            let current = unsafe { (*ctx.skb.skb).mark };
            ctx.set_mark(mark::stamp(
                current,
                mark::encrypt(remote.generation, remote.node_id),
            ));
            Counter::PodMarked
        }
        None => Counter::PodUnmatched,
    };
    count(verdict);
    // "Next": let any program attached after this one see the packet too.
    TC_ACT_UNSPEC
}
