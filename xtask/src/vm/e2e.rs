//! The end-to-end level of `cargo xtask test`: the `e2e` test binary of the xsteer crate, built
//! on the host (compiling inside the emulated guest would take far too long) and run in one guest
//! boot with its VM-only (ignored on the host) tests included.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use super::{Args, DEFAULT_MEM_MB, Ending, path_str};
use crate::{
    image,
    install::{self, Package},
};

/// Debian packages the e2e tests run in the guest, which uses the host's root: `ip` drives its
/// network; tcpdump and tshark capture and decrypt the wire (`wireshark.rs`); iptables writes
/// a Service's DNAT rules as kube-proxy does (`fail_closed.rs`); podman and runc run the
/// DaemonSet's pod from the image (`podman.rs`).
const PACKAGES: &[Package] = &[
    Package {
        name: "podman",
        provides: "podman",
    },
    Package {
        name: "runc",
        provides: "/usr/sbin/runc",
    },
    Package {
        name: "iptables",
        provides: "iptables",
    },
    Package {
        name: "iproute2",
        provides: "ip",
    },
    Package {
        name: "tcpdump",
        provides: "tcpdump",
    },
    Package {
        name: "tshark",
        provides: "tshark",
    },
];

/// The whole suite's limit in the guest, boot included. Its 25 tests took 804 s under TCG on a
/// 2-core machine that another build shared: a busy machine must make the suite slower, not
/// fail it.
const SUITE_TIMEOUT_S: u64 = 2700;

/// The variable that names the image archive for the test that runs the DaemonSet's pod from it
/// (`podman.rs`).
const IMAGE_ENV: &str = "XSTEER_IMAGE_ARCHIVE";

/// Builds the e2e tests and the image, runs the tests in the VM, and fails unless at least one
/// ran and none failed.
pub fn run_e2e(root: &Path) -> Result<()> {
    install::apt(PACKAGES)?;
    // As the deployment level builds it (a no-op when it just did): the image of this tree.
    let image = image::run(root, image::Args::default())?;
    let binary = build(root)?;
    let args = Args {
        kernel: None,
        cpus: None,
        mem: DEFAULT_MEM_MB,
        timeout: SUITE_TIMEOUT_S,
        command: vec![
            binary,
            "--include-ignored".into(),
            "--test-threads=1".into(),
            // The wire counts and losses each test prints belong in the log when it passes too.
            "--show-output".into(),
        ],
        env: vec![(IMAGE_ENV.to_owned(), path_str(&image.path)?)],
    };
    let guest = super::boot(root, &args)?;
    match guest.ending {
        Ending::Exited(0) => {}
        Ending::Exited(code) => bail!("end-to-end tests failed in the VM (exit code {code})"),
        Ending::TimedOut => bail!("end-to-end tests timed out in the VM"),
        Ending::NoExitCode => bail!("the VM running the end-to-end tests died"),
    }
    let (passed, failed) = summary(&String::from_utf8_lossy(&guest.stdout));
    if failed > 0 || passed == 0 {
        bail!(
            "end-to-end tests: {passed} passed, {failed} failed; at least one must run, none fail"
        );
    }
    eprintln!("xtask: end-to-end tests in the VM: {passed} passed");
    Ok(())
}

/// Builds the `e2e` test binary and returns its path.
fn build(root: &Path) -> Result<String> {
    let out = Command::new("cargo")
        .current_dir(root)
        .args([
            "test", "--locked", "-p", "xsteer", "--test", "e2e", "--no-run",
        ])
        .arg("--message-format=json-render-diagnostics")
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo test --no-run for the e2e tests")?;
    if !out.status.success() {
        bail!("building the e2e tests failed: {}", out.status);
    }
    // The `xsteer` binary is built too (for tests that run it): keep the e2e test target's line.
    const KEY: &str = "\"executable\":\"";
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.contains("\"kind\":[\"test\"]") && line.contains("\"name\":\"e2e\""))
        .filter_map(|line| {
            let rest = &line[line.find(KEY)? + KEY.len()..];
            Some(rest[..rest.find('"')?].to_owned())
        })
        .next_back()
        .context("cargo reported no executable for the e2e tests")
}

/// Sums libtest's "test result: ok. N passed; M failed; …" lines.
fn summary(stdout: &str) -> (u32, u32) {
    let count = |line: &str, what: &str| -> u32 {
        line.split(';')
            .find_map(|part| {
                part.trim()
                    .strip_suffix(what)?
                    .rsplit(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    stdout
        .lines()
        .filter(|line| line.starts_with("test result:"))
        .fold((0, 0), |(p, f), line| {
            (p + count(line, " passed"), f + count(line, " failed"))
        })
}
