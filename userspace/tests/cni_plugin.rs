//! The `xsteer-cni` binary against the host kernel: in a fresh network namespace with an
//! uplink and a pod's veth pair (its peer in a namespace of its own), on a bpffs mounted for
//! the test, with the dataplane loaded and guarded as the agent leaves it and no agent running.
//! ADD attaches the pinned classifier once, however often it runs, and the agent adopts the
//! link; CHECK confirms it; DEL detaches it, twice over; ADD on a node whose guards are gone or
//! detached is "try again later"; a dead link pinned for a veth of the same name is replaced;
//! the plugin waits for whoever holds the links lock.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod support;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use serde_json::{Value, json};
use support::{Netns, in_fresh_netns, ip, require_root};
use xsteer::dataplane::{
    Dataplane,
    links::{self, Attached},
    program_pin_path,
};
use xsteer_common::programs;

const UPLINK: &str = "xsup0";
const POD_VETH: &str = "xspod0";
const BRIDGE: &str = "xsbr0";

/// A bpffs mounted for one test in a directory of its own; unmounted and removed when dropped.
struct Bpffs(PathBuf);

impl Bpffs {
    fn new() -> Bpffs {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "xsteer-cni-bpffs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        mount(
            Some("bpf"),
            &dir,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        Bpffs(dir)
    }

