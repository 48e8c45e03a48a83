//! The Kubernetes source against kube's own client and watcher, talking to the fake API server
//! of [`super::fake`]: what it reads, how it survives what API servers do, what it writes.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use super::{
    fake::{FakeApi, node},
    *,
};
use crate::{
    keys::{Epoch, Generation},
    nodes::{Peers, record::test_record},
};

/// A back-off that keeps the tests quick.
struct Quick;

impl Iterator for Quick {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::from_millis(10))
    }
}

impl Backoff for Quick {
    fn reset(&mut self) {}
}

fn quick() -> Box<dyn Backoff> {
    Box::new(Quick)
}

const WAIT: Duration = Duration::from_secs(10);

/// The record of the node with pod CIDR block `block` of 10.244.0.0/16: node ID `block + 1`,
/// IP 192.168.0.`block`.
fn record(name: &str, block: u8) -> NodeRecord {
    let mut record = test_record(name, u16::from(block));
    record.id = u16::from(block) + 1;
    record
}

/// The Node of `record`, its record published.
fn node_of(record: &NodeRecord) -> serde_json::Value {
    node(
        &record.name,
        Some(&record.pod_cidr.to_string()),
        &record.ip.to_string(),
        Some(&record.render_compact()),
    )
}

/// Node `name` in block `block`, its agent not started.
fn bare(name: &str, block: u8) -> serde_json::Value {
    node(
        name,
        Some(&format!("10.244.{block}.0/24")),
        &format!("192.168.0.{block}"),
        None,
    )
}

fn settings(own: &str, block: u8) -> Settings {
    Settings {
        node: own.into(),
        ip: format!("192.168.0.{block}").parse().unwrap(),
        cluster: "10.244.0.0/16".parse().unwrap(),
    }
}

/// Node a (block 1) watching `api`.
fn start(api: &FakeApi) -> (KubeSource, Changes) {
    let source = KubeSource::start(api.client(), settings("a", 1), quick).unwrap();
    let changes = source.changes().unwrap();
    (source, changes)
}

/// The next snapshot `accept` takes: read at each wake-up.
async fn until(
    source: &mut KubeSource,
    changes: &mut Changes,
    what: &str,
    accept: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let wait = async {
        loop {
            if let Some(snapshot) = source.read().unwrap()
                && accept(&snapshot)
            {
                return snapshot;
            }
            changes.next().await.unwrap().unwrap();
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("no snapshot with {what} in {WAIT:?}"))
}

/// Waits until `done` holds for the API server.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < WAIT, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn names<'a>(names: impl IntoIterator<Item = &'a String>) -> Vec<&'a str> {
    names.into_iter().map(String::as_str).collect()
}

fn lists(api: &FakeApi) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.method == "GET" && !r.query.contains_key("watch"))
        .count()
}

#[tokio::test]
async fn nodes_are_listed_then_followed_through_added_modified_and_deleted() {
    let b = record("b", 2);
    let api = FakeApi::new([bare("a", 1), node_of(&b), bare("c", 3)]);
    let (mut source, mut changes) = start(&api);

    // The first list: b is a peer; a (this node) and c have no record yet and are none, but
    // they exist.
    let first = until(&mut source, &mut changes, "the list", |_| true).await;
    assert_eq!(names(first.records.keys()), ["b"]);
    assert_eq!(first.records["b"], b);
    assert!(first.problems.is_empty() && first.removed.is_empty());
    assert_eq!(names(first.existing.as_ref().unwrap()), ["a", "b", "c"]);
    assert_eq!(
        source.identity().unwrap().unwrap(),
        (2, "10.244.1.0/24".parse().unwrap())
    );
    let requests = api.requests();
    assert_eq!(
        (requests[0].method.as_str(), requests[0].path.as_str()),
        ("GET", "/api/v1/nodes")
    );
    assert_eq!(
        requests[0].query.get("limit").map(String::as_str),
        Some("500")
    );
    eventually("the watch", || api.open_watches() == 1).await;
    let watch = api
        .requests()
        .into_iter()
        .find(|r| r.query.contains_key("watch"))
        .unwrap();
    assert_eq!(
        watch.query["resourceVersion"], "3",
        "from the list's version"
    );
    assert_eq!(watch.query["allowWatchBookmarks"], "true");

    // ADDED: d joins.
    let d = record("d", 4);
    api.put(node_of(&d));
    let added = until(&mut source, &mut changes, "d", |s| {
        s.records.contains_key("d")
    })
    .await;
    assert_eq!(added.records["d"], d);

    // MODIFIED: b moves to generations 4 and 5, and c's agent publishes.
    let mut b2 = b.clone();
    b2.generations = [4, 5].map(|g| Generation::new(g).unwrap()).to_vec();
    b2.next_epoch = Some(Epoch::from_bytes([0xB2; 16]));
    api.put(node_of(&b2));
    let c = record("c", 3);
    api.put(node_of(&c));
    let modified = until(&mut source, &mut changes, "b's and c's records", |s| {
        s.records.get("b") == Some(&b2) && s.records.contains_key("c")
    })
    .await;
    assert_eq!(names(modified.records.keys()), ["b", "c", "d"]);

    // MODIFIED with nothing xsteer reads (a heartbeat): no wake-up, no new version.
    let version = source.seen.borrow().version;
    let mut heartbeat = node_of(&c);
    heartbeat["status"]["conditions"][0]["lastHeartbeatTime"] = json!("2026-12-01T10:06:00Z");
    api.put(heartbeat);
    api.put(bare("e", 5));
    until(&mut source, &mut changes, "e", |s| {
        s.existing.as_ref().unwrap().contains("e")
    })
    .await;
    assert_eq!(
        source.seen.borrow().version,
        version + 1,
        "only e's arrival counted"
    );

    // DELETED: b is removed on purpose.
    api.delete("b");
    let deleted = until(&mut source, &mut changes, "b removed", |s| {
        s.removed.contains("b")
    })
    .await;
    assert!(!deleted.records.contains_key("b"));
    assert!(deleted.is_removed("b") && !deleted.is_removed("c"));

    // A Node registered again under the name is back.
    api.put(node_of(&b));
    let back = until(&mut source, &mut changes, "b back", |s| {
        s.records.contains_key("b")
    })
    .await;
    assert!(!back.removed.contains("b"));
    assert_eq!(lists(&api), 1, "no list after the first");
}

