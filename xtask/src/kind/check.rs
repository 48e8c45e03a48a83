//! The deployment level of `cargo xtask test` (alone: `cargo xtask kind check`): what can be
//! proved about the deployment without a cluster.
//!
//! - Every manifest, the example Secret and every pod the kind tasks render pass
//!   `kubernetes-validate --strict` (unknown fields, wrong types) against Kubernetes 1.32, the
//!   version of kind v0.27.0's node image. The validator comes from PyPI, pinned, into a venv
//!   under the target directory, so the machine's own Python is left alone.
//! - The image builds, and skopeo reads the archive as an amd64 image with the DaemonSet's
//!   entrypoint and command, one layer, under a size bound (a base image creeping in shows).
//! - podman loads the archive and runs `xsteer --version` from it, then `xsteer check` with
//!   the DaemonSet's capabilities and security options: this kernel's verifier accepts the
//!   programs with no more rights than the manifest gives.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use xsteer_kind::{agent::AgentPod, image as spec};

use super::pods;
use crate::{image, install, vm};

/// The Kubernetes version the manifests are validated against: kind v0.27.0's node image.
pub const KUBERNETES_VERSION: &str = "1.32.2";
/// The validator, pinned.
const VALIDATOR: &str = "kubernetes-validate==1.37.0";
/// The largest image accepted: the binary is about 14.6 MB.
const MAX_IMAGE_BYTES: u64 = 20_000_000;

/// Debian packages the level calls.
const PACKAGES: &[install::Package] = &[
    install::Package {
        name: "skopeo",
        provides: "skopeo",
    },
    install::Package {
        name: "podman",
        provides: "podman",
    },
    install::Package {
        name: "runc",
        provides: "/usr/sbin/runc",
    },
];

