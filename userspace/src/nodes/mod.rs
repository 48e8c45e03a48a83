//! Where peers come from: node records, one per node, that each agent publishes and reads.
//!
//! A [`NodeSource`] is where records live; the agent reads every record from it, publishes its
//! own, and wakes when one may have changed. The directory of JSON files, [`DirSource`], is the
//! first source; the Kubernetes source, [`KubeSource`], keeps each record as an annotation on
//! its Node object. [`Peers`] turns what a source holds into the peers a node reconciles with: a
//! record that cannot be used never hides the others, and a node keeps the last good record of
//! each peer. [`alloc`] gives a node that configures none its node ID and pod CIDR in a
//! directory; with Kubernetes, its Node object does.

pub mod alloc;
mod dir;
pub mod kubernetes;
mod peers;
mod record;

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    pin::Pin,
    time::Duration,
};

use futures::Stream;

use crate::{
    cidr::{Ipv4Cidr, Ipv6Cidr},
    config::{Config, NodeRecords},
};

pub use dir::DirSource;
pub use kubernetes::KubeSource;
pub use peers::{CACHE_FILE, Cache, Peers};
pub use record::{NodeRecord, RECORD_VERSION, RecordError};

/// Every record a source holds, the ones it could not use, and the nodes removed on purpose.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Valid records, by node name.
    pub records: BTreeMap<String, NodeRecord>,
    /// Records that could not be used, by the name of the node they stand for, with why.
    pub problems: BTreeMap<String, RecordError>,
    /// Nodes removed on purpose: their peers forget them. A node whose record is merely gone
    /// is kept with its last good record (a sync hiccup must not put its traffic in clear or
    /// cut it off).
    pub removed: BTreeSet<String>,
    /// Every node that exists, with or without a record, when the source knows them all (the
    /// Kubernetes API server lists every Node): a node missing from it is removed, as if it were
    /// in `removed`, even one this process never saw go (deleted while the agent was down).
    /// `None` for a source that cannot tell a missing record from a removed node (a directory).
    pub existing: Option<BTreeSet<String>>,
}

impl Snapshot {
    /// Whether node `name` was removed on purpose, and its peers forget it.
    pub fn is_removed(&self, name: &str) -> bool {
        self.removed.contains(name) || self.existing.as_ref().is_some_and(|e| !e.contains(name))
    }
}

/// Why a source could not be read or written as a whole.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source's storage failed.
    #[error("{what}: {error}")]
    Io {
        /// What was being done, e.g. "publishing /var/lib/xsteer/nodes/a.json".
        what: String,
        /// What the OS said.
        error: io::Error,
    },
    /// The Kubernetes API server could not be reached, or refused.
    #[error("{what}: {}", kubernetes::api_error(.error))]
    Kubernetes {
        /// What was being done, e.g. "patching nodes/a/status".
        what: String,
        /// What the client said.
        error: kube::Error,
    },
    /// The Kubernetes API server did not answer in time.
    #[error("{what}: no answer from the Kubernetes API server in {after:?}")]
    TimedOut {
        /// What was being done.
        what: String,
        /// How long it waited.
        after: Duration,
    },
    /// The agent does not run in a pod with a service account.
    #[error(
        "no in-cluster Kubernetes config (node_source = \"kubernetes\" runs in a pod with a \
         service account): {0}"
    )]
    InCluster(kube::config::InClusterError),
    /// The Kubernetes source was started outside a tokio runtime.
    #[error("the Kubernetes node source needs a tokio runtime: {0}")]
    NoRuntime(tokio::runtime::TryCurrentError),
    /// The source was read once, for a command that runs once, and publishes nothing.
    #[error("this node source was read once and publishes nothing")]
    ReadOnly,
    /// The task that follows the Kubernetes Nodes ended.
    #[error("the watch of the Kubernetes Nodes ended")]
    WatchEnded,
}

/// A stream that yields whenever the source's records may have changed (spurious wake-ups are
/// allowed: a read then finds nothing new).
pub type Changes = Pin<Box<dyn Stream<Item = Result<(), SourceError>> + Send>>;

