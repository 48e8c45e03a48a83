//! The agent's pod, as the DaemonSet describes it: containers, their command lines,
//! capabilities, environment and mounts, and the volumes behind the mounts.
//!
//! Only what the DaemonSet uses is modelled; anything else in a container or a volume is an
//! error rather than silently left out, so a test that runs the description never runs less
//! than what is deployed.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    manifests::Manifests,
    names::{AGENT_CONTAINER, DAEMONSET},
};

/// The DaemonSet's pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPod {
    /// `hostNetwork`.
    pub host_network: bool,
    /// The containers.
    pub containers: Vec<Container>,
    /// The volumes.
    pub volumes: Vec<Volume>,
}

/// A container of the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// Its name.
    pub name: String,
    /// Its image.
    pub image: String,
    /// `command` then `args`: the whole command line, as the container runs it.
    pub command: Vec<String>,
    /// How many of `command`'s words are the manifest's `command` (the rest are `args`).
    pub entrypoint_len: usize,
    /// Its environment.
    pub env: Vec<Env>,
    /// Capabilities dropped (`ALL`).
    pub cap_drop: Vec<String>,
    /// Capabilities added, as the manifest names them (`NET_ADMIN`).
    pub cap_add: Vec<String>,
    /// `readOnlyRootFilesystem`.
    pub read_only_root: bool,
    /// `allowPrivilegeEscalation: false`, the no_new_privs bit.
    pub no_new_privileges: bool,
    /// The seccomp profile: `true` for the runtime's default, `false` for none (Unconfined,
    /// also what the kubelet gives a container that names no profile).
    pub seccomp_runtime_default: bool,
    /// The AppArmor profile: `true` for the runtime's default (also what a container that names
    /// none gets on a host with AppArmor), `false` for Unconfined.
    pub apparmor_runtime_default: bool,
    /// Its mounts, in order.
    pub mounts: Vec<Mount>,
}

/// An environment variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    /// Its name.
    pub name: String,
    /// Where its value comes from.
    pub source: EnvSource,
}

/// Where an environment variable's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvSource {
    /// A literal value.
    Value(String),
    /// A field of the pod (the Downward API), e.g. `spec.nodeName`.
    Field(String),
}

/// A volume mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The volume's name.
    pub volume: String,
    /// Where it is mounted in the container.
    pub path: String,
    /// Read-only.
    pub read_only: bool,
    /// Mount propagation.
    pub propagation: Propagation,
}

/// Mount propagation between the host and the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// None (Kubernetes' default): private.
    None,
    /// Mounts made on the host later show up in the container (rslave).
    HostToContainer,
    /// Both ways (rshared); Kubernetes allows it only in privileged containers.
    Bidirectional,
}

/// A volume of the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// Its name.
    pub name: String,
    /// What it is.
    pub source: VolumeSource,
}

/// What a volume is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeSource {
    /// A directory of the node.
    HostPath {
        /// The path on the node.
        path: String,
        /// `type` (`Directory`, `DirectoryOrCreate`, ...), if given.
        kind: Option<String>,
    },
    /// A Secret's entries as files.
    Secret {
        /// The Secret.
        name: String,
        /// The files' mode.
        mode: Option<u32>,
    },
    /// A ConfigMap's entries as files.
    ConfigMap {
        /// The ConfigMap.
        name: String,
    },
    /// An empty directory for the pod's life.
    EmptyDir {
        /// In memory (tmpfs).
        memory: bool,
    },
}

impl AgentPod {
    /// The pod of the DaemonSet in the manifests in kind/manifests.
    pub fn load() -> Result<AgentPod> {
        AgentPod::from_manifests(&Manifests::load(&crate::manifests_dir())?)
    }

    /// The pod of the DaemonSet in `manifests`.
    pub fn from_manifests(manifests: &Manifests) -> Result<AgentPod> {
        let daemonset = manifests.get("DaemonSet", DAEMONSET)?;
        let spec = &daemonset.value["spec"]["template"]["spec"];
        let context = || format!("DaemonSet {DAEMONSET} in {}", daemonset.file.display());
        pod(spec).with_context(context)
    }

