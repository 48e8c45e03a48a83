//! `xsteer peer export NAME`: what a peer that is not xsteer runs to talk to this node, as `ip`
//! commands: its SAs, its policies and its routes, mirrored from what this node installs for it.
//!
//! The peer is one of the config's `[[peers]]`. This node derives every key of the pair (from
//! the key file and both epochs), so the other side needs nothing else, and reverse-engineering
//! xsteer's SPIs, reqids and policy shape is never needed (docs/interop.md):
//! - the peer's IN SAs are this node's OUT SAs towards it: every generation, pairing of epochs
//!   and CPU slot this node may send on;
//! - its one OUT SA is this node's IN SA of the newest generation this node already holds in
//!   the kernel, so the peer never sends what this node cannot decrypt yet;
//! - its policies require ESP exactly where this node's require it, in mirror image, and send
//!   into the tunnel what this node requires to arrive in it.
//!
//! The script adds an SA only where the peer lacks it: running it again keeps every SA the
//! peer has, with its sequence counter, so it never restarts a counter under the same key.
//! What it installed before and no longer lists it deletes: SAs known by xsteer's reqid,
//! policies by xsteer's policy priority, routes by xsteer's route protocol, each only between
//! the two nodes, so the peer's other IPsec and routes are left alone.

use std::{collections::BTreeSet, fmt::Write as _, net::IpAddr};

use zeroize::Zeroizing;

use crate::{
    cidr::IpCidr,
    kernel::{
        Netlink,
        routing::{self, DEFAULT_RULE_PRIORITY, ROUTE_PROTOCOL, RoutingError},
        xfrm::{
            self, Crypto, Direction, PEER_POLICY_PRIORITY, PolicyAction, REPLAY_WINDOW, REQID,
            State, XfrmError,
        },
    },
    keys::{GenerationError, KeyFile, push_hex},
    protocol::{sending_epochs, sending_generation, wire_spi},
    reconcile::{
        Snapshot,
        desired::{DesiredError, Surroundings, desired},
    },
    view::{Peer, View},
};

