//! `xsteer agent`: keeps a node's dataplane true for as long as it runs, and leaves it running
//! when it stops.
//!
//! At start it reconciles the kernel (the same reconcile as `xsteer apply`, so maps are filled
//! before any program reads them), then attaches the guards to the uplink, chains the plugin
//! `xsteer-cni` into the node's network config when given the node's CNI dirs ([`cni`]), and
//! attaches the classifier to every pod veth, adopting the links a previous agent pinned. Then
//! it waits: a new pod veth gets the classifier at once (link notifications); a changed config
//! or key file is reloaded and reconciled against the state the agent last left (no full kernel
//! read), and a bad one is logged and ignored, the last good state staying in place; a rewrite of
//! the network config gets the plugin chained in again; every `resync` it reads the kernel in
//! full and reconciles, repairing drift. SIGTERM or SIGINT end it with everything pinned:
//! programs keep running, and the next agent picks them up without a gap.

pub mod cni;
pub mod metrics;
pub mod pods;
pub mod rekey;
pub mod rotation;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use aya::programs::TcAttachType;
use futures::StreamExt;
use tokio::signal::unix::{SignalKind, signal};
use xsteer_common::programs;

use crate::{
    apply::{self, Applier, ApplyOptions},
    config::{Config, NodeRecords},
    dataplane::{
        self, Dataplane, DataplaneError, bpffs,
        links::{self, IngressHook, LinkError},
    },
    inputs::{self, Access, Files, Inputs, InputsError},
    kernel::{events, routing, xfrm},
    nodes::{self, CACHE_FILE, Cache, Changes, NodeSource, Peers, SourceError},
    state::{self, StateError},
    watch::{DirWatch, FileVersion},
};
use cni::{Chain, CniOptions};
use pods::LinksError;
pub use pods::PodVeths;
use rotation::{Progress, Retirement};

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The node's config.
    pub config: PathBuf,
    /// Where maps and links are pinned.
    pub pin_dir: PathBuf,
    /// Where the outbound key ledger lives.
    pub state_dir: PathBuf,
    /// Which interfaces are pod veths.
    pub pod_veths: PodVeths,
    /// How often to look at the config and key file for changes.
    pub poll: Duration,
    /// How often to reconcile even without a change.
    pub resync: Duration,
    /// Where to serve /metrics and /healthz; `None` serves nothing.
    pub metrics: Option<std::net::SocketAddr>,
    /// How long an old key generation stays installed after every peer has moved past it, and
    /// an old epoch after every peer has acked the new one.
    pub rotation_grace: Duration,
    /// Packets an SA in use may send before the node re-keys.
    pub rekey_after_packets: u64,
    /// Where to install the chained CNI plugin `xsteer-cni`; `None` installs nothing.
    pub cni: Option<CniOptions>,
}

