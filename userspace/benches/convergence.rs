//! Control-plane convergence: how long xsteer takes to turn a desired state into kernel state,
//! against `ip -batch` installing the same kernel objects.
//!
//! Method. Every run happens in a network namespace of its own (`unshare(CLONE_NEWNET)` in a
//! dedicated thread) holding a veth uplink `xs0` with 192.168.0.1/16; peer *i* has node IP
//! 192.168.0.1 + *i* on that /16 and one pod CIDR 10.*x*.*y*.0/24. The host kernel has no ESP,
//! so SAs are left out exactly as `userspace/tests/reconcile.rs` does (`want.states.clear()`):
//! what is measured is the policies (one block policy, then eight per peer: see
//! `POLICIES_PER_PEER`), the encrypt rule, a route per peer in table 200, and the map entries.
//!
//! - **xsteer**: outside the timed section, the netlink sockets are opened, the uplink and a
//!   route to every peer are looked up (`routing::uplink`, `routing::route_to`), `desired()` is
//!   computed, the maps are created (`Dataplane::load()`, unpinned) and a key ledger opened in a
//!   temp dir. Timed: `reconcile::read` + `plan` + `reconcile::execute`, from an empty namespace
//!   to converged. The time of each change is attributed to its kind from `execute`'s per-change
//!   callback (an `Instant::now()` per change, well under 1 % of the figure).
//! - **One-peer change**: in one namespace, 1,000 peers are converged (untimed), then a 1,001st
//!   peer is added and read + plan + execute of that change is timed: it includes reading back
//!   the whole 1,000-peer state, which is what a real reconcile does. The peer is removed again,
//!   untimed, before the next round.
//! - **Baseline**: the same policies, rule and routes (maps excluded: `ip` cannot write BPF
//!   maps) generated from the same desired snapshot into a batch file, installed with one
//!   `ip -batch FILE`, timed from spawning `ip` to its exit (process start-up included), in a
//!   fresh namespace of its own. For the one-peer change, the baseline adds the peer's
//!   policies and route with `ip -batch` on top of 1,000 peers that `ip` installed.
//!
//! xsteer and `ip -batch` runs alternate (which goes first alternates too) so that drift and the
//! other users of the machine hit both alike; figures are medians. Correctness is checked once
//! per configuration, outside the timed section: after xsteer, `reconcile::read` must equal the
//! desired snapshot; after `ip -batch`, `ip xfrm policy count` must match the number of policies
//! and the policies, rule and routes xsteer reads back must equal the desired ones.
//!
//! Prints a markdown section for docs/benchmarks.md on stdout (the body that goes between the
//! `<!-- bench:convergence -->` markers), progress on stderr.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    future::Future,
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use xsteer::{
    cidr::Ipv4Cidr,
    dataplane::Dataplane,
    kernel::{
        Netlink,
        routing::{self, DEFAULT_RULE_PRIORITY, EncryptRule, PodRoute, ROUTE_PROTOCOL, Uplink},
        xfrm::{self, Cipher, Direction, Policy, PolicyAction},
    },
    keys::{Epoch, KeyFile},
    reconcile::{
        self, Change, Snapshot,
        desired::{Surroundings, desired},
        plan::plan,
    },
    state::KeyLedger,
    view::{LocalNode, Peer, View},
};

use support::ip;
use xsteer_common::mark;

