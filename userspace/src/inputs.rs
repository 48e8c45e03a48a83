//! Everything a node reconciles with, read and put together in one place: the config file, the
//! key file, the node's identity (configured, allocated, or its Kubernetes Node's), its epochs
//! and retired key generations from the state directory, and the peers of the node records.
//!
//! `xsteer apply` and `xsteer status` read them once ([`load`]); the agent reads the files at
//! start and on every change ([`read_files`]), keeps its [`Peers`] across reads, and assembles
//! the two with [`Files::assemble`] whenever either changes. Only the agent and a real `apply`
//! write (an allocation, the configured epoch): a read-only load leaves the state directory and
//! the node records directory as they were.

use std::path::{Path, PathBuf};

use crate::{
    cidr::{Ipv4Cidr, Ipv6Cidr},
    config::{Config, ConfigError, NodeRecords},
    keys::{Generation, GenerationError, KeyFile, LoadError},
    nodes::{
        self, CACHE_FILE, Cache, NodeSource, Peers, RecordError, RemoveError, SourceError,
        alloc::{self, AllocError},
    },
    state::{NodeEpochs, RetiredGenerations, StateError},
    view::{ConfigClash, View},
};

/// Whether reading the inputs may write what they lack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Write nothing: a node without an allocated identity is an error, the configured epoch
    /// is not recorded.
    ReadOnly,
    /// Allocate a node ID and pod CIDR if the config gives none, and record the configured
    /// epoch in the state directory.
    Write,
}

