//! What a node's dataplane is doing, gathered from the kernel: `xsteer status` shows it as a
//! table or JSON, and the agent serves it as Prometheus metrics.
//!
//! Everything comes from the kernel and the pinned maps, not from the agent's memory, so the
//! status is true even while no agent runs. Keys appear only as fingerprints.

use std::{collections::BTreeMap, fmt::Write as _, fs, io, net::IpAddr, path::Path};

use serde::Serialize;
use xsteer_common::{counters::Counter, programs};

use crate::{
    cidr::{Ipv4Cidr, Ipv6Cidr},
    dataplane::{
        Dataplane, DataplaneError,
        links::{self, IngressHook},
    },
    kernel::{
        Netlink,
        xfrm::{self, XfrmError},
    },
    keys::{Generation, KeyFile},
    protocol::{cpu_spi, epochs, sending_epochs, wire_spi},
    view::{self, View},
};

/// One key generation of the key file.
#[derive(Clone, Debug, Serialize)]
pub struct KeyGeneration {
    /// Its number, which the mark carries.
    pub generation: Generation,
    /// Cipher suite and key sizes.
    pub algorithm: String,
    /// Fingerprints of the master key's components.
    pub fingerprints: Vec<String>,
    /// Whether new traffic is sent with it.
    pub newest: bool,
}

/// One SA and what it carried.
#[derive(Clone, Debug, Serialize)]
pub struct Sa {
    /// The wire SPI.
    pub spi: u32,
    /// The sender's CPU whose packets it carries, for a per-CPU SA; `None` for the set's
    /// shared SA.
    pub cpu: Option<u8>,
    /// The key generation.
    pub generation: Generation,
    /// Present in the kernel.
    pub installed: bool,
    /// The one its generation's OUT policy sends with (outbound SAs only).
    pub in_use: bool,
    /// Bytes carried.
    pub bytes: u64,
    /// Packets carried.
    pub packets: u64,
}

/// Where the switch to the newest key generation stands towards one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rotation {
    /// Its pods are sent to with the newest generation.
    Done,
    /// It does not advertise the newest generation yet: sent to with an older one.
    WaitingForPeer,
    /// It advertises the newest generation, the map has not switched yet (the agent will).
    Switching,
    /// It shares no generation with this node: its traffic is held back by the egress guard.
    NoSharedGeneration,
}

impl Rotation {
    fn of(
        newest: Option<Generation>,
        sending: Option<Generation>,
        receives: Option<&[Generation]>,
    ) -> Rotation {
        let advertises_newest = match (receives, newest) {
            (None, _) => true,
            (Some(r), Some(n)) => r.contains(&n),
            (Some(_), None) => false,
        };
        match sending {
            None => Rotation::NoSharedGeneration,
            Some(_) if sending == newest => Rotation::Done,
            Some(_) if advertises_newest => Rotation::Switching,
            Some(_) => Rotation::WaitingForPeer,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Rotation::Done => "done",
            Rotation::WaitingForPeer => "waiting for peer",
            Rotation::Switching => "switching",
            Rotation::NoSharedGeneration => "no shared generation",
        }
    }
}

/// Where a re-key (a new epoch of this node's) stands towards one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rekey {
    /// This node is not re-keying.
    None,
    /// The peer has not acked the new epoch: sent to under the old one.
    WaitingForPeer,
    /// The peer acked the new epoch: sent to under it.
    Switched,
}

impl Rekey {
    fn of(local: &view::LocalNode, peer: &view::Peer) -> Rekey {
        match local.next_epoch {
            None => Rekey::None,
            Some(next) if peer.acked_epoch == Some(next) => Rekey::Switched,
            Some(_) => Rekey::WaitingForPeer,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Rekey::None => "-",
            Rekey::WaitingForPeer => "waiting for peer",
            Rekey::Switched => "switched",
        }
    }
}

