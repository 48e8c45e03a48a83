//! The xfrm SAs and policies xsteer owns, as plain values that can be listed, compared, applied.
//!
//! Reconciling compares "what the kernel holds" with "what it should hold"; both sides use the
//! types here. xsteer recognises its own objects and never touches anything else:
//! - SAs carry a reqid whose low 16 bits are [`REQID`] (the high ones name the SA's set);
//! - policies sit at priority [`PEER_POLICY_PRIORITY`], [`UNMARKED_POLICY_PRIORITY`] or
//!   [`BLOCK_POLICY_PRIORITY`].
//!
//! `0x7873` is ASCII "xs". netlink-packet-xfrm converts SPIs to and from network order itself:
//! they are host-order `u32`s here. Key material travels in [`Secret`]s, zeroed on drop, and no error or
//! `Debug` output of this module ever contains it: netlink errors are reduced to their errno.

use std::{
    fmt, io,
    net::{IpAddr, Ipv4Addr},
};

use futures::{StreamExt, TryStreamExt};
use netlink_packet_xfrm::{
    AF_INET, AF_INET6, Address, IPPROTO_ESP, UserTemplate, XFRM_MODE_TUNNEL, XFRM_POLICY_ALLOW,
    XFRM_POLICY_BLOCK, XFRM_POLICY_FWD, XFRM_POLICY_IN, XFRM_POLICY_OUT, XFRM_STATE_ESN, XfrmAttrs,
    XfrmMessage,
};
use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use zeroize::Zeroizing;

use super::Netlink;

mod new_sa;
use xsteer_common::spi::PER_CPU_SAS_MAX;

use crate::{
    cidr::IpCidr,
    keys::{self, CBC_AES as CBC, Fingerprint, GCM, HMAC_SHA256},
};

/// The low 16 bits of the reqid of every SA xsteer installs; the high 16 name the SA's set
/// ([`State::reqid`]), which the OUT policies' templates select by.
pub const REQID: u32 = 0x7873;
/// Priority of per-peer policies (lower wins in the kernel).
pub const PEER_POLICY_PRIORITY: u32 = 0x7873_0010;
/// Priority of the per-peer OUT policies that select by destination alone, for what the
/// classifier did not mark (host-originated packets, Service traffic after DNAT, ICMP errors):
/// below the marked ones, above the block policy.
pub const UNMARKED_POLICY_PRIORITY: u32 = 0x7873_0018;
/// Priority of the catch-all block policy: below every per-peer policy.
pub const BLOCK_POLICY_PRIORITY: u32 = 0x7873_0020;
/// Replay window of inbound SAs, in packets. A packet older than the window is dropped, and with
/// extended sequence numbers one far behind fails its ICV (the kernel guesses its high bits
/// wrong): `XfrmInStateProtoError`. ESP between two nodes is reordered whenever several CPUs
/// handle it, so the window covers what `cargo xtask bench esp` measured (docs/benchmarks.md):
/// with 32, thousands of TCP segments per 10 s were lost that way. 128 bytes of bitmap per SA.
pub const REPLAY_WINDOW: u32 = 1024;
/// Truncated ICV length of hmac(sha256) in ESP (RFC 4868), in bits.
pub const HMAC_SHA256_ICV_BITS: u32 = 128;

/// Key bytes, zeroed when dropped.
pub type Secret = Zeroizing<Vec<u8>>;

/// An skb mark and the mask it is compared under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mark {
    /// The value.
    pub value: u32,
    /// The bits compared.
    pub mask: u32,
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}/{:#x}", self.value, self.mask)
    }
}

/// The direction of a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Locally delivered traffic.
    In,
    /// Locally generated and forwarded traffic on its way out.
    Out,
    /// Forwarded traffic, checked on its way in.
    Fwd,
}

impl Direction {
    fn raw(self) -> u8 {
        match self {
            Direction::In => XFRM_POLICY_IN,
            Direction::Out => XFRM_POLICY_OUT,
            Direction::Fwd => XFRM_POLICY_FWD,
        }
    }

    fn from_raw(raw: u8) -> Option<Direction> {
        match raw {
            XFRM_POLICY_IN => Some(Direction::In),
            XFRM_POLICY_OUT => Some(Direction::Out),
            XFRM_POLICY_FWD => Some(Direction::Fwd),
            _ => None,
        }
    }
}

