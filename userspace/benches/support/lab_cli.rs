//! `xsteer lab` as the VM benchmarks run it: their tables go to stdout, so the lab's report goes
//! to stderr.

use std::{
    os::fd::AsFd,
    path::Path,
    process::{Command, Stdio},
};

/// Runs `xsteer lab ARGS.. --dir DIR`, its report going to stderr (stdout holds the tables).
pub fn xsteer_lab(args: &[&str], dir: &Path) -> bool {
    let stderr = std::io::stderr().as_fd().try_clone_to_owned().unwrap();
    Command::new(env!("CARGO_BIN_EXE_xsteer"))
        .arg("lab")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::from(stderr))
        .status()
        .unwrap()
        .success()
}
