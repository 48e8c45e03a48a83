//! A two-node cluster out of network namespaces, for the end-to-end tests: each node has an
//! uplink `eth0` on a shared wire, a pod behind the veth `pod0` routed as a native-routing CNI
//! does, a config and a key file; `xsteer` runs in the node's namespace.

use std::{
    fs,
    net::{Ipv4Addr, UdpSocket},
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use xsteer::dataplane::Dataplane;
use xsteer_common::counters::Counter;

use crate::support::Netns;

/// An older CBC generation (installed, idle) and the newest, GCM, which carries the traffic.
pub const KEYS: &str = "\
    3 hmac(sha256) 0x1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a7988 cbc(aes) 0x0f1e2d3c4b5a69780f1e2d3c4b5a6978\n\
    4 rfc4106(gcm(aes)) 0x6a0c3c1e7d2b4f59a1b2c3d4e5f60718293a4b5c 128\n";

/// One node: its namespace, its pod's namespace, and its files.
pub struct Node {
    /// The node's network namespace.
    pub netns: Netns,
    /// The first pod's network namespace.
    pub pod: Netns,
    /// "a" or "b".
    pub name: &'static str,
    /// Node ID.
    pub id: u16,
    /// Address on the wire.
    pub wire_ip: Ipv4Addr,
    /// The first pod's address.
    pub pod_ip: Ipv4Addr,
    /// Config, key file, state dir, logs.
    pub dir: PathBuf,
    prefix: &'static str,
}

impl Node {
    /// Where this node's maps and links are pinned.
    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from(format!(
            "/sys/fs/bpf/xsteer-e2e-{}-{}",
            self.prefix, self.name
        ))
    }

    /// The name of the node's port on the bridge of a [`Cluster`]'s wire.
    pub fn wire_port(&self) -> String {
        format!("port-{}", self.name)
    }

    /// The node's config file.
    pub fn config(&self) -> PathBuf {
        self.dir.join("xsteer.toml")
    }

    /// `xsteer SUBCOMMAND --config .. --pin-dir .. --state-dir .. EXTRA..` for this node.
    pub fn xsteer(&self, subcommand: &str, extra: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xsteer"));
        command
            .arg(subcommand)
            .arg("--config")
            .arg(self.config())
            .arg("--pin-dir")
            .arg(self.pin_dir())
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .args(extra);
        command
    }

    /// Runs `xsteer node remove NAME` with this node's config: every peer forgets node NAME.
    pub fn remove_node(&self, name: &str) {
        let out = Command::new(env!("CARGO_BIN_EXE_xsteer"))
            .args(["node", "remove", name, "--config"])
            .arg(self.config())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "xsteer node remove {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `xsteer apply` in this node's namespace; returns (success, stdout, stderr).
    pub fn apply(&self, extra: &[&str]) -> (bool, String, String) {
        let mut command = self.xsteer("apply", extra);
        let out = self.netns.run(move || command.output().unwrap());
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    }

    /// Starts `xsteer agent` in this node's namespace, its log in `dir/agent.log`, and waits
    /// until it says it is running.
    pub fn start_agent(&self) -> Child {
        self.start_agent_with(&[])
    }

    /// Starts `xsteer agent EXTRA..` in the node's namespace, as [`Node::start_agent`] does.
    pub fn start_agent_with(&self, extra: &[&str]) -> Child {
        self.start_agent_with_env(extra, &[])
    }

    /// Starts `xsteer agent EXTRA..` with `env` added to its environment.
    pub fn start_agent_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Child {
        let mut command = self.xsteer("agent", extra);
        command.envs(env.iter().copied());
        self.spawn_agent(command)
    }

    /// Spawns `command`, an `xsteer agent`, in the node's namespace with its log in
    /// `dir/agent.log`, and waits until it says it is running.
    pub fn spawn_agent(&self, mut command: Command) -> Child {
        let log = self.dir.join("agent.log");
        let file = fs::File::create(&log).unwrap();
        command.stdout(Stdio::null()).stderr(file);
        let mut child = self.netns.run(move || command.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if text.contains("agent running:") {
                return child;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the agent on {} exited ({status}):\n{text}", self.name);
            }
            assert!(
                Instant::now() < deadline,
                "the agent on {} did not start:\n{text}",
                self.name
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The agent's log so far.
    pub fn agent_log(&self) -> String {
        fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// One counter of this node's pinned `counters` map.
    pub fn counter(&self, counter: Counter) -> u64 {
        let mut dataplane = Dataplane::load_pinned(&self.pin_dir()).unwrap();
        dataplane.counters().unwrap().read().unwrap().get(counter)
    }

    /// Everything in the node's namespace that `ip` shows of xfrm, rules and routes.
    pub fn kernel_state(&self) -> String {
        [
            self.netns.ip(&["xfrm", "state", "show"]),
            self.netns.ip(&["xfrm", "policy", "show"]),
            // IPv4 only: IPv6 link-local routes appear on their own schedule after links go up.
            self.netns.ip(&["-4", "rule", "show"]),
            self.netns.ip(&["-4", "route", "show", "table", "all"]),
        ]
        .join("\n---\n")
    }

    /// Adds a pod behind veth `ifname` at `ip`, routed as Calico does: a /32 route to the pod on
    /// the node, and the pod's default gateway 169.254.1.1, which the node answers for on every
    /// pod veth. Returns its namespace.
    pub fn add_pod(&self, ifname: &str, ip: Ipv4Addr) -> Netns {
        let pod = Netns::new(&format!("xs-{}-{}-{ifname}", self.prefix, self.name));
        self.netns.ip(&[
            "link", "add", ifname, "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
        ]);
        self.netns
            .ip(&["addr", "add", "169.254.1.1/32", "dev", ifname]);
        self.netns.ip(&["link", "set", ifname, "up"]);
        self.netns
            .ip(&["route", "add", &format!("{ip}/32"), "dev", ifname]);
        pod.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        pod.ip(&["link", "set", "eth0", "up"]);
        pod.ip(&[
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ]);
        pod.ip(&[
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ]);
        pod
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(self.pin_dir());
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn config_text(me: &Node, peer: &Node) -> String {
    let epoch = |n: &Node| format!("{:02x}", n.id).repeat(16);
    let cidr = |n: &Node| format!("10.244.{}.0/24", n.id);
    format!(
        "key_file = \"keys\"\ncluster_cidr = \"10.244.0.0/16\"\n\n[node]\nname = \"{}\"\nip = \"{}\"\nid = {}\nuplink = \"eth0\"\n\
         pod_cidr = \"{}\"\nepoch = \"{}\"\n\n[[peers]]\nname = \"{}\"\nip = \"{}\"\nid = {}\n\
         pod_cidrs = [\"{}\"]\nepoch = \"{}\"\n",
        me.name,
        me.wire_ip,
        me.id,
        cidr(me),
        epoch(me),
        peer.name,
        peer.wire_ip,
        peer.id,
        cidr(peer),
        epoch(peer)
    )
}

fn node(prefix: &'static str, name: &'static str, id: u16) -> Node {
    let n = id as u8;
    let netns = Netns::new(&format!("xs-{prefix}-{name}"));
    let pod = Netns::new(&format!("xs-{prefix}-{name}-pod"));
    let dir = std::env::temp_dir().join(format!("xsteer-e2e-{prefix}-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("keys"), KEYS).unwrap();
    fs::set_permissions(dir.join("keys"), fs::Permissions::from_mode(0o600)).unwrap();
    let pod_ip = Ipv4Addr::new(10, 244, n, 2);
    netns.ip(&[
        "link", "add", "pod0", "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
    ]);
    netns.ip(&["addr", "add", &format!("10.244.{n}.1/24"), "dev", "pod0"]);
    netns.ip(&["link", "set", "pod0", "up"]);
    pod.ip(&["addr", "add", &format!("{pod_ip}/24"), "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    pod.ip(&["route", "add", "default", "via", &format!("10.244.{n}.1")]);
    netns.run(|| fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap());
    let node = Node {
        netns,
        pod,
        name,
        id,
        wire_ip: Ipv4Addr::new(192, 168, 60, n),
        pod_ip,
        dir,
        prefix,
    };
    let _ = fs::remove_dir_all(node.pin_dir());
    node
}

/// Nodes on one wire that learn each other from node records.
pub struct Cluster {
    /// The nodes, "a", "b", "c", ... with IDs 1, 2, 3, ...
    pub nodes: Vec<Node>,
    /// The node records directory.
    pub records: PathBuf,
    /// The namespace holding the bridge that plays the wire.
    pub wire: Netns,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.records);
    }
}

/// Nodes "a", "b" and "c" (IDs 1, 2, 3), each with a pod, on a bridge that plays the wire, pod
/// CIDRs routed via each other's node IP, and configs with no peers: they learn each other from
/// the node records in [`Cluster::records`]. They send on per-CPU SAs (`per_cpu_sas = true`),
/// so that rotations and re-keys are tested with them.
pub fn trio_with_records(prefix: &'static str) -> Cluster {
    let wire = Netns::new(&format!("xs-{prefix}-wire"));
    wire.ip(&["link", "add", "br0", "type", "bridge"]);
    wire.ip(&["link", "set", "br0", "up"]);
    let records = std::env::temp_dir().join(format!("xsteer-e2e-{prefix}-nodes"));
    let _ = fs::remove_dir_all(&records);
    let nodes: Vec<Node> = [("a", 1), ("b", 2), ("c", 3)]
        .into_iter()
        .map(|(name, id)| node(prefix, name, id))
        .collect();
    for me in &nodes {
        let port = me.wire_port();
        wire.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &me.netns.name,
        ]);
        wire.ip(&["link", "set", &port, "master", "br0", "up"]);
        me.netns
            .ip(&["addr", "add", &format!("{}/24", me.wire_ip), "dev", "eth0"]);
        me.netns.ip(&["link", "set", "eth0", "up"]);
        for peer in nodes.iter().filter(|p| p.id != me.id) {
            let peer_pods = format!("10.244.{}.0/24", peer.id);
            me.netns
                .ip(&["route", "add", &peer_pods, "via", &peer.wire_ip.to_string()]);
        }
        let epoch = format!("{:02x}", me.id).repeat(16);
        fs::write(
            me.config(),
            format!(
                "key_file = \"keys\"\ncluster_cidr = \"10.244.0.0/16\"\nnodes_dir = \"{}\"\n\n[node]\nname = \"{}\"\nip = \"{}\"\n\
                 id = {}\nuplink = \"eth0\"\npod_cidr = \"10.244.{}.0/24\"\nepoch = \"{epoch}\"\n\
                 per_cpu_sas = true\n",
                records.display(),
                me.name,
                me.wire_ip,
                me.id,
                me.id
            ),
        )
        .unwrap();
    }
    Cluster {
        nodes,
        records,
        wire,
    }
}

/// Nodes "a" and "b" as [`pair`] makes them, but with no peers in their configs: each learns
/// the other from the node records in the returned directory.
pub fn pair_with_records(prefix: &'static str) -> (Node, Node, PathBuf) {
    let (a, b) = pair(prefix);
    let records = std::env::temp_dir().join(format!("xsteer-e2e-{prefix}-nodes"));
    let _ = fs::remove_dir_all(&records);
    for node in [&a, &b] {
        let text = fs::read_to_string(node.config()).unwrap();
        let own = &text[..text.find("[[peers]]").unwrap()];
        let with_dir = own.replacen(
            "key_file = \"keys\"\n",
            &format!(
                "key_file = \"keys\"\nnodes_dir = \"{}\"\n",
                records.display()
            ),
            1,
        );
        fs::write(node.config(), with_dir).unwrap();
    }
    (a, b, records)
}

/// Nodes "a" (ID 1) and "b" (ID 2), wired together, each with a config naming the other.
pub fn pair(prefix: &'static str) -> (Node, Node) {
    let a = node(prefix, "a", 1);
    let b = node(prefix, "b", 2);
    a.netns.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &b.netns.name,
    ]);
    for (me, peer) in [(&a, &b), (&b, &a)] {
        me.netns
            .ip(&["addr", "add", &format!("{}/24", me.wire_ip), "dev", "eth0"]);
        me.netns.ip(&["link", "set", "eth0", "up"]);
        let peer_pods = format!("10.244.{}.0/24", peer.id);
        me.netns
            .ip(&["route", "add", &peer_pods, "via", &peer.wire_ip.to_string()]);
        fs::write(me.config(), config_text(me, peer)).unwrap();
    }
    (a, b)
}

/// Sends `count` datagrams from `src` in `from` to `dst`:`port` in `to`; returns how many
/// arrived within `wait`.
pub fn exchange(
    (from, src): (&Netns, Ipv4Addr),
    (to, dst): (&Netns, Ipv4Addr),
    port: u16,
    count: usize,
    wait: Duration,
) -> usize {
    let receiver = to.run(move || UdpSocket::bind((dst, port)).unwrap());
    receiver.set_nonblocking(true).unwrap();
    from.run(move || {
        let socket = UdpSocket::bind((src, 0)).unwrap();
        for i in 0..count {
            // A refused send (the block policy, a guard) is a lost datagram, not a test error.
            let _ = socket.send_to(format!("{i}").as_bytes(), (dst, port));
        }
    });
    let deadline = Instant::now() + wait;
    let mut got = 0;
    let mut buf = [0u8; 16];
    while got < count && Instant::now() < deadline {
        match receiver.recv(&mut buf) {
            Ok(_) => got += 1,
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
    got
}
