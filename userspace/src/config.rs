//! The TOML config of a node: this node, its static peers, the key file, the route table, and
//! where node records and pod CIDRs come from.
//!
//! `node.name` and `node.ip` may name an environment variable instead (`name = "${NODE_NAME}"`),
//! so that one file serves every node of a DaemonSet, which learns both from the Downward API.
//!
//! This is the file as the operator wrote it, checked and typed, nothing more: reading it has no
//! side effects. What the node reconciles — the config with its allocated identity, its epochs
//! from the state directory and the peers learned from node records — is a [`crate::view::View`],
//! assembled by [`crate::inputs`].
//!
//! Everything is checked here, before anything touches the kernel: a config that parses into a
//! [`Config`] is complete and consistent, so a later step never fails halfway through an apply
//! because of bad input. Every problem is reported at once, each naming its field path, e.g.
//! `peers[1].pod_cidrs[0]: 10.244.1.0/24 overlaps node.pod_cidr 10.244.1.0/24`.
//! docs/examples/xsteer.toml documents every field.

use std::{
    collections::HashMap,
    fmt, fs, io,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::Deserialize;

use crate::{
    cidr::{Ipv4Cidr, Ipv6Cidr},
    dataplane::links::IngressHook,
    keys::Epoch,
};
use xsteer_common::spi::PER_CPU_SAS_MAX;

/// The UDP port of ESP in UDP when the config names none (RFC 3948's).
pub const DEFAULT_ENCAP_PORT: u16 = 4500;

/// The policy-routing table used when the config names none.
pub const DEFAULT_ROUTE_TABLE: u32 = 200;

/// Most problems listed in one error; the rest are counted.
const MAX_LISTED_PROBLEMS: usize = 20;

/// A validated config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Path of the key file. A relative path in a file read by [`Config::from_path`] is resolved
    /// against that file's directory.
    pub key_file: PathBuf,
    /// The routing table for the routes of remote pod CIDRs (not 0, 253, 254 or 255).
    pub route_table: u32,
    /// This node.
    pub node: NodeConfig,
    /// The other nodes given in the file, in file order.
    pub peers: Vec<PeerConfig>,
    /// Where the agent publishes this node's record and learns further peers from.
    pub node_records: NodeRecords,
    /// The cluster's pod address space: one or more CIDRs that hold every pod of the cluster.
    /// The guards drop anything to or from it that is not ESP, whatever the current peers; with
    /// `nodes_dir`, a node whose config leaves out `node.id` and `node.pod_cidr` is given free
    /// ones from the first, in /24s; with Kubernetes, node IDs are counted in the first.
    pub cluster_cidrs: Vec<Ipv4Cidr>,
    /// The cluster's IPv6 pod address space (`cluster_cidr_v6`), in a dual-stack cluster: the
    /// guards drop IPv6 to and from it that is not ESP. Empty: IPv6 is not pod traffic here.
    pub cluster_cidrs_v6: Vec<Ipv6Cidr>,
}

/// Where node records come from: the `node_source` and `nodes_dir` keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeRecords {
    /// None: the config's peers are all there is.
    None,
    /// A directory of record files (`nodes_dir`, the `dir` source). A relative path in a file
    /// read by [`Config::from_path`] is resolved against that file's directory.
    Dir(PathBuf),
    /// The cluster's Node objects (`node_source = "kubernetes"`): a record is an annotation on
    /// its Node, and this node's ID and pod CIDR come from its own Node.
    Kubernetes,
}

impl Config {
    /// The directory of node records, with the `dir` source.
    pub fn nodes_dir(&self) -> Option<&Path> {
        match &self.node_records {
            NodeRecords::Dir(dir) => Some(dir),
            NodeRecords::None | NodeRecords::Kubernetes => None,
        }
    }
}

/// The node xsteer runs on, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// Node name, e.g. the Kubernetes node name.
    pub name: String,
    /// The IP the node's ESP tunnels start and end at: IPv4, or IPv6 on IPv6-only nodes.
    pub ip: IpAddr,
    /// Node ID, 1..=65535; it goes into bits 16–31 of the skb mark. `None`: allocated from
    /// the cluster CIDR in `nodes_dir` together with the pod CIDR, or, with Kubernetes, taken
    /// from this node's Node object.
    pub id: Option<u16>,
    /// The interface that carries the tunnels.
    pub uplink: String,
    /// The CIDR of this node's pods; `None` when allocated (see `id`).
    pub pod_cidr: Option<Ipv4Cidr>,
    /// The IPv6 CIDR of this node's pods, in a dual-stack cluster.
    pub pod_cidr_v6: Option<Ipv6Cidr>,
    /// The epoch the node starts from, an input of every SA key it shares. Optional when peers
    /// learn it from this node's record (`nodes_dir`, `node_source = "kubernetes"`): the agent
    /// then draws one at its first start and keeps it in its state directory.
    pub epoch: Option<Epoch>,
    /// Whether the node sends on one SA per CPU (`per_cpu_sas = true`), so that ESP to a peer
    /// is encrypted on every core rather than one; each is announced in the node's record.
    pub per_cpu_sas: bool,
    /// Where the ingress guard runs on the uplink (`ingress_hook = "xdp"` or `"tc"`); `None`
    /// (`"auto"`, the default): tc on a veth, XDP otherwise. Read at the agent's start.
    pub ingress_hook: Option<IngressHook>,
    /// ESP in UDP (`encap = "udp"`, in `[node]` or for the whole file): the port this node
    /// receives it on (`encap_port`) and where peers send it (`public`); `None` for plain ESP.
    pub encap: Option<LocalEncap>,
}

impl NodeConfig {
    /// The node ID and pod CIDR the file gives, if it gives both.
    pub fn identity(&self) -> Option<(u16, Ipv4Cidr)> {
        Some((self.id?, self.pod_cidr?))
    }
}

/// How a node with `encap = "udp"` takes part in ESP in UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalEncap {
    /// The UDP port its ingress guard decapsulates and its outbound SAs send from.
    pub port: u16,
    /// Where its peers send to: its NAT's address and port when it sits behind one (it is
    /// advertised in its record as `esp_in_udp`), else its node IP and `port`.
    pub public: SocketAddr,
}

impl LocalEncap {
    /// Whether the node sits behind a NAT: peers send to another address or port than its
    /// own. Only such a node sends NAT keepalives (RFC 3948, section 2.3): they keep its NAT's
    /// mapping open, and a peer's keepalives towards a NAT that has no mapping yet could only
    /// make the NAT's state worse.
    pub fn behind_nat(&self, node_ip: IpAddr) -> bool {
        self.public != SocketAddr::new(node_ip, self.port)
    }
}

/// Another node that pod traffic is encrypted to and from, given in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    /// Node name; unique in the config.
    pub name: String,
    /// The peer's tunnel endpoint IP, of the same family as this node's.
    pub ip: IpAddr,
    /// The peer's node ID, 1..=65535.
    pub id: u16,
    /// The CIDRs of the peer's pods; at least one.
    pub pod_cidrs: Vec<Ipv4Cidr>,
    /// The IPv6 CIDRs of the peer's pods (given in `pod_cidrs` too), in a dual-stack cluster.
    pub pod_cidrs_v6: Vec<Ipv6Cidr>,
    /// The peer's epoch.
    pub epoch: Epoch,
    /// How many per-CPU SAs the peer sends on besides its shared one, 0..=63: this node
    /// installs an IN SA for each.
    pub per_cpu_sas: u8,
    /// Where the peer receives ESP in UDP (`encap = "udp"`, `public`), if it does.
    pub esp_in_udp: Option<SocketAddr>,
    /// Whether the peer's SAs take ESN (`esn`, default true): false for a peer whose kernel,
    /// or whose hand-built SAs, have 32-bit sequence numbers.
    pub esn: bool,
}

/// One thing wrong with a config, at one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where, e.g. `peers[1].pod_cidrs[0]`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a config was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {error}", path.display())]
    Io {
        /// The path given.
        path: PathBuf,
        /// What the OS said.
        error: io::Error,
    },
    /// The text is not valid TOML, or does not fit the schema (unknown field, wrong type, a
    /// missing field); the message has the line and column.
    #[error("{}{error}", in_file(path))]
    Toml {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// The toml crate's error.
        error: toml::de::Error,
    },
    /// Values are out of range or inconsistent; every problem found is listed.
    #[error("{}{}", in_file(path), list_problems(problems))]
    Invalid {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// The problems, in file order of the field they name.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The validation problems, if that is what this error is.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }

    fn with_path(self, file: &Path) -> ConfigError {
        let path = Some(file.to_owned());
        match self {
            ConfigError::Toml { error, .. } => ConfigError::Toml { path, error },
            ConfigError::Invalid { problems, .. } => ConfigError::Invalid { path, problems },
            io @ ConfigError::Io { .. } => io,
        }
    }
}

fn in_file(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!("{}: ", p.display()))
        .unwrap_or_default()
}

fn list_problems(problems: &[Problem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => {
            let mut out = format!("{} problems:", many.len());
            for problem in many.iter().take(MAX_LISTED_PROBLEMS) {
                out.push_str(&format!("\n  {problem}"));
            }
            if many.len() > MAX_LISTED_PROBLEMS {
                out.push_str(&format!(
                    "\n  ... and {} more",
                    many.len() - MAX_LISTED_PROBLEMS
                ));
            }
            out
        }
    }
}