#[tokio::test]
async fn a_watch_resumes_after_a_dropped_connection_from_its_last_bookmark() {
    let api = FakeApi::new([bare("a", 1), node_of(&record("b", 2))]);
    let (mut source, mut changes) = start(&api);
    until(&mut source, &mut changes, "the list", |_| true).await;
    eventually("the watch", || api.open_watches() == 1).await;

    // Cut off: the server closes the watch, and a Node joins before the client is back. The
    // watch resumes from the list's version and is sent what it missed.
    api.pause_watches(true);
    api.close_watches();
    let c = record("c", 3);
    api.put(node_of(&c));
    api.pause_watches(false);
    until(&mut source, &mut changes, "c", |s| {
        s.records.contains_key("c")
    })
    .await;
    eventually("the watch again", || api.open_watches() == 1).await;

    // Other objects change and a bookmark says so; the history is compacted and the
    // connection reset right after the bookmark: the watch resumes from the bookmark, still in
    // the history, so it needs no list (from c's version it would have got 410 Gone).
    api.advance(100);
    let watches = || {
        api.requests()
            .into_iter()
            .filter(|r| r.query.contains_key("watch"))
            .collect::<Vec<_>>()
    };
    let before = watches().len();
    api.bookmark();
    api.compact();
    api.break_watches();
    eventually("a watch from the bookmark", || watches().len() > before).await;
    let resumed = watches().pop().unwrap();
    assert_eq!(resumed.query["resourceVersion"], "103", "the bookmark's");
    api.put(bare("e", 5));
    until(&mut source, &mut changes, "e", |s| {
        s.existing.as_ref().unwrap().contains("e")
    })
    .await;
    assert_eq!(lists(&api), 1, "resumed, never listed again");
}

#[tokio::test]
async fn gone_lists_again_and_a_node_deleted_meanwhile_is_removed() {
    let (b, c) = (record("b", 2), record("c", 3));
    let api = FakeApi::new([bare("a", 1), node_of(&b), node_of(&c)]);
    let (mut source, mut changes) = start(&api);
    until(&mut source, &mut changes, "the list", |_| true).await;
    eventually("the watch", || api.open_watches() == 1).await;

    // While the client is cut off, b is deleted and the history compacted: the resumed watch
    // gets 410 Gone, the source lists again, and b, missing from the list, is removed.
    api.pause_watches(true);
    api.close_watches();
    api.delete("b");
    api.compact();
    api.pause_watches(false);
    let relisted = until(&mut source, &mut changes, "b removed", |s| {
        s.removed.contains("b")
    })
    .await;
    assert_eq!(names(relisted.records.keys()), ["c"]);
    assert_eq!(names(relisted.existing.as_ref().unwrap()), ["a", "c"]);
    assert_eq!(lists(&api), 2, "listed again after the 410");

    // A 410 Gone as an ERROR event on an open watch: listed again, nothing lost.
    eventually("the watch", || api.open_watches() == 1).await;
    api.gone();
    eventually("a third list", || lists(&api) == 3).await;
    let d = record("d", 4);
    api.put(node_of(&d));
    let after = until(&mut source, &mut changes, "d", |s| {
        s.records.contains_key("d")
    })
    .await;
    assert_eq!(names(after.records.keys()), ["c", "d"]);
}

