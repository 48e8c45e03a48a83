//! Where peers come from: node records, one per node, that each agent publishes and reads.
//!
//! The source is a trait so that a Kubernetes source (node annotations, a CRD) can replace the
//! default without touching the agent. The default, [`DirSource`], is a directory shared by the
//! nodes (in the lab, a plain directory; in a cluster, anything that syncs files) holding one
//! JSON file per node, written atomically by that node's agent. A record that cannot be read or
//! is invalid never hides the others: it is reported and skipped, and the agent keeps the last
//! good version of that node.

use std::{
    collections::BTreeMap,
    fs::{self, OpenOptions},
    io::{self, Write},
    net::Ipv4Addr,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

use crate::{cidr::Ipv4Cidr, config::Peer, keys::Epoch};

/// The record format this build writes and reads. Version 2 added re-keying (`next_epoch`,
/// `acks`) and the wire SPI that names both epochs; nodes of version 1 cannot talk to it.
pub const RECORD_VERSION: u32 = 2;

/// What a node tells the others about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    /// Node name, unique in the cluster.
    pub name: String,
    /// The IP its ESP tunnels start and end at.
    pub ip: Ipv4Addr,
    /// Node ID, 1..=65535.
    pub id: u16,
    /// The CIDR of its pods.
    pub pod_cidr: Ipv4Cidr,
    /// Its current epoch (an input of every SA key shared with it).
    pub epoch: Epoch,
    /// The epoch it is re-keying to, if it is; it has IN SAs for it from every peer it knows.
    pub next_epoch: Option<Epoch>,
    /// For each peer that is re-keying, the peer's `next_epoch`: it has SAs for it both ways.
    /// Only peers in the middle of a re-key are listed, so records stay small.
    pub acks: BTreeMap<String, Epoch>,
    /// The key generations it can receive (it has IN SAs for them).
    pub generations: Vec<u8>,
}

impl NodeRecord {
    /// This record as a peer of the node named `reader`.
    pub fn peer(&self, reader: &str) -> Peer {
        Peer {
            name: self.name.clone(),
            ip: self.ip,
            id: self.id,
            pod_cidrs: vec![self.pod_cidr],
            epoch: self.epoch,
            next_epoch: self.next_epoch,
            acked_epoch: self.acks.get(reader).copied(),
            generations: Some(self.generations.clone()),
        }
    }
}

/// The JSON form: strings for addresses and the epoch, checked on the way in.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    version: u32,
    name: String,
    ip: String,
    id: i64,
    pod_cidr: String,
    epoch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next_epoch: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    acks: BTreeMap<String, String>,
    generations: Vec<i64>,
}

