//! Per-SA keys: HKDF-SHA256 from the master key, the node pair in sending order, the
//! generation, and both nodes' epochs.

use std::{fmt, net::IpAddr, str::FromStr};

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{
    CBC_AES, GCM, Generation, HMAC_SHA256,
    secret::{Fingerprint, Secret},
};

/// The fixed start of every HKDF info string; bump the version to change the derivation.
const INFO_PREFIX: &[u8] = b"xsteer/esp/v2";

/// A node's random 16-byte nonce, changed whenever that node's SAs are recreated with fresh
/// sequence counters, so a recreated SA never reuses a key. Not secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch([u8; 16]);

impl Epoch {
    /// A fresh epoch from the OS random number generator.
    pub fn random() -> Result<Epoch, RandomError> {
        let mut bytes = [0u8; 16];
        fill_random(&mut bytes)?;
        Ok(Epoch(bytes))
    }

    /// The epoch with these bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Epoch {
        Epoch(bytes)
    }

    /// A fresh epoch to re-key to from `current`: its SPI tag differs from `current`'s, so the
    /// SAs of both can be installed side by side (see `wire_spi`).
    pub fn random_after(current: &Epoch) -> Result<Epoch, RandomError> {
        loop {
            let next = Epoch::random()?;
            if next.spi_tag() != current.spi_tag() {
                return Ok(next);
            }
        }
    }

    /// The 16 bytes.
    pub fn bytes(&self) -> [u8; 16] {
        self.0
    }

    /// The 3 bits of the epoch that go into wire SPIs: the top of its first byte.
    pub fn spi_tag(&self) -> u8 {
        self.0[0] >> 5
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({self})")
    }
}

impl FromStr for Epoch {
    type Err = EpochParseError;

    /// Exactly 32 hex digits, either case, no prefix.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 {
            return Err(EpochParseError::Length(s.chars().count()));
        }
        if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(EpochParseError::NotHex);
        }
        let mut bytes = [0u8; 16];
        for (byte, pair) in bytes.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).expect("ASCII hex digits");
            *byte = u8::from_str_radix(pair, 16).expect("two hex digits");
        }
        Ok(Epoch(bytes))
    }
}

/// Why a string is not an epoch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpochParseError {
    /// The string is not 32 characters long.
    #[error("an epoch is exactly 32 hex digits (16 random bytes), found {0} characters")]
    Length(usize),
    /// A character is not a hex digit.
    #[error(
        "an epoch is exactly 32 hex digits (16 random bytes), found a character that is not a \
         hex digit"
    )]
    NotHex,
}

/// The OS random number generator failed.
#[derive(Debug, thiserror::Error)]
#[error("the OS random number generator failed: {0}")]
pub struct RandomError(getrandom::Error);

/// Fills `buf` from the OS random number generator.
pub fn fill_random(buf: &mut [u8]) -> Result<(), RandomError> {
    getrandom::fill(buf).map_err(RandomError)
}

/// Which SA a key is for: the direction is the ordered pair (src, dst), so node A's OUT SA to B
/// and B's IN SA from A have the same id and the same key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SaKeyId {
    /// The sending node's IP (the tunnel source).
    pub src: IpAddr,
    /// The receiving node's IP (the tunnel destination), of the same family.
    pub dst: IpAddr,
    /// The key generation.
    pub generation: Generation,
    /// The sending node's epoch.
    pub src_epoch: Epoch,
    /// The receiving node's epoch.
    pub dst_epoch: Epoch,
    /// The SA's CPU slot in its set (docs/marks.md): 0 for the SA any CPU of the sender may
    /// use, `c + 1` for CPU `c`'s. Each has a key of its own, for each has its own counter.
    pub cpu_slot: u8,
}

impl SaKeyId {
    /// The SA in the opposite direction, same generation.
    pub fn reversed(&self) -> SaKeyId {
        SaKeyId {
            src: self.dst,
            dst: self.src,
            generation: self.generation,
            src_epoch: self.dst_epoch,
            dst_epoch: self.src_epoch,
            cpu_slot: self.cpu_slot,
        }
    }
}

