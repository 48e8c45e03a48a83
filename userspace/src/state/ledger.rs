//! A record, on disk, of every key this node has put on an outbound SA.
//!
//! An outbound SA starts its sequence counter at 1, and AES-GCM derives its nonce from that
//! counter: installing a key a second time after its SA vanished (deleted by hand, or lost in a
//! reboot while the configured epoch stayed the same) repeats nonces under one key, which breaks
//! GCM's confidentiality and integrity. Before xsteer installs an outbound SA it looks the key
//! up here and refuses a key it has used before; the remedy is a new epoch, of this node or of
//! the peer the SA goes to, which derives new keys. Only a one-way fingerprint of each key is
//! stored, with the epoch of this node it was derived under.
//!
//! Pruning keeps the file from growing forever: every key's derivation includes this node's
//! epoch, so once the node has left an epoch its keys can come back only if the epoch does.
//! [`KeyLedger::prune`] drops the keys of every epoch but the ones in service and keeps the
//! epoch instead, as `retired <epoch>` (41 bytes, where its keys took 66 each); an epoch that
//! comes back (an operator who configures an old `node.epoch` again) is refused
//! ([`KeyLedger::is_retired`]). Drawn epochs never come back, but one may be copied into a
//! config. At most [`RETIRED_MAX`] epochs are kept retired; past that, nothing is pruned any
//! more and the file grows as it did before pruning, for forgetting a retired epoch could let
//! its keys come back. Lines of the older format, a fingerprint without an epoch, are kept as
//! they are: their epoch is unknown, and their number no longer grows.
//!
//! Lines: `<fingerprint> <epoch>`, `<fingerprint>` (older) and `retired <epoch>`, in hex.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

use super::{StateError, lines};
use crate::keys::Epoch;

/// The ledger file inside the state directory.
pub const FILE_NAME: &str = "outbound-keys";

/// The most epochs the ledger keeps as retired; beyond them it prunes no more (2.7 MB).
pub const RETIRED_MAX: usize = 65_536;

/// The fingerprints of every outbound key installed on this node, with the epochs it left.
pub struct KeyLedger {
    path: PathBuf,
    /// Each key's fingerprint, with this node's epoch it was derived under (`None`: a line of
    /// the older format).
    seen: BTreeMap<[u8; 16], Option<Epoch>>,
    retired: BTreeSet<Epoch>,
}