/// Why a record could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file could not be read.
    #[error("node record {}: {source}", path.display())]
    Io {
        /// The record's file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The file is not a record.
    #[error("node record {}: {source}", path.display())]
    Json {
        /// The record's file.
        path: PathBuf,
        /// What the parser said, with line and column.
        source: serde_json::Error,
    },
    /// A field is invalid.
    #[error("node record {}: {field}: {problem}", path.display())]
    Field {
        /// The record's file.
        path: PathBuf,
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

fn parse_record(path: &Path, text: &str) -> Result<NodeRecord, RecordError> {
    let raw: RawRecord = serde_json::from_str(text).map_err(|source| RecordError::Json {
        path: path.to_owned(),
        source,
    })?;
    let field = |field, problem: String| RecordError::Field {
        path: path.to_owned(),
        field,
        problem,
    };
    if raw.version != RECORD_VERSION {
        return Err(field(
            "version",
            format!("{} is not {RECORD_VERSION}", raw.version),
        ));
    }
    if raw.name.is_empty() || raw.name.contains(char::is_whitespace) {
        return Err(field(
            "name",
            format!("{:?} is empty or has whitespace", raw.name),
        ));
    }
    let ip = raw
        .ip
        .parse()
        .map_err(|_| field("ip", format!("{:?} is not an IPv4 address", raw.ip)))?;
    let id = u16::try_from(raw.id)
        .ok()
        .filter(|&id| id > 0)
        .ok_or_else(|| field("id", format!("{} is not in 1..=65535", raw.id)))?;
    let pod_cidr = raw
        .pod_cidr
        .parse()
        .map_err(|e| field("pod_cidr", format!("{e}")))?;
    let epoch = raw
        .epoch
        .parse()
        .map_err(|e| field("epoch", format!("{e}")))?;
    let next_epoch = raw
        .next_epoch
        .map(|e| e.parse())
        .transpose()
        .map_err(|e| field("next_epoch", format!("{e}")))?;
    if next_epoch == Some(epoch) {
        return Err(field(
            "next_epoch",
            "is the same as epoch: a re-key needs a new one".into(),
        ));
    }
    let mut acks = BTreeMap::new();
    for (node, e) in raw.acks {
        let e: Epoch = e
            .parse()
            .map_err(|e| field("acks", format!("{node}: {e}")))?;
        acks.insert(node, e);
    }
    let mut generations = Vec::new();
    for g in raw.generations {
        match u8::try_from(g).ok().filter(|g| (1..=15).contains(g)) {
            Some(g) => generations.push(g),
            None => return Err(field("generations", format!("{g} is not in 1..=15"))),
        }
    }
    Ok(NodeRecord {
        name: raw.name,
        ip,
        id,
        pod_cidr,
        epoch,
        next_epoch,
        acks,
        generations,
    })
}

fn render(record: &NodeRecord) -> String {
    let raw = RawRecord {
        version: RECORD_VERSION,
        name: record.name.clone(),
        ip: record.ip.to_string(),
        id: i64::from(record.id),
        pod_cidr: record.pod_cidr.to_string(),
        epoch: record.epoch.to_string(),
        next_epoch: record.next_epoch.map(|e| e.to_string()),
        acks: record
            .acks
            .iter()
            .map(|(node, e)| (node.clone(), e.to_string()))
            .collect(),
        generations: record.generations.iter().map(|&g| i64::from(g)).collect(),
    };
    serde_json::to_string_pretty(&raw).expect("a record always serializes") + "\n"
}

/// Every record a source holds, and the ones it could not use.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Valid records, by node name.
    pub records: BTreeMap<String, NodeRecord>,
    /// Records that could not be used, with why.
    pub problems: Vec<RecordError>,
}

/// A place node records are published to and read from.
pub trait NodeSource {
    /// Publishes (or replaces) this node's record.
    fn publish(&self, record: &NodeRecord) -> io::Result<()>;
    /// Removes the record of node `name`.
    fn withdraw(&self, name: &str) -> io::Result<()>;
    /// Reads every record.
    fn snapshot(&self) -> io::Result<Snapshot>;
    /// Something that changes whenever a record may have changed (cheap to compute).
    fn version(&self) -> io::Result<Vec<(String, SystemTime, u64)>>;
}

/// Node records as `<name>.json` files in one directory.
#[derive(Clone, Debug)]
pub struct DirSource {
    dir: PathBuf,
}

impl DirSource {
    /// The source in `dir`, created if missing.
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<DirSource> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(DirSource { dir })
    }

    fn record_files(&self) -> io::Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            // Temporary files of a publish in progress start with a dot.
            if name.is_some_and(|n| n.ends_with(".json") && !n.starts_with('.')) {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }
}