/// One peer node.
#[derive(Clone, Debug, Serialize)]
pub struct Peer {
    /// Its name.
    pub name: String,
    /// Its node IP.
    pub ip: IpAddr,
    /// Its node ID.
    pub id: u16,
    /// Where this node sends its ESP in UDP (`address:port`: its NAT's, behind one), when the
    /// pair speaks ESP in UDP; `None` for bare ESP to `ip`.
    pub esp_in_udp: Option<std::net::SocketAddr>,
    /// Its pod CIDRs, IPv4 then IPv6.
    pub pod_cidrs: Vec<String>,
    /// The generation its pod CIDRs are marked with (`remote_pod_cidrs`), if any.
    pub sending_generation: Option<Generation>,
    /// The generation its IPv6 pod CIDRs are marked with (`remote6_cidrs`), if it has any
    /// and they are marked.
    pub sending_generation_v6: Option<Generation>,
    /// The generations it says it can receive (its node record); `None` for a peer from the
    /// config file, assumed to receive them all.
    pub receives: Option<Vec<Generation>>,
    /// Where the rotation towards it stands.
    pub rotation: Rotation,
    /// Where a re-key of this node's stands towards it.
    pub rekey: Rekey,
    /// SAs towards it, per generation and pairing of epochs.
    pub outbound: Vec<Sa>,
    /// SAs from it, per generation and pairing of epochs.
    pub inbound: Vec<Sa>,
    /// ESP from it with a known SPI that the ingress guard let through to xfrm: not what xfrm
    /// decrypted (the inbound SAs' packets), since xfrm may still reject it (a wrong key, a
    /// replay), as `xfrm_errors` counts.
    pub esp_accepted_packets: u64,
}

/// Where the guards are attached, read from their link pins: a pinned link stays attached
/// whether an agent runs or not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Guards {
    /// The interfaces the ingress guard guards, each with the hook it runs at (`xdp`, `tc`).
    pub ingress: Vec<(String, String)>,
    /// The interfaces the egress guard guards.
    pub egress: Vec<String>,
}

impl Guards {
    /// The guards' attachments pinned in `pin_dir`.
    fn pinned(pin_dir: &Path) -> Guards {
        let mut ingress: Vec<(String, String)> = [IngressHook::Xdp, IngressHook::Tc]
            .into_iter()
            .flat_map(|hook| {
                links::pinned_interfaces(pin_dir, hook.program())
                    .into_iter()
                    .map(move |interface| (interface, hook.to_string()))
            })
            .collect();
        let mut egress = links::pinned_interfaces(pin_dir, programs::EGRESS_GUARD);
        ingress.sort();
        egress.sort();
        Guards { ingress, egress }
    }
}

/// A node's status.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// This node's name.
    pub node: String,
    /// Its epoch in service.
    pub epoch: String,
    /// The epoch it is re-keying to, if it is.
    pub next_epoch: Option<String>,
    /// Its pod CIDRs, IPv4 then IPv6.
    pub pod_cidrs: Vec<String>,
    /// The cluster's pod space, IPv4 then IPv6: what the guards hold as pod traffic.
    pub cluster_cidrs: Vec<String>,
    /// The key file's generations in service.
    pub generations: Vec<KeyGeneration>,
    /// Generations the key file still lists that this node has retired (SAs removed).
    pub retired_generations: Vec<Generation>,
    /// The peers.
    pub peers: Vec<Peer>,
    /// Where the guards are attached.
    pub guards: Guards,
    /// The programs' counters, by name.
    pub counters: Vec<(String, u64)>,
    /// The kernel's non-zero xfrm error counters (/proc/net/xfrm_stat).
    pub xfrm_errors: Vec<(String, u64)>,
}

/// Why the status could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The netlink sockets could not be opened.
    #[error("opening netlink sockets: {0}")]
    Netlink(io::Error),
    /// The maps could not be read.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// The SAs could not be listed.
    #[error(transparent)]
    Xfrm(#[from] XfrmError),
    /// /proc/net/xfrm_stat could not be read.
    #[error("reading /proc/net/xfrm_stat: {0}")]
    XfrmStat(io::Error),
}

