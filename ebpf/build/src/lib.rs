//! Builds the eBPF object: one place that knows the nightly command line.
//!
//! `cargo xtask build-ebpf` calls [`build`] after installing what [`missing`] reports; the agent's
//! build script calls it directly and, when something is missing, fails with one error that
//! names `cargo xtask build-ebpf`. The object lands in `target/ebpf/`, a target directory of its
//! own: a cargo that runs inside a build script must not share the outer cargo's lock.

use std::{
    ffi::OsStr,
    fmt,
    path::{Path, PathBuf},
    process::Command,
};

/// The rustup toolchain that builds the programs (`-Z build-std` needs nightly).
pub const TOOLCHAIN: &str = "nightly";
/// The BPF target triple.
pub const TARGET: &str = "bpfel-unknown-none";
/// The package that holds the programs.
pub const PACKAGE: &str = "xsteer-ebpf";
/// The workspace directories whose changes require a rebuild.
pub const SOURCE_DIRS: [&str; 2] = ["ebpf/programs", "ebpf/common"];

/// Something the build needs that is not installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// The nightly toolchain itself.
    Nightly,
    /// The nightly's `rust-src` component (for `-Z build-std=core`).
    RustSrc,
    /// `bpf-linker` is not on PATH.
    BpfLinker,
    /// `bpf-linker` links a different LLVM major than the nightly emits.
    BpfLinkerLlvm {
        /// LLVM major of the nightly.
        nightly: u32,
        /// LLVM major bpf-linker was built against, if it said.
        linker: Option<u32>,
    },
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::Nightly => write!(f, "the {TOOLCHAIN} toolchain is not installed"),
            Missing::RustSrc => write!(f, "the {TOOLCHAIN} toolchain has no rust-src component"),
            Missing::BpfLinker => write!(f, "bpf-linker is not on PATH"),
            Missing::BpfLinkerLlvm { nightly, linker } => write!(
                f,
                "bpf-linker uses LLVM {} but {TOOLCHAIN} emits LLVM {nightly} bitcode",
                linker.map_or_else(|| "?".to_owned(), |v| v.to_string())
            ),
        }
    }
}

/// Facts about the nightly toolchain that the build and its installers need.
#[derive(Debug, Clone)]
pub struct Nightly {
    /// `rustc --print sysroot`.
    pub sysroot: PathBuf,
    /// The `release:` line of `rustc -vV`, e.g. `1.97.0-nightly`.
    pub release: String,
    /// The LLVM major version rustc is built on.
    pub llvm_major: u32,
}

