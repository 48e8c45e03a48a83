//! The MTU pods must see for traffic that leaves in an ESP tunnel.
//!
//! A tunnel-mode ESP packet wraps the pod's packet in, per RFC 4303:
//!
//! ```text
//! outer IPv4 header       20 (IPv6: 40)
//! ESP header (SPI, seq)    8
//! IV                       8 (GCM, RFC 4106) | 16 (CBC)
//! inner packet             m
//! padding                  0.. so that m + 2 is a multiple of the block (4 for GCM, 16 for CBC)
//! pad length, next header  2
//! ICV                      8, 12, 16 (GCM) | 16 (HMAC-SHA-256-128)
//! ```
//!
//! The largest m whose ESP packet still fits the uplink MTU U is
//! `floor((U − outer − 8 − IV − ICV) / block) · block − 2`. With U = 1500 and IPv4 node IPs:
//! GCM with a 16-byte ICV gives 1446, CBC with HMAC-SHA-256 gives 1438; with IPv6 node IPs,
//! 1426 and 1406. The inner packet's family does not matter: it is payload. Routes to remote pod CIDRs carry this MTU, so
//! the kernel answers oversized packets with "fragmentation needed" and pods see a correct path
//! MTU instead of black holes.

use crate::cidr::IpFamily;

/// The transform whose overhead is being computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EspTransform {
    /// AES-GCM (RFC 4106) with an ICV of this many bytes.
    Gcm {
        /// 8, 12 or 16.
        icv_bytes: u32,
    },
    /// AES-CBC with HMAC-SHA-256-128.
    CbcHmacSha256,
}

const OUTER_IPV4: u32 = 20;
const OUTER_IPV6: u32 = 40;
const ESP_HEADER: u32 = 8;
const TRAILER: u32 = 2;

/// The largest inner packet that fits an uplink of `uplink_mtu` bytes after encryption in a
/// tunnel whose outer header is of `outer`.
pub fn inner_mtu(uplink_mtu: u32, transform: EspTransform, outer: IpFamily) -> u32 {
    let outer = match outer {
        IpFamily::V4 => OUTER_IPV4,
        IpFamily::V6 => OUTER_IPV6,
    };
    let (iv, icv, block) = match transform {
        EspTransform::Gcm { icv_bytes } => (8, icv_bytes, 4),
        EspTransform::CbcHmacSha256 => (16, 16, 16),
    };
    let room = uplink_mtu.saturating_sub(outer + ESP_HEADER + iv + icv);
    (room / block * block).saturating_sub(TRAILER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_figures() {
        let gcm = EspTransform::Gcm { icv_bytes: 16 };
        let v4 = IpFamily::V4;
        assert_eq!(inner_mtu(1500, gcm, v4), 1446);
        assert_eq!(inner_mtu(1500, EspTransform::CbcHmacSha256, v4), 1438);
        assert_eq!(inner_mtu(9000, gcm, v4), 8946);
        assert_eq!(
            inner_mtu(1500, EspTransform::Gcm { icv_bytes: 8 }, v4),
            1454
        );
        assert_eq!(inner_mtu(1500, gcm, IpFamily::V6), 1426);
        assert_eq!(
            inner_mtu(1500, EspTransform::CbcHmacSha256, IpFamily::V6),
            1406
        );
    }

    #[test]
    fn the_inner_packet_and_its_esp_wrapping_fit_exactly() {
        for (outer, family) in [(20, IpFamily::V4), (40, IpFamily::V6)] {
            for uplink in [1280u32, 1400, 1450, 1500, 1501, 1502, 1503, 9000] {
                for t in [
                    EspTransform::Gcm { icv_bytes: 16 },
                    EspTransform::CbcHmacSha256,
                ] {
                    let m = inner_mtu(uplink, t, family);
                    let (iv, icv, block) = match t {
                        EspTransform::Gcm { icv_bytes } => (8, icv_bytes, 4),
                        EspTransform::CbcHmacSha256 => (16, 16, 16),
                    };
                    let padded = (m + 2).div_ceil(block) * block;
                    let wire = outer + 8 + iv + padded + icv;
                    assert!(wire <= uplink, "{uplink} {t:?}: {m} -> {wire}");
                    // One byte more would not fit.
                    let padded = (m + 3).div_ceil(block) * block;
                    assert!(
                        outer + 8 + iv + padded + icv > uplink,
                        "{uplink} {t:?}: {m} is not the largest"
                    );
                }
            }
        }
    }
}
