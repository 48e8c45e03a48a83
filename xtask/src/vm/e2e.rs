//! The end-to-end level of `cargo xtask test`: the `e2e` test binary of the xsteer crate, built
//! on the host (compiling inside the emulated guest would take far too long) and run in one guest
//! boot with its VM-only (ignored on the host) tests included.
//!
//! The same boot first runs the bpf-tests again, against the guest's kernel: the host's may
//! accept a program (or build an skb) that the stock kernel xsteer runs on does not, and the
//! e2e tests would show that only late and indirectly.

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
    let e2e = test_binaries(root, &["-p", "xsteer", "--test", "e2e"])?;
    let [e2e] = e2e.as_slice() else {
        bail!(
            "cargo reported {} executables for the e2e tests, not one",
            e2e.len()
        );
    };
    let bpf_tests = test_binaries(root, &["-p", "xsteer-bpf-tests", "--tests"])?;
    if bpf_tests.is_empty() {
        bail!("cargo reported no executable for the bpf-tests");
    }
    // Every binary runs whatever another one did; the guest's exit code says if any failed.
    let script = r#"e2e=$1; shift; rc=0
for t in "$@"; do "$t" || rc=1; done
"$e2e" --include-ignored --test-threads=1 --show-output || rc=1
exit $rc"#;
    let mut command: Vec<String> = vec!["sh".into(), "-c".into(), script.into(), "sh".into()];
    command.push(e2e.clone());
    command.extend(bpf_tests.iter().cloned());
    let args = Args {
        kernel: None,
        cpus: None,
        mem: DEFAULT_MEM_MB,
        timeout: SUITE_TIMEOUT_S,
        command,
        env: vec![
            (IMAGE_ENV.to_owned(), path_str(&image.path)?),
            // A bpf-test that cannot load its object fails rather than skips.
            ("XSTEER_REQUIRE_PRIVILEGED".to_owned(), "1".to_owned()),
        ],
    };
    let guest = super::boot(root, &args)?;
    match guest.ending {
        Ending::Exited(0) => {}
        Ending::Exited(code) => {
            bail!("bpf-tests or end-to-end tests failed in the VM (exit code {code})")
        }
        Ending::TimedOut => bail!("end-to-end tests timed out in the VM"),
        Ending::NoExitCode => bail!("the VM running the end-to-end tests died"),
    }
    let (passed, failed) = summary(&String::from_utf8_lossy(&guest.stdout));
    if failed > 0 || passed == 0 {
        bail!(
            "bpf-tests and end-to-end tests in the VM: {passed} passed, {failed} failed; at \
             least one must run, none fail"
        );
    }
    eprintln!("xtask: bpf-tests and end-to-end tests in the VM: {passed} passed");
    Ok(())
}

/// Builds the test targets that `selection` (cargo test arguments) names and returns their
/// executables.
fn test_binaries(root: &Path, selection: &[&str]) -> Result<Vec<String>> {
    let out = Command::new("cargo")
        .current_dir(root)
        .args(["test", "--locked", "--no-run"])
        .args(selection)
        .arg("--message-format=json-render-diagnostics")
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running cargo test --no-run {}", selection.join(" ")))?;
    if !out.status.success() {
        bail!(
            "building the tests {} failed: {}",
            selection.join(" "),
            out.status
        );
    }
    // Binaries built along (`xsteer`, for tests that run it) are not test targets.
    const KEY: &str = "\"executable\":\"";
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.contains("\"kind\":[\"test\"]"))
        .filter_map(|line| {
            let rest = &line[line.find(KEY)? + KEY.len()..];
            Some(rest[..rest.find('"')?].to_owned())
        })
        .collect())
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
