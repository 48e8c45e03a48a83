//! Bounds-checked parsing of Ethernet, up to [`VLAN_TAGS_MAX`] VLAN tags, IPv4, IPv6 with up to
//! [`IPV6_EXT_HEADERS_MAX`] extension headers, and the ESP SPI, bare or in UDP (RFC 3948).
//!
//! Every read is checked against `data_end` first, as the verifier demands; anything short,
//! truncated, too deeply tagged or not IP is reported, never guessed at: the classifier
//! leaves such a frame untouched, the guards drop all but "not IP".

use xsteer_common::programs::{IPV6_EXT_HEADERS_MAX, VLAN_TAGS_MAX};

/// Length of an Ethernet header.
pub const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPV6_HLEN: usize = 40;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
/// Next-header number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPV4_MIN_HLEN: usize = 20;
/// IP protocol number of ESP.
pub const IPPROTO_ESP: u8 = 50;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// Length of a UDP header.
pub const UDP_HLEN: usize = 8;
/// Bytes a tc program wants linear: Ethernet, the tags, the longest IPv4 header, a UDP header
/// (of ESP in UDP), the SPI.
pub const HEADERS_MAX: u32 = (ETH_HLEN + VLAN_TAGS_MAX * VLAN_HLEN + 60 + UDP_HLEN + 4) as u32;

/// What a frame turned out to be.
pub enum Frame {
    /// An IPv4 packet.
    Ipv4(Ipv4),
    /// An IPv6 packet (its fixed header; the extension headers are walked on demand).
    Ipv6(Ipv6),
    /// A well-formed frame that is not IP (ARP, LLDP, a VLAN tag where none is accepted).
    NotIp,
    /// Truncated Ethernet, VLAN or IPv4 header, wrong IP version, or IHL below 5 or past the
    /// end of the frame.
    Malformed,
    /// IPv6 EtherType, but the 40-byte fixed header is not all in the frame or its version is
    /// not 6. Apart from [`Frame::Malformed`] so that a guard whose IPv6 pod space is empty
    /// can leave it alone, as it leaves all IPv6.
    MalformedIpv6,
    /// Still VLAN-tagged behind [`VLAN_TAGS_MAX`] tags (only when looking through tags).
    TooManyTags,
}

/// Whether VLAN tags are looked through.
///
/// A pod's veth never carries tagged frames the host would route, so the classifier leaves
/// them alone; the uplink may, and a guard must see the IPv4 packet behind the tags.
#[derive(Clone, Copy)]
pub enum Vlan {
    /// A tagged frame is [`Frame::NotIp`].
    Stop,
    /// Up to [`VLAN_TAGS_MAX`] tags are looked through; more are [`Frame::TooManyTags`].
    LookThrough,
}

/// The fields of an IPv4 header the programs decide on. Addresses are in network byte order.
pub struct Ipv4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub protocol: u8,
    /// Offset of the IPv4 header from the start of the frame (past Ethernet and any tags).
    pub l3_offset: usize,
    /// Offset of the layer-4 header from the start of the frame.
    l4_offset: usize,
    /// True for the second and later fragments, which carry no layer-4 header.
    pub later_fragment: bool,
    /// True when the more-fragments flag is set: a first fragment carries only part of its
    /// layer-4 payload.
    pub more_fragments: bool,
}

/// What a UDP datagram to the ESP-in-UDP port carries (RFC 3948, section 2).
pub enum UdpEncapPayload {
    /// ESP: its SPI (non-zero) in host byte order.
    Esp(u32),
    /// A NAT keepalive: one byte, 0xFF.
    Keepalive,
    /// The non-ESP marker (four zero bytes), which IKE puts in front of its messages.
    NonEsp,
    /// A UDP length shorter than its header, or a payload of 1 to 3 bytes that is no
    /// keepalive: not something the kernel would decapsulate.
    Malformed,
}

