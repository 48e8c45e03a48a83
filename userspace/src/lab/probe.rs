//! Reachability checks between lab pods: ICMP echo, a TCP line echoed back, a UDP datagram
//! echoed back, over IPv4 and, in a dual-stack lab, IPv6 (ICMPv6 echo for ICMP). Each pod runs a
//! small echo server (threads inside its namespace, on each of its addresses) while the checks
//! run.
//!
//! The same probes run outside the lab, from the xsteer image in a Kubernetes pod (`xsteer
//! probe`, for `cargo xtask kind test`): [`serve_here`], [`reach`] and [`stream`] work in the
//! caller's own network namespace, so a deployment test needs no image but xsteer's.

use std::{
    collections::HashSet,
    io::{BufRead, BufReader, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{netns::run_in, topology::LabPod};

/// The port of the echo servers, TCP and UDP.
pub const ECHO_PORT: u16 = 7700;
const TIMEOUT: Duration = Duration::from_secs(3);

/// The protocols checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// ICMP echo.
    Icmp,
    /// A line over TCP.
    Tcp,
    /// A datagram over UDP.
    Udp,
}

impl Proto {
    /// All three.
    pub const ALL: [Proto; 3] = [Proto::Icmp, Proto::Tcp, Proto::Udp];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Icmp => "icmp",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// Echo servers in every pod; stopped when dropped.
pub struct EchoServers {
    stop: Arc<AtomicBool>,
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts a TCP and a UDP echo server in each of `pods`, on each of its addresses.
pub fn serve(pods: &[LabPod]) -> Result<EchoServers> {
    let stop = Arc::new(AtomicBool::new(false));
    for pod in pods {
        for ip in pod.ips() {
            let (udp, tcp) = run_in(&pod.netns, move || bind(ip, ECHO_PORT))?;
            spawn_echo(udp, tcp, &stop)?;
        }
    }
    Ok(EchoServers { stop })
}

/// Starts a TCP and a UDP echo server on every address of this network namespace, at `port`.
pub fn serve_here(port: u16) -> Result<EchoServers> {
    let stop = Arc::new(AtomicBool::new(false));
    let (udp, tcp) = bind(Ipv4Addr::UNSPECIFIED.into(), port)?;
    spawn_echo(udp, tcp, &stop)?;
    Ok(EchoServers { stop })
}

fn bind(ip: IpAddr, port: u16) -> Result<(UdpSocket, TcpListener)> {
    let udp = UdpSocket::bind((ip, port)).context("binding the UDP echo server")?;
    let tcp = TcpListener::bind((ip, port)).context("binding the TCP echo server")?;
    Ok((udp, tcp))
}

fn spawn_echo(udp: UdpSocket, tcp: TcpListener, stop: &Arc<AtomicBool>) -> Result<()> {
    udp.set_read_timeout(Some(Duration::from_millis(200)))?;
    tcp.set_nonblocking(true)?;
    let stop_udp = stop.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !stop_udp.load(Ordering::Relaxed) {
            if let Ok((n, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&buf[..n], from);
            }
        }
    });
    let stop_tcp = stop.clone();
    thread::spawn(move || {
        while !stop_tcp.load(Ordering::Relaxed) {
            match tcp.accept() {
                Ok((stream, _)) => {
                    thread::spawn(move || echo_line(stream));
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    Ok(())
}

fn echo_line(stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let mut line = String::new();
    let mut reader = BufReader::new(&stream);
    if reader.read_line(&mut line).is_ok() {
        let _ = (&stream).write_all(line.as_bytes());
    }
}

/// Checks that `from` reaches `to` over `proto`, over IPv4.
pub fn check(from: &LabPod, to: &LabPod, proto: Proto) -> Result<()> {
    check_to(from, to.ip.into(), proto)
}

/// Checks that `from` reaches `to` over `proto`, over IPv6 (a dual-stack lab's pods).
pub fn check6(from: &LabPod, to: &LabPod, proto: Proto) -> Result<()> {
    let dst = to
        .ip6
        .with_context(|| format!("{} has no IPv6 address", to.netns))?;
    check_to(from, dst.into(), proto)
}

/// Checks that `from` reaches `dst` (its echo server, or for ICMP its kernel) over `proto`, from
/// its own address of `dst`'s family.
pub fn check_to(from: &LabPod, dst: IpAddr, proto: Proto) -> Result<()> {
    let src = match dst {
        IpAddr::V4(_) => from.ip.into(),
        IpAddr::V6(_) => from
            .ip6
            .with_context(|| format!("{} has no IPv6 address", from.netns))?
            .into(),
    };
    run_in(&from.netns, move || probe(src, dst, ECHO_PORT, proto))
}

/// Checks from this network namespace that `dst`'s echo server (or, for ICMP, its kernel)
/// answers over `proto`.
pub fn reach(dst: impl Into<IpAddr>, port: u16, proto: Proto) -> Result<()> {
    let dst = dst.into();
    probe(unspecified(dst), dst, port, proto)
}

/// The unspecified address of `ip`'s family.
fn unspecified(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    }
}

fn probe(src: IpAddr, dst: IpAddr, port: u16, proto: Proto) -> Result<()> {
    match (proto, dst) {
        (Proto::Udp, _) => udp(src, dst, port),
        (Proto::Tcp, _) => tcp(dst, port),
        (Proto::Icmp, IpAddr::V4(dst)) => icmp(dst),
        (Proto::Icmp, IpAddr::V6(dst)) => icmp6(dst),
    }
}

fn udp(src: IpAddr, dst: IpAddr, port: u16) -> Result<()> {
    let socket = UdpSocket::bind((src, 0))?;
    socket.set_read_timeout(Some(Duration::from_millis(700)))?;
    let message = format!("xsteer lab {src} -> {dst}");
    let mut buf = [0u8; 512];
    // A few tries: the first datagram may wait for ARP (or ND) on a fresh wire.
    for _ in 0..4 {
        socket.send_to(message.as_bytes(), (dst, port))?;
        if let Ok(n) = socket.recv(&mut buf)
            && &buf[..n] == message.as_bytes()
        {
            return Ok(());
        }
    }
    bail!("no UDP echo from {dst}")
}

fn tcp(dst: IpAddr, port: u16) -> Result<()> {
    let addr = SocketAddr::from((dst, port));
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    (&stream).write_all(b"xsteer lab\n")?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    if line != "xsteer lab\n" {
        bail!("TCP echo from {addr} was {line:?}");
    }
    Ok(())
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

fn icmp(dst: Ipv4Addr) -> Result<()> {
    // SAFETY: plain socket(2), closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    if fd < 0 {
        bail!("raw ICMP socket: {}", std::io::Error::last_os_error());
    }
    let id = (std::process::id() as u16) ^ u16::from(dst.octets()[3]);
    let mut request = vec![8, 0, 0, 0];
    request.extend_from_slice(&id.to_be_bytes());
    request.extend_from_slice(&1u16.to_be_bytes());
    request.extend_from_slice(b"xsteer lab ping");
    let sum = checksum(&request);
    request[2..4].copy_from_slice(&sum.to_be_bytes());
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst.octets()),
        },
        sin_zero: [0; 8],
    };
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 300_000,
    };
    let deadline = Instant::now() + TIMEOUT;
    let mut result = Err(anyhow::anyhow!("no ICMP echo reply from {dst}"));
    // SAFETY: valid fd and buffers of the lengths passed throughout.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        );
        'send: while Instant::now() < deadline {
            libc::sendto(
                fd,
                request.as_ptr().cast(),
                request.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            let mut buf = [0u8; 1500];
            for _ in 0..4 {
                let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                if n < 28 {
                    continue;
                }
                let ihl = usize::from(buf[0] & 0x0F) * 4;
                let reply = &buf[ihl..n as usize];
                let from = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
                if from == dst
                    && reply.len() >= 8
                    && reply[0] == 0
                    && reply[4..6] == id.to_be_bytes()
                {
                    result = Ok(());
                    break 'send;
                }
            }
        }
        libc::close(fd);
    }
    result
}

