//! `xsteer keys wireshark`: xsteer's SAs as lines of Wireshark's `esp_sa` table, so that an
//! operator can decrypt a capture of the wire.
//!
//! The format is Wireshark 4.0's (Debian bookworm ships tshark 4.0.17): one SA per line, eight
//! quoted fields separated by commas: protocol, source, destination, SPI, encryption algorithm,
//! encryption key, authentication algorithm, authentication key. Other Wireshark versions may
//! list other fields. Every line holds secret keys, so it is built in a buffer that is wiped when
//! dropped, reserved up front so that it never reallocates and leaves an unwiped copy behind.

use std::{fmt::Write as _, io};

use zeroize::Zeroizing;

use crate::{
    kernel::{
        Netlink,
        xfrm::{self, Crypto, State, XfrmError},
    },
    keys::push_hex,
};

/// Wireshark's name of AES-CBC.
const AES_CBC: &str = "AES-CBC [RFC3602]";
/// Wireshark's name of HMAC-SHA-256 truncated to 128 bits, as xsteer's CBC SAs use it.
const HMAC_SHA256_128: &str = "HMAC-SHA-256-128 [RFC4868]";
/// Wireshark's name for no separate authentication (AES-GCM authenticates by itself).
const NO_AUTHENTICATION: &str = "NULL";
/// An upper bound on a line's length without its keys' hex digits.
const FIXED_LEN: usize = 160;

/// Wireshark's name of AES-GCM (RFC 4106) with an ICV of `icv_bits`, if it has one.
fn gcm_name(icv_bits: u32) -> Option<&'static str> {
    match icv_bits {
        64 => Some("AES-GCM with 8 octet ICV [RFC4106]"),
        96 => Some("AES-GCM with 12 octet ICV [RFC4106]"),
        128 => Some("AES-GCM with 16 octet ICV [RFC4106]"),
        _ => None,
    }
}

/// An SA that Wireshark's `esp_sa` table cannot describe.
#[derive(Debug, thiserror::Error)]
#[error("{sa}: Wireshark has no AES-GCM with a {icv_bits}-bit ICV; left out")]
pub struct UnsupportedSa {
    /// The SA, shown without its keys.
    pub sa: String,
    /// Its ICV length in bits.
    pub icv_bits: u32,
}

/// The `esp_sa` line of `state`, ending in a newline.
pub fn line(state: &State) -> Result<Zeroizing<String>, UnsupportedSa> {
    let (encryption, enc_key, authentication, auth_key): (_, &[u8], _, &[u8]) = match &state.crypto
    {
        Crypto::Gcm { key, icv_bits } => {
            let name = gcm_name(*icv_bits).ok_or_else(|| UnsupportedSa {
                sa: state.to_string(),
                icv_bits: *icv_bits,
            })?;
            (name, key, NO_AUTHENTICATION, &[])
        }
        Crypto::CbcHmacSha256 { enc_key, auth_key } => {
            (AES_CBC, enc_key, HMAC_SHA256_128, auth_key)
        }
    };
    let mut out = Zeroizing::new(String::with_capacity(
        FIXED_LEN + 2 * (enc_key.len() + auth_key.len()),
    ));
    // The protocol column names the outer family, which tunnels of IPv6 node IPs have.
    let family = if state.src.is_ipv4() { "IPv4" } else { "IPv6" };
    let _ = write!(
        out,
        "\"{family}\",\"{}\",\"{}\",\"{:#010x}\",\"{encryption}\",\"",
        state.src, state.dst, state.spi
    );
    push_hex(&mut out, enc_key);
    let _ = write!(out, "\",\"{authentication}\",\"");
    push_hex(&mut out, auth_key);
    out.push_str("\"\n");
    Ok(out)
}

/// The `esp_sa` table of the SAs xsteer owns in this network namespace.
pub struct EspSaTable {
    /// One line per SA, sorted by source, destination and SPI.
    pub lines: Vec<Zeroizing<String>>,
    /// The SAs that have no line.
    pub left_out: Vec<UnsupportedSa>,
    /// How many of the lines are SAs with extended sequence numbers, whose ICV Wireshark
    /// computes without the high sequence bits (wireshark#19658): it decrypts them, and
    /// reports their ICV as bad.
    pub esn: usize,
}

