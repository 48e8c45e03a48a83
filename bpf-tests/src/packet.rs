//! Builders for the frames the tests feed the programs, well-formed or deliberately not.

use std::net::{Ipv4Addr, Ipv6Addr};

/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86DD;
/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// EtherType of an 802.1Q tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// EtherType of an 802.1ad (outer, QinQ) tag.
pub const ETH_P_8021AD: u16 = 0x88A8;

/// EtherType of LLDP.
pub const ETH_P_LLDP: u16 = 0x88CC;

/// IP protocol numbers used in tests: ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;
/// ESP.
pub const IPPROTO_ESP: u8 = 50;
/// ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// "No next header" (IPv6).
pub const IPPROTO_NONE: u8 = 59;

/// `frame` (untagged IPv4) with its IPv4 header checksum filled in.
pub fn with_ipv4_checksum(mut frame: Vec<u8>) -> Vec<u8> {
    let ihl = usize::from(frame[14] & 0x0F) * 4;
    frame[24..26].copy_from_slice(&[0, 0]);
    let sum = ones_complement_sum(&frame[14..14 + ihl]);
    frame[24..26].copy_from_slice(&(!sum).to_be_bytes());
    frame
}

/// Whether the IPv4 header of `frame` (untagged) has a valid checksum.
pub fn ipv4_checksum_ok(frame: &[u8]) -> bool {
    let ihl = usize::from(frame[14] & 0x0F) * 4;
    ones_complement_sum(&frame[14..14 + ihl]) == 0xFFFF
}

fn ones_complement_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

/// An Ethernet frame: destination, source MAC, then `ethertype` and `payload`.
pub fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Wraps a frame's EtherType and payload in a VLAN tag of type `tpid`.
pub fn vlan_tagged(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut tagged = frame[..12].to_vec();
    tagged.extend_from_slice(&tpid.to_be_bytes());
    tagged.extend_from_slice(&vid.to_be_bytes());
    tagged.extend_from_slice(&frame[12..]);
    tagged
}

/// Wraps a frame in `tags` VLAN tags of type `tpid` with VLAN ID 0 (priority tags).
pub fn vlan_tagged_times(frame: &[u8], tpid: u16, tags: usize) -> Vec<u8> {
    (0..tags).fold(frame.to_vec(), |f, _| vlan_tagged(&f, tpid, 0))
}

/// An IPv4 header and payload, with knobs for the odd cases.
#[derive(Clone)]
pub struct Ipv4 {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol number.
    pub protocol: u8,
    /// Header options (padded to 4 bytes); IHL follows from their length.
    pub options: Vec<u8>,
    /// The fragment offset field, in 8-byte units.
    pub fragment_offset: u16,
    /// The more-fragments flag.
    pub more_fragments: bool,
    /// Overrides the version nibble.
    pub version: u8,
    /// Overrides IHL (in 32-bit words) when set.
    pub ihl: Option<u8>,
    /// What follows the header.
    pub payload: Vec<u8>,
}

impl Ipv4 {
    /// A UDP packet from `src` to `dst` with a small payload.
    pub fn udp(src: Ipv4Addr, dst: Ipv4Addr) -> Ipv4 {
        Ipv4 {
            src,
            dst,
            protocol: IPPROTO_UDP,
            options: Vec::new(),
            fragment_offset: 0,
            more_fragments: false,
            version: 4,
            ihl: None,
            payload: [0x30, 0x39, 0x30, 0x39, 0, 12, 0, 0, b'p', b'i', b'n', b'g'].to_vec(),
        }
    }

    /// An ESP packet from `src` to `dst` with `spi` and sequence number 1.
    pub fn esp(src: Ipv4Addr, dst: Ipv4Addr, spi: u32) -> Ipv4 {
        let mut payload = spi.to_be_bytes().to_vec();
        payload.extend_from_slice(&1u32.to_be_bytes());
        payload.extend_from_slice(&[0xAB; 32]);
        Ipv4 {
            protocol: IPPROTO_ESP,
            payload,
            ..Ipv4::udp(src, dst)
        }
    }

    /// ESP in UDP (RFC 3948) from `src` to UDP port `dport` of `dst`, with `spi` and
    /// sequence number 1; the UDP checksum is 0, as the kernel sends it.
    pub fn esp_in_udp(src: Ipv4Addr, dst: Ipv4Addr, dport: u16, spi: u32) -> Ipv4 {
        let esp = Ipv4::esp(src, dst, spi).payload;
        Ipv4::udp_datagram(src, dst, 4500, dport, &esp)
    }

