//! Wakes the agent as soon as a file it reads changes: the config, the key file, a node record.
//!
//! The agent looks at its inputs every second anyway; an inotify watch on the directories that
//! hold them makes it look at once when one is written, so a rotation or a re-key no longer
//! waits a poll per hop. Directories are watched rather than files because tools replace files
//! by renaming a new one over them. Where inotify sees nothing (some network filesystems, or a
//! directory that sync tools swap), the poll still catches the change.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use tokio::io::{Interest, unix::AsyncFd};

use crate::config::Config;

/// The directories of the agent's inputs: those of the config file at `config_path` and of its
/// key file, and the node records directory.
pub fn input_dirs(config_path: &Path, config: &Config) -> Vec<PathBuf> {
    [config_path, config.key_file.as_path()]
        .iter()
        .filter_map(|file| file.parent())
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir.to_path_buf()
            }
        })
        .chain(config.nodes_dir.clone())
        .collect()
}

/// An inotify instance watching directories for files written, moved in or removed.
pub struct DirWatch {
    fd: AsyncFd<OwnedFd>,
}

impl DirWatch {
    /// Watches each directory of `dirs` that exists; a missing one is skipped (the poll covers
    /// it).
    pub fn new<'a>(dirs: impl IntoIterator<Item = &'a Path>) -> io::Result<DirWatch> {
        // SAFETY: inotify_init1 takes flags only; a non-negative result is a new descriptor that
        // nothing else owns.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor (checked above), owned from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mask = libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_DELETE | libc::IN_CREATE;
        for dir in dirs {
            let path = CString::new(dir.as_os_str().as_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
            // SAFETY: `fd` is an inotify descriptor and `path` a NUL-terminated string.
            if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) } < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::NotFound {
                    return Err(e);
                }
            }
        }
        // SAFETY: `fd` is open and owned by the AsyncFd for its whole life.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(DirWatch { fd })
    }

    /// Waits until something changed in a watched directory, then drains the events: what
    /// changed is read from the files themselves.
    pub async fn changed(&self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut buf = [0u8; 4096];
            let mut got = false;
            loop {
                // SAFETY: reads into `buf`, a writable buffer of its length.
                let n = unsafe {
                    libc::read(
                        self.fd.get_ref().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    )
                };
                match n {
                    1.. => got = true,
                    0 => {
                        guard.clear_ready();
                        break;
                    }
                    _ => {
                        let e = io::Error::last_os_error();
                        match e.kind() {
                            io::ErrorKind::WouldBlock => {
                                guard.clear_ready();
                                break;
                            }
                            io::ErrorKind::Interrupted => {}
                            _ => return Err(e),
                        }
                    }
                }
            }
            if got {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, time::Duration};

    use super::*;

    #[tokio::test]
    async fn a_file_renamed_into_a_watched_directory_wakes_the_watch() {
        let dir = std::env::temp_dir().join(format!("xsteer-watch-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let watch = DirWatch::new([dir.as_path(), Path::new("/nonexistent/xsteer")]).unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(100), watch.changed()).await;
        assert!(quiet.is_err(), "nothing changed yet");
        fs::write(dir.join(".b.json.tmp"), "{}").unwrap();
        fs::rename(dir.join(".b.json.tmp"), dir.join("b.json")).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("woken by the write and the rename")
            .unwrap();
        let _ = fs::remove_dir_all(dir);
    }
}
