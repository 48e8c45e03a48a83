//! The reconcile layer on the host kernel, in fresh network namespaces: everything but SAs
//! (the host kernel has no ESP; SAs are covered in the VM bed).
//!
//! - a plan applied to an empty namespace yields exactly the desired policies, rule, routes and
//!   map entries, and applying it again writes nothing (netlink writes are counted);
//! - foreign xfrm policies, rules and routes are byte-for-byte the same afterwards;
//! - `xsteer apply` with bad input fails naming the problem and changes nothing;
//! - `xsteer apply` on a kernel without ESP refuses, naming CONFIG_INET_ESP, and changes nothing;
//! - `xsteer apply --dry-run` and `xsteer status` leave the node records and the state directory
//!   byte-for-byte as they were.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod support;

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::PathBuf,
    process::Command,
};

use support::{in_fresh_netns, ip, require_root};
use xsteer::{
    config::Config,
    dataplane::Dataplane,
    kernel::{
        Netlink,
        routing::{self, DEFAULT_RULE_PRIORITY},
        xfrm::Cipher,
    },
    keys::KeyFile,
    reconcile::{self, desired::Surroundings, plan::plan},
    state::KeyLedger,
    view::View,
};

const KEYS: &str = "3 rfc4106(gcm(aes)) 0x000102030405060708090a0b0c0d0e0f10111213 128\n";

fn config_text(extra_peer: &str) -> String {
    format!(
        r#"
key_file = "keys"
route_table = 200
cluster_cidr = ["10.244.0.0/16", "10.250.0.0/16"]

[node]
name = "node-a"
ip = "192.168.77.1"
id = 1
uplink = "xs0"
pod_cidr = "10.244.1.0/24"
epoch = "00112233445566778899aabbccddeeff"

[[peers]]
name = "node-b"
ip = "192.168.77.2"
id = 2
pod_cidrs = ["10.244.2.0/24"]
epoch = "a7c9000000000000000000000000000b"

[[peers]]
name = "node-c"
ip = "192.168.77.3"
id = 3
pod_cidrs = ["10.244.3.0/24", "10.250.0.0/16"]
epoch = "5e5e000000000000000000000000000c"
{extra_peer}"#
    )
}

/// The view of node a in `text`, a config that gives its identity.
fn view(text: &str) -> View {
    let config: Config = text.parse().unwrap();
    let identity = config.node.identity().unwrap();
    View::from_config(
        &config,
        identity,
        config.node.epoch.expect("the fixture gives an epoch"),
        None,
    )
    .unwrap()
}

/// The ledger of node a (192.168.77.1), which tells its outbound SAs by their source.
fn outbound(ledger: &mut KeyLedger) -> reconcile::Outbound<'_> {
    reconcile::Outbound {
        ledger,
        node_ip: "192.168.77.1".parse().unwrap(),
        peers: Default::default(),
        epochs: Vec::new(),
    }
}

/// What node a of `view` should hold in the kernel, less the SAs (the host kernel has no ESP).
async fn desired_without_sas(netlink: &Netlink, view: &View) -> reconcile::Snapshot {
    let keys = KeyFile::parse(KEYS).unwrap();
    let uplink = routing::uplink(netlink, "xs0").await.unwrap();
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
        per_cpu: true,
        nat_keepalive_secs: 20,
    };
    let mut want = reconcile::desired::desired(view, &keys, &around).unwrap();
    want.states.clear();
    want
}

/// The uplink and foreign objects another tool put there first.
fn network() {
    ip(&["link", "add", "xs0", "type", "veth", "peer", "name", "xs1"]);
    ip(&["addr", "add", "192.168.77.1/24", "dev", "xs0"]);
    ip(&["link", "set", "xs0", "up"]);
    ip(&["link", "set", "xs1", "up"]);
    for cmd in [
        "xfrm policy add dir out src 10.9.0.0/16 dst 10.8.0.0/16 priority 5 tmpl src 192.0.2.1 dst 192.0.2.2 proto esp mode tunnel reqid 1",
        "rule add fwmark 0x1/0x1 lookup 100 priority 900",
        "rule add to 10.244.2.0/24 lookup 200 priority 901",
        "route add 10.77.0.0/16 via 192.168.77.9 table 200",
        "route add 10.78.0.0/16 via 192.168.77.9",
    ] {
        ip(&cmd.split(' ').collect::<Vec<_>>());
    }
}