impl Config {
    /// Reads and validates the config at `path`, with `${VAR}` values taken from the process's
    /// environment; a relative `key_file` or `nodes_dir` is resolved against the directory of
    /// `path`. Writes nothing.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = fs::read_to_string(path).map_err(|error| ConfigError::Io {
            path: path.to_owned(),
            error,
        })?;
        let raw: RawConfig = toml::from_str(&text).map_err(|error| ConfigError::Toml {
            path: Some(path.to_owned()),
            error,
        })?;
        let mut config = raw
            .into_config(&process_env)
            .map_err(|e| e.with_path(path))?;
        if let Some(dir) = path.parent() {
            if config.key_file.is_relative() {
                config.key_file = dir.join(&config.key_file);
            }
            if let NodeRecords::Dir(nodes) = &mut config.node_records
                && nodes.is_relative()
            {
                *nodes = dir.join(&*nodes);
            }
        }
        Ok(config)
    }

    /// Checks every rule a config must satisfy: the per-field ones (IDs, route table, uplink
    /// name, names, at least one pod CIDR per peer) and the ones across nodes (no duplicate
    /// node ID, IP or name; no overlapping pod CIDRs; no node IP inside a pod CIDR). Parsing
    /// already calls it; call it again after building or changing a `Config` in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                path: None,
                problems,
            })
        }
    }

    fn problems(&self) -> Vec<Problem> {
        let mut p = Problems::default();
        if self.key_file.as_os_str().is_empty() {
            p.push("key_file", "must not be empty");
        }
        if self.nodes_dir().is_some_and(|d| d.as_os_str().is_empty()) {
            p.push("nodes_dir", "must not be empty");
        }
        if let Some(why) = route_table_problem(self.route_table) {
            p.push("route_table", why);
        }

        let node = &self.node;
        check_name(&mut p, "node.name", &node.name);
        check_ip(&mut p, "node.ip", node.ip);
        if self.node_records == NodeRecords::Kubernetes {
            // The Node object is the one truth about the pod CIDR; a second one could disagree.
            const FROM_NODE: &str = "comes from this node's Node object with node_source = \
                 \"kubernetes\" (spec.podCIDRs, and the ID from it): leave it out";
            if node.id.is_some() {
                p.push("node.id", FROM_NODE);
            }
            if node.pod_cidr.is_some() {
                p.push("node.pod_cidr", FROM_NODE);
            }
            if node.pod_cidr_v6.is_some() {
                p.push("node.pod_cidr_v6", FROM_NODE);
            }
        } else {
            // Both given, or both left out to be allocated (which needs somewhere to allocate
            // in).
            const LEFT_OUT: &str = "missing: give it, or leave out both node.id and \
                 node.pod_cidr with nodes_dir and cluster_cidr set to have them allocated";
            let allocatable = self.nodes_dir().is_some() && !self.cluster_cidrs.is_empty();
            match (node.id, node.pod_cidr) {
                (Some(id), _) => check_id(&mut p, "node.id", id),
                (None, Some(_)) => p.push("node.id", LEFT_OUT),
                (None, None) if !allocatable => p.push("node.id", LEFT_OUT),
                (None, None) => {}
            }
            if node.pod_cidr.is_none() && (node.id.is_some() || !allocatable) {
                p.push("node.pod_cidr", LEFT_OUT);
            }
        }
        if node.epoch.is_none() && self.node_records == NodeRecords::None {
            p.push(
                "node.epoch",
                "missing: peers whose config lists this node need its epoch (32 hex digits); it \
                 may be left out only with nodes_dir or node_source = \"kubernetes\", where peers \
                 read it from this node's record",
            );
        }
        if let Some(why) = uplink_problem(&node.uplink) {
            p.push("node.uplink", why);
        }
        if let Some(encap) = node.encap {
            if node.ip.is_ipv6() {
                p.push(
                    "node.encap",
                    "\"udp\" is for IPv4 node IPs: the ingress guard takes ESP in UDP apart over \
                     IPv4 only",
                );
            }
            if encap.public.is_ipv4() != node.ip.is_ipv4() {
                p.push(
                    "node.public",
                    format!("{} is not of node.ip {}'s family", encap.public, node.ip),
                );
            }
            if node.ingress_hook == Some(IngressHook::Xdp) {
                p.push(
                    "node.ingress_hook",
                    "\"xdp\" cannot take ESP in UDP apart (encap = \"udp\"): leave it out or \
                     set \"tc\"",
                );
            }
        }
        for (i, peer) in self.peers.iter().enumerate() {
            check_name(&mut p, &format!("peers[{i}].name"), &peer.name);
            check_ip(&mut p, &format!("peers[{i}].ip"), peer.ip);
            if peer.ip.is_ipv4() != node.ip.is_ipv4() {
                p.push(
                    format!("peers[{i}].ip"),
                    format!(
                        "{} is not of node.ip {}'s family: tunnels join node IPs of one family",
                        peer.ip, node.ip
                    ),
                );
            }
            if let Some(public) = peer.esp_in_udp.filter(|a| a.is_ipv4() != node.ip.is_ipv4()) {
                p.push(
                    format!("peers[{i}].public"),
                    format!("{public} is not of node.ip {}'s family", node.ip),
                );
            }
            check_id(&mut p, &format!("peers[{i}].id"), peer.id);
            if peer.pod_cidrs.is_empty() {
                p.push(
                    format!("peers[{i}].pod_cidrs"),
                    "must list at least one IPv4 CIDR",
                );
            }
        }

        // Uniqueness across the node and all peers; the later one is reported.
        let mut names: HashMap<&str, String> = HashMap::new();
        let mut ids: HashMap<u16, String> = HashMap::new();
        let mut ips: HashMap<IpAddr, String> = HashMap::new();
        let nodes = std::iter::once(("node".to_owned(), &node.name, node.id, node.ip)).chain(
            self.peers
                .iter()
                .enumerate()
                .map(|(i, peer)| (format!("peers[{i}]"), &peer.name, Some(peer.id), peer.ip)),
        );
        for (at, name, id, ip) in nodes {
            if let Some(first) = names.get(name.as_str()) {
                p.push(
                    format!("{at}.name"),
                    format!("{name:?} duplicates {first}.name"),
                );
            } else {
                names.insert(name, at.clone());
            }
            if let Some(id) = id {
                if let Some(first) = ids.get(&id) {
                    p.push(format!("{at}.id"), format!("{id} duplicates {first}.id"));
                } else {
                    ids.insert(id, at.clone());
                }
            }
            if let Some(first) = ips.get(&ip) {
                p.push(format!("{at}.ip"), format!("{ip} duplicates {first}.ip"));
            } else {
                ips.insert(ip, at);
            }
        }

        // Pod CIDRs: no two overlap, wherever they are.
        let cidrs: Vec<(String, Ipv4Cidr)> = node
            .pod_cidr
            .map(|c| ("node.pod_cidr".to_owned(), c))
            .into_iter()
            .chain(self.peers.iter().enumerate().flat_map(|(i, peer)| {
                peer.pod_cidrs
                    .iter()
                    .enumerate()
                    .map(move |(j, c)| (format!("peers[{i}].pod_cidrs[{j}]"), *c))
            }))
            .collect();
        for (k, (at, cidr)) in cidrs.iter().enumerate() {
            for (first_at, first) in &cidrs[..k] {
                if cidr.overlaps(first) {
                    p.push(at.clone(), format!("{cidr} overlaps {first_at} {first}"));
                }
            }
        }

        // Node IPs are outside every pod CIDR: tunnel traffic must never look like pod traffic.
        for (at, ip) in self.node_ips() {
            let IpAddr::V4(ip) = ip else { continue };
            for (cidr_at, cidr) in &cidrs {
                if cidr.contains(ip) {
                    p.push(at.clone(), format!("{ip} is inside {cidr_at} {cidr}"));
                }
            }
        }
        self.cluster_problems(&mut p, &cidrs);
        self.v6_problems(&mut p);
        p.0
    }

    /// Every node IP of the file with where it is: `node.ip`, then `peers[i].ip`.
    fn node_ips(&self) -> impl Iterator<Item = (String, IpAddr)> + '_ {
        std::iter::once(("node.ip".to_owned(), self.node.ip)).chain(
            self.peers
                .iter()
                .enumerate()
                .map(|(i, peer)| (format!("peers[{i}].ip"), peer.ip)),
        )
    }

    /// IPv6 pod CIDRs: no two overlap, and all are inside `cluster_cidr_v6`, which must then be
    /// given.
    fn v6_problems(&self, p: &mut Problems) {
        let cidrs: Vec<(String, Ipv6Cidr)> = self
            .node
            .pod_cidr_v6
            .map(|c| ("node.pod_cidr_v6".to_owned(), c))
            .into_iter()
            .chain(self.peers.iter().enumerate().flat_map(|(i, peer)| {
                peer.pod_cidrs_v6
                    .iter()
                    .map(move |c| (format!("peers[{i}].pod_cidrs"), *c))
            }))
            .collect();
        for (k, (at, cidr)) in cidrs.iter().enumerate() {
            for (first_at, first) in &cidrs[..k] {
                if cidr.overlaps(first) {
                    p.push(at.clone(), format!("{cidr} overlaps {first_at} {first}"));
                }
            }
        }
        // IPv6 node IPs are outside every IPv6 pod CIDR and the IPv6 pod space.
        for (at, ip) in self.node_ips() {
            let IpAddr::V6(ip) = ip else { continue };
            let inside = (cidrs.iter().map(|(a, c)| (a.as_str(), c)))
                .chain(self.cluster_cidrs_v6.iter().map(|c| ("cluster_cidr_v6", c)));
            for (cidr_at, cidr) in inside {
                if cidr.contains(ip) {
                    p.push(at.clone(), format!("{ip} is inside {cidr_at} {cidr}"));
                }
            }
        }
        let clusters = &self.cluster_cidrs_v6;
        if clusters.is_empty() {
            if let Some((at, cidr)) = cidrs.first() {
                p.push(
                    "cluster_cidr_v6",
                    format!(
                        "missing: {at} gives IPv6 pod CIDR {cidr}; give the IPv6 CIDR, or list, \
                         that holds every IPv6 pod of the cluster (e.g. \"fd00:10:244::/48\")"
                    ),
                );
            }
            return;
        }
        for (k, cluster) in clusters.iter().enumerate() {
            if let Some(first) = clusters[..k].iter().find(|c| c.overlaps(cluster)) {
                p.push(
                    format!("cluster_cidr_v6[{k}]"),
                    format!("{cluster} overlaps {first}"),
                );
            }
        }
        for (at, cidr) in &cidrs {
            if !clusters.iter().any(|c| c.covers(cidr)) {
                let shown: Vec<String> = clusters.iter().map(Ipv6Cidr::to_string).collect();
                p.push(
                    at.clone(),
                    format!("{cidr} is not inside cluster_cidr_v6 {}", shown.join(", ")),
                );
            }
        }
    }

    /// The cluster's pod space: there is one, its CIDRs do not overlap, every pod CIDR is
    /// inside it and every node IP outside (a tunnel endpoint inside it would be dropped by the
    /// guards as pod traffic).
    fn cluster_problems(&self, p: &mut Problems, pod_cidrs: &[(String, Ipv4Cidr)]) {
        let clusters = &self.cluster_cidrs;
        if clusters.is_empty() {
            p.push(
                "cluster_cidr",
                "missing: give the CIDR, or list of CIDRs, that holds every pod of the cluster \
                 (e.g. \"10.244.0.0/16\"): the guards drop pod traffic to and from it that is \
                 not encrypted",
            );
            return;
        }
        let shown = clusters
            .iter()
            .map(Ipv4Cidr::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        for (k, cluster) in clusters.iter().enumerate() {
            if let Some(first) = clusters[..k].iter().find(|c| c.overlaps(cluster)) {
                p.push(
                    format!("cluster_cidr[{k}]"),
                    format!("{cluster} overlaps {first}"),
                );
            }
        }
        for (at, cidr) in pod_cidrs {
            if !clusters.iter().any(|c| c.covers(cidr)) {
                p.push(
                    at.clone(),
                    format!("{cidr} is not inside cluster_cidr {shown}"),
                );
            }
        }
        for (at, ip) in self.node_ips() {
            let IpAddr::V4(ip) = ip else { continue };
            if let Some(cluster) = clusters.iter().find(|c| c.contains(ip)) {
                p.push(
                    at,
                    format!("{ip} is inside cluster_cidr {cluster}, the pods' address space"),
                );
            }
        }
    }
}

