//! One `xsteer agent` per lab node: its config, its key file, started as a daemon inside the
//! node's namespace, stopped with SIGTERM.
//!
//! The nodes know nothing of each other in their configs: each agent publishes its node record
//! in the shared `nodes/` directory and learns the others there, as a cluster's nodes would.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::{
    sys::{
        signal::{Signal, kill},
        wait::{WaitPidFlag, waitpid},
    },
    unistd::Pid,
};

use super::{
    netns::command_in,
    pods::{self, CniDirs},
    topology::{self, LabNode},
};
use crate::{
    dataplane::{Dataplane, links::IngressHook},
    keys::{self, Epoch, Generation},
};

/// Where node `name`'s maps and links are pinned.
pub fn pin_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/xsteer-lab-{name}"))
}

fn node_dir(dir: &Path, node: &LabNode) -> PathBuf {
    dir.join(&node.name)
}

/// The agent log of `node`.
pub fn log_path(dir: &Path, node: &LabNode) -> PathBuf {
    node_dir(dir, node).join("agent.log")
}

fn pid_path(dir: &Path, node: &LabNode) -> PathBuf {
    node_dir(dir, node).join("agent.pid")
}

/// What every agent of a lab is configured with beyond its node's identity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentSettings {
    /// One OUT SA per CPU towards each peer (`per_cpu_sas = true`).
    pub per_cpu_sas: bool,
    /// Where the ingress guard runs (`ingress_hook`); `None` lets the agent choose (tc, since
    /// the lab's uplinks are veths).
    pub ingress_hook: Option<IngressHook>,
    /// Every node speaks ESP in UDP (`encap = "udp"`); a node behind NAT advertises its
    /// router's address and port (`public`).
    pub esp_in_udp: bool,
}

/// The config of `node`: itself, the shared key file and node records, the cluster CIDR (whose
/// /24 grid the classifier looks pods up in), `settings`; no peers. In a dual-stack lab also
/// the cluster's IPv6 pod space and the node's IPv6 pod CIDR.
pub fn config_text(dir: &Path, node: &LabNode, epoch: &Epoch, settings: AgentSettings) -> String {
    let (cluster_v6, pod_v6) = match node.pod_cidr_v6() {
        Some(cidr) => (
            format!("cluster_cidr_v6 = \"{}\"\n", topology::CLUSTER_CIDR_V6),
            format!("pod_cidr_v6 = \"{cidr}\"\n"),
        ),
        None => Default::default(),
    };
    let hook = match settings.ingress_hook {
        Some(hook) => format!("ingress_hook = \"{hook}\"\n"),
        None => String::new(),
    };
    let encap = match settings.esp_in_udp {
        true => "encap = \"udp\"\n",
        false => "",
    };
    let public = match node.nat {
        true => format!("public = \"{}:{}\"\n", node.ip, topology::NAT_PORT),
        false => String::new(),
    };
    format!(
        "key_file = \"{keys}\"\nnodes_dir = \"{nodes}\"\ncluster_cidr = \"10.244.0.0/16\"\n{cluster_v6}{encap}\n[node]\nname = \"{name}\"\nip = \"{ip}\"\n\
         id = {id}\nuplink = \"eth0\"\npod_cidr = \"{cidr}\"\n{pod_v6}epoch = \"{epoch}\"\nper_cpu_sas = {per_cpu_sas}\n{hook}{public}",
        keys = dir.join("keys").display(),
        nodes = dir.join("nodes").display(),
        name = node.name,
        ip = node.tunnel_ip,
        id = node.index,
        cidr = node.pod_cidr(),
        per_cpu_sas = settings.per_cpu_sas,
    )
}

/// Writes the key file (one fresh generation, mode 0600) and every node's config, with
/// `settings`.
pub fn write_files(dir: &Path, nodes: &[LabNode], settings: AgentSettings) -> Result<()> {
    let keys_path = dir.join("keys");
    let line = keys::generate_gcm_line(Generation::MIN)?;
    fs::write(&keys_path, format!("{}\n", line.as_str()))
        .with_context(|| format!("writing {}", keys_path.display()))?;
    fs::set_permissions(&keys_path, fs::Permissions::from_mode(0o600))?;
    for node in nodes {
        let node_dir = node_dir(dir, node);
        fs::create_dir_all(&node_dir)
            .with_context(|| format!("creating {}", node_dir.display()))?;
        let epoch = Epoch::random()?;
        let config = config_text(dir, node, &epoch, settings);
        fs::write(node_dir.join("xsteer.toml"), config)?;
    }
    Ok(())
}

/// Starts `xsteer agent` (the binary `xsteer`) of every node as a daemon and waits until each
/// says it runs. Each agent installs `xsteer-cni` (from beside `xsteer`) into its node's CNI
/// directories.
pub fn start(dir: &Path, nodes: &[LabNode], xsteer: &Path) -> Result<()> {
    for node in nodes {
        let node_dir = node_dir(dir, node);
        // The agent puts xsteer-cni into the node's conflist, as on a Kubernetes node.
        let cni = CniDirs::of(dir, node);
        let log = fs::File::create(log_path(dir, node))?;
        let mut command = Command::new(xsteer);
        command
            .arg("agent")
            .arg("--config")
            .arg(node_dir.join("xsteer.toml"))
            .arg("--pin-dir")
            .arg(pin_dir(&node.name))
            .arg("--state-dir")
            .arg(node_dir.join("state"))
            .arg("--cni-conf-dir")
            .arg(&cni.conf)
            .arg("--cni-bin-dir")
            .arg(&cni.bin)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        command_in(&mut command, &node.netns, true)?;
        let child = command
            .spawn()
            .with_context(|| format!("starting the agent of {}", node.name))?;
        fs::write(pid_path(dir, node), child.id().to_string())?;
    }
    for node in nodes {
        wait_for(dir, node, Duration::from_secs(120))?;
    }
    Ok(())
}

