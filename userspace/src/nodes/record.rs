//! A node record: what a node tells the others about itself, and its JSON form.
//!
//! Records are untrusted input: every field is checked on the way in, and a record that fails
//! is reported by the node it stands for, with the field and what is wrong.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};

use crate::{
    cidr::{Ipv4Cidr, Ipv6Cidr},
    config::node_name_problem,
    keys::{Epoch, Generation},
    protocol::PER_CPU_SAS_MAX,
    view::Peer,
};

/// The record format this build writes and reads. Version 2 added re-keying (`next_epoch`,
/// `acks`) and the wire SPI that names both epochs; version 3 per-CPU SAs (`per_cpu_sas`), the
/// wire SPI with a CPU slot and the keys derived with it. Nodes of another version cannot talk
/// to this one: their SPIs and keys differ.
pub const RECORD_VERSION: u32 = 3;

/// What a node tells the others about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    /// Node name, unique in the cluster.
    pub name: String,
    /// The IP its ESP tunnels start and end at (IPv6 on IPv6-only nodes).
    pub ip: IpAddr,
    /// Node ID, 1..=65535.
    pub id: u16,
    /// The CIDR of its pods.
    pub pod_cidr: Ipv4Cidr,
    /// The IPv6 CIDR of its pods, in a dual-stack cluster. Written only when there is one, so
    /// that the records of IPv4-only nodes read as before.
    pub pod_cidr_v6: Option<Ipv6Cidr>,
    /// Its current epoch (an input of every SA key shared with it).
    pub epoch: Epoch,
    /// The epoch it is re-keying to, if it is; it has IN SAs for it from every peer it knows.
    pub next_epoch: Option<Epoch>,
    /// For each peer that is re-keying, the peer's `next_epoch`: it has SAs for it both ways.
    /// Only peers in the middle of a re-key are listed, so records stay small.
    pub acks: BTreeMap<String, Epoch>,
    /// The key generations it can receive (it has IN SAs for them).
    pub generations: Vec<Generation>,
    /// How many per-CPU SAs it sends on besides each set's shared SA, 0..=63: peers install an
    /// IN SA for each. Written only when not 0.
    pub per_cpu_sas: u8,
    /// Where it receives ESP in UDP (its NAT's address and port, when it sits behind one), if
    /// it has `encap = "udp"`. Written only then; builds before ESP in UDP refuse such a
    /// record (an unknown field), so they never send it plain ESP it could not receive.
    pub esp_in_udp: Option<SocketAddr>,
    /// Whether its kernel takes ESN SAs. Written only when not (`"esn": false`): a record
    /// without the field, as every earlier build wrote, is a node with ESN.
    pub esn: bool,
}

