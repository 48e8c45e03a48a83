//! What the nodes put on the wire: an AF_PACKET socket on each node's uplink keeps the frames
//! the node SENDS. Received frames are left out on purpose: the kernel shows ESP it has
//! decrypted to packet sockets a second time, in the clear, on ingress.
//!
//! [`Capture::take`] gives the IPv4 packets; [`Capture::take_all`] IPv4 and IPv6, each IPv6
//! packet with its extension-header chain walked to the upper-layer protocol.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result};

use super::netns::run_in;

/// IP protocol number of ESP.
pub const IPPROTO_ESP: u8 = 50;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// ICMPv6 neighbour solicitation.
pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
/// ICMPv6 neighbour advertisement.
pub const ND_NEIGHBOR_ADVERT: u8 = 136;

/// IPv6 extension headers, as they appear in a chain.
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTH: u8 = 51;
const DEST_OPTS: u8 = 60;
/// Longer chains than this are not walked to the end ([`Packet6::proto`] is then the
/// extension header the walk stopped at).
const EXT_HEADERS_MAX: usize = 16;

/// An IPv4 packet seen leaving a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// IP protocol number.
    pub proto: u8,
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// The SPI, for ESP (host order).
    pub spi: Option<u32>,
    /// The UDP header and the start of its payload, for UDP.
    pub udp: Option<Udp>,
}

/// What the wire shows of a UDP datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Udp {
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Payload length, from the UDP length field.
    pub payload_len: u16,
    /// The first four payload bytes (zero where there are fewer), in network order.
    pub head: u32,
}

impl Packet {
    /// Whether this is ESP.
    pub fn is_esp(&self) -> bool {
        self.proto == IPPROTO_ESP
    }

    /// The SPI of ESP in UDP (RFC 3948) from or to one of `ports`: a datagram long enough for
    /// an ESP header whose first four bytes are not the non-ESP marker.
    pub fn esp_in_udp_spi(&self, ports: &[u16]) -> Option<u32> {
        let udp = self.udp?;
        let ours = ports.contains(&udp.sport) || ports.contains(&udp.dport);
        (ours && udp.payload_len >= 8 && udp.head != 0).then_some(udp.head)
    }

    /// Whether this is a NAT keepalive (one byte, 0xFF) from or to one of `ports`.
    pub fn is_nat_keepalive(&self, ports: &[u16]) -> bool {
        self.udp.is_some_and(|udp| {
            (ports.contains(&udp.sport) || ports.contains(&udp.dport))
                && udp.payload_len == 1
                && udp.head >> 24 == 0xFF
        })
    }

    /// Whether this is plaintext UDP to `dst`.
    pub fn is_udp_to(&self, dst: Ipv4Addr) -> bool {
        self.proto == IPPROTO_UDP && self.dst == dst
    }
}

/// An IPv6 packet seen leaving a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet6 {
    /// The upper-layer protocol: the next header after the extension headers (ESP counts as
    /// upper-layer here), or the extension header where a too-long or cut chain stopped.
    pub proto: u8,
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// The extension headers in order (hop-by-hop 0, routing 43, fragment 44, AH 51,
    /// destination options 60).
    pub ext: Vec<u8>,
    /// The SPI, for ESP (host order).
    pub spi: Option<u32>,
    /// The ICMPv6 type, for ICMPv6 (of a first fragment or an unfragmented packet).
    pub icmp_type: Option<u8>,
}

impl Packet6 {
    /// Whether this is ESP.
    pub fn is_esp(&self) -> bool {
        self.proto == IPPROTO_ESP
    }

    /// Whether this is a neighbour solicitation or advertisement.
    pub fn is_nd(&self) -> bool {
        matches!(
            self.icmp_type,
            Some(ND_NEIGHBOR_SOLICIT | ND_NEIGHBOR_ADVERT)
        )
    }
}

/// An IP packet seen leaving a node, of either family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpPacket {
    /// IPv4.
    V4(Packet),
    /// IPv6.
    V6(Packet6),
}

/// A running capture of what one interface sends.
pub struct Capture {
    socket: OwnedFd,
}

impl Capture {
    /// Starts capturing what `ifname` in `netns` sends.
    pub fn start(netns: &str, ifname: &'static str) -> Result<Capture> {
        let socket = run_in(netns, move || {
            open(ifname).context("opening a packet socket")
        })?;
        Ok(Capture { socket })
    }

    /// Starts capturing what `ifname` in this network namespace sends.
    pub fn here(ifname: &str) -> Result<Capture> {
        let socket =
            open(ifname).with_context(|| format!("opening a packet socket on {ifname}"))?;
        Ok(Capture { socket })
    }

    /// Every IPv4 packet sent since the last call.
    pub fn take(&self) -> Result<Vec<Packet>> {
        Ok(self
            .take_all()?
            .into_iter()
            .filter_map(|p| match p {
                IpPacket::V4(p) => Some(p),
                IpPacket::V6(_) => None,
            })
            .collect())
    }

