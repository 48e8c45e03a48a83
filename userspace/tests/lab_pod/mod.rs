//! The DaemonSet's agent pod on a node of the lab (`xsteer::lab`), run with podman: the `podman
//! run` line, the config and the volumes' files, all taken from the manifests through
//! `xsteer_kind` — [`AgentPod::load`], [`xsteer_kind::agent::Container::podman_run`], the
//! ConfigMap — never from a copy, so a change to `kind/manifests/` changes what runs.
//!
//! A lab node is a network namespace on a machine shared with other nodes and with the host, and
//! there is no API server: that forces three substitutions, named in [`Substitutions`] and nowhere
//! else (docs/testing.md, "The DaemonSet's pod under podman"):
//!
//! - `hostNetwork`: the node's network is its namespace, so `--network=host` becomes
//!   `--network=ns:/run/netns/<node's namespace>`;
//! - the hostPath volumes: each node has its own directory for each, never the machine's: a
//!   directory on the machine's bpffs for `/sys/fs/bpf`, and one each for `/var/lib/xsteer`,
//!   `/etc/cni/net.d` and `/opt/cni/bin`;
//! - the node source: the config is the ConfigMap's with `node_source = "kubernetes"` replaced by
//!   the node records directory (`nodes_dir`), mounted read-write at [`NODES_DIR`] by one more
//!   `--volume`. `node.name` and `node.ip` stay `"${NODE_NAME}"` and `"${NODE_IP}"`, filled in
//!   by the agent from the environment the DaemonSet gives it; the node's ID and pod CIDR, which
//!   its Node's `spec.podCIDRs` gives on Kubernetes, are reserved in the records directory
//!   before the agent starts, as a control plane assigns them.
//!
//! Everything else is what the DaemonSet says: the command line, the capabilities and security
//! options, the environment (the Downward API's `spec.nodeName` and `status.hostIP` are the lab
//! node's name and address), and the Secret and ConfigMap volumes, written as the kubelet writes
//! them ([`write_volume`]). The test adds only options that change nothing inside the container
//! (where podman keeps its storage, detached, the container's name and log file): see
//! [`PLUMBING_FORBIDDEN`].
//!
//! Used by the end-to-end test that runs it (e2e/podman.rs) and by the host test that holds the
//! line to the DaemonSet's (kind_podman.rs).

#![allow(dead_code)]

use std::{
    fs,
    io::{self, Write as _},
    net::Ipv4Addr,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail, ensure};
use xsteer_kind::{
    agent::{AgentPod, Volume, VolumeSource},
    manifests::Manifests,
    names,
};

/// Where the node records directory is mounted in the agent's container, and what the config's
/// `nodes_dir` names (the node source substitution).
pub const NODES_DIR: &str = "/var/lib/xsteer-nodes";
/// The ConfigMap's node source line, which the lab replaces.
pub const KUBERNETES_SOURCE: &str = "node_source = \"kubernetes\"";
/// The agent's container name prefix; the node's name follows.
pub const CONTAINER_PREFIX: &str = "xsteer-e2e-podman-";
/// The DaemonSet's `--network` option, which the lab replaces.
const HOST_NETWORK: &str = "--network=host";
/// Option prefixes the test's own podman options must never have: each changes what runs in
/// the container, which only the DaemonSet (and the named substitutions) may say.
pub const PLUMBING_FORBIDDEN: &[&str] = &[
    "--network",
    "--net",
    "--cap-add",
    "--cap-drop",
    "--privileged",
    "--security-opt",
    "--seccomp-policy",
    "--read-only",
    "--read-only-tmpfs",
    "--env",
    "-e",
    "--env-file",
    "--env-host",
    "--volume",
    "-v",
    "--volumes-from",
    "--mount",
    "--tmpfs",
    "--device",
    "--user",
    "-u",
    "--group-add",
    "--pid",
    "--ipc",
    "--uts",
    "--userns",
    "--cgroupns",
    "--entrypoint",
    "--workdir",
    "-w",
    "--ulimit",
    "--sysctl",
    "--init",
    "--systemd",
    "--rootfs",
];

