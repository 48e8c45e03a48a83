//! The eBPF object: loading it, its programs, and typed access to its maps.
//!
//! The object is built by the build script and embedded in the binary, so the agent needs
//! nothing on disk. aya-log is compiled into the programs but silenced at load time: a live
//! `debug!` costs about 30 ns per packet even when nobody reads the log.

pub mod bpffs;
pub mod family;
pub mod grid;
pub mod links;
mod maps;
mod pinned;
mod spis;
mod v6;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapError},
    pin::PinError,
    programs::{ProgramError, SchedClassifier, Xdp},
};
pub use maps::{
    CidrMap, ClusterPodCidrs, CounterValues, Counters, LocalPodCidrs, PeerNodes, RemoteCidrs,
    RemotePodCidrs, UdpEncapPort,
};
pub use pinned::Renewed;
pub use spis::{PeerSpis, spi_owner};
pub use v6::{
    ClusterPodCidrsV6, GridV6, GridV6Error, LocalPodCidrsV6, PeerNodesV6, RemotePodCidrsV6,
};
use xsteer_common::{
    maps::{self as map_names, RemotePodCidr},
    programs,
};

use crate::cidr::{Ipv4Cidr, Ipv6Cidr};
use family::MapCidr;

/// The eBPF object, as built by `cargo xtask build-ebpf`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xsteer.bpf.o"));

/// Every map xsteer owns, by pin name. The IPv6 maps came after the others: a pin directory
/// left by an earlier build lacks them, and loading it pins new, empty ones beside the adopted
/// IPv4 maps; so does one left before ESP in UDP, which lacks `udp_encap`.
pub const MAPS: [&str; 18] = [
    map_names::REMOTE_POD_CIDRS,
    map_names::POD_CIDR_GRID,
    map_names::REMOTE_POD_SLOTS,
    map_names::CLUSTER_POD_CIDRS,
    map_names::LOCAL_POD_CIDRS,
    map_names::PEER_NODES,
    map_names::PEER_SPIS,
    map_names::PEER_SPI_SETS,
    map_names::PEER_ESP_STATS,
    map_names::COUNTERS,
    map_names::REMOTE_POD_CIDRS_V6,
    map_names::POD_CIDR_GRID_V6,
    map_names::REMOTE_POD_SLOTS_V6,
    map_names::CLUSTER_POD_CIDRS_V6,
    map_names::LOCAL_POD_CIDRS_V6,
    map_names::PEER_NODES_V6,
    map_names::PEER_ADDRS_V6,
    map_names::UDP_ENCAP,
];

/// Where programs are pinned, under the pin dir.
const PROGRAMS_DIR: &str = "programs";

/// The pin path of the loaded `program` under `pin_dir`: `<pin dir>/programs/<program>`.
///
/// Only the pod classifier is pinned there: the CNI plugin attaches it to a new pod's veth
/// without the agent (`crate::cni`).
pub fn program_pin_path(pin_dir: &Path, program: &str) -> PathBuf {
    pin_dir.join(PROGRAMS_DIR).join(program)
}

