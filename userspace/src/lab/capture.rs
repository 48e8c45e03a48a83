//! What the nodes put on the wire: an AF_PACKET socket on each node's uplink keeps the frames
//! the node SENDS. Received frames are left out on purpose: the kernel shows ESP it has
//! decrypted to packet sockets a second time, in the clear, on ingress.

use std::{
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result};

use super::netns::run_in;

/// IP protocol number of ESP.
pub const IPPROTO_ESP: u8 = 50;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;

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
                packets.extend(parse(&frame[..n as usize]));
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
    Some(Packet {
        proto,
        src: addr(12)?,
        dst: addr(16)?,
        spi,
    })
}
