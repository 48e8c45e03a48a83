//! The `xsteer` command.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use xsteer::{
    agent::{self, AgentOptions, PodVeths},
    apply::{self, ApplyOptions, DEFAULT_PIN_DIR, DEFAULT_STATE_DIR},
    dataplane::{Dataplane, MAPS},
};
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
    /// Make the kernel hold the SAs, policies, rules, routes and map entries a config calls for,
    /// changing only what differs; prints each change and a summary.
    Apply {
        /// The node's TOML config (see docs/examples/xsteer.toml).
        #[arg(long)]
        config: PathBuf,
        /// Print the changes that would be made, and make none.
        #[arg(long)]
        dry_run: bool,
        /// Where the maps are pinned (bpffs).
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Where xsteer keeps the ledger of outbound keys it has used.
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Run the node agent: reconcile, attach the programs, follow pod veths and config or key
    /// changes; on SIGTERM exit leaving the dataplane pinned and running.
    Agent {
        /// The node's TOML config.
        #[arg(long)]
        config: PathBuf,
        /// Where maps and links are pinned (bpffs).
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Where xsteer keeps the ledger of outbound keys it has used.
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Pod veths are the interfaces whose names start with this (repeatable); default:
        /// every veth whose peer is in another network namespace.
        #[arg(long = "pod-veth-prefix")]
        pod_veth_prefixes: Vec<String>,
        /// Seconds between reconciles without a change.
        #[arg(long, default_value_t = 30)]
        resync: u64,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Check => check(),
        Command::Apply {
            config,
            dry_run,
            pin_dir,
            state_dir,
        } => run_apply(
            &config,
            ApplyOptions {
                dry_run,
                pin_dir,
                state_dir,
            },
        ),
        Command::Agent {
            config,
            pin_dir,
            state_dir,
            pod_veth_prefixes,
            resync,
        } => {
            let opts = AgentOptions {
                config,
                pin_dir,
                state_dir,
                pod_veths: PodVeths {
                    prefixes: pod_veth_prefixes,
                },
                poll: Duration::from_secs(1),
                resync: Duration::from_secs(resync.max(1)),
            };
            runtime()?.block_on(agent::run(opts))?;
            Ok(())
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// `xsteer apply`: validates everything, then reconciles once.
fn run_apply(config_path: &std::path::Path, opts: ApplyOptions) -> Result<()> {
    let (config, keys) = apply::load(config_path)?;
    let runtime = runtime()?;
    let verb = if opts.dry_run { "would " } else { "" };
    let applied = runtime.block_on(apply::apply(&config, &keys, &opts, |change| {
        println!("{verb}{change}");
    }))?;
    for notice in &applied.notices {
        eprintln!("warning: {notice}");
    }
    let n = applied.changes.len();
    let plural = if n == 1 { "" } else { "s" };
    if opts.dry_run {
        println!("{n} change{plural} (dry run: none made)");
    } else {
        println!("{n} change{plural}");
    }
    Ok(())
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