impl Nightly {
    /// Asks rustup for the nightly toolchain; `None` when it is not installed.
    pub fn detect() -> Option<Nightly> {
        let verbose = output(rustup_run(TOOLCHAIN, "rustc").arg("-vV"))?;
        let sysroot = output(rustup_run(TOOLCHAIN, "rustc").args(["--print", "sysroot"]))?;
        let field = |name: &str| {
            verbose
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        Some(Nightly {
            sysroot: PathBuf::from(sysroot.trim()),
            release: field("release:")?,
            llvm_major: field("LLVM version:")?.split('.').next()?.parse().ok()?,
        })
    }

    /// Whether the `rust-src` component is present.
    pub fn has_rust_src(&self) -> bool {
        self.sysroot
            .join("lib/rustlib/src/rust/library/core/Cargo.toml")
            .is_file()
    }
}

/// What is missing for a build, in the order an installer should fix it. Empty means ready.
pub fn missing() -> Vec<Missing> {
    let Some(nightly) = Nightly::detect() else {
        return vec![Missing::Nightly];
    };
    let mut missing = Vec::new();
    if !nightly.has_rust_src() {
        missing.push(Missing::RustSrc);
    }
    match bpf_linker_llvm_major() {
        None => missing.push(Missing::BpfLinker),
        Some(linker) if linker != Some(nightly.llvm_major) => {
            missing.push(Missing::BpfLinkerLlvm {
                nightly: nightly.llvm_major,
                linker,
            })
        }
        Some(_) => {}
    }
    missing
}

/// `None` if bpf-linker does not run; `Some(None)` if it runs but its LLVM cannot be told.
///
/// `--version` does not name LLVM, so read it off the libLLVM the binary links: the install
/// route of `cargo xtask build-ebpf` links the nightly's own `libLLVM.so.<major>...-rust-...`.
fn bpf_linker_llvm_major() -> Option<Option<u32>> {
    output(Command::new("bpf-linker").arg("--version"))?;
    let path = output(Command::new("sh").args(["-c", "command -v bpf-linker"]))?;
    let libs = output(Command::new("ldd").arg(path.trim())).unwrap_or_default();
    Some(libs.lines().find_map(|line| {
        let name = line.split_whitespace().next()?;
        let version = name
            .strip_prefix("libLLVM.so.")
            .or_else(|| name.strip_prefix("libLLVM-"))?;
        version.split(['.', '-']).next()?.parse().ok()
    }))
}

/// Where the object is written for a workspace rooted at `workspace`.
pub fn object_path(workspace: &Path) -> PathBuf {
    workspace
        .join("target/ebpf")
        .join(TARGET)
        .join("release")
        .join(PACKAGE)
}

/// Why a build failed.
#[derive(Debug)]
pub enum BuildError {
    /// Prerequisites are missing; `cargo xtask build-ebpf` installs them.
    Missing(Vec<Missing>),
    /// cargo could not be started.
    Spawn(std::io::Error),
    /// cargo ran and failed; its output went to the caller's stderr.
    Failed(std::process::ExitStatus),
    /// cargo succeeded but the object is not where it should be.
    NoObject(PathBuf),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Missing(missing) => {
                let what: Vec<String> = missing.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "cannot build the eBPF programs: {}; run `cargo xtask build-ebpf`, which installs what is missing",
                    what.join("; ")
                )
            }
            BuildError::Spawn(e) => write!(f, "cannot run `rustup run {TOOLCHAIN} cargo`: {e}"),
            BuildError::Failed(status) => write!(f, "the eBPF build failed ({status})"),
            BuildError::NoObject(path) => {
                write!(f, "the eBPF build left no object at {}", path.display())
            }
        }
    }
}

impl std::error::Error for BuildError {}

/// Builds the programs of the workspace rooted at `workspace` and returns the object's path.
///
/// Output of the nested cargo goes to this process's stderr.
pub fn build(workspace: &Path) -> Result<PathBuf, BuildError> {
    let missing = missing();
    if !missing.is_empty() {
        return Err(BuildError::Missing(missing));
    }
    let mut cargo = rustup_run(TOOLCHAIN, "cargo");
    cargo
        .current_dir(workspace)
        .args(["build", "--release", "--package", PACKAGE, "--bins"])
        .args(["--target", TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(workspace.join("target/ebpf"))
        // BTF for the maps and programs (bpftool prints field names), debug info to carry it.
        // Misaligned loads allowed: an address or SPI in the packet is then read in one load,
        // not four byte loads and three shifts (48 fewer instructions in the ingress guard, 1 to
        // 3 ns less per packet in every program: docs/benchmarks.md). The verifier takes them:
        // packet offsets are aligned as it counts them, with NET_IP_ALIGN before the Ethernet
        // header. rustc warns that the feature is unstable; an LLVM without it warns of an
        // unknown feature and emits byte loads again.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf\x1f-Ctarget-feature=+allows-misaligned-mem-access",
        );
    // Set by an outer cargo (in a build script) or by the user; they would pick the wrong
    // compiler or flags for the BPF target.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cargo.env_remove(var);
    }
    let status = cargo.status().map_err(BuildError::Spawn)?;
    if !status.success() {
        return Err(BuildError::Failed(status));
    }
    let object = object_path(workspace);
    if object.is_file() {
        Ok(object)
    } else {
        Err(BuildError::NoObject(object))
    }
}

/// `rustup run TOOLCHAIN PROGRAM`, so the toolchain is chosen however cargo was invoked.
pub fn rustup_run(toolchain: &str, program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new("rustup");
    command.args(["run", toolchain]).arg(program);
    // An outer rustup proxy exports its own choice; it must not override ours.
    command.env_remove("RUSTUP_TOOLCHAIN");
    command
}

/// Stdout of a command that succeeded, or `None`.
fn output(command: &mut Command) -> Option<String> {
    let out = command.stderr(std::process::Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
