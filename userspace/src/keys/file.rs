//! The key file: parsing Cilium's format, loading it safely, and finding the newest generation.

use std::{
    fmt,
    fs::File,
    io::{self, Read},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    str::FromStr,
};

use zeroize::Zeroizing;

use super::{
    CBC_AES, GCM, Generation, HMAC_SHA256,
    derive::{DeriveError, MasterKey, SaKey, SaKeyId},
    secret::{Fingerprint, HexError, Secret, decode_hex},
};

/// The largest key file accepted, in bytes; 15 lines of the longest form need under 2 KiB.
pub const MAX_KEY_FILE_BYTES: usize = 64 * 1024;

/// The cipher suite of a key generation and its key sizes; public information, no key material.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `rfc4106(gcm(aes))`: AES-GCM with a 4-byte salt appended to the AES key.
    Gcm {
        /// Length of the AES key without the salt: 16, 24 or 32.
        aes_key_bytes: u8,
        /// Length of the ICV in bits: 64, 96 or 128.
        icv_bits: u8,
    },
    /// `cbc(aes)` encryption with `hmac(sha256)` authentication.
    CbcHmacSha256 {
        /// Length of the AES key: 16, 24 or 32.
        aes_key_bytes: u8,
        /// Length of the HMAC key: 16 to 64.
        hmac_key_bytes: u8,
    },
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Algorithm::Gcm {
                aes_key_bytes,
                icv_bits,
            } => write!(
                f,
                "{GCM} AES-{} ICV {icv_bits}",
                u16::from(*aes_key_bytes) * 8
            ),
            Algorithm::CbcHmacSha256 {
                aes_key_bytes,
                hmac_key_bytes,
            } => write!(
                f,
                "{CBC_AES} AES-{} + {HMAC_SHA256} ({hmac_key_bytes}-byte key)",
                u16::from(*aes_key_bytes) * 8
            ),
        }
    }
}

/// One line of the key file: a key generation, identified by its number (the line's SPI field).
///
/// Its master key stays inside; [`KeyGeneration::derive`] gives the key for one SA.
#[derive(Clone)]
pub struct KeyGeneration {
    generation: Generation,
    plus: bool,
    line: usize,
    key: MasterKey,
}

impl KeyGeneration {
    /// The generation number, which the skb mark carries.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// Whether the SPI had Cilium's `+` suffix (per-tunnel keys and ESN in Cilium). Recorded
    /// only: xsteer always derives per-SA keys.
    pub fn plus(&self) -> bool {
        self.plus
    }

    /// The 1-based line of the key file this generation came from.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The cipher suite and key sizes.
    pub fn algorithm(&self) -> Algorithm {
        match &self.key {
            MasterKey::Gcm { key, icv_bits } => Algorithm::Gcm {
                aes_key_bytes: byte_len(key.len() - 4),
                icv_bits: *icv_bits,
            },
            MasterKey::CbcHmacSha256 { auth, enc } => Algorithm::CbcHmacSha256 {
                aes_key_bytes: byte_len(enc.len()),
                hmac_key_bytes: byte_len(auth.len()),
            },
        }
    }

    /// The fingerprints of the master key's components: one for GCM, the `hmac(sha256)` key's
    /// then the `cbc(aes)` key's for the pair.
    pub fn fingerprints(&self) -> Vec<Fingerprint> {
        match &self.key {
            MasterKey::Gcm { key, .. } => vec![key.fingerprint()],
            MasterKey::CbcHmacSha256 { auth, enc } => vec![auth.fingerprint(), enc.fingerprint()],
        }
    }

    /// The key of the SA `id`, derived from this generation's master key (see docs/keys.md).
    /// Fails if `id.generation` is not this generation.
    pub fn derive(&self, id: &SaKeyId) -> Result<SaKey, DeriveError> {
        if id.generation != self.generation {
            return Err(DeriveError::GenerationMismatch {
                generation: self.generation,
                requested: id.generation,
            });
        }
        Ok(self.key.derive(id))
    }

    /// The key of the SA `id` for the cbc(aes)+hmac(sha256) fallback, derived from this
    /// generation's GCM master key (see docs/keys.md). For a generation that is already
    /// cbc(aes)+hmac(sha256), the same as [`KeyGeneration::derive`].
    pub fn derive_cbc(&self, id: &SaKeyId) -> Result<SaKey, DeriveError> {
        let key = self.derive(id)?;
        Ok(self.key.derive_cbc_fallback(id).unwrap_or(key))
    }
}

