//! `xsteer keys rotate`: add the next key generation to a key file, atomically.
//!
//! The file is rewritten through a temporary file in the same directory (mode 0600 from its
//! creation, never wider), fsynced and renamed over the old one, so a reader — an agent watching
//! the file — sees the old file or the new one, never half of one. The old generations stay:
//! peers that have not switched yet still send with them.

use std::{
    fs,
    io::{self, Read},
    path::{Path, PathBuf},
};

use zeroize::Zeroizing;

use super::{
    Fingerprint, Generation, GenerationError, KeyFile, LoadError, ParseError, RandomError,
    generate_line,
};

/// Why a rotation failed; the key file is unchanged in every case.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// The key file could not be loaded (unreadable, too open, malformed).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The key file's generations do not say which is newest.
    #[error("key file {}: {error}", path.display())]
    Generations {
        /// The key file.
        path: PathBuf,
        /// Why.
        error: GenerationError,
    },
    /// A fresh key could not be made.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The rewritten file would not parse (a bug: nothing is written).
    #[error("the rotated key file would not parse: {0}")]
    Rewrite(ParseError),
    /// The key file is a symlink: rewriting it would replace the link with a file (and a
    /// Kubernetes Secret volume with a file nobody syncs).
    #[error(
        "key file {} is a symlink to {}: rotate the file it points to, or the Secret it comes \
         from",
        path.display(),
        target.display()
    )]
    Symlink {
        /// The key file.
        path: PathBuf,
        /// Where it points.
        target: PathBuf,
    },
    /// Writing the new file failed.
    #[error("writing {}: {error}", path.display())]
    Io {
        /// The file being written.
        path: PathBuf,
        /// What the OS said.
        error: io::Error,
    },
}

/// What a rotation did.
#[derive(Clone, Copy, Debug)]
pub struct Rotated {
    /// The generation added.
    pub generation: Generation,
    /// Its key's fingerprint.
    pub fingerprint: Fingerprint,
    /// The oldest generation, dropped because the file would otherwise hold all 15 and no
    /// longer say which is newest.
    pub dropped: Option<Generation>,
}

/// The generation of a key-file line (its SPI field), if it is a key line.
fn line_generation(line: &str) -> Option<Generation> {
    let content = line.split_once('#').map_or(line, |(before, _)| before);
    let first = content.split_whitespace().next()?;
    first
        .trim_end_matches('+')
        .parse()
        .ok()
        .and_then(Generation::new)
}

