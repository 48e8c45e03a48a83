//! `cargo xtask demo`: the main job of the README, in one command.
//!
//! Builds everything, proves this kernel verifies and accepts the programs (`xsteer check`),
//! then drives each program with the packet tests and prints their summary.

use std::{path::Path, process::Command};

use anyhow::Result;

use crate::{build_ebpf, install};

/// Runs the demo.
pub fn run(root: &Path) -> Result<()> {
    install::apt(crate::test::HOST_PACKAGES)?;
    build_ebpf::ensure_toolchain()?;
    eprintln!("xtask: building xsteer and checking the programs against this kernel");
    install::run(
        Command::new("cargo")
            .current_dir(root)
            .args(["run", "--quiet", "--locked", "-p", "xsteer", "--", "check"]),
    )?;
    eprintln!("xtask: driving the programs with BPF_PROG_TEST_RUN (bpf-tests)");
    install::run(
        Command::new("cargo")
            .current_dir(root)
            .args(["test", "--quiet", "--locked", "-p", "xsteer-bpf-tests"])
            .env("XSTEER_REQUIRE_PRIVILEGED", "1"),
    )
}
