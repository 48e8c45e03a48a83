//! `cargo xtask vm`: boot a stock Debian kernel under qemu and run a command in it.

use std::path::Path;

use anyhow::{Result, bail};

/// Options of `cargo xtask vm`.
#[derive(clap::Args)]
pub struct Args {
    /// The command to run in the guest.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Boots the guest, runs the command, returns its exit code.
pub fn run(_root: &Path, _args: Args) -> Result<i32> {
    bail!("the VM bed is not built yet")
}
