//! Node records from the Kubernetes API server: each node's record is an annotation,
//! [`RECORD_ANNOTATION`], on its Node object, which its agent writes with a merge patch of
//! `nodes/<name>/status` and every agent watches.
//!
//! Why Node objects: they are where a cluster already says which nodes exist, with their pod
//! CIDR and addresses, and the API server tells every watcher of a change within moments, so no
//! shared directory has to be synced. A peer's record is its Node's pod CIDR and InternalIP and
//! its annotation, checked against each other (`node.rs`). A Node without the annotation is no
//! peer: its agent has not started, so it has no epoch and no key generations, and no SA with it
//! could be keyed. Node IDs are derived from the pod CIDR's block number in the first cluster
//! CIDR, which needs no coordination and no allocation that could race: the controller manager
//! has already made pod CIDRs unique. This node's own ID and pod CIDR come from its own Node the
//! same way, so they always match what its peers derive.
//!
//! A deleted Node is a node removed on purpose: it is reported in [`Snapshot::removed`] and its
//! peers forget it, and so is a Node missing from a complete list (deleted while the watch was
//! down, or while the agent was not running: [`Snapshot::existing`]). A Node whose annotation
//! disappears or turns bad keeps its last good record, as a record file does.
//!
//! A task follows the Nodes with kube's watcher, which lists, watches from the list's resource
//! version, resumes after a dropped connection, lists again after a `410 Gone` and backs off
//! while the API server is away; it keeps what it saw in a shared picture that
//! [`NodeSource::read`] turns into a snapshot, and that wakes [`NodeSource::changes`]. Another
//! task publishes: [`NodeSource::publish`] only hands the record over, so the agent's loop
//! never waits on the API server; the task patches, retries with back-off until it succeeds,
//! and patches again whenever the watch shows its Node without the record (a Node that was
//! deleted and registered again, an annotation edited by hand).

#[cfg(test)]
mod fake;
mod node;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    error::Error as _,
    net::Ipv4Addr,
    pin::pin,
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{
        WatchStreamExt,
        utils::Backoff,
        watcher::{self, DefaultBackoff, Event},
    },
};
use tokio::{sync::watch, task::AbortHandle};
use tracing::{info, warn};

use self::node::NodeFacts;
use super::{Changes, NodeRecord, NodeSource, RecordError, Snapshot, SourceError};
use crate::{
    cidr::{Ipv4Cidr, Ipv6Cidr},
    config::Config,
};

/// The annotation on a Node that holds its agent's record, as the JSON of
/// [`NodeRecord::render_compact`].
pub const RECORD_ANNOTATION: &str = "xsteer.dev/record";

/// The field manager the agent's patches are made as.
const FIELD_MANAGER: &str = "xsteer-agent";

/// How long one patch, or one list of a one-shot read, may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a Kubernetes source needs to know about this node and the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// This node's name: the name of its Node object.
    pub node: String,
    /// This node's tunnel endpoint, which must be one of its Node's InternalIPs.
    pub ip: Ipv4Addr,
    /// The cluster CIDR node IDs are counted in: the config's first.
    pub cluster: Ipv4Cidr,
}

impl Settings {
    /// The settings of `config`.
    pub fn of(config: &Config) -> Settings {
        let Some(&cluster) = config.cluster_cidrs.first() else {
            unreachable!("Config::validate requires a cluster_cidr");
        };
        Settings {
            node: config.node.name.clone(),
            ip: config.node.ip,
            cluster,
        }
    }
}

/// Makes the back-off a task waits by after a failure.
type MakeBackoff = fn() -> Box<dyn Backoff>;

/// kube's back-off for watchers, client-go's: from 0.8 s doubling to 30 s, with jitter, so that
/// the agents of a cluster do not all call a struggling API server at once.
fn default_backoff() -> Box<dyn Backoff> {
    Box::new(DefaultBackoff::default())
}

/// Node records on the Node objects of a Kubernetes cluster.
pub struct KubeSource {
    settings: Settings,
    /// What the watch saw, kept up to date by its task (or listed once).
    seen: watch::Receiver<Seen>,
    /// The version of `seen` the last read returned.
    last_read: Option<u64>,
    /// This node's record, for the publishing task; `None` for a source listed once.
    publish: Option<watch::Sender<Option<NodeRecord>>>,
    /// The tasks, stopped when the source is dropped.
    tasks: Vec<AbortHandle>,
}