/// One lab node as the DaemonSet's pod sees it.
#[derive(Clone, Debug)]
pub struct LabNode {
    /// The node's name: `spec.nodeName`.
    pub name: String,
    /// The node's address: `status.hostIP`.
    pub ip: Ipv4Addr,
    /// The node's network namespace.
    pub netns: String,
    /// The node's own files: its hostPath directories (but bpffs), volumes and agent log.
    pub dir: PathBuf,
    /// The lab's node records directory, shared by every node: the lab's API server.
    pub nodes_dir: PathBuf,
}

impl LabNode {
    /// The podman container of the node's agent.
    pub fn container(&self) -> String {
        format!("{CONTAINER_PREFIX}{}", self.name)
    }

    /// The directory that backs the pod's volume `volume` (not a hostPath) on this node, as the
    /// kubelet's pod directory does.
    pub fn volume_dir(&self, volume: &Volume) -> Result<PathBuf> {
        match volume.source {
            VolumeSource::HostPath { .. } => {
                bail!("{}: a hostPath has no pod directory", volume.name)
            }
            _ => Ok(self.dir.join("volumes").join(&volume.name)),
        }
    }

    /// The Downward API field `field` of the agent's pod on this node.
    pub fn field(&self, field: &str) -> Result<String> {
        match field {
            "spec.nodeName" => Ok(self.name.clone()),
            "status.hostIP" => Ok(self.ip.to_string()),
            other => bail!("the lab gives no value for the field {other}: give it one here"),
        }
    }

    /// The agent's log file (podman's k8s-file driver: the kubelet's log format).
    pub fn log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }
}

/// What a lab node forces on the DaemonSet's pod: the only differences between what the
/// end-to-end test runs and what the DaemonSet runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Substitutions {
    /// `hostNetwork`: `--network=host` becomes this, the node's namespace.
    pub network: String,
    /// Each hostPath (the node's path) and the lab node's own directory for it.
    pub host_paths: Vec<(String, PathBuf)>,
    /// The node source: the records directory and the `--volume` that mounts it at
    /// [`NODES_DIR`], added after the DaemonSet's mounts.
    pub nodes_mount: String,
}

impl Substitutions {
    /// The substitutions of `node`: hostPaths `/sys/fs/bpf`, `/var/lib/xsteer` and the CNI dirs
    /// get the node's own directories; any other hostPath is refused until it is given one
    /// here.
    pub fn of(pod: &AgentPod, node: &LabNode) -> Result<Substitutions> {
        let mut host_paths = Vec::new();
        for volume in &pod.volumes {
            let VolumeSource::HostPath { path, .. } = &volume.source else {
                continue;
            };
            let lab = match path.as_str() {
                // A directory of the machine's bpffs: pins there are real, and each node's are
                // its own.
                "/sys/fs/bpf" => {
                    PathBuf::from(format!("/sys/fs/bpf/xsteer-e2e-podman-{}", node.name))
                }
                "/var/lib/xsteer" => node.dir.join("state"),
                // No main CNI writes a config there: the agent waits for one, and copies the
                // plugin binary into the node's own bin dir.
                "/etc/cni/net.d" => node.dir.join("cni").join("net.d"),
                "/opt/cni/bin" => node.dir.join("cni").join("bin"),
                other => bail!(
                    "hostPath volume {} ({other}) has no lab directory: name one in \
                     userspace/tests/lab_pod/mod.rs, and in docs/testing.md",
                    volume.name
                ),
            };
            host_paths.push((path.clone(), lab));
        }
        Ok(Substitutions {
            network: format!("--network=ns:/run/netns/{}", node.netns),
            host_paths,
            nodes_mount: format!(
                "--volume={}:{NODES_DIR}:rw,rprivate",
                node.nodes_dir.display()
            ),
        })
    }