/// ICMPv6 echo. The kernel fills in the checksum of a raw ICMPv6 socket's messages (RFC 3542);
/// what comes back is the ICMPv6 message alone, its source in the address.
fn icmp6(dst: Ipv6Addr) -> Result<()> {
    // SAFETY: plain socket(2), owned at once below.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6) };
    if fd < 0 {
        bail!("raw ICMPv6 socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let id = (std::process::id() as u16) ^ dst.segments()[7];
    let mut request = vec![128, 0, 0, 0];
    request.extend_from_slice(&id.to_be_bytes());
    request.extend_from_slice(&1u16.to_be_bytes());
    request.extend_from_slice(b"xsteer lab ping6");
    // SAFETY: zeroed sockaddr_in6 is valid.
    let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    addr.sin6_family = libc::AF_INET6 as u16;
    addr.sin6_addr.s6_addr = dst.octets();
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 300_000,
    };
    // SAFETY: valid fd and option value of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        // SAFETY: valid fd, buffer and address of the lengths passed.
        unsafe {
            libc::sendto(
                fd,
                request.as_ptr().cast(),
                request.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            );
        }
        // Other ICMPv6 (neighbour discovery) arrives on this socket too.
        for _ in 0..8 {
            let mut buf = [0u8; 1500];
            // SAFETY: zeroed sockaddr_in6 is valid.
            let mut from: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            let mut from_len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            // SAFETY: valid fd, buffer and address of the lengths passed.
            let n = unsafe {
                libc::recvfrom(
                    fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut from).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                break;
            }
            let reply = &buf[..n as usize];
            if Ipv6Addr::from(from.sin6_addr.s6_addr) == dst
                && reply.len() >= 8
                && reply[0] == 129
                && reply[4..6] == id.to_be_bytes()
            {
                drop(socket);
                return Ok(());
            }
        }
    }
    drop(socket);
    bail!("no ICMPv6 echo reply from {dst}")
}