/// What the watch saw of the Nodes.
#[derive(Debug, Default)]
struct Seen {
    /// Every Node of the last complete list, changed by the watch events since, by name.
    nodes: BTreeMap<String, NodeFacts>,
    /// Nodes deleted since the source started: by a watch event, or missing from a list.
    deleted: BTreeSet<String>,
    /// Whether a complete list has arrived: until then there is nothing to read.
    listed: bool,
    /// Counts the changes, so that a read can tell whether anything changed.
    version: u64,
}

impl Seen {
    /// A Node added or changed; returns whether anything xsteer reads changed.
    fn apply(&mut self, facts: NodeFacts) -> bool {
        let deleted = self.deleted.remove(&facts.name);
        if !deleted && self.nodes.get(&facts.name) == Some(&facts) {
            return false;
        }
        self.nodes.insert(facts.name.clone(), facts);
        self.version += 1;
        true
    }

    /// A Node deleted.
    fn delete(&mut self, name: &str) -> bool {
        self.nodes.remove(name);
        self.deleted.insert(name.to_owned());
        self.version += 1;
        true
    }

    /// A complete list: it replaces what was seen, and a Node that is not in it was deleted.
    fn relisted(&mut self, nodes: BTreeMap<String, NodeFacts>) -> bool {
        let first = !self.listed;
        self.listed = true;
        for name in self.nodes.keys().filter(|n| !nodes.contains_key(*n)) {
            self.deleted.insert(name.clone());
        }
        self.deleted.retain(|name| !nodes.contains_key(name));
        if !first && nodes == self.nodes {
            return false;
        }
        self.nodes = nodes;
        self.version += 1;
        true
    }

    /// What a read returns: every Node's record or problem, and what is gone.
    fn snapshot(&self, cluster: Ipv4Cidr) -> Snapshot {
        let mut snapshot = Snapshot {
            removed: self.deleted.clone(),
            existing: Some(self.nodes.keys().cloned().collect()),
            ..Snapshot::default()
        };
        for (name, facts) in &self.nodes {
            match facts.record(cluster) {
                Some(Ok(record)) => {
                    snapshot.records.insert(name.clone(), record);
                }
                Some(Err(problem)) => {
                    snapshot.problems.insert(name.clone(), problem);
                }
                None => {}
            }
        }
        snapshot
    }
}

impl KubeSource {
    /// The source of the cluster the agent runs in, through its service account (in-cluster
    /// config): starts the watch and the publishing task on the current tokio runtime.
    pub fn in_cluster(settings: Settings) -> Result<KubeSource, SourceError> {
        KubeSource::start(in_cluster_client()?, settings, default_backoff)
    }