/// What a policy does with the packets it selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyAction {
    /// Drop them.
    Block,
    /// Require (in, fwd) or apply (out) ESP in tunnel mode between these node IPs.
    Tunnel {
        /// Outer source.
        src: IpAddr,
        /// Outer destination.
        dst: IpAddr,
        /// The SA set an OUT policy uses, by reqid ([`State::reqid`]): the kernel picks the SA
        /// of the sending CPU from it, or the set's shared SA. Moving traffic onto a re-keyed
        /// set is one atomic update of this field. Zero (IN, FWD) takes any SA that matches.
        reqid: u32,
    },
}

/// An xfrm policy as xsteer writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Policy {
    /// Which path the policy sits on.
    pub direction: Direction,
    /// Selector source: the inner family's.
    pub src: IpCidr,
    /// Selector destination, of the same family.
    pub dst: IpCidr,
    /// The mark the packet must carry, if any.
    pub mark: Option<Mark>,
    /// Kernel priority; lower wins.
    pub priority: u32,
    /// Block, or the tunnel template.
    pub action: PolicyAction,
}

/// What identifies a policy in the kernel: two policies with the same key cannot coexist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    /// Direction.
    pub direction: Direction,
    /// Selector source: the inner family's.
    pub src: IpCidr,
    /// Selector destination, of the same family.
    pub dst: IpCidr,
    /// Mark, if any.
    pub mark: Option<Mark>,
}

impl Policy {
    /// The kernel identity of this policy.
    pub fn key(&self) -> PolicyKey {
        PolicyKey {
            direction: self.direction,
            src: self.src,
            dst: self.dst,
            mark: self.mark,
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = match self.direction {
            Direction::In => "in",
            Direction::Out => "out",
            Direction::Fwd => "fwd",
        };
        write!(f, "policy {dir} {} -> {}", self.src, self.dst)?;
        if let Some(mark) = self.mark {
            write!(f, " mark {mark}")?;
        }
        match self.action {
            PolicyAction::Block => write!(f, " block"),
            PolicyAction::Tunnel { src, dst, reqid } => {
                write!(f, " tunnel {src} -> {dst}")?;
                match reqid {
                    0 => Ok(()),
                    reqid => write!(f, " reqid {reqid:#010x}"),
                }
            }
        }
    }
}

/// The transform of an SA, keys included.
#[derive(Clone, PartialEq, Eq)]
pub enum Crypto {
    /// `rfc4106(gcm(aes))`: key with its 4-byte salt, ICV length in bits.
    Gcm {
        /// AES key followed by the 4-byte salt.
        key: Secret,
        /// ICV length in bits (64, 96 or 128).
        icv_bits: u32,
    },
    /// `cbc(aes)` with `hmac(sha256)` truncated to 128 bits.
    CbcHmacSha256 {
        /// The AES key.
        enc_key: Secret,
        /// The HMAC key.
        auth_key: Secret,
    },
}

impl Crypto {
    /// A short fingerprint of the keys, for output that must not show them.
    pub fn fingerprint(&self) -> Fingerprint {
        match self {
            Crypto::Gcm { key, .. } => Fingerprint::of(GCM, key),
            Crypto::CbcHmacSha256 { enc_key, auth_key } => {
                let both = Zeroizing::new([enc_key.as_slice(), auth_key.as_slice()].concat());
                Fingerprint::of(CBC, &both)
            }
        }
    }
}

impl fmt::Debug for Crypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Crypto::Gcm { key, icv_bits } => {
                write!(
                    f,
                    "{GCM} ({} key bits, icv {icv_bits}, key redacted)",
                    (key.len() - 4) * 8
                )
            }
            Crypto::CbcHmacSha256 { enc_key, .. } => write!(
                f,
                "{CBC} ({} key bits) + {HMAC_SHA256}, keys redacted",
                enc_key.len() * 8
            ),
        }
    }
}

