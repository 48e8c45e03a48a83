//! The peers the agent knows: the config's own, plus those learned from node records.
//!
//! A record replaces a config peer of the same name. A record that cannot be used is logged and
//! the last good version of that node stays; a record that disappears takes its node with it
//! (the reconcile then removes every SA, policy, route and map entry of that node).

use std::{collections::BTreeMap, path::Path, time::SystemTime};

use crate::{
    config::{Config, ConfigError},
    keys::KeyFile,
    nodes::{DirSource, NodeRecord, NodeSource, RecordError},
};

/// Node records as last read, and where they come from.
pub struct Peers {
    source: Option<DirSource>,
    records: BTreeMap<String, NodeRecord>,
    version: Vec<(String, SystemTime, u64)>,
    published: Option<NodeRecord>,
}

/// The name a record file stands for: its file stem.
fn node_name(problem: &RecordError) -> Option<String> {
    let path = match problem {
        RecordError::Io { path, .. }
        | RecordError::Json { path, .. }
        | RecordError::Field { path, .. } => path,
    };
    Some(Path::new(path).file_stem()?.to_string_lossy().into_owned())
}

impl Peers {
    /// The peers of `config`: with a `nodes_dir`, its records are read (and the dir created).
    pub fn new(config: &Config) -> std::io::Result<Peers> {
        let source = config.nodes_dir.as_ref().map(DirSource::new).transpose()?;
        let mut peers = Peers {
            source,
            records: BTreeMap::new(),
            version: Vec::new(),
            published: None,
        };
        peers.refresh(&config.node.name, |_| {});
        Ok(peers)
    }

    /// Re-reads the records if any changed; returns whether the usable ones changed. Problems
    /// go to `log`; a node whose record is unusable keeps its last good record.
    pub fn refresh(&mut self, own_name: &str, mut log: impl FnMut(String)) -> bool {
        let Some(source) = &self.source else {
            return false;
        };
        let version = match source.version() {
            Ok(v) => v,
            Err(e) => {
                log(format!("reading node records: {e}; keeping the last ones"));
                return false;
            }
        };
        if version == self.version {
            return false;
        }
        self.version = version;
        let snapshot = match source.snapshot() {
            Ok(s) => s,
            Err(e) => {
                log(format!("reading node records: {e}; keeping the last ones"));
                return false;
            }
        };
        let mut records = snapshot.records;
        for problem in &snapshot.problems {
            let kept = node_name(problem).and_then(|name| self.records.get(&name));
            match kept {
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

    /// `config` with the learned peers in; fails, naming the field, if they clash with it.
    pub fn merged(&self, config: &Config) -> Result<Config, ConfigError> {
        let mut merged = config.clone();
        for record in self.records.values() {
            merged.peers.retain(|p| p.name != record.name);
            merged.peers.push(record.peer(&config.node.name));
        }
        merged.validate()?;
        Ok(merged)
    }

    /// Publishes this node's record if it changed: called after a successful reconcile, so
    /// the generations and epochs it lists, and the re-keys it acks, have their SAs installed.
    pub fn publish(&mut self, config: &Config, keys: &KeyFile) -> std::io::Result<bool> {
        let Some(source) = &self.source else {
            return Ok(false);
        };
        let node = &config.node;
        let record = NodeRecord {
            name: node.name.clone(),
            ip: node.ip,
            id: node.id,
            pod_cidr: node.pod_cidr,
            epoch: node.epoch,
            next_epoch: node.next_epoch,
            acks: config
                .peers
                .iter()
                .filter_map(|p| Some((p.name.clone(), p.next_epoch?)))
                .collect(),
            generations: keys.generations().iter().map(|g| g.spi()).collect(),
        };
        if self.published.as_ref() == Some(&record) {
            return Ok(false);
        }
        source.publish(&record)?;
        self.published = Some(record);
        Ok(true)
    }
}
