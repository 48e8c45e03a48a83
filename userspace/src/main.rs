//! The `xsteer` command.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use xsteer::dataplane::{Dataplane, MAPS};
use xsteer_common::programs;

#[derive(Parser)]
#[command(
    name = "xsteer",
    version,
    about = "eBPF-accelerated IPsec steering for Kubernetes pod traffic"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the eBPF programs into this kernel (verifier included) without attaching them.
    Check,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Check => check(),
    }
}

/// Proves the kernel accepts the dataplane: maps created, every program verified.
fn check() -> Result<()> {
    let mut dataplane = Dataplane::load().context("creating the maps")?;
    dataplane
        .load_programs()
        .context("verifying the programs")?;
    println!("{:<16} {:<4} attach point", "program", "type");
    for (name, kind, point) in [
        (
            programs::POD_CLASSIFIER,
            "tc",
            "ingress of each pod's host-side veth",
        ),
        (programs::EGRESS_GUARD, "tc", "egress of the uplink"),
        (programs::INGRESS_GUARD, "xdp", "the uplink"),
    ] {
        println!("{name:<16} {kind:<4} {point}");
    }
    println!("maps: {}", MAPS.join(", "));
    println!("ok: this kernel accepts every xsteer program");
    Ok(())
}