    fn pin_dir(&self) -> PathBuf {
        self.0.join("xsteer")
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A node as the agent leaves it: uplink guarded, pod classifier pinned, maps pinned; the
/// pod's veth exists, its peer in the pod's namespace. Lives in the calling thread's namespace.
struct Node {
    bpffs: Bpffs,
    pod: Netns,
}

impl Node {
    /// The uplink is a veth whose peer stays on the node (the host kernel has no dummy
    /// driver), as in the lab.
    fn new(pod_netns: &str) -> Node {
        ip(&[
            "link", "add", UPLINK, "type", "veth", "peer", "name", "xswire0",
        ]);
        ip(&["link", "set", UPLINK, "up"]);
        let pod = Netns::new(pod_netns);
        ip(&[
            "link", "add", POD_VETH, "type", "veth", "peer", "name", "eth0", "netns", pod_netns,
        ]);
        ip(&["link", "set", POD_VETH, "up"]);
        ip(&["link", "add", BRIDGE, "type", "bridge"]);
        let node = Node {
            bpffs: Bpffs::new(),
            pod,
        };
        node.agent_start(&[]);
        node
    }

    fn pin_dir(&self) -> PathBuf {
        self.bpffs.pin_dir()
    }

    /// What the agent does at start: maps pinned, programs loaded, both guards attached to the
    /// uplink with pinned links, the classifier pinned, then attached to `pods` under the links
    /// lock. The process keeps nothing: the pins hold it all, as after the agent exited.
    /// Returns how each was attached: egress guard, ingress guard, then the pods.
    fn agent_start(&self, pods: &[&str]) -> Vec<Attached> {
        let pin_dir = self.pin_dir();
        let mut dataplane = Dataplane::load_pinned(&pin_dir).unwrap();
        dataplane.load_programs().unwrap();
        let mut how = vec![
            links::tc(
                dataplane.egress_guard().unwrap(),
                programs::EGRESS_GUARD,
                UPLINK,
                TcAttachType::Egress,
                &pin_dir,
            )
            .unwrap(),
            links::xdp(
                dataplane.ingress_guard().unwrap(),
                programs::INGRESS_GUARD,
                UPLINK,
                &pin_dir,
            )
            .unwrap_or_else(|e| panic!("XDP on {UPLINK}: {e}")),
        ];
        dataplane.pin_pod_classifier(&pin_dir).unwrap();
        for pod in pods {
            let _held = links::lock(&pin_dir).unwrap();
            how.push(
                links::tc(
                    dataplane.pod_classifier().unwrap(),
                    programs::POD_CLASSIFIER,
                    pod,
                    TcAttachType::Ingress,
                    &pin_dir,
                )
                .unwrap(),
            );
        }
        how
    }

    /// The id of the pinned classifier.
    fn classifier_id(&self) -> u32 {
        let path = program_pin_path(&self.pin_dir(), programs::POD_CLASSIFIER);
        SchedClassifier::from_pin(path)
            .unwrap()
            .info()
            .unwrap()
            .id()
    }

    /// The previous result a ptp-like main plugin hands on: the pod's veth and a bridge on the
    /// node, the uplink (which must never be classified), an interface that is gone, and the
    /// pod's eth0 in its sandbox.
    fn prev_result(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": BRIDGE, "mac": "aa:bb:cc:00:00:01"},
                {"name": POD_VETH, "mac": "aa:bb:cc:00:00:02"},
                {"name": UPLINK},
                {"name": "xsgone0"},
                {"name": "eth0", "mac": "aa:bb:cc:00:00:03",
                 "sandbox": format!("/run/netns/{}", self.pod.name)},
            ],
            "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 4}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {},
        })
    }

    fn conf(&self, prev: Option<Value>) -> Value {
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": "kindnet",
            "type": "xsteer-cni",
            "pinDir": self.pin_dir(),
        });
        if let Some(prev) = prev {
            conf["prevResult"] = prev;
        }
        conf
    }

    /// The config a CNI 1.1.0 runtime hands to STATUS and GC: the network's, no result, and
    /// for GC the attachments it still knows.
    fn network_conf(&self) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": "kindnet",
            "type": "xsteer-cni",
            "pinDir": self.pin_dir(),
            "cni.dev/valid-attachments": [{"containerID": "0123abcd", "ifname": "eth0"}],
        })
    }

    /// Runs the plugin in this thread's namespace; returns exit code and stdout.
    fn plugin(&self, command: &str, conf: &Value) -> (i32, String) {
        let out = self
            .spawn(command, conf)
            .wait_with_output()
            .unwrap_or_else(|e| panic!("running xsteer-cni {command}: {e}"));
        eprintln!(
            "xsteer-cni {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stdout).unwrap(),
        )
    }

    fn spawn(&self, command: &str, conf: &Value) -> std::process::Child {
        let mut plugin = Command::new(env!("CARGO_BIN_EXE_xsteer-cni"));
        plugin
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", "/opt/cni/bin");
        // STATUS and GC concern the network: a runtime names no container for them.
        if !["STATUS", "GC"].contains(&command) {
            plugin
                .env("CNI_CONTAINERID", "0123abcd")
                .env("CNI_NETNS", format!("/run/netns/{}", self.pod.name))
                .env("CNI_IFNAME", "eth0");
        }
        let mut child = plugin
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        child
    }

    /// Asserts that `command` failed with `code`, its msg naming `names`.
    fn assert_error(&self, command: &str, conf: &Value, code: u64, names: &str) {
        let (exit, stdout) = self.plugin(command, conf);
        assert_ne!(exit, 0, "{command} must fail: {stdout}");
        let error: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(error["code"], code, "{stdout}");
        let msg = error["msg"].as_str().unwrap();
        assert!(msg.contains(names), "the msg must name {names:?}: {msg}");
    }
}

/// The ids of the programs at `interface`'s tc `direction`.
fn tcx(interface: &str, direction: TcAttachType) -> Vec<u32> {
    let (_, infos) = SchedClassifier::query_tcx(interface, direction).unwrap();
    infos.iter().map(|i| i.id()).collect()
}

/// Waits (up to 5 s) until `interface`'s tc `direction` runs no program. A link is detached
/// only once its last reference is dropped, and the kernel drops a pin's reference after an
/// RCU grace period and in a work item, not in the unlink itself.
fn until_detached(interface: &str, direction: TcAttachType) {
    let started = Instant::now();
    while !tcx(interface, direction).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{interface} {direction:?}: still attached 5 s after its pin was removed"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    eprintln!(
        "{interface} {direction:?}: detached {:?} after the pin's removal",
        started.elapsed()
    );
}

fn classifier_pin(pin_dir: &Path, interface: &str) -> PathBuf {
    links::pin_path(pin_dir, programs::POD_CLASSIFIER, interface)
}

