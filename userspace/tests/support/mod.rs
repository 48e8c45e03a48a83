//! Shared by the integration tests that touch the kernel: privilege checks, network namespaces,
//! the `ip` tool, sockets with marks, raw frames onto a link, and the kernel's xfrm counters.
//!
//! Each test binary uses a different part of it.
#![allow(dead_code)]

use std::{
    fs,
    future::Future,
    net::UdpSocket,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    process::Command,
    thread,
};

/// Whether a test that needs root may run. Without root it prints a loud skip and returns
/// false, unless `XSTEER_REQUIRE_PRIVILEGED=1` (CI), where a skip is a failure.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let why = format!("{test}: needs root (network namespaces, netlink writes)");
    if std::env::var("XSTEER_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{why}, and XSTEER_REQUIRE_PRIVILEGED=1 forbids skipping");
    }
    eprintln!("\n*** SKIPPED {why} ***\n");
    false
}

/// Runs `test` on a current-thread tokio runtime in a thread of its own, inside a network
/// namespace made for it (with lo up). The namespace dies with the thread, and with it
/// everything the test created there. A panic in `test` fails the caller.
pub fn in_fresh_netns<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    if let Err(panic) = spawn_in_fresh_netns(test).join() {
        std::panic::resume_unwind(panic);
    }
}

/// Starts `f` on a current-thread tokio runtime in a thread of its own, inside a network
/// namespace made for it (with lo up); the namespace goes when the thread ends.
pub fn spawn_in_fresh_netns<T, F, Fut>(f: F) -> thread::JoinHandle<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    thread::spawn(move || {
        // SAFETY: unshare only affects the calling thread, which owns no namespace-bound state yet.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        ip(&["link", "set", "lo", "up"]);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(f())
    })
}

/// A named network namespace (`ip netns add`), deleted when dropped.
pub struct Netns {
    /// Its name, for `ip -n`.
    pub name: String,
}

impl Netns {
    /// Creates the namespace `name` (deleting a leftover of that name first) with lo up.
    pub fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "delete", name]).output();
        ip(&["netns", "add", name]);
        let netns = Netns {
            name: name.to_owned(),
        };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// Runs `ip -n NAME ARGS...`, panicking with its stderr when it fails.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `f` in a thread that has entered this namespace, and returns its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = fs::File::open(Path::new("/run/netns").join(&self.name))
            .unwrap_or_else(|e| panic!("opening netns {}: {e}", self.name));
        let joined = thread::spawn(move || {
            // SAFETY: setns on a namespace fd affects only the calling thread.
            let rc = unsafe { libc::setns(ns.as_fd().as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join();
        joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Runs `f` on a current-thread tokio runtime inside this namespace.
    pub fn block_on<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        self.run(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(f())
        })
    }

    /// One counter of this namespace's /proc/net/xfrm_stat.
    pub fn xfrm_stat(&self, name: &'static str) -> u64 {
        self.run(move || xfrm_stat(name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

/// Runs `ip ARGS...` in the calling thread's namespace and returns its stdout; panics with its
/// stderr when it fails.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("ip prints UTF-8")
}

/// One counter of the calling thread's network namespace's /proc/net/xfrm_stat.
pub fn xfrm_stat(name: &str) -> u64 {
    let text = fs::read_to_string("/proc/thread-self/net/xfrm_stat").expect("reading xfrm_stat");
    text.lines()
        .find_map(|line| {
            let (key, value) = line.split_once(char::is_whitespace)?;
            (key == name).then(|| value.trim().parse().expect("a counter"))
        })
        .unwrap_or_else(|| panic!("xfrm_stat has no {name}"))
}

/// Sets SO_MARK on `socket`, as the pod classifier does for pod traffic.
pub fn set_mark(socket: &UdpSocket, mark: u32) {
    set_option(socket, libc::SO_MARK, mark, "SO_MARK");
}

/// Gives `socket` a receive buffer of `bytes` whatever the sysctl limit says (root), so that a
/// receiver the scheduler leaves waiting for a moment does not drop what the dataplane
/// delivered.
pub fn set_receive_buffer(socket: &UdpSocket, bytes: u32) {
    set_option(socket, libc::SO_RCVBUFFORCE, bytes, "SO_RCVBUFFORCE");
}

fn set_option(socket: &UdpSocket, option: libc::c_int, value: u32, name: &str) {
    // SAFETY: a valid socket fd and a u32 option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw const value).cast(),
            size_of::<u32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "{name}: {}", std::io::Error::last_os_error());
}

/// The `Udp:` counters of /proc/net/snmp in the calling thread's network namespace that are
/// not zero, e.g. `RcvbufErrors 12`: where a datagram the stack received was dropped.
pub fn udp_errors() -> Vec<String> {
    let snmp = fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return Vec::new();
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter(|(name, value)| name.ends_with("Errors") && *value != "0")
        .map(|(name, value)| format!("{name} {value}"))
        .collect()
}

/// Whether the running kernel can do ESP (has esp4 built in or loaded).
pub fn kernel_has_esp() -> bool {
    let _ = Command::new("modprobe").arg("esp4").output();
    fs::read_to_string("/proc/modules").is_ok_and(|m| m.lines().any(|l| l.starts_with("esp4 ")))
        || fs::read_to_string("/proc/kallsyms").is_ok_and(|k| k.contains(" esp4_init"))
}

/// Sends raw Ethernet `frames` out of `ifname` in this thread's network namespace, straight to
/// the device: past its qdisc, so that the namespace's own egress guard does not see them (the
/// point is a frame that is on the wire whatever the sender's guards say).
pub fn send_frames(ifname: &str, frames: &[Vec<u8>]) {
    // SAFETY: plain socket(2); owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: valid fd, option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0, "no {ifname}");
    for f in frames {
        // SAFETY: zeroed sockaddr_ll is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = index as i32;
        addr.sll_halen = 6;
        // The frame's own EtherType, as it is on the wire.
        addr.sll_protocol = u16::from_ne_bytes([f[12], f[13]]);
        // SAFETY: valid buffers of the lengths passed.
        let n = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(n, f.len() as isize, "{}", std::io::Error::last_os_error());
    }
}