/// Per peer with one pod CIDR and one generation: IN and FWD from its pods and from its node
/// IP, IN from its pods to this node, the marked OUT, and the unmarked OUT to its pods and to
/// its node IP.
const POLICIES_PER_PEER: u32 = 8;
/// Map entries per peer: its pod CIDR, its node, its SPI.
const MAP_ENTRIES_PER_PEER: usize = 3;
/// Kernel changes that adding or removing one peer makes: its policies, its route, its map
/// entries.
const CHANGES_PER_PEER: usize = POLICIES_PER_PEER as usize + 1 + MAP_ENTRIES_PER_PEER;
const KEYS: &str = "3 rfc4106(gcm(aes)) 0x000102030405060708090a0b0c0d0e0f10111213 128\n";
const TABLE: u32 = 200;
const UPLINK: &str = "xs0";
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
/// (peers, rounds).
const SIZES: [(u32, usize); 3] = [(1, 7), (100, 7), (1_000, 5)];
/// The one-peer change: on top of this many peers, this many rounds.
const CHANGE_BASE: u32 = 1_000;
const CHANGE_ROUNDS: usize = 15;
/// Target: a one-peer change on top of 1,000 peers applies in at most this long.
const CHANGE_TARGET: Duration = Duration::from_millis(10);
/// Pause after a namespace is left, so that its teardown in the kernel is not timed in the next
/// run.
const SETTLE: Duration = Duration::from_millis(150);

// ---------------------------------------------------------------------------------------------
// Namespaces and the `ip` tool.

/// Starts `f` in a thread of its own inside a fresh network namespace with lo up and the
/// uplink `xs0` (a veth, 192.168.0.1/16, both ends up).
fn spawn_in_fresh_netns<T, F, Fut>(f: F) -> thread::JoinHandle<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    support::spawn_in_fresh_netns(move || async move {
        ip(&["link", "add", UPLINK, "type", "veth", "peer", "name", "xs1"]);
        ip(&["addr", "add", "192.168.0.1/16", "dev", UPLINK]);
        ip(&["link", "set", UPLINK, "up"]);
        ip(&["link", "set", "xs1", "up"]);
        f().await
    })
}

/// Waits for a thread made by [`spawn_in_fresh_netns`], then lets its namespace go away.
fn join<T>(handle: thread::JoinHandle<T>) -> T {
    let out = handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    thread::sleep(SETTLE);
    out
}

fn in_fresh_netns<T, F, Fut>(f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    join(spawn_in_fresh_netns(f))
}

/// A file in the temp dir, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "xsteer-bench-convergence-{}-{tag}",
            std::process::id()
        ));
        fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Runs `ip -batch FILE` and returns how long it took from spawn to exit; panics if it failed.
