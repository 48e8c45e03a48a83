//! Node records as `<name>.json` files in one directory shared by the nodes: in the lab a plain
//! directory, in a cluster anything that syncs files. Each agent writes its own file atomically
//! (a temporary file renamed over it) and reads the others'.
//!
//! Whoever can write the directory can write records, so reading is careful: only regular
//! files, not through a symlink, opened without blocking (a FIFO named `*.json` must not hang
//! the agent), at most [`MAX_RECORD_BYTES`], and a file holds the record of the node it is
//! named after. A node removed on purpose (`xsteer node remove`) leaves a marker in
//! `.removed/<name>`, which its own agent clears if it publishes again.

use std::{
    collections::BTreeSet,
    fs::{self, File, OpenOptions},
    io::{self, Read},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::SystemTime,
};

use futures::StreamExt;

use super::{Changes, NodeRecord, NodeSource, RecordError, Snapshot, SourceError};
use crate::{durable, watch::DirWatch};

/// The largest record file read; a record is a few hundred bytes.
pub const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// Where removal markers live, under the directory.
const REMOVED_DIR: &str = ".removed";

/// What changes whenever a record file or a removal may have changed: (path, mtime, length) of
/// each.
type Version = Vec<(PathBuf, SystemTime, u64)>;

/// Node records as `<name>.json` files in one directory.
#[derive(Debug)]
pub struct DirSource {
    dir: PathBuf,
    /// The version of the last read, to skip re-reading an unchanged directory.
    last: Option<Version>,
}

impl DirSource {
    /// The source in `dir`, created if missing.
    pub fn new(dir: impl Into<PathBuf>) -> Result<DirSource, SourceError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_error(format!("creating {}", dir.display())))?;
        Ok(DirSource::existing(dir))
    }

    /// The source in `dir`, which is not created: a missing directory holds no records.
    pub fn existing(dir: impl Into<PathBuf>) -> DirSource {
        DirSource {
            dir: dir.into(),
            last: None,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn record_files(&self) -> io::Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(files),
            Err(e) => return Err(e),
        };
        for entry in entries {
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

    fn version(&self, files: &[PathBuf]) -> io::Result<Version> {
        let mut version: Version = files
            .iter()
            .map(|path| {
                let meta = fs::symlink_metadata(path)?;
                Ok((path.clone(), meta.modified()?, meta.len()))
            })
            .collect::<io::Result<_>>()?;
        for name in self.removed()? {
            version.push((
                self.dir.join(REMOVED_DIR).join(name),
                SystemTime::UNIX_EPOCH,
                0,
            ));
        }
        Ok(version)
    }

    /// The nodes removed on purpose.
    fn removed(&self) -> io::Result<BTreeSet<String>> {
        match fs::read_dir(self.dir.join(REMOVED_DIR)) {
            Ok(entries) => entries
                .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
                .filter(|name| !name.as_ref().is_ok_and(|n: &String| n.starts_with('.')))
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeSet::new()),
            Err(e) => Err(e),
        }
    }

    /// Reads every record file, whatever the version.
    fn read_all(&self, files: &[PathBuf]) -> io::Result<Snapshot> {
        let mut snapshot = Snapshot {
            removed: self.removed()?,
            ..Snapshot::default()
        };
        for path in files {
            let node = node_name(path);
            let origin = format!("node record {}", path.display());
            match read_record(path, &origin).and_then(|r| named_after(r, &node, &origin)) {
                Ok(record) => {
                    snapshot.records.insert(record.name.clone(), record);
                }
                Err(problem) => {
                    snapshot.problems.insert(node, problem);
                }
            }
        }
        Ok(snapshot)
    }

    /// Marks node `name` as removed on purpose and takes its record and its reservation away.
    pub fn remove(&self, name: &str) -> Result<(), SourceError> {
        let marker = self.dir.join(REMOVED_DIR).join(name);
        let mark = || -> io::Result<()> {
            fs::create_dir_all(self.dir.join(REMOVED_DIR))?;
            durable::replace(&marker, b"removed by xsteer node remove\n", 0o644)
        };
        mark().map_err(io_error(format!("writing {}", marker.display())))?;
        self.withdraw(name)?;
        let reservation = self.dir.join(".alloc").join(name);
        match fs::remove_file(&reservation) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_error(format!("removing {}", reservation.display()))(e))
            }
            _ => Ok(()),
        }
    }

    /// Removes the record of node `name`.
    pub fn withdraw(&self, name: &str) -> Result<(), SourceError> {
        let path = self.dir.join(format!("{name}.json"));
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_error(format!("removing {}", path.display()))(e))
            }
            _ => Ok(()),
        }
    }
}

