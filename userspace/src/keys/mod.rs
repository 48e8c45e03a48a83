//! IPsec keys: the key file, and the per-SA keys derived from it.
//!
//! The key file is Cilium's format, so an existing `cilium-ipsec-keys` secret can be reused: one
//! line per key generation, the generation number doubling as the SPI that selects it (1..=15).
//! Its keys are *master* keys and never go on an SA as they are: an SA that is recreated with the
//! same key and a restarted sequence counter repeats AES-GCM nonces (Cilium's GHSA-pwqm-x5x6-5586).
//! Every SA instead gets its own key, derived with HKDF-SHA256 from the master key, both node
//! IPs in sending order, the generation, and a random epoch per node that changes whenever that
//! node's SAs are recreated; docs/keys.md has the exact rule.
//!
//! Key material lives only in buffers that are wiped when dropped, and no `Debug`, `Display` or
//! error message of this module prints it: they show a [`Fingerprint`] instead. There is no way
//! to get the bytes of a master key out of this module; only derived keys expose theirs, for the
//! netlink message that installs the SA.

mod derive;
mod file;
mod generation;
mod rotate;
mod secret;

pub use derive::{
    DeriveError, DerivedKey, Epoch, EpochParseError, RandomError, SaKey, SaKeyId, fill_random,
};
pub use file::{
    Algorithm, FieldProblem, Gap, GenerationError, KeyFile, KeyGeneration, LoadError,
    MAX_KEY_FILE_BYTES, ParseError,
};
pub use generation::Generation;
pub use rotate::{RotateError, Rotated, rotate};
pub use secret::{Fingerprint, push_hex};

use std::fmt::Write as _;

use zeroize::Zeroizing;

/// The kernel's name of AES-GCM as ESP uses it (RFC 4106).
pub const GCM: &str = "rfc4106(gcm(aes))";
/// The kernel's name of AES-CBC.
pub const CBC_AES: &str = "cbc(aes)";
/// The kernel's name of HMAC-SHA-256.
pub const HMAC_SHA256: &str = "hmac(sha256)";

/// A fresh key-file line `SPI rfc4106(gcm(aes)) <40 hex digits> 128` for `generation`: a random
/// AES-128 key and salt from the OS random number generator, with a 128-bit ICV.
pub fn generate_gcm_line(generation: Generation) -> Result<Zeroizing<String>, RandomError> {
    generate_line(
        generation,
        Algorithm::Gcm {
            aes_key_bytes: 16,
            icv_bits: 128,
        },
    )
}

/// A fresh key-file line for `generation` with `algorithm`'s cipher suite and key sizes, its
/// keys from the OS random number generator.
pub fn generate_line(
    generation: Generation,
    algorithm: Algorithm,
) -> Result<Zeroizing<String>, RandomError> {
    // Reserved up front so the string never reallocates and leaves an unwiped copy behind.
    let mut line = Zeroizing::new(String::with_capacity(256));
    let _ = write!(line, "{generation} ");
    match algorithm {
        Algorithm::Gcm {
            aes_key_bytes,
            icv_bits,
        } => {
            line.push_str(GCM);
            push_random_hex(&mut line, usize::from(aes_key_bytes) + 4)?;
            let _ = write!(line, " {icv_bits}");
        }
        Algorithm::CbcHmacSha256 {
            aes_key_bytes,
            hmac_key_bytes,
        } => {
            line.push_str(HMAC_SHA256);
            push_random_hex(&mut line, usize::from(hmac_key_bytes))?;
            let _ = write!(line, " {CBC_AES}");
            push_random_hex(&mut line, usize::from(aes_key_bytes))?;
        }
    }
    Ok(line)
}

/// Appends a space and `len` random bytes in hex to `line`.
fn push_random_hex(line: &mut String, len: usize) -> Result<(), RandomError> {
    let mut key = Zeroizing::new(vec![0u8; len]);
    derive::fill_random(&mut key)?;
    line.push(' ');
    for byte in key.iter() {
        line.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        line.push(char::from(b"0123456789abcdef"[usize::from(byte & 0xf)]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_lines_parse_and_differ() {
        let seven = Generation::new(7).unwrap();
        let a = generate_gcm_line(seven).unwrap();
        let b = generate_gcm_line(seven).unwrap();
        assert_ne!(*a, *b);
        assert_eq!(a.len(), "7 rfc4106(gcm(aes)) ".len() + 40 + " 128".len());
        assert!(a.capacity() == 256, "the line must not have reallocated");
        let file = KeyFile::parse(&a).unwrap();
        let generation = file.newest().unwrap();
        assert_eq!(generation.generation(), seven);
        assert_eq!(
            generation.algorithm(),
            Algorithm::Gcm {
                aes_key_bytes: 16,
                icv_bits: 128
            }
        );
    }

    #[test]
    fn lines_of_every_suite_keep_their_sizes() {
        let seven = Generation::new(7).unwrap();
        for algorithm in [
            Algorithm::Gcm {
                aes_key_bytes: 32,
                icv_bits: 96,
            },
            Algorithm::CbcHmacSha256 {
                aes_key_bytes: 24,
                hmac_key_bytes: 64,
            },
        ] {
            let line = generate_line(seven, algorithm).unwrap();
            let file = KeyFile::parse(&line).unwrap();
            assert_eq!(file.newest().unwrap().algorithm(), algorithm, "{algorithm}");
        }
    }
}
