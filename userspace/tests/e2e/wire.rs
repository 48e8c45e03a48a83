//! Captures what a node puts on the wire: an AF_PACKET socket on its wire-side interface that
//! keeps the frames it sends (not the ones it receives: those show decrypted on ingress too).

use std::{
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::support::Netns;

const IPPROTO_UDP: u8 = 17;
const IPPROTO_ESP: u8 = 50;
const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;

/// An IPv4 packet seen leaving on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// IP protocol number.
    pub proto: u8,
    /// Outer source.
    pub src: Ipv4Addr,
    /// Outer destination.
    pub dst: Ipv4Addr,
    /// The SPI for ESP (host order).
    pub spi: Option<u32>,
}

impl Packet {
    /// Whether this is ESP.
    pub fn is_esp(&self) -> bool {
        self.proto == IPPROTO_ESP
    }

    /// Whether this is plaintext UDP to `dst`.
    pub fn is_udp_to(&self, dst: Ipv4Addr) -> bool {
        self.proto == IPPROTO_UDP && self.dst == dst
    }
}

/// A running capture of the frames sent out of one interface.
pub struct Capture {
    socket: OwnedFd,
}

impl Capture {
    /// Starts capturing what `ifname` in `netns` sends.
    pub fn start(netns: &Netns, ifname: &'static str) -> Capture {
        let socket = netns
            .run(move || open(ifname))
            .expect("opening the capture");
        Capture { socket }
    }

    /// Every outgoing IPv4 packet captured since the last call.
    pub fn take(&self) -> Vec<Packet> {
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
                assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "capture: {err}");
                return packets;
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                packets.extend(parse(&frame[..n as usize]));
            }
        }
    }
}

fn open(ifname: &str) -> io::Result<OwnedFd> {
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all)) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname).expect("no NUL in an interface name");
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    // Floods must not overflow the socket between two takes.
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

fn parse(frame: &[u8]) -> Option<Packet> {
    let ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    if ethertype != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(ETH_HLEN..)?;
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
    Some(Packet {
        proto,
        src: addr(12)?,
        dst: addr(16)?,
        spi,
    })
}
