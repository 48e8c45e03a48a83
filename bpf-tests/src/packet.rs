//! Builders for the frames the tests feed the programs, well-formed or deliberately not.

use std::net::Ipv4Addr;

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