/// The fields of an IPv6 fixed header the programs decide on. Addresses are two 64-bit words
/// each, loaded straight from the packet (`xsteer_common::maps::ipv6_words`): every use
/// compares them or masks them, and a 16-byte array would be copied byte by byte.
pub struct Ipv6 {
    pub src: [u64; 2],
    pub dst: [u64; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    /// Offset of the first header after the fixed one from the start of the frame.
    ext_offset: usize,
}

/// Where the walk of an IPv6 extension-header chain ended.
pub enum Upper {
    /// The upper-layer protocol (anything but hop-by-hop, routing, fragment, destination
    /// options and AH: ESP, ICMPv6, UDP, "no next header", ...) and its header's offset.
    Protocol(u8, usize),
    /// A fragment header with a non-zero offset: no upper-layer header follows in this
    /// packet; the kernel reassembles it with the first fragment, which carried it.
    LaterFragment,
    /// Still an extension header after [`IPV6_EXT_HEADERS_MAX`], or a header past the end of
    /// the frame: whether it is ESP (or ND) cannot be proved.
    Unknown,
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
    if ethertype == ETH_P_IPV6 {
        return ipv6(data, data_end, l3_offset);
    }
    if ethertype != ETH_P_IP {
        return Frame::NotIp;
    }
    let Some(header) = bytes::<IPV4_MIN_HLEN>(data, data_end, l3_offset) else {
        return Frame::Malformed;
    };
    let ihl = (header[0] & 0x0F) as usize;
    let l4_offset = l3_offset + ihl * 4;
    if header[0] >> 4 != 4 || ihl < 5 || data + l4_offset > data_end {
        return Frame::Malformed;
    }
    let flags_fragment = u16::from_be_bytes([header[6], header[7]]);
    Frame::Ipv4(Ipv4 {
        src: [header[12], header[13], header[14], header[15]],
        dst: [header[16], header[17], header[18], header[19]],
        protocol: header[9],
        l3_offset,
        l4_offset,
        later_fragment: flags_fragment & 0x1FFF != 0,
        more_fragments: flags_fragment & 0x2000 != 0,
    })
}

#[inline(always)]
fn ipv6(data: usize, data_end: usize, l3_offset: usize) -> Frame {
    let start = data + l3_offset;
    if start + IPV6_HLEN > data_end {
        return Frame::MalformedIpv6;
    }
    // SAFETY: `offset + 8 <= IPV6_HLEN`, and the header lies inside the packet, checked above.
    let word = |offset: usize| unsafe { core::ptr::read_unaligned((start + offset) as *const u64) };
    let head = word(0).to_ne_bytes();
    if head[0] >> 4 != 6 {
        return Frame::MalformedIpv6;
    }
    Frame::Ipv6(Ipv6 {
        src: [word(8), word(16)],
        dst: [word(24), word(32)],
        next_header: head[6],
        hop_limit: head[7],
        ext_offset: l3_offset + IPV6_HLEN,
    })
}

impl Ipv4 {
    /// The SPI of an ESP packet in host byte order, if its ESP header is inside the frame.
    #[inline(always)]
    pub fn esp_spi(&self, data: usize, data_end: usize) -> Option<u32> {
        bytes::<4>(data, data_end, self.l4_offset).map(u32::from_be_bytes)
    }

    /// The destination port of a UDP datagram in host byte order, if its header is inside
    /// the frame (the caller checks the protocol and that this is no later fragment).
    #[inline(always)]
    pub fn udp_dst_port(&self, data: usize, data_end: usize) -> Option<u16> {
        bytes::<2>(data, data_end, self.l4_offset + 2).map(u16::from_be_bytes)
    }

