//! The pods `cargo xtask kind` starts besides the DaemonSet, each pinned to one node and run
//! from the xsteer image itself (no other image is pulled):
//!
//! - an echo pod per node (`xsteer probe serve`), the end of every check and stream;
//! - a capture pod per node, on the node's network (`xsteer probe capture`), which counts what
//!   the node sends on its uplink;
//! - an uninstall pod per node (`xsteer uninstall`), with the agent's capabilities and mounts
//!   taken from the DaemonSet's description, so it can reach what the agent made.
//!
//! They are rendered as JSON (which kubectl and YAML readers take as it is) and validated with
//! the manifests.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use xsteer_kind::{
    agent::{AgentPod, Propagation, VolumeSource},
    image,
};

/// The namespace of the test pods.
pub const NAMESPACE: &str = "default";
/// The label key of every pod here.
const LABEL: &str = "app.kubernetes.io/name";
/// The label value of the echo pods.
pub const ECHO: &str = "xsteer-echo";
/// The label value of the capture pods.
pub const CAPTURE: &str = "xsteer-capture";
/// The label value of the uninstall pods.
pub const UNINSTALL: &str = "xsteer-uninstall";

/// The selector of pods labelled `value`.
pub fn selector(value: &str) -> String {
    format!("{LABEL}={value}")
}

/// The name of the pod labelled `kind` on `node`.
pub fn name(kind: &str, node: &str) -> String {
    format!("{kind}-{node}")
}

fn pinned_pod(kind: &str, node: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["nodeName"] = json!(node);
    // Every node, the control plane included: its pods are pods of the cluster too.
    spec["tolerations"] = json!([{"operator": "Exists"}]);
    // The probes do not handle SIGTERM (as PID 1 they would wait for SIGKILL anyway).
    spec["terminationGracePeriodSeconds"] = json!(1);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name(kind, node),
            "namespace": NAMESPACE,
            "labels": {LABEL: kind},
        },
        "spec": spec,
    })
}

fn container(name: &str, command: &[&str], caps: &[&str]) -> Value {
    json!({
        "name": name,
        "image": image::REFERENCE,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "securityContext": {
            "capabilities": {"drop": ["ALL"], "add": caps},
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
        },
    })
}

/// An echo server pod on `node`, in the pod network. NET_RAW: `xsteer probe check`, run in it,
/// sends ICMP echo requests from a raw socket.
pub fn echo(node: &str) -> Value {
    pinned_pod(
        ECHO,
        node,
        json!({
            "containers": [container("echo", &["xsteer", "probe", "serve"], &["NET_RAW"])],
        }),
    )
}

/// A pod that counts for `seconds` what `node` sends on its uplink `eth0`, on the node's
/// network. NET_RAW: a packet socket; NET_ADMIN: a receive buffer large enough for bursts.
pub fn capture(node: &str, seconds: u64) -> Value {
    let command = [
        "xsteer",
        "probe",
        "capture",
        "--interface",
        "eth0",
        "--seconds",
        &seconds.to_string(),
    ]
    .map(str::to_owned);
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    pinned_pod(
        CAPTURE,
        node,
        json!({
            "hostNetwork": true,
            "restartPolicy": "Never",
            "containers": [container("capture", &command, &["NET_RAW", "NET_ADMIN"])],
        }),
    )
}