/// A key derived for one SA and one kernel algorithm; wiped on drop, shown as a fingerprint.
#[derive(Clone)]
pub struct DerivedKey(Secret);

impl DerivedKey {
    /// The kernel algorithm name this key is for, e.g. `rfc4106(gcm(aes))`.
    pub fn algorithm(&self) -> &'static str {
        self.0.algorithm()
    }

    /// The key bytes, to put into the netlink message that installs the SA. For GCM they
    /// include the 4-byte salt at the end, as the kernel expects.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.bytes()
    }

    /// The key bytes, moved into a buffer that is wiped on drop.
    pub fn into_secret(self) -> Zeroizing<Vec<u8>> {
        self.0.into_bytes()
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the key is empty (never, for a derived key).
    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }

    /// The key's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.0.fingerprint()
    }
}

impl fmt::Debug for DerivedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DerivedKey({:?})", self.0)
    }
}

impl fmt::Display for DerivedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} key {}", self.algorithm(), self.fingerprint())
    }
}

/// The keys of one SA, ready for the kernel.
#[derive(Clone, Debug)]
pub enum SaKey {
    /// `rfc4106(gcm(aes))`.
    Gcm {
        /// AES key followed by the 4-byte salt.
        key: DerivedKey,
        /// ICV length in bits: 64, 96 or 128.
        icv_bits: u8,
    },
    /// `cbc(aes)` with `hmac(sha256)`.
    CbcHmacSha256 {
        /// The `cbc(aes)` key.
        enc: DerivedKey,
        /// The `hmac(sha256)` key.
        auth: DerivedKey,
    },
}

/// Why no SA key could be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeriveError {
    /// The key file has no such generation.
    #[error("the key file has no key generation {0}")]
    NoSuchGeneration(Generation),
    /// A generation was asked for the key of another generation's SA.
    #[error("key generation {generation} cannot derive a key for generation {requested}")]
    GenerationMismatch {
        /// The generation asked.
        generation: Generation,
        /// The generation of the SA.
        requested: Generation,
    },
}

/// A master key as the key file gives it. Private: nothing outside this module tree can read it.
#[derive(Clone)]
pub(super) enum MasterKey {
    Gcm { key: Secret, icv_bits: u8 },
    CbcHmacSha256 { auth: Secret, enc: Secret },
}

impl MasterKey {
    /// The key of SA `id`, for the master key's own algorithm.
    pub(super) fn derive(&self, id: &SaKeyId) -> SaKey {
        derive(self, id)
    }

    /// The key of SA `id` for the cbc(aes)+hmac(sha256) fallback, if this is a GCM master key.
    pub(super) fn derive_cbc_fallback(&self, id: &SaKeyId) -> Option<SaKey> {
        derive_cbc_fallback(self, id)
    }
}

fn derive(master: &MasterKey, id: &SaKeyId) -> SaKey {
    match master {
        MasterKey::Gcm { key, icv_bits } => SaKey::Gcm {
            key: expand(key, GCM, b"aead", id),
            icv_bits: *icv_bits,
        },
        MasterKey::CbcHmacSha256 { auth, enc } => SaKey::CbcHmacSha256 {
            enc: expand(enc, CBC_AES, b"enc", id),
            auth: expand(auth, HMAC_SHA256, b"auth", id),
        },
    }
}

/// The key of SA `id` for the cbc(aes)+hmac(sha256) fallback, from a GCM master key: used when
/// the kernel lacks GCM. The AES key is as long as the GCM key without its salt; the HMAC key
/// is 32 bytes. The labels differ from every other derivation, so no output repeats another.
fn derive_cbc_fallback(master: &MasterKey, id: &SaKeyId) -> Option<SaKey> {
    match master {
        MasterKey::Gcm { key, .. } => Some(SaKey::CbcHmacSha256 {
            enc: expand_to(key, key.len() - 4, CBC_AES, b"gcm-fallback-enc", id),
            auth: expand_to(key, 32, HMAC_SHA256, b"gcm-fallback-auth", id),
        }),
        MasterKey::CbcHmacSha256 { .. } => None,
    }
}