/// A place node records are published to and read from.
pub trait NodeSource {
    /// Every record the source holds now, or `None` when nothing changed since the last read.
    fn read(&mut self) -> Result<Option<Snapshot>, SourceError>;
    /// Publishes (or replaces) this node's record.
    fn publish(&mut self, record: &NodeRecord) -> Result<(), SourceError>;
    /// Wake-ups for when a record may have changed.
    fn changes(&self) -> Result<Changes, SourceError>;
    /// This node's ID and pod CIDR when the source assigns them (a Kubernetes Node's pod CIDR),
    /// or why they cannot be used; `None` when it does not, or has not read them yet.
    fn identity(&self) -> Option<Result<(u16, Ipv4Cidr), RecordError>> {
        None
    }
    /// This node's IPv6 pod CIDR when the source assigns it (a dual-stack Kubernetes Node's),
    /// read together with [`NodeSource::identity`]; `None` when it does not.
    fn pod_cidr_v6(&self) -> Option<Ipv6Cidr> {
        None
    }
    /// How an operator removes node `name` on purpose from this source, for log lines.
    fn removal(&self, name: &str) -> String {
        format!("xsteer node remove {name}")
    }
}

/// No records at all: the peers are the config file's.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRecords;

impl NodeSource for NoRecords {
    fn read(&mut self) -> Result<Option<Snapshot>, SourceError> {
        Ok(None)
    }

    fn publish(&mut self, _: &NodeRecord) -> Result<(), SourceError> {
        Ok(())
    }

    fn changes(&self) -> Result<Changes, SourceError> {
        Ok(Box::pin(futures::stream::pending()))
    }
}

/// The source a config names: the directory of its `nodes_dir`, the Kubernetes API server, or
/// no records at all. A `read_only` source creates nothing (a missing directory holds no
/// records) and follows nothing (the Nodes are listed once); the Kubernetes source that follows
/// them must be made on a tokio runtime.
pub fn source_of(
    config: &Config,
    read_only: bool,
) -> Result<Box<dyn NodeSource + Send>, SourceError> {
    let settings = || kubernetes::Settings::of(config);
    Ok(match &config.node_records {
        NodeRecords::Dir(dir) if read_only => Box::new(DirSource::existing(dir)),
        NodeRecords::Dir(dir) => Box::new(DirSource::new(dir)?),
        NodeRecords::Kubernetes if read_only => Box::new(KubeSource::list_in_cluster(settings())?),
        NodeRecords::Kubernetes => Box::new(KubeSource::in_cluster(settings())?),
        NodeRecords::None => Box::new(NoRecords),
    })
}

/// Why a node could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// The config names no node records directory.
    #[error("the config has no nodes_dir: its peers are in the config file, edit it instead")]
    NoRecords,
    /// The nodes are Kubernetes Nodes.
    #[error(
        "with node_source = \"kubernetes\" a node is removed by deleting its Node object \
         (kubectl delete node NAME): every agent forgets it then"
    )]
    Kubernetes,
    /// The name is not a node name.
    #[error("{name:?}: {why}")]
    Name {
        /// The name given.
        name: String,
        /// Why it is not one.
        why: String,
    },
    /// The node to remove is the one the config describes.
    #[error("{0} is this node: run `xsteer node remove` from another node's config")]
    Itself(String),
    /// The records could not be written.
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// Removes node `name` for good from the records of `config` (see [`DirSource::remove`]);
/// returns the records directory.
pub fn remove(config: &Config, name: &str) -> Result<std::path::PathBuf, RemoveError> {
    let dir = match &config.node_records {
        NodeRecords::Dir(dir) => dir,
        NodeRecords::Kubernetes => return Err(RemoveError::Kubernetes),
        NodeRecords::None => return Err(RemoveError::NoRecords),
    };
    if let Some(why) = crate::config::node_name_problem(name) {
        return Err(RemoveError::Name {
            name: name.to_owned(),
            why,
        });
    }
    if name == config.node.name {
        return Err(RemoveError::Itself(name.to_owned()));
    }
    DirSource::existing(dir).remove(name)?;
    Ok(dir.clone())
}