/// The non-zero counters of /proc/net/xfrm_stat.
fn xfrm_errors() -> Result<Vec<(String, u64)>, StatusError> {
    let text = fs::read_to_string("/proc/net/xfrm_stat").map_err(StatusError::XfrmStat)?;
    Ok(nonzero_xfrm_stats(&text))
}

/// The non-zero counters of an xfrm_stat text (`<name> <whitespace> <value>` per line).
fn nonzero_xfrm_stats(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(char::is_whitespace)?;
            let value: u64 = value.trim().parse().ok()?;
            (value > 0).then(|| (name.to_owned(), value))
        })
        .collect()
}

/// What an xfrm_stat counter says about ESP the ingress guard let through, for the counters
/// by which xfrm rejects it after the guard.
fn xfrm_stat_meaning(name: &str) -> Option<&'static str> {
    Some(match name {
        "XfrmInNoStates" => "no SA for its SPI",
        "XfrmInStateProtoError" => {
            "failed to decrypt or authenticate: a key or ESN setting other than the sender's"
        }
        "XfrmInStateSeqError" => "a replay, or behind the replay window",
        "XfrmInTmplMismatch" => "decrypted, but by an SA no policy accepts",
        _ => return None,
    })
}

/// Gathers the status of the node `view` describes, from the maps pinned in `pin_dir`; `keys`
/// are the generations in service, `retired` those the key file lists besides.
pub async fn collect(
    view: &View,
    keys: &KeyFile,
    retired: &[Generation],
    pin_dir: &Path,
) -> Result<Status, StatusError> {
    let netlink = Netlink::connect().map_err(StatusError::Netlink)?;
    let sa_counters = xfrm::state_counters(&netlink).await?;
    let pinned = Dataplane::is_pinned(pin_dir);
    let mut dataplane = if pinned {
        Some(Dataplane::load_pinned(pin_dir)?)
    } else {
        None
    };
    let newest = keys.newest().ok().map(|g| g.generation());
    let generations = keys
        .generations()
        .iter()
        .map(|g| KeyGeneration {
            generation: g.generation(),
            algorithm: g.algorithm().to_string(),
            fingerprints: g.fingerprints().iter().map(ToString::to_string).collect(),
            newest: Some(g.generation()) == newest,
        })
        .collect();

    let (remote, remote_v6, esp_stats, counters) = match dataplane.as_mut() {
        Some(dp) => (
            dp.remote_pod_cidrs()?.entries()?,
            dp.remote_pod_cidrs_v6()?.entries()?,
            dp.peer_spis()?.stats()?,
            dp.counters()?
                .read()?
                .iter()
                .map(|(c, v)| (c.name().to_owned(), v))
                .collect(),
        ),
        None => (
            Vec::new(),
            Vec::new(),
            BTreeMap::new(),
            Counter::ALL
                .iter()
                .map(|c| (c.name().to_owned(), 0))
                .collect(),
        ),
    };

    let local = &view.node;
    // A set's shared SA, listed installed or not, and those of its per-CPU SAs the kernel has
    // (up to `per_cpu`: the count configured or advertised, which a kernel may not honour).
    let sa_counters = &sa_counters;
    let set =
        move |set_spi: u32, generation: Generation, dst: IpAddr, in_use: bool, per_cpu: u8| {
            (0..=per_cpu).filter_map(move |slot| {
                let spi = cpu_spi(set_spi, slot);
                let counters = sa_counters.get(&xfrm::StateKey { dst, spi });
                (slot == 0 || counters.is_some()).then(|| Sa {
                    spi,
                    cpu: slot.checked_sub(1),
                    generation,
                    installed: counters.is_some(),
                    in_use,
                    bytes: counters.map_or(0, |c| c.bytes),
                    packets: counters.map_or(0, |c| c.packets),
                })
            })
        };
    // Every generation under every pairing of the two nodes' epochs.
    let pairings = |p: &view::Peer| {
        keys.generations()
            .iter()
            .flat_map(|g| {
                epochs(local.epoch, local.next_epoch).flat_map(move |ours| {
                    epochs(p.epoch, p.next_epoch).map(move |theirs| (g.generation(), ours, theirs))
                })
            })
            .collect::<Vec<_>>()
    };
    let peers = view
        .peers
        .iter()
        .map(|p| {
            let sending_generation = remote
                .iter()
                .find(|(cidr, _)| p.pod_cidrs.contains(cidr))
                .and_then(|(_, v)| Generation::new(v.generation));
            (p, sending_generation)
        })
        .map(|(p, sending_generation)| Peer {
            name: p.name.clone(),
            ip: p.ip,
            id: p.id,
            esp_in_udp: match p.path(local) {
                (outer, Some(port)) => Some(std::net::SocketAddr::new(outer, port)),
                (_, None) => None,
            },
            pod_cidrs: cidr_strings(&p.pod_cidrs, &p.pod_cidrs_v6),
            sending_generation,
            sending_generation_v6: remote_v6
                .iter()
                .find(|(cidr, _)| p.pod_cidrs_v6.contains(cidr))
                .and_then(|(_, v)| Generation::new(v.generation)),
            receives: p.generations.clone(),
            rotation: Rotation::of(newest, sending_generation, p.generations.as_deref()),
            rekey: Rekey::of(local, p),
            outbound: pairings(p)
                .into_iter()
                .flat_map(|(g, ours, theirs)| {
                    let in_use = sending_epochs(local, p) == (ours, theirs);
                    let spi = wire_spi(local.id, g, &ours, &theirs);
                    // Sent to where ESP goes: the NAT in front of the peer, if there is one.
                    set(spi, g, p.path(local).0, in_use, local.per_cpu_sas)
                })
                .collect(),
            inbound: pairings(p)
                .into_iter()
                .flat_map(|(g, ours, theirs)| {
                    let spi = wire_spi(p.id, g, &theirs, &ours);
                    set(spi, g, local.ip, false, p.per_cpu_sas)
                })
                .collect(),
            esp_accepted_packets: esp_stats.get(&p.id).map_or(0, |s| s.packets),
        })
        .collect();
    Ok(Status {
        node: local.name.clone(),
        epoch: local.epoch.to_string(),
        next_epoch: local.next_epoch.map(|e| e.to_string()),
        pod_cidrs: cidr_strings(&[local.pod_cidr], local.pod_cidr_v6.as_slice()),
        cluster_cidrs: cidr_strings(&view.cluster_cidrs, &view.cluster_cidrs_v6),
        generations,
        retired_generations: retired.to_vec(),
        peers,
        guards: Guards::pinned(pin_dir),
        counters,
        xfrm_errors: xfrm_errors()?,
    })
}

