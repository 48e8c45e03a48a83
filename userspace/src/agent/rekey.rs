//! Re-keying before an SA's sequence counter runs out.
//!
//! An SA without extended sequence numbers stops after 2^32 packets, and an AES-GCM key must
//! never see a counter restart. Well before, the node takes a new epoch: every key it shares
//! derives from its epoch, so all its SAs are re-keyed at once, by the same rule as a key
//! rotation — nobody sends under keys the receiver does not have yet:
//! 1. the node installs IN and OUT SAs under the new epoch with every peer, then lists it in its
//!    record as `next_epoch`: peers may send to it under the new epoch from then on;
//! 2. each peer installs its SAs for the new epoch, moves its traffic to the node onto them,
//!    and acks the epoch in its record; the node then moves its traffic to that peer onto them
//!    (one policy update per generation);
//! 3. once every peer has acked and the grace period is over, the old epoch's SAs go.
//!
//! A peer that is down only holds back step 3: the others move over without waiting for it.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use crate::{
    kernel::xfrm::{SaCounters, StateKey},
    keys::{Epoch, KeyFile},
    protocol::{cpu_spi, sending_epochs, wire_spi},
    view::View,
};

/// The default number of packets an SA in use sends before the node re-keys: half of what an
/// SA without extended sequence numbers can.
pub const DEFAULT_AFTER_PACKETS: u64 = 1 << 31;

/// How often the SA counters are read (a dump of every SA of xsteer's).
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// An SA in use that has sent enough packets to re-key.
#[derive(Debug, PartialEq, Eq)]
pub struct WornOut {
    /// The peer it sends to.
    pub peer: String,
    /// Its wire SPI.
    pub spi: u32,
    /// The packets it has sent.
    pub packets: u64,
}

/// The busiest OUT SA in use (the one an OUT policy names) if it has sent `after_packets` or
/// more. SAs kept only for a re-key or rotation under way are not counted: they are on their
/// way out.
pub fn worn_out(
    view: &View,
    keys: &KeyFile,
    counters: &BTreeMap<StateKey, SaCounters>,
    after_packets: u64,
) -> Option<WornOut> {
    let local = &view.node;
    view.peers
        .iter()
        .flat_map(|peer| {
            let (ours, theirs) = sending_epochs(local, peer);
            // Each SA of the set in use counts: a per-CPU SA's counter is its own.
            keys.generations().iter().flat_map(move |g| {
                let set = wire_spi(local.id, g.generation(), &ours, &theirs);
                (0..=local.per_cpu_sas).filter_map(move |slot| {
                    let spi = cpu_spi(set, slot);
                    let packets = counters.get(&StateKey { dst: peer.ip, spi })?.packets;
                    Some(WornOut {
                        peer: peer.name.clone(),
                        spi,
                        packets,
                    })
                })
            })
        })
        .filter(|sa| sa.packets >= after_packets)
        .max_by_key(|sa| sa.packets)
}

/// Where the end of a re-key stands, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Finish {
    /// These peers have not acked the new epoch yet (listed when the list changes).
    Waiting(Vec<String>),
    /// Every peer has acked: the old epoch goes after the grace period.
    GraceStarted,
    /// Nothing new since the last step.
    Unchanged,
    /// The grace period is over: the old epoch goes now.
    Due,
}

/// The end of the re-key under way: every peer acks, then a grace period passes.
#[derive(Debug)]
pub struct Completion {
    grace: Duration,
    waiting: Option<BTreeSet<String>>,
    all_acked_since: Option<(Epoch, Instant)>,
}

impl Completion {
    /// Nothing under way; the old epoch will stay `grace` after every peer acked the new one.
    pub fn new(grace: Duration) -> Completion {
        Completion {
            grace,
            waiting: None,
            all_acked_since: None,
        }
    }