#[test]
fn add_classifies_the_pod_veth_once_check_confirms_and_del_detaches() {
    if !require_root("add_classifies_the_pod_veth_once_check_confirms_and_del_detaches") {
        return;
    }
    let pod_netns = format!("xsteer-cni-pod-a-{}", std::process::id());
    in_fresh_netns(move || async move {
        let node = Node::new(&pod_netns);
        let pin_dir = node.pin_dir();
        let classifier = node.classifier_id();
        let prev = node.prev_result();
        let conf = node.conf(Some(prev.clone()));

        let started = Instant::now();
        let (exit, stdout) = node.plugin("ADD", &conf);
        eprintln!("ADD took {:?}", started.elapsed());
        assert_eq!(exit, 0, "{stdout}");
        let printed: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(
            printed, prev,
            "ADD must print the previous result unchanged"
        );
        assert!(classifier_pin(&pin_dir, POD_VETH).exists());
        assert_eq!(tcx(POD_VETH, TcAttachType::Ingress), [classifier]);
        // Neither the bridge nor the uplink is a pod's veth.
        for other in [BRIDGE, UPLINK] {
            assert!(!classifier_pin(&pin_dir, other).exists(), "{other}");
            assert!(!tcx(other, TcAttachType::Ingress).contains(&classifier));
        }

        // Again (a retried ADD): the same one classifier.
        let (exit, stdout) = node.plugin("ADD", &conf);
        assert_eq!(exit, 0, "{stdout}");
        assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap(), prev);
        assert_eq!(tcx(POD_VETH, TcAttachType::Ingress), [classifier]);

        assert_eq!(node.plugin("CHECK", &conf), (0, String::new()));

        // A restarted agent loads its own programs and adopts the plugin's link.
        let how = node.agent_start(&[POD_VETH]);
        assert_eq!(how, [Attached::Adopted; 3]);
        let fresh = node.classifier_id();
        assert_ne!(fresh, classifier);
        assert_eq!(tcx(POD_VETH, TcAttachType::Ingress), [fresh]);
        assert_eq!(node.plugin("CHECK", &conf), (0, String::new()));
        // And the plugin, after it, keeps the agent's link.
        assert_eq!(node.plugin("ADD", &conf).0, 0);
        assert_eq!(tcx(POD_VETH, TcAttachType::Ingress), [fresh]);

        assert_eq!(node.plugin("DEL", &conf), (0, String::new()));
        assert!(!classifier_pin(&pin_dir, POD_VETH).exists());
        until_detached(POD_VETH, TcAttachType::Ingress);
        assert_eq!(node.plugin("DEL", &conf), (0, String::new()));
        assert_eq!(node.plugin("DEL", &node.conf(None)), (0, String::new()));
        node.assert_error("CHECK", &conf, 101, POD_VETH);

        // The guards are untouched by all of it.
        assert_eq!(tcx(UPLINK, TcAttachType::Egress).len(), 1);
    });
}

