//! The `XFRM_MSG_NEWSA` message for one of xsteer's SAs.
//!
//! xfrmnetlink's state builder has no way to add an attribute it does not name, and per-CPU
//! SAs need two that netlink-packet-xfrm 0.5 does not name either: `XFRMA_SA_DIR` (33, Linux
//! 6.10) and `XFRMA_SA_PCPU` (35, Linux 6.13, backported to 6.12.y). So the message is built
//! here, as the builder would build it plus those two as generic attributes, and sent through
//! xfrmnetlink's handle.

use std::ffi::CString;

use netlink_packet_xfrm::{
    Alg, AlgAead, AlgAuth, IPPROTO_ESP, ReplayEsn, XFRM_MODE_TUNNEL, XFRM_STATE_AF_UNSPEC,
    XFRM_STATE_ESN, XfrmAttrs, state::ModifyMessage,
};
use rtnetlink::packet_core::{DefaultNla, Nla};

use super::{CBC, Crypto, GCM, HMAC_SHA256, HMAC_SHA256_ICV_BITS, REPLAY_WINDOW, State};

/// `XFRMA_SA_DIR`: whether an SA is for input or output (`u8`).
const XFRMA_SA_DIR: u16 = 33;
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
    let window = if state.cpu.is_some() {
        0
    } else {
        REPLAY_WINDOW
    };
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
    if let Some(cpu) = state.cpu {
        // The kernel takes a CPU only on an SA marked outbound.
        m.nlas.push(XfrmAttrs::Other(DefaultNla::new(
            XFRMA_SA_DIR,
            vec![XFRM_SA_DIR_OUT],
        )));
        m.nlas.push(XfrmAttrs::Other(DefaultNla::new(
            XFRMA_SA_PCPU,
            cpu.to_ne_bytes().to_vec(),
        )));
    }
    m
}

/// The CPU an SA the kernel describes is bound to, if any.
pub(super) fn cpu_of(nlas: &[XfrmAttrs]) -> Option<u32> {
    nlas.iter().find_map(|nla| match nla {
        XfrmAttrs::Other(other) if other.kind() == XFRMA_SA_PCPU && other.value_len() == 4 => {
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