    /// A UDP datagram from `src`:`sport` to `dst`:`dport` carrying `payload`, checksum 0.
    pub fn udp_datagram(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> Ipv4 {
        let mut datagram = sport.to_be_bytes().to_vec();
        datagram.extend_from_slice(&dport.to_be_bytes());
        datagram.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        datagram.extend_from_slice(&[0, 0]);
        datagram.extend_from_slice(payload);
        Ipv4 {
            payload: datagram,
            ..Ipv4::udp(src, dst)
        }
    }

    /// An ICMP "destination unreachable" from `src` to `dst` about `original`, carrying its
    /// header and first 8 bytes, as a router or the host sends one.
    pub fn icmp_unreachable(src: Ipv4Addr, dst: Ipv4Addr, original: &Ipv4) -> Ipv4 {
        let mut payload = vec![3, 1, 0, 0, 0, 0, 0, 0];
        payload.extend_from_slice(&original.to_bytes()[..28]);
        Ipv4 {
            protocol: IPPROTO_ICMP,
            payload,
            ..Ipv4::udp(src, dst)
        }
    }

    /// The header and payload as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut options = self.options.clone();
        options.resize(options.len().div_ceil(4) * 4, 0);
        let ihl = self.ihl.unwrap_or(5 + (options.len() / 4) as u8);
        let total = (20 + options.len() + self.payload.len()) as u16;
        let flags_fragment =
            (u16::from(self.more_fragments) << 13) | (self.fragment_offset & 0x1FFF);
        let mut bytes = vec![(self.version << 4) | (ihl & 0x0F), 0];
        bytes.extend_from_slice(&total.to_be_bytes());
        bytes.extend_from_slice(&[0x12, 0x34]);
        bytes.extend_from_slice(&flags_fragment.to_be_bytes());
        bytes.extend_from_slice(&[64, self.protocol, 0, 0]);
        bytes.extend_from_slice(&self.src.octets());
        bytes.extend_from_slice(&self.dst.octets());
        bytes.extend_from_slice(&options);
        bytes.extend_from_slice(&self.payload);
        bytes
    }

    /// This packet in an Ethernet frame.
    pub fn frame(&self) -> Vec<u8> {
        ethernet(ETH_P_IP, &self.to_bytes())
    }
}

/// An IPv6 extension header, as [`Ipv6`] chains them.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    /// Hop-by-hop options (0), `len` 8-byte units past the first 8 bytes (PadN inside).
    HopByHop(u8),
    /// Destination options (60), sized as hop-by-hop.
    DestOpts(u8),
    /// A routing header (43) of type 4 (segment routing), sized as hop-by-hop.
    Routing(u8),
    /// A fragment header (44): offset in 8-byte units, more-fragments flag.
    Fragment(u16, bool),
    /// An authentication header (51): `len` as on the wire, `(len + 2) * 4` bytes.
    Auth(u8),
}

impl Ext {
    fn number(self) -> u8 {
        match self {
            Ext::HopByHop(_) => 0,
            Ext::DestOpts(_) => 60,
            Ext::Routing(_) => 43,
            Ext::Fragment(..) => 44,
            Ext::Auth(_) => 51,
        }
    }

    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            Ext::HopByHop(len) | Ext::DestOpts(len) => {
                // PadN filling the header: option type 1, its length.
                let mut b = vec![next, len, 1, 4 + 8 * len];
                b.resize(8 + 8 * usize::from(len), 0);
                b
            }
            Ext::Routing(len) => {
                let mut b = vec![next, len, 4, 0];
                b.resize(8 + 8 * usize::from(len), 0);
                b
            }
            Ext::Fragment(offset, more) => {
                let field = offset << 3 | u16::from(more);
                let mut b = vec![next, 0];
                b.extend_from_slice(&field.to_be_bytes());
                b.extend_from_slice(&0x1234_5678u32.to_be_bytes());
                b
            }
            Ext::Auth(len) => {
                let mut b = vec![next, len, 0, 0];
                b.extend_from_slice(&0x0000_0100u32.to_be_bytes());
                b.resize((usize::from(len) + 2) * 4, 0xAA);
                b
            }
        }
    }
}