    /// The agent's container.
    pub fn agent(&self) -> &Container {
        self.find(AGENT_CONTAINER)
            .expect("checked when the pod was read")
    }

    /// A container by name.
    pub fn find(&self, name: &str) -> Option<&Container> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// A volume by name.
    pub fn volume(&self, name: &str) -> Option<&Volume> {
        self.volumes.iter().find(|v| v.name == name)
    }
}

impl Container {
    /// The `podman run` options that run this container as the kubelet would, in order: host
    /// network, capabilities, read-only root, no_new_privs, environment, mounts, entrypoint;
    /// then the image and the arguments. Nothing else: the caller adds its own options (`--rm`,
    /// `--name`, `-d`) after `run`.
    ///
    /// `volume` gives the host directory for a volume that is not a hostPath (a Secret's files,
    /// a ConfigMap's, an emptyDir); `field` the value of a Downward API field
    /// (`spec.nodeName`).
    pub fn podman_run(
        &self,
        pod: &AgentPod,
        image: &str,
        volume: &dyn Fn(&Volume) -> Result<PathBuf>,
        field: &dyn Fn(&str) -> Result<String>,
    ) -> Result<Vec<String>> {
        let mut args: Vec<String> = vec!["run".into()];
        args.extend(self.podman_security(pod));
        for env in &self.env {
            let value = match &env.source {
                EnvSource::Value(value) => value.clone(),
                EnvSource::Field(path) => {
                    field(path).with_context(|| format!("{}: the value of {path}", env.name))?
                }
            };
            args.push(format!("--env={}={value}", env.name));
        }
        for mount in &self.mounts {
            let backing = pod.volume(&mount.volume).with_context(|| {
                format!("{}: no volume {:?} in the pod", self.name, mount.volume)
            })?;
            let source = match &backing.source {
                VolumeSource::HostPath { path, .. } => PathBuf::from(path),
                _ => volume(backing).with_context(|| format!("volume {}", backing.name))?,
            };
            let mut options = vec![if mount.read_only { "ro" } else { "rw" }];
            options.push(match mount.propagation {
                Propagation::None => "rprivate",
                Propagation::HostToContainer => "rslave",
                Propagation::Bidirectional => "rshared",
            });
            args.push(format!(
                "--volume={}:{}:{}",
                source.display(),
                mount.path,
                options.join(",")
            ));
        }
        let (entrypoint, rest) = self.command.split_at(self.entrypoint_len);
        if !entrypoint.is_empty() {
            args.push(format!("--entrypoint={}", Value::from(entrypoint.to_vec())));
        }
        args.push(image.to_owned());
        args.extend(rest.iter().cloned());
        Ok(args)
    }
}

impl Container {
    /// The `podman run` options for this container's network, capabilities, read-only root and
    /// security profiles: [`Container::podman_run`] without environment, mounts or command.
    pub fn podman_security(&self, pod: &AgentPod) -> Vec<String> {
        let mut args = Vec::new();
        if pod.host_network {
            args.push("--network=host".into());
        }
        for cap in &self.cap_drop {
            args.push(format!("--cap-drop={cap}"));
        }
        for cap in &self.cap_add {
            args.push(format!("--cap-add={cap}"));
        }
        if self.read_only_root {
            // Kubernetes mounts no tmpfs of its own on a read-only root; podman would.
            args.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
        }
        if self.no_new_privileges {
            args.push("--security-opt=no-new-privileges".into());
        }
        if !self.seccomp_runtime_default {
            args.push("--security-opt=seccomp=unconfined".into());
        }
        if !self.apparmor_runtime_default {
            args.push("--security-opt=apparmor=unconfined".into());
        }
        args
    }
}

/// The keys of the pod spec the description models or that do not change how a container runs
/// on its node; any other is refused.
const POD_KEYS: &[&str] = &[
    "serviceAccountName",
    "hostNetwork",
    "priorityClassName",
    "tolerations",
    "terminationGracePeriodSeconds",
    "containers",
    "volumes",
];

