//! The peers a node learns from node records, on top of its config's own.
//!
//! Records are untrusted: each is admitted on its own, and one that cannot be used — unreadable,
//! invalid, or clashing with this node, the config or another peer — is refused by name while
//! every other peer keeps working. A node whose new record is unusable, or whose record is gone,
//! keeps its last good one until it is removed on purpose (`xsteer node remove`: the reconcile
//! then removes its SAs, policies, route and map entries). On a clash, the peer admitted before
//! wins over a newcomer. The peers admitted are kept in a cache in the state directory, so a
//! restarted agent starts from them: a record lost or spoiled while it was down changes nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    path::PathBuf,
};

use super::{NodeRecord, NodeSource, SourceError};
use crate::{
    durable,
    keys::KeyFile,
    view::{Peer, View},
};

/// Where the admitted peers are kept between runs, and whether this process may write there.
#[derive(Clone, Debug)]
pub struct Cache {
    /// The file, in the state directory.
    pub path: PathBuf,
    /// Whether to write it (the agent) or only read it (one-shot commands).
    pub write: bool,
}

/// The cache's file name in the state directory.
pub const CACHE_FILE: &str = "peers.json";

/// Node records as last read from a source, and what this node last published there.
pub struct Peers {
    source: Box<dyn NodeSource + Send>,
    cache: Option<Cache>,
    /// The last good record of each node, by name.
    records: BTreeMap<String, NodeRecord>,
    /// The nodes admitted into the last view, with the record each was admitted with.
    admitted: BTreeMap<String, NodeRecord>,
    /// Nodes whose record is gone (kept, and said once).
    missing: BTreeSet<String>,
    published: Option<NodeRecord>,
}

impl Peers {
    /// Peers from the `cache` of the last run, then from `source`, read once; problems with
    /// records go to `log`.
    pub fn new(
        source: Box<dyn NodeSource + Send>,
        own_name: &str,
        cache: Option<Cache>,
        mut log: impl FnMut(String),
    ) -> Peers {
        let cached = cache
            .as_ref()
            .map(|c| read_cache(c, &mut log))
            .unwrap_or_default();
        let mut peers = Peers {
            source,
            cache,
            records: cached.clone(),
            admitted: cached,
            missing: BTreeSet::new(),
            published: None,
        };
        peers.refresh(own_name, log);
        peers
    }

    /// The source the records come from.
    pub fn source(&self) -> &(dyn NodeSource + Send) {
        self.source.as_ref()
    }

    /// Re-reads the records if any changed; returns whether the usable ones changed. Problems
    /// go to `log`; a node whose record is unusable keeps its last good record.
    pub fn refresh(&mut self, own_name: &str, mut log: impl FnMut(String)) -> bool {
        let mut snapshot = match self.source.read() {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => return false,
            Err(e) => {
                log(format!("{e}; keeping the last node records"));
                return false;
            }
        };
        let mut records = std::mem::take(&mut snapshot.records);
        for (name, problem) in &snapshot.problems {
            match self.records.get(name) {
                Some(last) => {
                    log(format!("{problem}; keeping its last good record"));
                    records.insert(last.name.clone(), last.clone());
                }
                None => log(format!("{problem}; ignored")),
            }
        }
        // A record that is gone is no reason to forget a node: only a removal on purpose is.
        let mut missing = BTreeSet::new();
        for (name, last) in &self.records {
            if records.contains_key(name) || snapshot.is_removed(name) {
                continue;
            }
            if !self.missing.contains(name) {
                log(format!(
                    "node {name}'s record is gone; keeping its last good record until the node \
                     is removed on purpose ({})",
                    self.source.removal(name)
                ));
            }
            records.insert(name.clone(), last.clone());
            missing.insert(name.clone());
        }
        self.missing = missing;
        records.remove(own_name);
        if records == self.records {
            return false;
        }
        for (name, record) in &records {
            match self.records.get(name) {
                None => log(format!("node {name} ({}) joined", record.ip)),
                Some(old) if old != record => log(format!("node {name} changed its record")),
                Some(_) => {}
            }
        }
        for name in self.records.keys().filter(|n| !records.contains_key(*n)) {
            log(format!("node {name} was removed: it is forgotten"));
        }
        self.records = records;
        true
    }