fn ip_batch(file: &TempFile) -> Duration {
    let start = Instant::now();
    let out = Command::new("ip")
        .arg("-batch")
        .arg(&file.0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("running ip -batch");
    let took = start.elapsed();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ip -batch {} failed ({}): {}",
        file.0.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// The number of policies `ip xfrm policy count` reports (in + out + fwd).
fn ip_policy_count() -> usize {
    let text = ip(&["xfrm", "policy", "count"]);
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut total = 0;
    for dir in ["IN", "OUT", "FWD"] {
        let at = words
            .iter()
            .position(|w| *w == dir)
            .unwrap_or_else(|| panic!("no {dir} in `ip xfrm policy count`: {text}"));
        total += words[at + 1]
            .parse::<usize>()
            .unwrap_or_else(|_| panic!("`ip xfrm policy count`: {text}"));
    }
    total
}

// ---------------------------------------------------------------------------------------------
// The desired state.

fn peer(i: u32) -> Peer {
    Peer {
        name: format!("peer-{i}"),
        ip: Ipv4Addr::from(u32::from(NODE_IP) + i).into(),
        id: u16::try_from(i + 1).expect("node IDs fit"),
        pod_cidrs: vec![Ipv4Cidr::new(Ipv4Addr::from(0x0A00_0000 | (i << 8)), 24).unwrap()],
        pod_cidrs_v6: Vec::new(),
        epoch: Epoch::from_bytes([
            (i >> 8) as u8,
            i as u8,
            0x5E,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            1,
        ]),
        next_epoch: None,
        acked_epoch: None,
        generations: None,
        per_cpu_sas: 0,
        esp_in_udp: None,
        esn: true,
    }
}

/// This node and peers 1..=n.
fn view(n: u32) -> View {
    let mut view = View {
        route_table: TABLE,
        cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        cluster_cidrs_v6: Vec::new(),
        node: LocalNode {
            name: "node-a".into(),
            ip: NODE_IP.into(),
            id: 1,
            uplink: UPLINK.into(),
            pod_cidr: "10.255.0.0/24".parse().unwrap(),
            pod_cidr_v6: None,
            epoch: Epoch::from_bytes([0x11; 16]),
            next_epoch: None,
            per_cpu_sas: 0,
            encap: None,
        },
        peers: Vec::new(),
    };
    for i in 1..=n {
        view.admit(peer(i))
            .expect("the benchmark's peers fit together");
    }
    view
}

/// Looks up the uplink and every peer's next hop, and computes the desired state without SAs.
async fn desired_state(netlink: &Netlink, n: u32) -> (Uplink, Snapshot) {
    let view = view(n);
    let keys = KeyFile::parse(KEYS).unwrap();
    let uplink = routing::uplink(netlink, UPLINK).await.unwrap();
    let mut next_hops = BTreeMap::new();
    for peer in &view.peers {
        next_hops.insert(peer.ip, routing::route_to(netlink, peer.ip).await.unwrap());
    }
    let around = Surroundings {
        uplink: &uplink,
        next_hops: &next_hops,
        rule_priority: DEFAULT_RULE_PRIORITY,
        cipher: Cipher::Gcm,
        esn: true,
        per_cpu: false,
        nat_keepalive_secs: 0,
    };
    let mut want = desired(&view, &keys, &around).unwrap();
    want.states.clear(); // no ESP on the host kernel
    assert_eq!(want.policies.len() as u32, 1 + POLICIES_PER_PEER * n);
    assert_eq!(want.routes.len() as u32, n);
    (uplink, want)
}

fn map_entries(s: &Snapshot) -> usize {
    usize::from(!s.maps.cluster_pod_cidrs.is_empty())
        + s.maps.remote_pod_cidrs.len()
        + s.maps.local_pod_cidrs.len()
        + s.maps.peer_nodes.len()
        + s.maps.peer_spis.len()
}

// ---------------------------------------------------------------------------------------------
// The `ip -batch` baseline.

fn dir(direction: Direction) -> &'static str {
    match direction {
        Direction::In => "in",
        Direction::Out => "out",
        Direction::Fwd => "fwd",
    }
}

fn policy_selector(p: &Policy) -> String {
    let mut s = format!("src {} dst {} dir {}", p.src, p.dst, dir(p.direction));
    if let Some(m) = p.mark {
        write!(s, " mark {:#x} mask {:#x}", m.value, m.mask).unwrap();
    }
    s
}

fn policy_add(p: &Policy) -> String {
    let mut s = format!(
        "xfrm policy add {} priority {:#x}",
        policy_selector(p),
        p.priority
    );
    match p.action {
        PolicyAction::Block => s.push_str(" action block"),
        PolicyAction::Tunnel { src, dst, reqid } => write!(
            s,
            " tmpl src {src} dst {dst} proto esp mode tunnel reqid {reqid:#x}"
        )
        .unwrap(),
    }
    s
}

fn rule_add(r: &EncryptRule) -> String {
    format!(
        "rule add fwmark {:#x}/{:#x} priority {} lookup {}",
        mark::MAGIC_ENCRYPT,
        mark::MAGIC_MASK,
        r.priority,
        r.table
    )
}

fn route_add(r: &PodRoute, uplink: &Uplink) -> String {
    assert_eq!(r.oif, uplink.index, "every route leaves through the uplink");
    let mut s = format!("route add {}", r.dst);
    if let Some(via) = r.via {
        write!(s, " via {via}").unwrap();
    }
    write!(
        s,
        " dev {} table {TABLE} proto {ROUTE_PROTOCOL:#x} mtu {}",
        uplink.name, r.mtu
    )
    .unwrap();
    s
}

/// `ip -batch` lines that install the policies (the block policy first, as xsteer's plan
/// orders them), the rule and the routes of `want` that `have` lacks.
fn batch_add(have: &Snapshot, want: &Snapshot, uplink: &Uplink) -> String {
    let new: Vec<&Policy> = want
        .policies
        .iter()
        .filter(|(k, _)| !have.policies.contains_key(k))
        .map(|(_, p)| p)
        .collect();
    let (blocks, others): (Vec<&Policy>, Vec<&Policy>) = new
        .into_iter()
        .partition(|p| p.action == PolicyAction::Block);
    let mut out = String::new();
    for p in blocks.into_iter().chain(others) {
        writeln!(out, "{}", policy_add(p)).unwrap();
    }
    for r in want.rules.difference(&have.rules) {
        writeln!(out, "{}", rule_add(r)).unwrap();
    }
    for r in want.routes.difference(&have.routes) {
        writeln!(out, "{}", route_add(r, uplink)).unwrap();
    }
    out
}

/// `ip -batch` lines that remove what `want` has beyond `have` (policies and routes only).
fn batch_remove(have: &Snapshot, want: &Snapshot) -> String {
    let mut out = String::new();
    for r in want.routes.difference(&have.routes) {
        writeln!(out, "route delete {} table {TABLE}", r.dst).unwrap();
    }
    for (k, p) in &want.policies {
        if !have.policies.contains_key(k) {
            writeln!(out, "xfrm policy delete {}", policy_selector(p)).unwrap();
        }
    }
    out
}

/// Checks that the namespace holds exactly the policies, rule and routes of `want`: by
/// `ip xfrm policy count`, and by what xsteer reads back.
async fn check_ip_installed(netlink: &Netlink, want: &Snapshot) {
    assert_eq!(
        ip_policy_count(),
        want.policies.len(),
        "ip xfrm policy count"
    );
    let policies: BTreeMap<_, _> = xfrm::policies(netlink)
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.key(), p))
        .collect();
    assert!(
        policies == want.policies,
        "ip -batch installed other policies than desired"
    );
    let rules: Vec<EncryptRule> = routing::encrypt_rules(netlink).await.unwrap();
    assert_eq!(rules, want.rules.iter().copied().collect::<Vec<_>>());
    let routes: std::collections::BTreeSet<PodRoute> = routing::pod_routes(netlink, TABLE)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert!(
        routes == want.routes,
        "ip -batch installed other routes than desired"
    );
}