/// An ESP tunnel-mode SA as xsteer writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// Outer source (sending node), of either family.
    pub src: IpAddr,
    /// Outer destination (receiving node), of the same family.
    pub dst: IpAddr,
    /// The 32-bit wire SPI.
    pub spi: u32,
    /// The mark that selects this SA on output; `None` for inbound SAs, found by SPI.
    pub mark: Option<Mark>,
    /// Algorithms and keys.
    pub crypto: Crypto,
    /// 64-bit extended sequence numbers (RFC 4304): the counter cannot run out after 2^32
    /// packets, should a re-key be late.
    pub esn: bool,
    /// The CPU whose packets this outbound SA carries (a per-CPU SA, `XFRMA_SA_PCPU`); `None`
    /// for an SA any CPU may use, and for inbound SAs.
    pub cpu: Option<u32>,
    /// On an outbound SA: send ESP in UDP (RFC 3948) rather than bare ESP, for a path through
    /// NAT. Inbound SAs never carry it: the ingress guard strips the UDP header before xfrm
    /// sees the packet (see the `udp_encap` map).
    pub encap: Option<EspInUdp>,
}

/// How an outbound SA wraps ESP in UDP (`XFRMA_ENCAP` with `UDP_ENCAP_ESPINUDP`, and
/// `XFRMA_NAT_KEEPALIVE_INTERVAL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EspInUdp {
    /// UDP source port.
    pub sport: u16,
    /// UDP destination port: where the peer, or the NAT in front of it, receives.
    pub dport: u16,
    /// Seconds of idleness after which the kernel sends a NAT keepalive on this SA (Linux
    /// 6.11); 0 sends none. Set only where the kernel was found to keep it.
    pub keepalive_secs: u32,
}

/// What identifies an SA in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StateKey {
    /// Outer destination.
    pub dst: IpAddr,
    /// Wire SPI.
    pub spi: u32,
}

impl State {
    /// The reqid of this SA: [`REQID`], and above it the bits of the wire SPI that name its set
    /// (pairing of epochs and generation, [`xsteer_common::spi::SET_MASK`]). The SAs of one
    /// set, per-CPU and shared, share it; no two sets between two nodes do.
    pub fn reqid(&self) -> u32 {
        set_reqid(self.spi)
    }

    /// The kernel identity of this SA.
    pub fn key(&self) -> StateKey {
        StateKey {
            dst: self.dst,
            spi: self.spi,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SA {} -> {} spi {:#010x}", self.src, self.dst, self.spi)?;
        if let Some(mark) = self.mark {
            write!(f, " mark {mark}")?;
        }
        if self.esn {
            write!(f, " esn")?;
        }
        if let Some(cpu) = self.cpu {
            write!(f, " cpu {cpu}")?;
        }
        if let Some(encap) = self.encap {
            write!(f, " espinudp {}:{}", encap.sport, encap.dport)?;
            if encap.keepalive_secs != 0 {
                write!(f, " keepalive {}s", encap.keepalive_secs)?;
            }
        }
        write!(f, " key {}", self.crypto.fingerprint())
    }
}

/// Why an xfrm operation failed.
#[derive(Debug, thiserror::Error)]
pub enum XfrmError {
    /// The kernel refused a request.
    #[error("{op} {what}: {error}")]
    Kernel {
        /// "adding", "deleting", "listing", ...
        op: &'static str,
        /// The object, without key material.
        what: String,
        /// The errno.
        error: io::Error,
    },
    /// The kernel cannot do ESP at all.
    #[error(
        "this kernel has no ESP (CONFIG_INET_ESP is not set and esp4 cannot be loaded); \
         xsteer refuses to run, as pod traffic would leave in plaintext"
    )]
    NoEsp,
    /// Neither AES-GCM nor the CBC+HMAC fallback is available.
    #[error("this kernel has ESP but neither {GCM} nor {CBC}+{HMAC_SHA256}")]
    NoCipher,
}

fn kernel(
    op: &'static str,
    what: impl fmt::Display,
) -> impl FnOnce(xfrmnetlink::Error) -> XfrmError {
    let what = what.to_string();
    move |e| XfrmError::Kernel {
        op,
        what,
        error: errno(e),
    }
}

/// Reduces a netlink error to its errno: the message itself may echo the request, keys included.
fn errno(e: xfrmnetlink::Error) -> io::Error {
    match e {
        xfrmnetlink::Error::NetlinkError(message) => message.to_io(),
        _ => io::Error::other("unexpected netlink reply"),
    }
}

/// An SA's or template's address of `family` as the kernel gives it; `None` for a family
/// xsteer never writes.
pub fn outer_ip(family: u16, addr: &Address) -> Option<IpAddr> {
    match family {
        AF_INET => Some(addr.to_ipv4().into()),
        AF_INET6 => Some(addr.to_ipv6().into()),
        _ => None,
    }
}

