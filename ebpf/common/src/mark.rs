//! The skb mark layout that steers pod traffic into IPsec.
//!
//! ```text
//!  31                16 15    12 11     8 7       0
//! +--------------------+--------+--------+---------+
//! |   remote node ID   |  gen   | magic  | foreign |
//! +--------------------+--------+--------+---------+
//! ```
//!
//! The pod classifier stamps `magic = 0xE` (encrypt), the key generation (1..15; Cilium calls
//! it the SPI) and the remote node ID. xfrm OUT states and policies select on these bits, and policy routing selects
//! on the magic alone. Bits 0..7 belong to other software and are always preserved.
//! docs/marks.md has worked examples.

/// The bits of the mark that xsteer owns; a program never changes a bit outside them.
pub const OWNED_MASK: u32 = 0xFFFF_FF00;
/// The magic nibble.
pub const MAGIC_MASK: u32 = 0x0000_0F00;
/// Magic meaning "encrypt this packet" (`0xE00`).
pub const MAGIC_ENCRYPT: u32 = 0x0000_0E00;
/// The magic nibble and the generation nibble: what an xfrm policy matches for one key
/// generation.
pub const KEY_MASK: u32 = 0x0000_FF00;
/// Where the key generation (1..15) sits.
pub const GENERATION_SHIFT: u32 = 12;
/// The key generation nibble.
pub const GENERATION_MASK: u32 = 0x0000_F000;
/// Where the remote node ID sits.
pub const NODE_ID_SHIFT: u32 = 16;
/// The remote node ID half-word.
pub const NODE_ID_MASK: u32 = 0xFFFF_0000;

/// Lowest key generation a mark can carry.
pub const GENERATION_MIN: u8 = 1;
/// Highest key generation; the generation after it is [`GENERATION_MIN`].
pub const GENERATION_MAX: u8 = 15;

/// The owned bits of an encrypt mark for key generation `generation` towards node `node_id`.
///
/// Only the low four bits of `generation` are used; the caller guarantees `1..=15`.
#[inline(always)]
pub const fn encrypt(generation: u8, node_id: u16) -> u32 {
    ((node_id as u32) << NODE_ID_SHIFT)
        | (((generation & 0x0F) as u32) << GENERATION_SHIFT)
        | MAGIC_ENCRYPT
}

/// Replaces the owned bits of `current` with `owned`, preserving every foreign bit.
#[inline(always)]
pub const fn stamp(current: u32, owned: u32) -> u32 {
    (current & !OWNED_MASK) | (owned & OWNED_MASK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypt_mark_matches_the_documented_examples() {
        // docs/marks.md: generation 3 to node 7.
        assert_eq!(encrypt(3, 7), 0x0007_3E00);
        assert_eq!(encrypt(3, 7) & KEY_MASK, 0x3E00);
        assert_eq!(encrypt(15, 65535), 0xFFFF_FE00);
        assert_eq!(encrypt(1, 1) & MAGIC_MASK, MAGIC_ENCRYPT);
    }

    #[test]
    fn stamp_preserves_foreign_bits_and_replaces_owned_ones() {
        assert_eq!(stamp(0x0000_00A5, encrypt(3, 7)), 0x0007_3EA5);
        // A stale xsteer mark is replaced whole, not OR-ed into.
        assert_eq!(stamp(0xFFFF_FFFF, encrypt(1, 2)), 0x0002_1EFF);
    }

    #[test]
    fn generation_is_confined_to_its_nibble() {
        assert_eq!(encrypt(0x1F, 0) & !GENERATION_MASK & !MAGIC_MASK, 0);
    }
}