/// CIDRs of both families as text, IPv4 first.
fn cidr_strings(v4: &[Ipv4Cidr], v6: &[Ipv6Cidr]) -> Vec<String> {
    v4.iter()
        .map(ToString::to_string)
        .chain(v6.iter().map(ToString::to_string))
        .collect()
}

impl Status {
    /// A table for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "node {}", self.node);
        let _ = match &self.next_epoch {
            Some(next) => writeln!(out, "epoch {} (re-keying to {next})", self.epoch),
            None => writeln!(out, "epoch {}", self.epoch),
        };
        let _ = writeln!(out, "pod CIDRs {}", self.pod_cidrs.join(" "));
        let _ = writeln!(out, "cluster pod space {}", self.cluster_cidrs.join(" "));
        let _ = writeln!(out, "{}", self.guards.table());
        let _ = writeln!(out, "\nkey generations:");
        for g in &self.generations {
            let newest = if g.newest { "  (newest)" } else { "" };
            let _ = writeln!(
                out,
                "  {:>2}  {}  key {}{newest}",
                g.generation,
                g.algorithm,
                g.fingerprints.join(" ")
            );
        }
        if !self.retired_generations.is_empty() {
            let list: Vec<String> = self
                .retired_generations
                .iter()
                .map(Generation::to_string)
                .collect();
            let _ = writeln!(out, "  retired (SAs removed): {}", list.join(", "));
        }
        let _ = writeln!(
            out,
            "\n{:<16} {:<15} {:>5} {:>4} {:<10} {:<20} {:<16}  {:>10} {:>12} {:>10} {:>12} {:>10}",
            "peer",
            "ip",
            "id",
            "gen",
            "receives",
            "rotation",
            "re-key",
            "out pkts",
            "out bytes",
            "in pkts",
            "in bytes",
            "to xfrm"
        );
        for p in &self.peers {
            let sum = |sas: &[Sa]| {
                sas.iter()
                    .fold((0, 0), |(n, b), s| (n + s.packets, b + s.bytes))
            };
            let (out_n, out_b) = sum(&p.outbound);
            let (in_n, in_b) = sum(&p.inbound);
            let generation = p
                .sending_generation
                .map_or("-".to_owned(), |g| g.to_string());
            let receives = p.receives.as_ref().map_or("all".to_owned(), |r| {
                r.iter()
                    .map(Generation::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            });
            let _ = writeln!(
                out,
                "{:<16} {:<15} {:>5} {:>4} {:<10} {:<20} {:<16}  {:>10} {:>12} {:>10} {:>12} {:>10}",
                p.name,
                p.ip,
                p.id,
                generation,
                receives,
                p.rotation.as_str(),
                p.rekey.as_str(),
                out_n,
                out_b,
                in_n,
                in_b,
                p.esp_accepted_packets
            );
        }
        if !self.peers.is_empty() {
            let _ = writeln!(
                out,
                "  (in pkts: ESP its IN SAs decrypted; to xfrm: ESP with a known SPI that the \
                 ingress guard let through to xfrm, which may still reject it: see the kernel \
                 xfrm errors, /proc/net/xfrm_stat)"
            );
        }
        let _ = writeln!(out, "\npeer pod CIDRs:");
        for p in &self.peers {
            let v6 = match p.sending_generation_v6 {
                Some(g) => format!("  (IPv6 marked with generation {g})"),
                None if p.pod_cidrs.iter().any(|c| c.contains(':')) => {
                    "  (IPv6 not marked)".to_owned()
                }
                None => String::new(),
            };
            let _ = writeln!(out, "  {:<16} {}{v6}", p.name, p.pod_cidrs.join(" "));
        }
        let through_udp: Vec<_> = self
            .peers
            .iter()
            .filter_map(|p| Some((&p.name, p.esp_in_udp?)))
            .collect();
        if !through_udp.is_empty() {
            let _ = writeln!(out, "\nESP in UDP to:");
            for (name, to) in through_udp {
                let _ = writeln!(out, "  {name:<16} {to}");
            }
        }
        let _ = writeln!(out, "\ncounters:");
        for (name, value) in &self.counters {
            let _ = writeln!(out, "  {name:<28} {value}");
        }
        if !self.xfrm_errors.is_empty() {
            let _ = writeln!(out, "\nkernel xfrm errors:");
            for (name, value) in &self.xfrm_errors {
                let meaning = xfrm_stat_meaning(name).map_or(String::new(), |m| format!("  ({m})"));
                let _ = writeln!(out, "  {name:<28} {value}{meaning}");
            }
        }
        out
    }