fn byte_len(len: usize) -> u8 {
    u8::try_from(len).expect("key lengths are checked to be at most 64 bytes")
}

impl fmt::Debug for KeyGeneration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyGeneration({self})")
    }
}

impl fmt::Display for KeyGeneration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "generation {} {}", self.generation, self.algorithm())?;
        match &self.key {
            MasterKey::Gcm { key, .. } => write!(f, ", key {}", key.fingerprint()),
            MasterKey::CbcHmacSha256 { auth, enc } => write!(
                f,
                ", auth key {}, enc key {}",
                auth.fingerprint(),
                enc.fingerprint()
            ),
        }
    }
}

/// A parsed key file: one or more key generations with distinct SPIs, in file order.
#[derive(Clone, Debug)]
pub struct KeyFile {
    generations: Vec<KeyGeneration>,
}

impl KeyFile {
    /// Parses key-file text; see docs/keys.md for the format.
    pub fn parse(text: &str) -> Result<KeyFile, ParseError> {
        let mut generations: Vec<KeyGeneration> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.split_once('#').map_or(raw, |(before, _)| before);
            let fields: Vec<&str> = content.split_whitespace().collect();
            if fields.is_empty() {
                continue;
            }
            let generation = parse_line(line, &fields)?;
            if let Some(first) = generations
                .iter()
                .find(|g| g.generation == generation.generation)
            {
                return Err(ParseError::DuplicateSpi {
                    line,
                    spi: generation.generation,
                    first: first.line,
                });
            }
            generations.push(generation);
        }
        if generations.is_empty() {
            return Err(ParseError::Empty);
        }
        Ok(KeyFile { generations })
    }

    /// Reads and parses the key file at `path`, following symlinks (Kubernetes mounts secrets
    /// through them). Refuses a file whose mode gives group or others any permission.
    pub fn load(path: impl AsRef<Path>) -> Result<KeyFile, LoadError> {
        let path = path.as_ref();
        let io_error = |error| LoadError::Io {
            path: path.to_owned(),
            error,
        };
        let file = File::open(path).map_err(io_error)?;
        // Checked on the open file, so the mode and the bytes read belong to the same file.
        let metadata = file.metadata().map_err(io_error)?;
        if !metadata.is_file() {
            return Err(LoadError::NotAFile {
                path: path.to_owned(),
            });
        }
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(LoadError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        // Capacity reserved up front: the buffer never reallocates, so no unwiped copy is left.
        let mut buf = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_BYTES + 1));
        (&file)
            .take(MAX_KEY_FILE_BYTES as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(io_error)?;
        if buf.len() > MAX_KEY_FILE_BYTES {
            return Err(LoadError::TooLarge {
                path: path.to_owned(),
            });
        }
        let in_file = |error| LoadError::Parse {
            path: path.to_owned(),
            error,
        };
        let text = std::str::from_utf8(&buf).map_err(|e| {
            let line = 1 + buf[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            in_file(ParseError::NotUtf8 { line })
        })?;
        KeyFile::parse(text).map_err(in_file)
    }

    /// The generations in file order.
    pub fn generations(&self) -> &[KeyGeneration] {
        &self.generations
    }

    /// The generations that `keep` accepts, in file order; the caller keeps at least one.
    pub fn retain(&self, keep: impl Fn(&KeyGeneration) -> bool) -> KeyFile {
        KeyFile {
            generations: self
                .generations
                .iter()
                .filter(|g| keep(g))
                .cloned()
                .collect(),
        }
    }

    /// The generation numbered `generation`, if the file has it.
    pub fn get(&self, generation: Generation) -> Option<&KeyGeneration> {
        self.generations.iter().find(|g| g.generation == generation)
    }

    /// The newest generation: the one whose successor (15 is followed by 1) is absent.
    ///
    /// The generations present must form one contiguous run modulo 15, e.g. {14, 15, 1};
    /// otherwise the order is ambiguous and the error names the gaps.
    pub fn newest(&self) -> Result<&KeyGeneration, GenerationError> {
        let present = |g: Generation| self.get(g).is_some();
        let mut ends = self
            .generations
            .iter()
            .filter(|g| !present(g.generation.next()));
        match (ends.next(), ends.next()) {
            (Some(newest), None) => Ok(newest),
            (None, _) => Err(GenerationError::AllPresent),
            (Some(_), Some(_)) => {
                let mut numbers: Vec<Generation> =
                    self.generations.iter().map(|g| g.generation).collect();
                numbers.sort_unstable();
                let mut gaps = Vec::new();
                for &generation in &numbers {
                    let first_missing = generation.next();
                    if present(first_missing) {
                        continue;
                    }
                    let mut last_missing = first_missing;
                    while !present(last_missing.next()) {
                        last_missing = last_missing.next();
                    }
                    gaps.push(Gap {
                        after: generation,
                        first_missing,
                        last_missing,
                        before: last_missing.next(),
                    });
                }
                Err(GenerationError::NotOneRun {
                    present: numbers,
                    gaps,
                })
            }
        }
    }

    /// The key of the SA `id`, derived from the generation `id.generation`.
    pub fn derive(&self, id: &SaKeyId) -> Result<SaKey, DeriveError> {
        self.get(id.generation)
            .ok_or(DeriveError::NoSuchGeneration(id.generation))?
            .derive(id)
    }

    /// The run of generations, newest first (the one before 1 is 15): the order in which they
    /// were added. Empty if the newest cannot be told.
    pub fn newest_first(&self) -> Vec<Generation> {
        let Ok(newest) = self.newest() else {
            return Vec::new();
        };
        let mut order = vec![newest.generation];
        let mut generation = newest.generation.previous();
        while self.get(generation).is_some() && order.len() < self.generations.len() {
            order.push(generation);
            generation = generation.previous();
        }
        order
    }
}

