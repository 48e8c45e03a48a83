//! The lab's pods, wired by real CNI plugins: Debian's containernetworking-plugins `ptp` with
//! `host-local` IPAM, the pair kindnet runs in kind, from a conflist shaped as kindnet writes it;
//! and `xsteer-cni` behind them once the node's agent has put itself into that list.
//!
//! Each node has its own CNI directories under the lab's (`<lab>/<node>/cni/`): `net.d` (the
//! conflist), `bin` (where the agent installs `xsteer-cni`), `ipam` (host-local's leases) and
//! `results` (the cached ADD results DEL needs). Plugins are looked for in `bin`, then in
//! Debian's /usr/lib/cni.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{
    netns::ip,
    runtime::{self, Runtime, Sandbox},
    topology::{LabNode, LabPod},
};

/// Where Debian's containernetworking-plugins are.
pub const DEBIAN_PLUGINS: &str = "/usr/lib/cni";
/// The lab's conflist, in each node's `net.d`.
pub const CONFLIST: &str = "10-lab.conflist";
/// The interface of a pod, inside its namespace.
const POD_IFNAME: &str = "eth0";

/// The CNI directories of `node`.
#[derive(Clone, Debug)]
pub struct CniDirs {
    /// The configuration directory.
    pub conf: PathBuf,
    /// Where the agent installs `xsteer-cni`.
    pub bin: PathBuf,
    root: PathBuf,
}

impl CniDirs {
    /// The directories of `node` in the lab at `dir`.
    pub fn of(dir: &Path, node: &LabNode) -> CniDirs {
        let root = dir.join(&node.name).join("cni");
        CniDirs {
            conf: root.join("net.d"),
            bin: root.join("bin"),
            root,
        }
    }

    /// The conflist's path.
    pub fn conflist(&self) -> PathBuf {
        self.conf.join(CONFLIST)
    }
}

/// The conflist of `node`, as kindnet writes it (tabs, cniVersion 0.3.1, ptp with host-local
/// for the node's pod CIDR and a default route), less its portmap plugin, which the lab has no
/// use for. host-local keeps its leases in the lab's directory. In a dual-stack lab, as kindnet
/// in a dual-stack cluster: one range per family (IPv4 first, as the Node's `podCIDRs` list
/// them) and a default route of each family.
pub fn conflist_text(dirs: &CniDirs, node: &LabNode) -> String {
    let ipam = dirs.root.join("ipam");
    let (routes, ranges) = match node.pod_cidr_v6() {
        None => (
            "{ \"dst\": \"0.0.0.0/0\" }".to_owned(),
            format!("[ {{ \"subnet\": \"{}\" }} ]", node.pod_cidr()),
        ),
        Some(v6) => (
            "{ \"dst\": \"0.0.0.0/0\" }, { \"dst\": \"::/0\" }".to_owned(),
            format!(
                "[ {{ \"subnet\": \"{}\" }} ], [ {{ \"subnet\": \"{v6}\" }} ]",
                node.pod_cidr()
            ),
        ),
    };
    format!(
        "{{\n\t\"cniVersion\": \"0.3.1\",\n\t\"name\": \"lab\",\n\t\"plugins\": [\n\t{{\n\
         \t\t\"type\": \"ptp\",\n\t\t\"ipMasq\": false,\n\t\t\"ipam\": {{\n\
         \t\t\t\"type\": \"host-local\",\n\t\t\t\"dataDir\": {ipam},\n\
         \t\t\t\"routes\": [ {routes} ],\n\
         \t\t\t\"ranges\": [ {ranges} ]\n\t\t}}\n\t\t,\n\
         \t\t\"mtu\": 1500\n\t}}\n\t]\n}}\n",
        ipam = Value::String(ipam.display().to_string()),
    )
}

/// Creates the CNI directories of `node` and writes its conflist; fails, saying what to install,
/// when Debian's plugins are missing.
pub fn write_conflist(dir: &Path, node: &LabNode) -> Result<()> {
    for plugin in ["ptp", "host-local"] {
        let path = Path::new(DEBIAN_PLUGINS).join(plugin);
        if !path.is_file() {
            bail!(
                "{} is missing: the lab wires its pods with Debian's CNI plugins \
                 (apt-get install containernetworking-plugins)",
                path.display()
            );
        }
    }
    let dirs = CniDirs::of(dir, node);
    for d in [&dirs.conf, &dirs.bin] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let path = dirs.conflist();
    fs::write(&path, conflist_text(&dirs, node))
        .with_context(|| format!("writing {}", path.display()))
}

/// The CNI runtime of `node`.
pub fn runtime(dir: &Path, node: &LabNode) -> Runtime {
    let dirs = CniDirs::of(dir, node);
    Runtime {
        node_netns: node.netns.clone(),
        path: vec![dirs.bin.clone(), PathBuf::from(DEBIAN_PLUGINS)],
        cache_dir: dirs.root.join("results"),
        conf_dir: dirs.conf,
    }
}

