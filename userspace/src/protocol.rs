//! The rules two xsteer nodes follow so that each can derive what the other does without asking:
//! which wire SPI an SA has, under which epochs and with which key generation a node sends to a
//! peer. The reconcile builds SAs and policies by them, `status` reads the kernel by them, and
//! the agent's rotation and re-key steps decide by them; docs/keys.md and docs/marks.md describe
//! them for people.

use xsteer_common::spi;
/// The most per-CPU SAs a node sends on (defined with the SPI layout).
pub use xsteer_common::spi::PER_CPU_SAS_MAX;

use crate::{
    keys::{Epoch, Generation, GenerationError, KeyFile},
    view::{LocalNode, Peer},
};

/// The wire SPI of the SA set from node `node_id` under `generation`, keyed with the sender's
/// epoch `src_epoch` and the receiver's `dst_epoch`: the SPI of its slot-0 SA, the one any CPU
/// of the sender may use ([`cpu_spi`] gives the others).
///
/// The layout is [`xsteer_common::spi`]'s: node ID, CPU slot, the two epochs' tags
/// ([`Epoch::spi_tag`]) and the generation. The node ID makes the SPI unique at every
/// receiver; the tags give an SA re-keyed on either side a new SPI (a node re-keys to an epoch
/// with another tag), so old and new SAs coexist while traffic moves over. Read in hex it names
/// its sender: `0x0002_00b3` is node 2, generation 3. Never below 65,536, so never in the
/// range RFC 4303 reserves.
pub fn wire_spi(node_id: u16, generation: Generation, src_epoch: &Epoch, dst_epoch: &Epoch) -> u32 {
    spi::compose(
        node_id,
        0,
        src_epoch.spi_tag(),
        dst_epoch.spi_tag(),
        generation.get(),
    )
}

/// Which of a node's `epochs` (current, next) its outbound SA with wire SPI `spi` is keyed
/// under: the one whose tag the SPI carries as the sender's. A re-key's two epochs have
/// different tags, so there is at most one.
pub fn sender_epoch(spi: u32, epochs: &[Epoch]) -> Option<Epoch> {
    let tag = (spi::pairing(spi) >> spi::TAG_BITS) as u8;
    epochs.iter().find(|e| e.spi_tag() == tag).copied()
}

/// The SPI of the SA in CPU slot `slot` of the set whose slot-0 SPI is `set_spi`: slot `c + 1`
/// is the per-CPU SA of the sender's CPU `c`.
pub fn cpu_spi(set_spi: u32, slot: u8) -> u32 {
    spi::shared(set_spi) | (u32::from(slot) << spi::CPU_SLOT_SHIFT & spi::CPU_SLOT_MASK)
}

/// The epochs of a node: the current one, then the one it is re-keying to.
pub fn epochs(epoch: Epoch, next: Option<Epoch>) -> impl Iterator<Item = Epoch> + Clone {
    std::iter::once(epoch).chain(next)
}

/// The (local, peer) epochs that traffic to `peer` is sent under.
///
/// The peer's newest: it lists a new epoch only once it has the IN SAs for it. Ours: the new
/// one only once the peer acks it in its record, for only then does it have the IN SAs.
pub fn sending_epochs(local: &LocalNode, peer: &Peer) -> (Epoch, Epoch) {
    let ours = match local.next_epoch {
        Some(next) if peer.acked_epoch == Some(next) => next,
        _ => local.epoch,
    };
    (ours, peer.next_epoch.unwrap_or(peer.epoch))
}

/// The generation to send to a peer with: the newest of the key file's that the peer says it
/// can receive (all of them for a peer that says nothing), or `None` when they share none.
/// Switching a peer to a new generation only once it advertises it is what makes a rotation
/// lossless: its IN SAs exist by then.
pub fn sending_generation(
    keys: &KeyFile,
    advertised: Option<&[Generation]>,
) -> Result<Option<Generation>, GenerationError> {
    let newest = keys.newest()?.generation();
    let Some(advertised) = advertised else {
        return Ok(Some(newest));
    };
    // Walk back from the newest through the file's run of generations (15 precedes 1).
    Ok(keys
        .newest_first()
        .into_iter()
        .find(|g| advertised.contains(g)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outbound_spi_names_the_senders_epoch_it_is_keyed_under() {
        let current = Epoch::from_bytes([0x20; 16]);
        let next = Epoch::from_bytes([0xE0; 16]);
        let peer = Epoch::from_bytes([0x40; 16]);
        let g = Generation::new(3).unwrap();
        let epochs = [current, next];
        for (src, expect) in [(current, Some(current)), (next, Some(next)), (peer, None)] {
            let spi = cpu_spi(wire_spi(1, g, &src, &peer), 5);
            assert_eq!(sender_epoch(spi, &epochs), expect, "{src}");
        }
    }

    fn g(n: u8) -> Generation {
        Generation::new(n).unwrap()
    }

    #[test]
    fn a_peer_is_sent_to_with_the_newest_generation_it_advertises() {
        let keys = KeyFile::parse(
            "14 rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f10111213 128\n\
             15 rfc4106(gcm(aes)) 101112131415161718191a1b1c1d1e1f20212223 128\n\
             1 rfc4106(gcm(aes)) 202122232425262728292a2b2c2d2e2f30313233 128\n",
        )
        .unwrap();
        let at = |adv: Option<&[Generation]>| sending_generation(&keys, adv).unwrap();
        assert_eq!(at(None), Some(g(1)), "a configured peer: the newest");
        assert_eq!(at(Some(&[g(14), g(15), g(1)])), Some(g(1)));
        assert_eq!(
            at(Some(&[g(14), g(15)])),
            Some(g(15)),
            "not caught up: the one before"
        );
        assert_eq!(at(Some(&[g(14)])), Some(g(14)));
        assert_eq!(
            at(Some(&[g(7)])),
            None,
            "nothing in common: nothing is marked"
        );
    }

    #[test]
    fn wire_spi_names_sender_both_epochs_and_generation() {
        let epoch = |first: u8| {
            let mut bytes = [0u8; 16];
            bytes[0] = first;
            Epoch::from_bytes(bytes)
        };
        // Tags 0b101 and 0b110: 0xA7 >> 5 and 0xC9 >> 5.
        let (src, dst) = (epoch(0xA7), epoch(0xC9));
        assert_eq!(wire_spi(2, g(3), &src, &dst), 0x0002_02E3);
        assert_eq!(wire_spi(2, g(3), &dst, &src), 0x0002_0353);
        assert_eq!(wire_spi(65535, g(15), &src, &dst), 0xFFFF_02EF);
        assert!(wire_spi(1, g(1), &epoch(0), &epoch(0)) >= 65_536);
        let set = wire_spi(2, g(3), &src, &dst);
        assert_eq!(cpu_spi(set, 1), 0x0002_06E3, "CPU 0's SA");
        assert_eq!(cpu_spi(set, 63), 0x0002_FEE3, "CPU 62's SA");
        assert_eq!(cpu_spi(cpu_spi(set, 5), 0), set);
    }
}
