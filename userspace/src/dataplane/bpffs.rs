//! The BPF filesystem, where programs, maps and links are pinned to outlive the agent.

use std::{io, os::unix::fs::MetadataExt, path::Path};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

/// Where the kernel conventionally mounts bpffs.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// What [`ensure_mounted`] found at [`BPFFS_ROOT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mount {
    /// bpffs was mounted already, or xsteer mounted it in the host's mount namespace: pins
    /// stay until a reboot.
    Lasting,
    /// xsteer mounted it in a mount namespace other than PID 1's (as `ip netns exec` makes
    /// for each command): its pins vanish with that namespace, and no other process sees them.
    Private,
}

/// What to tell the operator when [`ensure_mounted`] found [`Mount::Private`], with what is
/// `lost` along with the namespace.
pub fn private_notice(lost: &str) -> String {
    format!(
        "bpffs was not mounted at {BPFFS_ROOT} in this mount namespace, which is not the host's \
         (as under `ip netns exec`, which gives each command one of its own): xsteer mounted one \
         that vanishes with this namespace, under `ip netns exec` as soon as the command exits, \
         {lost}; run xsteer where bpffs is mounted: enter the network namespace alone \
         (`nsenter --net=/run/netns/NAME xsteer ...`, or `xsteer lab exec` in the lab) with a \
         --pin-dir of its own per namespace, or give a container the host's {BPFFS_ROOT}"
    )
}

/// Whether `path` lies on a bpffs mount.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    Ok(statfs(path)?.filesystem_type() == BPF_FS_MAGIC)
}

/// Mounts bpffs at [`BPFFS_ROOT`] unless it is already there, and says whether what it mounted
/// is private to this mount namespace.
///
/// Minimal systems and some containers start without it; pinning would fail with ENOENT or
/// land on a plain tmpfs where nothing survives.
pub fn ensure_mounted() -> io::Result<Mount> {
    let root = Path::new(BPFFS_ROOT);
    let found = is_bpffs(root)?;
    if !found {
        mount(
            Some("bpf"),
            root,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )?;
    }
    match (mount_ns("/proc/self/ns/mnt"), mount_ns("/proc/1/ns/mnt")) {
        (Ok(own), Ok(init)) => Ok(classify(found, own, init)),
        // No /proc to compare by: no alarm.
        _ => Ok(Mount::Lasting),
    }
}

/// The identity of a mount namespace: the device and inode of its `/proc/PID/ns/mnt` file.
/// `metadata` follows the magic link to the namespace itself.
fn mount_ns(path: &str) -> io::Result<(u64, u64)> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

/// What the bpffs at [`BPFFS_ROOT`] means for pins: one `found` there is someone's mount that
/// outlives this process; one it mounted itself in mount namespace `own` is private unless
/// `own` is PID 1's, `init`.
fn classify(found: bool, own: (u64, u64), init: (u64, u64)) -> Mount {
    if !found && own != init {
        Mount::Private
    } else {
        Mount::Lasting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_mount_of_our_own_outside_the_hosts_namespace_is_private() {
        let host = (4, 4_026_531_841);
        let unshared = (4, 4_026_532_500);
        assert_eq!(classify(false, unshared, host), Mount::Private);
        assert_eq!(classify(false, host, host), Mount::Lasting);
        // Found mounted: someone else's mount, which outlives this process.
        assert_eq!(classify(true, unshared, host), Mount::Lasting);
        assert_eq!(classify(true, host, host), Mount::Lasting);
        // Same inode on another device is another namespace.
        assert_eq!(classify(false, (5, host.1), host), Mount::Private);
    }

    #[test]
    fn a_mount_namespace_is_named_by_the_namespace_not_the_link() {
        let own = mount_ns("/proc/self/ns/mnt").unwrap();
        let by_pid = mount_ns(&format!("/proc/{}/ns/mnt", std::process::id())).unwrap();
        assert_eq!(own, by_pid, "two links to one namespace");
        let link = std::fs::symlink_metadata("/proc/self/ns/mnt").unwrap();
        assert_ne!(own, (link.dev(), link.ino()), "the link was followed");
    }
}
