//! The BPF filesystem, where programs, maps and links are pinned to outlive the agent.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt, path::Path};

/// Where the kernel conventionally mounts bpffs.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

const BPF_FS_MAGIC: i64 = 0xCAFE_4A11;

/// Whether `path` lies on a bpffs mount.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and `stat` is a valid out-pointer.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_type as i64 == BPF_FS_MAGIC)
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
    let (source, target, fstype) = (c"bpf", c"/sys/fs/bpf", c"bpf");
    // SAFETY: all pointers are NUL-terminated literals; no mount data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