/// Why a peer's side could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Keys and the ESP probe take root.
    #[error(
        "xsteer peer export must run as root: it probes the kernel's ESP, as apply does, and \
         reads which SAs this node holds"
    )]
    NotRoot,
    /// The config names no such peer.
    #[error("no peer {name} in the config's [[peers]] (it has: {known})")]
    UnknownPeer {
        /// The name asked for.
        name: String,
        /// The config's peers, comma-separated.
        known: String,
    },
    /// The peer publishes a node record: it runs xsteer.
    #[error(
        "peer {0} publishes a node record, so it runs xsteer and configures itself; export is \
         for [[peers]] that are not xsteer"
    )]
    RunsXsteer(String),
    /// The pair speaks ESP in UDP, which `ip xfrm` alone cannot receive.
    #[error(
        "peer {0} and this node speak ESP in UDP: receiving it takes a UDP_ENCAP socket that \
         `ip` commands cannot open; export covers bare ESP only (encap = \"esp\" for this peer)"
    )]
    EspInUdp(String),
    /// The cluster or the peer has pods of a second family, whose routes the script cannot name.
    #[error(
        "peer {0}: the cluster is dual stack (cluster_cidr_v6, or IPv6 pod CIDRs of the peer): \
         export covers single-stack clusters only"
    )]
    DualStack(String),
    /// This node holds no IN SA from the peer yet: the peer would send what it cannot decrypt.
    #[error(
        "this node holds no IN SA from {name} for any generation of the key file: start its \
         agent (or run xsteer apply) with {name} in its config first, then export"
    )]
    NoInboundSa {
        /// The peer.
        name: String,
    },
    /// The key file's generations do not say which is newest.
    #[error(transparent)]
    Generations(#[from] GenerationError),
    /// The SAs could not be computed.
    #[error(transparent)]
    Desired(#[from] DesiredError),
    /// The netlink sockets could not be opened.
    #[error("opening netlink sockets: {0}")]
    Netlink(std::io::Error),
    /// The uplink or the route to the peer could not be read.
    #[error(transparent)]
    Routing(#[from] RoutingError),
    /// The kernel's SAs could not be read, or its ESP probed.
    #[error(transparent)]
    Xfrm(#[from] XfrmError),
}

/// One side of a pair with a peer that is not xsteer: what that peer must hold.
pub struct ForeignSide {
    /// The peer's name.
    pub peer: String,
    /// The peer's node IP.
    pub peer_ip: IpAddr,
    /// This node's name.
    pub local: String,
    /// This node's IP.
    pub local_ip: IpAddr,
    /// The peer's IN SAs: this node's OUT SAs towards it.
    pub inbound: Vec<State>,
    /// The peer's OUT SA: this node's IN SA it sends on.
    pub outbound: State,
    /// The generation of [`ForeignSide::outbound`].
    pub sending_generation: u8,
    /// The key file's newest generation: the peer sends with an older one until this node
    /// holds the newest one's IN SA.
    pub newest_generation: u8,
    /// Selectors (source, destination) of the traffic the peer sends into the tunnel; it
    /// requires the mirror image of each to arrive in it.
    pub selectors: Vec<(IpCidr, IpCidr)>,
    /// This node's pod CIDRs, which the peer routes towards this node.
    pub routes: Vec<IpCidr>,
    /// The MTU of those routes: what ESP leaves of this node's uplink MTU, as this node's
    /// routes to the peer have it.
    pub route_mtu: Option<u32>,
}

/// The config's peer `name`, if it may be exported.
pub fn exportable<'a>(view: &'a View, name: &str) -> Result<&'a Peer, ExportError> {
    let peer =
        view.peers
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| ExportError::UnknownPeer {
                name: name.to_owned(),
                known: view
                    .peers
                    .iter()
                    .filter(|p| p.generations.is_none())
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
    // A peer from a node record advertises its generations; a configured one does not.
    if peer.generations.is_some() {
        return Err(ExportError::RunsXsteer(name.to_owned()));
    }
    if peer.path(&view.node).1.is_some() {
        return Err(ExportError::EspInUdp(name.to_owned()));
    }
    if !peer.pod_cidrs_v6.is_empty() || !view.cluster_cidrs_v6.is_empty() {
        return Err(ExportError::DualStack(name.to_owned()));
    }
    Ok(peer)
}

/// Mirrors `want`, this node's desired state for `view` (whose only peer is `peer`), into the
/// peer's side. `installed` holds the SPIs of the IN SAs from the peer that the kernel has:
/// the peer sends with the newest generation among them.
pub fn mirror(
    view: &View,
    keys: &KeyFile,
    want: &Snapshot,
    peer: &Peer,
    installed: &BTreeSet<u32>,
) -> Result<ForeignSide, ExportError> {
    let local = &view.node;
    let (local_epoch, peer_epoch) = sending_epochs(local, peer);
    let spi_of = |g| wire_spi(peer.id, g, &peer_epoch, &local_epoch);
    let held: Vec<_> = keys
        .newest_first()
        .into_iter()
        .filter(|&g| installed.contains(&spi_of(g)))
        .collect();
    let generation =
        sending_generation(keys, Some(&held))?.ok_or_else(|| ExportError::NoInboundSa {
            name: peer.name.clone(),
        })?;
    let from_peer = |s: &&State| s.src == peer.ip && s.dst == local.ip;
    let outbound = want
        .states
        .values()
        .filter(from_peer)
        .find(|s| s.spi == spi_of(generation))
        .cloned()
        .ok_or_else(|| ExportError::NoInboundSa {
            name: peer.name.clone(),
        })?;
    let inbound = want
        .states
        .values()
        .filter(|s| s.src == local.ip && s.dst == peer.ip)
        .map(|s| State {
            // Bound to this node's CPUs here; found by SPI alone over there.
            cpu: None,
            ..s.clone()
        })
        .collect();
    // What this node requires to arrive from the peer is what the peer sends into the tunnel.
    let selectors: BTreeSet<(IpCidr, IpCidr)> = want
        .policies
        .values()
        .filter(|p| {
            matches!(p.direction, Direction::In | Direction::Fwd)
                && matches!(p.action, PolicyAction::Tunnel { src, .. } if src == peer.ip)
        })
        .map(|p| (p.src, p.dst))
        .collect();
    let route_mtu = want.routes.iter().map(|r| r.mtu).min();
    Ok(ForeignSide {
        peer: peer.name.clone(),
        peer_ip: peer.ip,
        local: local.name.clone(),
        local_ip: local.ip,
        inbound,
        outbound,
        sending_generation: generation.get(),
        newest_generation: keys.newest()?.generation().get(),
        selectors: selectors.into_iter().collect(),
        routes: vec![local.pod_cidr.into()],
        route_mtu,
    })
}

/// Computes the side of peer `name` from this node's view and keys, with the kernel's ESP
/// support and the SAs it holds, as `xsteer apply` would install them.
pub async fn export(view: &View, keys: &KeyFile, name: &str) -> Result<ForeignSide, ExportError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(ExportError::NotRoot);
    }
    let peer = exportable(view, name)?;
    let netlink = Netlink::connect().map_err(ExportError::Netlink)?;
    let uplink = routing::uplink(&netlink, &view.node.uplink).await?;
    let next_hops = [(peer.ip, routing::route_to(&netlink, peer.ip).await?)].into();
    let support = xfrm::probe(&netlink).await?;
    let around = Surroundings {
        uplink: &uplink,
        next_hops: &next_hops,
        rule_priority: DEFAULT_RULE_PRIORITY,
        cipher: support.cipher,
        esn: support.esn,
        per_cpu: support.per_cpu,
        nat_keepalive_secs: 0,
    };
    let alone = View {
        peers: vec![peer.clone()],
        ..view.clone()
    };
    let want = desired(&alone, keys, &around)?;
    let installed = xfrm::states(&netlink)
        .await?
        .into_iter()
        .filter(|s| s.src == peer.ip && s.dst == view.node.ip)
        .map(|s| s.spi)
        .collect();
    mirror(&alone, keys, &want, peer, &installed)
}

