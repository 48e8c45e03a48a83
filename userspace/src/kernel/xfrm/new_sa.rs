//! The `XFRM_MSG_NEWSA` message for one of xsteer's SAs.
//!
//! xfrmnetlink's state builder has no way to add an attribute it does not name, and per-CPU
//! SAs and NAT keepalives need three that netlink-packet-xfrm 0.5 does not name either:
//! `XFRMA_SA_DIR` (33, Linux 6.10), `XFRMA_NAT_KEEPALIVE_INTERVAL` (34, 6.11) and
//! `XFRMA_SA_PCPU` (35, 6.13, backported to 6.12.y). So the message is built here, as the
//! builder would build it plus those as generic attributes, and sent through xfrmnetlink's
//! handle. `XFRMA_ENCAP` it names.

use std::ffi::CString;

use netlink_packet_xfrm::{
    Address, Alg, AlgAead, AlgAuth, EncapTmpl, IPPROTO_ESP, ReplayEsn, XFRM_MODE_TUNNEL,
    XFRM_STATE_AF_UNSPEC, XFRM_STATE_ESN, XfrmAttrs, state::ModifyMessage,
};
use rtnetlink::packet_core::{DefaultNla, Nla};

use super::{CBC, Crypto, EspInUdp, GCM, HMAC_SHA256, HMAC_SHA256_ICV_BITS, REPLAY_WINDOW, State};

/// `XFRMA_SA_DIR`: whether an SA is for input or output (`u8`).
const XFRMA_SA_DIR: u16 = 33;
/// `XFRMA_NAT_KEEPALIVE_INTERVAL`: seconds between NAT keepalives of an outbound SA with
/// UDP encapsulation (`u32`).
const XFRMA_NAT_KEEPALIVE_INTERVAL: u16 = 34;
/// `UDP_ENCAP_ESPINUDP`: ESP in UDP as RFC 3948 has it (non-ESP marker for IKE only).
const UDP_ENCAP_ESPINUDP: u16 = 2;
/// `XFRMA_SA_PCPU`: the CPU whose packets an outbound SA carries (`u32`).
const XFRMA_SA_PCPU: u16 = 35;
/// `XFRM_SA_DIR_OUT`.
const XFRM_SA_DIR_OUT: u8 = 2;

/// The message that installs `state`.
pub(super) fn message(state: &State) -> ModifyMessage {
    let mut m = ModifyMessage::default();
    let info = &mut m.user_sa_info;
    info.source(&state.src);
    info.destination(&state.dst);
    info.id.proto = IPPROTO_ESP;
    info.id.spi = state.spi;
    info.mode = XFRM_MODE_TUNNEL;
    info.reqid = state.reqid();
    // One SA carries pods' traffic of both families: without AF_UNSPEC the kernel gives the
    // SA a selector of its outer family, and IPv6 inside an IPv4 tunnel finds no SA (dropped,
    // never in clear).
    info.flags = XFRM_STATE_AF_UNSPEC | if state.esn { XFRM_STATE_ESN } else { 0 };
    // The kernel refuses a replay window on an SA marked outbound; the others are inbound ones,
    // or outbound ones that never check theirs. ESN requires the window in its own attribute,
    // and so does a window wider than the legacy 32-bit bitmap (the kernel sizes the bitmap
    // from `bmp_len` when the attribute carries none).
    let keepalive = state.encap.map_or(0, |encap| encap.keepalive_secs);
    let marked_out = state.cpu.is_some() || keepalive != 0;
    let window = if marked_out { 0 } else { REPLAY_WINDOW };
    if state.esn || window > u32::BITS {
        m.nlas.push(XfrmAttrs::ReplayStateEsn(ReplayEsn {
            bmp_len: window.div_ceil(u32::BITS),
            oseq: 0,
            seq: 0,
            oseq_hi: 0,
            seq_hi: 0,
            replay_window: window,
            bmp: Vec::new(),
        }));
    } else {
        info.replay_window = window as u8;
    }
    if let Some(mark) = state.mark {
        m.nlas.push(XfrmAttrs::Mark(netlink_packet_xfrm::Mark {
            value: mark.value,
            mask: mark.mask,
        }));
    }
    match &state.crypto {
        Crypto::Gcm { key, icv_bits } => m.nlas.push(XfrmAttrs::EncryptionAlgAead(AlgAead {
            alg_name: name(GCM),
            alg_key_len: bits(key),
            alg_icv_len: *icv_bits,
            alg_key: key.to_vec(),
        })),
        Crypto::CbcHmacSha256 { enc_key, auth_key } => {
            m.nlas.push(XfrmAttrs::EncryptionAlg(Alg {
                alg_name: name(CBC),
                alg_key_len: bits(enc_key),
                alg_key: enc_key.to_vec(),
            }));
            m.nlas.push(XfrmAttrs::AuthenticationAlgTrunc(AlgAuth {
                alg_name: name(HMAC_SHA256),
                alg_key_len: bits(auth_key),
                alg_trunc_len: HMAC_SHA256_ICV_BITS,
                alg_key: auth_key.to_vec(),
            }));
        }
    }
    if let Some(encap) = state.encap {
        m.nlas.push(XfrmAttrs::EncapsulationTemplate(EncapTmpl {
            encap_type: UDP_ENCAP_ESPINUDP,
            encap_sport: encap.sport,
            encap_dport: encap.dport,
            encap_oa: Address::default(),
        }));
    }
    // The kernel takes a CPU and a keepalive interval only on an SA marked outbound.
    if marked_out {
        m.nlas.push(XfrmAttrs::Other(DefaultNla::new(
            XFRMA_SA_DIR,
            vec![XFRM_SA_DIR_OUT],
        )));
    }
    if keepalive != 0 {
        m.nlas.push(XfrmAttrs::Other(DefaultNla::new(
            XFRMA_NAT_KEEPALIVE_INTERVAL,
            keepalive.to_ne_bytes().to_vec(),
        )));
    }
    if let Some(cpu) = state.cpu {
        m.nlas.push(XfrmAttrs::Other(DefaultNla::new(
            XFRMA_SA_PCPU,
            cpu.to_ne_bytes().to_vec(),
        )));
    }
    m
}

