//! The node's epochs across agent restarts: the one in service and, during a re-key, the one it
//! moves to.
//!
//! An epoch is an input of every SA key the node shares, so a new one re-keys every SA at once
//! (docs/keys.md). The config names the first; re-keys draw the next ones, and a restarted agent
//! must go on with the same, or it would derive keys its peers do not have. They are kept in
//! `<state dir>/epochs`, an append-only log with one line per change, fsynced before the change
//! is used:
//! - `configured <epoch>`: the config's `node.epoch`, when first seen: it is in service.
//! - `next <epoch>`: a re-key to this epoch began (or a fresh epoch was drawn).
//! - `current <epoch>`: the re-key finished: the next epoch is the one in service.
//!
//! An operator who puts a new `node.epoch` in the config starts over from it. A node whose
//! config gives none (its peers read its epoch from its record) draws one on its first start.

use std::path::{Path, PathBuf};

use super::{StateError, lines};
use crate::keys::Epoch;

/// The log's file name in the state directory.
pub const FILE: &str = "epochs";

/// The node's epochs, as the log has them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEpochs {
    path: PathBuf,
    configured: Option<Epoch>,
    current: Epoch,
    next: Option<Epoch>,
}

/// The log as written, before the config has a say.
struct Log {
    path: PathBuf,
    configured: Option<Epoch>,
    current: Option<Epoch>,
    next: Option<Epoch>,
}

impl NodeEpochs {
    /// The epochs in `state_dir` for a config whose `node.epoch` is `configured`, without
    /// writing: what [`NodeEpochs::open`] would find. Without a configured epoch, the log must
    /// hold one: an agent has run on this node.
    pub fn read(state_dir: &Path, configured: Option<Epoch>) -> Result<NodeEpochs, StateError> {
        let log = Log::read(state_dir)?;
        match (configured, log.current) {
            (Some(configured), _) if log.configured != Some(configured) => Ok(NodeEpochs {
                path: log.path,
                configured: log.configured,
                current: configured,
                next: None,
            }),
            (_, Some(current)) => Ok(NodeEpochs {
                path: log.path,
                configured: log.configured,
                current,
                next: log.next,
            }),
            (_, None) => Err(StateError::NoEpoch { path: log.path }),
        }
    }

    /// The epochs in `state_dir` for a config whose `node.epoch` is `configured`; records that
    /// epoch first if the log does not have it as the configured one. Without a configured
    /// epoch, draws one if the log has none yet.
    pub fn open(state_dir: &Path, configured: Option<Epoch>) -> Result<NodeEpochs, StateError> {
        match NodeEpochs::read(state_dir, configured) {
            Ok(mut epochs) => {
                if let Some(configured) = configured.filter(|c| epochs.configured != Some(*c)) {
                    epochs.append("configured", configured)?;
                    epochs.configured = Some(configured);
                }
                Ok(epochs)
            }
            Err(StateError::NoEpoch { path }) => {
                let first = Epoch::random().map_err(StateError::Random)?;
                let epochs = NodeEpochs {
                    path,
                    configured: None,
                    current: first,
                    next: None,
                };
                epochs.append("next", first)?;
                epochs.append("current", first)?;
                Ok(epochs)
            }
            Err(e) => Err(e),
        }
    }
}

impl Log {
    fn read(state_dir: &Path) -> Result<Log, StateError> {
        let path = state_dir.join(FILE);
        let lines = lines::read_lines(&path).map_err(StateError::io(&path))?;
        let mut epochs = Log {
            path,
            configured: None,
            current: None,
            next: None,
        };
        for (i, line) in lines.iter().enumerate() {
            let bad = |problem: String| StateError::Corrupt {
                path: epochs.path.clone(),
                line: i + 1,
                problem,
            };
            if line.is_empty() {
                continue;
            }
            let (word, hex) = line
                .split_once(' ')
                .ok_or_else(|| bad(format!("{line:?} is not `<word> <epoch>`")))?;
            let epoch: Epoch = hex.parse().map_err(|e| bad(format!("{e}")))?;
            match word {
                "configured" => {
                    epochs.configured = Some(epoch);
                    epochs.current = Some(epoch);
                    epochs.next = None;
                }
                "next" => epochs.next = Some(epoch),
                "current" if epochs.next == Some(epoch) => {
                    epochs.current = Some(epoch);
                    epochs.next = None;
                }
                "current" => return Err(bad(format!("{epoch} was never the next epoch"))),
                _ => return Err(bad(format!("{word:?} is not configured, next or current"))),
            }
        }
        Ok(epochs)
    }
}

impl NodeEpochs {
    fn append(&self, word: &str, epoch: Epoch) -> Result<(), StateError> {
        lines::append_line(&self.path, &format!("{word} {epoch}"))
            .map_err(StateError::io(&self.path))
    }

    /// The epoch in service.
    pub fn current(&self) -> Epoch {
        self.current
    }

    /// The epoch being re-keyed to, if a re-key is under way.
    pub fn next(&self) -> Option<Epoch> {
        self.next
    }

