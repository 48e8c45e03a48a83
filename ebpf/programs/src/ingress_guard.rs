//! The ingress guard: on the uplink, before the stack and before any crypto.
//!
//! One guard, two hooks: XDP ([`ingress_guard`]) where the driver runs it natively, tc ingress
//! ([`ingress_tc`]) on a veth, where XDP costs a copy of every packet. Userspace attaches one of
//! them per uplink; both run [`verdict`] and count the same counters.
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
//! ESP in UDP (RFC 3948), which peers behind NAT send, gets the same SPI check when it arrives on
//! this node's encapsulation port (`udp_encap`; none while 0): at tc an accepted datagram then
//! loses its UDP header and goes on as plain ESP, so that xfrm decrypts it with no socket
//! open on the port, and stays decryptable across agent restarts as the guard does. Anything
//! else to that port is dropped, save IKE's non-ESP marker; NAT keepalives are counted apart.
//! At XDP the same checks run but nothing is stripped: the agent attaches at tc whenever the
//! port is in use.
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

use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{
    EbpfContext,
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_adj_room_mode, bpf_xfrm_state, xdp_action},
    helpers::generated::bpf_skb_get_xfrm_state,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use xsteer_common::{counters::Counter, maps::ipv6_from_words};

use crate::{
    maps::{
        cluster_pod_space, cluster_pod_space_v6, count, count_valid_esp, count_valid_esp_v6,
        is_local_pod, is_peer, is_peer_v6, udp_encap_port,
    },
    parse::{
        ETH_HLEN, Frame, IPPROTO_ESP, IPPROTO_UDP, Ipv4, Ipv6, UDP_HLEN, UdpEncapPayload, Vlan,
        frame, tc_frame,
    },
};

/// The guard at XDP, for uplinks whose driver runs XDP natively (real NICs).
#[xdp]
pub fn ingress_guard(ctx: XdpContext) -> u32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let frame = frame(data, data_end, Vlan::LookThrough);
    // XDP runs before xfrm: nothing here has been decrypted.
    let decrypted = || false;
    match verdict(
        &ctx,
        frame,
        data,
        data_end,
        (data_end - data) as u64,
        decrypted,
    ) {
        // ESP in UDP passes as it is: nothing decapsulates it behind XDP, which is why the
        // agent attaches at tc when the encapsulation port is in use.
        Counter::IngressPassed | Counter::IngressEspAccepted | Counter::IngressUdpEspAccepted => {
            xdp_action::XDP_PASS
        }
        _ => xdp_action::XDP_DROP,
    }
}

/// The same guard at tc ingress, for veth uplinks: XDP on a veth makes the kernel copy every
/// GSO packet into an XDP buffer, which costs more than the guard (measured in
/// docs/benchmarks.md), while tc sees the skb as it is.
///
/// tc ingress also sees what xfrm decrypted: a tunnel-mode SA hands the inner packet back to
/// the uplink's receive path, pod address and all. Such a packet carries the secpath of the SA
/// that decrypted it, which nothing from the wire can bring along (crossing a veth clears it),
/// so it passes; the kernel's IN and FWD policies then check which SA that was.
#[classifier]
pub fn ingress_tc(ctx: TcContext) -> i32 {
    let frame = tc_frame(&ctx, Vlan::LookThrough, udp_encap_port().is_some());
    let decrypted = || decrypted_by_xfrm(&ctx);
    match verdict(
        &ctx,
        frame,
        ctx.data(),
        ctx.data_end(),
        ctx.len() as u64,
        decrypted,
    ) {
        Counter::IngressPassed | Counter::IngressEspAccepted | Counter::IngressDecryptedPassed => {
            TC_ACT_UNSPEC
        }
        Counter::IngressUdpEspAccepted => match strip_udp_header(&ctx) {
            Ok(()) => TC_ACT_UNSPEC,
            // The packet may be half rewritten; xfrm would drop it anyway.
            Err(_) => TC_ACT_SHOT as i32,
        },
        _ => TC_ACT_SHOT as i32,
    }
}