    /// The grace period.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Updates the re-key to `next` from the peers of `view` at `now`.
    pub fn step(&mut self, next: Epoch, view: &View, now: Instant) -> Finish {
        let waiting: BTreeSet<String> = view
            .peers
            .iter()
            .filter(|p| p.acked_epoch != Some(next))
            .map(|p| p.name.clone())
            .collect();
        if !waiting.is_empty() {
            self.all_acked_since = None;
            if self.waiting.as_ref() == Some(&waiting) {
                return Finish::Unchanged;
            }
            self.waiting = Some(waiting.clone());
            return Finish::Waiting(waiting.into_iter().collect());
        }
        self.waiting = None;
        match self.all_acked_since {
            Some((epoch, since)) if epoch == next => {
                if now.duration_since(since) >= self.grace {
                    self.all_acked_since = None;
                    Finish::Due
                } else {
                    Finish::Unchanged
                }
            }
            _ => {
                self.all_acked_since = Some((next, now));
                Finish::GraceStarted
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::{
        config::fixtures::{PEER_C, TWO_NODES},
        keys::Generation,
        view::fixtures,
    };

    fn config() -> View {
        fixtures::view(&format!("{TWO_NODES}{PEER_C}"))
    }

    fn keys() -> KeyFile {
        KeyFile::parse(
            "3 rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f10111213 128\n\
             4 rfc4106(gcm(aes)) 101112131415161718191a1b1c1d1e1f20212223 128\n",
        )
        .unwrap()
    }

    #[test]
    fn only_the_sas_in_use_count_towards_a_rekey() {
        let mut config = config();
        let keys = keys();
        let local = config.node.clone();
        let b = config.peers[0].clone();
        let in_use = wire_spi(1, Generation::new(4).unwrap(), &local.epoch, &b.epoch);
        let key = |spi| StateKey { dst: b.ip, spi };
        let counters = |packets| BTreeMap::from([(key(in_use), SaCounters { bytes: 0, packets })]);
        assert_eq!(worn_out(&config, &keys, &counters(999), 1000), None);
        assert_eq!(
            worn_out(&config, &keys, &counters(1000), 1000),
            Some(WornOut {
                peer: "b".into(),
                spi: in_use,
                packets: 1000
            })
        );
        // Once b re-keys, the SA under its old epoch is on its way out: it does not count.
        config.peers[0].next_epoch = Some(Epoch::from_bytes([0x77; 16]));
        assert_eq!(worn_out(&config, &keys, &counters(5000), 1000), None);
    }

    #[test]
    fn a_rekey_ends_a_grace_period_after_the_last_ack() {
        let mut config = config();
        let next = Epoch::from_bytes([0x99; 16]);
        config.node.next_epoch = Some(next);
        let mut completion = Completion::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(
            completion.step(next, &config, at(0)),
            Finish::Waiting(vec!["b".into(), "c".into()])
        );
        assert_eq!(completion.step(next, &config, at(1)), Finish::Unchanged);
        config.peers[0].acked_epoch = Some(next);
        assert_eq!(
            completion.step(next, &config, at(2)),
            Finish::Waiting(vec!["c".into()])
        );
        // An ack of an older epoch is no ack of this one.
        config.peers[1].acked_epoch = Some(config.node.epoch);
        assert_eq!(completion.step(next, &config, at(3)), Finish::Unchanged);
        config.peers[1].acked_epoch = Some(next);
        assert_eq!(completion.step(next, &config, at(4)), Finish::GraceStarted);
        assert_eq!(completion.step(next, &config, at(13)), Finish::Unchanged);
        // A peer that loses the ack (its record went back) starts the wait over.
        config.peers[1].acked_epoch = None;
        assert_eq!(
            completion.step(next, &config, at(14)),
            Finish::Waiting(vec!["c".into()])
        );
        config.peers[1].acked_epoch = Some(next);
        assert_eq!(completion.step(next, &config, at(15)), Finish::GraceStarted);
        assert_eq!(completion.step(next, &config, at(25)), Finish::Due);
    }
}
