//! Files replaced whole, atomically and durably: the key file on rotation, the state
//! directory's ledger, node records and the peer cache.
//!
//! A reader sees the old file or the new one, never a mix, and a crash at any point leaves one
//! of them: the new content goes to a temporary file beside the target, is fsynced, renamed
//! over the target, and the directory is fsynced so that the rename itself survives.

use std::{
    ffi::OsString,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// The temporary file `replace` writes before renaming it over `path`: `.NAME.tmp` beside it.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".tmp");
    path.with_file_name(name)
}

/// Replaces `path` with `contents`, mode `mode` whatever the umask.
pub fn replace(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let temp = temp_path(path);
    // A temporary file left by a crash is stale: this one is written afresh.
    match fs::remove_file(&temp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .and_then(|mut file| {
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            file.write_all(contents)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&temp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_with_its_mode_and_no_temporary_left() {
        let dir = std::env::temp_dir().join(format!("xsteer-durable-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.json");
        assert_eq!(temp_path(&path), dir.join(".f.json.tmp"));
        // A stale temporary file from a crash does not get in the way.
        fs::write(temp_path(&path), "stale").unwrap();
        replace(&path, b"one", 0o600).unwrap();
        replace(&path, b"two", 0o644).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert!(!temp_path(&path).exists());
        // A directory that does not exist: an error, nothing written.
        assert!(replace(&dir.join("no/such/f"), b"x", 0o600).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