/// HKDF-SHA256 (RFC 5869) with no salt, the master component as IKM, output as long as it.
fn expand(master: &Secret, algorithm: &'static str, label: &[u8], id: &SaKeyId) -> DerivedKey {
    expand_to(master, master.len(), algorithm, label, id)
}

/// HKDF-SHA256 with no salt, the master component as IKM, `len` bytes of output.
fn expand_to(
    master: &Secret,
    len: usize,
    algorithm: &'static str,
    label: &[u8],
    id: &SaKeyId,
) -> DerivedKey {
    let hkdf = Hkdf::<Sha256>::new(None, master.bytes());
    let mut okm = Zeroizing::new(vec![0u8; len]);
    let (src, dst) = (octets(id.src), octets(id.dst));
    // IPv4 endpoints are encoded as they always were; IPv6 ones behind a family tag, so that
    // no IPv6 tunnel's key can equal an IPv4 tunnel's (the inputs differ in length and tag).
    let family: &[u8] = match id.src {
        IpAddr::V4(_) => b"",
        IpAddr::V6(_) => b"ipv6\0",
    };
    hkdf.expand_multi_info(
        &[
            INFO_PREFIX,
            &[0],
            label,
            &[0],
            family,
            &src,
            &dst,
            &[id.generation.get(), id.cpu_slot],
            &id.src_epoch.0,
            &id.dst_epoch.0,
        ],
        &mut okm,
    )
    .expect("at most 64 bytes, far below HKDF-SHA256's 8160");
    DerivedKey(Secret::new(algorithm, okm))
}