/// Why the inputs could not be read or put together.
#[derive(Debug, thiserror::Error)]
pub enum InputsError {
    /// The config file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The key file.
    #[error(transparent)]
    Keys(#[from] LoadError),
    /// The key file's generations do not say which is newest.
    #[error("key file {}: {error}", path.display())]
    Generations {
        /// The key file.
        path: PathBuf,
        /// Why.
        error: GenerationError,
    },
    /// No node ID or pod CIDR could be allocated.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// A read-only load found no allocated identity.
    #[error(
        "node {name} has no node ID and pod CIDR in {} yet: they are allocated when its agent \
         first starts (or give node.id and node.pod_cidr in the config)",
        dir.display()
    )]
    NotAllocated {
        /// The node.
        name: String,
        /// The node records directory.
        dir: PathBuf,
    },
    /// This node's IPv6 pod CIDR (its Kubernetes Node's) is outside `cluster_cidr_v6`.
    #[error(
        "this node's IPv6 pod CIDR {0} is outside cluster_cidr_v6: it must be the cluster's \
         IPv6 --cluster-cidr"
    )]
    OutsideV6(Ipv6Cidr),
    /// The Kubernetes source has not listed the Nodes yet.
    #[error("the Node of {0} has not been read from the Kubernetes API server yet")]
    NodeNotRead(String),
    /// This node's Node object gives no usable identity.
    #[error(transparent)]
    Node(#[from] RecordError),
    /// A state file.
    #[error(transparent)]
    State(#[from] StateError),
    /// The node records.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A node could not be removed from the records.
    #[error(transparent)]
    Remove(#[from] RemoveError),
    /// A peer of the config clashes with this node's allocated identity.
    #[error(transparent)]
    Clash(#[from] ConfigClash),
}

/// The files a node reads: config, key file, and its state.
#[derive(Debug)]
pub struct Files {
    /// The config file.
    pub config: Config,
    /// The key file, every generation it lists.
    pub keys: KeyFile,
    /// The node ID and pod CIDR, configured or allocated.
    pub identity: (u16, Ipv4Cidr),
    /// The IPv6 pod CIDR, configured or the Kubernetes Node's, in a dual-stack cluster.
    pub pod_cidr_v6: Option<Ipv6Cidr>,
    /// The epochs in service.
    pub epochs: NodeEpochs,
    /// The generations this node retired.
    pub retired: RetiredGenerations,
}

/// What a node reconciles with, put together.
#[derive(Clone, Debug)]
pub struct Inputs {
    /// This node and its peers.
    pub view: View,
    /// The key file's generations in service: all but the retired ones.
    pub keys: KeyFile,
    /// The generations the key file lists that this node retired.
    pub retired: Vec<Generation>,
    /// The node records refused, each with why.
    pub refused: Vec<String>,
}

/// Reads the config at `config_path`, the key file it names, the node's identity (from
/// `source` with Kubernetes) and its state in `state_dir`.
pub fn read_files(
    config_path: &Path,
    state_dir: &Path,
    access: Access,
    source: &dyn NodeSource,
) -> Result<Files, InputsError> {
    Files::read(Config::from_path(config_path)?, state_dir, access, source)
}

impl Files {
    /// Reads the key file `config` names, the node's identity (from `source` with Kubernetes)
    /// and its state in `state_dir`.
    pub fn read(
        config: Config,
        state_dir: &Path,
        access: Access,
        source: &dyn NodeSource,
    ) -> Result<Files, InputsError> {
        let keys = KeyFile::load(&config.key_file)?;
        let identity = identity(&config, access, source)?;
        let pod_cidr_v6 = match config.node.pod_cidr_v6 {
            Some(configured) => Some(configured),
            // Only in a dual-stack cluster: elsewhere IPv6 is not pod traffic.
            None if !config.cluster_cidrs_v6.is_empty() => source.pod_cidr_v6(),
            None => None,
        };
        if let Some(cidr) = pod_cidr_v6
            && !config.cluster_cidrs_v6.iter().any(|c| c.covers(&cidr))
        {
            return Err(InputsError::OutsideV6(cidr));
        }
        let epochs = match access {
            Access::ReadOnly => NodeEpochs::read(state_dir, config.node.epoch)?,
            Access::Write => NodeEpochs::open(state_dir, config.node.epoch)?,
        };
        let retired = RetiredGenerations::open(state_dir)?;
        Ok(Files {
            config,
            keys,
            identity,
            pod_cidr_v6,
            epochs,
            retired,
        })
    }
}

/// The node ID and pod CIDR: configured, allocated in the node records directory, or those of
/// the node's Kubernetes Node.
fn identity(
    config: &Config,
    access: Access,
    source: &dyn NodeSource,
) -> Result<(u16, Ipv4Cidr), InputsError> {
    if let Some(identity) = config.node.identity() {
        return Ok(identity);
    }
    let name = &config.node.name;
    // Validation has made sure there is a cluster CIDR, and a source that gives an identity
    // when the config gives none.
    let Some(&cluster) = config.cluster_cidrs.first() else {
        unreachable!("Config::validate requires a cluster_cidr");
    };
    let dir = match &config.node_records {
        NodeRecords::Dir(dir) => dir,
        NodeRecords::Kubernetes => {
            return match source.identity() {
                Some(identity) => Ok(identity?),
                None => Err(InputsError::NodeNotRead(name.clone())),
            };
        }
        NodeRecords::None => {
            unreachable!("Config::validate requires node.id and node.pod_cidr without records")
        }
    };
    match access {
        Access::Write => Ok(alloc::allocate(dir, name, cluster)?),
        Access::ReadOnly => alloc::lookup(dir, name)?.ok_or_else(|| InputsError::NotAllocated {
            name: name.clone(),
            dir: dir.clone(),
        }),
    }
}

impl Files {
    /// The view and keys in service: this node with its identity and epochs, the config's
    /// peers, and the peers `peers` admits from node records.
    pub fn assemble(&self, peers: &mut Peers) -> Result<Inputs, InputsError> {
        let mut base = View::from_config(
            &self.config,
            self.identity,
            self.epochs.current(),
            self.epochs.next(),
        )?;
        // With Kubernetes, the Node's (the config gives none there).
        base.node.pod_cidr_v6 = self.pod_cidr_v6;
        let (view, refused) = peers.view(&base);
        let keys = self
            .retired
            .active(&self.keys)
            .map_err(|error| InputsError::Generations {
                path: self.config.key_file.clone(),
                error,
            })?;
        Ok(Inputs {
            view,
            keys,
            retired: self.retired.listed(&self.keys),
            refused,
        })
    }
}

/// Removes node `name` for good from the node records of the config at `config_path`: every
/// agent forgets it. Returns the records directory.
pub fn remove_node(config_path: &Path, name: &str) -> Result<PathBuf, InputsError> {
    let config = Config::from_path(config_path)?;
    Ok(nodes::remove(&config, name)?)
}

/// Reads everything once, node records included, for a command that runs once.
pub fn load(config_path: &Path, state_dir: &Path, access: Access) -> Result<Inputs, InputsError> {
    let config = Config::from_path(config_path)?;
    let source = nodes::source_of(&config, access == Access::ReadOnly)?;
    let files = Files::read(config, state_dir, access, source.as_ref())?;
    let cache = Cache {
        path: state_dir.join(CACHE_FILE),
        write: false,
    };
    let mut peers = Peers::new(source, &files.config.node.name, Some(cache), drop);
    files.assemble(&mut peers)
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt};

    use super::*;
    use crate::nodes::NoRecords;

    const KEYS: &str = "3 rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f10111213 128\n";

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xsteer-inputs-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A node with its identity left to the allocator, its key file beside it.
    fn write_node(dir: &Path, name: &str, ip: &str, keys: &str) -> PathBuf {
        let config = dir.join(format!("{name}.toml"));
        fs::write(
            &config,
            format!(
                "key_file = \"keys\"\nnodes_dir = \"nodes\"\ncluster_cidr = \"10.244.0.0/16\"\n\n\
                 [node]\nname = \"{name}\"\nip = \"{ip}\"\nuplink = \"eth0\"\n\
                 epoch = \"00112233445566778899aabbccddeeff\"\n"
            ),
        )
        .unwrap();
        fs::write(dir.join("keys"), keys).unwrap();
        fs::set_permissions(dir.join("keys"), fs::Permissions::from_mode(0o600)).unwrap();
        config
    }

    #[test]
    fn only_a_writing_load_allocates_and_a_read_only_one_finds_it() {
        let dir = scratch("alloc");
        let a = write_node(&dir, "node-a", "192.168.0.1", KEYS);
        let b = write_node(&dir, "node-b", "192.168.0.2", KEYS);
        let state = dir.join("state");
        let err = load(&a, &state, Access::ReadOnly).unwrap_err().to_string();
        assert!(
            err.contains("node node-a has no node ID and pod CIDR"),
            "{err}"
        );
        assert!(
            !dir.join("nodes").exists() && !state.exists(),
            "nothing written"
        );

        let first = read_files(&a, &state, Access::Write, &NoRecords).unwrap();
        let other = read_files(&b, &state, Access::Write, &NoRecords).unwrap();
        assert_ne!(first.identity.0, other.identity.0);
        assert!(!first.identity.1.overlaps(&other.identity.1));
        let seen = load(&a, &state, Access::ReadOnly).unwrap();
        assert_eq!(
            (seen.view.node.id, seen.view.node.pod_cidr),
            first.identity,
            "a read-only load finds the reservation"
        );
        assert_eq!(
            read_files(&a, &state, Access::Write, &NoRecords)
                .unwrap()
                .identity,
            first.identity
        );
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn errors_say_each_thing_once() {
        let dir = scratch("errors");
        let config = write_node(
            &dir,
            "node-a",
            "192.168.0.1",
            "x rfc4106(gcm(aes)) 00 128\n",
        );
        let shown = |e: InputsError| format!("{:#}", anyhow::Error::from(e));
        let bad_key = shown(read_files(&config, &dir, Access::ReadOnly, &NoRecords).unwrap_err());
        assert_eq!(bad_key.matches("field 1 (SPI)").count(), 1, "{bad_key}");
        assert!(bad_key.contains("keys: line 1"), "{bad_key}");

        let missing = shown(
            read_files(&dir.join("nope.toml"), &dir, Access::ReadOnly, &NoRecords).unwrap_err(),
        );
        assert_eq!(missing.matches("os error 2").count(), 1, "{missing}");

        fs::write(&config, "key_file = \n").unwrap();
        let toml = shown(read_files(&config, &dir, Access::ReadOnly, &NoRecords).unwrap_err());
        assert_eq!(toml.matches("TOML parse error").count(), 1, "{toml}");
        let _ = fs::remove_dir_all(dir);
    }
}
