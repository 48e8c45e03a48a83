//! Wakes the agent as soon as a file it reads changes: the config, the key file, a node record.
//!
//! The agent looks at its inputs every second anyway; an inotify watch on the directories that
//! hold them makes it look at once when one is written, so a rotation or a re-key no longer
//! waits a poll per hop. Directories are watched rather than files because tools replace files
//! by renaming a new one over them. Where inotify sees nothing (some network filesystems, or a
//! directory that sync tools swap), the poll still catches the change.
//!
//! A Kubernetes Secret or ConfigMap volume is such a directory: kubelet writes the new files
//! into a new timestamped directory and renames a `..data_tmp` symlink to it over `..data`, which
//! the files (`keys` → `..data/keys`) go through. The rename is a move into the watched
//! directory, so it wakes the watch at once, and the poll's [`FileVersion`] follows the symlinks
//! to the file itself: a new inode, whatever its time and size.

use std::{
    io,
    os::{
        fd::{AsFd, AsRawFd, RawFd},
        unix::fs::MetadataExt,
    },
    path::Path,
    time::SystemTime,
};

use nix::{
    errno::Errno,
    sys::inotify::{AddWatchFlags, InitFlags, Inotify},
};
use tokio::io::{Interest, unix::AsyncFd};

/// An inotify instance watching directories for files written, moved in or removed.
pub struct DirWatch {
    fd: AsyncFd<Watched>,
}

/// The inotify instance, as tokio's reactor wants it.
struct Watched(Inotify);

impl AsRawFd for Watched {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl DirWatch {
    /// Watches each directory of `dirs` that exists; a missing one is skipped (the poll covers
    /// it).
    pub fn new<'a>(dirs: impl IntoIterator<Item = &'a Path>) -> io::Result<DirWatch> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let mask = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_CREATE;
        for dir in dirs {
            match inotify.add_watch(dir, mask) {
                Ok(_) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // SAFETY: the Inotify owns its descriptor and keeps it open for as long as the AsyncFd
        // holds it, and always returns the same one.
        let fd = unsafe { AsyncFd::register_with_interest(Watched(inotify), Interest::READABLE) }?;
        Ok(DirWatch { fd })
    }

    /// Waits until something changed in a watched directory, then drains the events: what
    /// changed is read from the files themselves.
    pub async fn changed(&self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut got = false;
            loop {
                match self.fd.get_ref().0.read_events() {
                    Ok(events) => got |= !events.is_empty(),
                    Err(Errno::EAGAIN) => {
                        guard.clear_ready();
                        break;
                    }
                    Err(Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if got {
                return Ok(());
            }
        }
    }
}

/// What identifies a version of a file for the poll, read through symlinks: a file replaced,
/// rewritten or swapped in through a symlink has another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileVersion {
    device: u64,
    inode: u64,
    modified: SystemTime,
    len: u64,
}

impl FileVersion {
    /// The version of each of `files`, `None` for one that cannot be read.
    pub fn of<'a>(files: impl IntoIterator<Item = &'a Path>) -> Vec<Option<FileVersion>> {
        files
            .into_iter()
            .map(|file| {
                let meta = std::fs::metadata(file).ok()?;
                Some(FileVersion {
                    device: meta.dev(),
                    inode: meta.ino(),
                    modified: meta.modified().ok()?,
                    len: meta.len(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt, time::Duration};

    use super::*;
    use crate::keys::KeyFile;

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

    #[tokio::test]
    async fn a_kubelet_swap_of_a_secret_volume_wakes_the_watch_and_shows_the_new_keys() {
        let dir = std::env::temp_dir().join(format!("xsteer-secret-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // kubelet's atomic writer: the files in a timestamped directory, `..data` a symlink to
        // it, and each file a symlink through `..data`. Both keys have the same length and
        // time: only the inode tells them apart.
        let written = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        let write = |stamp: &str, line: &str| {
            fs::create_dir(dir.join(stamp)).unwrap();
            let keys = dir.join(stamp).join("keys");
            fs::write(&keys, line).unwrap();
            fs::set_permissions(&keys, fs::Permissions::from_mode(0o400)).unwrap();
            fs::File::open(&keys)
                .unwrap()
                .set_modified(written)
                .unwrap();
        };
        let old = "..2026_12_01_10_00_00.123456789";
        write(
            old,
            "3 rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f10111213 128\n",
        );
        std::os::unix::fs::symlink(old, dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/keys", dir.join("keys")).unwrap();
        let key_file = dir.join("keys");
        let newest = |keys: KeyFile| keys.newest().unwrap().generation().get();
        assert_eq!(newest(KeyFile::load(&key_file).unwrap()), 3);
        let before = FileVersion::of([key_file.as_path()]);

        let watch = DirWatch::new([dir.as_path()]).unwrap();
        let new = "..2026_12_01_10_05_00.987654321";
        write(
            new,
            "4 rfc4106(gcm(aes)) 101112131415161718191a1b1c1d1e1f20212223 128\n",
        );
        std::os::unix::fs::symlink(new, dir.join("..data_tmp")).unwrap();
        // The new directory and link woke the watch already; drained, only the swap is left.
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("woken by the new directory")
            .unwrap();
        assert_eq!(
            FileVersion::of([key_file.as_path()]),
            before,
            "not swapped yet"
        );

        fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("woken by the swap of ..data")
            .unwrap();
        fs::remove_dir_all(dir.join(old)).unwrap();
        let after = FileVersion::of([key_file.as_path()]);
        assert_ne!(
            after, before,
            "the version follows the symlinks to the new file"
        );
        assert_eq!(newest(KeyFile::load(&key_file).unwrap()), 4);
        let _ = fs::remove_dir_all(dir);
    }
}
