//! Key rotation without loss: two generations are added to the nodes' key files 2.5 s apart,
//! twice, under a 1,000 packets/s stream each way between pods on the two nodes. Each node
//! installs the new generation's IN SAs, advertises it in its record, and switches a peer over
//! only once the peer advertises it too: nothing is lost, nothing is duplicated, nothing leaves
//! in plaintext, and the wire moves from generation 4 to 5 to 6.

use std::{
    collections::BTreeMap,
    fs,
    net::{Ipv4Addr, UdpSocket},
    os::unix::fs::PermissionsExt,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use crate::{
    cluster::{self, Node},
    support::Netns,
    wire::Capture,
};

const RATE: u32 = 1_000;
const SECONDS: u32 = 12;

/// Appends `line` to the key file at `path` the way an operator's tooling should: a new file,
/// mode 0600, renamed over the old one.
fn append_key(path: &Path, line: &str) {
    let text = fs::read_to_string(path).unwrap() + line;
    let tmp = path.with_extension("new");
    fs::write(&tmp, text).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// A stream of sequence-numbered datagrams from `src` in `from` to `dst` in `to`; returns
/// (sent, distinct received, duplicates).
fn stream(
    from: &Netns,
    src: Ipv4Addr,
    to: &Netns,
    dst: Ipv4Addr,
    port: u16,
) -> (u32, usize, usize) {
    let receiver = to.run(move || UdpSocket::bind((dst, port)).unwrap());
    receiver
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let sender = from.run(move || UdpSocket::bind((src, 0)).unwrap());
    thread::scope(|s| {
        let received = s.spawn(|| {
            let mut seen: BTreeMap<u32, usize> = BTreeMap::new();
            let mut buf = [0u8; 4];
            while let Ok(n) = receiver.recv(&mut buf) {
                if n == 4 {
                    *seen.entry(u32::from_be_bytes(buf)).or_default() += 1;
                }
            }
            (seen.len(), seen.values().map(|c| c - 1).sum::<usize>())
        });
        let start = Instant::now();
        let mut sent = 0;
        for seq in 0..RATE * SECONDS {
            let due = start + Duration::from_secs(1) * seq / RATE;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            if sender.send_to(&seq.to_be_bytes(), (dst, port)).is_ok() {
                sent += 1;
            }
        }
        let (got, dups) = received.join().unwrap();
        (sent, got, dups)
    })
}

fn generate(spi: u8) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_xsteer"))
        .args(["keys", "generate", "--spi", &spi.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn keys_rotate_twice_under_load_with_nothing_lost_or_in_plaintext() {
    let (a, b, records) = cluster::pair_with_records("rotate");
    let mut agents = [a.start_agent(), b.start_agent()];
    // Both know each other before the stream starts.
    cluster::exchange(
        (&a.pod, a.pod_ip),
        (&b.pod, b.pod_ip),
        7600,
        1,
        Duration::from_secs(20),
    );
    let (wire_a, wire_b) = (
        Capture::start(&a.netns, "eth0"),
        Capture::start(&b.netns, "eth0"),
    );

    let (line5, line6) = (generate(5), generate(6));
    let keys = |n: &Node| n.dir.join("keys");
    let done = std::sync::atomic::AtomicBool::new(false);
    let ((ab, ba), rotations, (sent_a, sent_b)) = thread::scope(|s| {
        let ab = s.spawn(|| stream(&a.pod, a.pod_ip, &b.pod, b.pod_ip, 7601));
        let ba = s.spawn(|| stream(&b.pod, b.pod_ip, &a.pod, a.pod_ip, 7602));
        // 24,000 packets outgrow a capture socket's buffer: drain it as they come.
        let drain = s.spawn(|| {
            let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                from_a.extend(wire_a.take());
                from_b.extend(wire_b.take());
                thread::sleep(Duration::from_millis(100));
            }
            from_a.extend(wire_a.take());
            from_b.extend(wire_b.take());
            (from_a, from_b)
        });
        // The new key file reaches a, then b 2.5 s later; twice.
        let start = Instant::now();
        let mut rotations = Vec::new();
        for (at, node, line) in [
            (2.0, &a, &line5),
            (4.5, &b, &line5),
            (6.5, &a, &line6),
            (9.0, &b, &line6),
        ] {
            let due = start + Duration::from_secs_f64(at);
            thread::sleep(due.saturating_duration_since(Instant::now()));
            append_key(&keys(node), line);
            rotations.push(at);
        }
        let streams = (ab.join().unwrap(), ba.join().unwrap());
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (streams, rotations, drain.join().unwrap())
    });
    assert_eq!(rotations.len(), 4);
    let logs = format!("a:\n{}\nb:\n{}", a.agent_log(), b.agent_log());

    for (name, (sent, got, dups), packets, from, to) in [
        ("a -> b", ab, sent_a, &a, &b),
        ("b -> a", ba, sent_b, &b, &a),
    ] {
        let plaintext = packets.iter().filter(|p| p.is_udp_to(to.pod_ip)).count();
        let generations: Vec<u32> = packets
            .iter()
            .filter(|p| p.is_esp() && p.src == from.wire_ip)
            .filter_map(|p| p.spi)
            .map(|spi| spi & 0xF)
            .collect();
        let mut order = generations.clone();
        order.dedup();
        eprintln!(
            "{name}: {sent} sent, {got} received, {} lost, {dups} duplicated, {plaintext} plaintext; generations on the wire in order: {order:?}",
            sent as usize - got
        );
        assert_eq!(plaintext, 0, "{name}: plaintext on the wire");
        assert_eq!(sent as usize - got, 0, "{name}: lost across the rotations");
        assert_eq!(dups, 0, "{name}: duplicated");
        assert_eq!(
            order,
            [4, 5, 6],
            "{name}: the wire moves 4 -> 5 -> 6, never back\n{logs}"
        );
    }
    for agent in &mut agents {
        let _ = agent.kill();
        let _ = agent.wait();
    }
    let _ = fs::remove_dir_all(records);
}