    /// Prometheus text exposition. Label values are escaped as the format asks (`\\`, `\"`,
    /// `\n`), whatever a name holds.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP xsteer_packets_total Verdicts of the eBPF programs.\n# TYPE xsteer_packets_total counter"
        );
        for (name, value) in &self.counters {
            let _ = writeln!(
                out,
                "xsteer_packets_total{{verdict=\"{}\"}} {value}",
                label(name)
            );
        }
        let _ = writeln!(
            out,
            "# HELP xsteer_guard_attached 1 for each interface a guard is attached to, by hook.\n\
             # TYPE xsteer_guard_attached gauge"
        );
        let ingress = self
            .guards
            .ingress
            .iter()
            .map(|(interface, hook)| ("ingress", interface, hook.as_str()));
        let egress = self
            .guards
            .egress
            .iter()
            .map(|interface| ("egress", interface, "tc"));
        for (guard, interface, hook) in ingress.chain(egress) {
            let _ = writeln!(
                out,
                "xsteer_guard_attached{{guard=\"{guard}\",interface=\"{}\",hook=\"{hook}\"}} 1",
                label(interface)
            );
        }
        let _ = writeln!(
            out,
            "# HELP xsteer_rekey_in_progress 1 while this node moves its SAs to a new epoch.\n\
             # TYPE xsteer_rekey_in_progress gauge\nxsteer_rekey_in_progress {}",
            u8::from(self.next_epoch.is_some())
        );
        let _ = writeln!(
            out,
            "# HELP xsteer_sa_packets_total Packets carried per SA.\n# TYPE xsteer_sa_packets_total counter\n\
             # HELP xsteer_sa_bytes_total Bytes carried per SA.\n# TYPE xsteer_sa_bytes_total counter"
        );
        for p in &self.peers {
            for (direction, sas) in [("out", &p.outbound), ("in", &p.inbound)] {
                for sa in sas.iter().filter(|s| s.installed) {
                    let cpu = sa.cpu.map_or("any".to_owned(), |c| c.to_string());
                    let labels = format!(
                        "peer=\"{}\",direction=\"{direction}\",spi=\"{:#010x}\",generation=\"{}\",cpu=\"{cpu}\"",
                        label(&p.name),
                        sa.spi,
                        sa.generation
                    );
                    let _ = writeln!(out, "xsteer_sa_packets_total{{{labels}}} {}", sa.packets);
                    let _ = writeln!(out, "xsteer_sa_bytes_total{{{labels}}} {}", sa.bytes);
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP xsteer_esp_accepted_packets_total ESP with a known SPI that the ingress guard \
             let through to xfrm, per peer; not what xfrm decrypted (xsteer_sa_packets_total \
             direction=\"in\"): xfrm may still reject it (xsteer_xfrm_errors_total, e.g. \
             XfrmInStateProtoError).\n\
             # TYPE xsteer_esp_accepted_packets_total counter"
        );
        for p in &self.peers {
            let _ = writeln!(
                out,
                "xsteer_esp_accepted_packets_total{{peer=\"{}\"}} {}",
                label(&p.name),
                p.esp_accepted_packets
            );
        }
        let _ = writeln!(
            out,
            "# HELP xsteer_xfrm_errors_total The kernel's /proc/net/xfrm_stat counters.\n\
             # TYPE xsteer_xfrm_errors_total counter"
        );
        for (name, value) in &self.xfrm_errors {
            let _ = writeln!(
                out,
                "xsteer_xfrm_errors_total{{stat=\"{}\"}} {value}",
                label(name)
            );
        }
        out
    }
}

impl Guards {
    /// One line per guard: where it runs, or that it runs nowhere.
    fn table(&self) -> String {
        let ingress: Vec<String> = self
            .ingress
            .iter()
            .map(|(interface, hook)| format!("{interface} at {hook}"))
            .collect();
        format!(
            "ingress guard {}\negress guard {}",
            list_or_none(&ingress),
            list_or_none(&self.egress)
        )
    }
}

/// `items` joined by commas, or a warning that there are none.
fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "attached nowhere".to_owned()
    } else {
        items.join(", ")
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guards_are_read_from_their_link_pins() {
        let dir = std::env::temp_dir().join(format!("xsteer-status-guards-{}", std::process::id()));
        let pins = links::links_dir(&dir);
        fs::create_dir_all(&pins).unwrap();
        assert_eq!(Guards::pinned(&dir), Guards::default());
        assert_eq!(
            Guards::default().table(),
            "ingress guard attached nowhere\negress guard attached nowhere"
        );
        for (program, interface) in [
            (programs::INGRESS_GUARD_TC, "eth0"),
            (programs::INGRESS_GUARD, "ens1"),
            (programs::EGRESS_GUARD, "eth0"),
            (programs::POD_CLASSIFIER, "veth1"),
        ] {
            fs::write(links::pin_path(&dir, program, interface), b"").unwrap();
        }
        let guards = Guards::pinned(&dir);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            guards,
            Guards {
                ingress: vec![
                    ("ens1".to_owned(), "xdp".to_owned()),
                    ("eth0".to_owned(), "tc".to_owned())
                ],
                egress: vec!["eth0".to_owned()],
            }
        );
        assert_eq!(
            guards.table(),
            "ingress guard ens1 at xdp, eth0 at tc\negress guard eth0"
        );
    }

    /// A status with one peer whose guard let 10 ESP through to xfrm, of which xfrm decrypted 7.
    fn one_peer() -> Status {
        let generation = Generation::new(1).unwrap();
        Status {
            node: "node-a".into(),
            epoch: "11".repeat(16),
            next_epoch: None,
            pod_cidrs: vec!["10.244.1.0/24".into()],
            cluster_cidrs: vec!["10.244.0.0/16".into()],
            generations: Vec::new(),
            retired_generations: Vec::new(),
            peers: vec![Peer {
                name: "node-b".into(),
                ip: "192.168.0.2".parse().unwrap(),
                id: 2,
                esp_in_udp: None,
                pod_cidrs: vec!["10.244.2.0/24".into()],
                sending_generation: Some(generation),
                sending_generation_v6: None,
                receives: None,
                rotation: Rotation::Done,
                rekey: Rekey::None,
                outbound: Vec::new(),
                inbound: vec![Sa {
                    spi: 0x0002_0011,
                    cpu: None,
                    generation,
                    installed: true,
                    in_use: false,
                    bytes: 700,
                    packets: 7,
                }],
                esp_accepted_packets: 10,
            }],
            guards: Guards::default(),
            counters: Vec::new(),
            xfrm_errors: vec![
                ("XfrmInStateProtoError".into(), 3),
                ("XfrmOutNoStates".into(), 1),
            ],
        }
    }

    #[test]
    fn the_table_tells_what_the_guard_passed_from_what_xfrm_decrypted() {
        let table = one_peer().table();
        let header = table.lines().find(|l| l.starts_with("peer ")).unwrap();
        assert!(
            header.ends_with("in pkts     in bytes    to xfrm"),
            "{header:?}"
        );
        let row = table.lines().find(|l| l.starts_with("node-b")).unwrap();
        assert!(row.ends_with("7          700         10"), "{row:?}");
        assert!(
            table.contains(
                "to xfrm: ESP with a known SPI that the ingress guard let through to xfrm, which \
                 may still reject it: see the kernel xfrm errors, /proc/net/xfrm_stat)"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "  XfrmInStateProtoError        3  (failed to decrypt or authenticate: a key or \
                 ESN setting other than the sender's)\n  XfrmOutNoStates              1\n"
            ),
            "{table}"
        );
    }

    #[test]
    fn the_metric_help_says_the_guard_count_is_not_what_xfrm_decrypted() {
        let metrics = one_peer().metrics();
        assert!(
            metrics.contains(
                "# HELP xsteer_esp_accepted_packets_total ESP with a known SPI that the ingress \
                 guard let through to xfrm, per peer; not what xfrm decrypted"
            ),
            "{metrics}"
        );
        assert!(metrics.contains("xsteer_esp_accepted_packets_total{peer=\"node-b\"} 10\n"));
        assert!(metrics.contains("xsteer_xfrm_errors_total{stat=\"XfrmInStateProtoError\"} 3\n"));
    }

    #[test]
    fn only_the_nonzero_xfrm_stats_are_kept() {
        let text = "XfrmInError             \t0\nXfrmInNoStates          \t12\n\
                    XfrmInStateSeqError     \t5\ngarbage\n";
        assert_eq!(
            nonzero_xfrm_stats(text),
            [
                ("XfrmInNoStates".to_owned(), 12),
                ("XfrmInStateSeqError".to_owned(), 5)
            ]
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("node-a"), "node-a");
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