fn cidr(family: u16, addr: &Address, prefix_len: u8) -> Option<IpCidr> {
    match family {
        AF_INET => IpCidr::new(addr.to_ipv4().into(), prefix_len),
        AF_INET6 => IpCidr::new(addr.to_ipv6().into(), prefix_len),
        _ => None,
    }
}

fn mark_of(nlas: &[XfrmAttrs]) -> Option<Mark> {
    nlas.iter().find_map(|nla| match nla {
        XfrmAttrs::Mark(m) => Some(Mark {
            value: m.value,
            mask: m.mask,
        }),
        _ => None,
    })
}

/// The reqid of the SA set whose SAs have wire SPI `spi`.
pub fn set_reqid(spi: u32) -> u32 {
    (spi & xsteer_common::spi::SET_MASK) << 16 | REQID
}

/// Whether an SA with this reqid is xsteer's (of this build or an earlier one, whose SAs had
/// reqid [`REQID`] itself).
fn owned_reqid(reqid: u32) -> bool {
    reqid & 0xFFFF == REQID
}

/// The kernel's messages for the SAs xsteer owns: ESP with an [`owned_reqid`].
async fn owned_states(
    netlink: &Netlink,
) -> Result<Vec<netlink_packet_xfrm::state::ModifyMessage>, XfrmError> {
    let dump: Vec<netlink_packet_xfrm::state::ModifyMessage> = netlink
        .xfrm
        .state()
        .get_dump()
        .execute()
        .try_collect()
        .await
        .map_err(kernel("listing", "SAs"))?;
    Ok(dump
        .into_iter()
        .filter(|m| owned_reqid(m.user_sa_info.reqid) && m.user_sa_info.id.proto == IPPROTO_ESP)
        .collect())
}

/// The SAs xsteer owns ([`REQID`] in their reqid), keys included.
pub async fn states(netlink: &Netlink) -> Result<Vec<State>, XfrmError> {
    Ok(owned_states(netlink)
        .await?
        .into_iter()
        .filter_map(|m| {
            let info = &m.user_sa_info;
            let crypto = crypto_of(&m.nlas)?;
            Some(State {
                src: outer_ip(info.family, &info.saddr)?,
                dst: outer_ip(info.family, &info.id.daddr)?,
                spi: info.id.spi,
                mark: mark_of(&m.nlas),
                crypto,
                esn: info.flags & XFRM_STATE_ESN != 0,
                cpu: new_sa::cpu_of(&m.nlas),
                encap: new_sa::encap_of(&m.nlas),
            })
        })
        .collect())
}

/// Traffic an SA has carried, as the kernel counts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaCounters {
    /// Bytes.
    pub bytes: u64,
    /// Packets.
    pub packets: u64,
}

/// The traffic counters of xsteer's SAs, by kernel identity.
pub async fn state_counters(
    netlink: &Netlink,
) -> Result<std::collections::BTreeMap<StateKey, SaCounters>, XfrmError> {
    Ok(owned_states(netlink)
        .await?
        .into_iter()
        .filter_map(|m| {
            let info = &m.user_sa_info;
            let key = StateKey {
                dst: outer_ip(info.family, &info.id.daddr)?,
                spi: info.id.spi,
            };
            let counters = SaCounters {
                bytes: info.lifetime_cur.bytes,
                packets: info.lifetime_cur.packets,
            };
            Some((key, counters))
        })
        .collect())
}

fn crypto_of(nlas: &[XfrmAttrs]) -> Option<Crypto> {
    let name = |raw: &[u8]| {
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        String::from_utf8_lossy(&raw[..end]).into_owned()
    };
    let mut enc = None;
    let mut auth = None;
    for nla in nlas {
        match nla {
            XfrmAttrs::EncryptionAlgAead(a) if name(&a.alg_name) == GCM => {
                return Some(Crypto::Gcm {
                    key: Zeroizing::new(a.alg_key.clone()),
                    icv_bits: a.alg_icv_len,
                });
            }
            XfrmAttrs::EncryptionAlg(a) if name(&a.alg_name) == CBC => {
                enc = Some(Zeroizing::new(a.alg_key.clone()));
            }
            XfrmAttrs::AuthenticationAlgTrunc(a) if name(&a.alg_name) == HMAC_SHA256 => {
                auth = Some(Zeroizing::new(a.alg_key.clone()));
            }
            _ => {}
        }
    }
    Some(Crypto::CbcHmacSha256 {
        enc_key: enc?,
        auth_key: auth?,
    })
}

