//! Which guest kernel to boot: Debian's linux-image-6.12-amd64, found in /boot and /lib/modules.
//!
//! The stock package is what has ESP, GCM and the 9p/overlay modules the bed needs; the host's own
//! kernel has none of them. It is installed on first use.

use std::{fs, path::PathBuf};

use anyhow::{Context, Result, bail};

use crate::install::{self, Package};

/// The Debian metapackage that pulls the newest 6.12 kernel.
const KERNEL_PACKAGE: Package = Package {
    name: "linux-image-6.12-amd64",
    provides: "/usr/share/doc/linux-image-6.12-amd64",
};

/// An installed kernel: its image and its modules.
pub struct Kernel {
    pub version: String,
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
}

/// The requested kernel version, or the newest installed 6.12 (installing it if there is none).
pub fn find(requested: Option<&str>) -> Result<Kernel> {
    let version = match requested {
        Some(version) => version.to_owned(),
        None => match newest_612()? {
            Some(version) => version,
            None => {
                install::apt(&[KERNEL_PACKAGE])?;
                newest_612()?.context("linux-image-6.12-amd64 is installed but no 6.12 kernel with modules is in /boot and /lib/modules")?
            }
        },
    };
    let kernel = Kernel {
        vmlinuz: PathBuf::from(format!("/boot/vmlinuz-{version}")),
        modules: PathBuf::from(format!("/lib/modules/{version}")),
        version,
    };
    if !kernel.modules.join("modules.dep").is_file() {
        bail!(
            "kernel {}: {} has no modules.dep (installed: {})",
            kernel.version,
            kernel.modules.display(),
            installed()?.join(", ")
        );
    }
    // Debian installs vmlinuz with mode 0600: only root can boot it.
    fs::File::open(&kernel.vmlinuz)
        .with_context(|| format!("cannot read {} (run as root)", kernel.vmlinuz.display()))?;
    Ok(kernel)
}

/// The newest 6.12 amd64 kernel with both an image and modules.
fn newest_612() -> Result<Option<String>> {
    Ok(installed()?
        .into_iter()
        .filter(|v| v.starts_with("6.12.") && v.ends_with("-amd64"))
        .max_by_key(|v| numbers(v)))
}

/// Kernel versions that have both /boot/vmlinuz-V and /lib/modules/V.
fn installed() -> Result<Vec<String>> {
    let Ok(entries) = fs::read_dir("/lib/modules") else {
        return Ok(Vec::new());
    };
    let mut versions = Vec::new();
    for entry in entries {
        let name = entry.context("listing /lib/modules")?.file_name();
        let name = name.to_string_lossy().into_owned();
        if PathBuf::from(format!("/boot/vmlinuz-{name}")).exists() {
            versions.push(name);
        }
    }
    Ok(versions)
}

/// The digit runs of a version, for ordering 6.12.9 before 6.12.117.
fn numbers(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect()
}