/// Turns ESP in UDP into plain ESP: removes the 8-byte UDP header after the IPv4 header, sets
/// the protocol to ESP and shortens the total length, keeping the header checksum right.
/// The caller has checked the frame is `Ipv4::udp_header_strippable`.
#[inline(always)]
fn strip_udp_header(ctx: &TcContext) -> Result<(), i64> {
    ctx.adjust_room(-(UDP_HLEN as i32), bpf_adj_room_mode::BPF_ADJ_ROOM_NET, 0)?;
    // Both fields as the 16-bit words the checksum sums, in packet byte order.
    const TOT_LEN: usize = ETH_HLEN + 2;
    const TTL_PROTOCOL: usize = ETH_HLEN + 8;
    const CHECKSUM: usize = ETH_HLEN + 10;
    let old_len: u16 = ctx.load(TOT_LEN)?;
    let new_len = (u16::from_be(old_len).wrapping_sub(UDP_HLEN as u16)).to_be();
    ctx.store(TOT_LEN, &new_len, 0)?;
    ctx.l3_csum_replace(CHECKSUM, u64::from(old_len), u64::from(new_len), 2)?;
    let old_word: u16 = ctx.load(TTL_PROTOCOL)?;
    let [ttl, _] = old_word.to_ne_bytes();
    let new_word = u16::from_ne_bytes([ttl, IPPROTO_ESP]);
    ctx.store(TTL_PROTOCOL, &new_word, 0)?;
    ctx.l3_csum_replace(CHECKSUM, u64::from(old_word), u64::from(new_word), 2)?;
    Ok(())
}

/// Whether xfrm decrypted the packet in `ctx`: it carries a secpath.
#[inline(always)]
fn decrypted_by_xfrm(ctx: &TcContext) -> bool {
    let mut state = MaybeUninit::<bpf_xfrm_state>::uninit();
    // SAFETY: the helper writes at most `size` bytes into `state`, which holds that many.
    let found = unsafe {
        bpf_skb_get_xfrm_state(
            ctx.skb.skb,
            0,
            state.as_mut_ptr(),
            size_of::<bpf_xfrm_state>() as u32,
            0,
        )
    };
    found == 0
}

/// The checks above, for either hook: counts the verdict and returns its counter.
/// `data`..`data_end` is what can be read of the frame, `len` the packet's whole length;
/// `decrypted` says whether xfrm has already decrypted it (asked only of packets from a pod
/// address; such a packet passes).
#[inline(always)]
fn verdict<C: EbpfContext>(
    ctx: &C,
    frame: Frame,
    data: usize,
    data_end: usize,
    len: u64,
    decrypted: impl FnOnce() -> bool,
) -> Counter {
    let ip = match frame {
        Frame::Ipv4(ip) => ip,
        Frame::Ipv6(ip) => return counted(ipv6(ctx, &ip, data, data_end, len, decrypted)),
        Frame::NotIp => return counted(Counter::IngressPassed),
        Frame::MalformedIpv6 if cluster_pod_space_v6().is_none() => {
            return counted(Counter::IngressPassed);
        }
        Frame::Malformed | Frame::MalformedIpv6 => {
            return counted(Counter::IngressMalformedDropped);
        }
        Frame::TooManyTags => return counted(Counter::IngressVlanDepthDropped),
    };
    if from_a_pod(&ip) {
        if decrypted() {
            return counted(Counter::IngressDecryptedPassed);
        }
        debug!(
            ctx,
            "ingress guard: dropped plaintext {:i} -> {:i}", ip.src, ip.dst
        );
        return counted(Counter::IngressPlaintextDropped);
    }
    // Later fragments carry no SPI; reassembly drops them if the first was dropped.
    if ip.protocol == IPPROTO_UDP && !ip.later_fragment {
        if let Some(port) = udp_encap_port() {
            if ip.udp_dst_port(data, data_end) == Some(port) {
                return counted(esp_in_udp(ctx, &ip, data, data_end, len));
            }
        }
    }
    if ip.protocol != IPPROTO_ESP || ip.later_fragment {
        return counted(Counter::IngressPassed);
    }
    let Some(spi) = ip.esp_spi(data, data_end) else {
        return counted(Counter::IngressPassed);
    };
    if count_valid_esp(ip.src, spi, len) {
        return counted(Counter::IngressEspAccepted);
    }
    if is_peer(ip.src) {
        debug!(
            ctx,
            "ingress guard: dropped ESP from {:i} with SPI {:x}", ip.src, spi
        );
        return counted(Counter::IngressBadSpiDropped);
    }
    counted(Counter::IngressPassed)
}