/// Installs `state`.
pub async fn add_state(netlink: &Netlink, state: &State) -> Result<(), XfrmError> {
    let mut request = NetlinkMessage::from(XfrmMessage::AddSa(new_sa::message(state)));
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    netlink.count_write();
    let mut handle = netlink.xfrm.clone();
    let mut replies = handle.request(request).map_err(kernel("adding", state))?;
    while let Some(reply) = replies.next().await {
        if let NetlinkPayload::Error(e) = reply.payload
            && e.code.is_some()
        {
            return Err(kernel("adding", state)(xfrmnetlink::Error::NetlinkError(e)));
        }
    }
    Ok(())
}

/// Removes `state`.
pub async fn delete_state(netlink: &Netlink, state: &State) -> Result<(), XfrmError> {
    let mut request = netlink
        .xfrm
        .state()
        .delete(state.src, state.dst)
        .protocol(IPPROTO_ESP)
        .spi(state.spi);
    if let Some(mark) = state.mark {
        request = request.mark(mark.value, mark.mask);
    }
    netlink.count_write();
    request.execute().await.map_err(kernel("deleting", state))
}

/// The policies xsteer owns (at its three priorities).
pub async fn policies(netlink: &Netlink) -> Result<Vec<Policy>, XfrmError> {
    let dump: Vec<_> = netlink
        .xfrm
        .policy()
        .get_dump()
        .execute()
        .try_collect()
        .await
        .map_err(kernel("listing", "policies"))?;
    Ok(dump
        .into_iter()
        .filter(|m| {
            matches!(
                m.user_policy_info.priority,
                PEER_POLICY_PRIORITY | UNMARKED_POLICY_PRIORITY | BLOCK_POLICY_PRIORITY
            )
        })
        .filter_map(|m| {
            let info = &m.user_policy_info;
            let sel = &info.selector;
            let action = if info.action == XFRM_POLICY_BLOCK {
                PolicyAction::Block
            } else {
                let template = m.nlas.iter().find_map(|nla| match nla {
                    XfrmAttrs::Template(t) => t.first().cloned(),
                    _ => None,
                })?;
                // A template of an earlier build names its SA by SPI: it reads as a reqid no
                // desired policy has, so a reconcile replaces it.
                let reqid = if template.id.spi != 0 {
                    REQID
                } else {
                    template.reqid
                };
                PolicyAction::Tunnel {
                    src: outer_ip(template.family, &template.saddr)?,
                    dst: outer_ip(template.family, &template.id.daddr)?,
                    reqid,
                }
            };
            let key = policy_key(sel, info.direction, &m.nlas)?;
            Some(Policy {
                direction: key.direction,
                src: key.src,
                dst: key.dst,
                mark: key.mark,
                priority: info.priority,
                action,
            })
        })
        .collect())
}

/// The identity of a policy as the kernel describes it (in a dump or a notification); `None`
/// for one xsteer never writes (another family, an odd direction).
pub fn policy_key(
    selector: &netlink_packet_xfrm::Selector,
    direction: u8,
    nlas: &[XfrmAttrs],
) -> Option<PolicyKey> {
    Some(PolicyKey {
        direction: Direction::from_raw(direction)?,
        src: cidr(selector.family, &selector.saddr, selector.prefixlen_s)?,
        dst: cidr(selector.family, &selector.daddr, selector.prefixlen_d)?,
        mark: mark_of(nlas),
    })
}

/// Installs `policy`, or replaces the policy with the same key in one atomic step.
pub async fn put_policy(
    netlink: &Netlink,
    policy: &Policy,
    replace: bool,
) -> Result<(), XfrmError> {
    let (src, dst) = (policy.src, policy.dst);
    let handle = netlink.xfrm.policy();
    let (s, sl, d, dl) = (src.addr(), src.prefix_len(), dst.addr(), dst.prefix_len());
    let mut request = if replace {
        handle.update(s, sl, d, dl)
    } else {
        handle.add(s, sl, d, dl)
    }
    .direction(policy.direction.raw())
    .priority(policy.priority);
    if let Some(mark) = policy.mark {
        request = request.mark(mark.value, mark.mask);
    }
    request = match policy.action {
        PolicyAction::Block => request.action(XFRM_POLICY_BLOCK),
        PolicyAction::Tunnel { src, dst, reqid } => {
            let mut template = UserTemplate::default();
            template.source(&src);
            template.destination(&dst);
            template.protocol(IPPROTO_ESP);
            template.mode(XFRM_MODE_TUNNEL);
            template.reqid(reqid);
            request.action(XFRM_POLICY_ALLOW).add_template(template)
        }
    };
    netlink.count_write();
    let op = if replace { "replacing" } else { "adding" };
    request.execute().await.map_err(kernel(op, policy))
}

