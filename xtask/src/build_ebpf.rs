//! `cargo xtask build-ebpf`: install the BPF toolchain pieces that are missing, then build.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use xsteer_ebpf_build::{Missing, Nightly, TOOLCHAIN};

use crate::install;

/// The bpf-linker release known to work with the pinned aya crates.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Installs what is missing, builds the object and returns its path.
pub fn run(root: &Path) -> Result<PathBuf> {
    ensure_toolchain()?;
    let object = xsteer_ebpf_build::build(root)?;
    eprintln!("xtask: eBPF object at {}", object.display());
    Ok(object)
}

/// Installs rust-src and a bpf-linker that matches the nightly's LLVM, as needed.
pub fn ensure_toolchain() -> Result<()> {
    for missing in xsteer_ebpf_build::missing() {
        match missing {
            Missing::Nightly => bail!(
                "the {TOOLCHAIN} toolchain is not installed: `rustup toolchain install {TOOLCHAIN}`"
            ),
            Missing::RustSrc => {
                eprintln!("xtask: installing rust-src for {TOOLCHAIN} (for -Z build-std=core)");
                install::run(Command::new("rustup").args([
                    "component",
                    "add",
                    "rust-src",
                    "--toolchain",
                    TOOLCHAIN,
                ]))?;
            }
            Missing::BpfLinker | Missing::BpfLinkerLlvm { .. } => {
                eprintln!("xtask: {missing}");
                install_bpf_linker()?;
            }
        }
    }
    let still: Vec<String> = xsteer_ebpf_build::missing()
        .iter()
        .map(ToString::to_string)
        .collect();
    if !still.is_empty() {
        bail!("still missing after install: {}", still.join("; "));
    }
    Ok(())
}

/// Builds bpf-linker against the nightly's own libLLVM, so the two LLVM versions always match
/// and no LLVM development package is needed (Debian bookworm has none recent enough).
fn install_bpf_linker() -> Result<()> {
    let nightly = Nightly::detect().context("the nightly toolchain vanished")?;
    let lib = nightly.sysroot.join("lib");
    let llvm = format!("LLVM-{}-rust-{}", nightly.llvm_major, nightly.release);
    if !lib.join(format!("lib{llvm}.so")).exists() {
        bail!(
            "{} has no lib{llvm}.so to link bpf-linker against",
            lib.display()
        );
    }
    eprintln!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} against {TOOLCHAIN}'s LLVM {} (about 2 minutes)",
        nightly.llvm_major
    );
    let rustflags = format!(
        "-L native={lib} -l dylib={llvm} -C link-arg=-Wl,-rpath,{lib}",
        lib = lib.display()
    );
    install::run(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{},no-llvm-linking", nightly.llvm_major))
            .env("RUSTFLAGS", rustflags),
    )
}