impl FromStr for KeyFile {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyFile::parse(s)
    }
}

const GCM_FIELDS: &str = "4 (SPI, rfc4106(gcm(aes)), key, ICV bits)";
const CBC_FIELDS: &str = "5 (SPI, hmac(sha256), auth key, cbc(aes), enc key)";

fn parse_line(line: usize, fields: &[&str]) -> Result<KeyGeneration, ParseError> {
    let field_error = |field: usize, name: &'static str| {
        move |problem: FieldProblem| ParseError::Field {
            line,
            field,
            name,
            problem,
        }
    };
    let count_error = |expected: &'static str| ParseError::FieldCount {
        line,
        found: fields.len(),
        expected,
    };
    if fields.len() < 2 {
        return Err(count_error(
            "4 or 5 (SPI, algorithm, then the keys of that algorithm)",
        ));
    }
    let (generation, plus) = parse_spi(fields[0]).map_err(field_error(1, "SPI"))?;
    let key = match fields[1] {
        GCM => {
            if fields.len() != 4 {
                return Err(count_error(GCM_FIELDS));
            }
            let key = parse_key(
                fields[2],
                GCM,
                |n| [20, 28, 36].contains(&n),
                "20, 28 or 36 bytes (a 16-, 24- or 32-byte AES key and a 4-byte salt)",
            )
            .map_err(field_error(3, "key"))?;
            let icv_bits = match fields[3] {
                "64" => 64,
                "96" => 96,
                "128" => 128,
                other => {
                    return Err(field_error(4, "ICV bits")(FieldProblem::Icv {
                        found: other.parse().ok(),
                    }));
                }
            };
            MasterKey::Gcm { key, icv_bits }
        }
        HMAC_SHA256 => {
            if fields.len() != 5 {
                return Err(count_error(CBC_FIELDS));
            }
            let auth = parse_key(
                fields[2],
                HMAC_SHA256,
                |n| (16..=64).contains(&n),
                "16 to 64 bytes",
            )
            .map_err(field_error(3, "auth key"))?;
            if fields[3] != CBC_AES {
                return Err(field_error(4, "enc algorithm")(unknown_algorithm(
                    fields[3], CBC_AES,
                )));
            }
            let enc = parse_key(
                fields[4],
                CBC_AES,
                |n| [16, 24, 32].contains(&n),
                "16, 24 or 32 bytes",
            )
            .map_err(field_error(5, "enc key"))?;
            MasterKey::CbcHmacSha256 { auth, enc }
        }
        other => {
            return Err(field_error(2, "algorithm")(unknown_algorithm(
                other,
                "rfc4106(gcm(aes)) or hmac(sha256) (followed by cbc(aes))",
            )));
        }
    };
    Ok(KeyGeneration {
        generation,
        plus,
        line,
        key,
    })
}

fn unknown_algorithm(token: &str, expected: &'static str) -> FieldProblem {
    // A key in the wrong place must not end up in the message: only a token that looks like an
    // algorithm name (hex never contains parentheses) is repeated.
    let shown = (token.contains('(') && token.len() <= 64).then(|| token.to_owned());
    FieldProblem::UnknownAlgorithm { shown, expected }
}

