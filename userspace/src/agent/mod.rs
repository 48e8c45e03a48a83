//! `xsteer agent`: keeps a node's dataplane true for as long as it runs, and leaves it running
//! when it stops.
//!
//! At start it reconciles the kernel (the same reconcile as `xsteer apply`, so maps are filled
//! before any program reads them), then attaches the guards to the uplink and the classifier to
//! every pod veth, adopting the links a previous agent pinned. Then it waits: a new pod veth gets
//! the classifier at once (link notifications); a changed config or key file is reloaded and
//! reconciled against the state the agent last left (no full kernel read), and a bad one is
//! logged and ignored, the last good state staying in place; every `resync` it reads the kernel
//! in full and reconciles, repairing drift. SIGTERM or SIGINT end it with everything
//! pinned: programs keep running, and the next agent picks them up without a gap.

pub mod attach;
pub mod metrics;
pub mod peers;
pub mod pods;
pub mod rekey;
pub mod rotation;
pub mod watch;

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use aya::programs::TcAttachType;
use futures::StreamExt;
use tokio::signal::unix::{SignalKind, signal};
use xsteer_common::programs;

use crate::{
    apply::{self, Applier, ApplyOptions},
    config::Config,
    dataplane::{Dataplane, DataplaneError, bpffs},
    epochs::{EpochsError, NodeEpochs},
    keys::KeyFile,
    retired::{RetiredError, RetiredGenerations},
    xfrm,
};
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
}