    /// Every IPv4 and IPv6 packet sent since the last call.
    pub fn take_all(&self) -> Result<Vec<IpPacket>> {
        let mut packets = Vec::new();
        let mut frame = [0u8; 2048];
        loop {
            // SAFETY: zeroed sockaddr_ll is valid; recvfrom writes at most its size.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `frame` and `from` are valid for the lengths passed.
            let n = unsafe {
                libc::recvfrom(
                    self.socket.as_raw_fd(),
                    frame.as_mut_ptr().cast(),
                    frame.len(),
                    libc::MSG_DONTWAIT,
                    (&raw mut from).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::WouldBlock {
                    return Ok(packets);
                }
                return Err(err).context("reading the capture");
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                let frame = &frame[..n as usize];
                packets.extend(
                    parse(frame)
                        .map(IpPacket::V4)
                        .or_else(|| parse6(frame).map(IpPacket::V6)),
                );
            }
        }
    }
}

fn open(ifname: &str) -> io::Result<OwnedFd> {
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); owned at once below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all)) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname).map_err(io::Error::other)?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    // Bursts must not overflow the socket between two takes.
    let rcvbuf: libc::c_int = 8 << 20;
    // SAFETY: valid fd, option value of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const rcvbuf).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    // SAFETY: zeroed sockaddr_ll is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = all;
    addr.sll_ifindex = index as i32;
    // SAFETY: `addr` is a sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            fd,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// The IPv4 header of an Ethernet frame (and the SPI of ESP), if it carries IPv4.
pub fn parse(frame: &[u8]) -> Option<Packet> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0F) * 4;
    let addr = |at: usize| -> Option<Ipv4Addr> {
        Some(Ipv4Addr::from(
            <[u8; 4]>::try_from(ip.get(at..at + 4)?).ok()?,
        ))
    };
    let proto = *ip.get(9)?;
    let spi = (proto == IPPROTO_ESP)
        .then(|| Some(u32::from_be_bytes(ip.get(ihl..ihl + 4)?.try_into().ok()?)))
        .flatten();
    let later_fragment = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x1FFF != 0;
    let udp = (proto == IPPROTO_UDP && !later_fragment)
        .then(|| {
            let header = ip.get(ihl..ihl + 8)?;
            let word = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
            let mut head = [0u8; 4];
            let payload = ip.get(ihl + 8..).unwrap_or_default();
            let n = payload.len().min(4);
            head[..n].copy_from_slice(&payload[..n]);
            Some(Udp {
                sport: word(0),
                dport: word(2),
                payload_len: word(4).saturating_sub(8),
                head: u32::from_be_bytes(head),
            })
        })
        .flatten();
    Some(Packet {
        proto,
        src: addr(12)?,
        dst: addr(16)?,
        spi,
        udp,
    })
}