/// One `ip -batch` run of `n` peers in a fresh namespace.
fn ip_converge(n: u32, verify: bool) -> Duration {
    in_fresh_netns(move || async move {
        let netlink = Netlink::connect().unwrap();
        let (uplink, want) = desired_state(&netlink, n).await;
        let file = TempFile::new(
            &format!("{n}.batch"),
            &batch_add(&Snapshot::default(), &want, &uplink),
        );
        let took = ip_batch(&file);
        if verify {
            check_ip_installed(&netlink, &want).await;
        }
        took
    })
}

// ---------------------------------------------------------------------------------------------
// xsteer.

/// One timed read + plan + execute, with the time split by phase and by kind of change.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    total: Duration,
    read: Duration,
    plan: Duration,
    /// Policies (and SAs, none here).
    xfrm: Duration,
    /// The rule and the routes.
    routing: Duration,
    /// Map entries.
    maps: Duration,
    /// Not timed with the rest: uplink and next-hop lookups and `desired()`.
    prep: Duration,
    changes: usize,
}

/// Reads (unless `known` is given, as the agent's `Applier` remembers it), plans and executes.
async fn reconcile_timed(
    netlink: &Netlink,
    dataplane: &mut Dataplane,
    ledger: &mut KeyLedger,
    want: &Snapshot,
    known: Option<&Snapshot>,
) -> (Run, Snapshot) {
    let start = Instant::now();
    let have = match known {
        Some(known) => known.clone(),
        None => reconcile::read(netlink, dataplane, TABLE).await.unwrap(),
    };
    let read = Instant::now();
    let changes = plan(&have, want);
    let planned = Instant::now();
    let mut run = Run::default();
    let mut last = planned;
    let mut outbound = reconcile::Outbound {
        ledger,
        node_ip: NODE_IP.into(),
        peers: Default::default(),
        epochs: Vec::new(),
    };
    reconcile::execute(
        netlink,
        dataplane,
        &mut outbound,
        TABLE,
        &changes,
        |change| {
            let now = Instant::now();
            let took = now - last;
            last = now;
            match change {
                Change::AddState(_)
                | Change::DeleteState(_)
                | Change::AddPolicy(_)
                | Change::ReplacePolicy(_)
                | Change::DeletePolicy(_) => run.xfrm += took,
                Change::AddRule(_)
                | Change::DeleteRule(_)
                | Change::AddRoute(_)
                | Change::ReplaceRoute(_)
                | Change::DeleteRoute(_) => run.routing += took,
                _ => run.maps += took,
            }
        },
    )
    .await
    .unwrap();
    let end = Instant::now();
    run.total = end - start;
    run.read = read - start;
    run.plan = planned - read;
    run.changes = changes.len();
    (run, have)
}

