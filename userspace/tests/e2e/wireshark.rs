//! `xsteer keys wireshark` decrypts a real capture. Two pairs of nodes with agents, one sending
//! with a GCM generation and one with a CBC+HMAC generation (a fresh pair each: moving a running
//! pair from GCM to CBC changes the route MTU, which the reconcile cannot do in place yet), send
//! datagrams between their pods while tcpdump records the ESP on node a's uplink, both
//! directions. Each node's `esp_sa` lines, fed to tshark, show every ESP packet's inner pod
//! addresses, UDP port and payload, with its ICV checked good; without them tshark shows none of
//! that. Without root the command refuses.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead, BufReader, Read},
    net::{IpAddr, UdpSocket},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use xsteer::dataplane::Dataplane;
use xsteer_common::spi;

use crate::cluster::{self, Node};

/// The newest generation of the CBC pair: AES-CBC with HMAC-SHA-256.
const CBC_LINE: &str = "5 hmac(sha256) 0x5d4c3b2a19087f6e5d4c3b2a19087f6e5d4c3b2a19087f6e5d4c3b2a19087f6e cbc(aes) 0x8899aabbccddeeff0011223344556677\n";
/// Datagrams per direction.
const PER_DIRECTION: usize = 5;

/// tcpdump writing what crosses one node's uplink to a pcap file.
struct Tcpdump {
    child: Child,
    stderr: BufReader<ChildStderr>,
    file: PathBuf,
}

impl Tcpdump {
    /// Starts capturing ESP (both directions) on `node`'s `eth0` into `node.dir/wire.pcap`,
    /// and returns once tcpdump says it is listening.
    fn start(node: &Node) -> Tcpdump {
        let file = node.dir.join("wire.pcap");
        let mut command = Command::new("tcpdump");
        // Each packet written as it comes (--immediate-mode, -U), as root (tcpdump drops to its
        // own user by default); only ESP, so the inner packets the kernel shows again on eth0
        // once decrypted stay out.
        command
            .args([
                "-i",
                "eth0",
                "-n",
                "--immediate-mode",
                "-U",
                "-Z",
                "root",
                "-w",
            ])
            .arg(&file)
            .args(["ip", "proto", "50"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = node
            .netns
            .run(move || command.spawn().expect("running tcpdump"));
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut said = String::new();
        while !said.contains("listening on") {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap() == 0 {
                panic!("tcpdump exited before listening: {said}");
            }
            said.push_str(&line);
        }
        Tcpdump {
            child,
            stderr,
            file,
        }
    }

    /// Waits until the file holds `packets` packets, stops tcpdump as ^C does, and returns the
    /// file.
    fn stop_after(mut self, packets: usize) -> PathBuf {
        let deadline = Instant::now() + Duration::from_secs(20);
        while pcap_records(&self.file) < packets && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        let mut said = String::new();
        let _ = self.stderr.read_to_string(&mut said);
        eprintln!("tcpdump: {}", said.trim().replace('\n', "; "));
        assert!(status.success(), "tcpdump failed ({status}): {said}");
        self.file
    }
}

/// How many packets the pcap file at `path` holds so far (libpcap's format, host byte order).
fn pcap_records(path: &Path) -> usize {
    let bytes = fs::read(path).unwrap_or_default();
    let (mut at, mut records) = (24, 0);
    while let Some(header) = bytes.get(at..at + 16) {
        let captured = u32::from_ne_bytes(header[8..12].try_into().unwrap()) as usize;
        at += 16 + captured;
        if at > bytes.len() {
            break;
        }
        records += 1;
    }
    records
}

/// Pins the calling thread to `cpu`: what it sends is encrypted there.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "pinning to CPU {cpu}"
        );
    }
}

/// Sends one datagram per payload from `from`'s pod to `to`'s pod on `port`, the i-th from CPU
/// `i % cpus`; asserts that every one arrives.
fn send(from: &Node, to: &Node, port: u16, payloads: &[String], cpus: usize) {
    let dst = to.pod_ip;
    let src = from.pod_ip;
    let receiver = to.pod.run(move || UdpSocket::bind((dst, port)).unwrap());
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let sender = from.pod.run(move || UdpSocket::bind((src, 0)).unwrap());
    thread::scope(|s| {
        s.spawn(|| {
            for (i, payload) in payloads.iter().enumerate() {
                pin_to(i % cpus);
                sender.send_to(payload.as_bytes(), (dst, port)).unwrap();
            }
        });
    });
    let mut buf = [0u8; 64];
    for _ in payloads {
        let n = receiver
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("{} -> {}: a datagram was lost: {e}", from.name, to.name));
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(payloads.contains(&got), "unexpected datagram {got:?}");
    }
}