/// The IPv6 header of an Ethernet frame, its extension-header chain walked (and the SPI of ESP,
/// the type of ICMPv6), if it carries IPv6.
pub fn parse6(frame: &[u8]) -> Option<Packet6> {
    if frame.get(12..14)? != [0x86, 0xdd] {
        return None;
    }
    let ip = frame.get(14..)?;
    if ip.first()? >> 4 != 6 {
        return None;
    }
    let addr = |at: usize| -> Option<Ipv6Addr> {
        Some(Ipv6Addr::from(
            <[u8; 16]>::try_from(ip.get(at..at + 16)?).ok()?,
        ))
    };
    let (src, dst) = (addr(8)?, addr(24)?);
    let mut next = *ip.get(6)?;
    let mut at = 40;
    let mut ext = Vec::new();
    // Whether the upper-layer header is in this packet (not in a non-first fragment).
    let mut first = true;
    while matches!(next, HOP_BY_HOP | ROUTING | FRAGMENT | AUTH | DEST_OPTS)
        && ext.len() < EXT_HEADERS_MAX
    {
        let Some(header) = ip.get(at..at + 8) else {
            break;
        };
        let len = match next {
            FRAGMENT => {
                first &= u16::from_be_bytes([header[2], header[3]]) & 0xFFF8 == 0;
                8
            }
            AUTH => (usize::from(header[1]) + 2) * 4,
            _ => (usize::from(header[1]) + 1) * 8,
        };
        ext.push(next);
        next = header[0];
        at += len;
    }
    let upper = ip.get(at..).unwrap_or_default();
    let spi = (next == IPPROTO_ESP && first)
        .then(|| Some(u32::from_be_bytes(upper.get(..4)?.try_into().ok()?)))
        .flatten();
    let icmp_type = (next == IPPROTO_ICMPV6 && first)
        .then(|| upper.first().copied())
        .flatten();
    Some(Packet6 {
        proto: next,
        src,
        dst,
        ext,
        spi,
        icmp_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet frame with an IPv6 header (`next` its next header) and `rest` after it.
    fn frame6(next: u8, src: &str, dst: &str, rest: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&(rest.len() as u16).to_be_bytes());
        f.extend_from_slice(&[next, 64]);
        f.extend_from_slice(&src.parse::<Ipv6Addr>().unwrap().octets());
        f.extend_from_slice(&dst.parse::<Ipv6Addr>().unwrap().octets());
        f.extend_from_slice(rest);
        f
    }

    /// An Ethernet frame with an IPv4 header (no options) and `rest` after it.
    fn frame4(proto: u8, rest: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
        f.extend_from_slice(&(20 + rest.len() as u16).to_be_bytes());
        f.extend_from_slice(&[
            0, 0, 0, 0, 64, proto, 0, 0, 192, 168, 100, 1, 192, 168, 100, 2,
        ]);
        f.extend_from_slice(rest);
        f
    }

    fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut d = sport.to_be_bytes().to_vec();
        d.extend_from_slice(&dport.to_be_bytes());
        d.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        d.extend_from_slice(&[0, 0]);
        d.extend_from_slice(payload);
        d
    }

    #[test]
    fn esp_in_udp_and_keepalives_are_told_from_other_udp() {
        let ports = [4500, 4501];
        let esp = parse(&frame4(
            17,
            &udp(4500, 4501, &[0, 2, 0, 3, 0, 0, 0, 1, 9, 9]),
        ))
        .unwrap();
        assert_eq!(esp.esp_in_udp_spi(&ports), Some(0x0002_0003));
        assert!(!esp.is_esp() && !esp.is_nat_keepalive(&ports));
        let keepalive = parse(&frame4(17, &udp(4500, 4500, &[0xFF]))).unwrap();
        assert!(keepalive.is_nat_keepalive(&ports));
        assert_eq!(keepalive.esp_in_udp_spi(&ports), None);
        let ike = parse(&frame4(17, &udp(4500, 4500, &[0, 0, 0, 0, 1, 2, 3, 4]))).unwrap();
        assert_eq!(ike.esp_in_udp_spi(&ports), None);
        let elsewhere = parse(&frame4(17, &udp(53, 5353, &[1, 2, 3, 4, 5, 6, 7, 8]))).unwrap();
        assert_eq!(elsewhere.esp_in_udp_spi(&ports), None);
        let bare = parse(&frame4(50, &[0, 2, 0, 3, 0, 0, 0, 1])).unwrap();
        assert_eq!((bare.spi, bare.udp), (Some(0x0002_0003), None));
    }

    #[test]
    fn ipv6_frames_are_parsed_through_their_extension_headers() {
        let udp = frame6(17, "fd00:10:244:1::2", "fd00:10:244:2::2", &[0; 8]);
        let p = parse6(&udp).unwrap();
        assert_eq!((p.proto, p.ext.clone(), p.spi), (17, vec![], None));
        assert_eq!(p.dst, "fd00:10:244:2::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(parse(&udp), None, "not IPv4");

        // Hop-by-hop (8 bytes), destination options (16 bytes), then ICMPv6 echo.
        let mut rest = vec![DEST_OPTS, 0, 1, 4, 0, 0, 0, 0];
        rest.extend_from_slice(&[58, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        rest.extend_from_slice(&[128, 0, 0, 0]);
        let p = parse6(&frame6(HOP_BY_HOP, "fd00::1", "fd00::2", &rest)).unwrap();
        assert_eq!(p.ext, [HOP_BY_HOP, DEST_OPTS]);
        assert_eq!((p.proto, p.icmp_type), (IPPROTO_ICMPV6, Some(128)));

        // A first fragment of UDP, and a later one (no UDP header in it).
        let first = parse6(&frame6(
            FRAGMENT,
            "fd00::1",
            "fd00::2",
            &[17, 0, 0, 1, 0, 0, 0, 9],
        ))
        .unwrap();
        assert_eq!((first.proto, first.ext.clone()), (17, vec![FRAGMENT]));
        let later = parse6(&frame6(
            FRAGMENT,
            "fd00::1",
            "fd00::2",
            &[58, 0, 0x05, 0x10, 0, 0, 0, 9],
        ))
        .unwrap();
        assert_eq!((later.proto, later.icmp_type), (58, None));

        // ESP: its SPI; an NS: neighbour discovery.
        let esp = parse6(&frame6(
            50,
            "fd00::1",
            "fd00::2",
            &[0, 0, 0x10, 0x24, 0, 0, 0, 1],
        ))
        .unwrap();
        assert!(esp.is_esp());
        assert_eq!(esp.spi, Some(0x1024));
        let ns = parse6(&frame6(58, "fe80::1", "ff02::1:ff00:2", &[135, 0, 0, 0])).unwrap();
        assert!(ns.is_nd());

        // A chain cut short stops at the header that is not there.
        let cut = parse6(&frame6(DEST_OPTS, "fd00::1", "fd00::2", &[17, 0, 0])).unwrap();
        assert_eq!((cut.proto, cut.ext.clone()), (DEST_OPTS, vec![]));
        // Not IPv6 inside an IPv6 EtherType, and a frame cut in the fixed header.
        let mut bad = udp.clone();
        bad[14] = 0x45;
        assert_eq!(parse6(&bad), None);
        assert_eq!(parse6(&udp[..40]), None);
    }
}
