//! What xsteer keeps in its state directory so that it outlives the agent and reboots: the
//! ledger of outbound keys it has installed ([`KeyLedger`]), the key generations it retired
//! ([`RetiredGenerations`]) and its epochs ([`NodeEpochs`]).
//!
//! Each is a file of lines, appended to, and each line is written and fsynced before the kernel
//! change it guards, so a crash can only leave a line whose change never happened, never the
//! reverse; the ledger, when pruned, is replaced whole by an atomic rename. The directory is
//! created mode 0700 and the files 0600.

pub mod epochs;
pub mod ledger;
mod lines;
pub mod retired;

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Seek, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

pub use epochs::NodeEpochs;
pub use ledger::KeyLedger;
pub use retired::RetiredGenerations;

use crate::keys::RandomError;

/// Why a state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing the file failed.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: io::Error,
    },
    /// A line is not one xsteer writes: the file was edited or damaged.
    #[error("{}: line {line}: {problem}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        problem: String,
    },
    /// The config gives no epoch and the log holds none: no agent has run on this node yet.
    #[error(
        "{}: no epoch yet, and the config gives no node.epoch: start the agent once, which draws \
         one, or set node.epoch",
        path.display()
    )]
    NoEpoch {
        /// The epochs log.
        path: PathBuf,
    },
    /// No random epoch could be drawn.
    #[error("drawing a new epoch: {0}")]
    Random(RandomError),
    /// Another agent holds the state directory.
    #[error(
        "{} is in use by another xsteer agent{}: one agent per node and state directory",
        dir.display(),
        holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    Locked {
        /// The state directory.
        dir: PathBuf,
        /// The process that holds it, as it wrote in the lock file.
        holder: Option<u32>,
    },
}

/// The lock file, in the state directory, that one agent holds while it runs.
pub const LOCK_FILE: &str = "agent.lock";

/// A state directory held by this process until dropped: two agents on one node would undo
/// each other's epochs and retirements.
#[derive(Debug)]
pub struct StateLock {
    _held: Flock<File>,
}

/// Takes the state directory `dir` (created if missing) for this process, without waiting; an
/// agent already holding it is an error that names its pid.
pub fn lock(dir: &Path) -> Result<StateLock, StateError> {
    lines::create_dir(dir).map_err(StateError::io(dir))?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(StateError::io(&path))?;
    let mut held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(held) => held,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(StateError::Locked {
                dir: dir.to_owned(),
                holder: text.trim().parse().ok(),
            });
        }
        Err((_, errno)) => return Err(StateError::io(&path)(errno.into())),
    };
    // Who holds it, for the next one's message.
    let pid = std::process::id();
    held.set_len(0)
        .and_then(|()| held.rewind())
        .and_then(|()| writeln!(held, "{pid}"))
        .map_err(StateError::io(&path))?;
    Ok(StateLock { _held: held })
}

impl StateError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
        move |error| StateError::Io {
            path: path.to_owned(),
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_named_by_pid() {
        let dir = std::env::temp_dir().join(format!("xsteer-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = lock(&dir).unwrap();
        let err = lock(&dir).unwrap_err().to_string();
        assert!(
            err.contains("in use by another xsteer agent")
                && err.contains(&format!("(pid {})", std::process::id())),
            "{err}"
        );
        drop(first);
        lock(&dir).expect("free again once the holder is gone");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