    /// The lab node's directory for the node's `path` (a hostPath).
    pub fn host_path(&self, path: &str) -> Option<&Path> {
        self.host_paths
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, lab)| lab.as_path())
    }

    /// Applies them to the DaemonSet's `podman run` words.
    pub fn apply(&self, deployed: &[String]) -> Result<Vec<String>> {
        let mut words = Vec::with_capacity(deployed.len() + 1);
        let mut network = false;
        for word in deployed {
            if word == HOST_NETWORK {
                words.push(self.network.clone());
                network = true;
            } else if let Some(mount) = word.strip_prefix("--volume=") {
                let (source, rest) = mount.split_once(':').context("a --volume without ':'")?;
                match self.host_path(source) {
                    Some(lab) => words.push(format!("--volume={}:{rest}", lab.display())),
                    None => words.push(word.clone()),
                }
            } else {
                words.push(word.clone());
            }
        }
        ensure!(
            network,
            "the DaemonSet's line has no {HOST_NETWORK}: the pod is not on the node's network"
        );
        let after_mounts = words
            .iter()
            .rposition(|w| w.starts_with("--volume="))
            .context("the DaemonSet's line mounts nothing")?;
        words.insert(after_mounts + 1, self.nodes_mount.clone());
        Ok(words)
    }
}

/// The `podman run` words of the DaemonSet's agent on `node`, as `Container::podman_run` gives
/// them: no substitution. Starts with `run`.
pub fn deployed(pod: &AgentPod, node: &LabNode) -> Result<Vec<String>> {
    let agent = pod.agent();
    agent.podman_run(pod, &agent.image, &|v| node.volume_dir(v), &|f| {
        node.field(f)
    })
}

/// The `podman run` words the end-to-end test runs the agent with on `node`: the DaemonSet's,
/// substituted. Starts with `run`; the caller's options go right after it.
pub fn lab_run(pod: &AgentPod, node: &LabNode) -> Result<Vec<String>> {
    Substitutions::of(pod, node)?.apply(&deployed(pod, node)?)
}

/// podman as the lab runs it: storage under `root` (a tmpfs in the VM bed: overlayfs does not
/// stack on the guest's overlay root), cgroups without systemd, events in a file (no journald),
/// and runc, the runtime of most Kubernetes nodes (containerd's default).
#[derive(Clone, Debug)]
pub struct Podman {
    /// Where podman keeps its images, containers and state.
    pub root: PathBuf,
}

impl Podman {
    /// The options before podman's subcommand.
    pub fn global(&self) -> Vec<String> {
        let under = |dir: &str| self.root.join(dir).display().to_string();
        vec![
            format!("--root={}", under("storage")),
            format!("--runroot={}", under("run")),
            format!("--tmpdir={}", under("tmp")),
            "--storage-driver=overlay".into(),
            "--cgroup-manager=cgroupfs".into(),
            "--events-backend=file".into(),
            "--runtime=runc".into(),
        ]
    }

    /// The test's own `podman run` options for the agent of `node`: detached, named, never
    /// pulled (the image is loaded from the archive), its log in the kubelet's format in a file.
    /// Nothing here changes what runs in the container ([`PLUMBING_FORBIDDEN`]).
    pub fn plumbing(node: &LabNode) -> Vec<String> {
        vec![
            "--detach".into(),
            format!("--name={}", node.container()),
            "--pull=never".into(),
            "--log-driver=k8s-file".into(),
            format!("--log-opt=path={}", node.log().display()),
        ]
    }

    /// Every word after `podman` that starts the agent of `node`: the global options, `run`,
    /// the plumbing, then the DaemonSet's line as the lab substitutes it ([`lab_run`]).
    pub fn agent(&self, pod: &AgentPod, node: &LabNode) -> Result<Vec<String>> {
        let mut run = lab_run(pod, node)?;
        run.splice(1..1, Podman::plumbing(node));
        let mut words = self.global();
        words.extend(run);
        Ok(words)
    }
}

/// Whether `word` is a podman option that [`PLUMBING_FORBIDDEN`] names.
pub fn is_forbidden(word: &str) -> bool {
    PLUMBING_FORBIDDEN.iter().any(|p| {
        word == *p
            || word
                .strip_prefix(p)
                .is_some_and(|rest| rest.starts_with('='))
    })
}

/// The ConfigMap's data, every entry, as the manifests give it.
pub fn config_map() -> Result<Vec<(String, String)>> {
    let manifests = Manifests::load(&xsteer_kind::manifests_dir())?;
    let map = manifests.get("ConfigMap", names::CONFIG_MAP)?;
    map.value["data"]
        .as_object()
        .context("the ConfigMap has no data")?
        .iter()
        .map(|(k, v)| {
            let text = v
                .as_str()
                .with_context(|| format!("ConfigMap entry {k} is not text"))?;
            Ok((k.clone(), text.to_owned()))
        })
        .collect()
}

