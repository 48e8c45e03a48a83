//! Which guest kernel to boot: Debian's linux-image-6.12-amd64, unpacked under the target dir.
//!
//! The stock package is what has ESP, GCM and the 9p/overlay modules the bed needs; the host's own
//! kernel has none of them. The bed needs only its image and modules, so the package is
//! downloaded and unpacked into `target/vm/kernel/<version>/` instead of installed: the host's
//! /boot, boot loader and packages stay as they were. The guest mounts the unpacked modules on
//! /lib/modules/<version>, where modprobe looks. A kernel installed on the host can be booted
//! with `--kernel`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::install;

/// The Debian metapackage that depends on the newest 6.12 kernel image package.
const META_PACKAGE: &str = "linux-image-6.12-amd64";

/// A kernel to boot: its image and its modules.
pub struct Kernel {
    /// The version, as `uname -r` prints it in the guest.
    pub version: String,
    /// The kernel image.
    pub vmlinuz: PathBuf,
    /// The modules directory, with modules.dep.
    pub modules: PathBuf,
}

impl Kernel {
    /// The kernel `version` as unpacked in `dir`.
    fn unpacked(dir: &Path, version: &str) -> Kernel {
        Kernel::under(&dir.join(version), version)
    }

    /// The kernel `version` as installed on the host.
    fn installed(version: &str) -> Kernel {
        Kernel::under(Path::new("/"), version)
    }

    /// The kernel `version` with /boot and /lib/modules under `root`.
    fn under(root: &Path, version: &str) -> Kernel {
        Kernel {
            vmlinuz: root.join(format!("boot/vmlinuz-{version}")),
            modules: root.join(format!("lib/modules/{version}")),
            version: version.to_owned(),
        }
    }

    /// Whether both the image and the modules (with their modules.dep) are there.
    fn complete(&self) -> bool {
        self.vmlinuz.is_file() && self.modules.join("modules.dep").is_file()
    }

    /// Whether the guest must mount the modules on /lib/modules/<version> for modprobe to find
    /// them.
    pub fn modules_elsewhere(&self) -> bool {
        self.modules != Kernel::installed(&self.version).modules
    }
}

/// The requested kernel version (unpacked in `dir` or installed on the host), or else the newest
/// 6.12 unpacked in `dir`, downloaded and unpacked first when there is none.
pub fn find(dir: &Path, requested: Option<&str>) -> Result<Kernel> {
    let kernel = match requested {
        Some(version) => requested_kernel(dir, version)?,
        None => match newest_612(unpacked(dir)) {
            Some(version) => Kernel::unpacked(dir, &version),
            None => fetch(dir)?,
        },
    };
    // Debian ships vmlinuz with mode 0600: only root can boot it.
    fs::File::open(&kernel.vmlinuz)
        .with_context(|| format!("cannot read {} (run as root)", kernel.vmlinuz.display()))?;
    Ok(kernel)
}

/// The kernel `version`, unpacked in `dir` or else installed on the host.
fn requested_kernel(dir: &Path, version: &str) -> Result<Kernel> {
    let candidates = [Kernel::unpacked(dir, version), Kernel::installed(version)];
    if let Some(kernel) = candidates.into_iter().find(Kernel::complete) {
        return Ok(kernel);
    }
    bail!(
        "kernel {version} has no image and modules.dep unpacked in {} (there: {}) nor installed \
         in /boot and /lib/modules (there: {})",
        dir.display(),
        list(unpacked(dir)),
        list(installed())
    )
}

fn list(versions: Vec<String>) -> String {
    if versions.is_empty() {
        "none".to_owned()
    } else {
        versions.join(", ")
    }
}

/// The newest 6.12 amd64 kernel among `versions`.
fn newest_612(versions: Vec<String>) -> Option<String> {
    versions
        .into_iter()
        .filter(|v| v.starts_with("6.12.") && v.ends_with("-amd64"))
        .max_by_key(|v| numbers(v))
}

/// Kernel versions unpacked completely in `dir`.
fn unpacked(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.') && Kernel::unpacked(dir, name).complete())
        .collect()
}

/// Kernel versions installed on the host with both an image and modules.dep.
fn installed() -> Vec<String> {
    let Ok(entries) = fs::read_dir("/lib/modules") else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| Kernel::installed(name).complete())
        .collect()
}

