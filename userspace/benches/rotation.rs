//! How long a key rotation takes to reach every peer, and what it loses, on a lab cluster
//! (`cargo xtask bench rotation` runs it in the VM bed, which has ESP).
//!
//! For 3 and then 20 nodes (one pod each): `xsteer lab up`, a 1,000 packets/s stream of
//! sequence-numbered datagrams from node1's pod to node2's pod, then three rotations, each
//! `xsteer keys rotate` on the lab's key file (every node's agent reads that one file). Timed is
//! the key file change until every node's pinned `remote_pod_cidrs` marks every peer with the new
//! generation, polled every 20 ms: that is the moment every node sends with it to every peer,
//! having waited for each peer to advertise it. The stream ends 2 s after the last rotation and
//! its losses and duplicates are counted.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    net::UdpSocket,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use xsteer::{
    dataplane::Dataplane,
    keys,
    lab::{
        agents,
        netns::run_in,
        topology::{LabNode, Size, plan},
    },
};

#[path = "support/lab_cli.rs"]
mod lab_cli;

use lab_cli::xsteer_lab;

const ROTATIONS: usize = 3;
const RATE: u32 = 1_000;

/// Whether every node marks every peer's pod CIDR with generation `spi`.
fn switched(nodes: &[LabNode], spi: u8) -> bool {
    nodes.iter().all(|node| {
        let Ok(mut dataplane) = Dataplane::load_pinned(&agents::pin_dir(&node.name)) else {
            return false;
        };
        let Ok(entries) = dataplane.remote_pod_cidrs().and_then(|m| m.entries()) else {
            return false;
        };
        entries.len() == nodes.len() - 1 && entries.iter().all(|(_, v)| v.generation == spi)
    })
}

/// The stream's counts: (sent, distinct received, duplicates).
struct Stream {
    stop: Arc<AtomicBool>,
    sender: thread::JoinHandle<u32>,
    receiver: thread::JoinHandle<(usize, usize)>,
}

fn start_stream(from: &LabNode, to: &LabNode) -> Stream {
    let (src, dst) = (from.pods[0].ip, to.pods[0].ip);
    let receiver = run_in(&to.pods[0].netns, move || Ok(UdpSocket::bind((dst, 9100))?)).unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let sender = run_in(&from.pods[0].netns, move || Ok(UdpSocket::bind((src, 0))?)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let sender = thread::spawn(move || {
        let start = Instant::now();
        let mut seq = 0u32;
        while !stopped.load(Ordering::Relaxed) {
            let due = start + Duration::from_secs(1) * seq / RATE;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            let _ = sender.send_to(&seq.to_be_bytes(), (dst, 9100));
            seq += 1;
        }
        seq
    });
    let receiver = thread::spawn(move || {
        let mut seen: BTreeMap<u32, usize> = BTreeMap::new();
        let mut buf = [0u8; 4];
        while let Ok(n) = receiver.recv(&mut buf) {
            if n == 4 {
                *seen.entry(u32::from_be_bytes(buf)).or_default() += 1;
            }
        }
        (seen.len(), seen.values().map(|c| c - 1).sum())
    });
    Stream {
        stop,
        sender,
        receiver,
    }
}

/// One size: the switch times of [`ROTATIONS`] rotations, and (sent, lost, duplicated).
fn measure(nodes: u8, dir: &Path) -> (Vec<Duration>, (u32, usize, usize)) {
    xsteer_lab(&["down"], dir);
    let size = nodes.to_string();
    assert!(
        xsteer_lab(&["up", "--nodes", &size, "--pods", "1"], dir),
        "lab up"
    );
    let lab_nodes = plan(Size { nodes, pods: 1 });
    let lab = &lab_nodes;
    let stream = start_stream(&lab[0], &lab[1]);
    thread::sleep(Duration::from_secs(2));
    let mut times = Vec::new();
    for round in 1..=ROTATIONS {
        let rotated = keys::rotate(&dir.join("keys")).expect("rotating the lab's key file");
        let start = Instant::now();
        while !switched(lab, rotated.generation.get()) {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{nodes} nodes: not every peer switched to generation {} within 120 s",
                rotated.generation
            );
            thread::sleep(Duration::from_millis(20));
        }
        times.push(start.elapsed());
        eprintln!(
            "{nodes} nodes, rotation {round}/{ROTATIONS}: every peer on generation {} after {:?}",
            rotated.generation,
            times.last().unwrap()
        );
        thread::sleep(Duration::from_secs(1));
    }
    thread::sleep(Duration::from_secs(1));
    stream.stop.store(true, Ordering::Relaxed);
    let sent = stream.sender.join().unwrap();
    let (received, duplicates) = stream.receiver.join().unwrap();
    assert!(xsteer_lab(&["down"], dir), "lab down");
    (times, (sent, sent as usize - received, duplicates))
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test` runs benches once without --bench: nothing to check here.
    }
    let dir = std::env::temp_dir().join("xsteer-bench-rotation");
    println!(
        "| nodes | peer entries switched | key file change → every peer switched (median) | min – max | datagrams sent | lost | duplicated |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for nodes in [3u8, 20] {
        let (mut times, (sent, lost, duplicates)) = measure(nodes, &dir);
        times.sort();
        let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {nodes} | {} | {:.0} ms | {:.0} – {:.0} ms | {sent} | {lost} | {duplicates} |",
            usize::from(nodes) * usize::from(nodes - 1),
            ms(&times[times.len() / 2]),
            ms(&times[0]),
            ms(times.last().unwrap())
        );
    }
    println!();
    println!(
        "Medians of {ROTATIONS} rotations per size, one 1,000 packets/s stream node1 → node2 across them; the agents watch the key file's and the node records' directories with inotify (and poll them every 1,000 ms besides); VM under emulation (TCG)."
    );
}
