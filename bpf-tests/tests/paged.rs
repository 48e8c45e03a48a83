//! Frames whose headers lie in pages rather than in the skb's linear area, as a NIC that
//! splits headers from payload or a TCP GSO skb delivers them, are judged as the same frames
//! laid out linearly: the tc programs read what is linear and pull the rest only when a read
//! needs it.
//!
//! `BPF_PROG_TEST_RUN` builds linear skbs only, so these tests send real frames through a tap
//! device opened with `IFF_NAPI_FRAGS`, which puts the first iovec of each write in the linear
//! area (here the Ethernet header alone) and every other iovec in a page fragment of its own.
//! With GRO off the IP header stays in pages; with GRO on, GRO pulls the IP header and leaves
//! the ESP SPI in a page.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::{
    fs::{File, OpenOptions},
    io::{self, IoSlice, Write as _},
    os::fd::AsRawFd,
    process::Command,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use xsteer::dataplane::Dataplane;
use xsteer_bpf_tests::{
    dataplane,
    packet::{Ipv4, Ipv6},
    topology::*,
};
use xsteer_common::counters::Counter;

/// The tap's name inside the test's own network namespace.
const TAP: &str = "xsteer-paged";
/// Bytes per page fragment: the IPv4 header spans two, and so does the IPv6 one.
const FRAGMENT: usize = 12;
/// `ETHTOOL_SGRO` from `linux/ethtool.h`.
const ETHTOOL_SGRO: u32 = 0x2c;

/// A tap whose writes become paged skbs.
struct Tap(File);

impl Tap {
    /// Creates [`TAP`] in the calling thread's network namespace, with GRO on or off, and
    /// brings it up.
    fn open(gro: bool) -> io::Result<Tap> {
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
        };
        // A kernel with tun as a module (Debian's, in the VM bed) has no /dev/net/tun until
        // the module is loaded.
        let file = match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Command::new("modprobe").arg("tun").status()?;
                open()?
            }
            other => other?,
        };
        let mut request = Ifreq::new(TAP);
        request.data =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_NAPI | libc::IFF_NAPI_FRAGS) as usize;
        // SAFETY: TUNSETIFF reads an ifreq (name, then flags), which `request` is laid out as.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) } < 0 {
            return Err(io::Error::last_os_error());
        }
        set_gro(gro)?;
        let up = Command::new("ip")
            .args(["link", "set", TAP, "up"])
            .status()?;
        assert!(up.success(), "ip link set {TAP} up");
        Ok(Tap(file))
    }

    /// Writes `frame` with its Ethernet header linear and the rest in [`FRAGMENT`]-byte pages.
    fn send(&mut self, frame: &[u8]) {
        let (ethernet, rest) = frame.split_at(14);
        let mut iovecs = vec![IoSlice::new(ethernet)];
        iovecs.extend(rest.chunks(FRAGMENT).map(IoSlice::new));
        let written = self.0.write_vectored(&iovecs).unwrap();
        assert_eq!(written, frame.len(), "the tap took the whole frame");
    }
}

/// `struct ifreq` with the union read as a pointer-sized integer (flags or a pointer).
#[repr(C)]
struct Ifreq {
    name: [u8; libc::IFNAMSIZ],
    data: usize,
    _rest: [u8; 16],
}

impl Ifreq {
    fn new(name: &str) -> Ifreq {
        let mut request = Ifreq {
            name: [0; libc::IFNAMSIZ],
            data: 0,
            _rest: [0; 16],
        };
        request.name[..name.len()].copy_from_slice(name.as_bytes());
        request
    }
}

/// Turns GRO on [`TAP`] on or off (`ethtool -K TAP gro on|off`).
fn set_gro(on: bool) -> io::Result<()> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_SGRO,
        data: u32::from(on),
    };
    let mut request = Ifreq::new(TAP);
    request.data = &mut value as *mut EthtoolValue as usize;
    // SAFETY: a socket call with constant arguments.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if socket < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCETHTOOL reads an ifreq whose data points at `value`, alive for the call.
    let result = unsafe { libc::ioctl(socket, libc::SIOCETHTOOL, &mut request) };
    let error = io::Error::last_os_error();
    // SAFETY: `socket` is ours and closed once.
    unsafe { libc::close(socket) };
    if result < 0 { Err(error) } else { Ok(()) }
}