impl NodeRecord {
    /// This record as a peer of the node named `reader`.
    pub fn peer(&self, reader: &str) -> Peer {
        Peer {
            name: self.name.clone(),
            ip: self.ip,
            id: self.id,
            pod_cidrs: vec![self.pod_cidr],
            pod_cidrs_v6: self.pod_cidr_v6.into_iter().collect(),
            epoch: self.epoch,
            next_epoch: self.next_epoch,
            acked_epoch: self.acks.get(reader).copied(),
            generations: Some(self.generations.clone()),
            per_cpu_sas: self.per_cpu_sas,
            esp_in_udp: self.esp_in_udp,
            esn: self.esn,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pod_cidr_v6: Option<String>,
    epoch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next_epoch: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    acks: BTreeMap<String, String>,
    generations: Vec<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    per_cpu_sas: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    esp_in_udp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    esn: Option<bool>,
}

/// Why a record could not be used. `origin` says where it came from, e.g. `node record
/// /var/lib/xsteer/nodes/b.json`.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The record could not be read.
    #[error("{origin}: {error}")]
    Read {
        /// Where the record is.
        origin: String,
        /// What the OS said.
        error: io::Error,
    },
    /// The text is not a record.
    #[error("{origin}: {error}")]
    Json {
        /// Where the record is.
        origin: String,
        /// What the parser said, with line and column.
        error: serde_json::Error,
    },
    /// A field is invalid.
    #[error("{origin}: {field}: {problem}")]
    Field {
        /// Where the record is.
        origin: String,
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

impl NodeRecord {
    /// Parses and checks a record's JSON text; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<NodeRecord, RecordError> {
        parse_record(origin, text)
    }

    /// The record as JSON text, as [`NodeRecord::parse`] reads it.
    pub fn render(&self) -> String {
        serde_json::to_string_pretty(&raw(self)).expect("a record always serializes") + "\n"
    }

    /// The record as JSON text on one line, for where it is shown inline (a Kubernetes
    /// annotation); [`NodeRecord::parse`] reads it too.
    pub fn render_compact(&self) -> String {
        serde_json::to_string(&raw(self)).expect("a record always serializes")
    }
}

fn parse_record(origin: &str, text: &str) -> Result<NodeRecord, RecordError> {
    let raw: RawRecord = serde_json::from_str(text).map_err(|error| RecordError::Json {
        origin: origin.to_owned(),
        error,
    })?;
    let field = |field, problem: String| RecordError::Field {
        origin: origin.to_owned(),
        field,
        problem,
    };
    if raw.version != RECORD_VERSION {
        return Err(field(
            "version",
            format!("{} is not {RECORD_VERSION}", raw.version),
        ));
    }
    if let Some(why) = node_name_problem(&raw.name) {
        return Err(field("name", why));
    }
    let ip: IpAddr = raw
        .ip
        .parse()
        .map_err(|_| field("ip", format!("{:?} is not an IP address", raw.ip)))?;
    let id = u16::try_from(raw.id)
        .ok()
        .filter(|&id| id > 0)
        .ok_or_else(|| field("id", format!("{} is not in 1..=65535", raw.id)))?;
    let pod_cidr = raw
        .pod_cidr
        .parse()
        .map_err(|e| field("pod_cidr", format!("{e}")))?;
    let pod_cidr_v6 = raw
        .pod_cidr_v6
        .map(|c| c.parse())
        .transpose()
        .map_err(|e| field("pod_cidr_v6", format!("{e}")))?;
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
        match u8::try_from(g).ok().and_then(Generation::new) {
            Some(g) => generations.push(g),
            None => return Err(field("generations", format!("{g} is not in 1..=15"))),
        }
    }
    let per_cpu_sas = match raw.per_cpu_sas.unwrap_or(0) {
        n if (0..=i64::from(PER_CPU_SAS_MAX)).contains(&n) => n as u8,
        n => {
            return Err(field(
                "per_cpu_sas",
                format!("{n} is not in 0..={PER_CPU_SAS_MAX}"),
            ));
        }
    };
    let esp_in_udp = raw
        .esp_in_udp
        .map(|text| match text.parse::<SocketAddr>() {
            Ok(addr) if addr.port() == 0 => Err(format!("{text:?}: port 0 cannot be sent to")),
            Ok(addr) if addr.is_ipv4() != ip.is_ipv4() => {
                Err(format!("{text:?} is not of the family of ip {ip}"))
            }
            Ok(addr) => Ok(addr),
            Err(_) => Err(format!(
                "{text:?} is not address:port (IPv6 as [address]:port)"
            )),
        })
        .transpose()
        .map_err(|problem| field("esp_in_udp", problem))?;
    Ok(NodeRecord {
        name: raw.name,
        ip,
        id,
        pod_cidr,
        pod_cidr_v6,
        epoch,
        next_epoch,
        acks,
        generations,
        per_cpu_sas,
        esp_in_udp,
        esn: raw.esn.unwrap_or(true),
    })
}

fn raw(record: &NodeRecord) -> RawRecord {
    RawRecord {
        version: RECORD_VERSION,
        name: record.name.clone(),
        ip: record.ip.to_string(),
        id: i64::from(record.id),
        pod_cidr: record.pod_cidr.to_string(),
        pod_cidr_v6: record.pod_cidr_v6.map(|c| c.to_string()),
        epoch: record.epoch.to_string(),
        next_epoch: record.next_epoch.map(|e| e.to_string()),
        acks: record
            .acks
            .iter()
            .map(|(node, e)| (node.clone(), e.to_string()))
            .collect(),
        generations: record
            .generations
            .iter()
            .map(|g| i64::from(g.get()))
            .collect(),
        per_cpu_sas: (record.per_cpu_sas > 0).then_some(i64::from(record.per_cpu_sas)),
        esp_in_udp: record.esp_in_udp.map(|addr| addr.to_string()),
        esn: (!record.esn).then_some(false),
    }
}

/// A record for the unit tests of this module tree: node `name` with ID `id`, IP
/// 192.168.0.`id`, pod CIDR 10.244.`id`.0/24, generations 3 and 4.
#[cfg(test)]
pub(super) fn test_record(name: &str, id: u16) -> NodeRecord {
    let generations = [3, 4].map(|g| Generation::new(g).expect("in 1..=15"));
    NodeRecord {
        name: name.into(),
        ip: std::net::Ipv4Addr::new(192, 168, 0, id as u8).into(),
        id,
        pod_cidr: format!("10.244.{id}.0/24").parse().expect("a CIDR"),
        pod_cidr_v6: None,
        epoch: Epoch::from_bytes([id as u8; 16]),
        next_epoch: None,
        acks: BTreeMap::new(),
        generations: generations.to_vec(),
        per_cpu_sas: 0,
        esp_in_udp: None,
        esn: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_through_its_json() {
        let mut record = test_record("b", 2);
        record.next_epoch = Some(Epoch::from_bytes([0xB2; 16]));
        record
            .acks
            .insert("a".into(), Epoch::from_bytes([0xA1; 16]));
        let text = record.render();
        assert_eq!(NodeRecord::parse("b", &text).unwrap(), record);
        assert!(text.contains("\"version\": 3"), "{text}");
        let line = record.render_compact();
        assert_eq!(NodeRecord::parse("b", &line).unwrap(), record);
        assert!(
            !line.contains('\n') && line.starts_with("{\"version\":3,"),
            "{line}"
        );
    }

    #[test]
    fn per_cpu_sas_are_written_only_when_there_are_some() {
        let mut record = test_record("b", 2);
        assert!(!record.render().contains("per_cpu_sas"));
        record.per_cpu_sas = 7;
        let text = record.render();
        assert!(text.contains("\"per_cpu_sas\": 7"), "{text}");
        assert_eq!(NodeRecord::parse("b", &text).unwrap(), record);
        assert_eq!(record.peer("a").per_cpu_sas, 7);
    }

    #[test]
    fn esp_in_udp_is_written_only_when_on_and_checked_on_the_way_in() {
        let mut record = test_record("b", 2);
        assert!(!record.render().contains("esp_in_udp"));
        record.esp_in_udp = Some("203.0.113.7:4501".parse().unwrap());
        let text = record.render();
        assert!(
            text.contains("\"esp_in_udp\": \"203.0.113.7:4501\""),
            "{text}"
        );
        assert_eq!(NodeRecord::parse("b", &text).unwrap(), record);
        assert_eq!(record.peer("a").esp_in_udp, record.esp_in_udp);
        for (bad, problem) in [
            ("203.0.113.7", "is not address:port"),
            ("203.0.113.7:0", "port 0 cannot be sent to"),
            (
                "[2001:db8::7]:4500",
                "is not of the family of ip 192.168.0.2",
            ),
            ("203.0.113.7:70000", "is not address:port"),
        ] {
            let e = NodeRecord::parse("node record b", &text.replace("203.0.113.7:4501", bad))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("node record b: esp_in_udp: ") && e.contains(problem),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_node_without_esn_says_so_and_one_that_says_nothing_has_it() {
        let mut record = test_record("b", 2);
        let with = record.render();
        assert!(!with.contains("esn"), "{with}");
        assert!(NodeRecord::parse("b", &with).unwrap().peer("a").esn);
        record.esn = false;
        let without = record.render();
        assert!(without.contains("\"esn\": false"), "{without}");
        assert!(!NodeRecord::parse("b", &without).unwrap().peer("a").esn);
    }

    #[test]
    fn an_ipv6_pod_cidr_is_written_only_when_there_is_one() {
        let mut record = test_record("b", 2);
        let v4_only = record.render();
        assert!(!v4_only.contains("pod_cidr_v6"), "{v4_only}");
        record.pod_cidr_v6 = Some("fd00:10:244:2::/64".parse().unwrap());
        let dual = record.render();
        assert_eq!(NodeRecord::parse("b", &dual).unwrap(), record);
        let peer = record.peer("a");
        assert_eq!(peer.pod_cidrs_v6, ["fd00:10:244:2::/64".parse().unwrap()]);
        let bad = dual.replace("fd00:10:244:2::/64", "fd00:10:244:2::1/64");
        let e = NodeRecord::parse("node record b", &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("node record b: pod_cidr_v6: \"fd00:10:244:2::1/64\" has host bits"),
            "{e}"
        );
    }
}
