//! The key generations this node has retired, remembered in its state directory.
//!
//! Once every peer has moved past a generation and the grace period is over, the agent removes
//! that generation's SAs even though the key file may still list it. An outbound SA must never
//! get the same key twice (its sequence counter would restart and repeat AES-GCM nonces, which
//! the key ledger refuses), so neither a restarted agent nor `xsteer apply` may bring a retired
//! generation back: both leave out what this list names. A generation is named by its number
//! and the fingerprints of its master key, so a later generation that reuses the number with a
//! fresh key is not affected.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use super::{StateError, lines};
use crate::keys::{Generation, GenerationError, KeyFile, KeyGeneration};

/// The list's file inside the state directory.
pub const FILE_NAME: &str = "retired-generations";

/// The generations retired on this node, by number and master-key fingerprints.
#[derive(Debug)]
pub struct RetiredGenerations {
    path: PathBuf,
    names: BTreeSet<String>,
}

/// How a generation is named in the list: `3 1a2b3c4d5e6f7a8b` (one fingerprint per master key
/// component).
fn name(generation: &KeyGeneration) -> String {
    let mut name = generation.generation().to_string();
    for fingerprint in generation.fingerprints() {
        name.push(' ');
        name.push_str(&fingerprint.to_string());
    }
    name
}

fn is_name(line: &str) -> bool {
    let mut fields = line.split(' ');
    let spi_ok = fields
        .next()
        .and_then(|f| f.parse::<u8>().ok())
        .and_then(Generation::new)
        .is_some();
    let mut fingerprints = fields.peekable();
    spi_ok
        && fingerprints.peek().is_some()
        && fingerprints.all(|f| f.len() == 16 && f.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl RetiredGenerations {
    /// Reads the list in `state_dir`; a missing file (or directory) is an empty list.
    pub fn open(state_dir: &Path) -> Result<RetiredGenerations, StateError> {
        let path = state_dir.join(FILE_NAME);
        let mut names = BTreeSet::new();
        for (i, line) in lines::read_lines(&path)
            .map_err(StateError::io(&path))?
            .into_iter()
            .enumerate()
        {
            if !is_name(&line) {
                return Err(StateError::Corrupt {
                    path: path.clone(),
                    line: i + 1,
                    problem: "not `GENERATION FINGERPRINT...`".into(),
                });
            }
            names.insert(line);
        }
        Ok(RetiredGenerations { path, names })
    }

    /// Whether `generation` has been retired here.
    pub fn contains(&self, generation: &KeyGeneration) -> bool {
        self.names.contains(&name(generation))
    }

    /// Records `generation` as retired, durably (written and fsynced), before its SAs go; creates
    /// the state directory (0700) if needed.
    pub fn retire(&mut self, generation: &KeyGeneration) -> Result<(), StateError> {
        let name = name(generation);
        if self.names.contains(&name) {
            return Ok(());
        }
        lines::append_line(&self.path, &name).map_err(StateError::io(&self.path))?;
        self.names.insert(name);
        Ok(())
    }

    /// The generations of `keys` still in service: all but the retired ones. The newest is
    /// always kept, so the result is never empty.
    pub fn active(&self, keys: &KeyFile) -> Result<KeyFile, GenerationError> {
        let newest = keys.newest()?.generation();
        Ok(keys.retain(|g| g.generation() == newest || !self.contains(g)))
    }

    /// The generations of `keys` that are retired here, in file order.
    pub fn listed(&self, keys: &KeyFile) -> Vec<Generation> {
        keys.generations()
            .iter()
            .filter(|g| self.contains(g))
            .map(KeyGeneration::generation)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    const KEYS: &str = "4 rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f10111213 128\n\
                        5 rfc4106(gcm(aes)) 101112131415161718191a1b1c1d1e1f20212223 128\n";

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("xsteer-retired-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn spis(keys: &KeyFile) -> Vec<u8> {
        keys.generations()
            .iter()
            .map(|g| g.generation().get())
            .collect()
    }

    #[test]
    fn a_retired_generation_stays_out_across_reopen_but_a_new_key_is_not_affected() {
        let dir = temp_dir("reopen");
        let keys = KeyFile::parse(KEYS).unwrap();
        let mut retired = RetiredGenerations::open(&dir).unwrap();
        assert_eq!(spis(&retired.active(&keys).unwrap()), [4, 5]);
        retired
            .retire(keys.get(Generation::new(4).unwrap()).unwrap())
            .unwrap();
        retired
            .retire(keys.get(Generation::new(4).unwrap()).unwrap())
            .unwrap();
        let reopened = RetiredGenerations::open(&dir).unwrap();
        assert_eq!(spis(&reopened.active(&keys).unwrap()), [5]);
        let text = fs::read_to_string(dir.join(FILE_NAME)).unwrap();
        assert_eq!(text.lines().count(), 1, "recorded once: {text}");
        assert!(
            text.starts_with("4 ") && text.trim_end().len() == 2 + 16,
            "{text}"
        );

        // Generation 4 again, with another key: a different generation as far as keys go.
        let rekeyed = KeyFile::parse(
            "4 rfc4106(gcm(aes)) 202122232425262728292a2b2c2d2e2f30313233 128\n\
             5 rfc4106(gcm(aes)) 101112131415161718191a1b1c1d1e1f20212223 128\n",
        )
        .unwrap();
        assert_eq!(spis(&reopened.active(&rekeyed).unwrap()), [4, 5]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_newest_generation_is_never_left_out() {
        let dir = temp_dir("newest");
        let keys = KeyFile::parse(KEYS).unwrap();
        let mut retired = RetiredGenerations::open(&dir).unwrap();
        retired
            .retire(keys.get(Generation::new(5).unwrap()).unwrap())
            .unwrap();
        assert_eq!(spis(&retired.active(&keys).unwrap()), [4, 5]);
        let only_five = KeyFile::parse(&KEYS[KEYS.find('\n').unwrap() + 1..]).unwrap();
        assert_eq!(spis(&retired.active(&only_five).unwrap()), [5]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_file_is_private_and_damage_is_named_by_line() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("mode");
        let keys = KeyFile::parse(KEYS).unwrap();
        RetiredGenerations::open(&dir)
            .unwrap()
            .retire(keys.get(Generation::new(4).unwrap()).unwrap())
            .unwrap();
        let mode = fs::metadata(dir.join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        let mut text = fs::read_to_string(dir.join(FILE_NAME)).unwrap();
        text.push_str("16 0011223344556677\n");
        fs::write(dir.join(FILE_NAME), text).unwrap();
        let err = RetiredGenerations::open(&dir).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("line 2: not `GENERATION FINGERPRINT...`"),
            "{err}"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