/// Adds the generation after the newest to the key file at `path`: fresh random keys, with the
/// cipher suite and key sizes of the newest generation. When the file already holds 14
/// generations, the oldest (the one after the new one) goes. A symlinked key file is refused.
pub fn rotate(path: &Path) -> Result<Rotated, RotateError> {
    if let Ok(target) = fs::read_link(path) {
        return Err(RotateError::Symlink {
            path: path.to_owned(),
            target,
        });
    }
    let keys = KeyFile::load(path)?;
    let newest = keys.newest().map_err(|error| RotateError::Generations {
        path: path.to_owned(),
        error,
    })?;
    let algorithm = newest.algorithm();
    let newest = newest.generation();
    let generation = newest.next();
    let io_error = |error| RotateError::Io {
        path: path.to_owned(),
        error,
    };
    let mut old = Zeroizing::new(String::new());
    fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut old))
        .map_err(io_error)?;
    let line = generate_line(generation, algorithm)?;
    let mut new = Zeroizing::new(String::with_capacity(old.len() + line.len() + 1));
    let oldest = generation.next();
    let mut dropped = None;
    for l in old.lines() {
        if line_generation(l) == Some(oldest) && keys.generations().len() >= 14 {
            dropped = Some(oldest);
            continue;
        }
        new.push_str(l);
        new.push('\n');
    }
    new.push_str(&line);
    new.push('\n');
    let rotated = KeyFile::parse(&new).map_err(RotateError::Rewrite)?;
    let fingerprint = rotated
        .generations()
        .iter()
        .find(|g| g.generation() == generation)
        .and_then(|g| g.fingerprints().first().copied())
        .expect("the line just added");

    crate::durable::replace(path, new.as_bytes(), 0o600).map_err(io_error)?;
    Ok(Rotated {
        generation,
        fingerprint,
        dropped,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn g(n: u8) -> Generation {
        Generation::new(n).unwrap()
    }

    fn temp_file(name: &str, text: &str, mode: u32) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xsteer-rotate-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    const GEN3: &str = "3 rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f10111213 128\n";

    #[test]
    fn adds_the_next_generation_and_keeps_the_old_ones_private() {
        let path = temp_file("next", GEN3, 0o600);
        let rotated = rotate(&path).unwrap();
        assert_eq!(
            (
                rotated.generation.get(),
                rotated.dropped.map(Generation::get)
            ),
            (4, None)
        );
        let keys = KeyFile::load(&path).unwrap();
        let spis: Vec<u8> = keys
            .generations()
            .iter()
            .map(|g| g.generation().get())
            .collect();
        assert_eq!(spis, [3, 4]);
        assert_eq!(keys.newest().unwrap().generation().get(), 4);
        assert_eq!(keys.generations()[1].fingerprints()[0], rotated.fingerprint);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            fs::read_to_string(&path).unwrap().starts_with(GEN3),
            "old lines kept as they were"
        );
        // Twice more: fresh keys each time.
        let again = rotate(&path).unwrap();
        assert_eq!(again.generation.get(), 5);
        assert_ne!(again.fingerprint, rotated.fingerprint);
        let _ = fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn fifteen_wraps_to_one_and_the_run_never_closes() {
        let line = |spi: u8| {
            format!("{spi} rfc4106(gcm(aes)) {spi:02x}0102030405060708090a0b0c0d0e0f10111213 128\n")
        };
        let text: String = (2..=15).map(line).collect();
        let path = temp_file("wrap", &text, 0o600);
        let rotated = rotate(&path).unwrap();
        assert_eq!(
            (
                rotated.generation.get(),
                rotated.dropped.map(Generation::get)
            ),
            (1, Some(2))
        );
        let keys = KeyFile::load(&path).unwrap();
        assert_eq!(keys.newest().unwrap().generation().get(), 1);
        assert_eq!(keys.generations().len(), 14);
        assert!(keys.get(g(2)).is_none());
        let _ = fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn refuses_an_open_or_malformed_file_and_leaves_it_alone() {
        let open = temp_file("open", GEN3, 0o644);
        assert!(matches!(
            rotate(&open),
            Err(RotateError::Load(LoadError::Permissions { .. }))
        ));
        assert_eq!(fs::read_to_string(&open).unwrap(), GEN3);
        let bad = temp_file("bad", "3 rfc4106(gcm(aes)) 0xzz 128\n", 0o600);
        let err = rotate(&bad).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        assert_eq!(
            fs::read_to_string(&bad).unwrap(),
            "3 rfc4106(gcm(aes)) 0xzz 128\n"
        );
        for p in [open, bad] {
            let _ = fs::remove_dir_all(p.parent().unwrap());
        }
    }

    #[test]
    fn the_new_generation_keeps_the_suite_and_a_symlink_is_refused() {
        let cbc = "3 hmac(sha256) 000102030405060708090a0b0c0d0e0f cbc(aes) \
                   101112131415161718191a1b1c1d1e1f2021222324252627\n";
        let path = temp_file("suite", cbc, 0o600);
        rotate(&path).unwrap();
        let keys = KeyFile::load(&path).unwrap();
        assert_eq!(
            keys.newest().unwrap().algorithm(),
            keys.generations()[0].algorithm(),
            "cbc(aes) with a 24-byte key and a 16-byte HMAC key again"
        );
        let link = path.with_file_name("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let before = fs::read_to_string(&path).unwrap();
        let err = rotate(&link).unwrap_err().to_string();
        assert!(err.contains("is a symlink to"), "{err}");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            before,
            "nothing written"
        );
        let _ = fs::remove_dir_all(path.parent().unwrap());
    }
}