#[test]
fn add_on_a_node_without_its_guards_is_try_again_later() {
    if !require_root("add_on_a_node_without_its_guards_is_try_again_later") {
        return;
    }
    let pod_netns = format!("xsteer-cni-pod-b-{}", std::process::id());
    in_fresh_netns(move || async move {
        let node = Node::new(&pod_netns);
        let pin_dir = node.pin_dir();
        let conf = node.conf(Some(node.prev_result()));
        let unclassified = || {
            assert!(!classifier_pin(&pin_dir, POD_VETH).exists());
            assert!(tcx(POD_VETH, TcAttachType::Ingress).is_empty());
        };

        // The egress guard's link unpinned: detached, as nothing else holds it.
        links::unpin(&pin_dir, programs::EGRESS_GUARD, UPLINK).unwrap();
        until_detached(UPLINK, TcAttachType::Egress);
        node.assert_error(
            "ADD",
            &conf,
            11,
            "the egress guard is not attached to any uplink",
        );
        node.assert_error("CHECK", &conf, 11, "egress guard");
        // STATUS says the same before any ADD: the plugin cannot serve one (50).
        node.assert_error(
            "STATUS",
            &node.network_conf(),
            50,
            "the egress guard is not attached to any uplink",
        );
        unclassified();

        // Back, then the ingress guard's link unpinned.
        node.agent_start(&[]);
        links::unpin(&pin_dir, programs::INGRESS_GUARD, UPLINK).unwrap();
        node.assert_error(
            "ADD",
            &conf,
            11,
            "the ingress guard is not attached to any uplink",
        );
        unclassified();

        // Pinned but not attached: the uplink deleted and made again under its name.
        node.agent_start(&[]);
        ip(&["link", "del", UPLINK]);
        ip(&[
            "link", "add", UPLINK, "type", "veth", "peer", "name", "xswire0",
        ]);
        node.assert_error(
            "ADD",
            &conf,
            11,
            &format!("the pinned egress guard link of {UPLINK} is not attached"),
        );
        unclassified();

        // The agent's next start cannot adopt the dead links: it attaches anew.
        assert_eq!(node.agent_start(&[]), [Attached::New; 2]);
        let (exit, stdout) = node.plugin("ADD", &conf);
        assert_eq!(exit, 0, "guards re-attached: {stdout}");
        assert_eq!(
            node.plugin("STATUS", &node.network_conf()),
            (0, String::new())
        );

        // The ingress guard at tc ingress, as the agent runs it on a veth uplink, counts as
        // attached; its pin without the attachment does not.
        links::unpin(&pin_dir, programs::INGRESS_GUARD, UPLINK).unwrap();
        node.assert_error(
            "ADD",
            &conf,
            11,
            "the ingress guard is not attached to any uplink",
        );
        // Loads the pinned object and pins `ingress_tc` attached to the uplink at `direction`.
        let pin_ingress_tc = |direction| {
            let mut dataplane = Dataplane::load_pinned(&pin_dir).unwrap();
            dataplane.load_programs().unwrap();
            links::tc(
                dataplane.ingress_guard_tc().unwrap(),
                programs::INGRESS_GUARD_TC,
                UPLINK,
                direction,
                &pin_dir,
            )
            .unwrap();
        };
        pin_ingress_tc(TcAttachType::Ingress);
        let (exit, stdout) = node.plugin("ADD", &conf);
        assert_eq!(exit, 0, "the ingress guard at tc ingress: {stdout}");
        // The same program pinned as attached at tc egress instead: not the uplink's ingress.
        links::unpin(&pin_dir, programs::INGRESS_GUARD_TC, UPLINK).unwrap();
        pin_ingress_tc(TcAttachType::Egress);
        node.assert_error(
            "ADD",
            &conf,
            11,
            &format!("no pinned ingress guard link of {UPLINK} attached at XDP or tc ingress"),
        );
        links::unpin(&pin_dir, programs::INGRESS_GUARD_TC, UPLINK).unwrap();
        node.agent_start(&[]);

        // The ingress guard's pin holding another interface's XDP link (another agent's
        // program, on the uplink's peer): the uplink's own XDP program is not the pinned one.
        let mut other = Dataplane::load_pinned(&pin_dir).unwrap();
        other.load_programs().unwrap();
        links::xdp(
            other.ingress_guard().unwrap(),
            programs::INGRESS_GUARD,
            "xswire0",
            &pin_dir,
        )
        .unwrap();
        drop(other);
        std::fs::rename(
            links::pin_path(&pin_dir, programs::INGRESS_GUARD, "xswire0"),
            links::pin_path(&pin_dir, programs::INGRESS_GUARD, UPLINK),
        )
        .unwrap();
        node.assert_error(
            "ADD",
            &conf,
            11,
            &format!("the pinned ingress guard link of {UPLINK} is not its XDP program"),
        );

        // No classifier pinned: the dataplane is not loaded.
        std::fs::remove_file(program_pin_path(&pin_dir, programs::POD_CLASSIFIER)).unwrap();
        node.assert_error(
            "ADD",
            &conf,
            11,
            "the xsteer dataplane is not loaded on this node: no pinned pod classifier",
        );
        node.assert_error(
            "STATUS",
            &node.network_conf(),
            50,
            "the xsteer dataplane is not loaded on this node: no pinned pod classifier",
        );
    });
}