/// The SPI field: a generation, with Cilium's optional `+`.
fn parse_spi(token: &str) -> Result<(Generation, bool), FieldProblem> {
    let (number, plus) = match token.strip_suffix('+') {
        Some(number) => (number, true),
        None => (token, false),
    };
    let (digits, radix) = match number
        .strip_prefix("0x")
        .or_else(|| number.strip_prefix("0X"))
    {
        Some(hex) => (hex, 16),
        None => (number, 10),
    };
    let is_digit = |b: u8| {
        if radix == 16 {
            b.is_ascii_hexdigit()
        } else {
            b.is_ascii_digit()
        }
    };
    if digits.is_empty() || !digits.bytes().all(is_digit) {
        return Err(FieldProblem::SpiNotNumber);
    }
    let value = u32::from_str_radix(digits, radix).ok();
    match value
        .and_then(|v| u8::try_from(v).ok())
        .and_then(Generation::new)
    {
        Some(generation) => Ok((generation, plus)),
        None => Err(FieldProblem::SpiRange {
            found: value.and_then(|v| u16::try_from(v).ok()),
        }),
    }
}

fn parse_key(
    token: &str,
    algorithm: &'static str,
    length_ok: impl Fn(usize) -> bool,
    expected: &'static str,
) -> Result<Secret, FieldProblem> {
    let bytes = decode_hex(token).map_err(|e| match e {
        HexError::Empty => FieldProblem::NoHexDigits,
        HexError::Odd => FieldProblem::OddHexDigits,
        HexError::NotHex(position) => FieldProblem::NotHex { position },
    })?;
    if !length_ok(bytes.len()) {
        return Err(FieldProblem::KeyLength {
            algorithm,
            found: bytes.len(),
            expected,
        });
    }
    Ok(Secret::new(algorithm, bytes))
}

/// Why key-file text does not parse. Messages name the line and field, never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// One field of a line is wrong.
    #[error("line {line}, field {field} ({name}): {problem}")]
    Field {
        /// 1-based line number.
        line: usize,
        /// 1-based field number.
        field: usize,
        /// What the field is, e.g. `key` or `ICV bits`.
        name: &'static str,
        /// What is wrong with it.
        problem: FieldProblem,
    },
    /// A line has the wrong number of fields for its algorithm.
    #[error("line {line}: found {found} fields, expected {expected}")]
    FieldCount {
        /// 1-based line number.
        line: usize,
        /// How many whitespace-separated fields the line has.
        found: usize,
        /// How many it should have, and which.
        expected: &'static str,
    },
    /// Two lines use the same SPI.
    #[error("line {line}: SPI {spi} is already defined on line {first}")]
    DuplicateSpi {
        /// 1-based line number of the second use.
        line: usize,
        /// The SPI (generation).
        spi: Generation,
        /// 1-based line number of the first use.
        first: usize,
    },
    /// The file is not UTF-8 text.
    #[error("line {line}: not UTF-8 text")]
    NotUtf8 {
        /// 1-based line number of the first invalid byte.
        line: usize,
    },
    /// The file has no key lines at all.
    #[error("no key lines (only blank lines and comments)")]
    Empty,
}

/// What is wrong with one field of a key line. Carries no part of the field's text unless it is
/// certain not to be key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldProblem {
    /// The SPI is not a decimal or `0x` hex number.
    #[error("not a number: an SPI is 1..=15, decimal or 0x hex, optionally followed by '+'")]
    SpiNotNumber,
    /// The SPI is 0 or greater than 15.
    #[error("SPI must be 1..=15{}", found_suffix(.found))]
    SpiRange {
        /// The value, if it is small enough to show.
        found: Option<u16>,
    },
    /// The algorithm is not one xsteer supports.
    #[error("unknown algorithm{}; expected {expected}", shown_suffix(.shown))]
    UnknownAlgorithm {
        /// The algorithm as given, when it is safe to show (it looks like an algorithm name).
        shown: Option<String>,
        /// What is accepted there.
        expected: &'static str,
    },
    /// A key field is empty or just `0x`.
    #[error("no hex digits")]
    NoHexDigits,
    /// A key field has an odd number of hex digits.
    #[error("odd number of hex digits")]
    OddHexDigits,
    /// A key field has a character that is not a hex digit.
    #[error("character {position} is not a hex digit")]
    NotHex {
        /// 1-based byte position of the first such character in the field.
        position: usize,
    },
    /// A key has the wrong length for its algorithm.
    #[error("{found} bytes is the wrong key length for {algorithm}: expected {expected}")]
    KeyLength {
        /// The kernel algorithm name.
        algorithm: &'static str,
        /// The length found, in bytes.
        found: usize,
        /// The lengths accepted, in words.
        expected: &'static str,
    },
    /// The ICV length is not 64, 96 or 128.
    #[error("ICV must be 64, 96 or 128 bits{}", found_suffix(.found))]
    Icv {
        /// The value, if it is a small number.
        found: Option<u16>,
    },
}