    /// `base` (this node and the config's peers) with the record peers admitted. A record
    /// replaces a config peer of the same name. Peers admitted last time go first, so a
    /// newcomer that clashes with one of them is the one refused; a node whose new record
    /// clashes keeps the record it was admitted with. Returns the view and, for each record
    /// refused, why.
    pub fn view(&mut self, base: &View) -> (View, Vec<String>) {
        let reader = base.node.name.as_str();
        let mut view = base.clone();
        view.peers.retain(|p| !self.records.contains_key(&p.name));
        let incumbents: BTreeSet<&String> = self
            .admitted
            .keys()
            .filter(|n| self.records.contains_key(*n))
            .collect();
        let order = incumbents
            .iter()
            .copied()
            .chain(self.records.keys().filter(|n| !incumbents.contains(n)));
        let mut admitted = BTreeMap::new();
        let mut refused = Vec::new();
        for name in order {
            let record = &self.records[name];
            let why = match view.admit(record.peer(reader)) {
                Ok(()) => {
                    admitted.insert(name.clone(), record.clone());
                    continue;
                }
                Err(why) => why,
            };
            let kept = self
                .admitted
                .get(name)
                .filter(|last| *last != record)
                .filter(|last| view.admit(last.peer(reader)).is_ok());
            match kept {
                Some(last) => {
                    refused.push(format!(
                        "node {name}'s new record is refused ({why}); keeping the one it had"
                    ));
                    admitted.insert(name.clone(), last.clone());
                }
                None => refused.push(format!("node {name}'s record is refused: {why}")),
            }
        }
        if admitted != self.admitted {
            self.admitted = admitted;
            self.write_cache();
        }
        (view, refused)
    }

    /// Keeps the admitted peers for the next run; a failure is not fatal (the next run starts
    /// from the records alone), so it goes unreported here and the next change tries again.
    fn write_cache(&self) {
        let Some(cache) = self.cache.as_ref().filter(|c| c.write) else {
            return;
        };
        let records: serde_json::Map<String, serde_json::Value> = self
            .admitted
            .iter()
            .filter_map(|(name, r)| Some((name.clone(), serde_json::from_str(&r.render()).ok()?)))
            .collect();
        let text = serde_json::Value::Object(records).to_string();
        let _ = durable::replace(&cache.path, text.as_bytes(), 0o600);
    }

    /// Publishes this node's record if it changed: called after a successful reconcile, so
    /// the generations and epochs it lists, and the re-keys it acks, have their SAs installed.
    /// `per_cpu_sas` is how many per-CPU SAs that reconcile installed towards each peer, `esn`
    /// whether the kernel takes ESN SAs.
    pub fn publish(
        &mut self,
        view: &View,
        keys: &KeyFile,
        per_cpu_sas: u8,
        esn: bool,
    ) -> Result<bool, SourceError> {
        let node = &view.node;
        let record = NodeRecord {
            name: node.name.clone(),
            ip: node.ip,
            id: node.id,
            pod_cidr: node.pod_cidr,
            pod_cidr_v6: node.pod_cidr_v6,
            epoch: node.epoch,
            next_epoch: node.next_epoch,
            acks: view
                .peers
                .iter()
                .filter_map(|p: &Peer| Some((p.name.clone(), p.next_epoch?)))
                .collect(),
            generations: keys.generations().iter().map(|g| g.generation()).collect(),
            per_cpu_sas,
            esp_in_udp: node.encap.map(|encap| encap.public),
            esn,
        };
        if self.published.as_ref() == Some(&record) {
            return Ok(false);
        }
        self.source.publish(&record)?;
        self.published = Some(record);
        Ok(true)
    }
}