/// Removes `policy`.
pub async fn delete_policy(netlink: &Netlink, policy: &Policy) -> Result<(), XfrmError> {
    let (src, dst) = (policy.src, policy.dst);
    let mut request = netlink
        .xfrm
        .policy()
        .delete(src.addr(), src.prefix_len(), dst.addr(), dst.prefix_len())
        .direction(policy.direction.raw());
    if let Some(mark) = policy.mark {
        request = request.mark(mark.value, mark.mask);
    }
    netlink.count_write();
    request.execute().await.map_err(kernel("deleting", policy))
}

/// Which ciphers the kernel can use for ESP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cipher {
    /// `rfc4106(gcm(aes))`, the default.
    Gcm,
    /// `cbc(aes)` + `hmac(sha256)`, the fallback when GCM is missing.
    CbcHmacSha256,
}

/// What the kernel's ESP can do, as [`probe`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EspSupport {
    /// The cipher to install SAs with.
    pub cipher: Cipher,
    /// Whether SAs with that cipher can have 64-bit sequence numbers.
    pub esn: bool,
    /// Whether outbound SAs can be bound to a CPU (`XFRMA_SA_PCPU`, Linux 6.13 or a backport).
    pub per_cpu: bool,
    /// Whether the kernel sends NAT keepalives on outbound SAs with ESP in UDP
    /// (`XFRMA_NAT_KEEPALIVE_INTERVAL`, Linux 6.11).
    pub nat_keepalive: bool,
}

/// Set in the agent's or apply's environment, this makes the probe report no ESN whatever
/// the kernel can do: for tests of a cluster whose kernels differ.
pub const NO_ESN_TEST_SWITCH: &str = "XSTEER_TEST_NO_ESN";

/// Seconds of idleness after which an SA that sends ESP in UDP sends a NAT keepalive: RFC
/// 3948's 20, well inside the 30 s that NATs commonly keep an idle UDP mapping.
pub const NAT_KEEPALIVE_SECS: u32 = 20;

/// Finds out, by installing and removing throwaway SAs, whether this kernel can do ESP, with
/// which cipher (GCM preferred), and whether with extended sequence numbers.
///
/// The probe SA lives between two TEST-NET-1 addresses (RFC 5737) with a reserved SPI and a
/// random key, and is deleted at once; it can never carry traffic.
pub async fn probe(netlink: &Netlink) -> Result<EspSupport, XfrmError> {
    let random = |len: usize| -> Secret {
        let mut key = Zeroizing::new(vec![0u8; len]);
        // A failed draw only weakens a key that never carries traffic.
        let _ = keys::fill_random(&mut key);
        key
    };
    let probe = |cipher| State {
        src: Ipv4Addr::new(192, 0, 2, 1).into(),
        dst: Ipv4Addr::new(192, 0, 2, 2).into(),
        spi: 0xFF,
        mark: None,
        crypto: match cipher {
            Cipher::Gcm => Crypto::Gcm {
                key: random(20),
                icv_bits: 128,
            },
            Cipher::CbcHmacSha256 => Crypto::CbcHmacSha256 {
                enc_key: random(16),
                auth_key: random(32),
            },
        },
        esn: false,
        cpu: None,
        encap: None,
    };
    for cipher in [Cipher::Gcm, Cipher::CbcHmacSha256] {
        let mut state = probe(cipher);
        // A probe left behind by a killed run would make the add fail with EEXIST.
        let _ = delete_state(netlink, &state).await;
        match add_state(netlink, &state).await {
            Ok(()) => delete_state(netlink, &state).await?,
            Err(XfrmError::Kernel { error, .. })
                if error.raw_os_error() == Some(libc::EPROTONOSUPPORT) =>
            {
                return Err(XfrmError::NoEsp);
            }
            // The algorithm is missing (ENOSYS/ENOENT): try the next one.
            Err(XfrmError::Kernel { error, .. })
                if matches!(error.raw_os_error(), Some(libc::ENOSYS | libc::ENOENT)) =>
            {
                continue;
            }
            Err(other) => return Err(other),
        }
        // The cipher works; ESN needs more (authencesn for CBC+HMAC), so it is tried apart and
        // any refusal means "without".
        state.esn = true;
        let esn = add_state(netlink, &state).await.is_ok();
        if esn {
            delete_state(netlink, &state).await?;
        }
        // Tests make a kernel with ESN look like one without, to prove two nodes agree.
        let esn = esn && std::env::var_os(NO_ESN_TEST_SWITCH).is_none();
        state.esn = esn;
        let per_cpu = probe_per_cpu(netlink, state.clone()).await?;
        let nat_keepalive = probe_nat_keepalive(netlink, state).await?;
        return Ok(EspSupport {
            cipher,
            esn,
            per_cpu,
            nat_keepalive,
        });
    }
    Err(XfrmError::NoCipher)
}