/// Runs `body` on a thread of its own in a fresh network namespace, which goes with the tap
/// and every attachment when the thread ends.
fn in_own_netns(body: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        // SAFETY: unshare affects the calling thread only, which is this one.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!("unshare(CLONE_NEWNET): {}", io::Error::last_os_error());
        }
        body();
    })
    .join()
    .unwrap();
}

fn counter(dp: &mut Dataplane, c: Counter) -> u64 {
    dp.counters().unwrap().read().unwrap().get(c)
}

/// Waits until `c` reaches `want` (a write to the tap runs the hook before it returns, but
/// the counters are per-CPU and read as one sum), and returns what it read last.
fn settle(dp: &mut Dataplane, c: Counter, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let got = counter(dp, c);
        if got >= want || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `body` once with GRO off and once on, each time in a fresh network namespace with the
/// tap and a fresh copy of the object holding the test topology, `program` attached at tc
/// ingress of the tap.
fn with_gro_off_and_on(
    test: &'static str,
    program: fn(&mut Dataplane) -> &mut SchedClassifier,
    body: fn(&mut Tap, &mut Dataplane),
) {
    for gro in [false, true] {
        println!("{test}: GRO {}", if gro { "on" } else { "off" });
        in_own_netns(move || {
            let mut tap = Tap::open(gro).unwrap();
            let Some(mut dp) = dataplane(test) else {
                return;
            };
            populate(&mut dp);
            populate_v6(&mut dp, false);
            program(&mut dp).attach(TAP, TcAttachType::Ingress).unwrap();
            body(&mut tap, &mut dp);
        });
    }
}

#[test]
fn the_ingress_guard_at_tc_reads_paged_headers_as_linear_ones() {
    with_gro_off_and_on(
        "the_ingress_guard_at_tc_reads_paged_headers_as_linear_ones",
        |dp| dp.ingress_guard_tc().unwrap(),
        |tap, dp| {
            let accepted = [
                Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, PEER_B_WIRE_SPI).frame(),
                Ipv6::esp(PEER_B_IP6, LOCAL_NODE_IP6, PEER_B_WIRE_SPI).frame(),
            ];
            let bad_spi = [
                Ipv4::esp(PEER_B_IP, LOCAL_NODE_IP, PEER_B_WIRE_SPI + 1).frame(),
                Ipv6::esp(PEER_B_IP6, LOCAL_NODE_IP6, 0x1234_0003).frame(),
            ];
            let plaintext = [
                Ipv4::udp(PEER_B_POD, LOCAL_POD).frame(),
                Ipv6::udp(PEER_B_POD6, LOCAL_POD6).frame(),
            ];
            let passed = [Ipv4::udp(OUTSIDE, LOCAL_NODE_IP).frame()];
            for frame in accepted
                .iter()
                .chain(&bad_spi)
                .chain(&plaintext)
                .chain(&passed)
            {
                tap.send(frame);
            }
            // Read last, once the guard has seen every frame: the tap's own IPv6 ND may add
            // to "passed", never to the others.
            for (c, want) in [
                (Counter::IngressEspAccepted, accepted.len()),
                (Counter::IngressBadSpiDropped, bad_spi.len()),
                (Counter::IngressPlaintextDropped, plaintext.len()),
            ] {
                assert_eq!(settle(dp, c, want as u64), want as u64, "{c:?}");
            }
            assert!(settle(dp, Counter::IngressPassed, 1) >= 1);
            assert_eq!(counter(dp, Counter::IngressMalformedDropped), 0);
        },
    );
}

#[test]
fn the_pod_classifier_marks_a_paged_packet_to_a_remote_pod() {
    with_gro_off_and_on(
        "the_pod_classifier_marks_a_paged_packet_to_a_remote_pod",
        |dp| dp.pod_classifier().unwrap(),
        |tap, dp| {
            let marked = [
                Ipv4::udp(LOCAL_POD, PEER_B_POD).frame(),
                Ipv6::udp(LOCAL_POD6, PEER_B_POD6).frame(),
            ];
            for frame in &marked {
                tap.send(frame);
            }
            let got = settle(dp, Counter::PodMarked, marked.len() as u64);
            assert_eq!(got, marked.len() as u64);
            assert_eq!(counter(dp, Counter::PodMalformed), 0);
        },
    );
}