impl FromStr for Config {
    type Err = ConfigError;

    /// Parses and validates config text, with `${VAR}` values taken from the process's
    /// environment; `key_file` is taken as it is.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Config::parse_with_env(text, &process_env)
    }
}

/// Looks an environment variable up: its value, if it has one.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process's environment; a value that is not UTF-8 counts as none.
fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Config {
    /// Parses and validates config text, looking `${VAR}` values up in `env` rather than in
    /// the process's environment: for a test of a config meant for another environment.
    pub fn parse_with_env(text: &str, env: Env) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|error| ConfigError::Toml { path: None, error })?;
        raw.into_config(env)
    }
}

/// `text`, or, when it is `${VAR}` as a whole, the value of environment variable `VAR`: nothing
/// else is expanded, so a value never changes meaning by accident. A variable that is unset or
/// empty is a problem at `path`.
fn expand(p: &mut Problems, path: &str, text: &str, env: Env) -> Option<String> {
    let Some(var) = text.strip_prefix("${").and_then(|t| t.strip_suffix('}')) else {
        return Some(text.to_owned());
    };
    let name_ok = var.chars().next().is_some_and(|c| !c.is_ascii_digit())
        && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !name_ok {
        p.push(
            path,
            format!(
                "{text:?}: {var:?} is not an environment variable name (letters, digits and \
                 '_', not starting with a digit)"
            ),
        );
        return None;
    }
    match env(var) {
        Some(value) if !value.is_empty() => Some(value),
        _ => {
            p.push(
                path,
                format!("{text}: the environment variable {var} is not set, or empty"),
            );
            None
        }
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Parses `text` as a `T`, recording the problem under `path` if it does not parse.
    fn parse<T>(&mut self, path: impl Into<String>, text: &str) -> Option<T>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        text.parse()
            .map_err(|e| self.push(path, format!("{e}")))
            .ok()
    }

    /// Parses a key that takes one CIDR or a list, recording each that does not parse under
    /// `key` or `key[i]`.
    fn parse_list<T>(&mut self, key: &str, value: Option<&OneOrMany>) -> Vec<T>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match value {
            None => Vec::new(),
            Some(OneOrMany::One(c)) => self.parse(key, c).into_iter().collect(),
            Some(OneOrMany::Many(list)) => list
                .iter()
                .enumerate()
                .filter_map(|(i, c)| self.parse(format!("{key}[{i}]"), c))
                .collect(),
        }
    }

    fn id(&mut self, path: impl Into<String>, id: i64) -> Option<u16> {
        match u16::try_from(id) {
            Ok(id) if id != 0 => Some(id),
            _ => {
                self.push(path, format!("must be 1..=65535, found {id}"));
                None
            }
        }
    }
}

fn check_name(p: &mut Problems, path: &str, name: &str) {
    if let Some(why) = node_name_problem(name) {
        p.push(path, why);
    }
}

/// Why `name` cannot be a node name, if it cannot. Node names are Kubernetes node names: DNS-1123
/// subdomains (lowercase letters, digits, '-' and '.', at most 253 bytes, labels of at most 63
/// that start and end with a letter or digit). They name files and log lines, so nothing else
/// is accepted.
pub fn node_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > 253 {
        return Some(format!("must be at most 253 bytes, found {}", name.len()));
    }
    let label_ok = |label: &str| {
        let edge =
            |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        !label.is_empty()
            && label.len() <= 63
            && edge(label.chars().next())
            && edge(label.chars().last())
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if name.split('.').all(label_ok) {
        None
    } else {
        Some(format!(
            "{name:?} is not a DNS-1123 name: lowercase letters, digits, '-' and '.', each \
             dot-separated part 1..=63 long and starting and ending with a letter or digit"
        ))
    }
}

fn check_ip(p: &mut Problems, path: &str, ip: IpAddr) {
    let link_local = match ip {
        IpAddr::V4(a) => a.is_broadcast(),
        // A link-local address names no node beyond the link, and needs a zone.
        IpAddr::V6(a) => a.is_unicast_link_local(),
    };
    if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() || link_local {
        p.push(
            path,
            format!("{ip} is not a unicast address a tunnel can use"),
        );
    }
}

fn check_id(p: &mut Problems, path: &str, id: u16) {
    if id == 0 {
        p.push(path, "must be 1..=65535, found 0");
    }
}

fn route_table_problem(table: u32) -> Option<String> {
    let reserved = match table {
        0 => "0 is not a table (RT_TABLE_UNSPEC)",
        253 => "253 is the kernel's default table",
        254 => "254 is the kernel's main table",
        255 => "255 is the kernel's local table",
        _ => return None,
    };
    Some(format!(
        "{reserved}; use another one (1..=4294967295 except 253, 254, 255)"
    ))
}

/// Why `name` is not a Linux interface name, if it is not.
fn uplink_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 15 {
        return Some(format!(
            "an interface name is 1..=15 bytes, found {}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Some(format!("{name:?} is not an interface name"));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Some(format!(
            "{name:?} is not an interface name: it must not contain '/', ':', whitespace or \
             control characters"
        ));
    }
    None
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    key_file: PathBuf,
    route_table: Option<i64>,
    node_source: Option<RawSource>,
    nodes_dir: Option<PathBuf>,
    cluster_cidr: Option<OneOrMany>,
    cluster_cidr_v6: Option<OneOrMany>,
    encap: Option<String>,
    node: RawNode,
    #[serde(default)]
    peers: Vec<RawPeer>,
}

/// The `node_source` values.
#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawSource {
    Dir,
    Kubernetes,
}

/// A CIDR, or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    ip: String,
    id: Option<i64>,
    uplink: String,
    pod_cidr: Option<String>,
    pod_cidr_v6: Option<String>,
    epoch: Option<String>,
    #[serde(default)]
    per_cpu_sas: bool,
    ingress_hook: Option<String>,
    encap: Option<String>,
    encap_port: Option<i64>,
    public: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: String,
    ip: String,
    id: i64,
    pod_cidrs: Vec<String>,
    epoch: String,
    per_cpu_sas: Option<i64>,
    encap: Option<String>,
    public: Option<String>,
    #[serde(default = "yes")]
    esn: bool,
}

fn yes() -> bool {
    true
}

