//! Re-keying before an SA's sequence counter runs out, on three nodes that learn each other from
//! node records.
//!
//! Once one of a node's outbound SAs has carried `--rekey-after-packets` packets, the node draws
//! a new epoch, installs SAs for it with every peer and publishes it in its record; each peer
//! installs its side and acks, and the node moves that peer's traffic over. The old epoch's SAs
//! go once every peer has acked and the grace period is over. The test sets the threshold low,
//! streams sequence-numbered datagrams between pods across many re-keys and counts: nothing
//! lost, nothing duplicated, nothing in plaintext on the wire, a new SPI on the wire well before
//! any SPI nears the stand-in limit, and only the current SAs left at the end, all with ESN.

use std::{
    collections::{BTreeMap, BTreeSet},
    thread,
    time::{Duration, Instant},
};

use xsteer::kernel::xfrm::REQID;

use crate::{
    cluster::{self, Node},
    streams::{self, Sa, Wire, agent_logs, connected, plaintext, spis_on_wire, start_agents, stop},
    support::Netns,
};

/// Datagrams per second on each stream.
const RATE: u32 = 500;
/// How long each stream runs: 15,000 datagrams, five times the threshold.
const SECONDS: u32 = 30;
/// `--rekey-after-packets`: far below the real default, so a 30 s stream re-keys several times.
const THRESHOLD: usize = 3_000;
/// The stand-in for an SA's counter limit: without re-keying one SPI would carry a whole stream.
const LIMIT: usize = 3 * THRESHOLD;
/// The shortened grace period the agents run with, in seconds.
const GRACE: &str = "2";

/// The SAs xsteer owns in `netns` ([`REQID`] in the low half of their reqid).
fn xsteer_sas(netns: &Netns) -> Vec<Sa> {
    streams::sas(netns)
        .into_iter()
        .filter(|sa| sa.reqid & 0xFFFF == REQID)
        .collect()
}

/// The SPI of the shared SA of the set `spi`'s SA belongs to.
fn shared_spi(spi: u32) -> u32 {
    xsteer::protocol::cpu_spi(spi, 0)
}

/// `spis` with repeats folded into counts: `[(spi, packets), ...]` in wire order.
fn runs(spis: &[u32]) -> Vec<(u32, usize)> {
    let mut runs: Vec<(u32, usize)> = Vec::new();
    for &spi in spis {
        match runs.last_mut() {
            Some((last, count)) if *last == spi => *count += 1,
            _ => runs.push((spi, 1)),
        }
    }
    runs
}