/// Stands for a key in a script printed without its secrets.
pub const KEY_LEFT_OUT: &str = "KEY-LEFT-OUT";

impl ForeignSide {
    /// The shell script that gives the peer its side: keys in it only with `secrets`.
    ///
    /// Built in one buffer reserved up front and wiped when dropped, since it may hold keys.
    pub fn script(&self, secrets: bool) -> Zeroizing<String> {
        let states = self.inbound.len() + 1;
        let mut out = Zeroizing::new(String::with_capacity(
            2048 + states * 640 + self.selectors.len() * 600,
        ));
        let (peer, local) = (&self.peer, &self.local);
        let (peer_ip, local_ip) = (self.peer_ip, self.local_ip);
        let _ = writeln!(
            out,
            "#!/bin/sh\n\
             # Peer {peer} ({peer_ip}) towards xsteer node {local} ({local_ip}), from \
             `xsteer peer export {peer}`.\n\
             # Run it as root on {peer}. Running it again is safe: an SA {peer} already has is \
             kept, with its counter."
        );
        if secrets {
            let _ = writeln!(out, "# It holds keys: keep it secret, delete it once run.");
        } else {
            let _ = writeln!(
                out,
                "# Keys left out ({KEY_LEFT_OUT}): `--secrets` prints them."
            );
        }
        out.push_str("set -e\n\n");
        let _ = writeln!(
            out,
            "# IN SAs: every SA {local} may send on to {peer}, found by SPI."
        );
        for state in &self.inbound {
            push_state(&mut out, state, secrets);
        }
        let _ = writeln!(
            out,
            "\n# OUT SA: generation {}, which {local} decrypts.",
            self.sending_generation
        );
        push_state(&mut out, &self.outbound, secrets);
        let _ = writeln!(
            out,
            "\n# Policies: ESP to {local} for what {local} requires in ESP, and the same \
             required back."
        );
        let spi = self.outbound.spi;
        let reqid = self.outbound.reqid();
        for (src, dst) in &self.selectors {
            let _ = writeln!(
                out,
                "ip xfrm policy update src {src} dst {dst} dir out priority \
                 {PEER_POLICY_PRIORITY:#x} tmpl src {peer_ip} dst {local_ip} proto esp spi \
                 {spi:#010x} reqid {reqid:#x} mode tunnel"
            );
        }
        for (src, dst) in &self.selectors {
            // The mirror image: what comes back from this node to the peer's side.
            for dir in ["in", "fwd"] {
                let _ = writeln!(
                    out,
                    "ip xfrm policy update src {dst} dst {src} dir {dir} priority \
                     {PEER_POLICY_PRIORITY:#x} tmpl src {local_ip} dst {peer_ip} proto esp \
                     mode tunnel"
                );
            }
        }
        let _ = writeln!(
            out,
            "\n# SAs of xsteer's between {local} and {peer} (reqid ending in {REQID:#06x}) that \
             this script does not list: of generations gone from {local}'s key file, or epochs \
             left."
        );
        let inbound: Vec<u32> = self.inbound.iter().map(|s| s.spi).collect();
        push_stale_states(&mut out, (local_ip, peer_ip), &inbound);
        push_stale_states(&mut out, (peer_ip, local_ip), &[self.outbound.spi]);
        let _ = writeln!(
            out,
            "\n# Routes to {local}'s pods, with room for ESP (on a link shared with {local})."
        );
        for cidr in &self.routes {
            let _ = write!(
                out,
                "ip route replace {cidr} via {local_ip} proto {ROUTE_PROTOCOL:#x}"
            );
            if let Some(mtu) = self.route_mtu {
                let _ = write!(out, " mtu {mtu}");
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "\n# Policies (priority {PEER_POLICY_PRIORITY:#x}) and routes (proto \
             {ROUTE_PROTOCOL:#x}) of earlier scripts between {local} and {peer} that this one \
             does not list: {local}'s pod CIDRs or {peer}'s changed."
        );
        self.push_stale_policies(&mut out);
        self.push_stale_routes(&mut out);
        out
    }

    /// Appends the loop that deletes the policies at xsteer's priority whose template joins
    /// the two nodes and which the script does not list.
    fn push_stale_policies(&self, out: &mut String) {
        let (peer_ip, local_ip) = (self.peer_ip, self.local_ip);
        let _ = write!(out, "keep=\"");
        for (src, dst) in &self.selectors {
            let _ = write!(out, " {src}>{dst}>out {dst}>{src}>in {dst}>{src}>fwd");
        }
        // `ip -o` puts each policy on one line, its parts joined by backslashes.
        let _ = writeln!(
            out,
            " \"\n\
             for policy in $(ip -o xfrm policy list priority {PEER_POLICY_PRIORITY:#x} | awk '{{ \
             gsub(/\\\\/, \" \"); s = \"\"; d = \"\"; x = \"\"; t = \"\"; \
             for (i = 1; i < NF; i++) {{ if ($i == \"tmpl\") t = $(i + 2) \">\" $(i + 4); \
             else if ($i == \"dir\") x = $(i + 1); \
             else if (t == \"\" && $i == \"src\") s = $(i + 1); \
             else if (t == \"\" && $i == \"dst\") d = $(i + 1) }} \
             if (t == \"{peer_ip}>{local_ip}\" || t == \"{local_ip}>{peer_ip}\") \
             print s \">\" d \">\" x }}'); do\n  \
             case \"$keep\" in *\" $policy \"*) ;; *)\n    \
             src=${{policy%%>*}}; rest=${{policy#*>}}; dst=${{rest%%>*}}; dir=${{rest#*>}}\n    \
             ip xfrm policy delete src \"$src\" dst \"$dst\" dir \"$dir\" ;;\n  \
             esac\n\
             done"
        );
    }

    /// Appends the loop that deletes the routes via this node with xsteer's protocol that the
    /// script does not list.
    fn push_stale_routes(&self, out: &mut String) {
        let local_ip = self.local_ip;
        let (family, host_len) = match local_ip {
            IpAddr::V4(_) => ("-4", 32),
            IpAddr::V6(_) => ("-6", 128),
        };
        let _ = write!(out, "keep=\"");
        for cidr in &self.routes {
            let _ = write!(out, " {cidr}");
        }
        // `ip route` shows a host route without its prefix length.
        let _ = writeln!(
            out,
            " \"\n\
             for net in $(ip {family} route show proto {ROUTE_PROTOCOL:#x} via {local_ip} | awk \
             '{{ print index($1, \"/\") ? $1 : $1 \"/{host_len}\" }}'); do\n  \
             case \"$keep\" in *\" $net \"*) ;; *) ip {family} route delete \"$net\" via \
             {local_ip} proto {ROUTE_PROTOCOL:#x} ;; esac\n\
             done"
        );
    }
}

/// Appends the loop that deletes xsteer's SAs from `src` to `dst` whose SPI is not in `keep`.
/// The low 16 bits of the reqid tell xsteer's SAs from others between the same two nodes.
fn push_stale_states(out: &mut String, (src, dst): (IpAddr, IpAddr), keep: &[u32]) {
    let _ = write!(out, "keep=\"");
    for spi in keep {
        let _ = write!(out, " {spi:#010x}");
    }
    let _ = writeln!(
        out,
        " \"\n\
         for spi in $(ip xfrm state list src {src} dst {dst} proto esp | awk '$1 == \"proto\" {{ \
         s = \"\"; r = -1; for (i = 1; i < NF; i++) {{ if ($i == \"spi\") s = $(i + 1); \
         if ($i == \"reqid\") r = $(i + 1) }} if (r % 65536 == {REQID}) print s }}'); do\n  \
         case \"$keep\" in *\" $spi \"*) ;; *) ip xfrm state delete src {src} dst {dst} proto \
         esp spi \"$spi\" ;; esac\n\
         done"
    );
}

/// Appends the command that adds `state` unless an SA with its SPI exists.
fn push_state(out: &mut String, state: &State, secrets: bool) {
    let State { src, dst, spi, .. } = state;
    let _ = write!(
        out,
        "ip xfrm state get src {src} dst {dst} proto esp spi {spi:#010x} >/dev/null 2>&1 ||\n  \
         ip xfrm state add src {src} dst {dst} proto esp spi {spi:#010x} reqid {:#x} mode \
         tunnel replay-window {REPLAY_WINDOW} flag af-unspec{}",
        state.reqid(),
        if state.esn { " esn" } else { "" }
    );
    let key = |out: &mut String, bytes: &[u8]| {
        if secrets {
            push_hex(out, bytes);
        } else {
            out.push_str(KEY_LEFT_OUT);
        }
    };
    match &state.crypto {
        Crypto::Gcm { key: k, icv_bits } => {
            out.push_str(" aead 'rfc4106(gcm(aes))' ");
            key(out, k);
            let _ = writeln!(out, " {icv_bits}");
        }
        Crypto::CbcHmacSha256 { enc_key, auth_key } => {
            out.push_str(" enc 'cbc(aes)' ");
            key(out, enc_key);
            out.push_str(" auth-trunc 'hmac(sha256)' ");
            key(out, auth_key);
            let _ = writeln!(out, " {}", xfrm::HMAC_SHA256_ICV_BITS);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        kernel::xfrm::Cipher, keys::Generation, reconcile::desired::fixtures::desired_for,
        view::fixtures::two_nodes,
    };

    const KEYS: &str = "3 rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f10111213 128\n\
                        4 rfc4106(gcm(aes)) 202122232425262728292a2b2c2d2e2f30313233 128\n";

    fn keys() -> KeyFile {
        KeyFile::parse(KEYS).unwrap()
    }

    /// Node a's view, sending on 2 per-CPU SAs besides the shared one, with peer b.
    fn at_a() -> View {
        let mut view = two_nodes();
        view.node.per_cpu_sas = 2;
        view
    }

    /// The same pair seen from b, as an xsteer node b would see it.
    fn at_b(a: &View) -> View {
        let mut b = a.clone();
        let peer = &mut b.peers[0];
        std::mem::swap(&mut b.node.name, &mut peer.name);
        std::mem::swap(&mut b.node.id, &mut peer.id);
        std::mem::swap(&mut b.node.epoch, &mut peer.epoch);
        std::mem::swap(&mut b.node.ip, &mut peer.ip);
        std::mem::swap(&mut b.node.per_cpu_sas, &mut peer.per_cpu_sas);
        let a_pods = b.node.pod_cidr;
        b.node.pod_cidr = peer.pod_cidrs[0];
        peer.pod_cidrs = vec![a_pods];
        b
    }

    /// The SPIs of every IN SA from b in `want`: a kernel that holds them all.
    fn all_inbound(want: &Snapshot) -> BTreeSet<u32> {
        let b: IpAddr = Ipv4Addr::new(192, 168, 0, 2).into();
        want.states
            .values()
            .filter(|s| s.src == b)
            .map(|s| s.spi)
            .collect()
    }

    fn side(view: &View, installed: Option<&BTreeSet<u32>>) -> Result<ForeignSide, ExportError> {
        let want = desired_for(view, &keys(), Cipher::Gcm);
        let all = all_inbound(&want);
        mirror(
            view,
            &keys(),
            &want,
            &view.peers[0],
            installed.unwrap_or(&all),
        )
    }

    /// What the export gives b is what b would install, were it xsteer: its OUT SA is an SA
    /// an xsteer b sends on (same SPI, key and ESN), and its IN SAs are exactly the SAs an
    /// xsteer b would receive on, per-CPU ones of a included.
    #[test]
    fn the_exported_side_is_what_an_xsteer_peer_would_install() {
        let a = at_a();
        let side = side(&a, None).unwrap();
        let b = desired_for(&at_b(&a), &keys(), Cipher::Gcm);
        let (a_ip, b_ip) = (a.node.ip, a.peers[0].ip);
        let same = |x: &State, y: &State| {
            (x.src, x.dst, x.spi, x.crypto.fingerprint(), x.esn)
                == (y.src, y.dst, y.spi, y.crypto.fingerprint(), y.esn)
        };
        let b_out = b
            .states
            .get(&side.outbound.key())
            .expect("an SA b sends on");
        assert_eq!((b_out.src, b_out.dst), (b_ip, a_ip));
        assert!(same(b_out, &side.outbound));
        assert_eq!(side.sending_generation, 4, "the newest");
        assert_eq!(side.outbound.spi & 0xF, 4);
        let b_in: Vec<&State> = b.states.values().filter(|s| s.dst == b_ip).collect();
        // 2 generations, each a shared SA and 2 per-CPU ones.
        assert_eq!((side.inbound.len(), b_in.len()), (6, 6));
        for (exported, xsteer) in side.inbound.iter().zip(b_in) {
            assert!(same(exported, xsteer), "{exported} vs {xsteer}");
            assert_eq!(exported.cpu, None, "found by SPI, on any CPU");
        }
        let cidr = |s: &str| -> IpCidr { s.parse().unwrap() };
        assert_eq!(
            side.selectors,
            [
                (cidr("10.244.2.0/24"), cidr("10.244.1.0/24")),
                (cidr("10.244.2.0/24"), cidr("192.168.0.1/32")),
                (cidr("192.168.0.2/32"), cidr("10.244.1.0/24")),
            ]
        );
        assert_eq!(side.routes, [cidr("10.244.1.0/24")]);
        assert_eq!(
            side.route_mtu,
            Some(1446),
            "GCM with a 16-byte ICV over IPv4"
        );
    }

    /// The peer sends only with a generation this node already decrypts: during a rotation,
    /// an export from the next key file leaves it on the older one until this node holds the
    /// newer one's IN SA.
    #[test]
    fn the_peer_sends_with_the_newest_generation_this_node_holds() {
        let a = at_a();
        let want = desired_for(&a, &keys(), Cipher::Gcm);
        let g3: BTreeSet<u32> = all_inbound(&want)
            .into_iter()
            .filter(|spi| spi & 0xF == 3)
            .collect();
        let side = side(&a, Some(&g3)).unwrap();
        assert_eq!(side.sending_generation, 3);
        assert_eq!(side.inbound.len(), 6, "but it receives both");
        let none = side_err(&a, &BTreeSet::new());
        assert_eq!(
            none,
            "this node holds no IN SA from b for any generation of the key file: start its \
             agent (or run xsteer apply) with b in its config first, then export"
        );
    }

    fn side_err(view: &View, installed: &BTreeSet<u32>) -> String {
        match side(view, Some(installed)) {
            Ok(_) => panic!("exported"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_script_holds_keys_only_with_secrets() {
        let side = side(&at_a(), None).unwrap();
        let Crypto::Gcm { key, .. } = &side.outbound.crypto else {
            panic!("GCM");
        };
        let mut hex = String::new();
        push_hex(&mut hex, key);
        let (open, secret) = (side.script(false), side.script(true));
        assert!(!open.contains(&hex[2..]), "{}", open.as_str());
        // Seven SAs, and the header that says so.
        assert_eq!(open.matches(KEY_LEFT_OUT).count(), 8, "{}", open.as_str());
        assert!(secret.contains(&hex), "{}", secret.as_str());
        assert!(!secret.contains(KEY_LEFT_OUT));
        let spi = side.outbound.spi;
        let reqid = side.outbound.reqid();
        let expect = [
            "set -e\n".to_owned(),
            format!(
                "ip xfrm state get src 192.168.0.2 dst 192.168.0.1 proto esp spi {spi:#010x} \
                 >/dev/null 2>&1 ||\n  ip xfrm state add src 192.168.0.2 dst 192.168.0.1 proto \
                 esp spi {spi:#010x} reqid {reqid:#x} mode tunnel replay-window 1024 flag \
                 af-unspec esn aead 'rfc4106(gcm(aes))' {hex} 128\n"
            ),
            format!(
                "ip xfrm policy update src 10.244.2.0/24 dst 192.168.0.1/32 dir out priority \
                 0x78730010 tmpl src 192.168.0.2 dst 192.168.0.1 proto esp spi {spi:#010x} \
                 reqid {reqid:#x} mode tunnel\n"
            ),
            "ip xfrm policy update src 192.168.0.1/32 dst 10.244.2.0/24 dir fwd priority \
             0x78730010 tmpl src 192.168.0.1 dst 192.168.0.2 proto esp mode tunnel\n"
                .to_owned(),
            "ip route replace 10.244.1.0/24 via 192.168.0.1 proto 0x78 mtu 1446\n".to_owned(),
        ];
        for line in expect {
            assert!(
                secret.contains(&line),
                "{line}\nnot in\n{}",
                secret.as_str()
            );
        }
        // Stale SAs go: those of xsteer's (by reqid) between the two that the script does not
        // list, each way.
        let inbound: String = side
            .inbound
            .iter()
            .map(|s| format!(" {:#010x}", s.spi))
            .collect();
        for line in [
            format!("keep=\"{inbound} \"\nfor spi in $(ip xfrm state list src 192.168.0.1 dst 192.168.0.2 proto esp | awk "),
            format!("keep=\" {spi:#010x} \"\nfor spi in $(ip xfrm state list src 192.168.0.2 dst 192.168.0.1 proto esp | awk "),
            "if (r % 65536 == 30835) print s }'); do\n  case \"$keep\" in *\" $spi \"*) ;; *) ip xfrm state delete src 192.168.0.2 dst 192.168.0.1 proto esp spi \"$spi\" ;; esac\ndone\n".to_owned(),
        ] {
            assert!(secret.contains(&line), "{line}\nnot in\n{}", secret.as_str());
        }
        // So do policies at xsteer's priority and routes with its protocol that the script does
        // not list, each only between the two nodes.
        for line in [
            "for policy in $(ip -o xfrm policy list priority 0x78730010 | awk ",
            "if (t == \"192.168.0.2>192.168.0.1\" || t == \"192.168.0.1>192.168.0.2\") print s",
            "ip xfrm policy delete src \"$src\" dst \"$dst\" dir \"$dir\" ;;\n",
            "keep=\" 10.244.1.0/24 \"\nfor net in $(ip -4 route show proto 0x78 via 192.168.0.1 | awk ",
            "*) ip -4 route delete \"$net\" via 192.168.0.1 proto 0x78 ;; esac\ndone\n",
        ] {
            assert!(secret.contains(line), "{line}\nnot in\n{}", secret.as_str());
        }
        let kept = secret
            .lines()
            .find(|l| l.starts_with("keep=") && l.contains(">out "))
            .expect("the policies the script keeps");
        for selector in [
            "10.244.1.0/24>10.244.2.0/24>in",
            "10.244.1.0/24>10.244.2.0/24>fwd",
            "10.244.2.0/24>10.244.1.0/24>out",
            "192.168.0.2/32>10.244.1.0/24>out",
            "10.244.1.0/24>192.168.0.2/32>fwd",
        ] {
            assert!(
                kept.contains(&format!(" {selector} ")),
                "{selector}: {kept}"
            );
        }
        let selectors = kept.split_whitespace().filter(|t| t.contains('>')).count();
        assert_eq!(selectors, 9, "{kept}");
        assert_eq!(secret.matches(" dir out ").count(), 3);
        assert_eq!(secret.matches(" dir in ").count(), 3);
        assert_eq!(secret.matches(" dir fwd ").count(), 3);
    }

    #[test]
    fn a_peer_without_esn_gets_sas_without_it() {
        let mut a = at_a();
        a.peers[0].esn = false;
        let script = side(&a, None).unwrap().script(false);
        assert_eq!(script.matches("ip xfrm state add").count(), 7);
        assert!(!script.contains(" esn"), "{}", script.as_str());
        assert_eq!(script.matches("flag af-unspec aead").count(), 7);
    }

    #[test]
    fn only_a_configured_peer_on_bare_esp_is_exported() {
        let mut a = at_a();
        let err = |view: &View, name| exportable(view, name).err().unwrap().to_string();
        assert_eq!(
            err(&a, "c"),
            "no peer c in the config's [[peers]] (it has: b)"
        );
        a.peers[0].generations = Some(vec![Generation::new(4).unwrap()]);
        assert!(err(&a, "b").starts_with("peer b publishes a node record"));
        a.peers[0].generations = None;
        a.node.encap = Some(crate::config::LocalEncap {
            port: 4500,
            public: "192.168.0.1:4500".parse().unwrap(),
        });
        a.peers[0].esp_in_udp = Some("192.168.0.2:4500".parse().unwrap());
        assert!(err(&a, "b").starts_with("peer b and this node speak ESP in UDP"));
        a.peers[0].esp_in_udp = None;
        assert!(
            exportable(&a, "b").is_ok(),
            "ESP in UDP on here only: bare ESP"
        );
        a.peers[0].pod_cidrs_v6 = vec!["fd00:10:244:2::/64".parse().unwrap()];
        assert!(err(&a, "b").contains("dual stack"));
    }
}