/// Runs the level.
pub fn run(root: &Path) -> Result<()> {
    let start = Instant::now();
    install::apt(PACKAGES)?;
    validate(root)?;
    let built = image::run(root, image::Args::default())?;
    inspect(&built.path)?;
    podman(&built.path)?;
    eprintln!(
        "xtask: the deployment level passed in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The directory of the kind tasks' files: target/kind.
pub fn work_dir(root: &Path) -> PathBuf {
    vm::target_dir(root).join("kind")
}

/// Validates the manifests, the example Secret and the rendered pods.
fn validate(root: &Path) -> Result<()> {
    let validator = ensure_validator(root)?;
    let rendered = work_dir(root).join("rendered-pods.yaml");
    let agent_pod = AgentPod::load()?;
    let node = "kind-worker";
    let objects = [
        pods::echo(node),
        pods::capture(node, 60),
        pods::uninstall(&agent_pod, node)?,
    ];
    fs::write(&rendered, pods::documents(&objects))
        .with_context(|| format!("writing {}", rendered.display()))?;
    let manifests = xsteer_kind::manifests::Manifests::load(&xsteer_kind::manifests_dir())?;
    let mut files = manifests.files.clone();
    files.push(xsteer_kind::example_secret());
    files.push(rendered);
    eprintln!(
        "xtask: kubernetes-validate --strict, Kubernetes {KUBERNETES_VERSION}: {} files",
        files.len()
    );
    let started = Instant::now();
    install::run(
        Command::new(&validator)
            .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
            .args(&files),
    )
    .context("the manifests do not validate")?;
    eprintln!(
        "xtask: {} objects valid ({:.1} s)",
        manifests.resources.len() + 1 + objects.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The validator in a venv under target/kind, installed there the first time.
fn ensure_validator(root: &Path) -> Result<PathBuf> {
    let venv = work_dir(root).join("venv");
    let validator = venv.join("bin/kubernetes-validate");
    let pinned = VALIDATOR.split("==").nth(1).unwrap_or_default();
    let installed = Command::new(&validator)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(pinned));
    if installed {
        return Ok(validator);
    }
    eprintln!("xtask: installing {VALIDATOR} into {}", venv.display());
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let make_venv = || {
        Command::new(python)
            .args(["-m", "venv", "--clear"])
            .arg(&venv)
            .output()
    };
    if !make_venv().is_ok_and(|o| o.status.success()) {
        // Debian keeps venv's ensurepip in a package of its own.
        install::apt_install(&["python3-venv"])?;
        let out = make_venv().context("cannot run python3")?;
        if !out.status.success() {
            bail!(
                "python3 -m venv {} failed: {}",
                venv.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    install::run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        VALIDATOR,
    ]))?;
    Ok(validator)
}

/// Reads the archive with skopeo: architecture, entrypoint, command, one layer, its size.
fn inspect(archive: &Path) -> Result<()> {
    let reference = format!("oci-archive:{}", archive.display());
    let skopeo = |args: &[&str]| -> Result<Value> {
        let out = Command::new("skopeo")
            .args(args)
            .arg(&reference)
            .output()
            .context("cannot run skopeo")?;
        if !out.status.success() {
            bail!(
                "skopeo {} {reference} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).context("skopeo's output is not JSON")
    };
    let config = skopeo(&["inspect", "--config"])?;
    let manifest = skopeo(&["inspect", "--raw"])?;
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    let size: u64 = layers.iter().filter_map(|l| l["size"].as_u64()).sum();
    let mut problems = Vec::new();
    if config["architecture"] != "amd64" || config["os"] != "linux" {
        problems.push(format!(
            "platform {}/{}, not linux/amd64",
            config["os"], config["architecture"]
        ));
    }
    if config["config"]["Entrypoint"] != serde_json::json!(spec::ENTRYPOINT) {
        problems.push(format!("entrypoint {}", config["config"]["Entrypoint"]));
    }
    if config["config"]["Cmd"] != serde_json::json!(spec::CMD) {
        problems.push(format!("command {}", config["config"]["Cmd"]));
    }
    if layers.len() != 1 {
        problems.push(format!("{} layers, not 1", layers.len()));
    }
    if size > MAX_IMAGE_BYTES {
        problems.push(format!("{size} bytes of layers, over {MAX_IMAGE_BYTES}"));
    }
    if !problems.is_empty() {
        bail!("the image is not as built: {}", problems.join("; "));
    }
    eprintln!(
        "xtask: skopeo reads linux/amd64, entrypoint {}, command {}, 1 layer of {:.1} MB",
        config["config"]["Entrypoint"],
        config["config"]["Cmd"],
        size as f64 / 1e6
    );
    Ok(())
}

/// Options for every `podman run` here. runc: crun refuses hosts that mount cgroup v1
/// controllers beside v2. The limits: podman's defaults raise open files and processes above
/// the caller's, which needs CAP_SYS_RESOURCE; modest ones need nothing.
const PODMAN_RUN: &[&str] = &[
    "--runtime",
    "runc",
    "run",
    "--rm",
    "--ulimit",
    "nofile=4096:4096",
    "--ulimit",
    "nproc=4096:4096",
];

/// Loads the archive into podman, runs `xsteer --version`, then `xsteer check` with the
/// DaemonSet's capabilities and security options.
fn podman(archive: &Path) -> Result<()> {
    let out = Command::new("podman")
        .arg("load")
        .arg("--input")
        .arg(archive)
        .output()
        .context("cannot run podman")?;
    let said = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !said.contains(&qualified()) {
        bail!(
            "podman load {} failed ({}): {said} {}",
            archive.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let run = |extra: &[String], args: &[&str]| -> Result<String> {
        let mut command = Command::new("podman");
        command
            .args(PODMAN_RUN)
            .args(extra)
            .arg(spec::REFERENCE)
            .args(args);
        let out = command
            .output()
            .with_context(|| format!("cannot run {command:?}"))?;
        if !out.status.success() {
            bail!(
                "{command:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let version = run(&[], &["--version"])?;
    if !version.starts_with("xsteer ") {
        bail!("xsteer --version in the image printed {version:?}");
    }
    let agent_pod = AgentPod::load()?;
    let security = agent_pod.agent().podman_security(&agent_pod);
    let checked =
        run(&security, &["check"]).context("xsteer check with the DaemonSet's capabilities")?;
    if !checked.contains("ok: this kernel accepts every xsteer program") {
        bail!("xsteer check in the image printed {checked:?}");
    }
    eprintln!(
        "xtask: podman loaded {} and ran {} and `xsteer check` with {}",
        qualified(),
        version.trim(),
        security.join(" ")
    );
    Ok(())
}

/// The name podman gives the loaded image.
fn qualified() -> String {
    image::oci::Reference::parse(spec::REFERENCE)
        .map(|r| r.qualified())
        .unwrap_or_default()
}