#[tokio::test]
async fn a_list_without_this_nodes_own_node_removes_no_peer() {
    let (b, c) = (record("b", 2), record("c", 3));
    let api = FakeApi::new([bare("a", 1), node_of(&b), node_of(&c)]);
    let (mut source, mut changes) = start(&api);
    until(&mut source, &mut changes, "the list", |_| true).await;
    eventually("the watch", || api.open_watches() == 1).await;

    // An API server answering from an emptied store (restored from a stale backup, a new etcd):
    // the source lists again after the 410, and the list has no Node at all.
    api.pause_watches(true);
    api.close_watches();
    for name in ["a", "b", "c"] {
        api.delete(name);
    }
    api.compact();
    api.pause_watches(false);
    eventually("the second list", || lists(&api) == 2).await;
    eventually("the watch after it", || api.open_watches() == 1).await;

    // Ignored: b and c stay peers, nothing is removed, and the watch goes on from that list.
    let d = record("d", 4);
    api.put(node_of(&d));
    let after = until(&mut source, &mut changes, "d", |s| {
        s.records.contains_key("d")
    })
    .await;
    assert_eq!(names(after.records.keys()), ["b", "c", "d"]);
    assert!(after.removed.is_empty(), "{:?}", after.removed);
}

#[tokio::test]
async fn a_bad_annotation_is_refused_by_name_and_the_others_stay() {
    let b = record("b", 2);
    let good = record("x", 9).render_compact();
    let with = |name: &str, block: u8, ip: &str, text: &str| {
        node(name, Some(&format!("10.244.{block}.0/24")), ip, Some(text))
    };
    let renamed = |name: &str, block: u8| {
        let mut r = record(name, block);
        r.name = name.into();
        r
    };
    let mut wrong_id = renamed("w", 7);
    wrong_id.id = 9;
    let api = FakeApi::new([
        bare("a", 1),
        node_of(&b),
        // Not JSON.
        with("c", 3, "192.168.0.3", "{ not json"),
        // x's record on y's Node.
        with("y", 9, "192.168.0.9", &good),
        // A pod CIDR that is not the Node's.
        with("p", 8, "192.168.0.8", &renamed("p", 9).render_compact()),
        // An IP that is not the Node's.
        with("z", 6, "192.168.0.66", &renamed("z", 6).render_compact()),
        // An ID that is not the one derived from the pod CIDR.
        with("w", 7, "192.168.0.7", &wrong_id.render_compact()),
        // No pod CIDR at all.
        node("v", None, "192.168.0.10", Some(&good)),
    ]);
    let (mut source, mut changes) = start(&api);
    let snapshot = until(&mut source, &mut changes, "the list", |_| true).await;
    assert_eq!(names(snapshot.records.keys()), ["b"]);
    let why = |name: &str| snapshot.problems[name].to_string();
    for (name, expect) in [
        (
            "c",
            "Node c annotation xsteer.dev/record: key must be a string",
        ),
        (
            "y",
            "Node y annotation xsteer.dev/record: name: \"x\" is not the Node it is on",
        ),
        (
            "p",
            "Node p annotation xsteer.dev/record: pod_cidr: 10.244.9.0/24 is not the Node's pod \
             CIDR 10.244.8.0/24",
        ),
        (
            "z",
            "Node z annotation xsteer.dev/record: ip: 192.168.0.6 is not one of the Node's \
             InternalIP addresses [\"192.168.0.66\"]",
        ),
        (
            "w",
            "Node w annotation xsteer.dev/record: id: 9 is not 8, the ID of pod CIDR \
             10.244.7.0/24 in cluster_cidr 10.244.0.0/16",
        ),
        ("v", "Node v: spec.podCIDRs: no IPv4 pod CIDR in []"),
    ] {
        assert!(why(name).starts_with(expect), "{name}: {}", why(name));
    }
    assert_eq!(snapshot.problems.len(), 6);

    // Through admission: b is a peer, each bad one is named, and a good record that turns bad
    // is kept.
    // Read again, by the peers this time.
    source.last_read = None;
    let mut log = Vec::new();
    let mut peers = Peers::new(Box::new(source), "a", None, |line| log.push(line));
    let base = crate::view::fixtures::two_nodes();
    let (view, refused) = peers.view(&base);
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(view.peer("b").unwrap().ip, b.ip);
    for name in ["c", "y", "p", "z", "w", "v"] {
        assert!(view.peer(name).is_none());
        assert!(
            log.iter()
                .any(|l| l.contains(&format!("Node {name}")) && l.ends_with("; ignored")),
            "{name}: {log:?}"
        );
    }
    let mut spoiled = node_of(&b);
    spoiled["metadata"]["annotations"][RECORD_ANNOTATION] = json!("{\"version\": 1}");
    api.put(spoiled);
    let mut log = Vec::new();
    tokio::time::timeout(WAIT, async {
        while !peers.refresh("a", |line| log.push(line)) && log.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert!(
        log.iter()
            .any(|l| l.starts_with("Node b annotation")
                && l.ends_with("keeping its last good record")),
        "{log:?}"
    );
    assert_eq!(peers.view(&base).0.peer("b").unwrap().ip, b.ip);
}

#[tokio::test]
async fn this_nodes_record_is_published_with_a_merge_patch_of_its_status() {
    let api = FakeApi::new([bare("a", 1), node_of(&record("b", 2))]);
    let (mut source, mut changes) = start(&api);
    until(&mut source, &mut changes, "the list", |_| true).await;
    let annotation = |api: &FakeApi| {
        api.node("a").unwrap()["metadata"]["annotations"][RECORD_ANNOTATION]
            .as_str()
            .and_then(|text| NodeRecord::parse("test", text).ok())
    };

    let a = record("a", 1);
    source.publish(&a).unwrap();
    eventually("a's record on its Node", || {
        annotation(&api) == Some(a.clone())
    })
    .await;
    let patches: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert_eq!(patches.len(), 1);
    let patch = &patches[0];
    assert_eq!(patch.path, "/api/v1/nodes/a/status");
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(patch.query["fieldManager"], "xsteer-agent");
    assert_eq!(
        patch.body,
        Some(json!({ "metadata": { "annotations": { RECORD_ANNOTATION: a.render_compact() } } }))
    );
    let kept = api.node("a").unwrap();
    assert_eq!(kept["metadata"]["labels"]["kubernetes.io/hostname"], "a");
    assert_eq!(
        kept["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"], "0",
        "the merge leaves the other annotations alone"
    );
    // The source reads its own Node too; the peers leave it out.
    until(&mut source, &mut changes, "a's record", |s| {
        s.records.contains_key("a")
    })
    .await;

    // The API server fails: publish does not wait, and the patch is retried until it holds.
    api.fail_patches(3);
    let mut a2 = a.clone();
    a2.generations = [4, 5].map(|g| Generation::new(g).unwrap()).to_vec();
    let started = Instant::now();
    source.publish(&a2).unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "publish waited"
    );
    eventually("a's new record", || annotation(&api) == Some(a2.clone())).await;
    let patches = api
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .count();
    assert_eq!(patches, 1 + 4, "three failures, then the patch");

    // Deleted and registered again, without the annotation: the record is put back.
    api.delete("a");
    api.put(bare("a", 1));
    eventually("a's record back", || annotation(&api) == Some(a2.clone())).await;
    // Edited by hand: put back too.
    let mut edited = api.node("a").unwrap();
    edited["metadata"]["annotations"][RECORD_ANNOTATION] = json!("garbage");
    api.put(edited);
    eventually("a's record back again", || {
        annotation(&api) == Some(a2.clone())
    })
    .await;
    let patches = api
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .count();
    assert_eq!(patches, 5 + 2);
}

#[tokio::test]
async fn this_nodes_identity_comes_from_its_node() {
    let api = FakeApi::new([bare("a", 1), bare("b", 2)]);
    let (mut source, mut changes) = start(&api);
    assert!(source.identity().is_none(), "nothing listed yet");
    until(&mut source, &mut changes, "the list", |_| true).await;
    assert_eq!(
        source.identity().unwrap().unwrap(),
        (2, "10.244.1.0/24".parse().unwrap())
    );

    let other = |own: &str, ip: &str| {
        let mut settings = settings(own, 1);
        settings.ip = ip.parse().unwrap();
        KubeSource::start(api.client(), settings, quick).unwrap()
    };
    let elsewhere = other("a", "192.168.0.99");
    eventually("a list", || elsewhere.seen.borrow().listed).await;
    assert_eq!(
        elsewhere.identity().unwrap().unwrap_err().to_string(),
        "Node a: status.addresses: 192.168.0.99 is not one of the Node's InternalIP addresses \
         [\"192.168.0.1\"]"
    );
    let unknown = other("nope", "192.168.0.1");
    eventually("a list", || unknown.seen.borrow().listed).await;
    assert_eq!(
        unknown.identity().unwrap().unwrap_err().to_string(),
        "Node nope: metadata.name: no Node of this name in the Kubernetes API server's list: \
         node.name must be this node's Kubernetes name"
    );
}

#[tokio::test]
async fn a_dual_stack_nodes_ipv6_pod_cidr_comes_from_its_node() {
    // spec.podCIDRs as a dual-stack kind cluster has them: IPv4 first, then IPv6.
    let mut a = bare("a", 1);
    a["spec"]["podCIDRs"] = json!(["10.244.1.0/24", "fd00:10:244:1::/64"]);
    let api = FakeApi::new([a, bare("b", 2)]);
    let (mut source, mut changes) = start(&api);
    assert_eq!(source.pod_cidr_v6(), None, "nothing listed yet");
    until(&mut source, &mut changes, "the list", |_| true).await;
    assert_eq!(
        source.identity().unwrap().unwrap(),
        (2, "10.244.1.0/24".parse().unwrap())
    );
    assert_eq!(
        source.pod_cidr_v6(),
        Some("fd00:10:244:1::/64".parse().unwrap())
    );
}

#[tokio::test]
async fn a_source_listed_once_reads_and_publishes_nothing() {
    let b = record("b", 2);
    let api = FakeApi::new([bare("a", 1), node_of(&b)]);
    let mut source = KubeSource::list(api.client(), settings("a", 1))
        .await
        .unwrap();
    let snapshot = source.read().unwrap().unwrap();
    assert_eq!(snapshot.records["b"], b);
    assert!(source.read().unwrap().is_none(), "nothing changes");
    assert_eq!(
        source.identity().unwrap().unwrap(),
        (2, "10.244.1.0/24".parse().unwrap())
    );
    assert!(matches!(
        source.publish(&record("a", 1)),
        Err(SourceError::ReadOnly)
    ));
    assert_eq!(api.requests().len(), 1, "one list, no watch");
}

#[tokio::test]
async fn a_nodes_inputs_take_its_identity_and_peers_from_the_nodes() {
    use std::{fs, os::unix::fs::PermissionsExt};

    use crate::inputs::{Access, Files, InputsError};

    let dir = std::env::temp_dir().join(format!("xsteer-kube-inputs-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    fs::write(
        &keys,
        "3 rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f10111213 128\n",
    )
    .unwrap();
    fs::set_permissions(&keys, fs::Permissions::from_mode(0o600)).unwrap();
    let path = dir.join("xsteer.toml");
    fs::write(
        &path,
        "key_file = \"keys\"\nnode_source = \"kubernetes\"\ncluster_cidr = \"10.244.0.0/16\"\n\n\
         [node]\nname = \"a\"\nip = \"192.168.0.1\"\nuplink = \"eth0\"\n\
         epoch = \"00112233445566778899aabbccddeeff\"\n",
    )
    .unwrap();
    let config = crate::config::Config::from_path(&path).unwrap();
    let state = dir.join("state");
    let b = record("b", 2);
    let api = FakeApi::new([bare("a", 1), node_of(&b)]);
    let (mut source, mut changes) = start(&api);
    let read = |source: &KubeSource| Files::read(config.clone(), &state, Access::Write, source);
    assert!(matches!(read(&source), Err(InputsError::NodeNotRead(name)) if name == "a"));

    until(&mut source, &mut changes, "the list", |_| true).await;
    let files = read(&source).unwrap();
    assert_eq!(files.identity, (2, "10.244.1.0/24".parse().unwrap()));
    source.last_read = None;
    let mut peers = Peers::new(Box::new(source), "a", None, drop);
    let inputs = files.assemble(&mut peers).unwrap();
    assert_eq!(inputs.view.node.pod_cidr, "10.244.1.0/24".parse().unwrap());
    assert_eq!(inputs.view.peer("b").unwrap().pod_cidrs, [b.pod_cidr]);

    // A Node with no pod CIDR gives no identity, and says so.
    let api = FakeApi::new([node("a", None, "192.168.0.1", None)]);
    let (mut source, mut changes) = start(&api);
    until(&mut source, &mut changes, "the list", |_| true).await;
    let error = read(&source).unwrap_err().to_string();
    assert!(
        error.starts_with("Node a: spec.podCIDRs: no IPv4 pod CIDR in []"),
        "{error}"
    );
    let _ = fs::remove_dir_all(dir);
}