    /// Begins a re-key: draws and records a next epoch, whose SPI tag differs from the current
    /// one's. Returns the next epoch; one already under way is kept.
    pub fn begin_rekey(&mut self) -> Result<Epoch, StateError> {
        if let Some(next) = self.next {
            return Ok(next);
        }
        let next = Epoch::random_after(&self.current).map_err(StateError::Random)?;
        self.append("next", next)?;
        self.next = Some(next);
        Ok(next)
    }

    /// Finishes the re-key under way: the next epoch is the one in service.
    pub fn finish_rekey(&mut self) -> Result<(), StateError> {
        let Some(next) = self.next else {
            return Ok(());
        };
        self.append("current", next)?;
        self.current = next;
        self.next = None;
        Ok(())
    }

    /// Starts over from a fresh epoch, in service at once, with no re-key under way: for when
    /// the kernel lost this node's SAs (a reboot) and the outbound keys of its epochs are used
    /// up. Returns the new epoch, whose SPI tag differs from both old ones.
    pub fn start_over(&mut self) -> Result<Epoch, StateError> {
        let fresh = loop {
            let candidate = Epoch::random_after(&self.current).map_err(StateError::Random)?;
            if self.next.is_none_or(|n| n.spi_tag() != candidate.spi_tag()) {
                break candidate;
            }
        };
        self.append("next", fresh)?;
        self.append("current", fresh)?;
        self.current = fresh;
        self.next = None;
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt};

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xsteer-epochs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_rekey_survives_a_restart_and_a_new_configured_epoch_starts_over() {
        let dir = temp_dir("restart");
        let first = Epoch::from_bytes([0x11; 16]);
        let mut epochs = NodeEpochs::open(&dir, Some(first)).unwrap();
        assert_eq!((epochs.current(), epochs.next()), (first, None));

        let next = epochs.begin_rekey().unwrap();
        assert_ne!(next.spi_tag(), first.spi_tag(), "a new SPI tag");
        assert_eq!(epochs.begin_rekey().unwrap(), next, "one re-key at a time");
        let restarted = NodeEpochs::open(&dir, Some(first)).unwrap();
        assert_eq!(restarted, epochs, "mid re-key, a restart resumes it");

        epochs.finish_rekey().unwrap();
        let restarted = NodeEpochs::open(&dir, Some(first)).unwrap();
        assert_eq!((restarted.current(), restarted.next()), (next, None));

        // Starting over, mid re-key or not, puts a fresh epoch in service at once.
        let during = epochs.begin_rekey().unwrap();
        let fresh = epochs.start_over().unwrap();
        assert!(![first, next, during].contains(&fresh));
        assert!(![next.spi_tag(), during.spi_tag()].contains(&fresh.spi_tag()));
        let restarted = NodeEpochs::open(&dir, Some(first)).unwrap();
        assert_eq!((restarted.current(), restarted.next()), (fresh, None));
        let mode = fs::metadata(dir.join(FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let operator = Epoch::from_bytes([0x22; 16]);
        assert_eq!(
            NodeEpochs::read(&dir, Some(operator)).unwrap().current(),
            operator
        );
        let lines = fs::read_to_string(dir.join(FILE)).unwrap().lines().count();
        assert_eq!(lines, 6, "read writes nothing");
        let reopened = NodeEpochs::open(&dir, Some(operator)).unwrap();
        assert_eq!((reopened.current(), reopened.next()), (operator, None));
        assert_eq!(
            NodeEpochs::open(&dir, Some(operator)).unwrap().current(),
            operator
        );
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn without_a_configured_epoch_the_first_start_draws_one_and_keeps_it() {
        let dir = temp_dir("drawn");
        let e = NodeEpochs::read(&dir, None).unwrap_err();
        assert!(matches!(e, StateError::NoEpoch { .. }), "{e}");
        assert!(e.to_string().contains("set node.epoch"), "{e}");

        let first = NodeEpochs::open(&dir, None).unwrap();
        assert_eq!(first.next(), None);
        assert_eq!(NodeEpochs::read(&dir, None).unwrap(), first, "kept");
        assert_eq!(
            NodeEpochs::open(&dir, None).unwrap(),
            first,
            "not drawn again"
        );

        // An operator's epoch given later still wins, and leaving it out again keeps it.
        let operator = Epoch::from_bytes([0x33; 16]);
        assert_eq!(
            NodeEpochs::open(&dir, Some(operator)).unwrap().current(),
            operator
        );
        assert_eq!(NodeEpochs::open(&dir, None).unwrap().current(), operator);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_damaged_log_is_refused_with_its_line() {
        let dir = temp_dir("damaged");
        fs::create_dir_all(&dir).unwrap();
        let e = "11111111111111111111111111111111";
        for (text, expect) in [
            (format!("configured {e}\nnext 12\n"), "line 2: an epoch"),
            (format!("configured {e}\nlater {e}\n"), "line 2: \"later\""),
            (format!("configured {e}\ncurrent {e}\n"), "line 2: 1111"),
            ("configured\n".to_owned(), "line 1: \"configured\""),
        ] {
            fs::write(dir.join(FILE), text).unwrap();
            let err = NodeEpochs::read(&dir, Some(Epoch::from_bytes([0x11; 16])))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expect), "{err:?} lacks {expect:?}");
            assert!(err.contains("epochs"), "{err:?} names the file");
        }
        let _ = fs::remove_dir_all(dir);
    }
}
