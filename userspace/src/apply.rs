//! Applying a node's view: make the kernel hold what the view and the keys call for. `xsteer
//! apply` does it once; the agent keeps an [`Applier`] for its lifetime.
//!
//! Everything that can be checked is checked before the first write: the config and key file
//! (by their loaders), the uplink, a route to every peer, and the kernel's ESP support — a kernel
//! without ESP is refused outright, since xsteer would otherwise steer pod traffic into nothing
//! or into plaintext. Then the reconcile reads what xsteer owns, plans the difference and applies
//! it; `--dry-run` stops after the plan.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
};

use crate::{
    cidr::NODE_POD_PREFIX_LEN,
    dataplane::{Dataplane, DataplaneError, GridV6, bpffs, grid::Grid},
    kernel::{
        Netlink,
        events::Removed,
        nat,
        routing::{self, DEFAULT_RULE_PRIORITY},
        xfrm::{self, Cipher, EspSupport},
    },
    keys::{Algorithm, GCM, KeyFile},
    reconcile::{
        self, Change, ReconcileError,
        desired::{DesiredError, Surroundings, desired},
        plan::plan,
    },
    state::KeyLedger,
    view::View,
};

/// Where xsteer pins its maps by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xsteer";
/// Where xsteer keeps state that must outlive reboots (the outbound key ledger).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/xsteer";

/// How to apply.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// Plan and report, write nothing.
    pub dry_run: bool,
    /// Where the maps are pinned.
    pub pin_dir: PathBuf,
    /// Where the outbound key ledger lives.
    pub state_dir: PathBuf,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            dry_run: false,
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        }
    }
}

/// Why an apply failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The netlink sockets could not be opened.
    #[error("opening netlink sockets: {0}")]
    Netlink(std::io::Error),
    /// bpffs is missing and could not be mounted.
    #[error("mounting bpffs at {}: {}", bpffs::BPFFS_ROOT, .0)]
    Bpffs(std::io::Error),
    /// The desired state could not be computed.
    #[error(transparent)]
    Desired(#[from] DesiredError),
    /// The kernel could not be read or written.
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    /// The maps could not be loaded or pinned.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// The uplink or a peer route could not be read.
    #[error(transparent)]
    Routing(#[from] routing::RoutingError),
}

impl ApplyError {
    /// Whether the apply stopped short of installing an outbound key this node used before:
    /// its SAs were removed behind its back (a reboot, a flush), or its epoch is one it left;
    /// only a new epoch (this node's, or that of the peers named) helps.
    pub fn is_key_reuse(&self) -> bool {
        matches!(
            self,
            ApplyError::Reconcile(
                ReconcileError::KeyReuse { .. } | ReconcileError::RetiredEpoch { .. }
            )
        )
    }
}

impl From<xfrm::XfrmError> for ApplyError {
    fn from(e: xfrm::XfrmError) -> Self {
        ApplyError::Reconcile(e.into())
    }
}

fn cipher_name(cipher: Cipher) -> &'static str {
    match cipher {
        Cipher::Gcm => GCM,
        Cipher::CbcHmacSha256 => "cbc(aes)+hmac(sha256)",
    }
}

/// Opens the pinned maps, or for a dry run without pins, fresh unpinned ones that vanish on exit;
/// with notices of what was replaced of them (a dry run replaces nothing) and of a bpffs that
/// vanishes on exit too.
fn maps(opts: &ApplyOptions) -> Result<(Dataplane, Vec<String>), ApplyError> {
    if opts.dry_run && !Dataplane::is_pinned(&opts.pin_dir) {
        return Ok((Dataplane::load()?, Vec::new()));
    }
    let mount = bpffs::ensure_mounted().map_err(ApplyError::Bpffs)?;
    // Not refused: the kernel objects apply writes stay and work, and it attaches no program
    // that could be left holding maps that vanish; only the maps are lost, and the agent,
    // which attaches the programs, fills its own.
    let mut notices: Vec<String> = (mount == bpffs::Mount::Private)
        .then(|| {
            bpffs::private_notice(
                "taking the maps pinned in it along: no agent sees them, and the next apply \
                 fills them again (the SAs, policies, rules and routes it installed stay)",
            )
        })
        .into_iter()
        .collect();
    if opts.dry_run {
        return Ok((Dataplane::load_pinned(&opts.pin_dir)?, notices));
    }
    let (dataplane, renewed) = Dataplane::load_pinned_as_owner(&opts.pin_dir)?;
    notices.extend(renewed.iter().map(ToString::to_string));
    Ok((dataplane, notices))
}

/// What an apply did.
#[derive(Debug)]
pub struct Applied {
    /// The changes made (or, on a dry run, that would be made), in order.
    pub changes: Vec<Change>,
    /// Things the operator must know, such as a cipher fallback.
    pub notices: Vec<String>,
}