/// Why a dataplane operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The kernel refused the object or one of its maps.
    #[error("loading the eBPF object: {0}")]
    Load(aya::EbpfError),
    /// The embedded object could not be parsed.
    #[error("parsing the eBPF object: {0}")]
    Object(String),
    /// A pinned map was created by a build whose layout for it differs from this one's.
    #[error(
        "pinned map {} has {found}, but this build's programs need {expected}: it was left by \
         another version of xsteer. Remove it (`rm {}`): programs attached now keep the old map \
         until they are replaced, and the agent creates and fills a new one before it attaches \
         its own",
        path.display(),
        path.display()
    )]
    PinnedLayout {
        /// The pin.
        path: PathBuf,
        /// The pinned map's layout.
        found: String,
        /// The layout this build needs.
        expected: String,
    },
    /// The object lacks a program or map this build expects.
    #[error("the eBPF object has no {kind} named {name:?}")]
    Missing {
        /// "program" or "map".
        kind: &'static str,
        /// Its name.
        name: &'static str,
    },
    /// A program could not be loaded, attached or run.
    #[error("program {name}: {error}")]
    Program {
        /// The program's name.
        name: &'static str,
        /// What the kernel or aya said.
        error: ProgramError,
    },
    /// A map operation failed.
    #[error("map {name}: {error}")]
    Map {
        /// The map's name.
        name: &'static str,
        /// What the kernel or aya said.
        error: MapError,
    },
    /// A map holds an entry xsteer never writes (written by hand, e.g. with bpftool).
    #[error("map {name}: entry {entry} cannot be read back: {problem}")]
    BadEntry {
        /// The map's name.
        name: &'static str,
        /// The entry, as far as it can be shown.
        entry: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// More entries than a map has room for.
    #[error("map {name}: {given} entries do not fit in its {max}")]
    TooMany {
        /// The map's name.
        name: &'static str,
        /// How many were given.
        given: usize,
        /// Its capacity.
        max: usize,
    },
    /// The number of possible CPUs, which sizes per-CPU values, could not be read.
    #[error("counting possible CPUs: {0}")]
    Cpus(std::io::Error),
    /// The pin directory could not be created.
    #[error("creating pin directory {}: {error}", path.display())]
    PinDir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// A pin could not be renamed or removed.
    #[error("{what} {}: {error}", path.display())]
    PinFile {
        /// What was being done.
        what: &'static str,
        /// The pin.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// A map or program could not be pinned.
    #[error("pinning {}: {error}", path.display())]
    Pin {
        /// Where it was to be pinned.
        path: PathBuf,
        /// What the kernel or aya said.
        error: PinError,
    },
}

/// One family's remote pod maps of `ebpf` (trie, grid, slots), with this process's mirror of
/// the trie.
fn remote_cidrs<'a, C: MapCidr>(
    ebpf: &'a mut Ebpf,
    mirror: &'a mut Option<BTreeMap<C, RemotePodCidr>>,
) -> Result<RemoteCidrs<'a, C>, DataplaneError> {
    let names = C::REMOTE_MAPS;
    let (mut trie, mut grid, mut slots) = (None, None, None);
    for (name, map) in ebpf.maps_mut() {
        if name == names.trie {
            trie = Some(map);
        } else if name == names.grid {
            grid = Some(map);
        } else if name == names.slots {
            slots = Some(map);
        }
    }
    let missing = |name| DataplaneError::Missing { kind: "map", name };
    RemoteCidrs::new(
        trie.ok_or_else(|| missing(names.trie))?,
        grid.ok_or_else(|| missing(names.grid))?,
        slots.ok_or_else(|| missing(names.slots))?,
        mirror,
    )
}

/// The loaded object: maps created in the kernel, programs ready to be loaded and attached.
pub struct Dataplane {
    ebpf: Ebpf,
    /// `remote_pod_cidrs` as this process knows it, read once, then kept by its writes.
    remote_mirror: Option<BTreeMap<Ipv4Cidr, RemotePodCidr>>,
    /// `remote6_cidrs` as this process knows it, read once, then kept by its writes.
    remote6_mirror: Option<BTreeMap<Ipv6Cidr, RemotePodCidr>>,
    /// `peer_spis`' keys as this process knows them, read once, then kept by its writes and
    /// refreshed by every full read.
    spis_mirror: Option<std::collections::BTreeSet<(u32, std::net::Ipv4Addr)>>,
}

impl Dataplane {
    /// Creates the maps in the kernel and prepares the programs, with eBPF logging off.
    pub fn load() -> Result<Self, DataplaneError> {
        let ebpf = EbpfLoader::new()
            .override_global("AYA_LOG_LEVEL", &0u8, true)
            .load(OBJECT)
            .map_err(DataplaneError::Load)?;
        Ok(Dataplane {
            ebpf,
            remote_mirror: None,
            remote6_mirror: None,
            spis_mirror: None,
        })
    }