/// The digit runs of a version, for ordering 6.12.9 before 6.12.117.
fn numbers(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Downloads the image package that the metapackage depends on and unpacks it into
/// `dir/<version>`. The unpacking happens in a staging dir renamed at the end, so an
/// interrupted fetch leaves nothing that looks complete.
fn fetch(dir: &Path) -> Result<Kernel> {
    let (package, version) = match image_package() {
        Ok(found) => found,
        // A fresh machine may have no package lists yet, or old ones.
        Err(_) => {
            install::update()?;
            image_package()?
        }
    };
    let pinned = format!("{package}={version}");
    eprintln!(
        "xtask vm: downloading {pinned} (about 110 MB) to unpack it under {}; nothing is installed",
        dir.display()
    );
    let staging = dir.join(format!(".fetch-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let kernel = unpack(dir, &staging, &pinned);
    let _ = fs::remove_dir_all(&staging);
    let kernel = kernel?;
    eprintln!("xtask vm: kernel {} unpacked", kernel.version);
    Ok(kernel)
}

/// Downloads `pinned` (`package=version`) into `staging`, unpacks it there, completes its
/// modules dir and moves it to `dir/<version>`.
fn unpack(dir: &Path, staging: &Path, pinned: &str) -> Result<Kernel> {
    install::run(
        install::apt_get()
            // The target dir may lie where apt's unprivileged download user cannot enter (a
            // checkout in a mode-700 home); apt would then download as root anyway, warning.
            .args(["-o", "APT::Sandbox::User=root", "-q", "download", pinned])
            .current_dir(staging),
    )?;
    let deb = only_deb(staging)?;
    let tree = staging.join("tree");
    install::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    fs::remove_file(&deb).with_context(|| format!("removing {}", deb.display()))?;
    let version = only_entry(&tree.join("lib/modules"))?;
    // The package leaves modules.dep to its postinst, which is not run here.
    install::run(Command::new("depmod").arg("-b").arg(&tree).arg(&version))?;
    let kernel = Kernel::under(&tree, &version);
    if !kernel.complete() {
        bail!(
            "{pinned} unpacked without {} or {}",
            kernel.vmlinuz.display(),
            kernel.modules.join("modules.dep").display()
        );
    }
    let target = dir.join(&version);
    // A leftover that is not complete (complete ones are found before fetching) is replaced;
    // a concurrent fetch that got there first is kept.
    if !Kernel::unpacked(dir, &version).complete() {
        let _ = fs::remove_dir_all(&target);
        if let Err(e) = fs::rename(&tree, &target)
            && !Kernel::unpacked(dir, &version).complete()
        {
            return Err(e).with_context(|| format!("moving the kernel to {}", target.display()));
        }
    }
    Ok(Kernel::unpacked(dir, &version))
}

/// The image package the metapackage depends on, and its version, from apt's package lists.
fn image_package() -> Result<(String, String)> {
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions", META_PACKAGE])
        .output()
        .context("cannot start apt-cache")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || stdout.trim().is_empty() {
        bail!(
            "apt-cache knows no {META_PACKAGE}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    image_dependency(&stdout).with_context(|| {
        format!("{META_PACKAGE} does not depend on a versioned linux-image package")
    })
}

/// In an `apt-cache show` record, the first `linux-image-*` dependency pinned with `(= version)`.
fn image_dependency(record: &str) -> Option<(String, String)> {
    let depends = record.lines().find_map(|l| l.strip_prefix("Depends:"))?;
    depends.split([',', '|']).find_map(|dep| {
        let (name, pin) = dep.trim().split_once(' ')?;
        let version = pin.trim().strip_prefix("(=")?.strip_suffix(')')?.trim();
        name.starts_with("linux-image-")
            .then(|| (name.to_owned(), version.to_owned()))
    })
}

/// The one .deb file in `dir`.
fn only_deb(dir: &Path) -> Result<PathBuf> {
    let debs: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    match <[PathBuf; 1]>::try_from(debs) {
        Ok([deb]) => Ok(deb),
        Err(debs) => bail!(
            "expected one downloaded .deb in {}, found {}",
            dir.display(),
            debs.len()
        ),
    }
}

/// The name of the one entry in `dir`.
fn only_entry(dir: &Path) -> Result<String> {
    let names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match <[String; 1]>::try_from(names) {
        Ok([name]) => Ok(name),
        Err(names) => bail!(
            "expected one kernel version in {}, found {names:?}",
            dir.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_package_is_read_from_the_metapackage_record() {
        let record = "Package: linux-image-6.12-amd64\nVersion: 6.12.117-1~deb12u1\n\
            Depends: linux-image-6.12.117+deb12-amd64 (= 6.12.117-1~deb12u1)\n";
        assert_eq!(
            image_dependency(record),
            Some((
                "linux-image-6.12.117+deb12-amd64".to_owned(),
                "6.12.117-1~deb12u1".to_owned()
            ))
        );
        let unpinned = "Depends: kmod, linux-image-6.12.117+deb12-amd64\n";
        assert_eq!(image_dependency(unpinned), None);
    }

    #[test]
    fn versions_order_by_their_numbers() {
        let newest = newest_612(vec![
            "6.12.9+deb12-amd64".into(),
            "6.12.117+deb12-amd64".into(),
            "6.18.44-fc-v1045".into(),
        ]);
        assert_eq!(newest.as_deref(), Some("6.12.117+deb12-amd64"));
    }
}
