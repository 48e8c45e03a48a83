//! No drift between the DaemonSet and the end-to-end test that runs its pod under podman on the
//! lab's nodes (e2e/podman.rs): the `podman run` line that test uses is
//! `Container::podman_run`'s for the DaemonSet but for exactly the substitutions a lab node
//! forces (lab_pod/mod.rs, docs/testing.md), and its config is the ConfigMap's but for the node
//! source line. Runs on the host: nothing here needs a kernel.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod lab_pod;

use std::{fs, os::unix::fs::PermissionsExt, path::PathBuf};

use lab_pod::{LabNode, NODES_DIR, Podman, Substitutions};
use xsteer::{
    config::{Config, NodeRecords},
    lab::topology::{self, Size},
};
use xsteer_kind::{
    agent::{AgentPod, VolumeSource},
    names,
};

/// Node 2 of the 3-node lab, as the end-to-end test makes it.
fn node() -> LabNode {
    let nodes = topology::plan(Size { nodes: 3, pods: 2 });
    let lab = &nodes[1];
    LabNode {
        name: lab.name.clone(),
        ip: lab.ip,
        netns: lab.netns.clone(),
        dir: PathBuf::from("/tmp/xsteer-e2e-podman/node2"),
        nodes_dir: PathBuf::from("/tmp/xsteer-e2e-podman/nodes"),
    }
}

#[test]
fn the_lab_runs_the_daemonsets_podman_line_but_for_the_named_substitutions() {
    let pod = AgentPod::load().unwrap();
    let node = node();
    let deployed = lab_pod::deployed(&pod, &node).unwrap();
    let lab = lab_pod::lab_run(&pod, &node).unwrap();

    // The DaemonSet's own line, from the description of the manifests.
    let agent = pod.agent();
    let expected = agent
        .podman_run(
            &pod,
            &agent.image,
            &|v| Ok(node.dir.join("volumes").join(&v.name)),
            &|f| match f {
                "spec.nodeName" => Ok("node2".into()),
                "status.hostIP" => Ok("192.168.100.2".into()),
                other => anyhow::bail!("no {other}"),
            },
        )
        .unwrap();
    assert_eq!(deployed, expected);

    // One word more: the node records directory's mount, right after the DaemonSet's mounts.
    let nodes_mount = format!("--volume=/tmp/xsteer-e2e-podman/nodes:{NODES_DIR}:rw,rprivate");
    assert_eq!(lab.len(), deployed.len() + 1, "{lab:#?}");
    let added = lab.iter().position(|w| *w == nodes_mount).unwrap();
    assert!(deployed[added - 1].starts_with("--volume="));
    assert!(!deployed[added].starts_with("--volume="));
    let mut without = lab.clone();
    without.remove(added);

    // Every other word is the DaemonSet's, but the network and the hostPath mounts' sources.
    let lab_dirs = [
        ("/sys/fs/bpf", "/sys/fs/bpf/xsteer-e2e-podman-node2"),
        ("/var/lib/xsteer", "/tmp/xsteer-e2e-podman/node2/state"),
        ("/etc/cni/net.d", "/tmp/xsteer-e2e-podman/node2/cni/net.d"),
        ("/opt/cni/bin", "/tmp/xsteer-e2e-podman/node2/cni/bin"),
    ];
    let mut substituted = Vec::new();
    for (d, l) in deployed.iter().zip(&without).filter(|(d, l)| d != l) {
        if d == "--network=host" {
            assert_eq!(l, "--network=ns:/run/netns/xsl-node2");
            substituted.push("hostNetwork".to_owned());
            continue;
        }
        let (source, rest) = d
            .strip_prefix("--volume=")
            .and_then(|m| m.split_once(':'))
            .unwrap_or_else(|| panic!("{d} became {l}: not a documented substitution"));
        let (_, lab_dir) = lab_dirs
            .iter()
            .find(|(path, _)| *path == source)
            .unwrap_or_else(|| panic!("{d} became {l}: not a documented substitution"));
        assert_eq!(*l, format!("--volume={lab_dir}:{rest}"));
        substituted.push(source.to_owned());
    }
    // ... one for hostNetwork, one for each hostPath the agent mounts.
    let mut expected = vec!["hostNetwork".to_owned()];
    for mount in &agent.mounts {
        if let Some(VolumeSource::HostPath { path, .. }) =
            pod.volume(&mount.volume).map(|v| &v.source)
        {
            expected.push(path.clone());
        }
    }
    assert_eq!(substituted, expected, "{lab:#?}");
    let subs = Substitutions::of(&pod, &node).unwrap();
    assert_eq!(subs.network, "--network=ns:/run/netns/xsl-node2");
    assert_eq!(subs.host_paths.len(), expected.len() - 1);

    // The words that say what runs are the DaemonSet's: its capabilities, its command.
    for word in [
        "--cap-drop=ALL",
        "--cap-add=BPF",
        "--cap-add=PERFMON",
        "--cap-add=NET_ADMIN",
        "--read-only",
        "--env=NODE_NAME=node2",
        "--env=NODE_IP=192.168.100.2",
    ] {
        assert!(lab.iter().any(|w| w == word), "{word} missing: {lab:#?}");
    }
    assert!(lab.ends_with(&agent.command[agent.entrypoint_len..]));
}

