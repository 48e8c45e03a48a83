//! `cargo xtask image`: the container image, as an OCI archive file, built from this tree alone.
//!
//! The image holds two files, the statically linked `xsteer` and `xsteer-cni` (musl, release,
//! stripped): no base image, no shell, no package manager, nothing pulled from a registry. `kind load
//! image-archive`, `docker load` and `podman load` read the archive (oci.rs says how).
//!
//! The tag is `xsteer:dev` unless `--tag` names another: the manifests in kind/ run
//! `xsteer:dev`, which a kind node finds once the archive is loaded (never `latest`, which
//! makes the kubelet try to pull). Every timestamp in the archive is the last commit's time
//! (or `SOURCE_DATE_EPOCH`), so a rebuild of the same commit in the same directory gives the
//! same archive (the binary carries a few source paths).

pub mod oci;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use xsteer_kind::image as spec;

use crate::{build_ebpf, install, vm};

/// The Rust target of the image's binary: musl, linked statically.
pub const TARGET: &str = "x86_64-unknown-linux-musl";
/// The cargo profile of the image's binary (release, stripped; Cargo.toml).
const PROFILE: &str = "image";
/// The image's binaries, targets of the package `xsteer`, and where each goes in the image: on
/// the image's PATH, so the entrypoint is `xsteer`; the chained CNI plugin beside it, where the
/// agent finds it to copy it into the node's CNI bin dir.
const BINARIES: &[(&str, &str)] = &[
    ("xsteer", "usr/bin/xsteer"),
    ("xsteer-cni", "usr/bin/xsteer-cni"),
];

/// Options of `cargo xtask image`.
#[derive(clap::Args)]
pub struct Args {
    /// The image's name, repository:tag.
    #[arg(long, default_value = spec::REFERENCE)]
    pub tag: String,
    /// Where to write the archive (default: target/oci/<name>-<tag>.tar).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

impl Default for Args {
    /// The manifests' image, at the default path.
    fn default() -> Args {
        Args {
            tag: spec::REFERENCE.to_owned(),
            output: None,
        }
    }
}

/// What `cargo xtask image` made.
pub struct Built {
    /// The archive.
    pub path: PathBuf,
    /// The image's name.
    pub reference: oci::Reference,
    /// The archive's size in bytes.
    pub size: usize,
    /// The image ID (the config's digest).
    pub id: String,
    /// The manifest's digest.
    pub digest: String,
    /// The static `xsteer` the image holds, runnable on this machine too.
    pub binary: PathBuf,
}

/// Builds the binary and writes the archive; prints where and how big.
pub fn run(root: &Path, args: Args) -> Result<Built> {
    let reference = oci::Reference::parse(&args.tag)?;
    let path = args
        .output
        .unwrap_or_else(|| default_output(root, &reference));
    let binary = build_binary(root)?;
    let built = write(root, binary, reference, path)?;
    eprintln!(
        "xtask: image {} (ID {}, digest {}) written to {} ({:.1} MB)",
        built.reference,
        &built.id[7..19],
        built.digest,
        built.path.display(),
        built.size as f64 / 1e6
    );
    Ok(built)
}

/// target/oci/<last part of the repository>-<tag>.tar (not target/image/: cargo's directory of
/// the profile `image`).
pub fn default_output(root: &Path, reference: &oci::Reference) -> PathBuf {
    let name = reference
        .repository
        .rsplit('/')
        .next()
        .unwrap_or(&reference.repository);
    vm::target_dir(root)
        .join("oci")
        .join(format!("{name}-{}.tar", reference.tag))
}

/// The C compiler for the musl target: ring (rustls' crypto, through kube) compiles C and
/// assembly for the target, and cc-rs looks for `x86_64-linux-musl-gcc`.
const MUSL_CC: install::Package = install::Package {
    name: "musl-tools",
    provides: "x86_64-linux-musl-gcc",
};

/// Builds the static binaries of the package `xsteer` (`xsteer`, `xsteer-cni`) and returns
/// the path of `xsteer`; the others are beside it.
pub fn build_binary(root: &Path) -> Result<PathBuf> {
    build_ebpf::ensure_toolchain()?;
    ensure_target()?;
    install::apt(&[MUSL_CC])?;
    eprintln!("xtask: building xsteer for {TARGET} (profile {PROFILE})");
    install::run(Command::new("cargo").current_dir(root).args([
        "build",
        "--quiet",
        "--locked",
        "-p",
        "xsteer",
        "--profile",
        PROFILE,
        "--target",
        TARGET,
    ]))?;
    Ok(vm::target_dir(root)
        .join(TARGET)
        .join(PROFILE)
        .join("xsteer"))
}

/// Adds the musl target's standard library to the toolchain if it is missing.
fn ensure_target() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("cannot run rustup to list the installed targets")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == TARGET)
    {
        return Ok(());
    }
    eprintln!("xtask: adding the Rust target {TARGET} (a static binary for the image)");
    install::run(Command::new("rustup").args(["target", "add", TARGET]))
}

