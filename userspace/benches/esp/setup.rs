//! The three ways the same two-node lab carries pod traffic, brought up and torn down whole for
//! each measurement, and how the receiving node's uplink hands packets on (RPS or not).

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
};

use crate::lab_cli::xsteer_lab;
use xsteer::{
    cidr::IpFamily,
    kernel::xfrm::{REPLAY_WINDOW, REQID},
    keys::{self, Generation},
    lab::{
        netns::ip_in,
        pods,
        topology::{self, LabNode, Size},
    },
    reconcile::mtu::{EspTransform, inner_mtu},
};

/// The lab's shape: two nodes, one pod each; node1's pod sends to node2's.
pub const SIZE: Size = Size { nodes: 2, pods: 1 };
/// The MTU of the lab's veth uplinks.
const UPLINK_MTU: u32 = 1500;
/// The SPIs of the hand-built tunnel, node1 → node2 and node2 → node1.
const HAND_SPIS: [u32; 2] = [0x100, 0x200];

/// What carries the pods' traffic between the two nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// (a) `xsteer lab up`: agents, programs and guards attached, xsteer's SAs and policies.
    Xsteer {
        /// The lab's `--per-cpu-sas`: one OUT SA per CPU instead of one per peer.
        per_cpu_sas: bool,
        /// The lab's `--ingress-hook xdp`: the ingress guard at XDP on the veth uplinks rather
        /// than at tc ingress, where the agent puts it on a veth.
        guard_at_xdp: bool,
    },
    /// (b) The same namespaces and pods, one ESP tunnel built with `ip xfrm` as xsteer builds
    /// its SAs, no BPF program.
    HandTunnel,
    /// (c) The same namespaces and pods, plain routing, no BPF program.
    Plain,
}

impl Setup {
    /// How the tables name it.
    pub fn label(self) -> &'static str {
        match self {
            Setup::Xsteer {
                per_cpu_sas: false,
                guard_at_xdp: false,
            } => "(a) xsteer",
            Setup::Xsteer {
                per_cpu_sas: true,
                guard_at_xdp: false,
            } => "(a) xsteer, per-CPU SAs",
            Setup::Xsteer {
                per_cpu_sas: false,
                guard_at_xdp: true,
            } => "(a) xsteer, ingress guard at XDP",
            Setup::Xsteer {
                per_cpu_sas: true,
                guard_at_xdp: true,
            } => "(a) xsteer, per-CPU SAs, ingress guard at XDP",
            Setup::HandTunnel => "(b) hand-built `ip xfrm` tunnel, no BPF",
            Setup::Plain => "(c) no encryption, no BPF",
        }
    }

    /// Whether pod traffic between the nodes is ESP.
    pub fn encrypts(self) -> bool {
        self != Setup::Plain
    }
}

/// Brings `setup` up in a fresh lab at `dir`.
pub fn up(setup: Setup, dir: &Path, nodes: &[LabNode]) {
    down(dir);
    match setup {
        Setup::Xsteer {
            per_cpu_sas,
            guard_at_xdp,
        } => {
            let size = SIZE.nodes.to_string();
            let pods = SIZE.pods.to_string();
            let mut args = vec!["up", "--nodes", &size, "--pods", &pods];
            if per_cpu_sas {
                args.push("--per-cpu-sas");
            }
            if guard_at_xdp {
                args.extend(["--ingress-hook", "xdp"]);
            }
            assert!(xsteer_lab(&args, dir), "xsteer lab up");
        }
        Setup::HandTunnel => {
            namespaces(dir, nodes);
            hand_tunnel(nodes);
        }
        Setup::Plain => namespaces(dir, nodes),
    }
}

/// Tears down whatever lab is at `dir` (agents, namespaces, pins, files).
pub fn down(dir: &Path) {
    assert!(xsteer_lab(&["down"], dir), "xsteer lab down");
}

/// The lab's namespaces, wire and pods as `xsteer lab up` makes them, without agents: the pods
/// come through the same conflist (ptp, host-local), which has no `xsteer-cni` since no agent
/// put it there.
fn namespaces(dir: &Path, nodes: &[LabNode]) {
    std::fs::create_dir_all(dir).unwrap();
    topology::wire_up(nodes).unwrap();
    for node in nodes {
        pods::write_conflist(dir, node).unwrap();
    }
    pods::add_all(dir, nodes).unwrap();
}