/// Waits until both nodes' pods reach each other.
fn wait_until_peered(a: &Node, b: &Node) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for (from, to, port) in [(a, b, 7700), (b, a, 7701)] {
        while cluster::exchange(
            (&from.pod, from.pod_ip),
            (&to.pod, to.pod_ip),
            port,
            1,
            Duration::from_millis(500),
        ) == 0
        {
            assert!(
                Instant::now() < deadline,
                "{} never reached {}:\n{}",
                from.name,
                to.name,
                from.agent_log()
            );
        }
    }
}

/// Waits until `node` sends to its peer's pods with `generation`.
fn wait_for_generation(node: &Node, generation: u8) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut dataplane = Dataplane::load_pinned(&node.pin_dir()).unwrap();
        let cidrs = dataplane.remote_pod_cidrs().unwrap().entries().unwrap();
        if !cidrs.is_empty() && cidrs.iter().all(|(_, v)| v.generation == generation) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never switched to generation {generation}: {cidrs:?}\n{}",
            node.name,
            node.agent_log()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `xsteer keys wireshark` in `node`'s namespace; returns (success, stdout, stderr).
fn keys_wireshark(node: &Node, as_nobody: bool) -> (bool, String, String) {
    let copy = as_nobody.then(copy_for_anyone);
    let binary = copy.as_ref().map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_xsteer")),
        |dir| dir.join("xsteer"),
    );
    let mut command = Command::new(binary);
    command.args(["keys", "wireshark"]);
    if let Some(dir) = &copy {
        command.current_dir(dir).uid(65534).gid(65534);
    }
    let out = node.netns.run(move || command.output().unwrap());
    if let Some(dir) = copy {
        let _ = fs::remove_dir_all(dir);
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// A fresh directory that anyone can read, holding a copy of the `xsteer` binary: the built one
/// may sit in a checkout that only root can enter (a mode-700 home).
fn copy_for_anyone() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xsteer-e2e-anyone-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let binary = dir.join("xsteer");
    fs::copy(env!("CARGO_BIN_EXE_xsteer"), &binary).unwrap();
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// One ESP frame as tshark dissects it.
#[derive(Debug)]
struct Frame {
    spi: u32,
    /// Every IPv4 source in the frame: the outer one, then the inner one once decrypted.
    src: Vec<String>,
    /// Every IPv4 destination, likewise.
    dst: Vec<String>,
    /// The inner UDP destination port, once decrypted.
    port: Option<u16>,
    /// The inner UDP payload, once decrypted.
    payload: Option<String>,
    /// Whether tshark checked the ICV and found it good.
    icv_good: bool,
}

/// The ESP frames of `pcap` as tshark shows them with decryption on and `esp_sa` as its SAs,
/// with no Wireshark profile but the one made in `home`.
fn tshark(pcap: &Path, esp_sa: &[&str], home: &Path) -> Vec<Frame> {
    let mut command = Command::new("tshark");
    command
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home)
        .arg("-r")
        .arg(pcap)
        .args([
            "-n",
            "-o",
            "esp.enable_encryption_decode:TRUE",
            "-o",
            "esp.enable_authentication_check:TRUE",
        ]);
    for line in esp_sa {
        command.arg("-o").arg(format!("uat:esp_sa:{line}"));
    }
    command.args(["-Y", "esp", "-T", "fields", "-E", "separator=|"]);
    for field in [
        "esp.spi",
        "ip.src",
        "ip.dst",
        "udp.dstport",
        "udp.payload",
        "esp.icv_good",
    ] {
        command.args(["-e", field]);
    }
    let out = command.output().expect("running tshark");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tshark failed: {stderr}");
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            assert_eq!(f.len(), 6, "tshark line {line:?}");
            let spi = f[0].strip_prefix("0x").map_or_else(
                || f[0].parse().unwrap(),
                |hex| u32::from_str_radix(hex, 16).unwrap(),
            );
            let payload = (!f[4].is_empty()).then(|| {
                let hex = f[4].replace(':', "");
                let bytes: Vec<u8> = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            });
            Frame {
                spi,
                src: list(f[1]),
                dst: list(f[2]),
                port: f[3].parse().ok(),
                payload,
                icv_good: matches!(f[5], "1" | "True"),
            }
        })
        .collect()
}