/// Whether `encap` (at `path`) asks for ESP in UDP: "esp" (plain ESP) or "udp"; `None` when
/// it is neither, after saying so.
fn parse_encap(p: &mut Problems, path: &str, encap: Option<&str>, default: bool) -> Option<bool> {
    match encap {
        None => Some(default),
        Some("esp") => Some(false),
        Some("udp") => Some(true),
        Some(other) => {
            p.push(path, format!("{other:?} is not \"esp\" or \"udp\""));
            None
        }
    }
}

/// Where a node receives ESP in UDP, from `public` at `path`: an address with or without a
/// port (`"203.0.113.7:4501"`, `"[2001:db8::7]:4501"`, `"203.0.113.7"`), `port` when none is
/// given.
fn parse_public(p: &mut Problems, path: &str, text: &str, port: u16) -> Option<SocketAddr> {
    let addr = match (text.parse::<SocketAddr>(), text.parse::<IpAddr>()) {
        (Ok(addr), _) => addr,
        (_, Ok(ip)) => SocketAddr::new(ip, port),
        _ => {
            p.push(
                path,
                format!("{text:?} is not an address or address:port (IPv6 as [address]:port)"),
            );
            return None;
        }
    };
    if addr.port() == 0 {
        p.push(path, format!("{text:?}: port 0 cannot be sent to"));
        return None;
    }
    Some(addr)
}

fn parse_ip(p: &mut Problems, path: &str, text: &str) -> Option<IpAddr> {
    text.parse()
        .map_err(|_| p.push(path, format!("{text:?} is not an IP address")))
        .ok()
}

