//! `cargo xtask test`: every test level, in order, failing on any skip.
//!
//! 1. unit tests and bpf-tests (`cargo test --workspace`): the bpf-tests load the real object
//!    into the host kernel and need root; `XSTEER_REQUIRE_PRIVILEGED=1` turns their skip into a
//!    failure, so a CI run cannot pass without running them;
//!    The netlink tests (`userspace/tests/*.rs`) run here too, each in a fresh network namespace;
//! 2. end-to-end tests in the VM bed (real ESP): the `e2e` test binary, booted once for all.

use std::{path::Path, process::Command};

use anyhow::Result;

use crate::{build_ebpf, install, vm};

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

/// Debian packages the host-kernel levels call.
pub const HOST_PACKAGES: &[install::Package] = &[
    install::Package {
        name: "bpftool",
        provides: "bpftool",
    },
    install::Package {
        name: "iproute2",
        provides: "ip",
    },
];

/// Runs the levels.
pub fn run(root: &Path, args: Args) -> Result<()> {
    install::apt(HOST_PACKAGES)?;
    build_ebpf::ensure_toolchain()?;

    eprintln!("xtask: level 1+2: unit tests and bpf-tests (host kernel)");
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(root)
        .args(["test", "--workspace", "--locked"]);
    if !args.allow_skip {
        cargo.env("XSTEER_REQUIRE_PRIVILEGED", "1");
    }
    install::run(&mut cargo)?;

    if args.no_vm {
        eprintln!("\n*** xtask: SKIPPED the VM end-to-end level (--no-vm) ***\n");
        return Ok(());
    }
    eprintln!("xtask: level 3: end-to-end tests in the VM bed");
    vm::run_e2e(root)
}
