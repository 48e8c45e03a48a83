//! Node IDs and pod CIDRs for nodes whose config gives none, carved from the cluster CIDR.
//!
//! Reservations live in the node records directory (`.alloc/<name>`, one line "ID CIDR"), beside
//! the published records, which count as taken too. Reserving is an explicit step of the agent's
//! start: reading a config never reserves anything, and [`lookup`] only reads. A chosen ID and
//! CIDR can also be reserved ahead of the agent ([`reserve`]), as a control plane assigns pod
//! CIDRs: the end-to-end test that runs the DaemonSet's config on the lab's nodes does.

use std::{
    collections::BTreeMap,
    fs::{self, OpenOptions},
    io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

use super::{DirSource, NodeSource};
use crate::cidr::{Ipv4Cidr, NODE_POD_PREFIX_LEN};

/// Why no node ID or pod CIDR could be allocated.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// The nodes directory or its lock could not be used.
    #[error("allocating in {}: {error}", dir.display())]
    Io {
        /// The nodes directory.
        dir: PathBuf,
        /// What the OS said.
        error: io::Error,
    },
    /// Every node ID is taken.
    #[error("no free node ID is left in {}", dir.display())]
    NoId {
        /// The nodes directory.
        dir: PathBuf,
    },
    /// A reservation asks for a node ID or pod CIDR another node holds.
    #[error("node ID {id} or pod CIDR {cidr} is held by node {holder}")]
    Taken {
        /// The node ID asked for.
        id: u16,
        /// The pod CIDR asked for.
        cidr: Ipv4Cidr,
        /// The node that holds one of them.
        holder: String,
    },
    /// The cluster CIDR has no free /24 left.
    #[error("cluster_cidr {cluster} has no free /{NODE_POD_PREFIX_LEN} left for node {name}")]
    NoCidr {
        /// The cluster CIDR.
        cluster: Ipv4Cidr,
        /// The node asking.
        name: String,
    },
}

/// What each node holds: a reservation (`.alloc/<name>`: "ID CIDR") or a published record.
fn taken(dir: &Path) -> io::Result<BTreeMap<String, (u16, Ipv4Cidr)>> {
    let mut taken = BTreeMap::new();
    let snapshot = DirSource::existing(dir).read().ok().flatten();
    for (name, r) in snapshot.map(|s| s.records).unwrap_or_default() {
        taken.insert(name, (r.id, r.pod_cidr));
    }
    let reservations = match fs::read_dir(dir.join(".alloc")) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(taken),
        Err(e) => return Err(e),
    };
    for entry in reservations {
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

/// The node ID and pod CIDR node `name` holds in `dir`, if any; writes nothing.
pub fn lookup(dir: &Path, name: &str) -> Result<Option<(u16, Ipv4Cidr)>, AllocError> {
    let held = taken(dir).map_err(|error| AllocError::Io {
        dir: dir.to_owned(),
        error,
    })?;
    Ok(held.get(name).copied())
}

/// Gives node `name` a node ID and a /24 pod CIDR from `cluster` that no other node in `dir`
/// holds, and reserves them there; a node that already holds a reservation gets it back, so a
/// restart changes nothing. Allocations are serialised with an exclusive lock on
/// `dir/.alloc.lock`, so nodes starting at the same time never get the same ID or CIDR.
pub fn allocate(dir: &Path, name: &str, cluster: Ipv4Cidr) -> Result<(u16, Ipv4Cidr), AllocError> {
    locked(dir, |taken| {
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
        if cluster.prefix_len() > NODE_POD_PREFIX_LEN {
            return Err(no_cidr());
        }
        let base = u32::from(cluster.addr());
        let blocks = 1u32 << (NODE_POD_PREFIX_LEN - cluster.prefix_len());
        let cidr = (0..blocks)
            .filter_map(|i| {
                Ipv4Cidr::new(
                    Ipv4Addr::from(base + (i << (32 - NODE_POD_PREFIX_LEN))),
                    NODE_POD_PREFIX_LEN,
                )
                .ok()
            })
            .find(|c| taken.values().all(|(_, t)| !t.overlaps(c)))
            .ok_or_else(no_cidr)?;
        write_reservation(dir, name, id, cidr)?;
        Ok((id, cidr))
    })
}

/// Reserves node ID `id` and pod CIDR `cidr` for node `name` in `dir` before its agent starts,
/// as a cluster's control plane assigns a Node its pod CIDR: the agent's [`allocate`] then
/// gives them back. Refused when another node holds either; a node that holds exactly these
/// keeps them.
pub fn reserve(dir: &Path, name: &str, id: u16, cidr: Ipv4Cidr) -> Result<(), AllocError> {
    locked(dir, |taken| {
        if taken.get(name) == Some(&(id, cidr)) {
            return Ok(());
        }
        if let Some((holder, _)) = taken
            .iter()
            .find(|(holder, (i, c))| *holder != name && (*i == id || c.overlaps(&cidr)))
        {
            return Err(AllocError::Taken {
                id,
                cidr,
                holder: holder.clone(),
            });
        }
        write_reservation(dir, name, id, cidr)
    })
}

/// Runs `f` with what every node holds in `dir`, under the exclusive lock on
/// `dir/.alloc.lock`.
fn locked<T>(
    dir: &Path,
    f: impl FnOnce(&BTreeMap<String, (u16, Ipv4Cidr)>) -> Result<T, AllocError>,
) -> Result<T, AllocError> {
    let io_error = |error| AllocError::Io {
        dir: dir.to_owned(),
        error,
    };
    fs::create_dir_all(dir.join(".alloc")).map_err(io_error)?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".alloc.lock"))
        .map_err(io_error)?;
    // Released when `_held` is dropped, at the end of this function.
    let _held = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, errno)| io_error(io::Error::from(errno)))?;
    let taken = taken(dir).map_err(io_error)?;
    f(&taken)
}