/// One pair of nodes whose key file is `keys`, sending with its newest generation
/// `generation`: the capture, the lines, and tshark with and without them. With `per_cpu`, the
/// nodes send on per-CPU SAs, and the datagrams go out from every CPU in turn: each CPU's SA
/// must carry some, by the kernel's counters and the SPIs tshark decrypts. Returns how long the
/// two tshark runs took.
fn decrypt_a_capture(
    prefix: &'static str,
    keys: &str,
    generation: u8,
    algorithms: (usize, usize),
    per_cpu: bool,
) -> Duration {
    let (a, b, records) = cluster::pair_with_records(prefix);
    let per_cpu_sas = if per_cpu {
        usize::from(xsteer::kernel::xfrm::per_cpu_sa_count())
    } else {
        0
    };
    for node in [&a, &b] {
        fs::write(node.dir.join("keys"), keys).unwrap();
        if per_cpu {
            let config = fs::read_to_string(node.config()).unwrap();
            let on = config.replacen("[node]\n", "[node]\nper_cpu_sas = true\n", 1);
            fs::write(node.config(), on).unwrap();
        }
    }
    // Every CPU sends (each its per-CPU SA's share), or all from CPU 0.
    let cpus = per_cpu_sas.max(1);
    let per_direction = PER_DIRECTION * cpus;
    let mut agents = [a.start_agent(), b.start_agent()];
    wait_until_peered(&a, &b);
    for node in [&a, &b] {
        wait_for_generation(node, generation);
    }

    let dump = Tcpdump::start(&a);
    let mut sent: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (from, to, port) in [(&a, &b, 7702), (&b, &a, 7703)] {
        let payloads: Vec<String> = (0..per_direction)
            .map(|i| format!("xsteer {}->{} #{i}", from.name, to.name))
            .collect();
        send(from, to, port, &payloads, cpus);
        sent.insert(from.name, payloads);
    }
    let pcap = dump.stop_after(2 * per_direction);

    // Without root: refused, saying why, and nothing on stdout.
    let (ok, stdout, stderr) = keys_wireshark(&a, true);
    assert!(!ok, "keys wireshark ran without root");
    assert!(stderr.contains("must run as root"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");

    let (ok_a, lines_a, warning_a) = keys_wireshark(&a, false);
    let (ok_b, lines_b, warning_b) = keys_wireshark(&b, false);
    assert!(ok_a && ok_b, "a: {warning_a}\nb: {warning_b}");
    for warning in [&warning_a, &warning_b] {
        assert!(warning.contains("hold secret keys"), "{warning}");
    }
    print!("{prefix}: esp_sa lines of node a:\n{lines_a}");
    // An OUT and an IN SA per generation, and as many again per CPU with per-CPU SAs.
    let lines: Vec<&str> = lines_a.lines().collect();
    let (mut gcm, mut cbc) = (0, 0);
    let nodes = [a.wire_ip.to_string(), b.wire_ip.to_string()];
    for line in &lines {
        let f = fields(line);
        assert_eq!(f.len(), 8, "{line}");
        assert_eq!(f[0], "IPv4", "{line}");
        assert!(
            nodes.contains(&f[1].to_owned()) && nodes.contains(&f[2].to_owned()) && f[1] != f[2],
            "{line}"
        );
        match (f[4], f[6]) {
            ("AES-GCM with 16 octet ICV [RFC4106]", "NULL") => {
                assert!(hex_key(f[5], 20) && f[7].is_empty(), "{line}");
                gcm += 1;
            }
            ("AES-CBC [RFC3602]", "HMAC-SHA-256-128 [RFC4868]") => {
                assert!(hex_key(f[5], 16) && hex_key(f[7], 32), "{line}");
                cbc += 1;
            }
            _ => panic!("unexpected algorithms: {line}"),
        }
    }
    let per_set = 1 + per_cpu_sas;
    assert_eq!(
        (gcm, cbc),
        (algorithms.0 * per_set, algorithms.1 * per_set),
        "(GCM, CBC) lines:\n{lines_a}"
    );
    // a's OUT SA is b's IN SA and the other way round: the two nodes print the same lines.
    let mut sorted_b: Vec<&str> = lines_b.lines().collect();
    sorted_b.sort();
    let mut sorted_a = lines.clone();
    sorted_a.sort();
    assert_eq!(sorted_a, sorted_b, "a:\n{lines_a}\nb:\n{lines_b}");

    let home = a.dir.join("wireshark-home");
    fs::create_dir_all(&home).unwrap();
    let tshark_started = Instant::now();
    let encrypted = tshark(&pcap, &[], &home);
    let decrypted = tshark(&pcap, &lines, &home);
    let tshark_took = tshark_started.elapsed();

    let total = 2 * per_direction;
    assert_eq!(encrypted.len(), total, "ESP frames captured: {encrypted:?}");
    for frame in &encrypted {
        assert_eq!(frame.src.len(), 1, "decrypted without keys: {frame:?}");
        assert!(frame.port.is_none() && frame.payload.is_none(), "{frame:?}");
    }
    assert_eq!(decrypted.len(), total, "{decrypted:?}");
    let mut seen: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for frame in &decrypted {
        let (from, to, port) = if frame.src.first() == Some(&a.wire_ip.to_string()) {
            (&a, &b, 7702)
        } else {
            (&b, &a, 7703)
        };
        let outer_and_inner = |n: &Node| vec![n.wire_ip.to_string(), n.pod_ip.to_string()];
        assert_eq!(frame.src, outer_and_inner(from), "{frame:?}");
        assert_eq!(frame.dst, outer_and_inner(to), "{frame:?}");
        assert_eq!(frame.port, Some(port), "{frame:?}");
        assert_eq!(frame.spi & 0xF, u32::from(generation), "{frame:?}");
        // The SAs have ESN, whose ICV Wireshark computes without the high sequence bits
        // (wireshark#19658): the right payloads, inner addresses and port are the proof.
        assert!(
            !frame.icv_good,
            "an ESN SA's ICV checked good: has tshark fixed wireshark#19658? {frame:?}"
        );
        seen.entry(from.name)
            .or_default()
            .push(frame.payload.clone().expect("a decrypted payload"));
    }
    for payloads in seen.values_mut().chain(sent.values_mut()) {
        payloads.sort();
    }
    assert_eq!(seen, sent, "the payloads tshark decrypted, by sender");
    if per_cpu {
        // Every CPU's SA carried its datagrams, each way, and tshark decrypted them all.
        let want: BTreeSet<u32> = (1..=per_cpu_sas as u32).collect();
        for node in [&a, &b] {
            let slots: BTreeSet<u32> = decrypted
                .iter()
                .filter(|f| f.src.first() == Some(&node.wire_ip.to_string()))
                .map(|f| spi::cpu_slot(f.spi))
                .collect();
            assert_eq!(
                slots, want,
                "{}: CPU slots of the SPIs decrypted",
                node.name
            );
        }
        let counters = a.netns.block_on(|| async {
            let netlink = xsteer::kernel::Netlink::connect().unwrap();
            xsteer::kernel::xfrm::state_counters(&netlink)
                .await
                .unwrap()
        });
        let (src, dst) = (a.wire_ip, b.wire_ip);
        let states = a.netns.block_on(move || async move {
            let netlink = xsteer::kernel::Netlink::connect().unwrap();
            xsteer::kernel::xfrm::states(&netlink).await.unwrap()
        });
        let mut per_cpu_packets = BTreeMap::new();
        for state in states
            .iter()
            .filter(|s| s.src == IpAddr::from(src) && s.dst == IpAddr::from(dst))
            .filter(|s| s.spi & 0xF == u32::from(generation))
        {
            let packets = counters.get(&state.key()).map_or(0, |c| c.packets);
            per_cpu_packets.insert(state.cpu, packets);
        }
        for cpu in 0..per_cpu_sas as u32 {
            assert!(
                per_cpu_packets
                    .get(&Some(cpu))
                    .is_some_and(|&n| n >= PER_DIRECTION as u64),
                "a's OUT SA of CPU {cpu} carried too little: {per_cpu_packets:?}"
            );
        }
        eprintln!("{prefix}: a's OUT SAs by CPU, packets: {per_cpu_packets:?}");
    }
    eprintln!(
        "{prefix}: tshark decrypted {total} of {total} ESP frames (generation {generation}, both \
         directions) with the esp_sa lines, 0 without"
    );

    for agent in &mut agents {
        let _ = agent.kill();
        let _ = agent.wait();
    }
    let _ = fs::remove_dir_all(records);
    tshark_took
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn keys_wireshark_lines_let_tshark_decrypt_the_wire() {
    let started = Instant::now();
    // Generations 3 (CBC) and 4 (GCM, the newest).
    let gcm = decrypt_a_capture("wshark-gcm", cluster::KEYS, 4, (2, 2), false);
    // The same and 5 (CBC, the newest).
    let keys = format!("{}{CBC_LINE}", cluster::KEYS);
    let cbc = decrypt_a_capture("wshark-cbc", &keys, 5, (2, 4), false);
    // GCM on per-CPU SAs: a line for each, and each CPU's SA decrypted.
    let pcpu = decrypt_a_capture("wshark-pcpu", cluster::KEYS, 4, (2, 2), true);
    eprintln!(
        "the test took {:.1} s, tshark {:.1} s of it (six runs)",
        started.elapsed().as_secs_f64(),
        (gcm + cbc + pcpu).as_secs_f64()
    );
}

/// The fields of an `esp_sa` line, unquoted.
fn fields(line: &str) -> Vec<&str> {
    line.strip_prefix('"')
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or_else(|| panic!("not quoted: {line}"))
        .split("\",\"")
        .collect()
}

/// Whether `field` is `0x` and the hex digits of `bytes` bytes.
fn hex_key(field: &str, bytes: usize) -> bool {
    field
        .strip_prefix("0x")
        .is_some_and(|h| h.len() == 2 * bytes && h.bytes().all(|b| b.is_ascii_hexdigit()))
}
