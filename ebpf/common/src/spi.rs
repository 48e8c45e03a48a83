//! The wire SPI layout: what the 32-bit SPI of an xsteer SA says about it.
//!
//! ```text
//!  31                16 15      10 9     7 6     4 3      0
//! +--------------------+----------+-------+-------+--------+
//! |   sender node ID   | CPU slot | s.tag | r.tag |  gen   |
//! +--------------------+----------+-------+-------+--------+
//! ```
//!
//! - The sender's node ID makes an SPI unique at every receiver and indexes the receiver's set
//!   of valid SPIs for that sender (`peer_spi_sets`).
//! - The CPU slot tells the SAs of one set apart: slot 0 is the SA that any CPU of the sender
//!   may use, slot `c + 1` the per-CPU SA of the sender's CPU `c`. Each has its own key.
//! - The tags of the sender's and the receiver's epochs give an SA re-keyed on either side a new
//!   SPI, so old and new SAs coexist while traffic moves over.
//! - The key generation, 1..=15, as in the skb mark.
//!
//! The bits below the CPU slot name an SA set: the SAs a policy picks among (by reqid) for
//! one pairing of epochs and one generation.

/// Where the sender's node ID sits.
pub const NODE_ID_SHIFT: u32 = 16;
/// Where the CPU slot sits.
pub const CPU_SLOT_SHIFT: u32 = 10;
/// The CPU slot bits.
pub const CPU_SLOT_MASK: u32 = 0x0000_FC00;
/// How many CPU slots an SPI can name: slot 0 and one per CPU for the first 63 CPUs.
pub const CPU_SLOTS_MAX: u32 = 64;
/// The most per-CPU SAs a node sends on: one per CPU slot after the shared SA's. CPUs past
/// them use the shared SA.
pub const PER_CPU_SAS_MAX: u8 = (CPU_SLOTS_MAX - 1) as u8;
/// Where the pairing of the two epoch tags sits (the sender's above the receiver's).
pub const PAIRING_SHIFT: u32 = 4;
/// The pairing bits, once shifted down.
pub const PAIRING_MASK: u32 = 0x3F;
/// Width of one epoch tag.
pub const TAG_BITS: u32 = 3;
/// The generation bits.
pub const GENERATION_MASK: u32 = 0x0000_000F;
/// The bits that name an SA set: pairing and generation.
pub const SET_MASK: u32 = 0x0000_03FF;

/// The wire SPI of the SA from node `node_id` in CPU slot `cpu_slot`, under the epoch tags
/// `src_tag` and `dst_tag` (3 bits each) and key generation `generation` (1..=15).
#[inline(always)]
pub const fn compose(node_id: u16, cpu_slot: u8, src_tag: u8, dst_tag: u8, generation: u8) -> u32 {
    ((node_id as u32) << NODE_ID_SHIFT)
        | (((cpu_slot as u32) << CPU_SLOT_SHIFT) & CPU_SLOT_MASK)
        | (((src_tag as u32) & 0x7) << (PAIRING_SHIFT + TAG_BITS))
        | (((dst_tag as u32) & 0x7) << PAIRING_SHIFT)
        | ((generation as u32) & GENERATION_MASK)
}

/// The sender's node ID.
#[inline(always)]
pub const fn node_id(spi: u32) -> u32 {
    spi >> NODE_ID_SHIFT
}

/// The CPU slot: 0 for the SA any CPU may use, `c + 1` for CPU `c`'s.
#[inline(always)]
pub const fn cpu_slot(spi: u32) -> u32 {
    (spi & CPU_SLOT_MASK) >> CPU_SLOT_SHIFT
}

/// The two epoch tags, the sender's above the receiver's.
#[inline(always)]
pub const fn pairing(spi: u32) -> u16 {
    ((spi >> PAIRING_SHIFT) & PAIRING_MASK) as u16
}

/// The SPI of the SA in slot 0 of the same set: the one any CPU may use.
#[inline(always)]
pub const fn shared(spi: u32) -> u32 {
    spi & !CPU_SLOT_MASK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_stay_in_their_bits() {
        let spi = compose(2, 5, 0b101, 0b011, 3);
        assert_eq!(spi, 0x0002_16B3);
        assert_eq!(node_id(spi), 2);
        assert_eq!(cpu_slot(spi), 5);
        assert_eq!(pairing(spi), 0b101_011);
        assert_eq!(spi & GENERATION_MASK, 3);
        assert_eq!(shared(spi), 0x0002_02B3);
        assert_eq!(spi & SET_MASK, shared(spi) & SET_MASK);
        assert_eq!(compose(0xFFFF, 63, 7, 7, 15), 0xFFFF_FFFF);
        // Out-of-range inputs never spill into a neighbour's bits.
        assert_eq!(compose(1, 64, 8, 8, 16), 0x0001_0000);
    }
}