/// The pid of `node`'s agent, as recorded when it was started.
pub fn pid(dir: &Path, node: &LabNode) -> Option<Pid> {
    let pid = fs::read_to_string(pid_path(dir, node))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Pid::from_raw(pid))
}

/// Whether `node`'s agent process is alive.
pub fn is_running(dir: &Path, node: &LabNode) -> bool {
    pid(dir, node).is_some_and(|pid| {
        // Reap it first if it is our child and has exited: a zombie still answers kill(0).
        let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
        kill(pid, None).is_ok()
    })
}

fn wait_for(dir: &Path, node: &LabNode, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let log = fs::read_to_string(log_path(dir, node)).unwrap_or_default();
        if log.contains("agent running:") {
            return Ok(());
        }
        if !is_running(dir, node) || Instant::now() > deadline {
            bail!("the agent of {} did not start; its log:\n{log}", node.name);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every node's `remote_pod_cidrs` holds every other node's pod CIDR.
pub fn wait_for_peers(nodes: &[LabNode], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for node in nodes {
        loop {
            let mut dataplane = Dataplane::load_pinned(&pin_dir(&node.name))?;
            let known = dataplane.remote_pod_cidrs()?.entries()?.len();
            if known == nodes.len() - 1 {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} knows {known} of the {} other nodes' pod CIDRs",
                    node.name,
                    nodes.len() - 1
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}

/// Waits until the agent of every node has put `xsteer-cni` into its conflist.
pub fn wait_for_plugin(dir: &Path, nodes: &[LabNode], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for node in nodes {
        let runtime = pods::runtime(dir, node);
        loop {
            let list = runtime.conflist()?;
            if list.types().contains(&pods::XSTEER_CNI) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{}'s agent has not put {} into {} (plugins: {:?}); its log is {}",
                    node.name,
                    pods::XSTEER_CNI,
                    list.file.display(),
                    list.types(),
                    log_path(dir, node).display()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Stops every agent: SIGTERM, then SIGKILL after 5 s.
pub fn stop(dir: &Path, nodes: &[LabNode]) {
    for node in nodes {
        let Some(pid) = pid(dir, node) else {
            continue;
        };
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_running(dir, node) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        if is_running(dir, node) {
            let _ = kill(pid, Signal::SIGKILL);
        }
        let _ = fs::remove_file(pid_path(dir, node));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::topology::{Size, Stack, plan_stack};

    #[test]
    fn a_dual_stack_nodes_config_names_both_pod_spaces_and_both_pod_cidrs() {
        let epoch = Epoch::random().unwrap();
        let dir = Path::new("/run/xsteer-lab");
        let v4 = plan_stack(Size { nodes: 3, pods: 1 }, Stack::V4);
        let text = config_text(dir, &v4[2], &epoch, AgentSettings::default());
        assert!(!text.contains("v6"), "{text}");
        let value: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(value["node"]["per_cpu_sas"].as_bool(), Some(false));
        assert_eq!(value["node"].get("ingress_hook"), None);
        let settings = AgentSettings {
            per_cpu_sas: true,
            ingress_hook: Some(IngressHook::Xdp),
            esp_in_udp: false,
        };
        let text = config_text(dir, &v4[2], &epoch, settings);
        let value: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(value["node"]["per_cpu_sas"].as_bool(), Some(true));
        assert_eq!(value["node"]["ingress_hook"].as_str(), Some("xdp"));
        let dual = plan_stack(Size { nodes: 3, pods: 1 }, Stack::Dual);
        let text = config_text(dir, &dual[2], &epoch, AgentSettings::default());
        let value: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(value["cluster_cidr"].as_str(), Some("10.244.0.0/16"));
        assert_eq!(value["cluster_cidr_v6"].as_str(), Some("fd00:10:244::/48"));
        assert_eq!(value["node"]["pod_cidr"].as_str(), Some("10.244.3.0/24"));
        assert_eq!(
            value["node"]["pod_cidr_v6"].as_str(),
            Some("fd00:10:244:3::/64")
        );
        assert_eq!(value["node"]["ip"].as_str(), Some("192.168.100.3"));
    }

    /// Behind NAT a node's config names its private IP and its router's address and port;
    /// the parsed config is what the agent will run with.
    #[test]
    fn a_node_behind_nat_advertises_its_routers_address_and_port() {
        let epoch = Epoch::random().unwrap();
        let dir = Path::new("/run/xsteer-lab");
        let mut nodes = plan_stack(Size { nodes: 3, pods: 1 }, Stack::V4);
        topology::put_behind_nat(&mut nodes, &[3]);
        let settings = AgentSettings {
            esp_in_udp: true,
            ..AgentSettings::default()
        };
        let natted: crate::config::Config = config_text(dir, &nodes[2], &epoch, settings)
            .parse()
            .unwrap();
        assert_eq!(
            natted.node.ip,
            "172.31.3.2".parse::<std::net::IpAddr>().unwrap()
        );
        let encap = natted.node.encap.unwrap();
        assert_eq!(
            (encap.port, encap.public),
            (4500, "192.168.100.3:4501".parse().unwrap())
        );
        let open: crate::config::Config = config_text(dir, &nodes[0], &epoch, settings)
            .parse()
            .unwrap();
        let encap = open.node.encap.unwrap();
        assert_eq!(encap.public, "192.168.100.1:4500".parse().unwrap());
        let plain: crate::config::Config =
            config_text(dir, &nodes[0], &epoch, AgentSettings::default())
                .parse()
                .unwrap();
        assert_eq!(plain.node.encap, None);
    }
}