/// Writes the archive of `binary` and the binaries beside it to `path`.
fn write(root: &Path, binary: PathBuf, reference: oci::Reference, path: PathBuf) -> Result<Built> {
    let dir = binary.parent().unwrap_or(Path::new("."));
    let mut contents = Vec::new();
    for (name, at) in BINARIES {
        let file = dir.join(name);
        let data = fs::read(&file).with_context(|| {
            format!(
                "reading {} (is {name} a binary target of the package xsteer?)",
                file.display()
            )
        })?;
        if let Some(interpreter) = elf_interpreter(&data)? {
            bail!(
                "{} asks for the dynamic loader {interpreter}: the image has none, it must be \
                 static",
                file.display()
            );
        }
        contents.push((*at, data));
    }
    let version = version_of(&binary)?;
    let revision = git(root, &["rev-parse", "HEAD"]);
    let created = created(root)?;
    let mut labels = vec![
        ("org.opencontainers.image.title", "xsteer".to_owned()),
        ("org.opencontainers.image.version", version),
        ("org.opencontainers.image.licenses", "Apache-2.0".to_owned()),
    ];
    if let Some(revision) = revision {
        labels.push(("org.opencontainers.image.revision", revision));
    }
    let written = oci::write(&oci::Image {
        reference: &reference,
        files: &contents
            .iter()
            .map(|(path, data)| oci::File {
                path,
                mode: 0o755,
                data,
            })
            .collect::<Vec<_>>(),
        // A writable /tmp for whoever runs the image without a read-only root.
        dirs: &[("tmp", 0o1777)],
        entrypoint: spec::ENTRYPOINT,
        cmd: spec::CMD,
        labels: &labels,
        created,
    })?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&path, &written.archive).with_context(|| format!("writing {}", path.display()))?;
    Ok(Built {
        path,
        reference,
        size: written.archive.len(),
        id: written.config_digest,
        digest: written.manifest_digest,
        binary,
    })
}

/// The version the binary reports (`xsteer 0.1.0` → `0.1.0`); running it also proves it runs
/// on its own.
fn version_of(binary: &Path) -> Result<String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.trim().strip_prefix("xsteer ") {
        Some(version) if out.status.success() => Ok(version.to_owned()),
        _ => bail!(
            "{} --version printed {text:?} ({})",
            binary.display(),
            out.status
        ),
    }
}

/// Seconds since the epoch for the archive's timestamps: `SOURCE_DATE_EPOCH` if set, else the
/// last commit's time, else 0.
fn created(root: &Path) -> Result<u64> {
    if let Ok(value) = std::env::var("SOURCE_DATE_EPOCH") {
        return value
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds"));
    }
    Ok(git(root, &["log", "-1", "--format=%ct"])
        .and_then(|t| t.parse().ok())
        .unwrap_or(0))
}

/// A git command's trimmed output, if git is there and it succeeds.
fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .current_dir(root)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The program interpreter an ELF executable names (PT_INTERP), if any: a static executable
/// names none.
pub fn elf_interpreter(elf: &[u8]) -> Result<Option<String>> {
    let field = |at: usize, len: usize| -> Result<u64> {
        let bytes = elf.get(at..at + len).context("truncated ELF file")?;
        let mut value = 0u64;
        for (i, b) in bytes.iter().enumerate() {
            value |= u64::from(*b) << (8 * i);
        }
        Ok(value)
    };
    // A 64-bit little-endian ELF file: the only kind this target makes.
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        bail!("not a 64-bit little-endian ELF file");
    }
    let phoff = field(0x20, 8)? as usize;
    let phentsize = field(0x36, 2)? as usize;
    let phnum = field(0x38, 2)? as usize;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        const PT_INTERP: u64 = 3;
        if field(at, 4)? == PT_INTERP {
            let offset = field(at + 8, 8)? as usize;
            let size = field(at + 32, 8)? as usize;
            let name = elf
                .get(offset..offset + size)
                .context("truncated ELF interpreter")?;
            return Ok(Some(
                String::from_utf8_lossy(name)
                    .trim_end_matches('\0')
                    .to_owned(),
            ));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_names_its_interpreter_and_a_static_one_none() {
        // This test binary is linked dynamically against glibc.
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        let interpreter = elf_interpreter(&me).unwrap();
        assert!(
            interpreter.as_deref().is_some_and(|i| i.contains("ld-")),
            "{interpreter:?}"
        );
        assert!(elf_interpreter(b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn the_default_archive_is_named_after_the_image() {
        let reference = oci::Reference::parse("registry.example/team/xsteer:v2").unwrap();
        let path = default_output(Path::new("/src"), &reference);
        assert!(path.ends_with("oci/xsteer-v2.tar"), "{}", path.display());
    }
}