fn ledger_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "xsteer-bench-convergence-{}-{tag}",
        std::process::id()
    ))
}

/// One xsteer run of `n` peers from an empty namespace to converged.
fn xsteer_converge(n: u32, verify: bool) -> Run {
    in_fresh_netns(move || async move {
        let netlink = Netlink::connect().unwrap();
        let prep = Instant::now();
        let (_, want) = desired_state(&netlink, n).await;
        let prep = prep.elapsed();
        let mut dataplane = Dataplane::load().expect("load the object (root?)");
        let dir = ledger_dir(&format!("ledger-{n}"));
        let mut ledger = KeyLedger::open(&dir).unwrap();

        let (mut run, have) =
            reconcile_timed(&netlink, &mut dataplane, &mut ledger, &want, None).await;
        run.prep = prep;
        assert_eq!(
            have,
            Snapshot::default(),
            "the namespace and maps start empty"
        );
        assert_eq!(
            run.changes,
            want.policies.len() + want.rules.len() + want.routes.len() + map_entries(&want)
        );
        if verify {
            let after = reconcile::read(&netlink, &mut dataplane, TABLE)
                .await
                .unwrap();
            assert!(
                after == want,
                "{n} peers: xsteer did not converge to the desired state"
            );
        }
        let _ = fs::remove_dir_all(dir);
        run
    })
}

/// Time spent in each part of `reconcile::read`, on a converged namespace: SAs, policies, the
/// rule, routes, maps.
#[derive(Clone, Copy, Debug, Default)]
struct ReadProfile([Duration; 5]);

async fn profile_read(netlink: &Netlink, dataplane: &mut Dataplane) -> ReadProfile {
    let mut p = ReadProfile::default();
    let mut t = Instant::now();
    let mut lap = |slot: &mut Duration| {
        let now = Instant::now();
        *slot = now - t;
        t = now;
    };
    xfrm::states(netlink).await.unwrap();
    lap(&mut p.0[0]);
    xfrm::policies(netlink).await.unwrap();
    lap(&mut p.0[1]);
    routing::encrypt_rules(netlink).await.unwrap();
    lap(&mut p.0[2]);
    routing::pod_routes(netlink, TABLE).await.unwrap();
    lap(&mut p.0[3]);
    dataplane.cluster_pod_cidrs().unwrap().get().unwrap();
    dataplane.remote_pod_cidrs().unwrap().entries().unwrap();
    dataplane.local_pod_cidrs().unwrap().entries().unwrap();
    dataplane.peer_nodes().unwrap().entries().unwrap();
    dataplane.peer_spis().unwrap().keys().unwrap();
    lap(&mut p.0[4]);
    p
}

// ---------------------------------------------------------------------------------------------
// The one-peer change: two long-lived namespaces, driven in turns.