fn found_suffix(found: &Option<u16>) -> String {
    found.map(|v| format!(", found {v}")).unwrap_or_default()
}

fn shown_suffix(shown: &Option<String>) -> String {
    shown
        .as_ref()
        .map(|s| format!(" {s:?}"))
        .unwrap_or_default()
}

/// Why a key file could not be loaded from disk.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Opening or reading failed.
    #[error("cannot read key file {}: {error}", path.display())]
    Io {
        /// The path given.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
    /// The path names a directory or a special file.
    #[error("key file {} is not a regular file", path.display())]
    NotAFile {
        /// The path given.
        path: PathBuf,
    },
    /// Group or others have some permission on the file.
    #[error(
        "key file {} has mode {mode:04o}, which gives group or others access: run `chmod 600 {}` \
         (on a Kubernetes secret volume, set defaultMode: 0400)",
        path.display(),
        path.display()
    )]
    Permissions {
        /// The path given.
        path: PathBuf,
        /// The permission bits of the file (after following symlinks).
        mode: u32,
    },
    /// The file is larger than [`MAX_KEY_FILE_BYTES`].
    #[error("key file {} is larger than {MAX_KEY_FILE_BYTES} bytes", path.display())]
    TooLarge {
        /// The path given.
        path: PathBuf,
    },
    /// The contents do not parse.
    #[error("key file {}: {error}", path.display())]
    Parse {
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        error: ParseError,
    },
}

/// A run of missing generations between two present ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The present generation before the gap.
    pub after: Generation,
    /// The first missing generation.
    pub first_missing: Generation,
    /// The last missing generation.
    pub last_missing: Generation,
    /// The present generation after the gap.
    pub before: Generation,
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = |f: &mut fmt::Formatter<'_>, first: Generation, last: Generation| {
            if first == last {
                write!(f, "{first}")
            } else {
                write!(f, "{first}..{last}")
            }
        };
        if self.first_missing <= self.last_missing {
            range(f, self.first_missing, self.last_missing)?;
        } else {
            range(f, self.first_missing, Generation::MAX)?;
            f.write_str(", ")?;
            range(f, Generation::MIN, self.last_missing)?;
        }
        write!(f, " (between {} and {})", self.after, self.before)
    }
}

/// Why the newest key generation cannot be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerationError {
    /// All 15 generations are present, so every one has a successor.
    #[error("all 15 key generations are present, so none is the newest: remove the oldest one(s)")]
    AllPresent,
    /// The generations present are not one contiguous run modulo 15.
    #[error(
        "key generations {} are not one contiguous run (15 wraps to 1): {} missing; \
         keep only the generations of one run, e.g. the current and the next",
        list(present),
        gaps.iter().map(Gap::to_string).collect::<Vec<_>>().join(" and ")
    )]
    NotOneRun {
        /// The generations present, ascending.
        present: Vec<Generation>,
        /// Each run of missing SPIs; all but one would have to be filled.
        gaps: Vec<Gap>,
    },
}

