//! Key rotation without loss, on three nodes that learn each other from node records.
//!
//! Each node installs a new generation's IN SAs, advertises it in its record, and switches a
//! peer over only once the peer advertises it too; an old generation goes once every peer has
//! moved past it and the grace period is over. The tests stream sequence-numbered datagrams
//! between pods across the rotations and count: nothing lost, nothing duplicated, nothing in
//! plaintext on the wire, and old SAs gone at the end.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use crate::{
    cluster::{self, Node},
    streams::{
        Wire, agent_logs, connected, plaintext, sas, spis_on_wire, start_agents, status, stop,
        stream,
    },
    support::Netns,
    wire::Packet,
};

const RATE: u32 = 1_000;
/// The shortened grace period the agents run with, in seconds.
const GRACE: &str = "3";
/// What every agent runs with.
const AGENT: [&str; 2] = ["--rotation-grace", GRACE];

/// Appends `line` to the key file at `path` the way an operator's tooling should: a new file,
/// mode 0600, renamed over the old one.
fn append_key(path: &Path, line: &str) {
    let text = fs::read_to_string(path).unwrap() + line;
    let tmp = path.with_extension("new");
    fs::write(&tmp, text).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// `xsteer keys generate --spi SPI`.
fn generate(spi: u8) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_xsteer"))
        .args(["keys", "generate", "--spi", &spi.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// The generations of the ESP packets from `from` to `to` on the wire, in order, repeats
/// folded: `[4, 5, 6]`.
fn generations_on_wire(packets: &[Packet], from: &Node, to: &Node) -> Vec<u32> {
    let mut order: Vec<u32> = spis_on_wire(packets, from, to)
        .into_iter()
        .map(|spi| spi & 0xF)
        .collect();
    order.dedup();
    order
}

/// The generations of the SAs in `netns` (the low nibble of each SPI).
fn installed_generations(netns: &Netns) -> BTreeSet<u32> {
    sas(netns).iter().map(|sa| sa.spi & 0xF).collect()
}

/// Waits until every node in `nodes` holds SAs of `generations` only; panics naming what each
/// holds after `timeout`.
fn wait_for_generations(nodes: &[&Node], generations: &[u32], timeout: Duration) -> Duration {
    let start = Instant::now();
    let want: BTreeSet<u32> = generations.iter().copied().collect();
    loop {
        let held: Vec<BTreeSet<u32>> = nodes
            .iter()
            .map(|n| installed_generations(&n.netns))
            .collect();
        if held.iter().all(|h| *h == want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "SAs of generations {held:?} after {timeout:?}, want only {want:?}\n{}",
            agent_logs(nodes)
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// The status of `node`'s peer `name`.
fn peer_status(node: &Node, name: &str) -> serde_json::Value {
    let json = status(node);
    json["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{} does not list {name}: {json}", node.name))
        .clone()
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn keys_rotate_twice_across_three_nodes_with_nothing_lost_or_in_plaintext() {
    let cluster = cluster::trio_with_records("rotate");
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let nodes = [a, b, c];
    let mut agents = start_agents(&nodes, &AGENT);
    connected(&nodes, 7600);
    let wire = Wire::start(&nodes);

    // The new key file reaches a, b and c 2.5 s apart; twice.
    let (line5, line6) = (generate(5), generate(6));
    let seconds = 18;
    let (streams, rotated_at) = thread::scope(|s| {
        let streams = [(a, b, 7601), (b, c, 7602), (c, a, 7603)].map(|(from, to, port)| {
            s.spawn(move || (from, to, stream(from, to, port, RATE, seconds)))
        });
        let start = Instant::now();
        let mut rotated_at = Vec::new();
        for (at, node, line) in [
            (2.0, a, &line5),
            (4.5, b, &line5),
            (7.0, c, &line5),
            (9.5, a, &line6),
            (12.0, b, &line6),
            (14.5, c, &line6),
        ] {
            let due = start + Duration::from_secs_f64(at);
            thread::sleep(due.saturating_duration_since(Instant::now()));
            append_key(&node.dir.join("keys"), line);
            rotated_at.push(at);
        }
        (streams.map(|t| t.join().unwrap()), rotated_at)
    });
    assert_eq!(rotated_at.len(), 6);
    let packets = wire.stop();
    let logs = || agent_logs(&nodes);

    let plain = plaintext(&packets, &nodes);
    eprintln!(
        "{} packets on the wire, {plain} plaintext pod packets",
        packets.len()
    );
    assert_eq!(plain, 0, "plaintext pod packets on the wire");
    for (from, to, s) in &streams {
        let order = generations_on_wire(&packets, from, to);
        eprintln!(
            "{} -> {}: {} sent, {} received, {} lost, {} duplicated; generations on the wire: {order:?}",
            from.name,
            to.name,
            s.sent,
            s.received,
            s.lost(),
            s.duplicates
        );
        assert_eq!(
            s.lost(),
            0,
            "{} -> {}: lost across the rotations",
            from.name,
            to.name
        );
        assert_eq!(s.duplicates, 0, "{} -> {}: duplicated", from.name, to.name);
        assert_eq!(
            order,
            [4, 5, 6],
            "{} -> {}: the wire moves 4 -> 5 -> 6, never back\n{}",
            from.name,
            to.name,
            logs()
        );
    }
    // Generations 3, 4 and 5 go once every peer has moved past them and 3 s have passed.
    let waited = wait_for_generations(&nodes, &[6], Duration::from_secs(20));
    eprintln!("only generation 6 left on every node {waited:?} after the streams ended");
    for node in nodes {
        for peer in nodes.iter().filter(|p| p.id != node.id) {
            let p = peer_status(node, peer.name);
            assert_eq!(p["sending_generation"], 6, "{}: {p}", node.name);
            assert_eq!(p["receives"], serde_json::json!([6]), "{}: {p}", node.name);
            assert_eq!(p["rotation"], "done", "{}: {p}", node.name);
        }
        let log = node.agent_log();
        assert!(
            log.contains("key generation 4 retired") && log.contains("key generation 5 retired"),
            "{}:\n{log}",
            node.name
        );
    }
    stop(&mut agents);
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn a_node_down_during_a_rotation_catches_up_when_it_returns() {
    let cluster = cluster::trio_with_records("rotdown");
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let nodes = [a, b, c];
    let mut agents = start_agents(&nodes, &AGENT);
    connected(&nodes, 7700);

    // c goes down: its agent dies and its port on the wire goes dark. Its record stays, listing
    // generations 3 and 4 only.
    let _ = agents[2].kill();
    let _ = agents[2].wait();
    cluster.wire.ip(&["link", "set", &c.wire_port(), "down"]);

    // a and b rotate to 5 between them, 2 s apart, under a stream, without waiting for c.
    let line5 = generate(5);
    let wire = Wire::start(&[a, b]);
    let ab = thread::scope(|s| {
        let ab = s.spawn(|| stream(a, b, 7701, RATE, 8));
        thread::sleep(Duration::from_secs(2));
        append_key(&a.dir.join("keys"), &line5);
        thread::sleep(Duration::from_secs(2));
        append_key(&b.dir.join("keys"), &line5);
        ab.join().unwrap()
    });
    let packets = wire.stop();
    eprintln!(
        "a -> b while c is down: {} sent, {} lost, {} duplicated; generations {:?}",
        ab.sent,
        ab.lost(),
        ab.duplicates,
        generations_on_wire(&packets, a, b)
    );
    assert_eq!((ab.lost(), ab.duplicates), (0, 0));
    assert_eq!(plaintext(&packets, &[a, b]), 0);
    assert_eq!(generations_on_wire(&packets, a, b), [4, 5]);
    // Towards c, a and b still send with 4 and keep its SAs, however long the grace has passed.
    for node in [a, b] {
        let to_b_or_a = peer_status(node, if node.id == 1 { "b" } else { "a" });
        assert_eq!(to_b_or_a["rotation"], "done", "{to_b_or_a}");
        let to_c = peer_status(node, "c");
        assert_eq!(to_c["sending_generation"], 4, "{to_c}");
        assert_eq!(to_c["rotation"], "waiting_for_peer", "{to_c}");
        assert_eq!(
            installed_generations(&node.netns),
            BTreeSet::from([4, 5]),
            "{}: generation 4 must stay while c may still send with it\n{}",
            node.name,
            node.agent_log()
        );
    }

    // c comes back with the new key file and catches up: traffic to and from it flows with
    // nothing lost from the moment its agent runs.
    append_key(&c.dir.join("keys"), &line5);
    cluster.wire.ip(&["link", "set", &c.wire_port(), "up"]);
    agents[2] = c.start_agent_with(&AGENT);
    let wire = Wire::start(&nodes);
    let (ac, cb) = thread::scope(|s| {
        let ac = s.spawn(|| stream(a, c, 7702, RATE, 6));
        let cb = s.spawn(|| stream(c, b, 7703, RATE, 6));
        (ac.join().unwrap(), cb.join().unwrap())
    });
    let packets = wire.stop();
    for (name, s, from, to) in [("a -> c", &ac, a, c), ("c -> b", &cb, c, b)] {
        let order = generations_on_wire(&packets, from, to);
        eprintln!(
            "{name} after c is back: {} sent, {} lost, {} duplicated; generations {order:?}",
            s.sent,
            s.lost(),
            s.duplicates
        );
        assert_eq!(
            (s.lost(), s.duplicates),
            (0, 0),
            "{name}\n{}",
            c.agent_log()
        );
        assert_eq!(order.last(), Some(&5), "{name} ends on generation 5");
    }
    assert_eq!(plaintext(&packets, &nodes), 0);
    let waited = wait_for_generations(&nodes, &[5], Duration::from_secs(20));
    eprintln!("generation 4 gone from every node {waited:?} after the streams ended");
    stop(&mut agents);
}
