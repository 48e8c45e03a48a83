//! Wakes the agent as soon as a file it reads changes: the config, the key file, a node record.
//!
//! The agent looks at its inputs every second anyway; an inotify watch on the directories that
//! hold them makes it look at once when one is written, so a rotation or a re-key no longer
//! waits a poll per hop. Directories are watched rather than files because tools replace files
//! by renaming a new one over them. Where inotify sees nothing (some network filesystems, or a
//! directory that sync tools swap), the poll still catches the change.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, RawFd},
    path::Path,
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