/// Why the agent stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The config, the key file or the state at start.
    #[error(transparent)]
    Inputs(#[from] InputsError),
    /// The first reconcile failed.
    #[error("reconciling: {0}")]
    Apply(apply::ApplyError),
    /// bpffs could not be mounted.
    #[error("mounting bpffs: {0}")]
    Bpffs(std::io::Error),
    /// The programs could not be loaded.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// A program could not be attached.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// Pod veths could not be listed or followed.
    #[error(transparent)]
    Links(#[from] LinksError),
    /// The metrics address could not be bound.
    #[error("serving metrics on {addr}: {error}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The node records could not be reached.
    #[error(transparent)]
    Nodes(#[from] SourceError),
    /// Signal handlers could not be installed.
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    /// A state file could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The uplink could not be looked up.
    #[error("uplink {uplink}: {error}")]
    Uplink {
        /// The uplink's name.
        uplink: String,
        /// What the kernel said.
        error: std::io::Error,
    },
    /// The pin dir cannot be named in the CNI config.
    #[error("pin dir {}: not UTF-8, which the CNI config (JSON) cannot name", .0.display())]
    PinDirNotUtf8(PathBuf),
}

// The agent explains every state change it makes in one log line (tracing, on stderr): what
// changed and why. Failures it survives are warnings.
use tracing::{info, warn};

/// How long the kernel's removal notifications must be quiet before a repair: a flush of many
/// objects arrives as many notifications.
const REPAIR_SETTLE: Duration = Duration::from_millis(100);

/// The next removal the kernel reports; never, without a subscription.
async fn next_removal(events: &mut Option<events::Events>) -> Option<events::Removed> {
    match events {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}

/// Waits until `at`; forever without one.
async fn wait_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Starts over from a fresh epoch when the kernel holds none of this node's outbound SAs (a
/// reboot, a reinstall, a lost state directory): the old epoch's keys may have been used with
/// counters that would now restart, and the state directory that would tell may be gone. Peers
/// learn the new epoch from the node record, so this is done only for a node that has one; a
/// node whose peers are all in config files relies on the key ledger (docs/keys.md).
async fn fresh_epoch_if_no_sas(files: &mut Files, applier: &Applier) -> Result<(), AgentError> {
    if files.config.node_records == NodeRecords::None {
        return Ok(());
    }
    let held = xfrm::states(applier.netlink())
        .await
        .map_err(|e| AgentError::Apply(e.into()))?;
    let node_ip = files.config.node.ip;
    if held.iter().any(|state| state.src == node_ip) {
        return Ok(());
    }
    let old = files.epochs.current();
    let fresh = files.epochs.start_over()?;
    info!(
        "the kernel holds no outbound SA of this node (first start, a reboot, a reinstall or a \
         lost state directory): taking the new epoch {fresh} instead of {old}, so no key is \
         used again with a restarted counter; peers follow once they read its record"
    );
    Ok(())
}

/// Attaches the ingress guard to `uplink` at the hook the config names (`node.ingress_hook`) or
/// the uplink's kind calls for, then detaches the one an earlier agent left at the other hook:
/// the new guard runs before the old one goes, so the uplink is never unguarded.
///
/// Chosen by the uplink's kind, a veth gets tc and anything else native XDP, or tc when its
/// driver has no native XDP. With ESP in UDP on it is tc: only there is the UDP header taken
/// off (the config refuses `ingress_hook = "xdp"` with it).
async fn attach_ingress_guard(
    node: &mut Node,
    uplink: &str,
    handle: &rtnetlink::Handle,
) -> Result<(), AgentError> {
    let configured = node.files.config.node.ingress_hook;
    let mut hook = match configured {
        Some(hook) => hook,
        None if node.files.config.node.encap.is_some() => IngressHook::Tc,
        None => {
            let link = routing::link_by_name(handle, uplink)
                .await
                .and_then(|link| {
                    link.ok_or_else(|| std::io::Error::other("no interface of that name"))
                })
                .map_err(|error| AgentError::Uplink {
                    uplink: uplink.to_owned(),
                    error,
                })?;
            IngressHook::for_uplink(routing::is_veth(&link))
        }
    };
    let pin_dir = node.opts.pin_dir.clone();
    let at_tc = |dataplane: &mut Dataplane| -> Result<links::Attached, AgentError> {
        Ok(links::tc(
            dataplane.ingress_guard_tc()?,
            programs::INGRESS_GUARD_TC,
            uplink,
            TcAttachType::Ingress,
            &pin_dir,
        )?)
    };
    let how = match hook {
        IngressHook::Tc => at_tc(&mut node.dataplane)?,
        IngressHook::Xdp => {
            let at_xdp = links::xdp(
                node.dataplane.ingress_guard()?,
                programs::INGRESS_GUARD,
                uplink,
                &pin_dir,
            );
            match at_xdp {
                Ok(how) => how,
                Err(e @ LinkError::Attach { .. }) if configured.is_none() => {
                    // Most often a driver without native XDP; generic XDP would drop what
                    // xfrm decrypts (links::xdp), so tc it is.
                    warn!(
                        "uplink {uplink}: {e}; the ingress guard runs at tc ingress instead \
                         (set node.ingress_hook to choose)"
                    );
                    hook = IngressHook::Tc;
                    at_tc(&mut node.dataplane)?
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    info!("uplink {uplink}: ingress guard attached at {hook} ({how:?})");
    let other = hook.other();
    if links::pinned_program_id(&pin_dir, other.program(), uplink)?.is_some() {
        links::unpin(&pin_dir, other.program(), uplink).map_err(|error| LinkError::Files {
            what: "removing the pin of the ingress guard at the other hook",
            path: links::pin_path(&pin_dir, other.program(), uplink),
            error,
        })?;
        info!(
            "uplink {uplink}: ingress guard detached from {other}, where an earlier agent ran it"
        );
    }
    Ok(())
}

/// Waits until the source has read this node's identity, when the source is what gives it (a
/// Kubernetes source, until its first list of Nodes has arrived); the source says why meanwhile.
async fn identity_from(config: &Config, source: &dyn NodeSource, changes: &mut Changes) {
    if config.node_records != NodeRecords::Kubernetes {
        return;
    }
    if source.identity().is_none() {
        info!(
            "waiting for the Kubernetes API server's list of Nodes: node {}'s Node gives its ID \
             and pod CIDR",
            config.node.name
        );
    }
    while source.identity().is_none() {
        match changes.next().await {
            Some(Ok(())) => {}
            // Nothing more will come; reading the files says what is missing.
            Some(Err(_)) | None => return,
        }
    }
}

/// The directories of the agent's own files: those of the config file at `config_path` and of
/// its key file. (The node source watches its own records.)
fn input_dirs(config_path: &Path, key_file: &Path) -> Vec<PathBuf> {
    [config_path, key_file]
        .iter()
        .filter_map(|file| file.parent())
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir.to_path_buf()
            }
        })
        .collect()
}

/// What identifies a version of the config and key file: a change of either means a reload.
fn inputs_version(config: &Path, key_file: &Path) -> Vec<Option<FileVersion>> {
    FileVersion::of([config, key_file])
}

/// The node's state as the agent holds it between reconciles.
struct Node {
    opts: AgentOptions,
    /// The config, key file and state as last read with success.
    files: Files,
    /// The peers learned from node records.
    peers: Peers,
    /// What is reconciled: `files` and `peers` put together.
    inputs: Inputs,
    /// Generations every peer has moved past, waiting out the grace period.
    retirement: Retirement,
    /// How the re-key under way is ending.
    completion: rekey::Completion,
    version: Vec<Option<FileVersion>>,
    dataplane: Dataplane,
    applier: Applier,
    pods: BTreeSet<String>,
    /// The last good inputs, for the metrics endpoint.
    shared: tokio::sync::watch::Sender<Arc<Inputs>>,
}

impl Node {
    /// Reconciles the kernel with the config and keys held; logs each change. If the kernel
    /// lost this node's SAs (a reboot, a flush) so that their outbound keys would be used again,
    /// the node starts over from a fresh epoch and reconciles with that.
    async fn reconcile(&mut self, why: &str) -> Result<(), apply::ApplyError> {
        match self.reconcile_once(why).await {
            Err(e) if e.is_key_reuse() => {
                let fresh = match self.files.epochs.start_over() {
                    Ok(fresh) => fresh,
                    Err(record) => {
                        warn!("{e}; cannot take a new epoch: {record}");
                        return Err(e);
                    }
                };
                warn!(
                    "this node's SAs are gone while their outbound keys were used (a reboot or a \
                     flush: {e}); taking the new epoch {fresh}, peers follow once they read its \
                     record"
                );
                self.reassemble();
                self.reconcile_once("a new epoch after lost SAs").await
            }
            other => other,
        }
    }

    async fn reconcile_once(&mut self, why: &str) -> Result<(), apply::ApplyError> {
        let applied = self
            .applier
            .apply(&self.inputs.view, &self.inputs.keys, |change| {
                info!("{change} ({why})");
            })
            .await?;
        for notice in &applied.notices {
            warn!("{notice}");
        }
        // Only now, with the IN SAs for every generation installed, may peers send to us.
        let per_cpu_sas = self.applier.per_cpu_sas(&self.inputs.view);
        let esn = self.applier.esn();
        match self
            .peers
            .publish(&self.inputs.view, &self.inputs.keys, per_cpu_sas, esn)
        {
            Ok(true) => info!("published this node's record"),
            Ok(false) => {}
            Err(e) => warn!("publishing this node's record failed, will retry: {e}"),
        }
        Ok(())
    }

    /// Re-reads the config, key file and node records if they changed, and reconciles; keeps
    /// the last good state when the new one is bad.
    async fn reload_if_changed(&mut self) {
        let mut changed = false;
        let version = inputs_version(&self.opts.config, &self.files.config.key_file);
        if version != self.version {
            self.version = version;
            let source = self.peers.source();
            match inputs::read_files(
                &self.opts.config,
                &self.opts.state_dir,
                Access::Write,
                source,
            ) {
                Ok(files) => {
                    info!("{} or its key file changed", self.opts.config.display());
                    if files.epochs.current() != self.files.epochs.current() {
                        info!(
                            "node.epoch changed in the config: epoch {} in service",
                            files.epochs.current()
                        );
                    }
                    self.files = files;
                    changed = true;
                }
                Err(e) => {
                    warn!("ignoring the changed config or key file, the last good state stays: {e}")
                }
            }
        }
        changed |= self
            .peers
            .refresh(&self.files.config.node.name, |line| info!("{line}"));
        if !changed || !self.reassemble() {
            return;
        }
        if let Err(e) = self.reconcile("config, keys or peers changed").await {
            warn!("reconcile failed, will retry: {e}");
        }
    }

    /// Puts the files and the peers together again; keeps the last good inputs if that fails.
    /// Returns whether the inputs are new.
    fn reassemble(&mut self) -> bool {
        match self.files.assemble(&mut self.peers) {
            Ok(inputs) => {
                if inputs.refused != self.inputs.refused {
                    for refused in &inputs.refused {
                        warn!("{refused}");
                    }
                }
                self.inputs = inputs;
                self.shared.send_replace(Arc::new(self.inputs.clone()));
                true
            }
            Err(e) => {
                warn!("ignoring the new inputs, the last good state stays: {e}");
                false
            }
        }
    }

    /// Retires the generations that every peer has moved past, once their grace period is over:
    /// they are recorded as retired, then their SAs, policies and SPIs are removed and this
    /// node's record stops listing them.
    async fn retire_if_due(&mut self) {
        let keys = &self.inputs.keys;
        let grace = self.retirement.grace().as_secs();
        let (due, progress) =
            match self
                .retirement
                .due(keys, &self.inputs.view.peers, Instant::now())
            {
                Ok(found) => found,
                Err(_) => return,
            };
        for step in progress {
            match step {
                Progress::Pending(generation) => info!(
                    "every peer has moved past key generation {generation}: removing it in {grace} s"
                ),
                Progress::InUseAgain(generation) => {
                    info!("key generation {generation} is in use again by a peer: keeping it")
                }
            }
        }
        if due.is_empty() {
            return;
        }
        for number in &due {
            let Some(generation) = self.inputs.keys.get(*number) else {
                continue;
            };
            if let Err(e) = self.files.retired.retire(generation) {
                warn!("cannot record key generation {number} as retired, keeping it: {e}");
                return;
            }
            info!("key generation {number} retired: no peer has sent with it for {grace} s");
        }
        if !self.reassemble() {
            return;
        }
        if let Err(e) = self.reconcile("retiring old key generations").await {
            warn!("reconcile failed, will retry: {e}");
        }
    }

    /// Re-keys once an SA in use has sent `rekey_after_packets`: takes a new epoch and
    /// installs its SAs. Reads the SA counters, so the caller calls it every
    /// [`rekey::CHECK_EVERY`].
    async fn rekey_if_worn_out(&mut self) {
        if self.files.epochs.next().is_some() {
            return;
        }
        let counters = match xfrm::state_counters(self.applier.netlink()).await {
            Ok(counters) => counters,
            Err(e) => {
                warn!("reading SA counters failed, will retry: {e}");
                return;
            }
        };
        let after = self.opts.rekey_after_packets;
        let Some(worn) = rekey::worn_out(&self.inputs.view, &self.inputs.keys, &counters, after)
        else {
            return;
        };
        let next = match self.files.epochs.begin_rekey() {
            Ok(next) => next,
            Err(e) => {
                warn!("cannot begin a re-key, will retry: {e}");
                return;
            }
        };
        info!(
            "re-keying: the SA to {} (spi {:#010x}) has sent {} packets, the limit is {after}; \
             new epoch {next}",
            worn.peer, worn.spi, worn.packets
        );
        // A peer without a record has this node's epoch in its config file: it can never learn
        // the new one.
        let static_peers: Vec<&str> = self
            .inputs
            .view
            .peers
            .iter()
            .filter(|p| p.generations.is_none())
            .map(|p| p.name.as_str())
            .collect();
        if !static_peers.is_empty() {
            warn!(
                "re-keying: {} come from the config file, not node records, and cannot learn the \
                 new epoch: traffic to them stays on the old SAs and the re-key cannot finish",
                static_peers.join(", ")
            );
        }
        self.epochs_changed("re-keying").await;
    }

    /// Ends the re-key under way once every peer has acked the new epoch and the grace period
    /// is over: the old epoch's SAs go.
    async fn finish_rekey_if_due(&mut self) {
        let Some(next) = self.files.epochs.next() else {
            return;
        };
        let grace = self.completion.grace().as_secs();
        match self
            .completion
            .step(next, &self.inputs.view, Instant::now())
        {
            rekey::Finish::Waiting(peers) => {
                info!(
                    "re-key to epoch {next}: waiting for {} to ack it",
                    peers.join(", ")
                );
                return;
            }
            rekey::Finish::GraceStarted => {
                info!(
                    "re-key to epoch {next}: every peer has acked it, the old epoch goes in {grace} s"
                );
                return;
            }
            rekey::Finish::Unchanged => return,
            rekey::Finish::Due => {}
        }
        if let Err(e) = self.files.epochs.finish_rekey() {
            warn!("cannot record the end of the re-key, keeping the old epoch: {e}");
            return;
        }
        info!("re-key finished: epoch {next} in service, the old epoch's SAs go");
        self.epochs_changed("finishing a re-key").await;
    }

    /// Puts the new epochs into the inputs and reconciles.
    async fn epochs_changed(&mut self, why: &str) {
        if !self.reassemble() {
            return;
        }
        if let Err(e) = self.reconcile(why).await {
            warn!("reconcile failed, will retry: {e}");
        }
    }

    /// Attaches the classifier to pod veth `name` unless this agent already did.
    fn attach_pod(&mut self, name: &str) {
        // The uplink can be a veth with its peer elsewhere too (a lab, a nested node): it is
        // the wire, never a pod.
        if self.pods.contains(name) || name == self.inputs.view.node.uplink {
            return;
        }
        let result = self
            .dataplane
            .pod_classifier()
            .map_err(AgentError::from)
            .and_then(|program| {
                // The CNI plugin may be attaching to the same new veth right now.
                let _held = links::lock(&self.opts.pin_dir)?;
                Ok(links::tc(
                    program,
                    programs::POD_CLASSIFIER,
                    name,
                    TcAttachType::Ingress,
                    &self.opts.pin_dir,
                )?)
            });
        match result {
            Ok(how) => {
                info!("pod veth {name}: classifier attached ({how:?})");
                self.pods.insert(name.to_owned());
            }
            Err(e) => warn!("pod veth {name}: {e}"),
        }
    }

    async fn pod_gone(&mut self, handle: &rtnetlink::Handle, name: &str) {
        let ours = self.pods.remove(name);
        if !ours
            && !links::pinned_interfaces(&self.opts.pin_dir, programs::POD_CLASSIFIER)
                .iter()
                .any(|p| p == name)
        {
            return;
        }
        // Under the CNI plugin's lock, and only while no interface has the name: a new pod's
        // veth may have taken it since, and the pin is then (or is about to be) that veth's
        // live link, which unpinning would detach.
        let unpinned = async {
            let _held = links::lock(&self.opts.pin_dir).map_err(|e| e.to_string())?;
            if routing::link_by_name(handle, name)
                .await
                .map_err(|e| e.to_string())?
                .is_some()
            {
                return Ok(false);
            }
            links::unpin(&self.opts.pin_dir, programs::POD_CLASSIFIER, name)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(true)
        };
        match unpinned.await {
            Ok(true) => info!("pod veth {name} gone: its link unpinned"),
            Ok(false) => info!("pod veth {name} gone, and a new one took its name: pin kept"),
            Err(e) => warn!("pod veth {name} gone, unpinning failed: {e}"),
        }
    }

    /// Attaches to every pod veth present, and forgets pins of veths that are gone.
    async fn rescan(&mut self, handle: &rtnetlink::Handle) -> Result<(), AgentError> {
        let present = self.opts.pod_veths.list(handle).await?;
        for name in &present {
            self.attach_pod(name);
        }
        for name in links::pinned_interfaces(&self.opts.pin_dir, programs::POD_CLASSIFIER) {
            if !present.contains(&name) {
                self.pod_gone(handle, &name).await;
            }
        }
        Ok(())
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(opts: AgentOptions) -> Result<(), AgentError> {
    // One agent per state directory: two would undo each other's epochs and retirements.
    let _held = state::lock(&opts.state_dir)?;
    // The plugin runs from the container runtime, with another working directory: its config
    // names the pin dir absolutely. Checked first, so that a bad one stops the agent at once.
    let cni_pin_dir = match &opts.cni {
        Some(_) => {
            let pin_dir = std::path::absolute(&opts.pin_dir).unwrap_or(opts.pin_dir.clone());
            match pin_dir.to_str() {
                Some(pin_dir) => pin_dir.to_owned(),
                None => return Err(AgentError::PinDirNotUtf8(pin_dir)),
            }
        }
        None => String::new(),
    };
    let config = Config::from_path(&opts.config).map_err(InputsError::from)?;
    // The source first: with Kubernetes, this node's ID and pod CIDR come from its Node.
    let source = nodes::source_of(&config, false)?;
    let mut changes = match source.changes() {
        Ok(changes) => changes,
        Err(e) => {
            warn!("cannot follow node records, polling every second only: {e}");
            Box::pin(futures::stream::pending())
        }
    };
    identity_from(&config, source.as_ref(), &mut changes).await;
    let mut files = Files::read(config, &opts.state_dir, Access::Write, source.as_ref())?;
    let applier = Applier::new(ApplyOptions {
        dry_run: false,
        pin_dir: opts.pin_dir.clone(),
        state_dir: opts.state_dir.clone(),
    })
    .map_err(AgentError::Apply)?;
    fresh_epoch_if_no_sas(&mut files, &applier).await?;
    if let Some(next) = files.epochs.next() {
        info!(
            "resuming the re-key from epoch {} to {next}",
            files.epochs.current()
        );
    }
    let version = inputs_version(&opts.config, &files.config.key_file);
    if bpffs::ensure_mounted().map_err(AgentError::Bpffs)? == bpffs::Mount::Private {
        warn!(
            "{}",
            bpffs::private_notice(
                "taking the maps and links pinned in it along: a restarted agent finds none \
                 of them, and a guard attached by a BPF link detaches once this agent exits"
            )
        );
    }
    let (mut dataplane, renewed) = Dataplane::load_pinned_as_owner(&opts.pin_dir)?;
    for map in renewed {
        warn!("{map}");
    }
    dataplane.load_programs()?;
    let cache = Cache {
        path: opts.state_dir.join(CACHE_FILE),
        write: true,
    };
    let mut peers = Peers::new(source, &files.config.node.name, Some(cache), |line| {
        info!("{line}")
    });
    let inputs = files.assemble(&mut peers)?;
    for refused in &inputs.refused {
        warn!("{refused}");
    }
    let uplink = inputs.view.node.uplink.clone();
    let (shared, watched) = tokio::sync::watch::channel(Arc::new(inputs.clone()));
    if let Some(addr) = opts.metrics {
        metrics::spawn(addr, watched, opts.pin_dir.clone())
            .map_err(|error| AgentError::Metrics { addr, error })?;
        info!("serving /metrics and /healthz on http://{addr}");
    }
    let mut node = Node {
        retirement: Retirement::new(opts.rotation_grace),
        completion: rekey::Completion::new(opts.rotation_grace),
        opts,
        files,
        peers,
        inputs,
        version,
        dataplane,
        applier,
        pods: BTreeSet::new(),
        shared,
    };
    // Maps before programs: a guard attached to empty maps would let nothing be checked.
    node.reconcile("start").await.map_err(AgentError::Apply)?;

    let pin_dir = node.opts.pin_dir.clone();
    let how = links::tc(
        node.dataplane.egress_guard()?,
        programs::EGRESS_GUARD,
        &uplink,
        TcAttachType::Egress,
        &pin_dir,
    )?;
    info!("uplink {uplink}: egress guard attached ({how:?})");
    let (connection, handle, _) = rtnetlink::new_connection().map_err(LinksError::Subscribe)?;
    tokio::spawn(connection);
    attach_ingress_guard(&mut node, &uplink, &handle).await?;
    // Only a guarded node may hand its classifier to the CNI plugin: pinned now, the plugin
    // classifies new pods itself, also while this agent is stopped or restarting.
    node.dataplane.pin_pod_classifier(&pin_dir)?;
    info!(
        "pod classifier pinned at {} for the CNI plugin",
        dataplane::program_pin_path(&pin_dir, programs::POD_CLASSIFIER).display()
    );

    // Only now is the plugin chained into the node's network config: it refuses a pod's ADD
    // until the guards are attached and the classifier pinned, so chained any earlier it would
    // fail pods that the dataplane could already take.
    let mut chain = node
        .opts
        .cni
        .clone()
        .map(|cni| Chain::new(cni, &cni_pin_dir));
    let mut cni_watch = chain.as_ref().and_then(Chain::watch);
    if let Some(chain) = &mut chain {
        chain.install();
    }

    let mut link_events = pods::watch()?;
    node.rescan(&handle).await?;

    let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    let mut poll = tokio::time::interval(node.opts.poll);
    let mut resync = tokio::time::interval(node.opts.resync);
    resync.tick().await;
    let mut counters = tokio::time::interval(rekey::CHECK_EVERY);
    // Something that removes xsteer's objects (a flush, a deleted rule or route) is repaired
    // at once, once the burst of notifications has settled.
    let mut removals = match events::subscribe() {
        Ok(events) => Some(events),
        Err(e) => {
            warn!(
                "cannot follow the kernel's xfrm and route notifications, repairing at each resync only: {e}"
            );
            None
        }
    };
    let mut repair_at: Option<tokio::time::Instant> = None;
    // A write to the config, the key file or a node record wakes the agent at once; the poll
    // stays for what inotify cannot see.
    let dirs = input_dirs(&node.opts.config, &node.files.config.key_file);
    let mut watch = match DirWatch::new(dirs.iter().map(PathBuf::as_path)) {
        Ok(watch) => Some(watch),
        Err(e) => {
            warn!("cannot watch {dirs:?} for changes, polling every second only: {e}");
            None
        }
    };
    let changed = async |watch: &Option<DirWatch>| match watch {
        Some(watch) => watch.changed().await,
        None => std::future::pending().await,
    };
    info!("agent running: {} pod veth(s) classified", node.pods.len());
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            message = link_events.messages.next() => {
                let Some((message, _)) = message else {
                    return Err(LinksError::Closed.into());
                };
                match node.opts.pod_veths.event(&message) {
                    Some(pods::PodEvent::Up(name)) => node.attach_pod(&name),
                    Some(pods::PodEvent::Gone(name)) => node.pod_gone(&handle, &name).await,
                    None => {}
                }
            }
            woken = changed(&watch) => {
                if let Err(e) = woken {
                    warn!("watching for changes failed, polling every second only: {e}");
                    watch = None;
                }
                node.reload_if_changed().await;
                node.finish_rekey_if_due().await;
            }
            woken = changed(&cni_watch) => {
                if let Err(e) = woken {
                    warn!("cni: watching for changes failed, polling every second only: {e}");
                    cni_watch = None;
                }
                // A rewrite of the config by the main plugin, a config that appears, or a
                // binary removed: all of it is checked again.
                if let Some(chain) = &mut chain {
                    chain.install();
                }
            }
            woken = changes.next() => {
                if let Some(Err(e)) = woken {
                    warn!("following node records failed, polling every second only: {e}");
                    changes = Box::pin(futures::stream::pending());
                }
                node.reload_if_changed().await;
                node.finish_rekey_if_due().await;
            }
            _ = poll.tick() => {
                if let Some(chain) = &mut chain {
                    chain.ensure();
                }
                node.reload_if_changed().await;
                node.retire_if_due().await;
                node.finish_rekey_if_due().await;
            }
            _ = counters.tick() => node.rekey_if_worn_out().await,
            removed = next_removal(&mut removals) => match removed {
                Some(removed) if node.applier.drifted(&removed) => {
                    if repair_at.is_none() {
                        warn!("{removed} was removed from the kernel behind xsteer's back: repairing");
                    }
                    repair_at = Some(tokio::time::Instant::now() + REPAIR_SETTLE);
                }
                Some(_) => {}
                None => {
                    warn!("the kernel's notifications ended, repairing at each resync only");
                    removals = None;
                }
            },
            () = wait_until(repair_at) => {
                repair_at = None;
                node.applier.forget();
                if let Err(e) = node.reconcile("repairing what was removed").await {
                    warn!("repair failed, will retry at the next resync: {e}");
                }
            }
            _ = resync.tick() => {
                // A full read this time: whatever changed behind xsteer's back is repaired.
                node.applier.forget();
                if let Err(e) = node.reconcile("periodic resync").await {
                    warn!("resync failed, will retry: {e}");
                }
                if let Err(e) = node.rescan(&handle).await {
                    warn!("rescanning pod veths failed: {e}");
                }
            }
        }
    }
    info!(
        "stopping; programs, maps and links stay pinned under {}",
        pin_dir.display()
    );
    Ok(())
}