impl RawConfig {
    /// Converts, with `${VAR}` values looked up in `env`, and validates.
    fn into_config(self, env: Env) -> Result<Config, ConfigError> {
        let config = self.convert(env).map_err(|problems| ConfigError::Invalid {
            path: None,
            problems,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Turns strings and wide integers into typed values; the rules across fields come after,
    /// in [`Config::validate`].
    fn convert(self, env: Env) -> Result<Config, Vec<Problem>> {
        let mut p = Problems::default();
        let node_records = match (self.node_source, self.nodes_dir) {
            (None | Some(RawSource::Dir), Some(dir)) => Some(NodeRecords::Dir(dir)),
            (None, None) => Some(NodeRecords::None),
            (Some(RawSource::Dir), None) => {
                p.push(
                    "nodes_dir",
                    "missing: node_source = \"dir\" reads node records from it",
                );
                None
            }
            (Some(RawSource::Kubernetes), None) => Some(NodeRecords::Kubernetes),
            (Some(RawSource::Kubernetes), Some(_)) => {
                p.push(
                    "nodes_dir",
                    "not used with node_source = \"kubernetes\" (records are annotations on \
                     Node objects): leave it out",
                );
                None
            }
        };
        let route_table = match self.route_table {
            None => Some(DEFAULT_ROUTE_TABLE),
            Some(t) => u32::try_from(t)
                .map_err(|_| {
                    p.push(
                        "route_table",
                        format!("must be 1..=4294967295 except 253, 254, 255, found {t}"),
                    )
                })
                .ok(),
        };
        let cluster_cidrs: Vec<Ipv4Cidr> = p.parse_list("cluster_cidr", self.cluster_cidr.as_ref());
        let cluster_cidrs_v6: Vec<Ipv6Cidr> =
            p.parse_list("cluster_cidr_v6", self.cluster_cidr_v6.as_ref());
        let n = self.node;
        // Every field is parsed, so that all problems are reported, before any is combined.
        let name = expand(&mut p, "node.name", &n.name, env);
        let ip =
            expand(&mut p, "node.ip", &n.ip, env).and_then(|ip| parse_ip(&mut p, "node.ip", &ip));
        // A field left out is reported by `Config::validate`, which knows whether it may be.
        let id = n.id.map(|id| p.id("node.id", id).ok_or(()));
        let pod_cidr = n
            .pod_cidr
            .as_deref()
            .map(|cidr| p.parse("node.pod_cidr", cidr).ok_or(()));
        let pod_cidr_v6 = n
            .pod_cidr_v6
            .as_deref()
            .map(|cidr| p.parse("node.pod_cidr_v6", cidr).ok_or(()));
        let epoch = n
            .epoch
            .as_deref()
            .map(|epoch| p.parse("node.epoch", epoch).ok_or(()));
        let cluster_udp = parse_encap(&mut p, "encap", self.encap.as_deref(), false);
        let encap = node_encap(&mut p, &n, ip, cluster_udp);
        let ingress_hook = match n.ingress_hook.as_deref() {
            None | Some("auto") => Ok(None),
            Some(hook) => match hook.parse() {
                Ok(hook) => Ok(Some(hook)),
                Err(e) => {
                    p.push("node.ingress_hook", e);
                    Err(())
                }
            },
        };
        let node = match (
            name,
            ip,
            id.transpose(),
            pod_cidr.transpose(),
            pod_cidr_v6.transpose(),
            epoch.transpose(),
            ingress_hook,
            encap,
        ) {
            (
                Some(name),
                Some(ip),
                Ok(id),
                Ok(pod_cidr),
                Ok(pod_cidr_v6),
                Ok(epoch),
                Ok(ingress_hook),
                Ok(encap),
            ) => Some(NodeConfig {
                name,
                ip,
                id,
                uplink: n.uplink,
                pod_cidr,
                pod_cidr_v6,
                epoch,
                per_cpu_sas: n.per_cpu_sas,
                ingress_hook,
                encap,
            }),
            _ => None,
        };
        let mut peers = Vec::with_capacity(self.peers.len());
        for (i, peer) in self.peers.into_iter().enumerate() {
            let ip = parse_ip(&mut p, &format!("peers[{i}].ip"), &peer.ip);
            let id = p.id(format!("peers[{i}].id"), peer.id);
            // Both families in one list, as Kubernetes lists a node's podCIDRs.
            let (v6, v4): (Vec<_>, Vec<_>) = peer
                .pod_cidrs
                .iter()
                .enumerate()
                .partition(|(_, c)| c.contains(':'));
            let cidrs: Vec<Option<Ipv4Cidr>> = v4
                .into_iter()
                .map(|(j, c)| p.parse(format!("peers[{i}].pod_cidrs[{j}]"), c))
                .collect();
            let cidrs_v6: Vec<Option<Ipv6Cidr>> = v6
                .into_iter()
                .map(|(j, c)| p.parse(format!("peers[{i}].pod_cidrs[{j}]"), c))
                .collect();
            let epoch = p.parse(format!("peers[{i}].epoch"), &peer.epoch);
            let per_cpu_sas = match peer.per_cpu_sas.unwrap_or(0) {
                n if (0..=i64::from(PER_CPU_SAS_MAX)).contains(&n) => Some(n as u8),
                n => {
                    p.push(
                        format!("peers[{i}].per_cpu_sas"),
                        format!(
                            "must be 0..={PER_CPU_SAS_MAX} (the per-CPU SAs the peer sends on), \
                             found {n}"
                        ),
                    );
                    None
                }
            };
            let esp_in_udp = peer_esp_in_udp(&mut p, i, &peer, ip, cluster_udp);
            if let (
                Some(ip),
                Some(id),
                Some(pod_cidrs),
                Some(pod_cidrs_v6),
                Some(epoch),
                Some(per_cpu_sas),
                Some(esp_in_udp),
            ) = (
                ip,
                id,
                cidrs.into_iter().collect(),
                cidrs_v6.into_iter().collect(),
                epoch,
                per_cpu_sas,
                esp_in_udp,
            ) {
                peers.push(PeerConfig {
                    name: peer.name,
                    ip,
                    id,
                    pod_cidrs,
                    pod_cidrs_v6,
                    epoch,
                    per_cpu_sas,
                    esp_in_udp,
                    esn: peer.esn,
                });
            }
        }
        match (route_table, node, node_records) {
            (Some(route_table), Some(node), Some(node_records)) if p.0.is_empty() => Ok(Config {
                key_file: self.key_file,
                route_table,
                node,
                peers,
                node_records,
                cluster_cidrs,
                cluster_cidrs_v6,
            }),
            _ => Err(p.0),
        }
    }
}

/// `[node]`'s ESP in UDP: `Ok(None)` for plain ESP, `Err(())` after a problem was pushed.
/// `cluster_udp` is the file-wide `encap` (`None`: it was wrong).
fn node_encap(
    p: &mut Problems,
    n: &RawNode,
    ip: Option<IpAddr>,
    cluster_udp: Option<bool>,
) -> Result<Option<LocalEncap>, ()> {
    let udp = parse_encap(
        p,
        "node.encap",
        n.encap.as_deref(),
        cluster_udp.unwrap_or(false),
    );
    let port = match n.encap_port {
        None => Some(DEFAULT_ENCAP_PORT),
        Some(port) => u16::try_from(port)
            .ok()
            .filter(|&port| port != 0)
            .or_else(|| {
                p.push(
                    "node.encap_port",
                    format!("must be 1..=65535, found {port}"),
                );
                None
            }),
    };
    let (Some(udp), Some(port), Some(ip), Some(_)) = (udp, port, ip, cluster_udp) else {
        return Err(());
    };
    if !udp {
        for (field, given) in [
            ("node.encap_port", n.encap_port.is_some()),
            ("node.public", n.public.is_some()),
        ] {
            if given {
                p.push(field, "only with encap = \"udp\"");
            }
        }
        return if n.encap_port.is_some() || n.public.is_some() {
            Err(())
        } else {
            Ok(None)
        };
    }
    let public = match n.public.as_deref() {
        None => SocketAddr::new(ip, port),
        Some(text) => parse_public(p, "node.public", text, port).ok_or(())?,
    };
    Ok(Some(LocalEncap { port, public }))
}

/// Where `peers[i]` receives ESP in UDP: `Some(None)` for plain ESP, `None` after a
/// problem was pushed.
fn peer_esp_in_udp(
    p: &mut Problems,
    i: usize,
    peer: &RawPeer,
    ip: Option<IpAddr>,
    cluster_udp: Option<bool>,
) -> Option<Option<SocketAddr>> {
    let path = format!("peers[{i}].encap");
    let udp = parse_encap(
        p,
        &path,
        peer.encap.as_deref(),
        cluster_udp.unwrap_or(false),
    )?;
    let public_path = format!("peers[{i}].public");
    match (udp, peer.public.as_deref()) {
        (false, None) => Some(None),
        (false, Some(_)) => {
            p.push(public_path, "only with encap = \"udp\"");
            None
        }
        (true, None) => Some(Some(SocketAddr::new(ip?, DEFAULT_ENCAP_PORT))),
        (true, Some(text)) => parse_public(p, &public_path, text, DEFAULT_ENCAP_PORT).map(Some),
    }
}

/// Configs for the unit tests of other modules.
#[cfg(test)]
pub(crate) mod fixtures {
    /// Node a (ID 1) with peer b (ID 2), each with a /24 of pods and a fixed epoch.
    pub const TWO_NODES: &str = r#"
key_file = "keys"
cluster_cidr = "10.244.0.0/16"
[node]
name = "a"
ip = "192.168.0.1"
id = 1
uplink = "eth0"
pod_cidr = "10.244.1.0/24"
epoch = "00112233445566778899aabbccddeeff"
[[peers]]
name = "b"
ip = "192.168.0.2"
id = 2
pod_cidrs = ["10.244.2.0/24"]
epoch = "ffeeddccbbaa99887766554433221100"
"#;

    /// A third node, c (ID 3), to append to [`TWO_NODES`].
    pub const PEER_C: &str = r#"
[[peers]]
name = "c"
ip = "192.168.0.3"
id = 3
pod_cidrs = ["10.244.3.0/24"]
epoch = "44eeddccbbaa99887766554433221100"
"#;
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        os::unix::fs::{OpenOptionsExt, PermissionsExt},
    };

    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::keys::{KeyFile, SaKey, SaKeyId};

    const BASE: &str = r#"
key_file = "/etc/xsteer/keys"
cluster_cidr = "10.244.0.0/16"
[node]
name = "node-a"
ip = "192.168.0.1"
id = 1
uplink = "eth0"
pod_cidr = "10.244.1.0/24"
epoch = "00112233445566778899aabbccddeeff"

[[peers]]
name = "node-b"
ip = "192.168.0.2"
id = 2
pod_cidrs = ["10.244.2.0/24"]
epoch = "ffeeddccbbaa99887766554433221100"
"#;

    const PEER_C: &str = r#"
[[peers]]
name = "node-c"
ip = "192.168.0.3"
id = 3
pod_cidrs = ["10.244.3.0/24"]
epoch = "0123456789abcdef0123456789abcdef"
"#;

    /// BASE and node-c, with `from` replaced by `to` (the first occurrence after `after`).
    fn edited(after: &str, from: &str, to: &str) -> String {
        let text = format!("{BASE}{PEER_C}");
        let start = text.find(after).expect("anchor present");
        let at = start + text[start..].find(from).expect("text present");
        format!("{}{to}{}", &text[..at], &text[at + from.len()..])
    }

    fn error(text: &str) -> String {
        text.parse::<Config>().unwrap_err().to_string()
    }

    #[test]
    fn parses_a_valid_config() {
        let config: Config = format!("{BASE}{PEER_C}").parse().unwrap();
        assert_eq!(config.key_file, PathBuf::from("/etc/xsteer/keys"));
        assert_eq!(config.route_table, DEFAULT_ROUTE_TABLE);
        assert_eq!(config.node.name, "node-a");
        assert_eq!(config.node.ip, IpAddr::from(Ipv4Addr::new(192, 168, 0, 1)));
        assert_eq!(config.node.id, Some(1));
        assert_eq!(config.node.uplink, "eth0");
        assert_eq!(config.node.pod_cidr.unwrap().to_string(), "10.244.1.0/24");
        assert_eq!(
            config.node.epoch.map(|e| e.to_string()).as_deref(),
            Some("00112233445566778899aabbccddeeff")
        );
        assert_eq!(config.peers.len(), 2);
        assert_eq!(config.peers[1].name, "node-c");
        assert_eq!(config.peers[1].id, 3);
        assert_eq!(config.peers[1].pod_cidrs[0].to_string(), "10.244.3.0/24");
        config.validate().unwrap();

        let table: Config = format!("route_table = 4294967295\n{BASE}").parse().unwrap();
        assert_eq!(table.route_table, u32::MAX);
        let alone: Config = BASE[..BASE.find("[[peers]]").unwrap()].parse().unwrap();
        assert!(alone.peers.is_empty());
    }

    #[test]
    fn toml_errors_keep_line_and_column() {
        let e = error(&edited("[node]", "id = 1", "id = ="));
        assert!(e.contains("line 7, column"), "{e}");
        let e = error(&edited("[node]", "uplink", "uplnk"));
        assert!(e.contains("unknown field `uplnk`"), "{e}");
        assert!(e.contains("line 8"), "{e}");
        let e = error(&edited("[node]", "id = 1", "id = \"1\""));
        assert!(e.contains("line 7"), "{e}");
        let e = error(&format!("{BASE}colour = \"blue\"\n"));
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = error(&edited(
            "[node]",
            "epoch = \"00112233445566778899aabbccddeeff\"\n",
            "",
        ));
        assert!(e.contains("node.epoch: missing"), "{e}");
    }

    #[test]
    fn rejects_overlapping_pod_cidrs() {
        assert_eq!(
            error(&edited("node-b", "10.244.2.0/24", "10.244.1.0/24")),
            "peers[0].pod_cidrs[0]: 10.244.1.0/24 overlaps node.pod_cidr 10.244.1.0/24"
        );
        assert_eq!(
            error(&edited("node-c", "10.244.3.0/24", "10.244.0.0/16")),
            "2 problems:\n  \
             peers[1].pod_cidrs[0]: 10.244.0.0/16 overlaps node.pod_cidr 10.244.1.0/24\n  \
             peers[1].pod_cidrs[0]: 10.244.0.0/16 overlaps peers[0].pod_cidrs[0] 10.244.2.0/24"
        );
        assert_eq!(
            error(&edited(
                "node-c",
                "[\"10.244.3.0/24\"]",
                "[\"10.244.3.0/24\", \"10.244.3.128/25\"]"
            )),
            "peers[1].pod_cidrs[1]: 10.244.3.128/25 overlaps peers[1].pod_cidrs[0] 10.244.3.0/24"
        );
    }

    #[test]
    fn rejects_duplicate_ids_ips_and_names() {
        assert_eq!(
            error(&edited("node-c", "id = 3", "id = 1")),
            "peers[1].id: 1 duplicates node.id"
        );
        assert_eq!(
            error(&edited("node-c", "id = 3", "id = 2")),
            "peers[1].id: 2 duplicates peers[0].id"
        );
        assert_eq!(
            error(&edited("node-c", "192.168.0.3", "192.168.0.1")),
            "peers[1].ip: 192.168.0.1 duplicates node.ip"
        );
        assert_eq!(
            error(&edited("node-c", "192.168.0.3", "192.168.0.2")),
            "peers[1].ip: 192.168.0.2 duplicates peers[0].ip"
        );
        assert_eq!(
            error(&format!("{BASE}{PEER_C}").replace("\"node-c\"", "\"node-b\"")),
            "peers[1].name: \"node-b\" duplicates peers[0].name"
        );
        assert_eq!(
            error(&format!("{BASE}{PEER_C}").replace("\"node-c\"", "\"node-a\"")),
            "peers[1].name: \"node-a\" duplicates node.name"
        );
    }

    #[test]
    fn rejects_node_ips_inside_pod_cidrs() {
        assert_eq!(
            error(&edited("node-b", "192.168.0.2", "10.244.3.7")),
            "2 problems:\n  \
             peers[0].ip: 10.244.3.7 is inside peers[1].pod_cidrs[0] 10.244.3.0/24\n  \
             peers[0].ip: 10.244.3.7 is inside cluster_cidr 10.244.0.0/16, the pods' address space"
        );
        assert_eq!(
            error(&edited("[node]", "192.168.0.1", "10.244.1.1")),
            "2 problems:\n  \
             node.ip: 10.244.1.1 is inside node.pod_cidr 10.244.1.0/24\n  \
             node.ip: 10.244.1.1 is inside cluster_cidr 10.244.0.0/16, the pods' address space"
        );
    }

    #[test]
    fn node_names_are_dns_names() {
        for good in ["a", "node-1", "ip-10-0-0-1.ec2.internal", &"a".repeat(63)] {
            assert_eq!(node_name_problem(good), None, "{good}");
        }
        for bad in [
            "Node-A",
            "node_a",
            "-a",
            "a-",
            "a..b",
            ".a",
            "zzz.json/..",
            &"a".repeat(64),
        ] {
            let why = node_name_problem(bad).expect(bad);
            assert!(why.contains("is not a DNS-1123 name"), "{bad}: {why}");
        }
        assert_eq!(
            error(&edited("[node]", "\"node-a\"", "\"Node A\"")),
            "node.name: \"Node A\" is not a DNS-1123 name: lowercase letters, digits, '-' and \
             '.', each dot-separated part 1..=63 long and starting and ending with a letter or \
             digit"
        );
    }

    #[test]
    fn the_cluster_holds_every_pod_cidr_and_no_node_ip() {
        let without = BASE.replace("cluster_cidr = \"10.244.0.0/16\"\n", "");
        let e = error(&without);
        assert!(
            e.starts_with("cluster_cidr: missing: give the CIDR, or list of CIDRs"),
            "{e}"
        );
        assert_eq!(
            error(&edited("node-c", "10.244.3.0/24", "10.9.3.0/24")),
            "peers[1].pod_cidrs[0]: 10.9.3.0/24 is not inside cluster_cidr 10.244.0.0/16"
        );
        let two = format!("{BASE}{PEER_C}").replace(
            "cluster_cidr = \"10.244.0.0/16\"",
            "cluster_cidr = [\"10.244.0.0/17\", \"10.244.128.0/17\"]",
        );
        let config: Config = two.parse().unwrap();
        assert_eq!(config.cluster_cidrs.len(), 2);
        assert_eq!(
            error(&two.replace("10.244.128.0/17", "10.244.0.0/16")),
            "cluster_cidr[1]: 10.244.0.0/16 overlaps 10.244.0.0/17"
        );
        assert_eq!(
            error(&two.replace("\"10.244.128.0/17\"", "\"10.244.128.0\"")),
            "cluster_cidr[1]: \"10.244.128.0\" is not a CIDR: expected ADDRESS/PREFIX, e.g. \
             10.244.1.0/24"
        );
    }

    #[test]
    fn rejects_bad_ids() {
        assert_eq!(
            error(&edited("[node]", "id = 1", "id = 0")),
            "node.id: must be 1..=65535, found 0"
        );
        assert_eq!(
            error(&edited("node-b", "id = 2", "id = 65536")),
            "peers[0].id: must be 1..=65535, found 65536"
        );
        assert_eq!(
            error(&edited("node-b", "id = 2", "id = -2")),
            "peers[0].id: must be 1..=65535, found -2"
        );
        let ok: Config = edited("node-b", "id = 2", "id = 65535").parse().unwrap();
        assert_eq!(ok.peers[0].id, 65535);
    }

    #[test]
    fn rejects_bad_route_tables() {
        for (table, why) in [
            ("0", "0 is not a table (RT_TABLE_UNSPEC)"),
            ("253", "253 is the kernel's default table"),
            ("254", "254 is the kernel's main table"),
            ("255", "255 is the kernel's local table"),
        ] {
            assert_eq!(
                error(&format!("route_table = {table}\n{BASE}")),
                format!(
                    "route_table: {why}; use another one (1..=4294967295 except 253, 254, 255)"
                )
            );
        }
        for table in ["-1", "4294967296"] {
            assert_eq!(
                error(&format!("route_table = {table}\n{BASE}")),
                format!("route_table: must be 1..=4294967295 except 253, 254, 255, found {table}")
            );
        }
    }

    #[test]
    fn rejects_bad_uplinks() {
        assert_eq!(
            error(&edited("[node]", "\"eth0\"", "\"\"")),
            "node.uplink: an interface name is 1..=15 bytes, found 0"
        );
        assert_eq!(
            error(&edited("[node]", "\"eth0\"", "\"sixteen-bytes-xx\"")),
            "node.uplink: an interface name is 1..=15 bytes, found 16"
        );
        for bad in ["eth 0", "eth/0", "eth0:1", "eth\\t0", ".."] {
            let e = error(&edited("[node]", "\"eth0\"", &format!("\"{bad}\"")));
            assert!(e.starts_with("node.uplink: "), "{e}");
            assert!(e.contains("is not an interface name"), "{e}");
        }
        let ok: Config = edited("[node]", "\"eth0\"", "\"fifteen-bytes-x\"")
            .parse()
            .unwrap();
        assert_eq!(ok.node.uplink.len(), 15);
    }

    #[test]
    fn the_ingress_hook_is_auto_xdp_or_tc() {
        let hook = |value: &str| {
            edited(
                "[node]",
                "uplink = \"eth0\"\n",
                &format!("uplink = \"eth0\"\n{value}"),
            )
            .parse::<Config>()
            .map(|config| config.node.ingress_hook)
        };
        assert_eq!(hook("").unwrap(), None);
        assert_eq!(hook("ingress_hook = \"auto\"\n").unwrap(), None);
        assert_eq!(
            hook("ingress_hook = \"xdp\"\n").unwrap(),
            Some(IngressHook::Xdp)
        );
        assert_eq!(
            hook("ingress_hook = \"tc\"\n").unwrap(),
            Some(IngressHook::Tc)
        );
        let e = hook("ingress_hook = \"XDP\"\n").unwrap_err().to_string();
        assert_eq!(
            e,
            "node.ingress_hook: \"XDP\" is not \"auto\", \"xdp\" or \"tc\""
        );
    }

    /// `[node]` with `node` after its uplink, peer node-b with `peer` after its epoch, and
    /// `top` before everything.
    fn with_encap(top: &str, node: &str, peer: &str) -> Result<Config, ConfigError> {
        let text = edited(
            "[node]",
            "uplink = \"eth0\"\n",
            &format!("uplink = \"eth0\"\n{node}"),
        );
        let text = text.replacen(
            "epoch = \"ffeeddccbbaa99887766554433221100\"\n",
            &format!("epoch = \"ffeeddccbbaa99887766554433221100\"\n{peer}"),
            1,
        );
        format!("{top}{text}").parse()
    }

    #[test]
    fn esp_in_udp_is_off_by_default_and_on_per_node_peer_or_file() {
        let plain = with_encap("", "", "").unwrap();
        assert_eq!(plain.node.encap, None);
        assert_eq!(plain.peers[0].esp_in_udp, None);

        // The file-wide switch: every node at its IP and port 4500.
        let all = with_encap("encap = \"udp\"\n", "", "").unwrap();
        assert_eq!(
            all.node.encap,
            Some(LocalEncap {
                port: 4500,
                public: "192.168.0.1:4500".parse().unwrap()
            })
        );
        assert_eq!(
            all.peers.iter().map(|p| p.esp_in_udp).collect::<Vec<_>>(),
            ["192.168.0.2:4500", "192.168.0.3:4500"].map(|a| Some(a.parse().unwrap()))
        );

        // Behind a NAT: its address and port; a bare address takes the node's port.
        let natted = with_encap(
            "",
            "encap = \"udp\"\nencap_port = 4600\npublic = \"203.0.113.7:4501\"\n",
            "encap = \"udp\"\npublic = \"198.51.100.2\"\n",
        )
        .unwrap();
        assert_eq!(
            natted.node.encap,
            Some(LocalEncap {
                port: 4600,
                public: "203.0.113.7:4501".parse().unwrap()
            })
        );
        assert_eq!(
            natted.peers[0].esp_in_udp,
            Some("198.51.100.2:4500".parse().unwrap())
        );
        assert_eq!(natted.peers[1].esp_in_udp, None);
        let bare = with_encap("", "encap = \"udp\"\npublic = \"203.0.113.7\"\n", "").unwrap();
        assert_eq!(
            bare.node.encap.unwrap().public,
            "203.0.113.7:4500".parse().unwrap()
        );
        // A node may stay out of a file-wide switch.
        let out = with_encap("encap = \"udp\"\n", "encap = \"esp\"\n", "").unwrap();
        assert_eq!(out.node.encap, None);
        assert!(out.peers[0].esp_in_udp.is_some());
    }

    #[test]
    fn a_peer_may_be_said_to_have_no_esn() {
        let plain = with_encap("", "", "").unwrap();
        assert!(plain.peers.iter().all(|p| p.esn));
        let without = with_encap("", "", "esn = false\n").unwrap();
        assert!(!without.peers[0].esn && without.peers[1].esn);
        let e = with_encap("", "", "esn = \"no\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("esn"), "{e}");
    }

    #[test]
    fn esp_in_udp_settings_that_cannot_work_are_refused_by_field() {
        let e = |top: &str, node: &str, peer: &str| {
            with_encap(top, node, peer).unwrap_err().to_string()
        };
        assert_eq!(
            e("encap = \"ipip\"\n", "", ""),
            "encap: \"ipip\" is not \"esp\" or \"udp\""
        );
        assert_eq!(
            e("", "public = \"203.0.113.7:4501\"\n", ""),
            "node.public: only with encap = \"udp\""
        );
        assert_eq!(
            e("", "encap = \"udp\"\nencap_port = 0\n", ""),
            "node.encap_port: must be 1..=65535, found 0"
        );
        assert_eq!(
            e("", "encap = \"udp\"\npublic = \"203.0.113.7:0\"\n", ""),
            "node.public: \"203.0.113.7:0\": port 0 cannot be sent to"
        );
        assert_eq!(
            e("", "encap = \"udp\"\npublic = \"nat.example\"\n", ""),
            "node.public: \"nat.example\" is not an address or address:port (IPv6 as \
             [address]:port)"
        );
        assert_eq!(
            e("", "encap = \"udp\"\npublic = \"[2001:db8::7]:4501\"\n", ""),
            "node.public: [2001:db8::7]:4501 is not of node.ip 192.168.0.1's family"
        );
        assert_eq!(
            e("", "encap = \"udp\"\ningress_hook = \"xdp\"\n", ""),
            "node.ingress_hook: \"xdp\" cannot take ESP in UDP apart (encap = \"udp\"): leave \
             it out or set \"tc\""
        );
        let v6 = edited("[node]", "ip = \"192.168.0.1\"", "ip = \"2001:db8::1\"")
            .replace("ip = \"192.168.0.2\"", "ip = \"2001:db8::2\"")
            .replace("ip = \"192.168.0.3\"", "ip = \"2001:db8::3\"");
        let e6 = format!("encap = \"udp\"\n{v6}")
            .parse::<Config>()
            .unwrap_err();
        assert_eq!(
            e6.problems()[0].to_string(),
            "node.encap: \"udp\" is for IPv4 node IPs: the ingress guard takes ESP in UDP apart \
             over IPv4 only"
        );
        assert_eq!(
            e("", "", "public = \"198.51.100.2:4500\"\n"),
            "peers[0].public: only with encap = \"udp\""
        );
        assert_eq!(
            e("", "", "encap = \"udp\"\npublic = \"[2001:db8::2]:4500\"\n"),
            "peers[0].public: [2001:db8::2]:4500 is not of node.ip 192.168.0.1's family"
        );
    }

    #[test]
    fn rejects_empty_pod_cidrs_and_bad_values() {
        assert_eq!(
            error(&edited("node-b", "[\"10.244.2.0/24\"]", "[]")),
            "peers[0].pod_cidrs: must list at least one IPv4 CIDR"
        );
        assert_eq!(
            error(&edited("node-b", "10.244.2.0/24", "10.244.2.1/24")),
            "peers[0].pod_cidrs[0]: \"10.244.2.1/24\" has host bits set: did you mean \
             10.244.2.0/24?"
        );
        assert_eq!(
            error(&edited("[node]", "10.244.1.0/24", "10.244.1.0")),
            "node.pod_cidr: \"10.244.1.0\" is not a CIDR: expected ADDRESS/PREFIX, e.g. \
             10.244.1.0/24"
        );
        assert_eq!(
            error(&edited("[node]", "192.168.0.1", "192.168.0")),
            "node.ip: \"192.168.0\" is not an IP address"
        );
        assert_eq!(
            error(&edited("[node]", "192.168.0.1", "0.0.0.0")),
            "node.ip: 0.0.0.0 is not a unicast address a tunnel can use"
        );
        assert_eq!(
            error(&edited(
                "node-b",
                "ffeeddccbbaa99887766554433221100",
                "ffee"
            )),
            "peers[0].epoch: an epoch is exactly 32 hex digits (16 random bytes), found 4 \
             characters"
        );
        assert_eq!(
            error(&edited("[node]", "\"node-a\"", "\"\"")),
            "node.name: must not be empty"
        );
        assert_eq!(
            error(&edited("", "\"/etc/xsteer/keys\"", "\"\"")),
            "key_file: must not be empty"
        );
    }

    #[test]
    fn reports_every_problem_at_once() {
        let text = edited("[node]", "id = 1", "id = 0")
            .replace("10.244.2.0/24", "10.244.1.0/24")
            .replace("192.168.0.3", "192.168.0");
        // Field values that do not parse are reported first; cross-field rules need them.
        assert_eq!(
            error(&text),
            "2 problems:\n  node.id: must be 1..=65535, found 0\n  \
             peers[1].ip: \"192.168.0\" is not an IP address"
        );
        let mut many = BASE.to_owned();
        for i in 0..30 {
            many.push_str(&format!(
                "[[peers]]\nname = \"p{i}\"\nip = \"10.0.0.{i}\"\nid = {}\n\
                 pod_cidrs = [\"10.244.1.0/24\"]\nepoch = \"00112233445566778899aabbccddeeff\"\n",
                i + 10
            ));
        }
        let err = many.parse::<Config>().unwrap_err();
        // Each overlaps node.pod_cidr and every peer before it.
        assert_eq!(err.problems().len(), 30 + 29 * 30 / 2);
        let shown = err.to_string();
        assert!(
            shown.starts_with("465 problems:\n  peers[1].pod_cidrs[0]: "),
            "{shown}"
        );
        assert!(shown.ends_with("\n  ... and 445 more"), "{shown}");
    }

    #[test]
    fn validate_checks_configs_built_in_code() {
        let mut config: Config = BASE.parse().unwrap();
        config.peers[0].id = 0;
        config.route_table = 254;
        config.peers.push(config.peers[0].clone());
        let e = config.validate().unwrap_err();
        let paths: Vec<&str> = e.problems().iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "route_table",
                "peers[0].id",
                "peers[1].id",
                "peers[1].name",
                "peers[1].id",
                "peers[1].ip",
                "peers[1].pod_cidrs[0]"
            ]
        );
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xsteer-config-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn node_name_and_ip_can_come_from_the_environment() {
        let env = |name: &str| match name {
            "NODE_NAME" => Some("kind-worker".to_owned()),
            "NODE_IP" => Some("172.18.0.3".to_owned()),
            "BAD_NAME" => Some("Kind_Worker".to_owned()),
            "BAD_IP" => Some("172.18.0".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let with = |name: &str, ip: &str| {
            BASE.replace("\"node-a\"", &format!("\"{name}\""))
                .replace("\"192.168.0.1\"", &format!("\"{ip}\""))
        };
        let config = Config::parse_with_env(&with("${NODE_NAME}", "${NODE_IP}"), &env).unwrap();
        assert_eq!(config.node.name, "kind-worker");
        assert_eq!(config.node.ip, IpAddr::from(Ipv4Addr::new(172, 18, 0, 3)));
        let error = |text: &str| Config::parse_with_env(text, &env).unwrap_err().to_string();
        assert_eq!(
            error(&with("${NOPE}", "${EMPTY}")),
            "2 problems:\n  \
             node.name: ${NOPE}: the environment variable NOPE is not set, or empty\n  \
             node.ip: ${EMPTY}: the environment variable EMPTY is not set, or empty"
        );
        assert_eq!(
            error(&with("${1X}", "192.168.0.1")),
            "node.name: \"${1X}\": \"1X\" is not an environment variable name (letters, digits \
             and '_', not starting with a digit)"
        );
        // Only a whole value is expanded, and what the variable holds is checked as any value.
        let partial = error(&with("a-${NODE_NAME}", "192.168.0.1"));
        assert!(partial.contains("is not a DNS-1123 name"), "{partial}");
        assert_eq!(
            error(&with("node-a", "${BAD_IP}")),
            "node.ip: \"172.18.0\" is not an IP address"
        );
        let bad = error(&with("${BAD_NAME}", "192.168.0.1"));
        assert!(
            bad.starts_with("node.name: \"Kind_Worker\" is not a DNS-1123 name"),
            "{bad}"
        );
    }

    #[test]
    fn the_kubernetes_source_takes_the_identity_from_the_node() {
        let text = "key_file = \"keys\"\nnode_source = \"kubernetes\"\n\
                    cluster_cidr = \"10.244.0.0/16\"\n\n[node]\nname = \"node-a\"\n\
                    ip = \"192.168.0.1\"\nuplink = \"eth0\"\n\
                    epoch = \"00112233445566778899aabbccddeeff\"\n";
        let config: Config = text.parse().unwrap();
        assert_eq!(config.node_records, NodeRecords::Kubernetes);
        assert_eq!(config.node.identity(), None);
        assert_eq!(config.nodes_dir(), None);
        let given = text.replace("uplink", "id = 2\npod_cidr = \"10.244.1.0/24\"\nuplink");
        let why = "comes from this node's Node object with node_source = \"kubernetes\" \
                   (spec.podCIDRs, and the ID from it): leave it out";
        assert_eq!(
            error(&given),
            format!("2 problems:\n  node.id: {why}\n  node.pod_cidr: {why}")
        );
        assert_eq!(
            error(&text.replace("node_source", "nodes_dir = \"nodes\"\nnode_source")),
            "nodes_dir: not used with node_source = \"kubernetes\" (records are annotations on \
             Node objects): leave it out"
        );
        let dir = text.replace("\"kubernetes\"", "\"dir\"");
        assert_eq!(
            error(&dir),
            "nodes_dir: missing: node_source = \"dir\" reads node records from it"
        );
        let config: Config = dir
            .replace("node_source", "nodes_dir = \"nodes\"\nnode_source")
            .parse()
            .unwrap();
        assert_eq!(config.node_records, NodeRecords::Dir("nodes".into()));
        let unknown = error(&text.replace("\"kubernetes\"", "\"etcd\""));
        assert!(
            unknown.contains("unknown variant `etcd`, expected `dir` or `kubernetes`"),
            "{unknown}"
        );
    }

    #[test]
    fn the_epoch_may_be_left_out_only_where_peers_read_records() {
        let no_epoch = |source: &str| {
            format!(
                "key_file = \"keys\"\n{source}cluster_cidr = \"10.244.0.0/16\"\n\n[node]\n\
                 name = \"node-a\"\nip = \"192.168.0.1\"\nuplink = \"eth0\"\n\
                 id = 1\npod_cidr = \"10.244.1.0/24\"\n"
            )
        };
        let dir: Config = no_epoch("nodes_dir = \"nodes\"\n").parse().unwrap();
        assert_eq!(dir.node.epoch, None);
        let kubernetes = no_epoch("node_source = \"kubernetes\"\n")
            .replace("id = 1\npod_cidr = \"10.244.1.0/24\"\n", "");
        let kubernetes: Config = kubernetes.parse().unwrap();
        assert_eq!(kubernetes.node.epoch, None);
        let e = error(&no_epoch(""));
        assert!(
            e.starts_with("node.epoch: missing: peers whose config lists this node need its epoch"),
            "{e}"
        );
    }

    #[test]
    fn an_identity_is_given_whole_or_left_to_the_allocator() {
        let dir = scratch("allocate");
        let text = |name: &str, ip: &str| {
            format!(
                "key_file = \"keys\"\nnodes_dir = \"nodes\"\ncluster_cidr = \"10.244.0.0/16\"\n\n\
                 [node]\nname = \"{name}\"\nip = \"{ip}\"\nuplink = \"eth0\"\n\
                 epoch = \"00112233445566778899aabbccddeeff\"\n"
            )
        };
        let a = dir.join("a.toml");
        fs::write(&a, text("node-a", "192.168.0.1")).unwrap();
        let config = Config::from_path(&a).unwrap();
        assert_eq!((config.node.id, config.node.pod_cidr), (None, None));
        assert_eq!(config.node.identity(), None, "left to the allocator");
        assert!(
            !dir.join("nodes").exists(),
            "reading a config allocates nothing"
        );

        // Without a cluster CIDR there is nothing to allocate from: both fields are named.
        fs::write(
            &a,
            text("node-a", "192.168.0.1").replace("cluster_cidr = \"10.244.0.0/16\"\n", ""),
        )
        .unwrap();
        let err = Config::from_path(&a).unwrap_err().to_string();
        assert!(
            err.contains("node.id: missing") && err.contains("node.pod_cidr: missing"),
            "{err}"
        );
        // One without the other is named too.
        let half = text("node-a", "192.168.0.1").replace("uplink", "id = 9\nuplink");
        fs::write(&a, half).unwrap();
        let err = Config::from_path(&a).unwrap_err().to_string();
        assert!(err.contains("node.pod_cidr: missing"), "{err}");
        assert!(!err.contains("node.id: "), "{err}");
        // A configured pod CIDR outside the cluster CIDR is an error.
        let outside = text("node-c", "192.168.0.3")
            .replace("uplink", "id = 9\npod_cidr = \"10.9.0.0/24\"\nuplink");
        fs::write(&a, outside).unwrap();
        let err = Config::from_path(&a).unwrap_err().to_string();
        assert!(
            err.contains("node.pod_cidr: 10.9.0.0/24 is not inside cluster_cidr 10.244.0.0/16"),
            "{err}"
        );
    }

    #[test]
    fn from_path_names_the_file_and_resolves_key_file() {
        let dir = scratch("from-path");
        let path = dir.join("xsteer.toml");
        fs::write(&path, BASE.replace("/etc/xsteer/keys", "keys")).unwrap();
        let config = Config::from_path(&path).unwrap();
        assert_eq!(config.key_file, dir.join("keys"));
        assert_eq!(config.node_records, NodeRecords::None);
        let with_nodes = BASE.replace(
            "key_file = \"/etc/xsteer/keys\"",
            "key_file = \"keys\"\nnodes_dir = \"nodes\"",
        );
        fs::write(&path, with_nodes).unwrap();
        let config = Config::from_path(&path).unwrap();
        assert_eq!(config.node_records, NodeRecords::Dir(dir.join("nodes")));

        fs::write(&path, edited("[node]", "id = 1", "id = 0")).unwrap();
        assert_eq!(
            Config::from_path(&path).unwrap_err().to_string(),
            format!("{}: node.id: must be 1..=65535, found 0", path.display())
        );
        fs::write(&path, "key_file = \n").unwrap();
        let e = Config::from_path(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: TOML parse error at line 1", path.display())),
            "{e}"
        );
        let missing = dir.join("missing.toml");
        let e = Config::from_path(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("cannot read config file {}: ", missing.display())),
            "{e}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The example config and key file in docs/examples are valid and work together.
    #[test]
    fn examples_parse_and_load() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples");
        let config = Config::from_path(examples.join("xsteer.toml")).unwrap();
        assert_eq!(config.key_file, PathBuf::from("/etc/xsteer/keys"));
        assert_eq!(config.node.name, "node-a");
        assert_eq!(config.node.ingress_hook, None);
        assert_eq!(config.peers.len(), 2);

        // git keeps no mode bits but the exec bit: load a 0600 copy, as an operator would.
        let text = fs::read_to_string(examples.join("keys")).unwrap();
        assert!(text.contains("NEVER USE IT IN PRODUCTION"));
        let dir = scratch("examples");
        let keys_path = dir.join("keys");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&keys_path)
            .unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        fs::set_permissions(&keys_path, fs::Permissions::from_mode(0o600)).unwrap();
        let keys = KeyFile::load(&keys_path).unwrap();
        let newest = keys.newest().unwrap();
        assert_eq!(newest.generation().get(), 3);
        assert!(newest.plus());

        let peer = &config.peers[0];
        let out = SaKeyId {
            src: config.node.ip,
            dst: peer.ip,
            generation: newest.generation(),
            src_epoch: config.node.epoch.expect("the example gives node.epoch"),
            dst_epoch: peer.epoch,
            cpu_slot: 0,
        };
        let (SaKey::Gcm { key: a, .. }, SaKey::Gcm { key: b, .. }) = (
            keys.derive(&out).unwrap(),
            keys.derive(&out.reversed()).unwrap(),
        ) else {
            panic!("the example key is GCM")
        };
        assert_eq!(a.len(), 20);
        assert_ne!(a.as_bytes(), b.as_bytes());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dual_stack_pod_cidrs_are_checked_like_ipv4_ones() {
        let dual = fixtures::TWO_NODES
            .replace(
                "cluster_cidr = \"10.244.0.0/16\"",
                "cluster_cidr = \"10.244.0.0/16\"\ncluster_cidr_v6 = \"fd00:10:244::/48\"",
            )
            .replace(
                "pod_cidr = \"10.244.1.0/24\"",
                "pod_cidr = \"10.244.1.0/24\"\npod_cidr_v6 = \"fd00:10:244:1::/64\"",
            )
            .replace(
                "[\"10.244.2.0/24\"]",
                "[\"10.244.2.0/24\", \"fd00:10:244:2::/64\"]",
            );
        let config: Config = dual.parse().unwrap();
        assert_eq!(
            config.cluster_cidrs_v6,
            ["fd00:10:244::/48".parse().unwrap()]
        );
        assert_eq!(
            config.node.pod_cidr_v6,
            Some("fd00:10:244:1::/64".parse().unwrap())
        );
        assert_eq!(
            config.peers[0].pod_cidrs,
            ["10.244.2.0/24".parse().unwrap()]
        );
        assert_eq!(
            config.peers[0].pod_cidrs_v6,
            ["fd00:10:244:2::/64".parse().unwrap()]
        );

        let without_space = dual.replace("cluster_cidr_v6 = \"fd00:10:244::/48\"", "");
        assert!(
            error(&without_space).starts_with("cluster_cidr_v6: missing: node.pod_cidr_v6 gives"),
            "{}",
            error(&without_space)
        );
        assert_eq!(
            error(&dual.replace("fd00:10:244:2::/64", "fd00:99::/64")),
            "peers[0].pod_cidrs: fd00:99::/64 is not inside cluster_cidr_v6 fd00:10:244::/48"
        );
        assert_eq!(
            error(&dual.replace("fd00:10:244:2::/64", "fd00:10:244:1::/80")),
            "peers[0].pod_cidrs: fd00:10:244:1::/80 overlaps node.pod_cidr_v6 fd00:10:244:1::/64"
        );
        assert!(
            error(&dual.replace("fd00:10:244:2::/64", "fd00:10:244:2::1/64"))
                .starts_with("peers[0].pod_cidrs[1]: \"fd00:10:244:2::1/64\" has host bits set"),
        );
        assert_eq!(
            error(&dual.replace("[\"10.244.2.0/24\", ", "[")),
            "peers[0].pod_cidrs: must list at least one IPv4 CIDR"
        );

        // IPv6 node IPs: both nodes, or neither; never inside the IPv6 pod space.
        let v6_nodes = dual
            .replace("\"192.168.0.1\"", "\"fd00:192:168::1\"")
            .replace("\"192.168.0.2\"", "\"fd00:192:168::2\"");
        let config: Config = v6_nodes.parse().unwrap();
        assert_eq!(config.node.ip, "fd00:192:168::1".parse::<IpAddr>().unwrap());
        assert_eq!(
            error(&dual.replace("\"192.168.0.2\"", "\"fd00:192:168::2\"")),
            "peers[0].ip: fd00:192:168::2 is not of node.ip 192.168.0.1's family: tunnels join \
             node IPs of one family"
        );
        assert_eq!(
            error(&v6_nodes.replace("fd00:192:168::2", "fd00:10:244:7::2")),
            "peers[0].ip: fd00:10:244:7::2 is inside cluster_cidr_v6 fd00:10:244::/48"
        );
        assert_eq!(
            error(&v6_nodes.replace("fd00:192:168::1", "fe80::1")),
            "node.ip: fe80::1 is not a unicast address a tunnel can use"
        );
    }
}