/// Reads the record at `path`: a regular file, not a symlink, read without blocking, at most
/// [`MAX_RECORD_BYTES`].
fn read_record(path: &Path, origin: &str) -> Result<NodeRecord, RecordError> {
    let refused = |why: &str| RecordError::Read {
        origin: origin.to_owned(),
        error: io::Error::new(io::ErrorKind::InvalidInput, why.to_owned()),
    };
    let read_error = |error| RecordError::Read {
        origin: origin.to_owned(),
        error,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                refused("a symlink, not a record file")
            } else {
                read_error(e)
            }
        })?;
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(refused("not a regular file"));
    }
    if meta.len() > MAX_RECORD_BYTES {
        return Err(refused(&format!("larger than {MAX_RECORD_BYTES} bytes")));
    }
    let mut text = String::new();
    File::take(file, MAX_RECORD_BYTES)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    NodeRecord::parse(origin, &text)
}

/// `record`, if it is the record of `node`, the node its file is named after: a record can
/// never stand in for another node's.
fn named_after(record: NodeRecord, node: &str, origin: &str) -> Result<NodeRecord, RecordError> {
    if record.name == node {
        return Ok(record);
    }
    Err(RecordError::Field {
        origin: origin.to_owned(),
        field: "name",
        problem: format!(
            "{:?} is not the node the file is named after ({node:?})",
            record.name
        ),
    })
}

/// The node a record file stands for: its file stem.
fn node_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn io_error(what: String) -> impl FnOnce(io::Error) -> SourceError {
    move |error| SourceError::Io { what, error }
}

impl NodeSource for DirSource {
    fn read(&mut self) -> Result<Option<Snapshot>, SourceError> {
        let listing = || format!("reading node records in {}", self.dir.display());
        let files = self.record_files().map_err(io_error(listing()))?;
        let version = self.version(&files).map_err(io_error(listing()))?;
        if self.last.as_ref() == Some(&version) {
            return Ok(None);
        }
        let snapshot = self.read_all(&files).map_err(io_error(listing()))?;
        self.last = Some(version);
        Ok(Some(snapshot))
    }

