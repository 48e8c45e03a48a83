//! The peers a node learns from node records, on top of its config's own.
//!
//! Records are untrusted: each is admitted on its own, and one that cannot be used — unreadable,
//! invalid, or clashing with this node, the config or another peer — is refused by name while
//! every other peer keeps working. A node whose new record is unusable keeps its last good one;
//! on a clash, the peer admitted before wins over a newcomer. A record that disappears takes its
//! node with it (the reconcile then removes that node's SAs, policies, route and map entries).

use std::collections::{BTreeMap, BTreeSet};

use super::{NodeRecord, NodeSource, SourceError};
use crate::{
    keys::KeyFile,
    view::{Peer, View},
};

/// Node records as last read from a source, and what this node last published there.
pub struct Peers {
    source: Box<dyn NodeSource + Send>,
    /// The last good record of each node, by name.
    records: BTreeMap<String, NodeRecord>,
    /// The nodes admitted into the last view, with the record each was admitted with.
    admitted: BTreeMap<String, NodeRecord>,
    published: Option<NodeRecord>,
}

impl Peers {
    /// Peers from `source`, read once; problems with records go to `log`.
    pub fn new(
        source: Box<dyn NodeSource + Send>,
        own_name: &str,
        log: impl FnMut(String),
    ) -> Peers {
        let mut peers = Peers {
            source,
            records: BTreeMap::new(),
            admitted: BTreeMap::new(),
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
        let snapshot = match self.source.read() {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => return false,
            Err(e) => {
                log(format!("{e}; keeping the last node records"));
                return false;
            }
        };
        let mut records = snapshot.records;
        for (name, problem) in &snapshot.problems {
            match self.records.get(name) {
                Some(last) => {
                    log(format!("{problem}; keeping its last good record"));
                    records.insert(last.name.clone(), last.clone());
                }
                None => log(format!("{problem}; ignored")),
            }
        }
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
            log(format!("node {name} left"));
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
        self.admitted = admitted;
        (view, refused)
    }

    /// Publishes this node's record if it changed: called after a successful reconcile, so
    /// the generations and epochs it lists, and the re-keys it acks, have their SAs installed.
    pub fn publish(&mut self, view: &View, keys: &KeyFile) -> Result<bool, SourceError> {
        let node = &view.node;
        let record = NodeRecord {
            name: node.name.clone(),
            ip: node.ip,
            id: node.id,
            pod_cidr: node.pod_cidr,
            epoch: node.epoch,
            next_epoch: node.next_epoch,
            acks: view
                .peers
                .iter()
                .filter_map(|p: &Peer| Some((p.name.clone(), p.next_epoch?)))
                .collect(),
            generations: keys.generations().iter().map(|g| g.generation()).collect(),
        };
        if self.published.as_ref() == Some(&record) {
            return Ok(false);
        }
        self.source.publish(&record)?;
        self.published = Some(record);
        Ok(true)
    }
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
        assert_eq!(refused.len(), 1);
        assert!(refused[0].contains("keeping the one it had"), "{refused:?}");
        assert_eq!(view.peer("c").unwrap().pod_cidrs, [c.pod_cidr]);
    }
}