/// The config the lab's agents read: the ConfigMap's, with its node source line replaced by
/// `nodes_dir = "NODES_DIR"` (the only change).
pub fn lab_config(deployed: &str) -> Result<String> {
    let lines: Vec<&str> = deployed.lines().collect();
    let at: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].trim() == KUBERNETES_SOURCE)
        .collect();
    ensure!(
        at.len() == 1,
        "the ConfigMap's config has {} lines `{KUBERNETES_SOURCE}`, not one: the lab replaces \
         that line with its node records directory",
        at.len()
    );
    let nodes_dir = format!("nodes_dir = \"{NODES_DIR}\"");
    let mut text = String::new();
    for (i, line) in lines.iter().enumerate() {
        text.push_str(if i == at[0] { &nodes_dir } else { line });
        text.push('\n');
    }
    Ok(text)
}

/// The files of volume `volume` on a lab node, with their mode: the Secret's key file (`keys`,
/// holding `keys`) with the Secret volume's mode, the ConfigMap's entries (the config
/// substituted, [`lab_config`]) with 0644, the kubelet's default; an emptyDir has none.
pub fn volume_files(volume: &Volume, keys: &str) -> Result<(Vec<(String, String)>, u32)> {
    match &volume.source {
        VolumeSource::Secret { name, mode } => {
            ensure!(name == names::KEY_SECRET, "the lab has no Secret {name}");
            Ok((
                vec![(names::KEY_SECRET_ENTRY.to_owned(), keys.to_owned())],
                mode.unwrap_or(0o644),
            ))
        }
        VolumeSource::ConfigMap { name } => {
            ensure!(name == names::CONFIG_MAP, "the lab has no ConfigMap {name}");
            let files = config_map()?
                .into_iter()
                .map(|(entry, text)| {
                    let text = if entry == names::CONFIG_ENTRY {
                        lab_config(&text)?
                    } else {
                        text
                    };
                    Ok((entry, text))
                })
                .collect::<Result<_>>()?;
            Ok((files, 0o644))
        }
        VolumeSource::EmptyDir { .. } => Ok((Vec::new(), 0o755)),
        VolumeSource::HostPath { .. } => bail!("{}: a hostPath is no pod volume", volume.name),
    }
}

/// Writes a Secret or ConfigMap volume into `dir` as the kubelet does (its AtomicWriter): the
/// files, with `mode`, in a new timestamped directory `..2026_12_02_03_56_41.123456789`; the
/// symlink `..data_tmp` to it, renamed over `..data` (the one atomic step); each file a symlink
/// `NAME -> ..data/NAME`; the previous timestamped directory removed. Returns the new
/// directory's name.
pub fn write_volume(dir: &Path, files: &[(String, String)], mode: u32) -> io::Result<String> {
    fs::create_dir_all(dir)?;
    let data = dir.join("..data");
    let old = fs::read_link(&data).ok();
    let stamp = timestamp_dir();
    let new = dir.join(&stamp);
    fs::create_dir(&new)?;
    fs::set_permissions(&new, fs::Permissions::from_mode(0o755))?;
    for (name, text) in files {
        let path = new.join(name);
        let mut file = fs::File::create(&path)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp);
    symlink(&stamp, &tmp)?;
    fs::rename(&tmp, &data)?;
    for (name, _) in files {
        let visible = dir.join(name);
        if fs::symlink_metadata(&visible).is_err() {
            symlink(Path::new("..data").join(name), &visible)?;
        }
    }
    if let Some(old) = old {
        for entry in fs::read_dir(dir.join(&old))? {
            let name = entry?.file_name();
            if !files.iter().any(|(f, _)| name == f.as_str()) {
                let _ = fs::remove_file(dir.join(&name));
            }
        }
        fs::remove_dir_all(dir.join(old))?;
    }
    Ok(stamp)
}

/// `..YYYY_MM_DD_HH_MM_SS.NNNNNNNNN`, UTC, as the kubelet names its volume directories.
fn timestamp_dir() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "..{year:04}_{month:02}_{day:02}_{:02}_{:02}_{:02}.{:09}",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60,
        now.subsec_nanos()
    )
}
