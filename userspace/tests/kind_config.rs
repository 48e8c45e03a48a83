//! The kind deployment's config, read from its ConfigMap with the environment the DaemonSet
//! gives the agent: what the agent will run with, and how it fits the rest of the manifests.

// Test helpers unwrap like tests do: a failure is the test's failure.
#![allow(clippy::unwrap_used)]

use xsteer::{
    config::{Config, NodeRecords},
    nodes::kubernetes::Settings,
};
use xsteer_kind::{
    agent::{AgentPod, EnvSource, VolumeSource},
    manifests::{self, Manifests},
    names,
};

fn config_text() -> String {
    let manifests = Manifests::load(&xsteer_kind::manifests_dir()).unwrap();
    let map = manifests.get("ConfigMap", names::CONFIG_MAP).unwrap();
    map.value["data"][names::CONFIG_ENTRY]
        .as_str()
        .expect("the ConfigMap holds the config")
        .to_owned()
}

/// The environment the DaemonSet gives the agent on node kind-worker: each Downward API field
/// it names, with kind's values.
fn agent_env(name: &str) -> Option<String> {
    let pod = AgentPod::load().unwrap();
    let env = pod.agent().env.iter().find(|e| e.name == name)?;
    match &env.source {
        EnvSource::Value(value) => Some(value.clone()),
        EnvSource::Field(field) => match field.as_str() {
            "spec.nodeName" => Some("kind-worker".into()),
            "status.hostIP" => Some("172.18.0.3".into()),
            other => panic!("{name} comes from {other}, which this test does not know"),
        },
    }
}

fn config() -> Config {
    Config::parse_with_env(&config_text(), &agent_env).unwrap()
}

#[test]
fn the_agent_accepts_the_config_with_the_daemonsets_environment() {
    let config = config();
    assert_eq!(config.node_records, NodeRecords::Kubernetes);
    assert_eq!(config.node.name, "kind-worker");
    assert_eq!(config.node.ip.to_string(), "172.18.0.3");
    assert_eq!(config.node.identity(), None, "the ID comes from the Node");
    assert_eq!(config.node.epoch, None, "each node draws its own");

    // The key file is the Secret's entry where the agent mounts the Secret.
    let pod = AgentPod::load().unwrap();
    let keys = pod
        .agent()
        .mounts
        .iter()
        .find(|m| {
            matches!(&pod.volume(&m.volume).unwrap().source,
                     VolumeSource::Secret { name, .. } if name == names::KEY_SECRET)
        })
        .expect("the agent mounts the key Secret");
    assert_eq!(
        config.key_file.to_str(),
        Some(format!("{}/{}", keys.path, names::KEY_SECRET_ENTRY).as_str())
    );

    // The agent reads the ConfigMap where the DaemonSet mounts it.
    let mount = pod
        .agent()
        .mounts
        .iter()
        .find(|m| {
            matches!(&pod.volume(&m.volume).unwrap().source,
                     VolumeSource::ConfigMap { name } if name == names::CONFIG_MAP)
        })
        .expect("the agent mounts the ConfigMap");
    assert_eq!(
        format!("{}/{}", mount.path, names::CONFIG_ENTRY),
        names::CONFIG_PATH
    );
    assert!(pod.agent().command.iter().any(|w| w == names::CONFIG_PATH));
}

#[test]
fn node_ids_are_counted_in_the_kind_clusters_pod_subnet() {
    let cluster = manifests::read(&xsteer_kind::cluster_config()).unwrap();
    let subnet = cluster[0].value["networking"]["podSubnet"]
        .as_str()
        .unwrap();
    assert_eq!(Settings::of(&config()).cluster.to_string(), subnet);
}

#[test]
fn every_variable_in_the_config_is_set_by_the_daemonset() {
    let text = config_text();
    for part in text.split("${").skip(1) {
        let name = part.split('}').next().unwrap();
        assert!(
            agent_env(name).is_some(),
            "${{{name}}} is not in the agent's environment"
        );
    }
}