    fn publish(&mut self, record: &NodeRecord) -> Result<(), SourceError> {
        let path = self.dir.join(format!("{}.json", record.name));
        let write = || -> io::Result<()> {
            fs::create_dir_all(&self.dir)?;
            // A node that publishes is back, whatever removed it before.
            match fs::remove_file(self.dir.join(REMOVED_DIR).join(&record.name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            durable::replace(&path, record.render().as_bytes(), 0o644)
        };
        write().map_err(io_error(format!("publishing {}", path.display())))
    }

    fn changes(&self) -> Result<Changes, SourceError> {
        let watch = DirWatch::new([self.dir.as_path()])
            .map_err(io_error(format!("watching {}", self.dir.display())))?;
        let dir = self.dir.clone();
        Ok(futures::stream::unfold(watch, move |watch| {
            let dir = dir.clone();
            async move {
                let woken = watch.changed().await.map_err(|error| SourceError::Io {
                    what: format!("watching {}", dir.display()),
                    error,
                });
                Some((woken, watch))
            }
        })
        .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        keys::{Epoch, Generation},
        nodes::record::test_record as record,
    };

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xsteer-nodes-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn records_round_trip_through_the_directory() {
        let dir = temp_dir("round-trip");
        let mut source = DirSource::new(&dir).unwrap();
        source.publish(&record("a", 1)).unwrap();
        source.publish(&record("b", 2)).unwrap();
        let before = source.read().unwrap().unwrap();
        assert_eq!(before.records.len(), 2);
        assert!(source.read().unwrap().is_none(), "nothing changed");
        let mut changed = record("b", 2);
        changed.generations = [4, 5].map(|g| Generation::new(g).unwrap()).to_vec();
        changed.next_epoch = Some(Epoch::from_bytes([0xB2; 16]));
        changed
            .acks
            .insert("a".into(), Epoch::from_bytes([0xA1; 16]));
        source.publish(&changed).unwrap();
        let snapshot = source.read().unwrap().expect("changed");
        assert!(snapshot.problems.is_empty(), "{:?}", snapshot.problems);
        assert_eq!(snapshot.records["a"], record("a", 1));
        assert_eq!(
            snapshot.records["b"], changed,
            "a changed record is read again"
        );
        source.withdraw("a").unwrap();
        source.withdraw("a").unwrap();
        assert_eq!(source.read().unwrap().unwrap().records.len(), 1);
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
        let mut source = DirSource::new(&dir).unwrap();
        source.publish(&record("a", 1)).unwrap();
        let good = record("c", 3).render();
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
                good.replace("\"version\": 3", "\"version\": 2"),
                "h.json: version: 2 is not 3",
            ),
            (
                "k.json",
                good.replace("\"generations\"", "\"per_cpu_sas\": 64,\n  \"generations\""),
                "k.json: per_cpu_sas: 64 is not in 0..=63",
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
            let snapshot = source.read().unwrap().expect("changed");
            let shown: Vec<String> = snapshot
                .problems
                .values()
                .map(ToString::to_string)
                .collect();
            assert!(
                shown.iter().any(|s| s.contains(expect)),
                "{expect}: {shown:?}"
            );
            let node = file.trim_end_matches(".json");
            assert!(snapshot.problems.contains_key(node), "named by its node");
            assert_eq!(snapshot.records.len(), 1, "the good record is still there");
            fs::remove_file(dir.join(file)).unwrap();
        }
        // Temporary files of a publish in progress are not records.
        fs::write(dir.join(".x.json.tmp"), "{").unwrap();
        let snapshot = DirSource::new(&dir).unwrap().read().unwrap().unwrap();
        assert!(snapshot.problems.is_empty());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn only_a_regular_file_named_after_its_node_is_read() {
        let dir = temp_dir("untrusted");
        let mut source = DirSource::new(&dir).unwrap();
        source.publish(&record("a", 1)).unwrap();
        // An impostor: a file whose record names another node.
        let b = record("b", 2).render();
        fs::write(dir.join("zzz.json"), &b).unwrap();
        // A FIFO would block a plain open; a symlink to a device would read forever.
        nix::unistd::mkfifo(&dir.join("fifo.json"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.join("zero.json")).unwrap();
        fs::write(
            dir.join("big.json"),
            " ".repeat(MAX_RECORD_BYTES as usize + 1),
        )
        .unwrap();
        let snapshot = source.read().unwrap().unwrap();
        assert_eq!(snapshot.records.keys().collect::<Vec<_>>(), ["a"]);
        let why = |node: &str| snapshot.problems[node].to_string();
        assert!(
            why("zzz").contains("name: \"b\" is not the node the file is named after (\"zzz\")"),
            "{}",
            why("zzz")
        );
        assert!(
            why("fifo").contains("not a regular file"),
            "{}",
            why("fifo")
        );
        assert!(why("zero").contains("a symlink"), "{}", why("zero"));
        assert!(
            why("big").contains("larger than 65536 bytes"),
            "{}",
            why("big")
        );
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_removed_node_is_marked_until_it_publishes_again() {
        let dir = temp_dir("removed");
        let mut source = DirSource::new(&dir).unwrap();
        source.publish(&record("b", 2)).unwrap();
        fs::create_dir_all(dir.join(".alloc")).unwrap();
        fs::write(dir.join(".alloc/b"), "2 10.244.2.0/24\n").unwrap();
        source.remove("b").unwrap();
        let snapshot = source.read().unwrap().unwrap();
        assert!(snapshot.records.is_empty());
        assert!(snapshot.removed.contains("b"));
        assert!(
            !dir.join(".alloc/b").exists(),
            "its reservation is free again"
        );
        source.publish(&record("b", 2)).unwrap();
        let snapshot = source.read().unwrap().unwrap();
        assert!(snapshot.removed.is_empty() && snapshot.records.contains_key("b"));
        let _ = fs::remove_dir_all(dir);
    }
}