/// Everything in the namespace that `ip` can show, to compare before and after.
fn kernel_state() -> String {
    [
        ip(&["xfrm", "policy", "show"]),
        ip(&["xfrm", "state", "show"]),
        ip(&["-4", "rule", "show"]),
        // IPv4 only: IPv6 link-local routes appear on their own schedule after links go up;
        // and without the carrier flag, which the veth raises on its own schedule too.
        ip(&["-4", "route", "show", "table", "all"]).replace(" linkdown", ""),
    ]
    .join("\n---\n")
}

/// The lines of `ip` output that belong to someone else.
fn foreign(state: &str) -> Vec<String> {
    state
        .lines()
        .filter(|l| {
            l.contains("10.9.0.0/16")
                || l.contains("10.8.0.0/16")
                || l.contains("lookup 100")
                || l.contains("priority 901")
                || l.contains("10.77.0.0/16")
                || l.contains("10.78.0.0/16")
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn reconcile_converges_is_idempotent_and_leaves_foreign_objects() {
    if !require_root("reconcile_converges_is_idempotent_and_leaves_foreign_objects") {
        return;
    }
    in_fresh_netns(|| async {
        network();
        let before = kernel_state();
        let view = view(&config_text(""));
        let netlink = Netlink::connect().unwrap();
        let want = desired_without_sas(&netlink, &view).await;
        assert_eq!(
            want.policies.len(),
            1 + 2 * 3 + 2 * 2 + 3 + 3 + 3 + 2,
            "block; in+fwd per peer CIDR and per peer node IP; in per peer CIDR to this node; \
             marked out per peer CIDR; unmarked out per peer CIDR and per peer node IP"
        );

        let mut dataplane = Dataplane::load().unwrap();
        let state_dir =
            std::env::temp_dir().join(format!("xsteer-reconcile-{}", std::process::id()));
        let mut ledger = KeyLedger::open(&state_dir).unwrap();

        let have = reconcile::read(&netlink, &mut dataplane, 200)
            .await
            .unwrap();
        let changes = plan(&have, &want);
        let kernel_changes = changes.len()
            - usize::from(!want.maps.cluster_pod_cidrs.is_empty())
            - want.maps.remote_pod_cidrs.len()
            - want.maps.local_pod_cidrs.len()
            - want.maps.peer_nodes.len()
            - want.maps.peer_spis.len();
        reconcile::execute(
            &netlink,
            &mut dataplane,
            &mut outbound(&mut ledger),
            200,
            &changes,
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(netlink.writes() as usize, kernel_changes);

        let after = reconcile::read(&netlink, &mut dataplane, 200)
            .await
            .unwrap();
        assert_eq!(
            after, want,
            "the kernel and the maps hold exactly the desired state"
        );
        let shown = kernel_state();
        assert!(
            shown.contains("10.244.3.0/24 via 192.168.77.3 dev xs0 table 200 proto 120 mtu 1446"),
            "{shown}"
        );
        assert!(
            shown.contains("from all fwmark 0xe00/0xf00 lookup 200"),
            "{shown}"
        );

        // Again: nothing to do, nothing written.
        let writes = netlink.writes();
        let again = plan(
            &reconcile::read(&netlink, &mut dataplane, 200)
                .await
                .unwrap(),
            &want,
        );
        assert!(again.is_empty(), "{again:#?}");
        reconcile::execute(
            &netlink,
            &mut dataplane,
            &mut outbound(&mut ledger),
            200,
            &again,
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(netlink.writes(), writes);

        // Remove everything xsteer owns: foreign objects are exactly as they were.
        let empty = reconcile::Snapshot::default();
        let teardown = plan(&after, &empty);
        reconcile::execute(
            &netlink,
            &mut dataplane,
            &mut outbound(&mut ledger),
            200,
            &teardown,
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(kernel_state(), before);
        assert_eq!(foreign(&kernel_state()), foreign(&before));
        let _ = fs::remove_dir_all(state_dir);
    });
}

/// Changes what the kernel and the maps hold into `want`, in plan order, and reads back what
/// they hold then.
async fn converge(
    netlink: &Netlink,
    dataplane: &mut Dataplane,
    outbound: &mut reconcile::Outbound<'_>,
    want: &reconcile::Snapshot,
) -> reconcile::Snapshot {
    let have = reconcile::read(netlink, dataplane, 200).await.unwrap();
    let changes = plan(&have, want);
    reconcile::execute(netlink, dataplane, outbound, 200, &changes, |_| {})
        .await
        .unwrap();
    reconcile::read(netlink, dataplane, 200).await.unwrap()
}

/// [`config_text`] in a dual-stack cluster: every node has an IPv6 /64 of pods too.
fn dual_stack_config() -> String {
    config_text("")
        .replace(
            "route_table = 200",
            "route_table = 200\ncluster_cidr_v6 = \"fd00:10:244::/48\"",
        )
        .replace(
            "pod_cidr = \"10.244.1.0/24\"",
            "pod_cidr = \"10.244.1.0/24\"\npod_cidr_v6 = \"fd00:10:244:1::/64\"",
        )
        .replace(
            "[\"10.244.2.0/24\"]",
            "[\"10.244.2.0/24\", \"fd00:10:244:2::/64\"]",
        )
}

#[test]
fn a_dual_stack_node_converges_with_ipv6_rule_routes_policies_and_maps() {
    if !require_root("a_dual_stack_node_converges_with_ipv6_rule_routes_policies_and_maps") {
        return;
    }
    in_fresh_netns(|| async {
        network();
        let ipv6_state = || {
            // Table 200 only: link-local routes come and go on their own schedule.
            let routes = ip(&["-6", "route", "show", "table", "all"]);
            let table: Vec<&str> = routes.lines().filter(|l| l.contains("table 200")).collect();
            format!("{}\n---\n{}", ip(&["-6", "rule", "show"]), table.join("\n"))
        };
        let before = (kernel_state(), ipv6_state());
        let view = view(&dual_stack_config());
        let netlink = Netlink::connect().unwrap();
        let want = desired_without_sas(&netlink, &view).await;
        let mut dataplane = Dataplane::load().unwrap();
        let state_dir =
            std::env::temp_dir().join(format!("xsteer-reconcile6-{}", std::process::id()));
        let mut ledger = KeyLedger::open(&state_dir).unwrap();
        let mut outbound = outbound(&mut ledger);
        let after = converge(&netlink, &mut dataplane, &mut outbound, &want).await;
        assert_eq!(after, want, "both families, exactly as desired");
        let shown = ipv6_state();
        assert!(
            shown.contains("from all fwmark 0xe00/0xf00 lookup 200"),
            "{shown}"
        );
        assert!(
            shown.contains("fd00:10:244:2::/64 dev xs0 table 200 proto 120 metric 1024 mtu 1446"),
            "{shown}"
        );
        let policies = ip(&["xfrm", "policy", "show"]);
        assert!(
            policies.contains("src fd00:10:244:2::/64 dst fd00:10:244:1::/64"),
            "{policies}"
        );
        let ipv6_cidrs = dataplane.remote_pod_cidrs_v6().unwrap().entries().unwrap();
        assert_eq!(ipv6_cidrs.len(), 1, "{ipv6_cidrs:?}");
        assert_eq!(
            dataplane.cluster_pod_cidrs_v6().unwrap().get().unwrap(),
            ["fd00:10:244::/48".parse().unwrap()]
        );

        let again = plan(
            &reconcile::read(&netlink, &mut dataplane, 200)
                .await
                .unwrap(),
            &want,
        );
        assert!(again.is_empty(), "{again:#?}");

        let empty = reconcile::Snapshot::default();
        converge(&netlink, &mut dataplane, &mut outbound, &empty).await;
        assert_eq!((kernel_state(), ipv6_state()), before);
        let _ = fs::remove_dir_all(state_dir);
    });
}

#[test]
fn ipv6_node_ips_converge_with_ipv6_tunnels_and_the_peer6_maps() {
    if !require_root("ipv6_node_ips_converge_with_ipv6_tunnels_and_the_peer6_maps") {
        return;
    }
    in_fresh_netns(|| async {
        network();
        ip(&[
            "-6",
            "addr",
            "add",
            "fd00:192:168:77::1/64",
            "dev",
            "xs0",
            "nodad",
        ]);
        let text = dual_stack_config()
            .replace("\"192.168.77.1\"", "\"fd00:192:168:77::1\"")
            .replace("\"192.168.77.2\"", "\"fd00:192:168:77::2\"")
            .replace("\"192.168.77.3\"", "\"fd00:192:168:77::3\"");
        let view = view(&text);
        let netlink = Netlink::connect().unwrap();
        let want = desired_without_sas(&netlink, &view).await;
        let mut dataplane = Dataplane::load().unwrap();
        let state_dir =
            std::env::temp_dir().join(format!("xsteer-reconcile6n-{}", std::process::id()));
        let mut ledger = KeyLedger::open(&state_dir).unwrap();
        let mut outbound = reconcile::Outbound {
            ledger: &mut ledger,
            node_ip: view.node.ip,
            peers: Default::default(),
            epochs: Vec::new(),
        };
        let after = converge(&netlink, &mut dataplane, &mut outbound, &want).await;
        assert_eq!(after, want, "IPv6 tunnels, exactly as desired");
        let policies = ip(&["xfrm", "policy", "show"]);
        assert!(
            policies.contains("src 10.244.2.0/24 dst 10.244.1.0/24")
                && policies.contains("tmpl src fd00:192:168:77::2 dst fd00:192:168:77::1"),
            "IPv4 pods in an IPv6 tunnel: {policies}"
        );
        let routes = ip(&["-6", "route", "show", "table", "all"]);
        assert!(
            routes
                .contains("fd00:10:244:2::/64 via fd00:192:168:77::2 dev xs0 table 200 proto 120"),
            "{routes}"
        );
        let peers = dataplane.peer_nodes_v6().unwrap().entries().unwrap();
        assert_eq!(peers.len(), 2, "{peers:?}");
        assert_eq!(
            dataplane.peer_nodes_v6().unwrap().addr_of(2).unwrap(),
            Some("fd00:192:168:77::2".parse().unwrap())
        );
        assert!(
            dataplane
                .peer_nodes()
                .unwrap()
                .entries()
                .unwrap()
                .is_empty()
        );

        let empty = reconcile::Snapshot::default();
        converge(&netlink, &mut dataplane, &mut outbound, &empty).await;
        assert!(
            dataplane
                .peer_nodes_v6()
                .unwrap()
                .entries()
                .unwrap()
                .is_empty()
        );
        let _ = fs::remove_dir_all(state_dir);
    });
}

/// A scratch directory with a config and a key file, for the CLI.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str, config: &str, keys: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("xsteer-apply-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("xsteer.toml"), config).unwrap();
        fs::write(dir.join("keys"), keys).unwrap();
        fs::set_permissions(dir.join("keys"), fs::Permissions::from_mode(0o600)).unwrap();
        Scratch(dir)
    }

    /// Runs `xsteer apply` on this config; returns (success, stdout + stderr).
    fn apply(&self, extra: &[&str]) -> (bool, String) {
        self.run("apply", extra)
    }

    /// Runs `xsteer VERB` on this config with its pin and state dirs; returns (success,
    /// stdout + stderr).
    fn run(&self, verb: &str, extra: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_xsteer"))
            .arg(verb)
            .arg("--config")
            .arg(self.0.join("xsteer.toml"))
            .arg("--pin-dir")
            .arg(format!("/sys/fs/bpf/xsteer-test-{}", std::process::id()))
            .arg("--state-dir")
            .arg(self.0.join("state"))
            .args(extra)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn apply_on_a_kernel_without_esp_refuses_and_changes_nothing() {
    if !require_root("apply_on_a_kernel_without_esp_refuses_and_changes_nothing") {
        return;
    }
    in_fresh_netns(|| async {
        network();
        if support::kernel_has_esp() {
            panic!(
                "this test is about kernels without ESP; it belongs to the host level, not the VM"
            );
        }
        let before = kernel_state();
        let scratch = Scratch::new("no-esp", &config_text(""), KEYS);
        let (ok, text) = scratch.apply(&[]);
        assert!(!ok, "{text}");
        assert!(text.contains("CONFIG_INET_ESP"), "{text}");
        assert_eq!(kernel_state(), before);
        assert!(!scratch.0.join("state").exists(), "no ledger written");
        // A dry run still shows what would be done, and does nothing.
        let (ok, text) = scratch.apply(&["--dry-run"]);
        assert!(ok, "{text}");
        assert!(
            text.contains("would add policy out 0.0.0.0/0 -> 0.0.0.0/0 mark 0xe00/0xf00 block"),
            "{text}"
        );
        assert!(
            text.trim_end().ends_with("changes (dry run: none made)"),
            "{text}"
        );
        assert_eq!(kernel_state(), before);
    });
}

#[test]
fn apply_with_bad_input_names_the_problem_and_changes_nothing() {
    if !require_root("apply_with_bad_input_names_the_problem_and_changes_nothing") {
        return;
    }
    let good = config_text("");
    let cases: Vec<(&str, String, String, &str)> = vec![
        (
            "bad-hex",
            good.clone(),
            "3 rfc4106(gcm(aes)) 0x00zz0203 128\n".into(),
            "line 1",
        ),
        (
            "key-length",
            good.clone(),
            "3 rfc4106(gcm(aes)) 0x0001020304 128\n".into(),
            "line 1",
        ),
        (
            "spi-zero",
            good.clone(),
            KEYS.replacen('3', "0", 1),
            "line 1",
        ),
        (
            "spi-16",
            good.clone(),
            KEYS.replacen('3', "16", 1),
            "line 1",
        ),
        (
            "algorithm",
            good.clone(),
            KEYS.replace("rfc4106(gcm(aes))", "rfc4106(gcm(des))"),
            "line 1",
        ),
        ("icv", good.clone(), KEYS.replace(" 128", " 100"), "line 1"),
        (
            "cidr",
            good.replace("10.244.1.0/24", "10.244.1.5/24"),
            KEYS.into(),
            "node.pod_cidr",
        ),
        (
            "overlap",
            good.replace("\"10.250.0.0/16\"", "\"10.244.0.0/16\""),
            KEYS.into(),
            "overlaps",
        ),
        (
            "duplicate-id",
            good.replace("id = 3", "id = 2"),
            KEYS.into(),
            "peers[1].id",
        ),
        (
            "duplicate-ip",
            good.replace("192.168.77.3", "192.168.77.2"),
            KEYS.into(),
            "peers[1].ip",
        ),
        (
            "uplink",
            good.replace("uplink = \"xs0\"", "uplink = \"xs9\""),
            KEYS.into(),
            "xs9",
        ),
        (
            "not-ethernet",
            good.replace("uplink = \"xs0\"", "uplink = \"lo\""),
            KEYS.into(),
            "node.uplink: lo is a Loopback link, not Ethernet",
        ),
    ];
    in_fresh_netns(|| async move {
        network();
        let before = kernel_state();
        for (name, config, keys, named) in &cases {
            let scratch = Scratch::new(name, config, keys);
            let (ok, text) = scratch.apply(&[]);
            assert!(!ok, "{name}: must fail\n{text}");
            assert!(
                text.contains(named),
                "{name}: the error must name {named:?}:\n{text}"
            );
            assert!(
                !text.contains("0x00zz0203") && !text.contains("000102030405"),
                "{name}: key material in the error:\n{text}"
            );
            assert_eq!(kernel_state(), before, "{name}: the kernel changed");
            let pins = format!("/sys/fs/bpf/xsteer-test-{}", std::process::id());
            assert!(
                !std::path::Path::new(&pins).exists(),
                "{name}: maps were pinned"
            );
        }
    });
}

/// Every file under `dir`, with its mode, length, modification time and bytes.
fn tree(dir: &std::path::Path) -> Vec<(PathBuf, u32, std::time::SystemTime, Vec<u8>)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        let meta = fs::symlink_metadata(&at).unwrap();
        let bytes = if meta.is_file() {
            fs::read(&at).unwrap()
        } else {
            Vec::new()
        };
        if meta.is_dir() {
            for entry in fs::read_dir(&at).unwrap() {
                pending.push(entry.unwrap().path());
            }
        }
        found.push((at, meta.mode(), meta.modified().unwrap(), bytes));
    }
    found.sort();
    found
}

#[test]
fn dry_runs_and_status_leave_the_node_records_and_the_state_untouched() {
    if !require_root("dry_runs_and_status_leave_the_node_records_and_the_state_untouched") {
        return;
    }
    in_fresh_netns(|| async {
        network();
        // Node a leaves its identity to the allocator; node b has published its record.
        let config = config_text("")
            .replace("id = 1\n", "")
            .replace("pod_cidr = \"10.244.1.0/24\"\n", "")
            .replace(
                "route_table = 200",
                "route_table = 200\nnodes_dir = \"nodes\"",
            );
        let scratch = Scratch::new("read-only", &config, KEYS);
        let (nodes, state) = (scratch.0.join("nodes"), scratch.0.join("state"));

        // Before any agent ran: nothing is allocated, and nothing may be.
        for verb in ["apply", "status"] {
            let extra: &[&str] = if verb == "apply" { &["--dry-run"] } else { &[] };
            let (ok, text) = scratch.run(verb, extra);
            assert!(!ok, "{verb}: {text}");
            assert!(
                text.contains("has no node ID and pod CIDR") && text.contains("agent"),
                "{verb}: {text}"
            );
        }
        assert!(!nodes.exists() && !state.exists(), "nothing created");

        // With a reservation, a peer's record and the agent's state in place: both read them,
        // and leave every byte, mode and time as it was.
        fs::create_dir_all(nodes.join(".alloc")).unwrap();
        fs::write(nodes.join(".alloc/node-a"), "1 10.244.1.0/24\n").unwrap();
        fs::write(
            nodes.join("node-d.json"),
            r#"{"version": 3, "name": "node-d", "ip": "192.168.77.4", "id": 4,
                "pod_cidr": "10.244.4.0/24", "epoch": "0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d",
                "generations": [3]}"#,
        )
        .unwrap();
        fs::create_dir_all(&state).unwrap();
        fs::write(
            state.join("epochs"),
            "configured 00112233445566778899aabbccddeeff\n",
        )
        .unwrap();
        let before = (tree(&nodes), tree(&state));
        let (ok, text) = scratch.apply(&["--dry-run"]);
        assert!(ok, "{text}");
        assert!(
            text.contains("would add policy out 0.0.0.0/0 -> 10.244.4.0/24"),
            "the dry run plans for node-d's record too:\n{text}"
        );
        let (ok, text) = scratch.run("status", &["--output", "json"]);
        assert!(ok, "{text}");
        assert!(text.contains("\"node-d\""), "{text}");
        assert_eq!(
            (tree(&nodes), tree(&state)),
            before,
            "a dry run and status changed nodes_dir or the state dir"
        );
    });
}
