//! Installs what a task needs when it is missing, and says what it does.
//!
//! apt-get calls wait for another apt-get or dpkg to finish instead of failing on its lock: a
//! fresh machine often runs one at boot, and two tasks may install at the same time.

use std::{
    io::{self, Write},
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// How long apt-get waits for a lock another apt-get or dpkg holds (a kernel's postinst alone
/// can take minutes on two cores).
const LOCK_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Pause between two tries of an `apt-get update` that found the package lists locked.
const UPDATE_RETRY: Duration = Duration::from_secs(10);

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
    apt_install(&missing)
}

/// Installs the packages `names` with one apt-get call, whether or not they are there.
pub fn apt_install(names: &[&str]) -> Result<()> {
    eprintln!("xtask: installing Debian packages: {}", names.join(" "));
    update()?;
    let status = apt_get()
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(names)
        .status()
        .context("cannot start apt-get")?;
    if !status.success() {
        bail!("apt-get install of {} failed: {status}", names.join(" "));
    }
    Ok(())
}

/// An apt-get command that waits for the dpkg lock and never asks questions.
pub fn apt_get() -> Command {
    let mut command = Command::new("apt-get");
    command
        .arg("-o")
        .arg(format!("DPkg::Lock::Timeout={}", LOCK_TIMEOUT.as_secs()))
        .env("DEBIAN_FRONTEND", "noninteractive");
    command
}

/// Runs `apt-get update`, once per xtask run.
pub fn update() -> Result<()> {
    static UPDATED: AtomicBool = AtomicBool::new(false);
    if UPDATED.load(Ordering::Relaxed) {
        return Ok(());
    }
    update_waiting_for_lists()?;
    UPDATED.store(true, Ordering::Relaxed);
    Ok(())
}

/// `apt-get update`, tried again while another one holds the package lists: apt-get waits for
/// the dpkg lock (DPkg::Lock::Timeout), but fails at once on the lists' lock.
fn update_waiting_for_lists() -> Result<()> {
    let deadline = Instant::now() + LOCK_TIMEOUT;
    loop {
        let out = apt_get()
            .args(["update", "-q"])
            // The lock message is matched below, so it must not be translated.
            .env("LC_ALL", "C")
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .output()
            .context("cannot start apt-get")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let locked = stderr.contains("Could not get lock");
        if out.status.success() || !locked || Instant::now() >= deadline {
            let _ = io::stderr().write_all(&out.stderr);
            if out.status.success() {
                return Ok(());
            }
            bail!("apt-get update failed: {}", out.status);
        }
        eprintln!(
            "xtask: another apt-get holds the package lists; trying again in {} s",
            UPDATE_RETRY.as_secs()
        );
        thread::sleep(UPDATE_RETRY);
    }
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