    /// What the UDP datagram carries, read as ESP in UDP; `None` when its header and the
    /// bytes that tell are not all inside the frame.
    #[inline(always)]
    pub fn udp_encap(&self, data: usize, data_end: usize) -> Option<UdpEncapPayload> {
        let header = bytes::<UDP_HLEN>(data, data_end, self.l4_offset)?;
        let payload_len = u16::from_be_bytes([header[4], header[5]]) as usize;
        if payload_len < UDP_HLEN {
            return Some(UdpEncapPayload::Malformed);
        }
        match payload_len - UDP_HLEN {
            // The header's last byte and the payload's only one: a one-byte bounds check
            // teaches this kernel's verifier nothing (see `is_neighbour_discovery`).
            1 => match bytes::<2>(data, data_end, self.l4_offset + UDP_HLEN - 1)? {
                [_, 0xFF] => Some(UdpEncapPayload::Keepalive),
                _ => Some(UdpEncapPayload::Malformed),
            },
            0..=3 => Some(UdpEncapPayload::Malformed),
            _ => match u32::from_be_bytes(bytes::<4>(data, data_end, self.l4_offset + UDP_HLEN)?) {
                0 => Some(UdpEncapPayload::NonEsp),
                spi => Some(UdpEncapPayload::Esp(spi)),
            },
        }
    }

    /// Whether the UDP header can be stripped with `bpf_skb_adjust_room(BPF_ADJ_ROOM_NET)`,
    /// which removes bytes right after a 20-byte IPv4 header behind a plain Ethernet header:
    /// no options, no VLAN tags in the frame, no fragment.
    #[inline(always)]
    pub fn udp_header_strippable(&self) -> bool {
        self.l3_offset == ETH_HLEN
            && self.l4_offset == ETH_HLEN + IPV4_MIN_HLEN
            && !self.more_fragments
            && !self.later_fragment
    }
}

impl Ipv6 {
    /// Walks the extension headers, at most [`IPV6_EXT_HEADERS_MAX`] of them, to the
    /// upper-layer protocol, as the kernel's IPv6 input would before handing the packet to
    /// ESP or ICMPv6.
    ///
    /// The loop has a constant bound (LLVM unrolls it; the verifier sees each step's offset
    /// grow by at most 2,048 bytes), and every header is read whole or not at all: hop-by-hop,
    /// routing and destination options are `(len + 1) * 8` bytes, AH `(len + 2) * 4`, a
    /// fragment header 8.
    #[inline(always)]
    pub fn upper(&self, data: usize, data_end: usize) -> Upper {
        let mut next = self.next_header;
        let mut offset = self.ext_offset;
        for _ in 0..IPV6_EXT_HEADERS_MAX {
            if !is_ext_header(next) {
                return Upper::Protocol(next, offset);
            }
            // Every extension header starts with its next header and its length; a fragment
            // header's offset field follows.
            let Some(h) = bytes::<4>(data, data_end, offset) else {
                return Upper::Unknown;
            };
            let len = match next {
                NEXTHDR_FRAGMENT => {
                    if u16::from_be_bytes([h[2], h[3]]) >> 3 != 0 {
                        return Upper::LaterFragment;
                    }
                    8
                }
                NEXTHDR_AUTH => (h[1] as usize + 2) * 4,
                _ => (h[1] as usize + 1) * 8,
            };
            next = h[0];
            offset += len;
        }
        if is_ext_header(next) {
            return Upper::Unknown;
        }
        Upper::Protocol(next, offset)
    }

    /// The SPI of an ESP packet in host byte order, if the walk ends at ESP and its header is
    /// inside the frame; `Err(())` when the walk cannot tell.
    #[inline(always)]
    pub fn esp_spi(&self, data: usize, data_end: usize) -> Result<Option<u32>, ()> {
        match self.upper(data, data_end) {
            Upper::Protocol(IPPROTO_ESP, offset) => bytes::<4>(data, data_end, offset)
                .map(|spi| Some(u32::from_be_bytes(spi)))
                .ok_or(()),
            Upper::Protocol(..) | Upper::LaterFragment => Ok(None),
            Upper::Unknown => Err(()),
        }
    }

