//! The chained CNI plugin end to end, in the lab (`ptp` + `host-local` + `xsteer-cni`, the agents
//! installing the plugin as on a Kubernetes node), each test with a capture of what the nodes
//! send on the wire:
//!
//! 1. a simulated reboot of a node (agent stopped; pins, programs, links, SAs and policies gone):
//!    a pod's ADD fails with "try again later" until the agent is back, nothing of it reaches the
//!    wire in clear, and the retried ADD succeeds and its traffic is ESP;
//! 2. a pod added while the agent cannot act (stopped with SIGSTOP) is classified by the plugin
//!    alone: its very first datagram leaves as ESP;
//! 3. DEL of a pod nobody knows and CHECK of a healthy one succeed; CHECK of a pod whose
//!    classifier is gone fails and says so;
//! 4. the main plugin rewriting its conflist without `xsteer-cni` gets it back from the agent,
//!    and `xsteer uninstall` leaves the main plugin's file byte for byte as it wrote it.

use std::{
    fs,
    io::Write as _,
    net::UdpSocket,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use nix::sys::signal::{Signal, kill};
use serde_json::{Value, json};
use xsteer::lab::{
    self, agents,
    capture::{Capture, Packet},
    netns,
    pods::{self, CniDirs},
    probe::{self, Proto},
    runtime::{self, PluginError},
    topology::{LabNode, LabPod, Size},
};

const DIR: &str = "/tmp/xsteer-e2e-cni";

/// A lab of two nodes with one pod each, taken down when dropped.
struct Lab {
    dir: PathBuf,
    nodes: Vec<LabNode>,
}

impl Lab {
    fn up() -> Lab {
        let dir = PathBuf::from(DIR);
        let _ = lab::down(&dir);
        // Through the CLI, as people start it: the agents are this `xsteer`.
        let out = Command::new(env!("CARGO_BIN_EXE_xsteer"))
            .args(["lab", "up", "--nodes", "2", "--pods", "1", "--dir", DIR])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "lab up: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let nodes = xsteer::lab::topology::plan(Size { nodes: 2, pods: 1 });
        Lab { dir, nodes }
    }

    /// Node 2 and its pod.
    fn node2(&self) -> (&LabNode, &LabPod) {
        (&self.nodes[1], &self.nodes[1].pods[0])
    }

    /// Node 1's pod.
    fn pod1(&self) -> &LabPod {
        &self.nodes[0].pods[0]
    }

    /// Starts capturing what every node sends on its uplink.
    fn capture(&self) -> Vec<Capture> {
        self.nodes
            .iter()
            .map(|n| Capture::start(&n.netns, "eth0").unwrap())
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = lab::down(&self.dir);
    }
}

fn take(captures: &[Capture]) -> Vec<Packet> {
    captures.iter().flat_map(|c| c.take().unwrap()).collect()
}

/// A simulated reboot of `node`: its agent stopped, and what a reboot clears gone from its
/// kernel: bpffs (pins, hence links and programs), SAs, policies, xsteer's routes.
fn reboot(lab: &Lab, node: &LabNode) {
    agents::stop(&lab.dir, std::slice::from_ref(node));
    fs::remove_dir_all(agents::pin_dir(&node.name)).unwrap();
    for args in [
        &["xfrm", "state", "flush"][..],
        &["xfrm", "policy", "flush"],
        &["route", "flush", "table", "200"],
    ] {
        netns::ip_in(&node.netns, args).unwrap();
    }
    let link = netns::ip_in(&node.netns, &["-d", "link", "show", "eth0"]).unwrap();
    assert!(
        !link.contains("xdp"),
        "the ingress guard outlived the reboot at XDP: {link}"
    );
    // On the lab's veth uplinks the guards run at tc, ingress and egress.
    for direction in [TcAttachType::Ingress, TcAttachType::Egress] {
        let attached = netns::run_in(&node.netns, move || {
            Ok(SchedClassifier::query_tcx("eth0", direction)?.1.len())
        })
        .unwrap();
        assert_eq!(
            attached, 0,
            "a guard outlived the reboot at tc {direction:?}"
        );
    }
}

/// The CNI error a failed ADD returned.
fn plugin_error(error: &anyhow::Error) -> &PluginError {
    error
        .downcast_ref::<PluginError>()
        .unwrap_or_else(|| panic!("ADD failed without a plugin's CNI error: {error:#}"))
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn a_pod_started_after_a_reboot_waits_for_the_guards_and_never_talks_in_clear() {
    let lab = Lab::up();
    let (node, pod) = lab.node2();
    pods::del(&lab.dir, node, pod).unwrap();
    reboot(&lab, node);
    let captures = lab.capture();
    let _servers = probe::serve(std::slice::from_ref(lab.pod1())).unwrap();

    // The kubelet retries a failed sandbox; so does this loop, while the node is "booting".
    let mut refused = 0;
    for _ in 0..3 {
        let error = pods::add(&lab.dir, node, pod).unwrap_err();
        let refusal = plugin_error(&error);
        assert_eq!(
            (refusal.plugin.as_str(), refusal.code),
            ("xsteer-cni", 11),
            "{refusal}"
        );
        assert!(refusal.msg.contains("not loaded"), "{refusal}");
        assert!(
            !netns::list("xsl-").contains(&pod.netns),
            "a refused pod's namespace was left behind"
        );
        refused += 1;
        thread::sleep(Duration::from_secs(1));
    }
    eprintln!("before the agent: {refused} ADDs refused: {}", {
        let e = pods::add(&lab.dir, node, pod).unwrap_err();
        plugin_error(&e).to_string()
    });

    let started = Instant::now();
    agents::start(
        &lab.dir,
        std::slice::from_ref(node),
        Path::new(env!("CARGO_BIN_EXE_xsteer")),
    )
    .unwrap();
    let mut retries = 0;
    let result = loop {
        match pods::add(&lab.dir, node, pod) {
            Ok(result) => break result,
            Err(e) => {
                assert_eq!(plugin_error(&e).code, 11, "{e:#}");
                assert!(started.elapsed() < Duration::from_secs(90), "{e:#}");
                retries += 1;
                thread::sleep(Duration::from_millis(500));
            }
        }
    };
    eprintln!(
        "the agent back: ADD succeeded {:.1?} after its start, {retries} retries; host side {:?}",
        started.elapsed(),
        runtime::host_interfaces(&result)
    );
    agents::wait_for_peers(&lab.nodes, Duration::from_secs(60)).unwrap();
    let _servers2 = probe::serve(std::slice::from_ref(pod)).unwrap();
    for proto in Proto::ALL {
        probe::check(pod, lab.pod1(), proto).unwrap();
        probe::check(lab.pod1(), pod, proto).unwrap();
    }
    let census = lab::census(&take(&captures));
    eprintln!("reboot: {census:?}");
    assert_eq!(census.plaintext, 0, "{census:?}");
    assert!(census.esp >= 6, "{census:?}");
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn a_pod_added_while_the_agent_cannot_act_is_classified_before_its_first_packet() {
    let lab = Lab::up();
    let (node, pod) = lab.node2();
    pods::del(&lab.dir, node, pod).unwrap();
    let listener = netns::run_in(&lab.pod1().netns, || {
        let socket = UdpSocket::bind(("0.0.0.0", 7777))?;
        socket.set_read_timeout(Some(Duration::from_secs(3)))?;
        Ok(socket)
    })
    .unwrap();
    let captures = lab.capture();

    // With the agent frozen, its veth watch cannot attach anything: only the plugin can.
    let agent = agents::pid(&lab.dir, node).unwrap();
    kill(agent, Signal::SIGSTOP).unwrap();
    let added = pods::add(&lab.dir, node, pod);
    let to = lab.pod1().ip;
    let sent = added.as_ref().ok().map(|_| {
        netns::run_in(&pod.netns, move || {
            let socket = UdpSocket::bind(("0.0.0.0", 0))?;
            Ok(socket.send_to(b"first", (to, 7777))?)
        })
    });
    let mut buf = [0u8; 16];
    let received = listener.recv(&mut buf);
    kill(agent, Signal::SIGCONT).unwrap();
    let result = added.unwrap();
    sent.unwrap().unwrap();

    let veth = runtime::host_interfaces(&result).remove(0);
    assert!(
        xsteer::dataplane::links::pin_path(&agents::pin_dir(&node.name), "pod_classifier", &veth)
            .exists(),
        "no classifier link pinned on {veth}"
    );
    let received = received.map(|n| buf[..n].to_vec());
    let packets = take(&captures);
    let census = lab::census(&packets);
    eprintln!("first packet: received {received:?}, on the wire {census:?}");
    assert_eq!(received.unwrap(), b"first");
    assert_eq!(census.plaintext, 0, "{census:?}");
    assert!(census.esp >= 1, "{census:?}");
}

/// Runs the installed `xsteer-cni` of `node` for `command` with `config`; exit status and stdout.
fn run_plugin(
    lab: &Lab,
    node: &LabNode,
    command: &str,
    container: &str,
    config: &Value,
) -> (bool, String) {
    let dirs = CniDirs::of(&lab.dir, node);
    let mut child = Command::new(dirs.bin.join("xsteer-cni"));
    child
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", Path::new("/run/netns").join(container))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", &dirs.bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    netns::command_in(&mut child, &node.netns, false).unwrap();
    let mut child = child.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn del_of_an_unknown_pod_and_check_of_a_healthy_one_succeed() {
    let lab = Lab::up();
    let (node, pod) = lab.node2();
    let pin_dir = agents::pin_dir(&node.name);
    let cached: Value = serde_json::from_str(
        &fs::read_to_string(
            CniDirs::of(&lab.dir, node)
                .conf
                .parent()
                .unwrap()
                .join("results")
                .join(format!("{}.json", pod.netns)),
        )
        .unwrap(),
    )
    .unwrap();
    let config = |prev: &Value| {
        json!({
            "cniVersion": "1.0.0",
            "name": "lab",
            "type": "xsteer-cni",
            "pinDir": pin_dir,
            "prevResult": prev,
        })
    };

    let (ok, out) = run_plugin(&lab, node, "CHECK", &pod.netns, &config(&cached));
    assert!(ok, "CHECK of a healthy pod: {out}");

    let unknown = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "vethdeadbeef"}, {"name": "eth0", "sandbox": "/run/netns/gone"}],
        "ips": [{"address": "10.244.2.200/24"}],
    });
    let (ok, out) = run_plugin(&lab, node, "DEL", "gone", &config(&unknown));
    assert!(ok, "DEL of an unknown pod: {out}");
    let mut no_prev = config(&Value::Null);
    no_prev.as_object_mut().unwrap().remove("prevResult");
    let (ok, out) = run_plugin(&lab, node, "DEL", "gone", &no_prev);
    assert!(ok, "DEL without prevResult: {out}");

    // The classifier's link gone (a node where someone detached it): CHECK says so.
    let veth = runtime::host_interfaces(&cached).remove(0);
    agents::stop(&lab.dir, std::slice::from_ref(node));
    xsteer::dataplane::links::unpin(&pin_dir, "pod_classifier", &veth).unwrap();
    let (ok, out) = run_plugin(&lab, node, "CHECK", &pod.netns, &config(&cached));
    eprintln!("CHECK without the classifier: {out}");
    assert!(!ok, "CHECK passed a pod whose classifier is gone: {out}");
    let error: Value = serde_json::from_str(&out).unwrap();
    assert!(error["msg"].as_str().unwrap().contains(&veth), "{out}");
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn the_conflist_edit_survives_the_main_plugin_and_uninstall_restores_its_file() {
    let lab = Lab::up();
    let (node, pod) = lab.node2();
    let dirs = CniDirs::of(&lab.dir, node);
    let theirs = pods::conflist_text(&dirs, node);
    let path = dirs.conflist();
    assert_ne!(fs::read_to_string(&path).unwrap(), theirs);

    // The main plugin writes its file again, as kindnet does at start: temp file, rename.
    let temp = dirs.conf.join(".10-lab.conflist.tmp");
    fs::write(&temp, &theirs).unwrap();
    fs::rename(&temp, &path).unwrap();
    let rewritten = Instant::now();
    let runtime = pods::runtime(&lab.dir, node);
    while !runtime
        .conflist()
        .unwrap()
        .types()
        .contains(&pods::XSTEER_CNI)
    {
        assert!(
            rewritten.elapsed() < Duration::from_secs(10),
            "the agent did not put xsteer-cni back"
        );
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "xsteer-cni back in the rewritten conflist {:.1?} later",
        rewritten.elapsed()
    );
    pods::del(&lab.dir, node, pod).unwrap();
    pods::add(&lab.dir, node, pod).unwrap();

    agents::stop(&lab.dir, std::slice::from_ref(node));
    let node_dir = lab.dir.join(&node.name);
    let mut uninstall = Command::new(env!("CARGO_BIN_EXE_xsteer"));
    uninstall
        .args(["uninstall", "--config"])
        .arg(node_dir.join("xsteer.toml"))
        .arg("--pin-dir")
        .arg(agents::pin_dir(&node.name))
        .arg("--cni-conf-dir")
        .arg(&dirs.conf)
        .arg("--cni-bin-dir")
        .arg(&dirs.bin);
    netns::command_in(&mut uninstall, &node.netns, false).unwrap();
    let out = uninstall.output().unwrap();
    assert!(
        out.status.success(),
        "uninstall: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        theirs,
        "not byte for byte"
    );
    assert!(!dirs.bin.join("xsteer-cni").exists());
    // Without the plugin, the main plugin's chain starts pods as before.
    pods::del(&lab.dir, node, pod).unwrap();
    pods::add(&lab.dir, node, pod).unwrap();
}