/// Writes node `name`'s reservation, `.alloc/<name>`: "ID CIDR".
fn write_reservation(dir: &Path, name: &str, id: u16, cidr: Ipv4Cidr) -> Result<(), AllocError> {
    let reservation = dir.join(".alloc").join(name);
    crate::durable::replace(&reservation, format!("{id} {cidr}\n").as_bytes(), 0o644).map_err(
        |error| AllocError::Io {
            dir: dir.to_owned(),
            error,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodes::record::test_record as record;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xsteer-alloc-{name}-{}", std::process::id()));
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
        assert_eq!(lookup(&dir, "n3").unwrap(), None);
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
        assert_eq!(lookup(&dir, "n3").unwrap(), Some(got[3]), "lookup finds it");
        // 16 /24s in a /20: one was published, 15 allocated; the next finds none.
        let err = allocate(&dir, "late", cluster).unwrap_err().to_string();
        assert!(
            err.contains("cluster_cidr 10.244.0.0/20 has no free /24 left for node late"),
            "{err}"
        );
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_reservation_is_what_the_allocation_gives_back_and_never_a_held_one() {
        let dir = temp_dir("reserve");
        let cluster: Ipv4Cidr = "10.244.0.0/16".parse().unwrap();
        let cidr = |c: &str| c.parse::<Ipv4Cidr>().unwrap();
        reserve(&dir, "node1", 1, cidr("10.244.1.0/24")).unwrap();
        reserve(&dir, "node1", 1, cidr("10.244.1.0/24")).unwrap();
        assert_eq!(
            allocate(&dir, "node1", cluster).unwrap(),
            (1, cidr("10.244.1.0/24"))
        );
        // Another node's ID or CIDR is refused, naming who holds it.
        for (id, c) in [(1, "10.244.2.0/24"), (2, "10.244.1.0/24")] {
            let err = reserve(&dir, "node2", id, cidr(c)).unwrap_err().to_string();
            assert!(err.contains("is held by node node1"), "{err}");
        }
        // The allocator steps around a reservation.
        assert_eq!(
            allocate(&dir, "other", cluster).unwrap(),
            (2, cidr("10.244.0.0/24"))
        );
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn lookup_writes_nothing() {
        let dir = temp_dir("lookup");
        assert_eq!(lookup(&dir, "a").unwrap(), None);
        assert!(
            !dir.exists(),
            "a lookup in a missing directory creates nothing"
        );
    }
}