/// `0x00011234 x2999, 0x00015234 x3001, ...`.
fn describe(runs: &[(u32, usize)]) -> String {
    runs.iter()
        .map(|(spi, count)| format!("{spi:#010x} x{count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits until every node in `nodes` holds exactly `want` xsteer SAs; returns what each holds.
/// Panics naming the SPIs each holds after `timeout`.
fn wait_for_sa_count(nodes: &[&Node], want: usize, timeout: Duration) -> Vec<Vec<Sa>> {
    let start = Instant::now();
    loop {
        let held: Vec<Vec<Sa>> = nodes.iter().map(|n| xsteer_sas(&n.netns)).collect();
        if held.iter().all(|h| h.len() == want) {
            return held;
        }
        assert!(
            start.elapsed() < timeout,
            "xsteer SAs after {timeout:?}, want {want} on every node (the old epochs' SAs gone): {}\n{}",
            nodes
                .iter()
                .zip(&held)
                .map(|(n, h)| format!(
                    "{} holds {} [{}]",
                    n.name,
                    h.len(),
                    h.iter()
                        .map(|sa| format!("{:#010x}", sa.spi))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .collect::<Vec<_>>()
                .join("; "),
            agent_logs(nodes)
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn sas_are_rekeyed_before_their_counter_limit_with_nothing_lost_or_in_plaintext() {
    let cluster = cluster::trio_with_records("rekey");
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let nodes = [a, b, c];
    let threshold = THRESHOLD.to_string();
    let mut agents = start_agents(
        &nodes,
        &[
            "--rotation-grace",
            GRACE,
            "--rekey-after-packets",
            &threshold,
        ],
    );
    connected(&nodes, 7800);

    let wire = Wire::start(&nodes);
    let streams = thread::scope(|s| {
        [(a, b, 7801), (b, c, 7802), (c, a, 7803)]
            .map(|(from, to, port)| {
                s.spawn(move || (from, to, streams::stream(from, to, port, RATE, SECONDS)))
            })
            .map(|t| t.join().unwrap())
    });
    let ended = Instant::now();
    let packets = wire.stop();

    let plain = plaintext(&packets, &nodes);
    eprintln!(
        "{} packets on the wire, {plain} plaintext pod packets",
        packets.len()
    );
    assert_eq!(plain, 0, "plaintext pod packets on the wire");

    let mut summary = Vec::new();
    let mut most = 0;
    let mut most_sets = 0;
    for (from, to, s) in &streams {
        let spis = spis_on_wire(&packets, from, to);
        // The moves from set to set; per-CPU SAs of one set alternate as the sender moves.
        let sets: Vec<u32> = spis.iter().map(|&spi| shared_spi(spi)).collect();
        let runs = runs(&sets);
        let mut per_spi: BTreeMap<u32, usize> = BTreeMap::new();
        for &spi in &spis {
            *per_spi.entry(spi).or_default() += 1;
        }
        let (busiest, max) = per_spi
            .iter()
            .max_by_key(|(_, n)| **n)
            .map_or((0, 0), |(spi, n)| (*spi, *n));
        // Per-CPU SAs of one set count once: a re-key makes a new set.
        let distinct: BTreeSet<u32> = per_spi.keys().map(|&spi| shared_spi(spi)).collect();
        let dir = format!("{} -> {}", from.name, to.name);
        eprintln!(
            "{dir}: {} sent, {} received, {} lost, {} duplicated; {} ESP packets, {} SA sets on the \
             wire: {}",
            s.sent,
            s.received,
            s.lost(),
            s.duplicates,
            spis.len(),
            distinct.len(),
            describe(&runs)
        );
        assert_eq!(
            s.sent,
            RATE * SECONDS,
            "{dir}: {} of {} datagrams refused at the sender",
            RATE * SECONDS - s.sent,
            RATE * SECONDS
        );
        assert_eq!(
            s.lost(),
            0,
            "{dir}: {} of {} datagrams lost across the re-keys\n{}\n{}",
            s.lost(),
            s.sent,
            streams::drop_counters(&nodes),
            agent_logs(&nodes)
        );
        assert_eq!(
            s.duplicates, 0,
            "{dir}: {} datagrams duplicated",
            s.duplicates
        );
        // Per-CPU SAs share a direction's packets, so each SA reaches the threshold later: at
        // least one re-key per direction here, and a second one somewhere (checked below).
        assert!(
            distinct.len() >= 2,
            "{dir}: {} SA sets on the wire, want at least 2 (a re-key) with the threshold at \
             {THRESHOLD} packets: {}\n{}",
            distinct.len(),
            describe(&runs),
            agent_logs(&nodes)
        );
        most_sets = most_sets.max(distinct.len());
        let foreign: Vec<String> = distinct
            .iter()
            .filter(|spi| *spi >> 16 != u32::from(from.id))
            .map(|spi| format!("{spi:#010x}"))
            .collect();
        assert!(
            foreign.is_empty(),
            "{dir}: SPIs {foreign:?} do not carry the sender's node ID {} in their high 16 bits",
            from.id
        );
        assert!(
            max < LIMIT,
            "{dir}: SPI {busiest:#010x} carried {max} packets, the limit is {LIMIT} (3 x the \
             threshold {THRESHOLD}): not re-keyed in time: {}\n{}",
            describe(&runs),
            agent_logs(&nodes)
        );
        most = most.max(max);
        summary.push(format!("{dir} {}", distinct.len()));
    }
    assert!(
        most_sets >= 3,
        "no direction re-keyed twice (SA sets per direction: {})\n{}",
        summary.join(", "),
        agent_logs(&nodes)
    );

    // The old epochs go once every peer has acked the newest and the grace period is over: two
    // peers, IN and OUT, one generation, each set a shared SA and one per CPU.
    let per_set = 1 + usize::from(xsteer::kernel::xfrm::per_cpu_sa_count());
    let held = wait_for_sa_count(&nodes, 4 * per_set, Duration::from_secs(20));
    let waited = ended.elapsed();
    for (node, sas) in nodes.iter().zip(&held) {
        for sa in sas {
            assert!(
                sa.flags.iter().any(|f| f == "esn"),
                "{}: SA {:#010x} has flags {:?}, not esn\n{}",
                node.name,
                sa.spi,
                sa.flags,
                node.netns.ip(&["xfrm", "state", "show"])
            );
        }
    }
    eprintln!(
        "re-keyed under {} streams of {} datagrams at {RATE}/s with nothing lost or in plaintext; \
         SPIs per direction: {}; at most {most} packets on one SPI (threshold {THRESHOLD}, limit \
         {LIMIT}); {} SAs, all ESN, on every node {waited:?} after the streams ended",
        streams.len(),
        RATE * SECONDS,
        summary.join(", "),
        4 * per_set
    );
    stop(&mut agents);
}

/// Polls `node`'s status until `done` holds for it; panics with the agent's log after `timeout`.
fn wait_for_status(
    node: &Node,
    what: &str,
    timeout: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let status = streams::status(node);
        if done(&status) {
            return status;
        }
        assert!(
            start.elapsed() < timeout,
            "{}: {what} not seen within {timeout:?}: epoch {}, next {}\n{}",
            node.name,
            status["epoch"],
            status["next_epoch"],
            node.agent_log()
        );
        thread::sleep(Duration::from_millis(250));
    }
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn an_agent_killed_in_the_middle_of_a_rekey_resumes_it_with_nothing_lost() {
    let cluster = cluster::trio_with_records("rekeyrestart");
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let nodes = [a, b, c];
    // A long grace keeps the old epoch's SAs, and so the re-key, open across the restart; only
    // a sends (a one-way stream to b), so only a re-keys.
    let args = ["--rotation-grace", "20", "--rekey-after-packets", "2000"];
    let mut agents = start_agents(&nodes, &args);
    connected(&nodes, 7900);
    let configured = streams::status(a)["epoch"].clone();

    let wire = Wire::start(&nodes);
    let (ab, next) = thread::scope(|s| {
        let ab = s.spawn(|| streams::stream(a, b, 7901, RATE, 24));
        // a's re-key begins, b acks it: SIGKILL a's agent mid-way and start it again.
        let acked_by_b = |s: &serde_json::Value| {
            s["next_epoch"].is_string()
                && s["peers"].as_array().is_some_and(|p| {
                    p.iter()
                        .any(|p| p["name"] == "b" && p["rekey"] == "switched")
                })
        };
        let status = wait_for_status(
            a,
            "b acking a's new epoch",
            Duration::from_secs(20),
            acked_by_b,
        );
        let next = status["next_epoch"].clone();
        let _ = agents[0].kill();
        let _ = agents[0].wait();
        thread::sleep(Duration::from_secs(1));
        agents[0] = a.start_agent_with(&args);
        let resumed = streams::status(a);
        assert_eq!(
            (&resumed["epoch"], &resumed["next_epoch"]),
            (&configured, &next),
            "the restarted agent resumes the same re-key\n{}",
            a.agent_log()
        );
        (ab.join().unwrap(), next)
    });
    let packets = wire.stop();
    // By SA set: the sender's thread may move between CPUs, and so between per-CPU SAs.
    let spis: Vec<u32> = spis_on_wire(&packets, a, b)
        .into_iter()
        .map(shared_spi)
        .collect();
    let order = runs(&spis);
    eprintln!(
        "a -> b across a SIGKILL mid re-key: {} sent, {} lost, {} duplicated; SPIs on the wire: {}",
        ab.sent,
        ab.lost(),
        ab.duplicates,
        describe(&order)
    );
    assert_eq!(plaintext(&packets, &nodes), 0, "plaintext pod packets");
    assert_eq!(
        (ab.sent, ab.lost(), ab.duplicates),
        (RATE * 24, 0, 0),
        "{}",
        agent_logs(&nodes)
    );
    // One move, old SA to new: the restart neither drew another epoch nor went back.
    assert_eq!(
        order.len(),
        2,
        "a -> b went through {}\n{}",
        describe(&order),
        agent_logs(&nodes)
    );

    // The re-key ends a grace period after the restart: the new epoch is a's only one.
    wait_for_status(a, "the re-key finish", Duration::from_secs(40), |s| {
        s["epoch"] == next
    });
    stop(&mut agents);
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn a_node_whose_sas_were_wiped_takes_a_new_epoch_by_itself() {
    let cluster = cluster::trio_with_records("rekeywipe");
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let nodes = [a, b, c];
    let mut agents = start_agents(&nodes, &[]);
    connected(&nodes, 7950);
    let before = streams::status(a)["epoch"].clone();

    // As after a reboot: a's agent gone and everything xsteer had in a's kernel with it, while
    // its state directory (the key ledger, the epochs) stays. The outbound keys of a's epoch are
    // used up: the agent must not install them again, and must not stay down either.
    let _ = agents[0].kill();
    let _ = agents[0].wait();
    let mut uninstall = a.xsteer("uninstall", &[]);
    let out = a.netns.run(move || uninstall.output().unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(xsteer_sas(&a.netns).is_empty(), "uninstall left SAs");

    let wire = Wire::start(&nodes);
    agents[0] = a.start_agent();
    let after = streams::status(a)["epoch"].clone();
    assert_ne!(after, before, "a new epoch\n{}", a.agent_log());
    assert!(
        a.agent_log().contains("taking the new epoch"),
        "the agent says why it took a new epoch:\n{}",
        a.agent_log()
    );
    // The peers follow a's record; from then on traffic both ways flows under the new epoch.
    connected(&nodes, 7951);
    let (ab, ba) = thread::scope(|s| {
        let ab = s.spawn(|| streams::stream(a, b, 7952, RATE, 6));
        let ca = s.spawn(|| streams::stream(c, a, 7953, RATE, 6));
        (ab.join().unwrap(), ca.join().unwrap())
    });
    let packets = wire.stop();
    eprintln!(
        "after a's SAs were wiped: a -> b {} of {} received, c -> a {} of {}; {} wire packets, \
         epoch {before} -> {after}",
        ab.received,
        ab.sent,
        ba.received,
        ba.sent,
        packets.len()
    );
    assert_eq!(plaintext(&packets, &nodes), 0, "plaintext pod packets");
    for (name, s) in [("a -> b", &ab), ("c -> a", &ba)] {
        assert_eq!(
            (s.sent, s.lost(), s.duplicates),
            (RATE * 6, 0, 0),
            "{name}\n{}",
            agent_logs(&nodes)
        );
    }
    stop(&mut agents);
}