    /// Loads all four programs into the kernel (the verifier runs here) without attaching.
    pub fn load_programs(&mut self) -> Result<(), DataplaneError> {
        let load = |name, result: Result<(), ProgramError>| {
            result.map_err(|error| DataplaneError::Program { name, error })
        };
        load(programs::POD_CLASSIFIER, self.pod_classifier()?.load())?;
        load(programs::EGRESS_GUARD, self.egress_guard()?.load())?;
        load(programs::INGRESS_GUARD, self.ingress_guard()?.load())?;
        load(programs::INGRESS_GUARD_TC, self.ingress_guard_tc()?.load())
    }

    /// The pod classifier (tc ingress of pod veths).
    pub fn pod_classifier(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        self.program(programs::POD_CLASSIFIER)
    }

    /// The egress guard (tc egress of the uplink).
    pub fn egress_guard(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        self.program(programs::EGRESS_GUARD)
    }

    /// The ingress guard (XDP on the uplink).
    pub fn ingress_guard(&mut self) -> Result<&mut Xdp, DataplaneError> {
        self.program(programs::INGRESS_GUARD)
    }

    /// The ingress guard at tc ingress of the uplink, for a veth.
    pub fn ingress_guard_tc(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        self.program(programs::INGRESS_GUARD_TC)
    }

    fn program<'a, P>(&'a mut self, name: &'static str) -> Result<&'a mut P, DataplaneError>
    where
        &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    {
        let program = self.ebpf.program_mut(name).ok_or(DataplaneError::Missing {
            kind: "program",
            name,
        })?;
        program
            .try_into()
            .map_err(|error| DataplaneError::Program { name, error })
    }

