//! When an old key generation may go: once every peer has moved past it, and a grace period
//! later.
//!
//! Towards a peer a node sends with the newest generation both of them have (see
//! [`sending_generation`]), and the peer does the same towards it. So once the newest generation
//! shared with every peer is newer than g, nobody sends with g any more — except packets already
//! in flight and peers that have not yet read the latest node records. The grace period covers
//! those; after it, g's SAs, policies and SPIs are removed and g is no longer advertised. A peer
//! that is down keeps its last record, so a generation it still uses stays until it comes back
//! and moves on: the others switch among themselves without waiting for it, they only keep the
//! old SAs around for it.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use crate::{
    keys::{Generation, GenerationError, KeyFile},
    protocol::sending_generation,
    view::Peer,
};

/// The default time between "every peer has moved past a generation" and its removal.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(300);

/// Generations waiting out their grace period.
#[derive(Debug)]
pub struct Retirement {
    grace: Duration,
    /// Generation → when every peer was first seen past it.
    pending: BTreeMap<Generation, Instant>,
}

/// A generation that has become due or stopped being retirable, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Every peer has moved past the generation; it goes after the grace period.
    Pending(Generation),
    /// A peer uses the generation again (a node came back with an older record): kept.
    InUseAgain(Generation),
}

/// The generations of `keys` older than the oldest one still shared with some peer, oldest
/// first: nobody sends with them any more. The newest generation is never among them.
pub fn moved_past(keys: &KeyFile, peers: &[Peer]) -> Result<Vec<Generation>, GenerationError> {
    // The file's run of generations, newest first (15 precedes 1).
    keys.newest()?;
    let order = keys.newest_first();
    let position = |generation: Generation| order.iter().position(|&g| g == generation);
    // The oldest generation still in use with some peer; a peer that shares none of them can
    // neither send nor receive with any, so it holds nothing back.
    let mut in_use = 0;
    for peer in peers {
        if let Some(shared) = sending_generation(keys, peer.generations.as_deref())? {
            in_use = in_use.max(position(shared).unwrap_or(0));
        }
    }
    Ok(order[in_use + 1..].iter().rev().copied().collect())
}

impl Retirement {
    /// No generation pending; each will wait `grace` once it can go.
    pub fn new(grace: Duration) -> Retirement {
        Retirement {
            grace,
            pending: BTreeMap::new(),
        }
    }

    /// The grace period.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Updates the pending generations from `keys` (those still in service) and `peers` at
    /// `now`; returns the generations whose grace period is over, and what changed.
    pub fn due(
        &mut self,
        keys: &KeyFile,
        peers: &[Peer],
        now: Instant,
    ) -> Result<(Vec<Generation>, Vec<Progress>), GenerationError> {
        let past = moved_past(keys, peers)?;
        let mut progress = Vec::new();
        self.pending.retain(|generation, _| {
            let keep = past.contains(generation);
            if !keep && keys.get(*generation).is_some() {
                progress.push(Progress::InUseAgain(*generation));
            }
            keep
        });
        for &generation in &past {
            self.pending.entry(generation).or_insert_with(|| {
                progress.push(Progress::Pending(generation));
                now
            });
        }
        let due = self
            .pending
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= self.grace)
            .map(|(generation, _)| *generation)
            .collect::<Vec<_>>();
        for generation in &due {
            self.pending.remove(generation);
        }
        Ok((due, progress))
    }

    /// When `generation` will be removed, if it is waiting.
    pub fn removal_at(&self, generation: Generation) -> Option<Instant> {
        self.pending
            .get(&generation)
            .map(|since| *since + self.grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Epoch;

    fn g(n: u8) -> Generation {
        Generation::new(n).unwrap()
    }

    fn gens(numbers: &[u8]) -> Vec<Generation> {
        numbers.iter().map(|&n| g(n)).collect()
    }

    fn keys(spis: &[u8]) -> KeyFile {
        let text: String = spis
            .iter()
            .map(|spi| format!("{spi} rfc4106(gcm(aes)) {:040x} 128\n", u128::from(*spi)))
            .collect();
        KeyFile::parse(&text).unwrap()
    }

    fn peer(name: &str, generations: Option<&[u8]>) -> Peer {
        Peer {
            name: name.into(),
            ip: "192.168.0.2".parse().unwrap(),
            id: 2,
            pod_cidrs: vec!["10.244.2.0/24".parse().unwrap()],
            pod_cidrs_v6: Vec::new(),
            epoch: Epoch::from_bytes([2; 16]),
            next_epoch: None,
            acked_epoch: None,
            generations: generations.map(gens),
            per_cpu_sas: 0,
            esp_in_udp: None,
            esn: true,
        }
    }

    #[test]
    fn a_generation_goes_once_every_peer_shares_a_newer_one() {
        let k = keys(&[14, 15, 1]);
        assert_eq!(
            moved_past(&k, &[]).unwrap(),
            gens(&[14, 15]),
            "alone: all but the newest"
        );
        let b_done = peer("b", Some(&[14, 15, 1]));
        let c_behind = peer("c", Some(&[14, 15]));
        let c_far_behind = peer("c", Some(&[14]));
        assert_eq!(
            moved_past(&k, std::slice::from_ref(&b_done)).unwrap(),
            gens(&[14, 15])
        );
        assert_eq!(
            moved_past(&k, &[b_done.clone(), c_behind]).unwrap(),
            gens(&[14]),
            "c still uses 15"
        );
        assert_eq!(
            moved_past(&k, &[b_done.clone(), c_far_behind]).unwrap(),
            Vec::<Generation>::new()
        );
        // A config peer without a record is assumed to move in step.
        assert_eq!(moved_past(&k, &[peer("d", None)]).unwrap(), gens(&[14, 15]));
        // A peer sharing nothing holds nothing back.
        assert_eq!(
            moved_past(&k, &[b_done, peer("e", Some(&[7]))]).unwrap(),
            gens(&[14, 15])
        );
    }

    #[test]
    fn the_grace_period_starts_when_the_last_peer_moves_and_restarts_if_one_goes_back() {
        let k = keys(&[4, 5]);
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let mut r = Retirement::new(grace);
        let behind = [peer("b", Some(&[4]))];
        let done = [peer("b", Some(&[4, 5]))];
        assert_eq!(r.due(&k, &behind, t0).unwrap(), (vec![], vec![]));
        assert_eq!(
            r.due(&k, &done, t0 + Duration::from_secs(1)).unwrap(),
            (vec![], vec![Progress::Pending(g(4))])
        );
        assert_eq!(r.removal_at(g(4)), Some(t0 + Duration::from_secs(11)));
        assert_eq!(
            r.due(&k, &behind, t0 + Duration::from_secs(2)).unwrap(),
            (vec![], vec![Progress::InUseAgain(g(4))])
        );
        assert_eq!(r.removal_at(g(4)), None);
        r.due(&k, &done, t0 + Duration::from_secs(3)).unwrap();
        assert_eq!(
            r.due(&k, &done, t0 + Duration::from_secs(12)).unwrap(),
            (vec![], vec![]),
            "9 s of grace so far"
        );
        assert_eq!(
            r.due(&k, &done, t0 + Duration::from_secs(13)).unwrap(),
            (vec![g(4)], vec![])
        );
        assert_eq!(r.removal_at(g(4)), None);
    }
}