fn list(generations: &[Generation]) -> String {
    generations
        .iter()
        .map(Generation::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        os::unix::fs::{OpenOptionsExt, symlink},
        sync::atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    fn g(n: u8) -> Generation {
        Generation::new(n).unwrap()
    }

    const GCM_KEY: &str = "0123456789abcdef0123456789abcdef01234567";
    const AUTH_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const ENC_KEY: &str = "ffeeddccbbaa99887766554433221100";

    fn err(text: &str) -> String {
        let e = KeyFile::parse(text).unwrap_err().to_string();
        for secret in [GCM_KEY, AUTH_KEY, ENC_KEY, "abcdef0123", "deadbeef"] {
            assert!(!e.contains(secret), "error {e:?} leaks key material");
        }
        e
    }

    #[test]
    fn parses_both_forms_comments_and_prefixes() {
        let text = format!(
            "# keys\n\n  3+ {GCM} 0x{GCM_KEY} 128  # current\n\
             0x4\t{HMAC_SHA256} {AUTH_KEY} {CBC_AES} 0X{ENC_KEY}\n"
        );
        let file = KeyFile::parse(&text).unwrap();
        let [gcm, cbc] = file.generations() else {
            panic!("two generations expected")
        };
        assert_eq!(
            (gcm.generation().get(), gcm.plus(), gcm.line()),
            (3, true, 3)
        );
        assert_eq!(
            gcm.algorithm(),
            Algorithm::Gcm {
                aes_key_bytes: 16,
                icv_bits: 128
            }
        );
        assert_eq!(
            (cbc.generation().get(), cbc.plus(), cbc.line()),
            (4, false, 4)
        );
        assert_eq!(
            cbc.algorithm(),
            Algorithm::CbcHmacSha256 {
                aes_key_bytes: 16,
                hmac_key_bytes: 32
            }
        );
        assert_eq!(file.newest().unwrap().generation().get(), 4);
        assert!(file.get(g(5)).is_none());
    }

    #[test]
    fn accepts_every_key_size_and_icv() {
        for (hex_len, icv) in [(40, "64"), (56, "96"), (72, "128")] {
            let line = format!("1 {GCM} {} {icv}", "a".repeat(hex_len));
            KeyFile::parse(&line).unwrap();
        }
        for (auth, enc) in [(32, 32), (128, 48), (64, 64)] {
            let line = format!(
                "15 {HMAC_SHA256} {} {CBC_AES} {}",
                "b".repeat(auth),
                "c".repeat(enc)
            );
            KeyFile::parse(&line).unwrap();
        }
    }

    #[test]
    fn debug_and_display_show_only_fingerprints() {
        let file = KeyFile::parse(&format!(
            "3 {GCM} {GCM_KEY} 128\n4 {HMAC_SHA256} {AUTH_KEY} {CBC_AES} {ENC_KEY}"
        ))
        .unwrap();
        let shown = format!(
            "{file:?} {} {}",
            file.generations()[0],
            file.generations()[1]
        );
        for secret in [
            GCM_KEY,
            AUTH_KEY,
            ENC_KEY,
            "0123456789",
            "ffeeddcc",
            "00112233",
        ] {
            assert!(!shown.contains(secret), "{shown}");
        }
        let fp = file.generations()[0].fingerprints()[0];
        assert_eq!(
            file.generations()[0].to_string(),
            format!("generation 3 {GCM} AES-128 ICV 128, key {fp}")
        );
    }

    #[test]
    fn rejects_bad_spi() {
        let key = format!("{GCM} {GCM_KEY} 128");
        assert_eq!(
            err(&format!("0 {key}")),
            "line 1, field 1 (SPI): SPI must be 1..=15, found 0"
        );
        assert_eq!(
            err(&format!("\n16+ {key}")),
            "line 2, field 1 (SPI): SPI must be 1..=15, found 16"
        );
        assert_eq!(
            err(&format!("0x10 {key}")),
            "line 1, field 1 (SPI): SPI must be 1..=15, found 16"
        );
        assert_eq!(
            err(&format!("99999999999 {key}")),
            "line 1, field 1 (SPI): SPI must be 1..=15"
        );
        for bad in ["x", "+", "-1", "0x", "3++", "abcdef0123"] {
            assert_eq!(
                err(&format!("{bad} {key}")),
                "line 1, field 1 (SPI): not a number: an SPI is 1..=15, decimal or 0x hex, \
                 optionally followed by '+'"
            );
        }
    }

    #[test]
    fn rejects_unknown_algorithms() {
        assert_eq!(
            err(&format!("1 gcm(aes) {GCM_KEY} 128")),
            "line 1, field 2 (algorithm): unknown algorithm \"gcm(aes)\"; expected \
             rfc4106(gcm(aes)) or hmac(sha256) (followed by cbc(aes))"
        );
        // A key in the algorithm's place is not repeated.
        assert_eq!(
            err(&format!("1 {GCM_KEY} {GCM} 128")),
            "line 1, field 2 (algorithm): unknown algorithm; expected rfc4106(gcm(aes)) or \
             hmac(sha256) (followed by cbc(aes))"
        );
        assert_eq!(
            err(&format!("1 {HMAC_SHA256} {AUTH_KEY} cbc(des) {ENC_KEY}")),
            "line 1, field 4 (enc algorithm): unknown algorithm \"cbc(des)\"; expected cbc(aes)"
        );
    }

    #[test]
    fn rejects_bad_hex_without_repeating_it() {
        assert_eq!(
            err(&format!("1 {GCM} {}0 128", GCM_KEY)),
            "line 1, field 3 (key): odd number of hex digits"
        );
        assert_eq!(
            err(&format!("1 {GCM} 0x{}zz 128", &GCM_KEY[2..])),
            "line 1, field 3 (key): character 41 is not a hex digit"
        );
        assert_eq!(
            err(&format!("1 {GCM} 0x 128")),
            "line 1, field 3 (key): no hex digits"
        );
        assert_eq!(
            err(&format!("1 {HMAC_SHA256} {AUTH_KEY}g {CBC_AES} {ENC_KEY}")),
            "line 1, field 3 (auth key): character 65 is not a hex digit"
        );
        assert_eq!(
            err(&format!("1 {HMAC_SHA256} {AUTH_KEY} {CBC_AES} {ENC_KEY}f")),
            "line 1, field 5 (enc key): odd number of hex digits"
        );
    }

    #[test]
    fn rejects_wrong_key_lengths() {
        assert_eq!(
            err(&format!("1 {GCM} {} 128", &GCM_KEY[..32])),
            "line 1, field 3 (key): 16 bytes is the wrong key length for rfc4106(gcm(aes)): \
             expected 20, 28 or 36 bytes (a 16-, 24- or 32-byte AES key and a 4-byte salt)"
        );
        assert_eq!(
            err(&format!(
                "1 {HMAC_SHA256} {} {CBC_AES} {ENC_KEY}",
                &AUTH_KEY[..30]
            )),
            "line 1, field 3 (auth key): 15 bytes is the wrong key length for hmac(sha256): \
             expected 16 to 64 bytes"
        );
        assert_eq!(
            err(&format!(
                "1 {HMAC_SHA256} {AUTH_KEY}{AUTH_KEY}00 {CBC_AES} {ENC_KEY}"
            )),
            "line 1, field 3 (auth key): 65 bytes is the wrong key length for hmac(sha256): \
             expected 16 to 64 bytes"
        );
        assert_eq!(
            err(&format!(
                "1 {HMAC_SHA256} {AUTH_KEY} {CBC_AES} {ENC_KEY}0000"
            )),
            "line 1, field 5 (enc key): 18 bytes is the wrong key length for cbc(aes): \
             expected 16, 24 or 32 bytes"
        );
    }

    #[test]
    fn rejects_bad_icv() {
        for (icv, shown) in [("127", ", found 127"), ("0", ", found 0"), ("x", "")] {
            assert_eq!(
                err(&format!("1 {GCM} {GCM_KEY} {icv}")),
                format!("line 1, field 4 (ICV bits): ICV must be 64, 96 or 128 bits{shown}")
            );
        }
    }

    #[test]
    fn rejects_wrong_field_counts() {
        assert_eq!(
            err(&format!("1 {GCM} {GCM_KEY}")),
            "line 1: found 3 fields, expected 4 (SPI, rfc4106(gcm(aes)), key, ICV bits)"
        );
        assert_eq!(
            err(&format!("1 {GCM} {GCM_KEY} 128 10.0.0.1")),
            "line 1: found 5 fields, expected 4 (SPI, rfc4106(gcm(aes)), key, ICV bits)"
        );
        assert_eq!(
            err(&format!("1 {HMAC_SHA256} {AUTH_KEY} {CBC_AES}")),
            "line 1: found 4 fields, expected 5 (SPI, hmac(sha256), auth key, cbc(aes), enc key)"
        );
        assert_eq!(
            err(&format!("# comment\n{GCM_KEY}")),
            "line 2: found 1 fields, expected 4 or 5 (SPI, algorithm, then the keys of that \
             algorithm)"
        );
    }

    #[test]
    fn rejects_duplicates_and_empty_files() {
        assert_eq!(
            err(&format!(
                "2 {GCM} {GCM_KEY} 128\n3 {GCM} {GCM_KEY} 128\n2+ {GCM} {GCM_KEY} 64"
            )),
            "line 3: SPI 2 is already defined on line 1"
        );
        assert_eq!(
            err("\n# nothing\n   \n"),
            "no key lines (only blank lines and comments)"
        );
        assert_eq!(err(""), "no key lines (only blank lines and comments)");
    }

    fn file_with(spis: &[u8]) -> KeyFile {
        let text: String = spis
            .iter()
            .map(|spi| format!("{spi} {GCM} {GCM_KEY} 128\n"))
            .collect();
        KeyFile::parse(&text).unwrap()
    }

    #[test]
    fn newest_wraps_around() {
        assert_eq!(file_with(&[7]).newest().unwrap().generation().get(), 7);
        assert_eq!(file_with(&[1, 2]).newest().unwrap().generation().get(), 2);
        assert_eq!(
            file_with(&[14, 15, 1]).newest().unwrap().generation().get(),
            1
        );
        assert_eq!(file_with(&[1, 15]).newest().unwrap().generation().get(), 1);
        assert_eq!(file_with(&[15]).newest().unwrap().generation().get(), 15);
        assert_eq!(
            file_with(&[2, 1, 15, 14])
                .newest()
                .unwrap()
                .generation()
                .get(),
            2
        );
        let fourteen: Vec<u8> = (1..=15).filter(|&s| s != 9).collect();
        assert_eq!(file_with(&fourteen).newest().unwrap().generation().get(), 8);
    }

    #[test]
    fn newest_rejects_gaps_naming_them() {
        assert_eq!(
            file_with(&[3, 5]).newest().unwrap_err().to_string(),
            "key generations 3, 5 are not one contiguous run (15 wraps to 1): 4 (between 3 and \
             5) and 6..15, 1..2 (between 5 and 3) missing; keep only the generations of one run, e.g. \
             the current and the next"
        );
        assert_eq!(
            file_with(&[14, 15, 2]).newest().unwrap_err().to_string(),
            "key generations 2, 14, 15 are not one contiguous run (15 wraps to 1): 3..13 \
             (between 2 and 14) and 1 (between 15 and 2) missing; keep only the generations of \
             one run, e.g. the current and the next"
        );
        let all: Vec<u8> = (1..=15).collect();
        assert_eq!(
            file_with(&all).newest().unwrap_err(),
            GenerationError::AllPresent
        );
    }

    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    /// A fresh scratch directory for one test.
    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "xsteer-keys-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write_mode(path: &Path, text: &str, mode: u32) {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        // The process umask may have cleared bits; set exactly what the test asks for.
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn load_checks_the_mode_of_the_symlink_target() {
        let dir = scratch();
        let text = format!("3 {GCM} {GCM_KEY} 128\n");
        let good = dir.join("good");
        write_mode(&good, &text, 0o600);
        assert_eq!(
            KeyFile::load(&good)
                .unwrap()
                .newest()
                .unwrap()
                .generation()
                .get(),
            3
        );
        let read_only = dir.join("read-only");
        write_mode(&read_only, &text, 0o400);
        KeyFile::load(&read_only).unwrap();

        for mode in [0o644, 0o640, 0o604, 0o610] {
            let open = dir.join(format!("open-{mode:o}"));
            write_mode(&open, &text, mode);
            let e = KeyFile::load(&open).unwrap_err().to_string();
            assert_eq!(
                e,
                format!(
                    "key file {p} has mode {mode:04o}, which gives group or others access: run \
                     `chmod 600 {p}` (on a Kubernetes secret volume, set defaultMode: 0400)",
                    p = open.display()
                )
            );
        }

        // A symlink (mode 0777 itself) to a 0600 file is fine; to a 0644 file it is not.
        let link = dir.join("link");
        symlink(&good, &link).unwrap();
        KeyFile::load(&link).unwrap();
        let open_link = dir.join("open-link");
        symlink(dir.join("open-644"), &open_link).unwrap();
        assert!(matches!(
            KeyFile::load(&open_link),
            Err(LoadError::Permissions { mode: 0o644, .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_reports_the_path_and_line() {
        let dir = scratch();
        let missing = dir.join("missing");
        let e = KeyFile::load(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("cannot read key file {}: ", missing.display())),
            "{e}"
        );
        assert!(matches!(
            KeyFile::load(&dir),
            Err(LoadError::NotAFile { .. })
        ));

        let bad = dir.join("bad");
        write_mode(&bad, &format!("# ok\n3 {GCM} {GCM_KEY} 12\n"), 0o600);
        assert_eq!(
            KeyFile::load(&bad).unwrap_err().to_string(),
            format!(
                "key file {}: line 2, field 4 (ICV bits): ICV must be 64, 96 or 128 bits, found 12",
                bad.display()
            )
        );

        let latin1 = dir.join("latin1");
        fs::write(&latin1, b"# ok\n# caf\xe9\n").unwrap();
        fs::set_permissions(&latin1, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            KeyFile::load(&latin1).unwrap_err().to_string(),
            format!("key file {}: line 2: not UTF-8 text", latin1.display())
        );

        let big = dir.join("big");
        write_mode(&big, &"#".repeat(MAX_KEY_FILE_BYTES + 1), 0o600);
        assert!(matches!(
            KeyFile::load(&big),
            Err(LoadError::TooLarge { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
