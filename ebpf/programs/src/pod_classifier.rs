//! The pod classifier: tc ingress of a pod's host-side veth, i.e. traffic leaving the pod.
//!
//! A packet bound for a remote pod gets the encrypt mark for that pod's node and the node's
//! current key generation; policy routing and the xfrm OUT policy take it from there. Anything
//! else passes untouched. The classifier never drops: the guards do that.

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};
use xsteer_common::{counters::Counter, mark};

use crate::{
    maps::{count, remote_pod_cidr},
    parse::{Frame, Vlan, tc_frame},
};

#[classifier]
pub fn pod_classifier(ctx: TcContext) -> i32 {
    let verdict = match tc_frame(&ctx, Vlan::Stop) {
        Frame::Ipv4(ip) => match remote_pod_cidr(ip.dst) {
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
        },
        // TooManyTags only comes from looking through tags, which the classifier does not.
        Frame::NotIpv4 | Frame::TooManyTags => Counter::PodNotIpv4,
        Frame::Malformed => Counter::PodMalformed,
    };
    count(verdict);
    // "Next": let any program attached after this one see the packet too.
    TC_ACT_UNSPEC
}