/// A one-way, domain-separated fingerprint of a key.
pub fn fingerprint(key: &[u8]) -> [u8; 16] {
    let digest = Sha256::new()
        .chain_update(b"xsteer/ledger/v1\0")
        .chain_update(key)
        .finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

fn hex(bytes: &[u8; 16]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The line of a key's fingerprint.
fn key_line(fp: &[u8; 16], epoch: Option<Epoch>) -> String {
    match epoch {
        Some(epoch) => format!("{} {epoch}", hex(fp)),
        None => hex(fp),
    }
}

impl KeyLedger {
    /// Opens the ledger in `state_dir`, creating the directory (0700) and file if needed.
    pub fn open(state_dir: &Path) -> Result<KeyLedger, StateError> {
        let path = state_dir.join(FILE_NAME);
        lines::create_dir(state_dir).map_err(StateError::io(state_dir))?;
        let mut ledger = KeyLedger {
            seen: BTreeMap::new(),
            retired: BTreeSet::new(),
            path,
        };
        for (i, line) in lines::read_lines(&ledger.path)
            .map_err(StateError::io(&ledger.path))?
            .iter()
            .enumerate()
        {
            let bad = |problem: String| StateError::Corrupt {
                path: ledger.path.clone(),
                line: i + 1,
                problem,
            };
            let mut words = line.split(' ');
            let (first, second) = (words.next().unwrap_or_default(), words.next());
            if words.next().is_some() {
                return Err(bad("more than two words".into()));
            }
            let epoch = |word: &str| word.parse::<Epoch>().map_err(|e| bad(e.to_string()));
            if first == "retired" {
                ledger.retired.insert(epoch(second.unwrap_or_default())?);
                continue;
            }
            let fp = unhex(first).ok_or_else(|| bad("not a key fingerprint".into()))?;
            ledger.seen.insert(fp, second.map(epoch).transpose()?);
        }
        Ok(ledger)
    }

    /// Whether `key` has been installed on an outbound SA before.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.seen.contains_key(&fingerprint(key))
    }

    /// Records `key`, derived under this node's `epoch` (`None` if unknown: never pruned),
    /// durably (written and fsynced) before it is installed.
    pub fn record(&mut self, key: &[u8], epoch: Option<Epoch>) -> Result<(), StateError> {
        let fp = fingerprint(key);
        if self.seen.contains_key(&fp) {
            return Ok(());
        }
        lines::append_line(&self.path, &key_line(&fp, epoch))
            .map_err(StateError::io(&self.path))?;
        self.seen.insert(fp, epoch);
        Ok(())
    }

    /// Whether `epoch` is one this node left and whose keys were pruned: its SAs could repeat
    /// keys, so it must not be used again.
    pub fn is_retired(&self, epoch: &Epoch) -> bool {
        self.retired.contains(epoch)
    }

    /// Retires every epoch the ledger holds keys of but `live` (this node's epochs in service):
    /// drops their keys and keeps the epochs, in one atomic rewrite. Returns how many keys went.
    pub fn prune(&mut self, live: &[Epoch]) -> Result<usize, StateError> {
        self.prune_within(live, RETIRED_MAX)
    }

    fn prune_within(&mut self, live: &[Epoch], retired_max: usize) -> Result<usize, StateError> {
        let left: BTreeSet<Epoch> = (self.seen.values().flatten())
            .filter(|epoch| !live.contains(epoch))
            .copied()
            .collect();
        let room = retired_max.saturating_sub(self.retired.len());
        // Past the bound, the keys of the epochs left over stay: never forget a retired epoch.
        let retiring: BTreeSet<Epoch> = left.into_iter().take(room).collect();
        if retiring.is_empty() {
            return Ok(0);
        }
        let mut retired = self.retired.clone();
        retired.extend(&retiring);
        let seen: BTreeMap<[u8; 16], Option<Epoch>> = (self.seen.iter())
            .filter(|(_, epoch)| epoch.is_none_or(|e| !retiring.contains(&e)))
            .map(|(fp, epoch)| (*fp, *epoch))
            .collect();
        let text: Vec<String> = (retired.iter().map(|epoch| format!("retired {epoch}")))
            .chain(seen.iter().map(|(fp, epoch)| key_line(fp, *epoch)))
            .collect();
        lines::replace(&self.path, &text).map_err(StateError::io(&self.path))?;
        let dropped = self.seen.len() - seen.len();
        (self.seen, self.retired) = (seen, retired);
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    const E1: Epoch = Epoch::from_bytes([0x11; 16]);
    const E2: Epoch = Epoch::from_bytes([0x22; 16]);
    const E3: Epoch = Epoch::from_bytes([0x33; 16]);

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xsteer-ledger-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_recorded_key_is_remembered_across_reopen() {
        let dir = temp_dir("reopen");
        let mut ledger = KeyLedger::open(&dir).unwrap();
        assert!(!ledger.contains(b"key one"));
        ledger.record(b"key one", Some(E1)).unwrap();
        ledger.record(b"key one", Some(E1)).unwrap();
        assert!(ledger.contains(b"key one"));
        let reopened = KeyLedger::open(&dir).unwrap();
        assert!(reopened.contains(b"key one"));
        assert!(!reopened.contains(b"key two"));
        let text = fs::read_to_string(dir.join(FILE_NAME)).unwrap();
        assert_eq!(text.lines().count(), 1, "recorded once");
        assert!(!text.contains("key one"), "only fingerprints are stored");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("mode");
        KeyLedger::open(&dir).unwrap().record(b"k", None).unwrap();
        let mode = fs::metadata(dir.join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_the_line() {
        let dir = temp_dir("corrupt");
        fs::create_dir_all(&dir).unwrap();
        let fp = "ab".repeat(16);
        for (text, expect) in [
            (format!("{fp}\nnot hex\n"), "line 2: not a key fingerprint"),
            (
                format!("{fp} {E1}\n{fp} 12\n"),
                "line 2: an epoch is exactly 32",
            ),
            (
                format!("retired {E1}\nretired\n"),
                "line 2: an epoch is exactly 32",
            ),
            (format!("{fp} {E1} {E2}\n"), "line 1: more than two words"),
        ] {
            fs::write(dir.join(FILE_NAME), text).unwrap();
            let err = KeyLedger::open(&dir).err().expect("corrupt ledger");
            assert!(err.to_string().contains(expect), "{err} lacks {expect:?}");
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn pruning_keeps_the_epochs_in_service_and_refuses_the_ones_left() {
        let dir = temp_dir("prune");
        fs::create_dir_all(&dir).unwrap();
        // A ledger from before epochs were recorded: its key stays, whatever is pruned.
        fs::write(
            dir.join(FILE_NAME),
            format!("{}\n", hex(&fingerprint(b"old"))),
        )
        .unwrap();
        let mut ledger = KeyLedger::open(&dir).unwrap();
        ledger.record(b"k1", Some(E1)).unwrap();
        ledger.record(b"k2", Some(E2)).unwrap();
        ledger.record(b"k3", Some(E3)).unwrap();
        ledger.record(b"unknown", None).unwrap();
        assert_eq!(ledger.prune(&[E2, E3]).unwrap(), 1, "E1's one key");
        assert_eq!(ledger.prune(&[E2, E3]).unwrap(), 0, "nothing more");
        for ledger in [&ledger, &KeyLedger::open(&dir).unwrap()] {
            assert!(!ledger.contains(b"k1"), "pruned");
            for key in [&b"k2"[..], b"k3", b"old", b"unknown"] {
                assert!(ledger.contains(key));
            }
            assert!(ledger.is_retired(&E1));
            assert!(!ledger.is_retired(&E2) && !ledger.is_retired(&E3));
        }
        let text = fs::read_to_string(dir.join(FILE_NAME)).unwrap();
        assert_eq!(text.lines().count(), 5, "{text}");
        assert!(text.starts_with(&format!("retired {E1}\n")), "{text}");
        assert!(!crate::durable::temp_path(&dir.join(FILE_NAME)).exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");

        // A re-key finished: E2 is left too, and E1 stays retired.
        let mut ledger = KeyLedger::open(&dir).unwrap();
        assert_eq!(ledger.prune(&[E3]).unwrap(), 1);
        let ledger = KeyLedger::open(&dir).unwrap();
        assert!(ledger.is_retired(&E1) && ledger.is_retired(&E2));
        assert!(ledger.contains(b"k3") && !ledger.contains(b"k2"));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn past_the_bound_the_keys_of_further_epochs_stay() {
        let dir = temp_dir("bound");
        let mut ledger = KeyLedger::open(&dir).unwrap();
        ledger.record(b"k1", Some(E1)).unwrap();
        ledger.record(b"k2", Some(E2)).unwrap();
        assert_eq!(ledger.prune_within(&[E3], 1).unwrap(), 1, "room for one");
        assert_eq!(ledger.prune_within(&[E3], 1).unwrap(), 0, "full");
        let ledger = KeyLedger::open(&dir).unwrap();
        let retired = [E1, E2].map(|e| ledger.is_retired(&e));
        assert_eq!(retired.iter().filter(|r| **r).count(), 1);
        let kept = [&b"k1"[..], b"k2"].map(|k| ledger.contains(k));
        assert_eq!(
            kept,
            retired.map(|r| !r),
            "the epoch not retired keeps its key"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