/// A node's handle on the kernel, kept across applies: the agent holds one for its lifetime,
/// `xsteer apply` makes one for a single run.
///
/// After a successful apply it remembers the state it left, so the next apply plans against
/// memory instead of dumping every SA, policy, route and map entry: a one-peer change on top of
/// 1,000 peers costs its own few writes, not a full read. [`Applier::forget`] makes the next
/// apply read the kernel in full again (the agent does so periodically, to repair drift), and a
/// failed apply forgets by itself, since it may have left a partial state.
pub struct Applier {
    opts: ApplyOptions,
    netlink: Netlink,
    /// The maps, opened (and, the first time, created and pinned) once the inputs checked out.
    dataplane: Option<Dataplane>,
    /// What the kernel's ESP offers, probed before the first write.
    support: Option<EspSupport>,
    /// How the main table reaches each peer, looked up once per peer until forgotten.
    next_hops: BTreeMap<std::net::IpAddr, routing::NextHop>,
    /// xsteer's objects as the last apply left them.
    known: Option<reconcile::Snapshot>,
    /// The route table of the last apply.
    table: u32,
}

impl Applier {
    /// How many per-CPU SAs an apply of `view` installs towards each peer: none until the
    /// kernel was probed, and none if it cannot bind SAs to CPUs.
    pub fn per_cpu_sas(&self, view: &View) -> u8 {
        match self.support {
            Some(EspSupport { per_cpu: true, .. }) => view.node.per_cpu_sas,
            _ => 0,
        }
    }

    /// Whether SAs get ESN on this kernel: what the probe found, or `true` before it ran (a
    /// node says so in its record only after an apply).
    pub fn esn(&self) -> bool {
        self.support.is_none_or(|support| support.esn)
    }

    /// Opens netlink. The maps are opened by the first apply, once its inputs checked out.
    pub fn new(opts: ApplyOptions) -> Result<Applier, ApplyError> {
        let netlink = Netlink::connect().map_err(ApplyError::Netlink)?;
        Ok(Applier {
            opts,
            netlink,
            dataplane: None,
            support: None,
            next_hops: BTreeMap::new(),
            known: None,
            table: 0,
        })
    }

    /// The netlink sockets applies go through, for reads between them.
    pub fn netlink(&self) -> &Netlink {
        &self.netlink
    }

    /// Whether `removed` takes away something the last apply left in the kernel: then the
    /// kernel has drifted and a full reconcile repairs it. A removal this applier made itself,
    /// or of something not xsteer's, is not drift; with no memory of the kernel, anything is.
    pub fn drifted(&self, removed: &Removed) -> bool {
        let Some(known) = &self.known else {
            return true;
        };
        match removed {
            Removed::State(key) => known.states.contains_key(key),
            Removed::AllStates => !known.states.is_empty(),
            Removed::Policy(key) => known.policies.contains_key(key),
            Removed::AllPolicies => !known.policies.is_empty(),
            Removed::Rule(rule) => known.rules.contains(rule),
            Removed::Route { table, route } => {
                *table == self.table && known.routes.iter().any(|r| r.dst == route.dst)
            }
        }
    }

    /// Makes the next apply read everything from the kernel and look up routes afresh.
    pub fn forget(&mut self) {
        self.known = None;
        self.next_hops.clear();
    }