/// What a pod's sandbox is to CNI: its namespace is its container ID, and host-local is asked
/// for the plan's address: `IP=` in `CNI_ARGS`, or in a dual-stack lab one address of each
/// family in `args.cni.ips` (Debian's host-local, 1.1.1, takes a single address in `IP=`).
pub fn sandbox(pod: &LabPod) -> Sandbox {
    let (args, ips) = match pod.ip6 {
        None => (format!("IgnoreUnknown=1;IP={}", pod.ip), vec![]),
        Some(_) => (
            "IgnoreUnknown=1".to_owned(),
            pod.ips().iter().map(ToString::to_string).collect(),
        ),
    };
    Sandbox {
        container_id: pod.netns.clone(),
        netns: Path::new("/run/netns").join(&pod.netns),
        ifname: POD_IFNAME.into(),
        args,
        ips,
    }
}

/// Creates `pod`'s namespace and runs ADD through `node`'s conflist; returns the result. On a
/// failure it cleans up as a runtime does before it retries (DEL, namespace removed), so the
/// same pod can be added again.
pub fn add(dir: &Path, node: &LabNode, pod: &LabPod) -> Result<Value> {
    let runtime = runtime(dir, node);
    let sandbox = sandbox(pod);
    ip(&["netns", "add", &pod.netns])?;
    let result = runtime.add(&sandbox).and_then(|result| {
        let addresses = runtime::addresses(&result);
        let planned: Vec<String> = pod.ips().iter().map(ToString::to_string).collect();
        if addresses != planned {
            bail!("{} was given {addresses:?}, not {planned:?}", pod.netns);
        }
        ip(&["-n", &pod.netns, "link", "set", "lo", "up"])?;
        Ok(result)
    });
    if result.is_err() {
        let _ = runtime.del(&sandbox);
        let _ = ip(&["netns", "delete", &pod.netns]);
    }
    result
}

/// Runs DEL for `pod` through `node`'s conflist and removes its namespace.
pub fn del(dir: &Path, node: &LabNode, pod: &LabPod) -> Result<()> {
    runtime(dir, node).del(&sandbox(pod))?;
    ip(&["netns", "delete", &pod.netns])?;
    Ok(())
}

/// The plugin type the agent puts into the conflist.
pub const XSTEER_CNI: &str = "xsteer-cni";

/// Adds every pod of `nodes`.
pub fn add_all(dir: &Path, nodes: &[LabNode]) -> Result<()> {
    for node in nodes {
        for pod in &node.pods {
            add(dir, node, pod).with_context(|| format!("adding pod {}", pod.netns))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::topology::{Size, Stack, plan, plan_stack};

    #[test]
    fn the_conflist_is_kindnets_shape_for_the_nodes_pod_cidr() {
        let nodes = plan(Size { nodes: 2, pods: 1 });
        let dirs = CniDirs::of(Path::new("/run/xsteer-lab"), &nodes[1]);
        let text = conflist_text(&dirs, &nodes[1]);
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["cniVersion"], "0.3.1");
        assert_eq!(value["plugins"][0]["type"], "ptp");
        assert_eq!(value["plugins"][0]["ipam"]["type"], "host-local");
        assert_eq!(
            value["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.2.0/24"
        );
        assert_eq!(
            value["plugins"][0]["ipam"]["dataDir"],
            "/run/xsteer-lab/node2/cni/ipam"
        );
        assert!(text.contains("\n\t\t,\n\t\t\"mtu\": 1500"), "{text}");
        assert_eq!(
            sandbox(&nodes[1].pods[0]).args,
            "IgnoreUnknown=1;IP=10.244.2.2"
        );
        assert_eq!(
            value["plugins"][0]["ipam"]["ranges"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            value["plugins"][0]["ipam"]["routes"],
            serde_json::json!([{ "dst": "0.0.0.0/0" }])
        );
    }

    #[test]
    fn a_dual_stack_conflist_has_a_range_and_a_default_route_of_each_family() {
        let nodes = plan_stack(Size { nodes: 2, pods: 1 }, Stack::Dual);
        let dirs = CniDirs::of(Path::new("/run/xsteer-lab"), &nodes[1]);
        let text = conflist_text(&dirs, &nodes[1]);
        let value: Value = serde_json::from_str(&text).unwrap();
        let ipam = &value["plugins"][0]["ipam"];
        assert_eq!(
            ipam["ranges"],
            serde_json::json!([
                [{ "subnet": "10.244.2.0/24" }],
                [{ "subnet": "fd00:10:244:2::/64" }]
            ])
        );
        assert_eq!(
            ipam["routes"],
            serde_json::json!([{ "dst": "0.0.0.0/0" }, { "dst": "::/0" }])
        );
        assert_eq!(value["plugins"][0]["type"], "ptp");
        assert!(text.contains("\n\t\t,\n\t\t\"mtu\": 1500"), "{text}");
        let sandbox = sandbox(&nodes[1].pods[0]);
        assert_eq!(sandbox.args, "IgnoreUnknown=1");
        assert_eq!(sandbox.ips, ["10.244.2.2", "fd00:10:244:2::2"]);
    }
}