/// Whether the kernel binds `probe`, made a per-CPU SA, to its CPU. A kernel that does not
/// know the attribute ignores it and installs an SA that any CPU uses, so the SA is read back.
async fn probe_per_cpu(netlink: &Netlink, mut probe: State) -> Result<bool, XfrmError> {
    probe.cpu = Some(0);
    if add_state(netlink, &probe).await.is_err() {
        return Ok(false);
    }
    let bound = states(netlink)
        .await?
        .iter()
        .any(|s| s.key() == probe.key() && s.cpu == Some(0));
    delete_state(netlink, &probe).await?;
    Ok(bound)
}

/// Whether the kernel keeps a NAT keepalive interval on `probe`, given ESP in UDP and one.
/// A kernel that does not know the attribute ignores it, so the SA is read back, as in
/// [`probe_per_cpu`]; and the agent compares the SAs it reads with the ones it wants, so one
/// that came back without its interval would be replaced on every reconcile.
async fn probe_nat_keepalive(netlink: &Netlink, mut probe: State) -> Result<bool, XfrmError> {
    let encap = EspInUdp {
        sport: 4500,
        dport: 4500,
        keepalive_secs: NAT_KEEPALIVE_SECS,
    };
    probe.encap = Some(encap);
    if add_state(netlink, &probe).await.is_err() {
        return Ok(false);
    }
    let kept = states(netlink)
        .await?
        .iter()
        .any(|s| s.key() == probe.key() && s.encap == Some(encap));
    delete_state(netlink, &probe).await?;
    Ok(kept)
}

/// How many per-CPU SAs this machine sends on: one per possible CPU (the kernel refuses a CPU
/// beyond them), at most [`PER_CPU_SAS_MAX`]; CPUs past that use the shared SA. 0 when the
/// CPU list cannot be read.
pub fn per_cpu_sa_count() -> u8 {
    let possible = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    let cpus = cpu_list_len(possible.trim()).unwrap_or(0);
    cpus.min(usize::from(PER_CPU_SAS_MAX)) as u8
}

/// The number of CPUs in a kernel CPU list such as `0-3,8`.
fn cpu_list_len(list: &str) -> Option<usize> {
    list.split(',').try_fold(0, |sum, part| {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let (first, last): (usize, usize) = (first.parse().ok()?, last.parse().ok()?);
        Some(sum + last.checked_sub(first)? + 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(cpu_list_len("0"), Some(1));
        assert_eq!(cpu_list_len("0-3"), Some(4));
        assert_eq!(cpu_list_len("0-3,8,10-11"), Some(7));
        assert_eq!(cpu_list_len(""), None);
        assert_eq!(cpu_list_len("3-1"), None);
    }

    #[test]
    fn sets_have_one_reqid_that_is_xsteers() {
        let set = 0x0002_02E3;
        assert_eq!(set_reqid(set), 0x02E3_7873);
        assert_eq!(set_reqid(set | 5 << 10), set_reqid(set), "every CPU slot");
        assert_ne!(set_reqid(set + 1), set_reqid(set));
        assert!(owned_reqid(set_reqid(set)) && owned_reqid(REQID));
        assert!(!owned_reqid(0) && !owned_reqid(1));
    }
}