#[test]
fn the_tests_own_podman_options_change_nothing_in_the_container() {
    let pod = AgentPod::load().unwrap();
    let node = node();
    let podman = Podman {
        root: PathBuf::from("/run/xsteer-e2e-podman"),
    };
    let words = podman.agent(&pod, &node).unwrap();
    let global = podman.global();
    let plumbing = Podman::plumbing(&node);
    let lab = lab_pod::lab_run(&pod, &node).unwrap();
    // podman GLOBAL.. run PLUMBING.. then the substituted DaemonSet line, whole.
    assert_eq!(words[..global.len()], global[..]);
    assert_eq!(words[global.len()], "run");
    let rest = &words[global.len() + 1..];
    assert_eq!(rest[..plumbing.len()], plumbing[..]);
    assert_eq!(rest[plumbing.len()..], lab[1..]);
    for word in global.iter().chain(&plumbing) {
        assert!(!lab_pod::is_forbidden(word), "{word}");
    }
    // The check itself catches what it must.
    for word in [
        "--cap-add=SYS_ADMIN",
        "--privileged",
        "-v",
        "--network=host",
        "--env=X=1",
    ] {
        assert!(lab_pod::is_forbidden(word), "{word}");
    }
    assert!(!lab_pod::is_forbidden("--events-backend=file"));
}

#[test]
fn a_hostpath_the_lab_has_no_directory_for_is_refused() {
    let mut pod = AgentPod::load().unwrap();
    pod.volumes.push(xsteer_kind::agent::Volume {
        name: "modules".into(),
        source: VolumeSource::HostPath {
            path: "/lib/modules".into(),
            kind: None,
        },
    });
    let err = format!("{:#}", Substitutions::of(&pod, &node()).unwrap_err());
    assert!(
        err.contains("hostPath volume modules (/lib/modules) has no lab directory"),
        "{err}"
    );
}

#[test]
fn the_lab_config_is_the_config_maps_but_for_the_node_source() {
    let (entry, deployed) = lab_pod::config_map()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == names::CONFIG_ENTRY)
        .unwrap();
    assert_eq!(entry, names::CONFIG_ENTRY);
    let lab = lab_pod::lab_config(&deployed).unwrap();
    let differing: Vec<(&str, &str)> = deployed
        .lines()
        .zip(lab.lines())
        .filter(|(d, l)| d != l)
        .collect();
    assert_eq!(
        differing,
        [(
            "node_source = \"kubernetes\"",
            "nodes_dir = \"/var/lib/xsteer-nodes\""
        )]
    );
    assert_eq!(deployed.lines().count(), lab.lines().count());

    // The agent accepts it with the environment the DaemonSet gives it on the lab node.
    let env = |name: &str| match name {
        "NODE_NAME" => Some("node2".to_owned()),
        "NODE_IP" => Some("192.168.100.2".to_owned()),
        _ => None,
    };
    let config = Config::parse_with_env(&lab, &env).unwrap();
    assert_eq!(config.node_records, NodeRecords::Dir(NODES_DIR.into()));
    assert_eq!(config.node.name, "node2");
    assert_eq!(
        config.node.identity(),
        None,
        "reserved for it in the records directory"
    );
    assert_eq!(config.node.epoch, None, "drawn by the agent");
}

#[test]
fn volumes_are_written_and_swapped_as_the_kubelet_does() {
    let dir = std::env::temp_dir().join(format!("xsteer-kubelet-volume-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let files = |text: &str| vec![("keys".to_owned(), text.to_owned())];
    let first = lab_pod::write_volume(&dir, &files("one\n"), 0o400).unwrap();
    assert!(first.starts_with("..") && first.len() == "..2026_12_02_03_56_41.123456789".len());
    assert_eq!(
        fs::read_link(dir.join("..data")).unwrap(),
        PathBuf::from(&first)
    );
    assert_eq!(
        fs::read_link(dir.join("keys")).unwrap(),
        PathBuf::from("..data/keys")
    );
    assert_eq!(fs::read_to_string(dir.join("keys")).unwrap(), "one\n");
    let mode = fs::metadata(dir.join(&first).join("keys"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o400);

    let second = lab_pod::write_volume(&dir, &files("two\n"), 0o400).unwrap();
    assert_ne!(first, second);
    assert_eq!(fs::read_to_string(dir.join("keys")).unwrap(), "two\n");
    assert!(!dir.join(&first).exists(), "the old directory goes");
    assert!(!dir.join("..data_tmp").exists());
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut expected = vec!["..data".to_owned(), second, "keys".to_owned()];
    expected.sort();
    assert_eq!(names, expected);
    let _ = fs::remove_dir_all(&dir);
}
