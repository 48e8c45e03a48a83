//! A record, on disk, of every key this node has put on an outbound SA.
//!
//! An outbound SA starts its sequence counter at 1, and AES-GCM derives its nonce from that
//! counter: installing a key a second time after its SA vanished (deleted by hand, or lost in a
//! reboot while the configured epoch stayed the same) repeats nonces under one key, which breaks
//! GCM's confidentiality and integrity. Before xsteer installs an outbound SA it looks the key
//! up here and refuses a key it has used before; the remedy is a new node epoch, which derives
//! new keys for every SA. Only a one-way fingerprint of each key is stored.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

use super::{StateError, lines};

/// The ledger file inside the state directory.
pub const FILE_NAME: &str = "outbound-keys";

/// The fingerprints of every outbound key installed on this node.
pub struct KeyLedger {
    path: PathBuf,
    seen: BTreeSet<[u8; 16]>,
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

impl KeyLedger {
    /// Opens the ledger in `state_dir`, creating the directory (0700) and file if needed.
    pub fn open(state_dir: &Path) -> Result<KeyLedger, StateError> {
        let path = state_dir.join(FILE_NAME);
        lines::create_dir(state_dir).map_err(StateError::io(state_dir))?;
        let mut seen = BTreeSet::new();
        for (i, line) in lines::read_lines(&path)
            .map_err(StateError::io(&path))?
            .iter()
            .enumerate()
        {
            let fp = unhex(line).ok_or_else(|| StateError::Corrupt {
                path: path.clone(),
                line: i + 1,
                problem: "not a key fingerprint".into(),
            })?;
            seen.insert(fp);
        }
        Ok(KeyLedger { path, seen })
    }

    /// Whether `key` has been installed on an outbound SA before.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.seen.contains(&fingerprint(key))
    }

    /// Records `key` durably (written and fsynced) before it is installed.
    pub fn record(&mut self, key: &[u8]) -> Result<(), StateError> {
        let fp = fingerprint(key);
        if self.seen.contains(&fp) {
            return Ok(());
        }
        lines::append_line(&self.path, &hex(&fp)).map_err(StateError::io(&self.path))?;
        self.seen.insert(fp);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

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
        ledger.record(b"key one").unwrap();
        ledger.record(b"key one").unwrap();
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
        KeyLedger::open(&dir).unwrap().record(b"k").unwrap();
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
        fs::write(
            dir.join(FILE_NAME),
            format!("{}\nnot hex\n", "ab".repeat(16)),
        )
        .unwrap();
        let err = KeyLedger::open(&dir).err().expect("corrupt ledger");
        assert!(
            err.to_string().ends_with("line 2: not a key fingerprint"),
            "{err}"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