    /// Applies `view` with `keys`; calls `report` with each change as it is made (or, on a
    /// dry run, as it would be).
    pub async fn apply(
        &mut self,
        view: &View,
        keys: &KeyFile,
        mut report: impl FnMut(&Change),
    ) -> Result<Applied, ApplyError> {
        let netlink = &self.netlink;
        let uplink = routing::uplink(netlink, &view.node.uplink).await?;
        // Routes to where ESP goes: a peer's NAT, when the pair speaks ESP in UDP.
        let outer = |peer: &crate::view::Peer| peer.path(&view.node).0;
        self.next_hops
            .retain(|ip, _| view.peers.iter().any(|p| outer(p) == *ip));
        for peer in &view.peers {
            if let std::collections::btree_map::Entry::Vacant(slot) =
                self.next_hops.entry(outer(peer))
            {
                slot.insert(routing::route_to(netlink, outer(peer)).await?);
            }
        }
        let mut notices = Vec::new();
        // A dry run writes nothing, not even the probe's throwaway SA: it plans with the key
        // file's own cipher.
        let EspSupport {
            cipher,
            esn,
            per_cpu,
            nat_keepalive,
        } = match (self.opts.dry_run, self.support) {
            (true, _) => EspSupport {
                cipher: Cipher::Gcm,
                esn: true,
                per_cpu: true,
                nat_keepalive: true,
            },
            (false, Some(support)) => support,
            (false, None) => *self.support.insert(xfrm::probe(netlink).await?),
        };
        let newest_is_gcm = matches!(
            keys.newest().map_err(DesiredError::from)?.algorithm(),
            Algorithm::Gcm { .. }
        );
        if cipher == Cipher::CbcHmacSha256 && newest_is_gcm {
            notices.push(format!(
                "this kernel lacks {}: falling back to {} with keys derived from the GCM keys; \
                 every peer must fall back too (a peer using GCM drops this node's ESP: traffic \
                 stops, it never leaves in plaintext)",
                GCM,
                cipher_name(Cipher::CbcHmacSha256)
            ));
        }
        if !esn {
            notices.push(
                "this kernel's ESP has no extended sequence numbers: an SA stops after 2^32 \
                 packets, so re-keying must come first (it does, at --rekey-after-packets)"
                    .to_owned(),
            );
        }
        if !per_cpu && view.node.per_cpu_sas > 0 {
            notices.push(
                "this kernel cannot bind SAs to CPUs (XFRMA_SA_PCPU, Linux 6.13): per_cpu_sas \
                 is ignored, ESP to each peer goes on one SA per direction"
                    .to_owned(),
            );
        }
        let node = &view.node;
        if !nat_keepalive && node.encap.is_some_and(|e| e.behind_nat(node.ip)) {
            notices.push(
                "this kernel sends no NAT keepalives (XFRMA_NAT_KEEPALIVE_INTERVAL, Linux 6.11): \
                 a NAT between this node and a peer may forget an idle path, until traffic \
                 from behind it opens the path again"
                    .to_owned(),
            );
        }
        let around = Surroundings {
            uplink: &uplink,
            next_hops: &self.next_hops,
            rule_priority: DEFAULT_RULE_PRIORITY,
            cipher,
            esn,
            per_cpu,
            nat_keepalive_secs: if nat_keepalive {
                xfrm::NAT_KEEPALIVE_SECS
            } else {
                0
            },
        };
        let want = desired(view, keys, &around)?;
        // Everything is checked: from here on, bpffs may be written (maps created and pinned).
        let dataplane = match &mut self.dataplane {
            Some(dataplane) => dataplane,
            None => {
                let (dataplane, about_maps) = maps(&self.opts)?;
                notices.extend(about_maps);
                self.dataplane.insert(dataplane)
            }
        };
        if !self.opts.dry_run {
            // The grid of /24 slots over the cluster CIDR: a constant-time classifier lookup.
            let grid = view
                .cluster_cidrs
                .first()
                .and_then(|&c| Grid::new(c, NODE_POD_PREFIX_LEN).ok());
            dataplane.remote_pod_cidrs()?.set_grid(grid)?;
            // And of /64 slots over the IPv6 one; a prefix shorter than /48 goes to the trie.
            let grid_v6 = view
                .cluster_cidrs_v6
                .first()
                .and_then(|&c| GridV6::new(c).ok());
            dataplane.remote_pod_cidrs_v6()?.set_grid(grid_v6)?;
        }
        let have = match self.known.take() {
            Some(known) => known,
            None => reconcile::read(netlink, dataplane, view.route_table).await?,
        };
        let changes = plan(&have, &want);
        if self.opts.dry_run {
            changes.iter().for_each(&mut report);
            self.known = Some(have);
            return Ok(Applied { changes, notices });
        }
        let mut ledger = KeyLedger::open(&self.opts.state_dir).map_err(ReconcileError::from)?;
        let mut outbound = reconcile::Outbound::of(&mut ledger, view);
        outbound.prune()?;
        reconcile::execute(
            netlink,
            dataplane,
            &mut outbound,
            view.route_table,
            &changes,
            report,
        )
        .await?;
        notices.extend(open_nat_mappings(view, &changes));
        self.known = Some(want);
        self.table = view.route_table;
        Ok(Applied { changes, notices })
    }
}

/// Behind a NAT, opens its mapping towards each peer that `changes` installed an OUT SA with
/// ESP in UDP towards (`kernel::nat`); says why it could not, if it could not.
fn open_nat_mappings(view: &View, changes: &[Change]) -> Option<String> {
    let local = &view.node;
    let encap = local.encap.filter(|e| e.behind_nat(local.ip))?;
    let to: BTreeSet<SocketAddr> = changes
        .iter()
        .filter_map(|change| match change {
            Change::AddState(sa) if sa.src == local.ip => {
                Some(SocketAddr::new(sa.dst, sa.encap?.dport))
            }
            _ => None,
        })
        .collect();
    if to.is_empty() {
        return None;
    }
    let from = SocketAddr::new(local.ip, encap.port);
    let to: Vec<SocketAddr> = to.into_iter().collect();
    nat::open_mappings(from, &to).err().map(|e| {
        format!(
            "could not send the NAT keepalive that opens the way from {from} to {to:?} at once \
             ({e}); the kernel's keepalives open it within {} s",
            xfrm::NAT_KEEPALIVE_SECS
        )
    })
}

/// Applies `view` with `keys` once, reading the kernel in full; calls `report` with each change
/// as it is made (or, on a dry run, as it would be).
pub async fn apply(
    view: &View,
    keys: &KeyFile,
    opts: &ApplyOptions,
    report: impl FnMut(&Change),
) -> Result<Applied, ApplyError> {
    Applier::new(opts.clone())?.apply(view, keys, report).await
}