fn pod(spec: &Value) -> Result<AgentPod> {
    unknown_keys(spec, POD_KEYS).context("the pod")?;
    let containers = |key: &str| -> Result<Vec<Container>> {
        spec[key]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(container)
            .collect()
    };
    let pod = AgentPod {
        host_network: spec["hostNetwork"].as_bool().unwrap_or(false),
        containers: containers("containers")?,
        volumes: spec["volumes"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(volume)
            .collect::<Result<_>>()?,
    };
    if pod.find(AGENT_CONTAINER).is_none() {
        bail!("no container named {AGENT_CONTAINER:?}");
    }
    for container in &pod.containers {
        for mount in &container.mounts {
            if pod.volume(&mount.volume).is_none() {
                bail!(
                    "container {}: mount of {:?}, which is no volume of the pod",
                    container.name,
                    mount.volume
                );
            }
        }
    }
    Ok(pod)
}

/// The keys of a container the description models; any other is refused.
const CONTAINER_KEYS: &[&str] = &[
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "env",
    "securityContext",
    "volumeMounts",
    "livenessProbe",
    "readinessProbe",
    "resources",
];

fn container(value: &Value) -> Result<Container> {
    let name = string(value, "name")?;
    container_fields(name.clone(), value).with_context(|| format!("container {name}"))
}

fn container_fields(name: String, value: &Value) -> Result<Container> {
    unknown_keys(value, CONTAINER_KEYS)?;
    let security = &value["securityContext"];
    unknown_keys(
        security,
        &[
            "capabilities",
            "allowPrivilegeEscalation",
            "readOnlyRootFilesystem",
            "seccompProfile",
            "appArmorProfile",
        ],
    )?;
    let profile = |key: &str, default: &str| -> Result<bool> {
        match security[key]["type"].as_str().unwrap_or(default) {
            "RuntimeDefault" => Ok(true),
            "Unconfined" => Ok(false),
            other => bail!("{key} {other:?}: only RuntimeDefault and Unconfined are modelled"),
        }
    };
    let entrypoint = strings(&value["command"])?;
    let mut command = entrypoint.clone();
    command.extend(strings(&value["args"])?);
    let list = |key: &str| value[key].as_array().map(Vec::as_slice).unwrap_or_default();
    Ok(Container {
        name,
        image: string(value, "image")?,
        entrypoint_len: entrypoint.len(),
        command,
        env: list("env").iter().map(env).collect::<Result<_>>()?,
        cap_drop: strings(&security["capabilities"]["drop"])?,
        cap_add: strings(&security["capabilities"]["add"])?,
        read_only_root: security["readOnlyRootFilesystem"].as_bool() == Some(true),
        no_new_privileges: security["allowPrivilegeEscalation"].as_bool() == Some(false),
        seccomp_runtime_default: profile("seccompProfile", "Unconfined")?,
        apparmor_runtime_default: profile("appArmorProfile", "RuntimeDefault")?,
        mounts: list("volumeMounts")
            .iter()
            .map(mount)
            .collect::<Result<_>>()?,
    })
}

fn env(value: &Value) -> Result<Env> {
    let name = string(value, "name")?;
    let source = match (
        &value["value"],
        &value["valueFrom"]["fieldRef"]["fieldPath"],
    ) {
        (Value::String(v), Value::Null) => EnvSource::Value(v.clone()),
        (Value::Null, Value::String(path)) => EnvSource::Field(path.clone()),
        _ => bail!("env {name}: only a value or a fieldRef is modelled"),
    };
    Ok(Env { name, source })
}

fn mount(value: &Value) -> Result<Mount> {
    unknown_keys(
        value,
        &["name", "mountPath", "readOnly", "mountPropagation"],
    )?;
    let propagation = match value["mountPropagation"].as_str() {
        None | Some("None") => Propagation::None,
        Some("HostToContainer") => Propagation::HostToContainer,
        Some("Bidirectional") => Propagation::Bidirectional,
        Some(other) => {
            bail!("mountPropagation {other:?} is none of None, HostToContainer, Bidirectional")
        }
    };
    Ok(Mount {
        volume: string(value, "name")?,
        path: string(value, "mountPath")?,
        read_only: value["readOnly"].as_bool().unwrap_or(false),
        propagation,
    })
}

fn volume(value: &Value) -> Result<Volume> {
    let name = string(value, "name")?;
    let source = if let Some(host) = value.get("hostPath") {
        VolumeSource::HostPath {
            path: string(host, "path")?,
            kind: host["type"].as_str().map(str::to_owned),
        }
    } else if let Some(secret) = value.get("secret") {
        unknown_keys(secret, &["secretName", "defaultMode"])?;
        VolumeSource::Secret {
            name: string(secret, "secretName")?,
            mode: secret["defaultMode"].as_u64().map(|m| m as u32),
        }
    } else if let Some(map) = value.get("configMap") {
        unknown_keys(map, &["name"])?;
        VolumeSource::ConfigMap {
            name: string(map, "name")?,
        }
    } else if let Some(dir) = value.get("emptyDir") {
        VolumeSource::EmptyDir {
            memory: dir["medium"].as_str() == Some("Memory"),
        }
    } else {
        bail!("volume {name}: only hostPath, secret, configMap and emptyDir are modelled");
    };
    Ok(Volume { name, source })
}

fn string(value: &Value, key: &str) -> Result<String> {
    value[key]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("{key} is missing or not a string"))
}