/// An IPv6 header, its extension headers and payload, with knobs for the odd cases.
#[derive(Clone)]
pub struct Ipv6 {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// Hop limit.
    pub hop_limit: u8,
    /// Extension headers, in order, between the fixed header and the payload.
    pub ext: Vec<Ext>,
    /// The upper-layer protocol, named by the last header.
    pub protocol: u8,
    /// Overrides the version nibble.
    pub version: u8,
    /// What follows the headers.
    pub payload: Vec<u8>,
}

impl Ipv6 {
    /// A UDP packet from `src` to `dst` with a small payload.
    pub fn udp(src: Ipv6Addr, dst: Ipv6Addr) -> Ipv6 {
        Ipv6 {
            src,
            dst,
            hop_limit: 64,
            ext: Vec::new(),
            protocol: IPPROTO_UDP,
            version: 6,
            payload: [0x30, 0x39, 0x30, 0x39, 0, 12, 0, 0, b'p', b'i', b'n', b'g'].to_vec(),
        }
    }

    /// An ESP packet from `src` to `dst` with `spi` and sequence number 1.
    pub fn esp(src: Ipv6Addr, dst: Ipv6Addr, spi: u32) -> Ipv6 {
        let mut payload = spi.to_be_bytes().to_vec();
        payload.extend_from_slice(&1u32.to_be_bytes());
        payload.extend_from_slice(&[0xAB; 32]);
        Ipv6 {
            protocol: IPPROTO_ESP,
            payload,
            ..Ipv6::udp(src, dst)
        }
    }

    /// An ICMPv6 message of `icmp_type` (code 0) with hop limit 255, as neighbour discovery
    /// sends it (133..=137; others for contrast).
    pub fn icmpv6(src: Ipv6Addr, dst: Ipv6Addr, icmp_type: u8) -> Ipv6 {
        let mut payload = vec![icmp_type, 0, 0, 0, 0, 0, 0, 0];
        payload.extend_from_slice(&dst.octets());
        Ipv6 {
            protocol: IPPROTO_ICMPV6,
            hop_limit: 255,
            payload,
            ..Ipv6::udp(src, dst)
        }
    }

    /// The same packet with `ext` as its extension headers.
    pub fn with_ext(&self, ext: &[Ext]) -> Ipv6 {
        Ipv6 {
            ext: ext.to_vec(),
            ..self.clone()
        }
    }

    /// The headers and payload as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut rest = Vec::new();
        for (i, ext) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(self.protocol, |e| e.number());
            rest.extend(ext.bytes(next));
        }
        rest.extend_from_slice(&self.payload);
        let first = self.ext.first().map_or(self.protocol, |e| e.number());
        let mut bytes = vec![self.version << 4, 0, 0, 0];
        bytes.extend_from_slice(&(rest.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&[first, self.hop_limit]);
        bytes.extend_from_slice(&self.src.octets());
        bytes.extend_from_slice(&self.dst.octets());
        bytes.extend(rest);
        bytes
    }

    /// The length in bytes of the frame up to the end of the last extension header.
    pub fn headers_len(&self) -> usize {
        self.frame().len() - self.payload.len()
    }

    /// This packet in an Ethernet frame.
    pub fn frame(&self) -> Vec<u8> {
        ethernet(ETH_P_IPV6, &self.to_bytes())
    }
}

/// A minimal IPv6 header (UDP, no payload) in an Ethernet frame.
pub fn ipv6_frame() -> Vec<u8> {
    let mut header = vec![0x60, 0, 0, 0, 0, 0, IPPROTO_UDP, 64];
    header.extend_from_slice(&[0xFD; 16]);
    header.extend_from_slice(&[0xFE; 16]);
    ethernet(ETH_P_IPV6, &header)
}

/// An LLDP frame (chassis ID, port ID, TTL, end).
pub fn lldp_frame() -> Vec<u8> {
    let tlvs = [
        0x02, 0x07, 0x04, 0x02, 0, 0, 0, 0, 0x01, // chassis ID: MAC
        0x04, 0x02, 0x07, b'1', // port ID: local "1"
        0x06, 0x02, 0, 120, // TTL 120 s
        0, 0, // end
    ];
    ethernet(ETH_P_LLDP, &tlvs)
}

/// An ARP request in an Ethernet frame.
pub fn arp_frame() -> Vec<u8> {
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 10, 244, 1, 5]);
    arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 244, 1, 1]);
    ethernet(ETH_P_ARP, &arp)
}
