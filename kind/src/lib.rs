//! xsteer's Kubernetes deployment, described once.
//!
//! The manifests in `kind/manifests/` are the source of truth: plain YAML that `kubectl apply
//! -f` takes as it is, that people read and review, with comments that say why. This crate
//! reads them into a typed description of the agent's pod — its containers' command lines,
//! capabilities and mounts, and the volumes behind the mounts — which everything else uses
//! instead of a copy of its own: `cargo xtask image` (the image's default command), `cargo
//! xtask kind`, and the tests that run the image under podman with the DaemonSet's command line,
//! capabilities and mounts ([`agent::Container::podman_run`]). A change to the DaemonSet is
//! then a change to what is tested, and the tests here hold the few things that must agree with
//! code: the image's command, the names the tasks look up, the cluster's pod space.

pub mod agent;
pub mod manifests;

use std::path::PathBuf;

/// The directory of the deployment: `kind/` in the source tree.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The manifests `kubectl apply -f` takes, every one of them.
pub fn manifests_dir() -> PathBuf {
    dir().join("manifests")
}

/// The kind cluster config: one control plane, two workers, kindnet, the pod subnet.
pub fn cluster_config() -> PathBuf {
    dir().join("cluster.yaml")
}

/// The example key Secret (a published key; never applied by the tasks).
pub fn example_secret() -> PathBuf {
    dir().join("secret.example.yaml")
}

/// The image the manifests run, and how it runs when nothing overrides it.
pub mod image {
    /// The image's name in the manifests and the default of `cargo xtask image --tag`.
    pub const REFERENCE: &str = "xsteer:dev";
    /// The image's entrypoint (the binary is on the image's PATH).
    pub const ENTRYPOINT: &[&str] = &["xsteer"];
    /// The image's default arguments: the DaemonSet's agent (a test holds them equal).
    pub const CMD: &[&str] = &[
        "agent",
        "--config",
        "/etc/xsteer/xsteer.toml",
        "--cni-conf-dir",
        "/etc/cni/net.d",
        "--cni-bin-dir",
        "/opt/cni/bin",
    ];
}

/// Names the manifests give and the tasks look up.
pub mod names {
    /// Where everything namespaced lives: the Secret must be in the DaemonSet's namespace.
    pub const NAMESPACE: &str = "kube-system";
    /// The DaemonSet.
    pub const DAEMONSET: &str = "xsteer";
    /// The label every resource carries, as a selector.
    pub const SELECTOR: &str = "app.kubernetes.io/name=xsteer";
    /// The key Secret, named as Cilium names its own, in Cilium's format.
    pub const KEY_SECRET: &str = "cilium-ipsec-keys";
    /// The Secret's one entry: the key file.
    pub const KEY_SECRET_ENTRY: &str = "keys";
    /// The ConfigMap with the agent's config.
    pub const CONFIG_MAP: &str = "xsteer-config";
    /// The config's entry in the ConfigMap.
    pub const CONFIG_ENTRY: &str = "xsteer.toml";
    /// The agent's container.
    pub const AGENT_CONTAINER: &str = "agent";
    /// Where the agent reads its config.
    pub const CONFIG_PATH: &str = "/etc/xsteer/xsteer.toml";
    /// The node's CNI config dir, where the agent chains `xsteer-cni` in (the same path in the
    /// agent's container and on the node).
    pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";
    /// The node's CNI bin dir, where the agent copies `xsteer-cni`.
    pub const CNI_BIN_DIR: &str = "/opt/cni/bin";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_is_one_control_plane_and_two_workers_on_kindnet() {
        let cluster = manifests::read(&cluster_config()).unwrap();
        let config = &cluster[0].value;
        assert_eq!(config["kind"], "Cluster");
        let roles: Vec<&str> = config["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["control-plane", "worker", "worker"]);
        assert!(
            config["networking"].get("disableDefaultCNI").is_none(),
            "kindnet stays: xsteer runs beside the CNI"
        );
        // `xsteer probe capture` counts pod packets of 10.244.0.0/16, a /24 per node.
        assert_eq!(config["networking"]["podSubnet"], "10.244.0.0/16");
    }
}
