//! The command lines `cargo xtask kind` runs: kind, docker and kubectl, built here as plain
//! lists of words so that tests can read exactly what would run, and run by [`run`] and
//! [`run_quiet`].
//!
//! Every kubectl command names its context, so a user's current context is never what
//! decides which cluster is changed.

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use xsteer_kind::names::{DAEMONSET, KEY_SECRET, KEY_SECRET_ENTRY, NAMESPACE};

/// A command line: the program, then its arguments.
pub type Line = Vec<String>;

fn line(words: &[&str]) -> Line {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// The kind cluster's name, unless `--name` gives another.
pub const CLUSTER: &str = "xsteer";

/// `kind create cluster` from the config in kind/.
pub fn create_cluster(name: &str, config: &Path) -> Line {
    let mut l = line(&["kind", "create", "cluster", "--name", name, "--config"]);
    l.push(config.display().to_string());
    l.extend(line(&["--wait", "180s"]));
    l
}

/// `kind delete cluster`.
pub fn delete_cluster(name: &str) -> Line {
    line(&["kind", "delete", "cluster", "--name", name])
}

/// The names of the kind clusters, one a line.
pub fn clusters() -> Line {
    line(&["kind", "get", "clusters"])
}

/// The cluster's node containers, one a line.
pub fn nodes(name: &str) -> Line {
    line(&["kind", "get", "nodes", "--name", name])
}

/// Loads the image archive into every node's containerd.
pub fn load_image(name: &str, archive: &Path) -> Line {
    let mut l = line(&["kind", "load", "image-archive", "--name", name]);
    l.push(archive.display().to_string());
    l
}

/// The filesystem type at /sys/fs/bpf in a node container (`bpf_fs` when bpffs is mounted).
pub fn bpffs_type(node: &str) -> Line {
    line(&[
        "docker",
        "exec",
        node,
        "stat",
        "-f",
        "-c",
        "%T",
        "/sys/fs/bpf",
    ])
}

/// Mounts bpffs at /sys/fs/bpf in a node container, where the agent's pins must live to
/// outlive the agent (a node of a real cluster has it from systemd).
pub fn mount_bpffs(node: &str) -> Line {
    line(&[
        "docker",
        "exec",
        node,
        "mount",
        "-t",
        "bpf",
        "bpf",
        "/sys/fs/bpf",
    ])
}

/// kubectl bound to one context.
#[derive(Clone, Debug)]
pub struct Kube {
    /// The kubeconfig context.
    pub context: String,
}

impl Kube {
    /// The context kind made for cluster `name`.
    pub fn kind(name: &str) -> Kube {
        Kube {
            context: format!("kind-{name}"),
        }
    }

    /// `kubectl --context C ARGS`.
    pub fn kubectl(&self, args: &[&str]) -> Line {
        let mut l = line(&["kubectl", "--context", &self.context]);
        l.extend(line(args));
        l
    }

    /// `kubectl --context C -n NAMESPACE ARGS`.
    pub fn in_ns(&self, namespace: &str, args: &[&str]) -> Line {
        let mut l = self.kubectl(&["-n", namespace]);
        l.extend(line(args));
        l
    }

    /// Applies every manifest in `dir`.
    pub fn apply_dir(&self, dir: &Path) -> Line {
        self.kubectl(&["apply", "-f", &dir.display().to_string()])
    }

    /// Applies the objects on standard input.
    pub fn apply_stdin(&self) -> Line {
        self.kubectl(&["apply", "-f", "-"])
    }

    /// Whether the DaemonSet exists (fails when it does not).
    pub fn get_daemonset(&self) -> Line {
        self.in_ns(NAMESPACE, &["get", "daemonset", DAEMONSET, "-o", "name"])
    }

    /// Whether the key Secret exists (fails when it does not).
    pub fn get_key_secret(&self) -> Line {
        self.in_ns(NAMESPACE, &["get", "secret", KEY_SECRET, "-o", "name"])
    }

    /// Creates the key Secret from a key file (a file, not a literal: a key on a command line
    /// is visible to every process on the machine).
    pub fn create_key_secret(&self, key_file: &Path) -> Line {
        self.in_ns(
            NAMESPACE,
            &[
                "create",
                "secret",
                "generic",
                KEY_SECRET,
                &format!("--from-file={KEY_SECRET_ENTRY}={}", key_file.display()),
            ],
        )
    }

    /// Prints the key file the Secret holds.
    pub fn read_keys(&self) -> Line {
        self.in_ns(
            NAMESPACE,
            &[
                "get",
                "secret",
                KEY_SECRET,
                "-o",
                &format!("go-template={{{{index .data \"{KEY_SECRET_ENTRY}\" | base64decode}}}}"),
            ],
        )
    }

    /// Replaces the Secret's key file with the merge patch in `patch_file`.
    pub fn patch_keys(&self, patch_file: &Path) -> Line {
        self.in_ns(
            NAMESPACE,
            &[
                "patch",
                "secret",
                KEY_SECRET,
                "--type",
                "merge",
                "--patch-file",
                &patch_file.display().to_string(),
            ],
        )
    }

    /// Waits for the DaemonSet to be rolled out on every node.
    pub fn rollout_status(&self) -> Line {
        self.in_ns(
            NAMESPACE,
            &[
                "rollout",
                "status",
                &format!("daemonset/{DAEMONSET}"),
                "--timeout=300s",
            ],
        )
    }

    /// Restarts the DaemonSet's pods, one node at a time: a new image under the same tag.
    pub fn rollout_restart(&self) -> Line {
        self.in_ns(
            NAMESPACE,
            &["rollout", "restart", &format!("daemonset/{DAEMONSET}")],
        )
    }

    /// The pods matching `selector`, as JSON.
    pub fn pods_json(&self, namespace: &str, selector: &str) -> Line {
        self.in_ns(namespace, &["get", "pods", "-l", selector, "-o", "json"])
    }

    /// Waits until the pods matching `selector` are ready.
    pub fn wait_ready(&self, namespace: &str, selector: &str) -> Line {
        self.in_ns(
            namespace,
            &[
                "wait",
                "--for=condition=Ready",
                "pod",
                "-l",
                selector,
                "--timeout=180s",
            ],
        )
    }

    /// Waits until `pod` has run to completion.
    pub fn wait_succeeded(&self, namespace: &str, pod: &str, timeout_s: u64) -> Line {
        self.in_ns(
            namespace,
            &[
                "wait",
                "--for=jsonpath={.status.phase}=Succeeded",
                &format!("pod/{pod}"),
                &format!("--timeout={timeout_s}s"),
            ],
        )
    }

    /// `pod`'s log.
    pub fn logs(&self, namespace: &str, pod: &str) -> Line {
        self.in_ns(namespace, &["logs", pod])
    }

    /// Runs `command` in `pod` (its container `container`, if named).
    pub fn exec(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
        command: &[&str],
    ) -> Line {
        let mut args = vec!["exec", pod];
        if let Some(container) = container {
            args.extend(["-c", container]);
        }
        args.push("--");
        args.extend(command);
        self.in_ns(namespace, &args)
    }

    /// Deletes the pods matching `selector`, waiting for them to be gone or not.
    pub fn delete_pods(&self, namespace: &str, selector: &str, wait: bool) -> Line {
        self.in_ns(
            namespace,
            &[
                "delete",
                "pod",
                "-l",
                selector,
                "--ignore-not-found",
                &format!("--wait={wait}"),
            ],
        )
    }

    /// The nodes, as JSON.
    pub fn nodes_json(&self) -> Line {
        self.kubectl(&["get", "nodes", "-o", "json"])
    }
}

fn command(line: &Line) -> Result<Command> {
    let (program, args) = line.split_first().context("an empty command line")?;
    let mut command = Command::new(program);
    command.args(args);
    Ok(command)
}

/// Runs `line` with its output shown, after printing it; fails naming it.
pub fn run(line: &Line) -> Result<()> {
    eprintln!("+ {}", line.join(" "));
    let status = command(line)?
        .status()
        .with_context(|| format!("cannot start {}", line[0]))?;
    if !status.success() {
        bail!("`{}` failed: {status}", line.join(" "));
    }
    Ok(())
}

/// Runs `line` with `input` on its standard input (if any) and returns its standard output;
/// fails naming it, with its standard error.
pub fn run_quiet(line: &Line, input: Option<&str>) -> Result<String> {
    let mut child = command(line)?
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", line[0]))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            line.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts `line` in the background with its standard output captured.
pub fn spawn(line: &Line) -> Result<std::process::Child> {
    command(line)?
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", line.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kubectl_command_names_its_context() {
        let kube = Kube::kind(CLUSTER);
        for l in [
            kube.apply_dir(Path::new("/src/kind/manifests")),
            kube.rollout_status(),
            kube.read_keys(),
            kube.exec("default", "p", None, &["xsteer", "--version"]),
        ] {
            assert_eq!(&l[..3], ["kubectl", "--context", "kind-xsteer"], "{l:?}");
        }
    }

    #[test]
    fn the_lines_are_what_a_user_would_type() {
        let kube = Kube::kind(CLUSTER);
        let join = |l: Line| l.join(" ");
        assert_eq!(
            join(create_cluster(CLUSTER, Path::new("/src/kind/cluster.yaml"))),
            "kind create cluster --name xsteer --config /src/kind/cluster.yaml --wait 180s"
        );
        assert_eq!(
            join(load_image(CLUSTER, Path::new("/t/oci/xsteer-dev.tar"))),
            "kind load image-archive --name xsteer /t/oci/xsteer-dev.tar"
        );
        assert_eq!(
            join(mount_bpffs("xsteer-worker")),
            "docker exec xsteer-worker mount -t bpf bpf /sys/fs/bpf"
        );
        assert_eq!(
            join(kube.create_key_secret(Path::new("/t/kind/keys"))),
            "kubectl --context kind-xsteer -n kube-system create secret generic \
             cilium-ipsec-keys --from-file=keys=/t/kind/keys"
        );
        assert_eq!(
            join(kube.read_keys()),
            "kubectl --context kind-xsteer -n kube-system get secret cilium-ipsec-keys -o \
             go-template={{index .data \"keys\" | base64decode}}"
        );
        assert_eq!(
            join(kube.patch_keys(Path::new("/t/kind/patch.json"))),
            "kubectl --context kind-xsteer -n kube-system patch secret cilium-ipsec-keys \
             --type merge --patch-file /t/kind/patch.json"
        );
        assert_eq!(
            join(kube.rollout_status()),
            "kubectl --context kind-xsteer -n kube-system rollout status daemonset/xsteer \
             --timeout=300s"
        );
        assert_eq!(
            join(kube.exec(
                "kube-system",
                "xsteer-abcde",
                Some("agent"),
                &["xsteer", "status"]
            )),
            "kubectl --context kind-xsteer -n kube-system exec xsteer-abcde -c agent -- xsteer \
             status"
        );
        assert_eq!(
            join(kube.wait_succeeded("default", "xsteer-capture-a", 90)),
            "kubectl --context kind-xsteer -n default wait \
             --for=jsonpath={.status.phase}=Succeeded pod/xsteer-capture-a --timeout=90s"
        );
    }

    #[test]
    fn a_failed_command_is_named_with_its_error_output() {
        let err = run_quiet(&line(&["sh", "-c", "echo oops >&2; exit 3"]), None).unwrap_err();
        let err = err.to_string();
        assert!(
            err.contains("`sh -c echo oops >&2; exit 3` failed"),
            "{err}"
        );
        assert!(err.ends_with("oops"), "{err}");
        assert_eq!(
            run_quiet(&line(&["cat"]), Some("in")).unwrap(),
            "in",
            "input reaches the command"
        );
    }
}