/// A pod that runs `xsteer uninstall` on `node`, with the agent's capabilities, network, and
/// its hostPath mounts (bpffs, the state directory, the CNI dirs), as the DaemonSet gives them.
pub fn uninstall(agent_pod: &AgentPod, node: &str) -> Result<Value> {
    let agent = agent_pod.agent();
    let mut mounts = Vec::new();
    let mut volumes = Vec::new();
    for mount in &agent.mounts {
        let Some(volume) = agent_pod.volume(&mount.volume) else {
            continue;
        };
        // Only the node's own directories: uninstall reads no config, keys or Secret.
        let VolumeSource::HostPath { path, kind } = &volume.source else {
            continue;
        };
        let mut m = json!({"name": volume.name, "mountPath": mount.path});
        if mount.propagation == Propagation::HostToContainer {
            m["mountPropagation"] = json!("HostToContainer");
        }
        mounts.push(m);
        let mut host = json!({"path": path});
        if let Some(kind) = kind {
            host["type"] = json!(kind);
        }
        volumes.push(json!({"name": volume.name, "hostPath": host}));
    }
    // The CNI dirs the agent chains xsteer-cni into, as its command line names them:
    // uninstall takes the plugin out of them first.
    let mut command = vec!["xsteer", "uninstall"];
    for flag in ["--cni-conf-dir", "--cni-bin-dir"] {
        if let Some(at) = agent.command.iter().position(|w| w == flag) {
            let dir = agent
                .command
                .get(at + 1)
                .with_context(|| format!("the agent's {flag} names no directory"))?;
            command.extend([flag, dir.as_str()]);
        }
    }
    let caps: Vec<&str> = agent.cap_add.iter().map(String::as_str).collect();
    let mut container = container("uninstall", &command, &caps);
    container["volumeMounts"] = json!(mounts);
    container["securityContext"]["seccompProfile"] = json!({"type": "Unconfined"});
    container["securityContext"]["appArmorProfile"] = json!({"type": "Unconfined"});
    Ok(pinned_pod(
        UNINSTALL,
        node,
        json!({
            "hostNetwork": agent_pod.host_network,
            "restartPolicy": "Never",
            "containers": [container],
            "volumes": volumes,
        }),
    ))
}

/// Objects as one stream of documents for `kubectl apply -f -` (JSON is YAML).
pub fn documents(objects: &[Value]) -> String {
    objects
        .iter()
        .map(|o| format!("---\n{o}\n"))
        .collect::<String>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probes_run_the_image_pinned_to_their_node() {
        for pod in [echo("kind-worker"), capture("kind-worker", 45)] {
            assert_eq!(pod["spec"]["nodeName"], "kind-worker");
            assert_eq!(
                pod["spec"]["containers"][0]["image"],
                image::REFERENCE,
                "no other image is pulled"
            );
        }
        assert_eq!(echo("n1")["metadata"]["name"], "xsteer-echo-n1");
        let capture = capture("n1", 45);
        assert_eq!(capture["spec"]["hostNetwork"], true);
        assert_eq!(
            capture["spec"]["containers"][0]["command"],
            json!([
                "xsteer",
                "probe",
                "capture",
                "--interface",
                "eth0",
                "--seconds",
                "45"
            ])
        );
    }

    #[test]
    fn uninstall_gets_the_agents_capabilities_and_node_mounts_only() {
        let agent_pod = AgentPod::load().unwrap();
        let pod = uninstall(&agent_pod, "n1").unwrap();
        let container = &pod["spec"]["containers"][0];
        assert_eq!(
            container["securityContext"]["capabilities"]["add"],
            json!(agent_pod.agent().cap_add)
        );
        let paths: Vec<&str> = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                "/sys/fs/bpf",
                "/var/lib/xsteer",
                "/etc/cni/net.d",
                "/opt/cni/bin"
            ]
        );
        assert_eq!(
            container["command"],
            json!([
                "xsteer",
                "uninstall",
                "--cni-conf-dir",
                "/etc/cni/net.d",
                "--cni-bin-dir",
                "/opt/cni/bin"
            ])
        );
        assert_eq!(
            container["volumeMounts"][0]["mountPropagation"],
            "HostToContainer"
        );
    }

    #[test]
    fn documents_are_separated_for_kubectl() {
        assert_eq!(
            documents(&[json!({"a": 1}), json!({"b": 2})]),
            "---\n{\"a\":1}\n---\n{\"b\":2}\n"
        );
    }
}