/// What a [`stream`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamReport {
    /// Datagrams sent.
    pub sent: u64,
    /// Distinct datagrams echoed back.
    pub echoed: u64,
}

impl StreamReport {
    /// Datagrams that did not come back, either way lost.
    pub fn lost(&self) -> u64 {
        self.sent - self.echoed
    }
}

/// Sends `rate` sequence-numbered UDP datagrams a second to `dst`'s echo server for
/// `duration`, and counts the distinct ones echoed back (waiting a second for late ones).
pub fn stream(
    dst: impl Into<IpAddr>,
    port: u16,
    rate: u32,
    duration: Duration,
) -> Result<StreamReport> {
    let dst = dst.into();
    let socket = UdpSocket::bind((unspecified(dst), 0)).context("binding the stream")?;
    socket.connect((dst, port))?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let receiver = socket.try_clone()?;
    let done = Arc::new(AtomicBool::new(false));
    let done_receiving = done.clone();
    let echoes = thread::spawn(move || {
        let mut seen = HashSet::new();
        let mut buf = [0u8; 64];
        while !done_receiving.load(Ordering::Relaxed) {
            if let Ok(8) = receiver.recv(&mut buf) {
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&buf[..8]);
                seen.insert(u64::from_be_bytes(seq));
            }
        }
        seen.len() as u64
    });
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        // Paced against the clock: a late wake-up sends what is due, not less.
        let due = (start.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        while sent < due {
            // A send error (no route for a moment) is a datagram lost, as on the wire.
            let _ = socket.send(&sent.to_be_bytes());
            sent += 1;
        }
        thread::sleep(Duration::from_millis(2));
    }
    thread::sleep(Duration::from_secs(1));
    done.store(true, Ordering::Relaxed);
    let echoed = echoes
        .join()
        .map_err(|_| anyhow::anyhow!("the stream's receiver panicked"))?;
    Ok(StreamReport { sent, echoed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_over_loopback_comes_back_whole() {
        let (_servers, port) = serve_on_loopback(Ipv4Addr::LOCALHOST.into());
        let report = stream(Ipv4Addr::LOCALHOST, port, 500, Duration::from_millis(400)).unwrap();
        assert!(report.sent >= 150, "{report:?}");
        assert_eq!(report.lost(), 0, "{report:?}");
        reach(Ipv4Addr::LOCALHOST, port, Proto::Udp).unwrap();
        reach(Ipv4Addr::LOCALHOST, port, Proto::Tcp).unwrap();
    }

    #[test]
    fn probes_and_streams_work_over_ipv6_loopback() {
        let (_servers, port) = serve_on_loopback(Ipv6Addr::LOCALHOST.into());
        reach(Ipv6Addr::LOCALHOST, port, Proto::Udp).unwrap();
        reach(Ipv6Addr::LOCALHOST, port, Proto::Tcp).unwrap();
        let report = stream(Ipv6Addr::LOCALHOST, port, 500, Duration::from_millis(300)).unwrap();
        assert!(report.sent >= 100, "{report:?}");
        assert_eq!(report.lost(), 0, "{report:?}");
    }

    /// Echo servers on `ip` at a port free for both UDP and TCP (other tests, or another run
    /// of these, may hold any fixed one); and the port.
    fn serve_on_loopback(ip: IpAddr) -> (EchoServers, u16) {
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..100 {
            let udp = UdpSocket::bind((ip, 0)).unwrap();
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = TcpListener::bind((ip, port)) {
                spawn_echo(udp, tcp, &stop).unwrap();
                return (EchoServers { stop }, port);
            }
        }
        panic!("no port free for both UDP and TCP on {ip}");
    }
}
