//! Network namespaces for the lab: created with `ip netns add` (so `ip -n` and other tools see
//! them), entered with setns(2) — never with `ip netns exec`, which remounts /sys and would hide
//! bpffs, where the agents pin their maps and links.

use std::{fs::File, io, os::unix::process::CommandExt, path::Path, process::Command, thread};

use anyhow::{Context, Result, bail};
use nix::{
    sched::{CloneFlags, setns},
    unistd::setsid,
};

/// Runs `ip ARGS...` and returns its stdout; the error names the command and its stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip -n NETNS ARGS...`.
pub fn ip_in(netns: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    ip(&all)
}

/// The names of the existing namespaces that start with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

fn open(netns: &str) -> io::Result<File> {
    File::open(Path::new("/run/netns").join(netns))
}

fn enter(ns: &File) -> io::Result<()> {
    // Affects only the calling thread.
    Ok(setns(ns, CloneFlags::CLONE_NEWNET)?)
}

/// Runs `f` in a thread inside `netns` and returns its result.
pub fn run_in<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns = open(netns).with_context(|| format!("opening network namespace {netns}"))?;
    let name = netns.to_owned();
    thread::spawn(move || {
        enter(&ns).with_context(|| format!("entering network namespace {name}"))?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("a thread in network namespace {netns} panicked"))?
}

/// Makes `command` start inside `netns` (and, with `detach`, in a session of its own, so it
/// outlives the caller's terminal).
pub fn command_in(command: &mut Command, netns: &str, detach: bool) -> Result<()> {
    let ns = open(netns).with_context(|| format!("opening network namespace {netns}"))?;
    // SAFETY: between fork and exec only async-signal-safe calls (setsid, setns) are made.
    unsafe {
        command.pre_exec(move || {
            if detach {
                setsid()?;
            }
            enter(&ns)
        });
    }
    Ok(())
}