/// The address as it enters the derivation: 4 or 16 bytes.
fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn g(n: u8) -> Generation {
        Generation::new(n).unwrap()
    }
    use crate::keys::KeyFile;

    fn epoch(s: &str) -> Epoch {
        s.parse().unwrap()
    }

    fn id() -> SaKeyId {
        SaKeyId {
            src: Ipv4Addr::new(192, 168, 0, 1).into(),
            dst: Ipv4Addr::new(192, 168, 0, 2).into(),
            generation: g(3),
            src_epoch: epoch("00112233445566778899aabbccddeeff"),
            dst_epoch: epoch("ffeeddccbbaa99887766554433221100"),
            cpu_slot: 0,
        }
    }

    const FILE: &str = "\
        3 rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f10111213 128\n\
        4 hmac(sha256) 202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f \
          cbc(aes) 404142434445464748494a4b4c4d4e4f\n\
        5 rfc4106(gcm(aes)) 505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f70717273 64\n";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn gcm_key(file: &KeyFile, id: &SaKeyId) -> String {
        match file.derive(id).unwrap() {
            SaKey::Gcm { key, .. } => hex(key.as_bytes()),
            other => panic!("{other:?}"),
        }
    }

    /// Tunnels between IPv6 node IPs derive under the `ipv6` tag (docs/keys.md has the Python).
    #[test]
    fn ipv6_endpoints_have_their_own_vector() {
        let file: KeyFile = FILE.parse().unwrap();
        let v6 = SaKeyId {
            src: "fd00:192:168::1".parse().unwrap(),
            dst: "fd00:192:168::2".parse().unwrap(),
            ..id()
        };
        assert_eq!(
            gcm_key(&file, &v6),
            "0040ea97ac1f7dd24f45fa06e643322e6389bf29"
        );
        // An IPv4-mapped IPv6 address is another input than the IPv4 address it maps.
        let mapped = SaKeyId {
            src: "::ffff:192.168.0.1".parse().unwrap(),
            dst: "::ffff:192.168.0.2".parse().unwrap(),
            ..id()
        };
        assert_ne!(gcm_key(&file, &mapped), gcm_key(&file, &id()));
    }

    /// Vectors computed independently with Python's `cryptography` package; see docs/keys.md.
    #[test]
    fn fixed_vectors() {
        let file: KeyFile = FILE.parse().unwrap();
        let SaKey::Gcm { key, icv_bits } = file.derive(&id()).unwrap() else {
            panic!("GCM expected")
        };
        assert_eq!(icv_bits, 128);
        assert_eq!(key.algorithm(), GCM);
        assert_eq!(
            hex(key.as_bytes()),
            "025ca4f7a89e215723761fe4c68747f36676f64b"
        );
        let cpu0 = SaKeyId {
            cpu_slot: 1,
            ..id()
        };
        assert_eq!(
            gcm_key(&file, &cpu0),
            "d3501c31fe823be1675871d200af9195e4cf090b",
            "CPU 0's SA has a key of its own"
        );

        let SaKey::CbcHmacSha256 { enc, auth } = file
            .derive(&SaKeyId {
                generation: g(4),
                ..id()
            })
            .unwrap()
        else {
            panic!("CBC expected")
        };
        assert_eq!((enc.algorithm(), auth.algorithm()), (CBC_AES, HMAC_SHA256));
        assert_eq!(hex(enc.as_bytes()), "ca9943b39734a829551398aa208cef5f");
        assert_eq!(
            hex(auth.as_bytes()),
            "1b6735ff5ae76c8bedc0a066b0231dbe45959a85902760ea48c26f4282040300"
        );

        let SaKey::Gcm { key, icv_bits } = file
            .derive(&SaKeyId {
                generation: g(5),
                ..id()
            })
            .unwrap()
        else {
            panic!("GCM expected")
        };
        assert_eq!(icv_bits, 64);
        assert_eq!(
            hex(key.as_bytes()),
            "111d2305c1aa6569b9c7603145e8c156eb86b991f4d534489ab834e7a239f75e234ff38c"
        );
        assert_eq!(
            hex(&key.into_secret()),
            "111d2305c1aa6569b9c7603145e8c156eb86b991f4d534489ab834e7a239f75e234ff38c"
        );
    }

    #[test]
    fn every_input_changes_the_key() {
        let file: KeyFile = FILE.parse().unwrap();
        let base = gcm_key(&file, &id());
        let other = epoch("00000000000000000000000000000001");
        let variants = [
            id().reversed(),
            SaKeyId {
                src: id().dst,
                dst: id().src,
                ..id()
            },
            SaKeyId {
                src_epoch: id().dst_epoch,
                dst_epoch: id().src_epoch,
                ..id()
            },
            SaKeyId {
                src: Ipv4Addr::new(192, 168, 0, 3).into(),
                ..id()
            },
            SaKeyId {
                dst: Ipv4Addr::new(192, 168, 0, 3).into(),
                ..id()
            },
            SaKeyId {
                src_epoch: other,
                ..id()
            },
            SaKeyId {
                dst_epoch: other,
                ..id()
            },
            SaKeyId {
                cpu_slot: 1,
                ..id()
            },
            SaKeyId {
                cpu_slot: 63,
                ..id()
            },
        ];
        let mut seen = vec![base.clone()];
        for variant in variants {
            let key = gcm_key(&file, &variant);
            assert!(!seen.contains(&key), "{variant:?} repeats a key");
            seen.push(key);
        }
        // Another generation with the same master key gives another key too.
        let same_master = KeyFile::parse(
            "3 rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f10111213 128\n\
             4 rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f10111213 128",
        )
        .unwrap();
        assert_eq!(gcm_key(&same_master, &id()), base);
        assert_ne!(
            gcm_key(
                &same_master,
                &SaKeyId {
                    generation: g(4),
                    ..id()
                }
            ),
            base
        );
        // And the same inputs always give the same key: both ends of the SA agree.
        assert_eq!(gcm_key(&file, &id()), base);
        // The derived key is never the master key.
        assert_ne!(base, "000102030405060708090a0b0c0d0e0f10111213");
    }

    #[test]
    fn derive_needs_the_right_generation() {
        let file: KeyFile = FILE.parse().unwrap();
        assert_eq!(
            file.derive(&SaKeyId {
                generation: g(9),
                ..id()
            })
            .unwrap_err()
            .to_string(),
            "the key file has no key generation 9"
        );
        assert_eq!(
            file.generations()[0]
                .derive(&SaKeyId {
                    generation: g(4),
                    ..id()
                })
                .unwrap_err(),
            DeriveError::GenerationMismatch {
                generation: g(3),
                requested: g(4)
            }
        );
    }

    /// The cbc(aes)+hmac(sha256) fallback from a GCM master key, computed independently with
    /// Python's hmac module (RFC 5869 by hand).
    #[test]
    fn cbc_fallback_vectors() {
        let file: KeyFile = FILE.parse().unwrap();
        let gcm = file
            .generations()
            .iter()
            .find(|g| g.generation().get() == 3)
            .unwrap();
        let SaKey::CbcHmacSha256 { enc, auth } = gcm.derive_cbc(&id()).unwrap() else {
            panic!("CBC expected")
        };
        assert_eq!((enc.algorithm(), auth.algorithm()), (CBC_AES, HMAC_SHA256));
        assert_eq!(hex(enc.as_bytes()), "3bb2e0c32d90c58ae23a17e1a2c8eead");
        assert_eq!(
            hex(auth.as_bytes()),
            "81fd444ca4644bef326df69276d0b16bfca22ed966d59d30991f3dafbe4c963f"
        );
        // A generation that is CBC already derives as it always does.
        let cbc = file
            .generations()
            .iter()
            .find(|g| g.generation().get() == 4)
            .unwrap();
        let id4 = SaKeyId {
            generation: g(4),
            ..id()
        };
        let (SaKey::CbcHmacSha256 { enc: a, .. }, SaKey::CbcHmacSha256 { enc: b, .. }) =
            (cbc.derive(&id4).unwrap(), cbc.derive_cbc(&id4).unwrap())
        else {
            panic!("CBC expected")
        };
        assert_eq!(a.as_bytes(), b.as_bytes());
    }

    #[test]
    fn derived_keys_show_only_fingerprints() {
        let file: KeyFile = FILE.parse().unwrap();
        let key = file.derive(&id()).unwrap();
        let SaKey::Gcm { key: bytes, .. } = &key else {
            panic!()
        };
        let secret = hex(bytes.as_bytes());
        let shown = format!("{key:?} {bytes}");
        assert!(!shown.contains(&secret[..8]), "{shown}");
        assert!(shown.contains(&bytes.fingerprint().to_string()), "{shown}");
        assert_eq!(
            bytes.fingerprint(),
            Fingerprint::of(GCM, bytes.as_bytes()),
            "fingerprint covers the algorithm and the bytes"
        );
    }

    #[test]
    fn epochs_round_trip_and_reject_bad_text() {
        let e = epoch("00112233445566778899AABBCCDDEEFF");
        assert_eq!(e.to_string(), "00112233445566778899aabbccddeeff");
        assert_eq!(format!("{e:?}"), "Epoch(00112233445566778899aabbccddeeff)");
        assert_eq!(e.bytes()[15], 0xff);
        assert_eq!(Epoch::from_bytes(e.bytes()), e);
        for (bad, chars) in [
            ("", 0),
            ("00112233445566778899aabbccddeef", 31),
            ("00112233445566778899aabbccddeeff0", 33),
        ] {
            assert_eq!(bad.parse::<Epoch>(), Err(EpochParseError::Length(chars)));
        }
        for bad in [
            "0x112233445566778899aabbccddeeff",
            "00112233445566778899aabbccddeefg",
            "+0112233445566778899aabbccddeeff",
            "0112233445566778899aabbccddeef\u{e9}",
        ] {
            assert_eq!(bad.parse::<Epoch>(), Err(EpochParseError::NotHex));
        }
        assert_eq!(
            "abc".parse::<Epoch>().unwrap_err().to_string(),
            "an epoch is exactly 32 hex digits (16 random bytes), found 3 characters"
        );
        let (a, b) = (Epoch::random().unwrap(), Epoch::random().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.to_string().parse::<Epoch>().unwrap(), a);
    }
}
