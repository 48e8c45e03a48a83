//! What xsteer keeps in its state directory so that it outlives the agent and reboots: the
//! ledger of outbound keys it has installed ([`KeyLedger`]), the key generations it retired
//! ([`RetiredGenerations`]) and its epochs ([`NodeEpochs`]).
//!
//! Each is an append-only file of lines, and each line is written and fsynced before the kernel
//! change it guards, so a crash can only leave a line whose change never happened, never the
//! reverse. The directory is created mode 0700 and the files 0600.

pub mod epochs;
pub mod ledger;
mod lines;
pub mod retired;

use std::{io, path::PathBuf};

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
    /// No random epoch could be drawn.
    #[error("drawing a new epoch: {0}")]
    Random(RandomError),
}

impl StateError {
    fn io(path: &std::path::Path) -> impl FnOnce(io::Error) -> StateError + '_ {
        move |error| StateError::Io {
            path: path.to_owned(),
            error,
        }
    }
}