/// One ESP tunnel between the two nodes' pod CIDRs, as xsteer builds its SAs
/// (`kernel::xfrm::add_state`): tunnel mode, the lab key file's AEAD and key size (a fresh key
/// line of the same generator per direction), ESN, a replay window of [`REPLAY_WINDOW`] on both
/// directions, AF_UNSPEC; policies out, in and fwd between the pod CIDRs; and the route to the
/// remote pod CIDR at the inner MTU xsteer gives its routes, so that TCP sees the same path MTU.
fn hand_tunnel(nodes: &[LabNode]) {
    let pairs = [(&nodes[0], &nodes[1]), (&nodes[1], &nodes[0])];
    let mut icv_bits = 0;
    for ((from, to), spi) in pairs.into_iter().zip(HAND_SPIS) {
        let line = keys::generate_gcm_line(Generation::MIN).unwrap();
        // `SPI rfc4106(gcm(aes)) <key and salt in hex> <ICV bits>`
        let [_, aead, key, icv] = line.split_whitespace().collect::<Vec<_>>()[..] else {
            panic!("unexpected key line shape");
        };
        assert_eq!(aead, keys::GCM);
        icv_bits = icv.parse().unwrap();
        for node in nodes {
            ip_batch(
                &node.netns,
                &format!(
                    "xfrm state add src {} dst {} proto esp spi {spi} reqid {REQID} mode tunnel \
                     replay-window {REPLAY_WINDOW} flag esn flag af-unspec aead {aead} 0x{key} {icv}\n",
                    from.ip, to.ip
                ),
            );
        }
    }
    let mtu = inner_mtu(
        UPLINK_MTU,
        EspTransform::Gcm {
            icv_bytes: icv_bits / 8,
        },
        IpFamily::V4,
    );
    for (node, peer) in pairs {
        let (local, remote) = (node.pod_cidr(), peer.pod_cidr());
        let (out, back) = (
            format!("tmpl src {} dst {}", node.ip, peer.ip),
            format!("tmpl src {} dst {}", peer.ip, node.ip),
        );
        let tmpl = format!("proto esp reqid {REQID} mode tunnel");
        ip_batch(
            &node.netns,
            &format!(
                "xfrm policy add src {local} dst {remote} dir out {out} {tmpl}\n\
                 xfrm policy add src {remote} dst {local} dir in {back} {tmpl}\n\
                 xfrm policy add src {remote} dst {local} dir fwd {back} {tmpl}\n\
                 route replace {remote} via {} dev eth0 mtu {mtu}\n",
                peer.ip
            ),
        );
    }
}

/// Runs `ip -n NETNS -batch -` on `commands`; the key stays out of argv.
fn ip_batch(netns: &str, commands: &str) {
    let mut ip = Command::new("ip")
        .args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    ip.stdin
        .take()
        .unwrap()
        .write_all(commands.as_bytes())
        .unwrap();
    assert!(ip.wait().unwrap().success(), "ip -n {netns} -batch failed");
}

/// How the receiving node's uplink hands packets to the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receive {
    /// As the setup leaves it: a veth without an XDP program passes each packet to the sending
    /// CPU's backlog; one with an XDP program queues it to the veth's one NAPI instance.
    AsSetUp,
    /// RPS over every CPU.
    Rps,
}

impl Receive {
    /// How the tables name it, after the setup's name.
    pub fn label(self) -> &'static str {
        match self {
            Receive::AsSetUp => "",
            Receive::Rps => ", RPS on node2's uplink",
        }
    }
}

/// Puts `node`'s uplink in `mode`: RPS over `cpus` CPUs or none. The queue's sysfs file is the
/// namespace's own: `ip netns exec` mounts its sysfs.
pub fn set_receive(node: &LabNode, cpus: usize, mode: Receive) {
    let mask = if mode == Receive::Rps {
        (1u64 << cpus) - 1
    } else {
        0
    };
    let script = format!("echo {mask:x} > /sys/class/net/eth0/queues/rx-0/rps_cpus");
    let status = Command::new("ip")
        .args(["netns", "exec", &node.netns, "sh", "-c", &script])
        .status()
        .unwrap();
    assert!(status.success(), "{script} in {}", node.netns);
}

/// Checks, after the measurements, that the traffic took the path `setup` says: through SAs
/// whose counters carried at least the `payload` bytes the receiver counted, or through no SA.
pub fn check_path(setup: Setup, sender: &LabNode, payload: u64) {
    let states = ip_in(&sender.netns, &["-s", "xfrm", "state"]).unwrap();
    // `ip -s` prints each SA's bytes as `N(bytes), M(packets)` under "lifetime current".
    let sa_bytes: u64 = states
        .lines()
        .filter_map(|l| l.trim().strip_suffix("(packets)"))
        .filter_map(|l| l.split_once("(bytes)")?.0.parse::<u64>().ok())
        .sum();
    if setup.encrypts() {
        assert!(
            sa_bytes >= payload,
            "{}: the SAs carried {sa_bytes} bytes, the receiver counted {payload}",
            setup.label()
        );
    } else {
        assert!(states.trim().is_empty(), "{}: SAs found", setup.label());
    }
}