    /// Remote pod CIDR → node and key generation.
    pub fn remote_pod_cidrs(&mut self) -> Result<RemotePodCidrs<'_>, DataplaneError> {
        remote_cidrs(&mut self.ebpf, &mut self.remote_mirror)
    }

    /// The cluster's pod space, which the guards decide "pod address" by. Fill it before
    /// attaching the guards: while it is empty they fall back to this node's pod CIDRs alone.
    pub fn cluster_pod_cidrs(&mut self) -> Result<ClusterPodCidrs<'_>, DataplaneError> {
        ClusterPodCidrs::new(self.map(map_names::CLUSTER_POD_CIDRS)?)
    }

    /// The UDP port this node receives ESP in UDP on, which the ingress guard at tc
    /// decapsulates.
    pub fn udp_encap(&mut self) -> Result<UdpEncapPort<'_>, DataplaneError> {
        UdpEncapPort::new(self.map(map_names::UDP_ENCAP)?)
    }

    /// This node's pod CIDRs.
    pub fn local_pod_cidrs(&mut self) -> Result<LocalPodCidrs<'_>, DataplaneError> {
        CidrMap::new(
            self.map(map_names::LOCAL_POD_CIDRS)?,
            map_names::LOCAL_POD_CIDRS,
        )
    }

    /// Peer node IP → node ID.
    pub fn peer_nodes(&mut self) -> Result<PeerNodes<'_>, DataplaneError> {
        PeerNodes::new(self.map(map_names::PEER_NODES)?)
    }

    /// The SPIs each peer may currently send with, and the ESP accepted from each peer.
    pub fn peer_spis(&mut self) -> Result<PeerSpis<'_>, DataplaneError> {
        let (mut hash, mut sets, mut stats) = (None, None, None);
        for (name, map) in self.ebpf.maps_mut() {
            match name {
                map_names::PEER_SPIS => hash = Some(map),
                map_names::PEER_SPI_SETS => sets = Some(map),
                map_names::PEER_ESP_STATS => stats = Some(map),
                _ => {}
            }
        }
        let missing = |name| DataplaneError::Missing { kind: "map", name };
        PeerSpis::new(
            hash.ok_or_else(|| missing(map_names::PEER_SPIS))?,
            sets.ok_or_else(|| missing(map_names::PEER_SPI_SETS))?,
            stats.ok_or_else(|| missing(map_names::PEER_ESP_STATS))?,
            &mut self.spis_mirror,
        )
    }

    /// Remote IPv6 pod CIDR → node and key generation.
    pub fn remote_pod_cidrs_v6(&mut self) -> Result<RemotePodCidrsV6<'_>, DataplaneError> {
        remote_cidrs(&mut self.ebpf, &mut self.remote6_mirror)
    }

    /// The cluster's IPv6 pod space; empty, the guards leave IPv6 alone.
    pub fn cluster_pod_cidrs_v6(&mut self) -> Result<ClusterPodCidrsV6<'_>, DataplaneError> {
        ClusterPodCidrsV6::new(self.map(map_names::CLUSTER_POD_CIDRS_V6)?)
    }

    /// This node's IPv6 pod CIDRs.
    pub fn local_pod_cidrs_v6(&mut self) -> Result<LocalPodCidrsV6<'_>, DataplaneError> {
        CidrMap::new(
            self.map(map_names::LOCAL_POD_CIDRS_V6)?,
            map_names::LOCAL_POD_CIDRS_V6,
        )
    }

    /// Peer node IPv6 address → node ID.
    pub fn peer_nodes_v6(&mut self) -> Result<PeerNodesV6<'_>, DataplaneError> {
        let (mut hash, mut addrs) = (None, None);
        for (name, map) in self.ebpf.maps_mut() {
            match name {
                map_names::PEER_NODES_V6 => hash = Some(map),
                map_names::PEER_ADDRS_V6 => addrs = Some(map),
                _ => {}
            }
        }
        let missing = |name| DataplaneError::Missing { kind: "map", name };
        PeerNodesV6::new(
            hash.ok_or_else(|| missing(map_names::PEER_NODES_V6))?,
            addrs.ok_or_else(|| missing(map_names::PEER_ADDRS_V6))?,
        )
    }

    /// The per-verdict packet counters.
    pub fn counters(&mut self) -> Result<Counters<'_>, DataplaneError> {
        Counters::new(self.map(map_names::COUNTERS)?)
    }

    fn map(&mut self, name: &'static str) -> Result<&mut Map, DataplaneError> {
        self.ebpf
            .map_mut(name)
            .ok_or(DataplaneError::Missing { kind: "map", name })
    }

    /// Pins the loaded pod classifier at [`program_pin_path`], replacing the one a previous
    /// agent pinned.
    ///
    /// The program is pinned under a temporary name and renamed over the old pin: bpffs renames
    /// atomically, so a CNI plugin opening the pin at that moment finds the old program or the
    /// new one, never none.
    pub fn pin_pod_classifier(&mut self, pin_dir: &Path) -> Result<(), DataplaneError> {
        let path = program_pin_path(pin_dir, programs::POD_CLASSIFIER);
        // bpffs refuses names with a dot (EPERM), so no `.new`.
        let fresh = path.with_file_name(format!("{}-new", programs::POD_CLASSIFIER));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|error| DataplaneError::PinDir {
                path: dir.to_owned(),
                error,
            })?;
        }
        let file_error = |what, path: &Path| {
            let path = path.to_owned();
            move |error| DataplaneError::PinFile { what, path, error }
        };
        // A temporary pin left by an agent that died between pinning and renaming.
        match std::fs::remove_file(&fresh) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(file_error("removing", &fresh)(e));
            }
            _ => {}
        }
        self.pod_classifier()?
            .pin(&fresh)
            .map_err(|error| DataplaneError::Pin {
                path: fresh.clone(),
                error,
            })?;
        std::fs::rename(&fresh, &path).map_err(file_error("renaming a pin to", &path))
    }

    /// Pins every map under `dir` by its name, so bpftool and a restarted agent can reach it.
    pub fn pin_maps(&mut self, dir: &Path) -> Result<(), DataplaneError> {
        for name in MAPS {
            let path = dir.join(name);
            self.map(name)?
                .pin(&path)
                .map_err(|error| DataplaneError::Pin { path, error })?;
        }
        Ok(())
    }
}