/// The checks for a datagram to the encapsulation port, which belongs to xsteer: ESP in UDP
/// must carry an SPI valid for its sender and be strippable; keepalives are dropped, IKE's
/// non-ESP marker passes (no socket takes it), anything else is dropped. The verdict's
/// counter, not yet counted.
#[inline(always)]
fn esp_in_udp<C: EbpfContext>(
    ctx: &C,
    ip: &Ipv4,
    data: usize,
    data_end: usize,
    len: u64,
) -> Counter {
    match ip.udp_encap(data, data_end) {
        Some(UdpEncapPayload::Esp(spi)) if ip.udp_header_strippable() => {
            if count_valid_esp(ip.src, spi, len) {
                return Counter::IngressUdpEspAccepted;
            }
            debug!(
                ctx,
                "ingress guard: dropped ESP in UDP from {:i} with SPI {:x}", ip.src, spi
            );
            Counter::IngressBadSpiDropped
        }
        Some(UdpEncapPayload::Keepalive) => Counter::IngressKeepaliveDropped,
        Some(UdpEncapPayload::NonEsp) => Counter::IngressPassed,
        // Tagged, with options, fragmented, too short or cut off: nothing here or in the
        // kernel would decapsulate it.
        _ => Counter::IngressMalformedDropped,
    }
}

/// The checks above, for IPv6; the verdict's counter, not yet counted.
#[inline(always)]
fn ipv6<C: EbpfContext>(
    ctx: &C,
    ip: &Ipv6,
    data: usize,
    data_end: usize,
    len: u64,
    decrypted: impl FnOnce() -> bool,
) -> Counter {
    if let Some(space) = cluster_pod_space_v6() {
        if space.contains(ip.src) && !ip.is_neighbour_discovery(data, data_end) {
            if decrypted() {
                return Counter::IngressDecryptedPassed;
            }
            debug!(
                ctx,
                "ingress guard: dropped plaintext {:i} -> {:i}",
                ipv6_from_words(ip.src),
                ipv6_from_words(ip.dst)
            );
            return Counter::IngressPlaintextDropped;
        }
    }
    let spi = match ip.esp_spi(data, data_end) {
        Ok(Some(spi)) => spi,
        // Not ESP, or a later fragment: reassembly drops it if the first was dropped.
        Ok(None) => return Counter::IngressPassed,
        Err(()) if is_peer_v6(ip.src) => return Counter::IngressMalformedDropped,
        Err(()) => return Counter::IngressPassed,
    };
    if count_valid_esp_v6(ip.src, spi, len) {
        return Counter::IngressEspAccepted;
    }
    if is_peer_v6(ip.src) {
        debug!(
            ctx,
            "ingress guard: dropped ESP from {:i} with SPI {:x}",
            ipv6_from_words(ip.src),
            spi
        );
        return Counter::IngressBadSpiDropped;
    }
    Counter::IngressPassed
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
fn counted(counter: Counter) -> Counter {
    count(counter);
    counter
}
