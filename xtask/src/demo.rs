//! `cargo xtask demo`: the main job of the README, in one command.
//!
//! Builds everything, then runs `xsteer lab run`: a 3-node cluster of network namespaces with
//! one agent per node, every cross-node pod pair checked over ICMP, TCP and UDP, the wire
//! captured to prove it carries only ESP between pods, a bpftool dump of the remote-CIDR map, and
//! the teardown. The lab needs ESP, which the development machines' kernel lacks: there it runs
//! inside the VM bed, on a stock kernel.

use std::{path::Path, process::Command};

use anyhow::{Result, bail};
use clap::Parser;

use crate::{build_ebpf, install, vm};

/// Options of `cargo xtask demo`.
#[derive(Parser)]
pub struct Args {
    /// A dual-stack lab: every pair over IPv4 and IPv6, both encrypted (`lab run --dual-stack`).
    #[arg(long)]
    dual_stack: bool,
    /// A dual-stack lab whose tunnels join the nodes' IPv6 addresses (`lab run
    /// --ipv6-node-ips`).
    #[arg(long, conflicts_with = "dual_stack")]
    ipv6_node_ips: bool,
}

/// Runs the demo.
pub fn run(root: &Path, args: Args) -> Result<()> {
    install::apt(crate::test::HOST_PACKAGES)?;
    build_ebpf::ensure_toolchain()?;
    eprintln!("xtask: building xsteer");
    install::run(
        Command::new("cargo")
            .current_dir(root)
            .args(["build", "--quiet", "--locked", "-p", "xsteer"]),
    )?;
    let xsteer = vm::target_dir(root).join("debug/xsteer");
    let mut lab = vec![
        xsteer.to_string_lossy().into_owned(),
        "lab".into(),
        "run".into(),
    ];
    if args.dual_stack {
        lab.push("--dual-stack".into());
    }
    if args.ipv6_node_ips {
        lab.push("--ipv6-node-ips".into());
    }
    let code = if host_has_esp() {
        eprintln!("xtask: this kernel has ESP: running the lab here");
        Command::new(&lab[0])
            .args(&lab[1..])
            .status()?
            .code()
            .unwrap_or(1)
    } else {
        eprintln!("xtask: this kernel has no ESP (CONFIG_INET_ESP): running the lab in the VM bed");
        vm::run_command(root, lab)?
    };
    if code != 0 {
        bail!("the lab failed (exit code {code})");
    }
    Ok(())
}

/// Whether this kernel has ESP, built in or as a module it can load.
fn host_has_esp() -> bool {
    let _ = Command::new("modprobe").arg("esp4").output();
    std::fs::read_to_string("/proc/modules")
        .is_ok_and(|m| m.lines().any(|l| l.starts_with("esp4 ")))
        || std::fs::read_to_string("/proc/kallsyms")
            .is_ok_and(|k| k.lines().any(|l| l.ends_with(" esp_output")))
}