    /// The source of the cluster `client` talks to, waiting by `backoff` after failures.
    fn start(
        client: Client,
        settings: Settings,
        backoff: MakeBackoff,
    ) -> Result<KubeSource, SourceError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(SourceError::NoRuntime)?;
        let api: Api<Node> = Api::all(client);
        let (seen_tx, seen) = watch::channel(Seen::default());
        let (publish, desired) = watch::channel(None);
        let own = settings.node.clone();
        let watching = runtime.spawn({
            let api = api.clone();
            let backoff = backoff();
            async move { follow(api, &own, seen_tx, backoff).await }
        });
        let publishing = runtime.spawn(publish_record(
            api,
            settings.node.clone(),
            desired,
            seen.clone(),
            backoff(),
        ));
        Ok(KubeSource {
            settings,
            seen,
            last_read: None,
            publish: Some(publish),
            tasks: vec![watching.abort_handle(), publishing.abort_handle()],
        })
    }

    /// The Nodes of the cluster the agent runs in, listed once, for a command that runs once
    /// (`xsteer status`, `xsteer apply`): read only, and nothing follows them. Runs the list on
    /// a thread of its own, so it may be called with or without a tokio runtime.
    pub fn list_in_cluster(settings: Settings) -> Result<KubeSource, SourceError> {
        std::thread::scope(|scope| {
            let listing = scope.spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|error| SourceError::Io {
                        what: "starting a tokio runtime to list the Nodes".into(),
                        error,
                    })?;
                runtime.block_on(async {
                    let client = in_cluster_client()?;
                    KubeSource::list(client, settings).await
                })
            });
            listing
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// The Nodes of the cluster `client` talks to, listed once: read only, and nothing follows
    /// them.
    async fn list(client: Client, settings: Settings) -> Result<KubeSource, SourceError> {
        let api: Api<Node> = Api::all(client);
        let listed =
            match tokio::time::timeout(REQUEST_TIMEOUT, api.list(&ListParams::default())).await {
                Ok(listed) => listed.map_err(|error| SourceError::Kubernetes {
                    what: "listing the Nodes".into(),
                    error,
                })?,
                Err(_) => {
                    return Err(SourceError::TimedOut {
                        what: "listing the Nodes".into(),
                        after: REQUEST_TIMEOUT,
                    });
                }
            };
        let mut seen = Seen::default();
        seen.relisted(
            listed
                .items
                .iter()
                .map(|node| (node.name_any(), NodeFacts::of(node)))
                .collect(),
        );
        let (_, seen) = watch::channel(seen);
        Ok(KubeSource {
            settings,
            seen,
            last_read: None,
            publish: None,
            tasks: Vec::new(),
        })
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A client with the service account of the pod the agent runs in.
fn in_cluster_client() -> Result<Client, SourceError> {
    let config = kube::Config::incluster().map_err(SourceError::InCluster)?;
    Client::try_from(config).map_err(|error| SourceError::Kubernetes {
        what: "making a client for the Kubernetes API server".into(),
        error,
    })
}

impl NodeSource for KubeSource {
    fn read(&mut self) -> Result<Option<Snapshot>, SourceError> {
        let seen = self.seen.borrow();
        if !seen.listed || self.last_read == Some(seen.version) {
            return Ok(None);
        }
        self.last_read = Some(seen.version);
        Ok(Some(seen.snapshot(self.settings.cluster)))
    }

    fn publish(&mut self, record: &NodeRecord) -> Result<(), SourceError> {
        let Some(publish) = &self.publish else {
            return Err(SourceError::ReadOnly);
        };
        publish.send_replace(Some(record.clone()));
        Ok(())
    }

    fn changes(&self) -> Result<Changes, SourceError> {
        if self.publish.is_none() {
            // Listed once: nothing follows the Nodes.
            return Ok(futures::stream::pending().boxed());
        }
        let mut seen = self.seen.clone();
        seen.mark_unchanged();
        Ok(futures::stream::unfold(Some(seen), |seen| async move {
            let Some(mut seen) = seen else {
                return futures::future::pending().await;
            };
            match seen.changed().await {
                Ok(()) => Some((Ok(()), Some(seen))),
                // The watching task ended: said once, then nothing changes any more.
                Err(_) => Some((Err(SourceError::WatchEnded), None)),
            }
        })
        .boxed())
    }

    fn identity(&self) -> Option<Result<(u16, Ipv4Cidr), RecordError>> {
        let seen = self.seen.borrow();
        if !seen.listed {
            return None;
        }
        let Some(own) = seen.nodes.get(&self.settings.node) else {
            return Some(Err(RecordError::Field {
                origin: format!("Node {}", self.settings.node),
                field: "metadata.name",
                problem: "no Node of this name in the Kubernetes API server's list: node.name \
                          must be this node's Kubernetes name"
                    .into(),
            }));
        };
        Some(
            own.check_ip(self.settings.ip)
                .and_then(|()| own.identity(self.settings.cluster)),
        )
    }

    fn pod_cidr_v6(&self) -> Option<Ipv6Cidr> {
        let seen = self.seen.borrow();
        // A podCIDR that does not parse was named by `identity` through the record checks;
        // here it is no IPv6 pod CIDR.
        seen.nodes
            .get(&self.settings.node)
            .and_then(|own| own.pod_cidr_v6().ok().flatten())
    }

    fn removal(&self, name: &str) -> String {
        format!("kubectl delete node {name}")
    }
}

/// Follows the Nodes into `seen` for as long as the source lives; after the first list, a list
/// without `own`, this node's Node, is ignored.
async fn follow(api: Api<Node>, own: &str, seen: watch::Sender<Seen>, backoff: Box<dyn Backoff>) {
    let mut events = pin!(watcher::watcher(api, watcher::Config::default()).backoff(backoff));
    // A list in progress: it replaces what was seen only once complete.
    let mut listing = BTreeMap::new();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(node)) => {
                listing.insert(node.name_any(), NodeFacts::of(&node));
            }
            Ok(Event::InitDone) => {
                let nodes = std::mem::take(&mut listing);
                // This node runs, so its Node exists: after a list that had it, a list without
                // it is not the cluster (an API server answering from an empty or stale store)
                // and would remove every peer. The last good view stays until a list has it.
                // A first list without it is taken: the identity check names the problem.
                if !nodes.contains_key(own) && seen.borrow().listed {
                    warn!(
                        "a list of {} Nodes without this node's own Node {own:?}: ignored, \
                         keeping the Nodes seen before",
                        nodes.len()
                    );
                    continue;
                }
                seen.send_if_modified(|seen| seen.relisted(nodes));
            }
            Ok(Event::Apply(node)) => {
                seen.send_if_modified(|seen| seen.apply(NodeFacts::of(&node)));
            }
            Ok(Event::Delete(node)) => {
                seen.send_if_modified(|seen| seen.delete(&node.name_any()));
            }
            Err(watcher::Error::WatchError(status)) if status.code == 410 => info!(
                "the watch of Nodes is too far behind ({}): listing them again",
                status.message
            ),
            Err(e) => warn!("following Nodes: {}; retrying", watch_error(&e)),
        }
    }
}

