//! Bounds-checked parsing of Ethernet, up to [`VLAN_TAGS_MAX`] VLAN tags, IPv4 and the ESP SPI.
//!
//! Every read is checked against `data_end` first, as the verifier demands; anything short,
//! truncated, too deeply tagged or not IPv4 is reported, never guessed at: the classifier
//! leaves such a frame untouched, the guards drop all but "not IPv4".

use xsteer_common::programs::VLAN_TAGS_MAX;

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPV4_MIN_HLEN: usize = 20;
/// IP protocol number of ESP.
pub const IPPROTO_ESP: u8 = 50;
/// Bytes a tc program wants linear: Ethernet, the tags, the longest IPv4 header, the SPI.
pub const HEADERS_MAX: u32 = (ETH_HLEN + VLAN_TAGS_MAX * VLAN_HLEN + 60 + 4) as u32;

/// What a frame turned out to be.
pub enum Frame {
    /// An IPv4 packet.
    Ipv4(Ipv4),
    /// A well-formed frame that is not IPv4 (IPv6, ARP, a VLAN tag where none is accepted).
    NotIpv4,
    /// Truncated Ethernet, VLAN or IPv4 header, wrong IP version, or IHL below 5 or past the
    /// end of the frame.
    Malformed,
    /// Still VLAN-tagged behind [`VLAN_TAGS_MAX`] tags (only when looking through tags).
    TooManyTags,
}

/// Whether VLAN tags are looked through.
///
/// A pod's veth never carries tagged frames the host would route, so the classifier leaves
/// them alone; the uplink may, and a guard must see the IPv4 packet behind the tags.
#[derive(Clone, Copy)]
pub enum Vlan {
    /// A tagged frame is [`Frame::NotIpv4`].
    Stop,
    /// Up to [`VLAN_TAGS_MAX`] tags are looked through; more are [`Frame::TooManyTags`].
    LookThrough,
}

/// The fields of an IPv4 header the programs decide on. Addresses are in network byte order.
pub struct Ipv4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub protocol: u8,
    /// Offset of the layer-4 header from the start of the frame.
    l4_offset: usize,
    /// True for the second and later fragments, which carry no layer-4 header.
    pub later_fragment: bool,
}

#[inline(always)]
fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

#[inline(always)]
fn bytes<const N: usize>(data: usize, data_end: usize, offset: usize) -> Option<[u8; N]> {
    let start = data + offset;
    if start + N > data_end {
        return None;
    }
    // SAFETY: [start, start + N) lies inside the packet, checked just above.
    Some(unsafe { core::ptr::read_unaligned(start as *const [u8; N]) })
}

/// Parses the frame in `[data, data_end)`.
#[inline(always)]
pub fn frame(data: usize, data_end: usize, vlan: Vlan) -> Frame {
    let Some(ethertype) = bytes::<2>(data, data_end, 12) else {
        return Frame::Malformed;
    };
    let mut ethertype = u16::from_be_bytes(ethertype);
    let mut l3_offset = ETH_HLEN;
    if let Vlan::LookThrough = vlan {
        // A constant bound, so the verifier sees the loop end (LLVM unrolls it).
        for _ in 0..VLAN_TAGS_MAX {
            if !is_vlan(ethertype) {
                break;
            }
            let Some(inner) = bytes::<2>(data, data_end, l3_offset + 2) else {
                return Frame::Malformed;
            };
            ethertype = u16::from_be_bytes(inner);
            l3_offset += VLAN_HLEN;
        }
        // The kernel would strip these tags too and deliver what they hide.
        if is_vlan(ethertype) {
            return Frame::TooManyTags;
        }
    }
    if ethertype != ETH_P_IP {
        return Frame::NotIpv4;
    }
    let Some(header) = bytes::<IPV4_MIN_HLEN>(data, data_end, l3_offset) else {
        return Frame::Malformed;
    };
    let ihl = (header[0] & 0x0F) as usize;
    let l4_offset = l3_offset + ihl * 4;
    if header[0] >> 4 != 4 || ihl < 5 || data + l4_offset > data_end {
        return Frame::Malformed;
    }
    let fragment_offset = u16::from_be_bytes([header[6], header[7]]) & 0x1FFF;
    Frame::Ipv4(Ipv4 {
        src: [header[12], header[13], header[14], header[15]],
        dst: [header[16], header[17], header[18], header[19]],
        protocol: header[9],
        l4_offset,
        later_fragment: fragment_offset != 0,
    })
}

impl Ipv4 {
    /// The SPI of an ESP packet in host byte order, if its ESP header is inside the frame.
    #[inline(always)]
    pub fn esp_spi(&self, data: usize, data_end: usize) -> Option<u32> {
        bytes::<4>(data, data_end, self.l4_offset).map(u32::from_be_bytes)
    }
}

/// Parses the frame of a tc packet, first pulling its headers into the linear area.
///
/// A paged skb may hold fewer linear bytes than its headers span; parsing it as is would call
/// a real IPv4 packet malformed, which the classifier leaves unmarked and the egress guard
/// drops.
#[inline(always)]
pub fn tc_frame(ctx: &aya_ebpf::programs::TcContext, vlan: Vlan) -> Frame {
    let wanted = if ctx.len() < HEADERS_MAX {
        ctx.len()
    } else {
        HEADERS_MAX
    };
    if ctx.data() + wanted as usize > ctx.data_end() {
        // On failure the bounds checks below see the short linear area: an IPv4 header that
        // is not all in it is Malformed, so the egress guard fails closed.
        let _ = ctx.pull_data(wanted);
    }
    frame(ctx.data(), ctx.data_end(), vlan)
}
