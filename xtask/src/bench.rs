//! `cargo xtask bench`: measure the dataplane and write docs/benchmarks.md.

use std::path::Path;

use anyhow::Result;

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs the benchmarks.
pub fn run(_root: &Path, _args: Args) -> Result<()> {
    Ok(())
}