/// Makes this node's Node carry `desired` for as long as the source lives: patches whenever
/// the record changes, and again whenever the watch shows the Node without it.
async fn publish_record(
    api: Api<Node>,
    own: String,
    mut desired: watch::Receiver<Option<NodeRecord>>,
    mut seen: watch::Receiver<Seen>,
    mut backoff: Box<dyn Backoff>,
) {
    // The record last patched with success.
    let mut patched: Option<NodeRecord> = None;
    // Patches failed in a row.
    let mut failed = 0u32;
    // The Node's annotation as the watch last showed it: `Some(None)` for none.
    let mut shown: Option<Option<String>> = None;
    loop {
        let want = desired.borrow_and_update().clone();
        let (listed, now) = {
            let seen = seen.borrow_and_update();
            let now = seen.nodes.get(&own).map(|node| node.record.clone());
            (seen.listed, now)
        };
        // A Node that is not there cannot be patched; it is, once registered again.
        let present = !listed || now.is_some();
        let lost = match &now {
            Some(annotation) if shown.as_ref() != Some(annotation) => {
                shown = Some(annotation.clone());
                true
            }
            _ => false,
        };
        if let Some(record) = want.filter(|_| present) {
            let holds = |annotation: &Option<String>| {
                annotation
                    .as_deref()
                    .and_then(|text| NodeRecord::parse("", text).ok())
                    .is_some_and(|on_node| on_node == record)
            };
            let stale =
                patched.as_ref() != Some(&record) || (lost && !now.as_ref().is_some_and(holds));
            if stale {
                match patch(&api, &own, &record).await {
                    Ok(()) => {
                        if failed > 0 {
                            info!(
                                "published this node's record on Node {own} after {failed} \
                                 failed attempts"
                            );
                        }
                        failed = 0;
                        patched = Some(record);
                        backoff.reset();
                    }
                    Err(e) => {
                        failed += 1;
                        patched = None;
                        let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                        warn!(
                            "publishing this node's record on Node {own} failed, retrying in \
                             {delay:?}: {e}"
                        );
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                }
            }
        }
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return },
            changed = seen.changed() => if changed.is_err() { return },
        }
    }
}

/// Writes `record` into the annotation of Node `own`, with a merge patch of its status (the
/// subresource agents may patch) that leaves every other field alone.
async fn patch(api: &Api<Node>, own: &str, record: &NodeRecord) -> Result<(), SourceError> {
    let what = || format!("patching nodes/{own}/status");
    let body = serde_json::json!({
        "metadata": { "annotations": { RECORD_ANNOTATION: record.render_compact() } }
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    match tokio::time::timeout(
        REQUEST_TIMEOUT,
        api.patch_status(own, &params, &Patch::Merge(&body)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(SourceError::Kubernetes {
            what: what(),
            error,
        }),
        Err(_) => Err(SourceError::TimedOut {
            what: what(),
            after: REQUEST_TIMEOUT,
        }),
    }
}

/// A watcher error, each thing said once (kube's own messages repeat their cause).
fn watch_error(error: &watcher::Error) -> String {
    match error {
        watcher::Error::InitialListFailed(e) => format!("listing them: {}", api_error(e)),
        watcher::Error::WatchStartFailed(e) => format!("starting the watch: {}", api_error(e)),
        watcher::Error::WatchFailed(e) => format!("the watch broke: {}", api_error(e)),
        watcher::Error::WatchError(status) => format!(
            "the API server ended the watch: {} ({} {})",
            status.message, status.code, status.reason
        ),
        watcher::Error::NoResourceVersion => {
            "the API server sent a list or an event without a resourceVersion".into()
        }
    }
}

/// A client error, each thing said once: an API server's answer as its message, code and
/// reason; any other error with its causes.
pub(super) fn api_error(error: &kube::Error) -> String {
    let mut shown = match error {
        kube::Error::Api(status) => {
            return format!("{} ({} {})", status.message, status.code, status.reason);
        }
        kube::Error::Service(inner) => inner.to_string(),
        other => other.to_string(),
    };
    let mut cause = match error {
        kube::Error::Service(inner) => inner.source(),
        other => other.source(),
    };
    while let Some(e) = cause {
        let text = e.to_string();
        if !shown.contains(&text) {
            shown = format!("{shown}: {text}");
        }
        cause = e.source();
    }
    shown
}