/// The UDP encapsulation of an SA the kernel describes, if it has ESP in UDP.
pub(super) fn encap_of(nlas: &[XfrmAttrs]) -> Option<EspInUdp> {
    let template = nlas.iter().find_map(|nla| match nla {
        XfrmAttrs::EncapsulationTemplate(t) if t.encap_type == UDP_ENCAP_ESPINUDP => Some(t),
        _ => None,
    })?;
    Some(EspInUdp {
        sport: template.encap_sport,
        dport: template.encap_dport,
        keepalive_secs: u32_attr(nlas, XFRMA_NAT_KEEPALIVE_INTERVAL).unwrap_or(0),
    })
}

/// The CPU an SA the kernel describes is bound to, if any.
pub(super) fn cpu_of(nlas: &[XfrmAttrs]) -> Option<u32> {
    u32_attr(nlas, XFRMA_SA_PCPU)
}

/// The value of the generic `u32` attribute `kind`, if the kernel sent it.
fn u32_attr(nlas: &[XfrmAttrs], kind: u16) -> Option<u32> {
    nlas.iter().find_map(|nla| match nla {
        XfrmAttrs::Other(other) if other.kind() == kind && other.value_len() == 4 => {
            let mut value = [0u8; 4];
            other.emit_value(&mut value);
            Some(u32::from_ne_bytes(value))
        }
        _ => None,
    })
}

/// An algorithm name as the kernel's fixed-size, NUL-padded field of `N` bytes.
fn name<const N: usize>(alg: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let c = CString::new(alg).expect("algorithm names have no NUL");
    let bytes = c.as_bytes();
    out[..bytes.len().min(N - 1)].copy_from_slice(&bytes[..bytes.len().min(N - 1)]);
    out
}

/// A key's length in bits.
fn bits(key: &[u8]) -> u32 {
    (key.len() * 8) as u32
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use rtnetlink::packet_core::{Emitable, Parseable};
    use zeroize::Zeroizing;

    use super::*;

    fn out_sa(cpu: Option<u32>, encap: Option<EspInUdp>) -> State {
        State {
            src: Ipv4Addr::new(192, 168, 0, 1).into(),
            dst: Ipv4Addr::new(203, 0, 113, 7).into(),
            spi: 0x0002_0003,
            mark: None,
            crypto: Crypto::Gcm {
                key: Zeroizing::new(vec![7; 20]),
                icv_bits: 128,
            },
            esn: true,
            cpu,
            encap,
        }
    }

    /// The message as the kernel receives it, parsed back as a dump would be.
    fn through_the_wire(state: &State) -> ModifyMessage {
        let message = message(state);
        let mut bytes = vec![0; message.buffer_len()];
        message.emit(&mut bytes);
        ModifyMessage::parse(bytes.as_slice()).unwrap()
    }

    fn attr(m: &ModifyMessage, kind: u16) -> Option<Vec<u8>> {
        m.nlas.iter().find_map(|nla| match nla {
            XfrmAttrs::Other(other) if other.kind() == kind => {
                let mut value = vec![0; other.value_len()];
                other.emit_value(&mut value);
                Some(value)
            }
            _ => None,
        })
    }

    #[test]
    fn esp_in_udp_goes_out_as_xfrma_encap_with_ports_in_network_order() {
        let encap = EspInUdp {
            sport: 4500,
            dport: 4501,
            keepalive_secs: 0,
        };
        let state = out_sa(None, Some(encap));
        let m = message(&state);
        let mut bytes = vec![0; m.buffer_len()];
        m.emit(&mut bytes);
        // type 2, sport 4500 (0x1194), dport 4501 (0x1195), big-endian, in one attribute.
        let wire = [0x02, 0x00, 0x11, 0x94, 0x11, 0x95];
        assert!(bytes.windows(wire.len()).any(|w| w == wire), "{bytes:02x?}");
        let parsed = through_the_wire(&state);
        assert_eq!(encap_of(&parsed.nlas), Some(encap));
        // Without a keepalive the SA is not marked outbound and keeps its replay window.
        assert_eq!(attr(&parsed, XFRMA_SA_DIR), None);
        assert_eq!(encap_of(&through_the_wire(&out_sa(None, None)).nlas), None);
    }

    #[test]
    fn a_keepalive_marks_the_sa_outbound_without_a_replay_window() {
        let encap = EspInUdp {
            sport: 4500,
            dport: 4500,
            keepalive_secs: 20,
        };
        for cpu in [None, Some(1)] {
            let parsed = through_the_wire(&out_sa(cpu, Some(encap)));
            assert_eq!(encap_of(&parsed.nlas), Some(encap));
            assert_eq!(attr(&parsed, XFRMA_SA_DIR), Some(vec![XFRM_SA_DIR_OUT]));
            assert_eq!(
                attr(&parsed, XFRMA_NAT_KEEPALIVE_INTERVAL),
                Some(20u32.to_ne_bytes().to_vec())
            );
            assert_eq!(cpu_of(&parsed.nlas), cpu);
            let window = parsed.nlas.iter().find_map(|nla| match nla {
                XfrmAttrs::ReplayStateEsn(esn) => Some(esn.replay_window),
                _ => None,
            });
            assert_eq!(window, Some(0));
        }
    }
}
