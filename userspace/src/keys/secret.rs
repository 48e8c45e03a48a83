//! Key bytes that are wiped on drop and shown only as a fingerprint.

use std::fmt;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// A short public name for a key: the first 8 bytes of
/// SHA-256("xsteer/fingerprint/v1" || algorithm name || key bytes), shown as 16 hex digits.
///
/// It tells keys apart in logs, status and dry-run output without revealing them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 8]);

impl Fingerprint {
    /// The fingerprint of `key` used with the kernel algorithm `algorithm`, e.g. `cbc(aes)`.
    pub fn of(algorithm: &str, key: &[u8]) -> Self {
        let mut hash = Sha256::new();
        hash.update(b"xsteer/fingerprint/v1");
        hash.update(algorithm.as_bytes());
        hash.update(key);
        let digest = hash.finalize();
        let mut out = [0u8; 8];
        out.copy_from_slice(&digest[..8]);
        Fingerprint(out)
    }

    /// The 8 bytes.
    pub fn bytes(&self) -> [u8; 8] {
        self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Key bytes for one kernel algorithm, wiped on drop; the bytes never leave this module tree.
#[derive(Clone)]
pub(crate) struct Secret {
    algorithm: &'static str,
    bytes: Zeroizing<Vec<u8>>,
}

impl Secret {
    pub(crate) fn new(algorithm: &'static str, bytes: Zeroizing<Vec<u8>>) -> Self {
        Secret { algorithm, bytes }
    }

    pub(crate) fn algorithm(&self) -> &'static str {
        self.algorithm
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub(crate) fn into_bytes(self) -> Zeroizing<Vec<u8>> {
        self.bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.algorithm, &self.bytes)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} key ({} bytes, fingerprint {})",
            self.algorithm,
            self.bytes.len(),
            self.fingerprint()
        )
    }
}

/// Appends `0x` and the hex digits of `bytes` (nothing for no bytes), one character at a time,
/// so that a key never passes through a temporary string.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    out.push_str("0x");
    for byte in bytes {
        out.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(byte & 0xf)]));
    }
}

/// Decodes hex digits, with an optional `0x` prefix, straight into a wiped buffer. The error
/// says what is wrong without repeating any of the input.
pub(crate) fn decode_hex(token: &str) -> Result<Zeroizing<Vec<u8>>, HexError> {
    let digits = token
        .strip_prefix("0x")
        .or_else(|| token.strip_prefix("0X"))
        .unwrap_or(token);
    if digits.is_empty() {
        return Err(HexError::Empty);
    }
    let prefix = token.len() - digits.len();
    if let Some(at) = digits.bytes().position(|b| !b.is_ascii_hexdigit()) {
        return Err(HexError::NotHex(prefix + at + 1));
    }
    if !digits.len().is_multiple_of(2) {
        return Err(HexError::Odd);
    }
    let mut out = Zeroizing::new(Vec::with_capacity(digits.len() / 2));
    for pair in digits.as_bytes().chunks_exact(2) {
        out.push((nibble(pair[0]) << 4) | nibble(pair[1]));
    }
    Ok(out)
}

fn nibble(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

/// What is wrong with a hex field; never carries the field itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HexError {
    Empty,
    Odd,
    /// 1-based position of the first character that is not a hex digit.
    NotHex(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_stable() {
        // python3: hashlib.sha256(b"xsteer/fingerprint/v1" + b"cbc(aes)" + bytes(range(16))).hexdigest()[:16]
        let fp = Fingerprint::of("cbc(aes)", &(0u8..16).collect::<Vec<_>>());
        assert_eq!(fp.to_string(), "277932db88631844");
        assert_eq!(format!("{fp:?}"), "Fingerprint(277932db88631844)");
        // The algorithm is part of it: the same bytes under another name differ.
        assert_ne!(
            Fingerprint::of("hmac(sha256)", &(0u8..16).collect::<Vec<_>>()),
            fp
        );
    }

    #[test]
    fn hex_decoding() {
        assert_eq!(
            &**decode_hex("00ff10Ab").unwrap(),
            &[0x00, 0xff, 0x10, 0xab]
        );
        assert_eq!(&**decode_hex("0x0a").unwrap(), &[0x0a]);
        assert_eq!(&**decode_hex("0X0A").unwrap(), &[0x0a]);
        assert_eq!(decode_hex("0x").unwrap_err(), HexError::Empty);
        assert_eq!(decode_hex("abc").unwrap_err(), HexError::Odd);
        assert_eq!(decode_hex("0xabzz").unwrap_err(), HexError::NotHex(5));
        assert_eq!(decode_hex("ab\u{e9}f").unwrap_err(), HexError::NotHex(3));
    }
}