impl NodeSource for DirSource {
    fn publish(&self, record: &NodeRecord) -> io::Result<()> {
        let path = self.dir.join(format!("{}.json", record.name));
        let tmp = self.dir.join(format!(".{}.json.tmp", record.name));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        file.write_all(render(record).as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(&self.dir)?.sync_all()
    }

    fn withdraw(&self, name: &str) -> io::Result<()> {
        match fs::remove_file(self.dir.join(format!("{name}.json"))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn snapshot(&self) -> io::Result<Snapshot> {
        let mut snapshot = Snapshot::default();
        for path in self.record_files()? {
            let parsed = fs::read_to_string(&path)
                .map_err(|source| RecordError::Io {
                    path: path.clone(),
                    source,
                })
                .and_then(|text| parse_record(&path, &text));
            match parsed {
                Ok(record) => {
                    snapshot.records.insert(record.name.clone(), record);
                }
                Err(problem) => snapshot.problems.push(problem),
            }
        }
        Ok(snapshot)
    }

    fn version(&self) -> io::Result<Vec<(String, SystemTime, u64)>> {
        self.record_files()?
            .into_iter()
            .map(|path| {
                let meta = fs::metadata(&path)?;
                Ok((
                    path.to_string_lossy().into_owned(),
                    meta.modified()?,
                    meta.len(),
                ))
            })
            .collect()
    }
}

/// The prefix length of the pod CIDRs carved from a cluster CIDR.
pub const ALLOCATED_PREFIX_LEN: u8 = 24;

/// Why no node ID or pod CIDR could be allocated.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// The nodes directory or its lock could not be used.
    #[error("allocating in {}: {source}", dir.display())]
    Io {
        /// The nodes directory.
        dir: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// Every node ID is taken.
    #[error("no free node ID is left in {}", dir.display())]
    NoId {
        /// The nodes directory.
        dir: PathBuf,
    },
    /// The cluster CIDR has no free /24 left.
    #[error("cluster_cidr {cluster} has no free /{ALLOCATED_PREFIX_LEN} left for node {name}")]
    NoCidr {
        /// The cluster CIDR.
        cluster: Ipv4Cidr,
        /// The node asking.
        name: String,
    },
}

/// What a node holds: a reservation (`.alloc/<name>`: "ID CIDR") or a published record.
fn taken(dir: &Path) -> io::Result<BTreeMap<String, (u16, Ipv4Cidr)>> {
    let mut taken = BTreeMap::new();
    let source = DirSource {
        dir: dir.to_owned(),
    };
    if let Ok(snapshot) = source.snapshot() {
        for (name, r) in snapshot.records {
            taken.insert(name, (r.id, r.pod_cidr));
        }
    }
    for entry in fs::read_dir(dir.join(".alloc"))? {
        let entry = entry?;
        let text = fs::read_to_string(entry.path())?;
        let mut words = text.split_whitespace();
        if let (Some(Ok(id)), Some(Ok(cidr))) = (
            words.next().map(str::parse::<u16>),
            words.next().map(str::parse::<Ipv4Cidr>),
        ) {
            taken.insert(entry.file_name().to_string_lossy().into_owned(), (id, cidr));
        }
    }
    Ok(taken)
}

/// Gives node `name` a node ID and a /24 pod CIDR from `cluster` that no other node in `dir`
/// holds, and reserves them there; a node that already holds a reservation gets it back, so a
/// restart changes nothing. Allocations are serialised with an exclusive lock on
/// `dir/.alloc.lock`, so nodes starting at the same time never get the same ID or CIDR.
pub fn allocate(dir: &Path, name: &str, cluster: Ipv4Cidr) -> Result<(u16, Ipv4Cidr), AllocError> {
    let io_error = |source| AllocError::Io {
        dir: dir.to_owned(),
        source,
    };
    fs::create_dir_all(dir.join(".alloc")).map_err(io_error)?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".alloc.lock"))
        .map_err(io_error)?;
    // SAFETY: flock on an open descriptor; released when `lock` is closed.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        return Err(io_error(io::Error::last_os_error()));
    }
    let taken = taken(dir).map_err(io_error)?;
    if let Some(&held) = taken.get(name) {
        return Ok(held);
    }
    let id = (1..=u16::MAX)
        .find(|id| taken.values().all(|(t, _)| t != id))
        .ok_or_else(|| AllocError::NoId {
            dir: dir.to_owned(),
        })?;
    let no_cidr = || AllocError::NoCidr {
        cluster,
        name: name.to_owned(),
    };
    if cluster.prefix_len() > ALLOCATED_PREFIX_LEN {
        return Err(no_cidr());
    }
    let base = u32::from(cluster.addr());
    let blocks = 1u32 << (ALLOCATED_PREFIX_LEN - cluster.prefix_len());
    let cidr = (0..blocks)
        .filter_map(|i| {
            Ipv4Cidr::new(
                Ipv4Addr::from(base + (i << (32 - ALLOCATED_PREFIX_LEN))),
                ALLOCATED_PREFIX_LEN,
            )
            .ok()
        })
        .find(|c| taken.values().all(|(_, t)| !t.overlaps(c)))
        .ok_or_else(no_cidr)?;
    let tmp = dir.join(".alloc").join(format!(".{name}.tmp"));
    fs::write(&tmp, format!("{id} {cidr}\n"))
        .and_then(|()| fs::rename(&tmp, dir.join(".alloc").join(name)))
        .map_err(io_error)?;
    Ok((id, cidr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, id: u16) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            ip: Ipv4Addr::new(192, 168, 0, id as u8),
            id,
            pod_cidr: format!("10.244.{id}.0/24").parse().unwrap(),
            epoch: Epoch::from_bytes([id as u8; 16]),
            next_epoch: None,
            acks: BTreeMap::new(),
            generations: vec![3, 4],
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xsteer-nodes-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn concurrent_allocations_never_collide_and_restarts_keep_theirs() {
        let dir = temp_dir("alloc");
        let cluster: Ipv4Cidr = "10.244.0.0/20".parse().unwrap();
        // A node that published a record before holds its ID and CIDR.
        DirSource::new(&dir)
            .unwrap()
            .publish(&record("old", 1))
            .unwrap();
        let handles: Vec<_> = (0..15)
            .map(|i| {
                let dir = dir.clone();
                std::thread::spawn(move || allocate(&dir, &format!("n{i}"), cluster).unwrap())
            })
            .collect();
        let got: Vec<(u16, Ipv4Cidr)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let ids: std::collections::BTreeSet<u16> = got.iter().map(|g| g.0).collect();
        assert_eq!(ids.len(), 15, "{got:?}");
        assert!(!ids.contains(&1), "the published node's ID is taken");
        for (i, (_, a)) in got.iter().enumerate() {
            assert!(a.prefix_len() == 24 && cluster.contains(a.addr()));
            assert!(
                !a.overlaps(&"10.244.1.0/24".parse().unwrap()),
                "the published CIDR is taken"
            );
            for (_, b) in &got[i + 1..] {
                assert!(!a.overlaps(b), "{a} and {b}");
            }
        }
        assert_eq!(
            allocate(&dir, "n3", cluster).unwrap(),
            got[3],
            "a restart keeps its own"
        );
        // 16 /24s in a /20: one was published, 15 allocated; the next finds none.
        let err = allocate(&dir, "late", cluster).unwrap_err().to_string();
        assert!(
            err.contains("cluster_cidr 10.244.0.0/20 has no free /24 left for node late"),
            "{err}"
        );
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn records_round_trip_through_the_directory() {
        let dir = temp_dir("round-trip");
        let source = DirSource::new(&dir).unwrap();
        source.publish(&record("a", 1)).unwrap();
        source.publish(&record("b", 2)).unwrap();
        let before = source.version().unwrap();
        let mut changed = record("b", 2);
        changed.generations = vec![4, 5];
        changed.next_epoch = Some(Epoch::from_bytes([0xB2; 16]));
        changed
            .acks
            .insert("a".into(), Epoch::from_bytes([0xA1; 16]));
        source.publish(&changed).unwrap();
        let snapshot = source.snapshot().unwrap();
        assert!(snapshot.problems.is_empty(), "{:?}", snapshot.problems);
        assert_eq!(snapshot.records["a"], record("a", 1));
        assert_eq!(snapshot.records["b"], changed);
        assert_ne!(
            source.version().unwrap(),
            before,
            "a changed record changes the version"
        );
        source.withdraw("a").unwrap();
        source.withdraw("a").unwrap();
        assert_eq!(source.snapshot().unwrap().records.len(), 1);
        let mode = fs::metadata(dir.join("b.json")).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o644
        );
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_bad_record_is_reported_by_file_and_field_and_hides_nothing() {
        let dir = temp_dir("bad");
        let source = DirSource::new(&dir).unwrap();
        source.publish(&record("a", 1)).unwrap();
        let good = render(&record("c", 3));
        for (file, text, expect) in [
            (
                "b.json",
                "{ not json".to_owned(),
                "b.json: key must be a string",
            ),
            (
                "d.json",
                good.replace("10.244.3.0/24", "10.244.3.5/24"),
                "d.json: pod_cidr",
            ),
            (
                "e.json",
                good.replace("\"id\": 3", "\"id\": 0"),
                "e.json: id: 0 is not in 1..=65535",
            ),
            (
                "f.json",
                good.replace("\"ip\": \"192.168.0.3\"", "\"ip\": \"300.1.1.1\""),
                "f.json: ip",
            ),
            (
                "g.json",
                good.replace("[\n    3,", "[\n    16,"),
                "g.json: generations: 16",
            ),
            (
                "h.json",
                good.replace("\"version\": 2", "\"version\": 1"),
                "h.json: version: 1 is not 2",
            ),
            (
                "i.json",
                good.replace(
                    "\"generations\"",
                    "\"next_epoch\": \"03030303030303030303030303030303\",\n  \"generations\"",
                ),
                "i.json: next_epoch: is the same as epoch",
            ),
            (
                "j.json",
                good.replace(
                    "\"generations\"",
                    "\"acks\": { \"a\": \"0011\" },\n  \"generations\"",
                ),
                "j.json: acks: a:",
            ),
        ] {
            fs::write(dir.join(file), text).unwrap();
            let snapshot = source.snapshot().unwrap();
            let shown: Vec<String> = snapshot.problems.iter().map(ToString::to_string).collect();
            assert!(
                shown.iter().any(|s| s.contains(expect)),
                "{expect}: {shown:?}"
            );
            assert_eq!(snapshot.records.len(), 1, "the good record is still there");
            fs::remove_file(dir.join(file)).unwrap();
        }
        // Temporary files of a publish in progress are not records.
        fs::write(dir.join(".x.json.tmp"), "{").unwrap();
        assert!(source.snapshot().unwrap().problems.is_empty());
        let _ = fs::remove_dir_all(dir);
    }
}