/// A namespace thread that answers each request with one sample.
struct Worker<T> {
    go: mpsc::Sender<bool>,
    done: mpsc::Receiver<T>,
    handle: thread::JoinHandle<()>,
}

impl<T: Send + 'static> Worker<T> {
    /// Starts `body` in a fresh namespace; waits until it reports ready (its first message).
    fn start<F, Fut>(body: F) -> Worker<T>
    where
        F: FnOnce(mpsc::Receiver<bool>, mpsc::Sender<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let (go, go_rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let handle = spawn_in_fresh_netns(move || body(go_rx, done_tx));
        let worker = Worker { go, done, handle };
        worker.done.recv().expect("the worker starts");
        worker
    }

    fn sample(&self, verify: bool) -> T {
        self.go.send(verify).expect("the worker runs");
        self.done.recv().expect("the worker answers")
    }

    fn stop(self) {
        drop(self.go);
        join(self.handle);
    }
}

fn xsteer_change_worker() -> Worker<(Run, Run, ReadProfile)> {
    Worker::start(|go, done| async move {
        let netlink = Netlink::connect().unwrap();
        let (_, base) = desired_state(&netlink, CHANGE_BASE).await;
        let (_, plus) = desired_state(&netlink, CHANGE_BASE + 1).await;
        let mut dataplane = Dataplane::load().expect("load the object (root?)");
        let dir = ledger_dir("ledger-change");
        let mut ledger = KeyLedger::open(&dir).unwrap();
        reconcile_timed(&netlink, &mut dataplane, &mut ledger, &base, None).await;
        let now = reconcile::read(&netlink, &mut dataplane, TABLE)
            .await
            .unwrap();
        assert!(now == base, "{CHANGE_BASE} peers: not converged");
        done.send(Default::default()).unwrap();
        while let Ok(verify) = go.recv() {
            // As `xsteer apply` does it: read everything, plan, write.
            let (run, _) =
                reconcile_timed(&netlink, &mut dataplane, &mut ledger, &plus, None).await;
            assert_eq!(
                run.changes, CHANGES_PER_PEER,
                "the peer's policies, its route, its map entries"
            );
            if verify {
                let now = reconcile::read(&netlink, &mut dataplane, TABLE)
                    .await
                    .unwrap();
                assert!(now == plus, "+1 peer: xsteer did not converge");
            }
            // Back to the base, untimed, and profile reading it.
            let (back, _) =
                reconcile_timed(&netlink, &mut dataplane, &mut ledger, &base, None).await;
            assert_eq!(back.changes, CHANGES_PER_PEER);
            let profile = profile_read(&netlink, &mut dataplane).await;
            // As the agent does it: plan against the state it left, write.
            let (remembered, _) =
                reconcile_timed(&netlink, &mut dataplane, &mut ledger, &plus, Some(&base)).await;
            assert_eq!(remembered.changes, CHANGES_PER_PEER);
            if verify {
                let now = reconcile::read(&netlink, &mut dataplane, TABLE)
                    .await
                    .unwrap();
                assert!(
                    now == plus,
                    "+1 peer, remembered state: xsteer did not converge"
                );
            }
            reconcile_timed(&netlink, &mut dataplane, &mut ledger, &base, Some(&plus)).await;
            done.send((run, remembered, profile)).unwrap();
        }
        let _ = fs::remove_dir_all(dir);
    })
}