    /// Whether this is ICMPv6 neighbour discovery (router solicitation and advertisement,
    /// neighbour solicitation and advertisement, redirect: types 133..=137) with hop limit
    /// 255. RFC 4861 has receivers drop ND with any other hop limit, and a packet a router
    /// forwarded (a pod's, through its node) has less, so the exemption covers the link's
    /// own ND only.
    #[inline(always)]
    pub fn is_neighbour_discovery(&self, data: usize, data_end: usize) -> bool {
        if self.hop_limit != 255 {
            return false;
        }
        match self.upper(data, data_end) {
            // The whole 4-byte ICMPv6 header: a one-byte bounds check compiles to
            // `start >= data_end`, from which this kernel's verifier learns no readable byte.
            Upper::Protocol(IPPROTO_ICMPV6, offset) => {
                matches!(bytes::<4>(data, data_end, offset), Some([133..=137, ..]))
            }
            _ => false,
        }
    }
}

#[inline(always)]
fn is_ext_header(next: u8) -> bool {
    matches!(
        next,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_FRAGMENT | NEXTHDR_AUTH | NEXTHDR_DEST
    )
}

/// Parses the frame of a tc packet, pulling its headers into the linear area only when a read
/// the programs make falls outside it.
///
/// A paged skb may hold fewer linear bytes than its headers span; parsing it as is would call
/// a real IPv4 packet malformed, which the classifier leaves unmarked and the egress guard
/// drops. Pulling is not free, though: `bpf_skb_pull_data` makes the head writable, which
/// copies the head of a cloned skb (every TCP segment a pod sends is a clone), and a TCP GSO
/// skb holds its 66 header bytes linear and its payload in pages. So the frame is parsed as it
/// is first, and pulled and parsed again only when what was read is not enough.
#[inline(always)]
///
/// `udp_payload` says whether the caller reads the start of a UDP payload (the ingress guard,
/// with ESP in UDP on): the other programs never do, and pulling a pod's UDP GSO skb for it
/// would copy its head for nothing.
pub fn tc_frame(ctx: &aya_ebpf::programs::TcContext, vlan: Vlan, udp_payload: bool) -> Frame {
    let wanted = if ctx.len() < HEADERS_MAX {
        ctx.len()
    } else {
        HEADERS_MAX
    };
    let (data, data_end) = (ctx.data(), ctx.data_end());
    // Only a verdict leaves the first parse: a frame kept across the pull made LLVM copy
    // registers the 6.12 verifier calls uninitialised.
    if data + wanted as usize > data_end
        && !frame(data, data_end, vlan).read_whole(data, data_end, udp_payload)
    {
        // On failure the bounds checks see the short linear area: an IPv4 header that is not
        // all in it is Malformed, so the egress guard fails closed.
        let _ = ctx.pull_data(wanted);
    }
    frame(ctx.data(), ctx.data_end(), vlan)
}

impl Frame {
    /// Whether every read the programs make of this frame lies in `[data, data_end)`: the IP
    /// header, and the 4 bytes after it when they are an ESP SPI or an ICMPv6 type (neighbour
    /// discovery), or, when `udp_payload`, the 12 of a UDP header and the SPI of ESP in UDP.
    /// An IPv6 extension-header chain is walked only after a pull, as it is rare and its end
    /// unknown until walked.
    #[inline(always)]
    fn read_whole(&self, data: usize, data_end: usize, udp_payload: bool) -> bool {
        match self {
            Frame::Ipv4(ip) => match ip.protocol {
                IPPROTO_ESP => data + ip.l4_offset + 4 <= data_end,
                IPPROTO_UDP if udp_payload => data + ip.l4_offset + UDP_HLEN + 4 <= data_end,
                _ => true,
            },
            Frame::Ipv6(ip) => match ip.next_header {
                IPPROTO_ESP | IPPROTO_ICMPV6 => data + ip.ext_offset + 4 <= data_end,
                next => !is_ext_header(next),
            },
            Frame::NotIp | Frame::TooManyTags => true,
            Frame::Malformed | Frame::MalformedIpv6 => false,
        }
    }
}