fn strings(value: &Value) -> Result<Vec<String>> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .with_context(|| format!("{item} is not a string"))
            })
            .collect(),
        other => bail!("{other} is not a list of strings"),
    }
}

fn unknown_keys(value: &Value, known: &[&str]) -> Result<()> {
    if let Some(object) = value.as_object()
        && let Some(key) = object.keys().find(|k| !known.contains(&k.as_str()))
    {
        bail!("{key:?} is not modelled here (kind/src/agent.rs): model it or leave it out");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{image, names};

    fn pod() -> AgentPod {
        AgentPod::load().unwrap()
    }

    #[test]
    fn the_agent_runs_the_images_default_command() {
        let pod = pod();
        let agent = pod.agent();
        let expected: Vec<&str> = image::ENTRYPOINT
            .iter()
            .chain(image::CMD)
            .copied()
            .collect();
        assert_eq!(agent.command, expected);
        assert_eq!(agent.entrypoint_len, image::ENTRYPOINT.len());
        for container in &pod.containers {
            assert_eq!(container.image, image::REFERENCE, "{}", container.name);
        }
        assert!(agent.command.iter().any(|w| w == names::CONFIG_PATH));
    }

    #[test]
    fn the_agent_has_the_least_capabilities_and_nothing_else() {
        let pod = pod();
        assert!(pod.host_network);
        let agent = pod.agent();
        assert_eq!(agent.cap_drop, ["ALL"]);
        assert_eq!(agent.cap_add, ["BPF", "PERFMON", "NET_ADMIN"]);
        assert!(agent.read_only_root && agent.no_new_privileges);
        assert!(!agent.seccomp_runtime_default && !agent.apparmor_runtime_default);
    }

    #[test]
    fn the_agent_mounts_bpffs_state_keys_and_its_config() {
        let pod = pod();
        let agent = pod.agent();
        let mount = |path: &str| {
            let m = agent
                .mounts
                .iter()
                .find(|m| m.path == path)
                .unwrap_or_else(|| panic!("no mount at {path}"));
            (m, pod.volume(&m.volume).unwrap())
        };
        let (bpffs, volume) = mount("/sys/fs/bpf");
        assert_eq!(bpffs.propagation, Propagation::HostToContainer);
        assert!(
            matches!(&volume.source, VolumeSource::HostPath { path, .. } if path == "/sys/fs/bpf")
        );
        let (state, volume) = mount("/var/lib/xsteer");
        assert!(!state.read_only);
        assert!(matches!(volume.source, VolumeSource::HostPath { .. }));
        let (keys, volume) = mount("/etc/ipsec");
        assert!(keys.read_only);
        assert_eq!(
            volume.source,
            VolumeSource::Secret {
                name: names::KEY_SECRET.into(),
                mode: Some(0o400)
            }
        );
        let (config, _) = mount("/etc/xsteer");
        assert!(config.read_only);
        // The CNI dirs, at the node's own paths, named to the agent by its flags.
        for (flag, path) in [
            ("--cni-conf-dir", names::CNI_CONF_DIR),
            ("--cni-bin-dir", names::CNI_BIN_DIR),
        ] {
            let (cni, volume) = mount(path);
            assert!(!cni.read_only);
            assert_eq!(
                volume.source,
                VolumeSource::HostPath {
                    path: path.into(),
                    kind: Some("DirectoryOrCreate".into())
                }
            );
            let at = agent.command.iter().position(|w| w == flag).unwrap();
            assert_eq!(agent.command[at + 1], path, "{flag}");
        }
    }

    #[test]
    fn podman_runs_the_agent_with_the_manifests_capabilities_mounts_and_command() {
        let pod = pod();
        let args = pod
            .agent()
            .podman_run(
                &pod,
                "localhost/xsteer:dev",
                &|v| Ok(PathBuf::from("/scratch").join(&v.name)),
                &|field| match field {
                    "spec.nodeName" => Ok("node-a".into()),
                    "status.hostIP" => Ok("192.168.0.1".into()),
                    other => anyhow::bail!("no {other}"),
                },
            )
            .unwrap();
        let expected = [
            "run",
            "--network=host",
            "--cap-drop=ALL",
            "--cap-add=BPF",
            "--cap-add=PERFMON",
            "--cap-add=NET_ADMIN",
            "--read-only",
            "--read-only-tmpfs=false",
            "--security-opt=no-new-privileges",
            "--security-opt=seccomp=unconfined",
            "--security-opt=apparmor=unconfined",
            "--env=NODE_NAME=node-a",
            "--env=NODE_IP=192.168.0.1",
            "--volume=/sys/fs/bpf:/sys/fs/bpf:rw,rslave",
            "--volume=/var/lib/xsteer:/var/lib/xsteer:rw,rprivate",
            "--volume=/scratch/keys:/etc/ipsec:ro,rprivate",
            "--volume=/scratch/config:/etc/xsteer:ro,rprivate",
            "--volume=/etc/cni/net.d:/etc/cni/net.d:rw,rprivate",
            "--volume=/opt/cni/bin:/opt/cni/bin:rw,rprivate",
            r#"--entrypoint=["xsteer"]"#,
            "localhost/xsteer:dev",
            "agent",
            "--config",
            "/etc/xsteer/xsteer.toml",
            "--cni-conf-dir",
            "/etc/cni/net.d",
            "--cni-bin-dir",
            "/opt/cni/bin",
        ];
        assert_eq!(args, expected);
    }

    #[test]
    fn what_is_not_modelled_is_refused_not_left_out() {
        let pristine = Manifests::load(&crate::manifests_dir()).unwrap();
        let refused = |path: &[&str], key: &str| {
            let mut manifests = pristine.clone();
            let resource = manifests
                .resources
                .iter_mut()
                .find(|r| r.kind() == "DaemonSet")
                .unwrap();
            let mut at = &mut resource.value;
            for step in path {
                at = match step.parse::<usize>() {
                    Ok(i) => &mut at[i],
                    Err(_) => &mut at[*step],
                };
            }
            at[key] = Value::Bool(true);
            let err = format!("{:#}", AgentPod::from_manifests(&manifests).unwrap_err());
            assert!(err.contains(&format!("{key:?} is not modelled")), "{err}");
        };
        let pod = ["spec", "template", "spec"];
        refused(
            &[&pod[..], &["containers", "0", "securityContext"]].concat(),
            "privileged",
        );
        refused(&pod, "hostPID");
        refused(&pod, "initContainers");
    }
}