fn ip_change_worker() -> Worker<Duration> {
    Worker::start(|go, done| async move {
        let netlink = Netlink::connect().unwrap();
        let (uplink, base) = desired_state(&netlink, CHANGE_BASE).await;
        let (_, plus) = desired_state(&netlink, CHANGE_BASE + 1).await;
        let install = TempFile::new(
            "change-base.batch",
            &batch_add(&Snapshot::default(), &base, &uplink),
        );
        ip_batch(&install);
        check_ip_installed(&netlink, &base).await;
        let add = TempFile::new("change-add.batch", &batch_add(&base, &plus, &uplink));
        let remove = TempFile::new("change-remove.batch", &batch_remove(&base, &plus));
        done.send(Duration::ZERO).unwrap();
        while let Ok(verify) = go.recv() {
            let took = ip_batch(&add);
            if verify {
                check_ip_installed(&netlink, &plus).await;
            }
            ip_batch(&remove);
            done.send(took).unwrap();
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Report.

fn median<T: Copy>(samples: &[T], key: impl Fn(&T) -> Duration) -> Duration {
    let mut v: Vec<Duration> = samples.iter().map(key).collect();
    v.sort_unstable();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[derive(Clone)]
struct Row {
    label: String,
    policies: usize,
    rules: usize,
    routes: usize,
    maps: usize,
    xsteer: Vec<Run>,
    ip: Vec<Duration>,
}

impl Row {
    fn xsteer_median(&self) -> Duration {
        median(&self.xsteer, |r| r.total)
    }

    fn ip_median(&self) -> Duration {
        median(&self.ip, |d| *d)
    }

    fn ratio(&self) -> f64 {
        self.xsteer_median().as_secs_f64() / self.ip_median().as_secs_f64()
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "the convergence benchmark creates network namespaces and BPF maps: run it as root"
        );
        std::process::exit(1);
    }

    let mut rows = Vec::new();
    for (n, rounds) in SIZES {
        let objects = desired_counts(n);
        let mut row = Row {
            label: thousands(n as usize),
            policies: objects.0,
            rules: objects.1,
            routes: objects.2,
            maps: objects.3,
            xsteer: Vec::new(),
            ip: Vec::new(),
        };
        for round in 0..rounds {
            let verify = round == 0;
            if round % 2 == 0 {
                row.xsteer.push(xsteer_converge(n, verify));
                row.ip.push(ip_converge(n, verify));
            } else {
                row.ip.push(ip_converge(n, verify));
                row.xsteer.push(xsteer_converge(n, verify));
            }
            eprintln!(
                "{n} peers, round {}/{rounds}: xsteer {} ms, ip -batch {} ms",
                round + 1,
                ms(row.xsteer[round].total),
                ms(row.ip[round])
            );
        }
        rows.push(row);
    }

    eprintln!("one-peer change: converging {CHANGE_BASE} peers in two namespaces");
    let xsteer = xsteer_change_worker();
    let iproute = ip_change_worker();
    let mut change = Row {
        label: format!("+1 on {}", thousands(CHANGE_BASE as usize)),
        policies: POLICIES_PER_PEER as usize,
        rules: 0,
        routes: 1,
        maps: MAP_ENTRIES_PER_PEER,
        xsteer: Vec::new(),
        ip: Vec::new(),
    };
    let mut remembered = Row {
        label: format!(
            "+1 on {}, agent (remembered state)",
            thousands(CHANGE_BASE as usize)
        ),
        ..change.clone()
    };
    let mut profiles = Vec::new();
    for round in 0..CHANGE_ROUNDS {
        let verify = round == 0;
        let (run, agent, profile) = if round % 2 == 0 {
            let x = xsteer.sample(verify);
            change.ip.push(iproute.sample(verify));
            x
        } else {
            change.ip.push(iproute.sample(verify));
            xsteer.sample(verify)
        };
        change.xsteer.push(run);
        remembered.xsteer.push(agent);
        remembered.ip.push(change.ip[round]);
        profiles.push(profile);
        eprintln!(
            "+1 peer, round {}/{CHANGE_ROUNDS}: xsteer {} ms, ip -batch {} ms",
            round + 1,
            ms(run.total),
            ms(change.ip[round])
        );
    }
    xsteer.stop();
    iproute.stop();

    report(&rows, &[change, remembered], &profiles);
}

/// (policies, rules, routes, map entries) of `n` peers, without a kernel.
fn desired_counts(n: u32) -> (usize, usize, usize, usize) {
    let n = n as usize;
    (
        1 + POLICIES_PER_PEER as usize * n,
        1,
        n,
        2 + MAP_ENTRIES_PER_PEER * n,
    )
}

fn report(rows: &[Row], changes: &[Row], profiles: &[ReadProfile]) {
    let mut out = String::new();
    let o = &mut out;
    writeln!(
        o,
        "| peers | policies + rule + routes | map entries | xsteer ms | `ip -batch` ms | xsteer / `ip -batch` |"
    )
    .unwrap();
    writeln!(o, "|---|---:|---:|---:|---:|---:|").unwrap();
    for row in rows.iter().chain(changes) {
        writeln!(
            o,
            "| {} | {} + {} + {} | {} | {} | {} | {:.2} |",
            row.label,
            thousands(row.policies),
            row.rules,
            thousands(row.routes),
            thousands(row.maps),
            ms(row.xsteer_median()),
            ms(row.ip_median()),
            row.ratio()
        )
        .unwrap();
    }
    writeln!(o).unwrap();
    writeln!(
        o,
        "Where xsteer's time goes (medians of each part, ms; `ip -batch` writes no maps):"
    )
    .unwrap();
    writeln!(o).unwrap();
    writeln!(
        o,
        "| peers | read | plan | execute: policies | execute: rule + routes | execute: maps | not timed: lookups + `desired()` |"
    )
    .unwrap();
    writeln!(o, "|---|---:|---:|---:|---:|---:|---:|").unwrap();
    for row in rows.iter().chain(changes) {
        let m = |f: fn(&Run) -> Duration| ms(median(&row.xsteer, f));
        let prep = if row.xsteer.iter().all(|r| r.prep.is_zero()) {
            "–".to_owned()
        } else {
            m(|r| r.prep)
        };
        writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.label,
            m(|r| r.read),
            m(|r| r.plan),
            m(|r| r.xfrm),
            m(|r| r.routing),
            m(|r| r.maps),
            prep
        )
        .unwrap();
    }
    writeln!(o).unwrap();
    let p = |i: usize| ms(median(profiles, |p| p.0[i]));
    writeln!(
        o,
        "Reading back {} peers (`reconcile::read`, part by part, medians, ms): SA dump {}, policy dump {}, rules {}, route dump {}, the maps {}.",
        thousands(CHANGE_BASE as usize),
        p(0),
        p(1),
        p(2),
        p(3),
        p(4)
    )
    .unwrap();
    writeln!(o).unwrap();

    let big = rows.last().expect("rows");
    let verdict = |met: bool| if met { "**met**" } else { "**missed**" };
    writeln!(
        o,
        "- Target: {} peers converge at least as fast as `ip -batch`: {} (xsteer {} ms, `ip -batch` {} ms, ratio {:.2}).",
        big.label,
        verdict(big.ratio() <= 1.0),
        ms(big.xsteer_median()),
        ms(big.ip_median()),
        big.ratio()
    )
    .unwrap();
    let (full, agent) = (&changes[0], &changes[1]);
    writeln!(
        o,
        "- Target: a one-peer change on top of {} peers applies in at most {} ms: {} by the agent, which plans against the state it left ({} ms); `xsteer apply`, which reads everything back first, takes {} ms.",
        thousands(CHANGE_BASE as usize),
        CHANGE_TARGET.as_millis(),
        verdict(agent.xsteer_median() <= CHANGE_TARGET),
        ms(agent.xsteer_median()),
        ms(full.xsteer_median())
    )
    .unwrap();
    writeln!(o).unwrap();
    let rounds: Vec<String> = SIZES
        .iter()
        .map(|(n, r)| format!("{r} for {}", thousands(*n as usize)))
        .collect();
    writeln!(
        o,
        "Medians of interleaved rounds ({} peers, {CHANGE_ROUNDS} for the one-peer change); SAs excluded (no ESP on the host kernel).",
        rounds.join(", ")
    )
    .unwrap();
    print!("{out}");
}