/// The peers admitted by the last run, from `cache`; a cache that cannot be read is reported
/// and ignored (the records alone decide then).
fn read_cache(cache: &Cache, log: &mut impl FnMut(String)) -> BTreeMap<String, NodeRecord> {
    let text = match fs::read_to_string(&cache.path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return BTreeMap::new(),
        Err(e) => {
            log(format!(
                "{}: {e}; starting from the node records alone",
                cache.path.display()
            ));
            return BTreeMap::new();
        }
    };
    let origin = format!("cached record in {}", cache.path.display());
    let parsed: Result<serde_json::Map<String, serde_json::Value>, _> = serde_json::from_str(&text);
    let Ok(map) = parsed else {
        log(format!(
            "{origin}: not a JSON object; starting from the node records alone"
        ));
        return BTreeMap::new();
    };
    let mut records = BTreeMap::new();
    for (name, value) in map {
        match NodeRecord::parse(&origin, &value.to_string()) {
            Ok(record) if record.name == name => {
                records.insert(name, record);
            }
            Ok(_) => log(format!("{origin}: {name}: names another node; ignored")),
            Err(e) => log(format!("{e}; ignored")),
        }
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodes::{Changes, Snapshot, record::test_record as record};

    /// A source whose records the test sets.
    struct Fixed(Option<Snapshot>);

    impl NodeSource for Fixed {
        fn read(&mut self) -> Result<Option<Snapshot>, SourceError> {
            Ok(self.0.take())
        }
        fn publish(&mut self, _: &NodeRecord) -> Result<(), SourceError> {
            Ok(())
        }
        fn changes(&self) -> Result<Changes, SourceError> {
            Ok(Box::pin(futures::stream::pending()))
        }
    }

    fn snapshot(records: &[NodeRecord]) -> Snapshot {
        Snapshot {
            records: records
                .iter()
                .map(|r| (r.name.clone(), r.clone()))
                .collect(),
            problems: BTreeMap::new(),
            removed: BTreeSet::new(),
            existing: None,
        }
    }

    #[test]
    fn a_clashing_newcomer_is_refused_and_the_others_stay() {
        let base = crate::view::fixtures::two_nodes();
        let c = record("c", 3);
        let mut impostor = record("d", 4);
        impostor.ip = c.ip;
        let mut peers = Peers::new(
            Box::new(Fixed(Some(snapshot(std::slice::from_ref(&c))))),
            "a",
            None,
            drop,
        );
        let (view, refused) = peers.view(&base);
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(view.peers.len(), 2, "b from the config, c from its record");

        // d claims c's IP: d is refused, c stays, whatever the names' order.
        peers.source = Box::new(Fixed(Some(snapshot(&[c.clone(), impostor]))));
        assert!(peers.refresh("a", drop));
        let (view, refused) = peers.view(&base);
        assert_eq!(
            refused,
            ["node d's record is refused: node IP 192.168.0.3 is already node c's"]
        );
        assert!(view.peer("c").is_some() && view.peer("d").is_none());

        // c's new record clashes with b: c keeps the record it had.
        let mut moved = c.clone();
        moved.pod_cidr = "10.244.2.0/24".parse().unwrap();
        peers.source = Box::new(Fixed(Some(snapshot(&[moved]))));
        assert!(peers.refresh("a", drop));
        let (view, refused) = peers.view(&base);
        assert!(
            refused
                .iter()
                .any(|r| r.starts_with("node c's new record is refused")
                    && r.ends_with("keeping the one it had")),
            "{refused:?}"
        );
        assert_eq!(view.peer("c").unwrap().pod_cidrs, [c.pod_cidr]);
    }

    #[test]
    fn a_gone_record_is_kept_until_removed_and_a_restart_starts_from_the_cache() {
        let base = crate::view::fixtures::two_nodes();
        let dir = std::env::temp_dir().join(format!("xsteer-peers-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let cache = Cache {
            path: dir.join(CACHE_FILE),
            write: true,
        };
        let c = record("c", 3);
        let mut log = Vec::new();
        let mut peers = Peers::new(
            Box::new(Fixed(Some(snapshot(std::slice::from_ref(&c))))),
            "a",
            Some(cache.clone()),
            |line| log.push(line),
        );
        assert!(peers.view(&base).0.peer("c").is_some());

        // c's record is gone: c stays.
        peers.source = Box::new(Fixed(Some(snapshot(&[]))));
        let mut log = Vec::new();
        assert!(
            !peers.refresh("a", |line| log.push(line)),
            "nothing usable changed"
        );
        assert!(log[0].contains("keeping its last good record"), "{log:?}");
        assert!(peers.view(&base).0.peer("c").is_some());

        // A restart with an impostor claiming c's IP and c's record still gone: the cache keeps
        // c and refuses the impostor.
        let mut impostor = record("d", 4);
        impostor.ip = c.ip;
        let mut restarted = Peers::new(
            Box::new(Fixed(Some(snapshot(&[impostor])))),
            "a",
            Some(cache.clone()),
            drop,
        );
        let (view, refused) = restarted.view(&base);
        assert!(view.peer("c").is_some() && view.peer("d").is_none());
        assert_eq!(refused.len(), 1, "{refused:?}");

        // Removed on purpose: forgotten.
        let mut removed = snapshot(&[]);
        removed.removed.insert("c".into());
        restarted.source = Box::new(Fixed(Some(removed)));
        assert!(restarted.refresh("a", drop));
        assert!(restarted.view(&base).0.peer("c").is_none());
        let cached = fs::read_to_string(&cache.path).unwrap();
        assert!(!cached.contains("\"c\""), "{cached}");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_node_missing_from_a_complete_listing_is_forgotten_even_from_the_cache() {
        let base = crate::view::fixtures::two_nodes();
        let dir = std::env::temp_dir().join(format!("xsteer-peers-all-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let cache = Cache {
            path: dir.join(CACHE_FILE),
            write: true,
        };
        let (c, d) = (record("c", 3), record("d", 4));
        let mut peers = Peers::new(
            Box::new(Fixed(Some(snapshot(&[c.clone(), d.clone()])))),
            "a",
            Some(cache.clone()),
            drop,
        );
        assert_eq!(peers.view(&base).0.peers.len(), 3);

        // Restarted while c's Node was deleted: the listing has d, and e without a record
        // yet; c is not kept from the cache. d without its record is kept: its Node exists.
        let mut listed = snapshot(&[]);
        listed.existing = Some(["a", "d", "e"].map(String::from).into());
        let mut log = Vec::new();
        let mut restarted = Peers::new(Box::new(Fixed(Some(listed))), "a", Some(cache), |line| {
            log.push(line)
        });
        let (view, refused) = restarted.view(&base);
        assert!(refused.is_empty(), "{refused:?}");
        assert!(view.peer("c").is_none(), "{log:?}");
        assert_eq!(view.peer("d").map(|p| p.ip), Some(d.ip));
        assert!(
            log.iter()
                .any(|l| l == "node c was removed: it is forgotten"),
            "{log:?}"
        );
        let _ = fs::remove_dir_all(dir);
    }
}
