//! Installs what a task needs when it is missing, and says what it does.

use std::{path::Path, process::Command, sync::Once};

use anyhow::{Context, Result, bail};

/// A Debian package and a file whose presence shows it is installed.
pub struct Package {
    /// The package name for apt-get.
    pub name: &'static str,
    /// A file the package installs (an absolute path, or a command name looked up on PATH).
    pub provides: &'static str,
}

/// Installs the packages whose `provides` file is missing, with one apt-get call.
pub fn apt(packages: &[Package]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|p| !present(p.provides))
        .map(|p| p.name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    static UPDATE: Once = Once::new();
    let mut update = Ok(());
    UPDATE.call_once(|| update = run(Command::new("apt-get").args(["update", "-q"])));
    update?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn present(provides: &str) -> bool {
    if provides.starts_with('/') {
        Path::new(provides).exists()
    } else {
        Command::new("sh")
            .args(["-c", &format!("command -v {provides}")])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

/// Runs a command, inheriting stdio, and fails with its command line if it fails.
pub fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}