#[test]
fn a_dead_link_left_by_a_veth_of_the_same_name_is_replaced() {
    if !require_root("a_dead_link_left_by_a_veth_of_the_same_name_is_replaced") {
        return;
    }
    let pod_netns = format!("xsteer-cni-pod-d-{}", std::process::id());
    in_fresh_netns(move || async move {
        let node = Node::new(&pod_netns);
        let pin_dir = node.pin_dir();
        let conf = node.conf(Some(node.prev_result()));
        assert_eq!(node.plugin("ADD", &conf).0, 0);
        // The pod goes without a DEL, and a new pod's veth gets the same name: the pin holds
        // a link the kernel detached with the old veth.
        ip(&["link", "del", POD_VETH]);
        ip(&[
            "link",
            "add",
            POD_VETH,
            "type",
            "veth",
            "peer",
            "name",
            "eth1",
            "netns",
            &node.pod.name,
        ]);
        assert!(classifier_pin(&pin_dir, POD_VETH).exists());
        assert!(tcx(POD_VETH, TcAttachType::Ingress).is_empty());
        node.assert_error("CHECK", &conf, 101, "no attached classifier link pinned");
        let (exit, stdout) = node.plugin("ADD", &conf);
        assert_eq!(exit, 0, "{stdout}");
        assert_eq!(tcx(POD_VETH, TcAttachType::Ingress), [node.classifier_id()]);
        assert_eq!(node.plugin("CHECK", &conf), (0, String::new()));
    });
}

#[test]
fn gc_unpins_the_links_of_pod_veths_that_are_gone_and_nothing_else() {
    if !require_root("gc_unpins_the_links_of_pod_veths_that_are_gone_and_nothing_else") {
        return;
    }
    let pod_netns = format!("xsteer-cni-pod-e-{}", std::process::id());
    in_fresh_netns(move || async move {
        let node = Node::new(&pod_netns);
        let pin_dir = node.pin_dir();
        let conf = node.conf(Some(node.prev_result()));
        assert_eq!(node.plugin("ADD", &conf).0, 0);
        let guards = links::pinned_interfaces(&pin_dir, programs::EGRESS_GUARD);
        // The veth is there: its pin stays, attached.
        assert_eq!(node.plugin("GC", &node.network_conf()), (0, String::new()));
        assert!(classifier_pin(&pin_dir, POD_VETH).exists());
        assert_eq!(tcx(POD_VETH, TcAttachType::Ingress), [node.classifier_id()]);
        // The pod went without a DEL: its veth is gone and the pin holds a dead link.
        ip(&["link", "del", POD_VETH]);
        assert!(classifier_pin(&pin_dir, POD_VETH).exists());
        assert_eq!(node.plugin("GC", &node.network_conf()), (0, String::new()));
        assert!(!classifier_pin(&pin_dir, POD_VETH).exists());
        // The guards' pins and the node's readiness are untouched.
        assert_eq!(
            links::pinned_interfaces(&pin_dir, programs::EGRESS_GUARD),
            guards
        );
        assert_eq!(tcx(UPLINK, TcAttachType::Egress).len(), 1);
        assert_eq!(
            node.plugin("STATUS", &node.network_conf()),
            (0, String::new())
        );
        // Nothing left to collect: GC again is a no-op.
        assert_eq!(node.plugin("GC", &node.network_conf()), (0, String::new()));
    });
}

#[test]
fn the_plugin_waits_for_the_links_lock() {
    if !require_root("the_plugin_waits_for_the_links_lock") {
        return;
    }
    let pod_netns = format!("xsteer-cni-pod-c-{}", std::process::id());
    in_fresh_netns(move || async move {
        let node = Node::new(&pod_netns);
        let pin_dir = node.pin_dir();
        let conf = node.conf(Some(node.prev_result()));
        let held = links::lock(&pin_dir).unwrap();
        let mut child = node.spawn("ADD", &conf);
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            child.try_wait().unwrap().is_none(),
            "ADD finished while the links lock was held"
        );
        assert!(!classifier_pin(&pin_dir, POD_VETH).exists());
        drop(held);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(tcx(POD_VETH, TcAttachType::Ingress), [node.classifier_id()]);
    });
}
