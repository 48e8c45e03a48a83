//! The BPF filesystem, where programs, maps and links are pinned to outlive the agent.

use std::{io, path::Path};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

/// Where the kernel conventionally mounts bpffs.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Whether `path` lies on a bpffs mount.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    Ok(statfs(path)?.filesystem_type() == BPF_FS_MAGIC)
}

/// Mounts bpffs at [`BPFFS_ROOT`] unless it is already there.
///
/// Minimal systems and some containers start without it; pinning would fail with ENOENT or
/// land on a plain tmpfs where nothing survives.
pub fn ensure_mounted() -> io::Result<()> {
    let root = Path::new(BPFFS_ROOT);
    if is_bpffs(root)? {
        return Ok(());
    }
    mount(
        Some("bpf"),
        root,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )?;
    Ok(())
}