/// Why the table could not be made.
#[derive(Debug, thiserror::Error)]
pub enum WiresharkError {
    /// Reading keys from the kernel takes root.
    #[error(
        "xsteer keys wireshark must run as root: it reads the SAs' keys from the kernel over \
         xfrm netlink, which needs CAP_NET_ADMIN"
    )]
    NotRoot,
    /// The netlink sockets could not be opened.
    #[error("opening netlink sockets: {0}")]
    Netlink(io::Error),
    /// The SAs could not be listed.
    #[error(transparent)]
    Xfrm(#[from] XfrmError),
}

/// Reads the SAs xsteer owns (reqid [`xfrm::REQID`]) in the calling thread's network namespace,
/// keys included, and makes their lines.
pub async fn table() -> Result<EspSaTable, WiresharkError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(WiresharkError::NotRoot);
    }
    let netlink = Netlink::connect().map_err(WiresharkError::Netlink)?;
    let mut states = xfrm::states(&netlink).await?;
    states.sort_by_key(|s| (s.src, s.dst, s.spi));
    let mut table = EspSaTable {
        lines: Vec::with_capacity(states.len()),
        left_out: Vec::new(),
        esn: states.iter().filter(|s| s.esn).count(),
    };
    for state in &states {
        match line(state) {
            Ok(line) => table.lines.push(line),
            Err(unsupported) => table.left_out.push(unsupported),
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::kernel::xfrm::Mark;

    fn sa(crypto: Crypto) -> State {
        State {
            src: Ipv4Addr::new(192, 168, 60, 1).into(),
            dst: Ipv4Addr::new(192, 168, 60, 2).into(),
            spi: 0x0001_0234,
            mark: Some(Mark {
                value: 0x0002_4e00,
                mask: 0xffff_ff00,
            }),
            crypto,
            esn: true,
            cpu: None,
            encap: None,
        }
    }

    fn bytes(range: std::ops::Range<u8>) -> xfrm::Secret {
        Zeroizing::new(range.collect())
    }

    #[test]
    fn gcm_lines_name_the_icv_and_carry_key_and_salt() {
        let gcm = |icv_bits| {
            line(&sa(Crypto::Gcm {
                key: bytes(0..20),
                icv_bits,
            }))
            .unwrap()
        };
        assert_eq!(
            gcm(128).as_str(),
            "\"IPv4\",\"192.168.60.1\",\"192.168.60.2\",\"0x00010234\",\
             \"AES-GCM with 16 octet ICV [RFC4106]\",\
             \"0x000102030405060708090a0b0c0d0e0f10111213\",\"NULL\",\"\"\n"
        );
        assert!(gcm(96).contains(",\"AES-GCM with 12 octet ICV [RFC4106]\","));
        assert!(gcm(64).contains(",\"AES-GCM with 8 octet ICV [RFC4106]\","));
    }

    #[test]
    fn cbc_lines_carry_both_keys() {
        let line = line(&sa(Crypto::CbcHmacSha256 {
            enc_key: bytes(0x40..0x50),
            auth_key: bytes(0x20..0x40),
        }))
        .unwrap();
        assert_eq!(
            line.as_str(),
            "\"IPv4\",\"192.168.60.1\",\"192.168.60.2\",\"0x00010234\",\"AES-CBC [RFC3602]\",\
             \"0x404142434445464748494a4b4c4d4e4f\",\"HMAC-SHA-256-128 [RFC4868]\",\
             \"0x202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f\"\n"
        );
    }

    #[test]
    fn the_longest_line_never_reallocates() {
        let mut state = sa(Crypto::Gcm {
            key: bytes(0..36),
            icv_bits: 128,
        });
        state.src = Ipv4Addr::new(255, 255, 255, 255).into();
        state.dst = Ipv4Addr::new(255, 255, 255, 254).into();
        state.spi = u32::MAX;
        let gcm = line(&state).unwrap();
        assert_eq!(gcm.capacity(), FIXED_LEN + 72);
        state.crypto = Crypto::CbcHmacSha256 {
            enc_key: bytes(0..32),
            auth_key: bytes(0..64),
        };
        let cbc = line(&state).unwrap();
        assert_eq!(cbc.capacity(), FIXED_LEN + 192);
        assert!(cbc.len() < cbc.capacity());
    }

    #[test]
    fn an_icv_wireshark_has_no_name_for_is_left_out_without_the_key() {
        let err = line(&sa(Crypto::Gcm {
            key: bytes(0..20),
            icv_bits: 32,
        }))
        .unwrap_err();
        assert_eq!(err.icv_bits, 32);
        let text = err.to_string();
        assert!(text.contains("32-bit ICV"), "{text}");
        assert!(!text.contains("0001020304"), "the key leaked: {text}");
    }
}