/// Why the agent stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The config or key file at start.
    #[error("{0:#}")]
    Load(anyhow::Error),
    /// The first reconcile failed.
    #[error("reconciling: {0}")]
    Apply(#[from] apply::ApplyError),
    /// bpffs could not be mounted.
    #[error("mounting bpffs: {0}")]
    Bpffs(#[source] std::io::Error),
    /// The programs could not be loaded.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// A program could not be attached.
    #[error("attaching {program} to {interface}: {reason}")]
    Attach {
        /// The program.
        program: &'static str,
        /// The interface.
        interface: String,
        /// What went wrong.
        reason: String,
    },
    /// Links could not be listed or watched.
    #[error("links: {0}")]
    Links(String),
    /// The metrics address could not be bound.
    #[error("serving metrics on {addr}: {source}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The node records directory could not be created.
    #[error("node records: {0}")]
    Nodes(#[source] std::io::Error),
    /// Signal handlers could not be installed.
    #[error("installing signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// The list of retired key generations could not be read.
    #[error(transparent)]
    Retired(#[from] RetiredError),
    /// The node's epochs could not be read or recorded.
    #[error(transparent)]
    Epochs(#[from] EpochsError),
}

// The agent explains every state change it makes in one log line (tracing, on stderr): what
// changed and why. Failures it survives are warnings.
use tracing::{info, warn};

/// What identifies a version of the config and key file: a change of either means a reload.
fn inputs_version(config: &Path, key_file: &Path) -> Vec<Option<(SystemTime, u64)>> {
    [config, key_file]
        .iter()
        .map(|p| {
            let m = fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// The node's state as the agent holds it between reconciles.
struct Node {
    opts: AgentOptions,
    /// The config as the file has it.
    config: Config,
    /// `config` with the peers learned from node records: what is reconciled.
    effective: Config,
    peers: peers::Peers,
    /// The key file as it reads.
    keys: KeyFile,
    /// Generations this node has retired: left out of `keys` for good.
    retired: RetiredGenerations,
    /// Generations every peer has moved past, waiting out the grace period.
    retirement: Retirement,
    /// The epoch in service and, during a re-key, the next one.
    epochs: NodeEpochs,
    /// How the re-key under way is ending.
    completion: rekey::Completion,
    version: Vec<Option<(SystemTime, u64)>>,
    dataplane: Dataplane,
    applier: Applier,
    pods: BTreeSet<String>,
    /// The last good config and keys, for the metrics endpoint.
    published: tokio::sync::watch::Sender<std::sync::Arc<(Config, KeyFile)>>,
}

impl Node {
    /// The key file's generations still in service: all but the retired ones.
    fn active_keys(&self) -> KeyFile {
        // A file whose newest generation is ambiguous fails the reconcile, which says why.
        self.retired
            .active(&self.keys)
            .unwrap_or_else(|_| self.keys.clone())
    }

    /// Reconciles the kernel with the config and keys held; logs each change. If the kernel
    /// lost this node's SAs (a reboot, a flush) so that their outbound keys would be used again,
    /// the node starts over from a fresh epoch and reconciles with that.
    async fn reconcile(&mut self, why: &str) -> Result<(), apply::ApplyError> {
        match self.reconcile_once(why).await {
            Err(e) if e.is_key_reuse() => {
                let fresh = match self.epochs.start_over() {
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
                self.use_epochs();
                self.reconcile_once("a new epoch after lost SAs").await
            }
            other => other,
        }
    }

    async fn reconcile_once(&mut self, why: &str) -> Result<(), apply::ApplyError> {
        let keys = self.active_keys();
        let applied = self
            .applier
            .apply(&self.effective, &keys, |change| {
                info!("{change} ({why})");
            })
            .await?;
        for notice in &applied.notices {
            warn!("{notice}");
        }
        // Only now, with the IN SAs for every generation installed, may peers send to us.
        match self.peers.publish(&self.effective, &keys) {
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
        let version = inputs_version(&self.opts.config, &self.config.key_file);
        if version != self.version {
            self.version = version;
            let loaded = apply::load(&self.opts.config).and_then(|(mut config, keys)| {
                let epochs = NodeEpochs::open(&self.opts.state_dir, config.node.epoch)?;
                epochs.apply_to(&mut config.node);
                Ok((config, keys, epochs))
            });
            match loaded {
                Ok((config, keys, epochs)) => {
                    info!("{} or its key file changed", self.opts.config.display());
                    if epochs.current() != self.epochs.current() {
                        info!(
                            "node.epoch changed in the config: epoch {} in service",
                            epochs.current()
                        );
                    }
                    self.config = config;
                    self.keys = keys;
                    self.epochs = epochs;
                    changed = true;
                }
                Err(e) => {
                    warn!(
                        "ignoring the changed config or key file, the last good state stays: {e:#}"
                    )
                }
            }
        }
        changed |= self
            .peers
            .refresh(&self.config.node.name, |line| info!("{line}"));
        if !changed {
            return;
        }
        match self.peers.merged(&self.config) {
            Ok(effective) => self.effective = effective,
            Err(e) => {
                warn!("ignoring the new peers, the last good state stays: {e:#}");
                return;
            }
        }
        self.share_inputs();
        if let Err(e) = self.reconcile("config, keys or peers changed").await {
            warn!("reconcile failed, will retry: {e}");
        }
    }

    /// Retires the generations that every peer has moved past, once their grace period is over:
    /// they are recorded as retired, then their SAs, policies and SPIs are removed and this
    /// node's record stops listing them.
    async fn retire_if_due(&mut self) {
        let keys = self.active_keys();
        let grace = self.retirement.grace().as_secs();
        let (due, progress) =
            match self
                .retirement
                .due(&keys, &self.effective.peers, Instant::now())
            {
                Ok(found) => found,
                Err(_) => return,
            };
        for step in progress {
            match step {
                Progress::Pending(spi) => info!(
                    "every peer has moved past key generation {spi}: removing it in {grace} s"
                ),
                Progress::InUseAgain(spi) => {
                    info!("key generation {spi} is in use again by a peer: keeping it")
                }
            }
        }
        if due.is_empty() {
            return;
        }
        for spi in &due {
            let Some(generation) = keys.get(*spi) else {
                continue;
            };
            if let Err(e) = self.retired.retire(generation) {
                warn!("cannot record key generation {spi} as retired, keeping it: {e}");
                return;
            }
            info!("key generation {spi} retired: no peer has sent with it for {grace} s");
        }
        self.share_inputs();
        if let Err(e) = self.reconcile("retiring old key generations").await {
            warn!("reconcile failed, will retry: {e}");
        }
    }

    /// Re-keys once an SA in use has sent `rekey_after_packets`: takes a new epoch and
    /// installs its SAs. Reads the SA counters, so the caller calls it every
    /// [`rekey::CHECK_EVERY`].
    async fn rekey_if_worn_out(&mut self) {
        if self.epochs.next().is_some() {
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
        let keys = self.active_keys();
        let Some(worn) = rekey::worn_out(&self.effective, &keys, &counters, after) else {
            return;
        };
        let next = match self.epochs.begin_rekey() {
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
            .effective
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
        let Some(next) = self.epochs.next() else {
            return;
        };
        let grace = self.completion.grace().as_secs();
        match self.completion.step(next, &self.effective, Instant::now()) {
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
        if let Err(e) = self.epochs.finish_rekey() {
            warn!("cannot record the end of the re-key, keeping the old epoch: {e}");
            return;
        }
        info!("re-key finished: epoch {next} in service, the old epoch's SAs go");
        self.epochs_changed("finishing a re-key").await;
    }

    /// Puts the epochs into the config held and reconciles.
    async fn epochs_changed(&mut self, why: &str) {
        self.use_epochs();
        if let Err(e) = self.reconcile(why).await {
            warn!("reconcile failed, will retry: {e}");
        }
    }

    /// Puts the epochs into the config held and into what the metrics endpoint shows.
    fn use_epochs(&mut self) {
        self.epochs.apply_to(&mut self.config.node);
        self.epochs.apply_to(&mut self.effective.node);
        self.share_inputs();
    }

    /// Hands the config and keys held to the metrics endpoint.
    fn share_inputs(&self) {
        self.published.send_replace(std::sync::Arc::new((
            self.effective.clone(),
            self.active_keys(),
        )));
    }

    /// Attaches the classifier to pod veth `name` unless this agent already did.
    fn attach_pod(&mut self, name: &str) {
        // The uplink can be a veth with its peer elsewhere too (a lab, a nested node): it is
        // the wire, never a pod.
        if self.pods.contains(name) || name == self.effective.node.uplink {
            return;
        }
        let result = self
            .dataplane
            .pod_classifier()
            .map_err(AgentError::from)
            .and_then(|program| {
                attach::tc(
                    program,
                    programs::POD_CLASSIFIER,
                    name,
                    TcAttachType::Ingress,
                    &self.opts.pin_dir,
                )
            });
        match result {
            Ok(how) => {
                info!("pod veth {name}: classifier attached ({how:?})");
                self.pods.insert(name.to_owned());
            }
            Err(e) => warn!("pod veth {name}: {e}"),
        }
    }

    fn pod_gone(&mut self, name: &str) {
        if self.pods.remove(name)
            || attach::pinned_interfaces(&self.opts.pin_dir, programs::POD_CLASSIFIER)
                .iter()
                .any(|p| p == name)
        {
            match attach::unpin(&self.opts.pin_dir, programs::POD_CLASSIFIER, name) {
                Ok(()) => info!("pod veth {name} gone: its link unpinned"),
                Err(e) => warn!("pod veth {name} gone, unpinning failed: {e}"),
            }
        }
    }

    /// Attaches to every pod veth present, and forgets pins of veths that are gone.
    async fn rescan(&mut self, handle: &rtnetlink::Handle) -> Result<(), AgentError> {
        let present = self.opts.pod_veths.list(handle).await?;
        for name in &present {
            self.attach_pod(name);
        }
        for name in attach::pinned_interfaces(&self.opts.pin_dir, programs::POD_CLASSIFIER) {
            if !present.contains(&name) {
                self.pod_gone(&name);
            }
        }
        Ok(())
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(opts: AgentOptions) -> Result<(), AgentError> {
    let (mut config, keys) = apply::load(&opts.config).map_err(AgentError::Load)?;
    let epochs = NodeEpochs::open(&opts.state_dir, config.node.epoch)?;
    epochs.apply_to(&mut config.node);
    if let Some(next) = epochs.next() {
        info!(
            "resuming the re-key from epoch {} to {next}",
            epochs.current()
        );
    }
    let version = inputs_version(&opts.config, &config.key_file);
    bpffs::ensure_mounted().map_err(AgentError::Bpffs)?;
    let mut dataplane = Dataplane::load_pinned(&opts.pin_dir)?;
    dataplane.load_programs()?;
    let uplink = config.node.uplink.clone();
    let peers = peers::Peers::new(&config).map_err(AgentError::Nodes)?;
    let retired = RetiredGenerations::open(&opts.state_dir)?;
    let retirement = Retirement::new(opts.rotation_grace);
    let completion = rekey::Completion::new(opts.rotation_grace);
    let effective = peers.merged(&config).unwrap_or_else(|e| {
        warn!("ignoring the node records for now: {e:#}");
        config.clone()
    });
    let active = retired.active(&keys).unwrap_or_else(|_| keys.clone());
    let (published, inputs) =
        tokio::sync::watch::channel(std::sync::Arc::new((effective.clone(), active)));
    if let Some(addr) = opts.metrics {
        let listener = metrics::bind(addr)
            .await
            .map_err(|source| AgentError::Metrics { addr, source })?;
        tokio::spawn(metrics::serve(listener, inputs, opts.pin_dir.clone()));
        info!("serving /metrics and /healthz on http://{addr}");
    }
    let applier = Applier::new(ApplyOptions {
        dry_run: false,
        pin_dir: opts.pin_dir.clone(),
        state_dir: opts.state_dir.clone(),
    })?;
    let mut node = Node {
        opts,
        config,
        effective,
        peers,
        keys,
        retired,
        retirement,
        epochs,
        completion,
        version,
        dataplane,
        applier,
        pods: BTreeSet::new(),
        published,
    };
    // Maps before programs: a guard attached to empty maps would let nothing be checked.
    node.reconcile("start").await?;

    let pin_dir = node.opts.pin_dir.clone();
    let how = attach::tc(
        node.dataplane.egress_guard()?,
        programs::EGRESS_GUARD,
        &uplink,
        TcAttachType::Egress,
        &pin_dir,
    )?;
    info!("uplink {uplink}: egress guard attached ({how:?})");
    let how = attach::xdp(
        node.dataplane.ingress_guard()?,
        programs::INGRESS_GUARD,
        &uplink,
        &pin_dir,
    )?;
    info!("uplink {uplink}: ingress guard attached ({how:?})");

    let mut links = pods::watch()?;
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| AgentError::Links(e.to_string()))?;
    tokio::spawn(connection);
    node.rescan(&handle).await?;

    let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    let mut poll = tokio::time::interval(node.opts.poll);
    let mut resync = tokio::time::interval(node.opts.resync);
    resync.tick().await;
    let mut counters = tokio::time::interval(rekey::CHECK_EVERY);
    // A write to the config, the key file or a node record wakes the agent at once; the poll
    // stays for what inotify cannot see.
    let dirs = watch::input_dirs(&node.opts.config, &node.config);
    let mut watch = match watch::DirWatch::new(dirs.iter().map(PathBuf::as_path)) {
        Ok(watch) => Some(watch),
        Err(e) => {
            warn!("cannot watch {dirs:?} for changes, polling every second only: {e}");
            None
        }
    };
    let changed = async |watch: &Option<watch::DirWatch>| match watch {
        Some(watch) => watch.changed().await,
        None => std::future::pending().await,
    };
    info!("agent running: {} pod veth(s) classified", node.pods.len());
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            message = links.messages.next() => {
                let Some((message, _)) = message else {
                    return Err(AgentError::Links("the link notification socket closed".into()));
                };
                match node.opts.pod_veths.event(&message) {
                    Some(pods::PodEvent::Up(name)) => node.attach_pod(&name),
                    Some(pods::PodEvent::Gone(name)) => node.pod_gone(&name),
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
            _ = poll.tick() => {
                node.reload_if_changed().await;
                node.retire_if_due().await;
                node.finish_rekey_if_due().await;
            }
            _ = counters.tick() => node.rekey_if_worn_out().await,
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
