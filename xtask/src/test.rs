//! `cargo xtask test`: every test level of docs/testing.md, in order, failing on any skip.
//!
//! - unit, bpf-tests and netlink, in one `cargo test --workspace` on the host: the unit tests in
//!   each crate's `src/`; the bpf-tests, which load the real object into the host kernel; the
//!   netlink tests (`userspace/tests/*.rs`), each in a fresh network namespace. The last two need
//!   root, and `XSTEER_REQUIRE_PRIVILEGED=1` turns their skip into a failure, so a CI run cannot
//!   pass without running them;
//! - deployment: the manifests validated strictly against kind's Kubernetes, the image built,
//!   inspected with skopeo, loaded and run with podman (`cargo xtask kind check`);
//! - end-to-end, in the VM bed (real ESP): the `e2e` test binary, booted once for all.

use std::{path::Path, process::Command};

use anyhow::Result;

use crate::{build_ebpf, install, kind, vm};

/// Options of `cargo xtask test`.
#[derive(clap::Args)]
pub struct Args {
    /// Let tests that need root or BPF skip (loudly) instead of failing. Never in CI.
    #[arg(long)]
    allow_skip: bool,
    /// Leave out the end-to-end tests in the VM (they take minutes under emulation).
    #[arg(long)]
    no_vm: bool,
}

/// Debian packages the host-kernel levels call: bpftool, ip, and the CNI plugins the lab wires
/// its pods with (`ptp`, `host-local`; the VM bed's guest shares the host's root, so the lab
/// there has them too).
pub const HOST_PACKAGES: &[install::Package] = &[
    install::Package {
        name: "bpftool",
        provides: "bpftool",
    },
    install::Package {
        name: "iproute2",
        provides: "ip",
    },
    install::Package {
        name: "containernetworking-plugins",
        provides: "/usr/lib/cni/ptp",
    },
];

/// Runs the levels.
pub fn run(root: &Path, args: Args) -> Result<()> {
    install::apt(HOST_PACKAGES)?;
    build_ebpf::ensure_toolchain()?;

    eprintln!("xtask: levels unit, bpf-tests and netlink (cargo test --workspace, host kernel)");
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(root)
        .args(["test", "--workspace", "--locked"]);
    if !args.allow_skip {
        cargo.env("XSTEER_REQUIRE_PRIVILEGED", "1");
    }
    install::run(&mut cargo)?;

    eprintln!("xtask: level deployment (manifests, image, podman)");
    kind::check(root)?;

    if args.no_vm {
        eprintln!("\n*** xtask: SKIPPED the end-to-end level (--no-vm) ***\n");
        return Ok(());
    }
    eprintln!("xtask: level end-to-end (the VM bed)");
    vm::run_e2e(root)
}
