//! Key generations: the number of a key-file line, which the skb mark carries in its key nibble.
//!
//! The key file calls it the SPI (Cilium's word); xsteer keeps "SPI" for the 32-bit wire SPI of
//! an SA and calls this a generation everywhere else.

use std::fmt;

use serde::Serialize;
use xsteer_common::mark;

/// A key generation, 1..=15. Generations wrap: 15 is followed by 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Generation(u8);

impl Generation {
    /// The lowest generation.
    pub const MIN: Generation = Generation(mark::GENERATION_MIN);
    /// The highest generation; the one after it is [`Generation::MIN`].
    pub const MAX: Generation = Generation(mark::GENERATION_MAX);

    /// The generation numbered `number`, if it is in 1..=15.
    pub const fn new(number: u8) -> Option<Generation> {
        if number >= mark::GENERATION_MIN && number <= mark::GENERATION_MAX {
            Some(Generation(number))
        } else {
            None
        }
    }

    /// Its number, 1..=15.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The generation after this one (15 is followed by 1).
    pub const fn next(self) -> Generation {
        if self.0 >= mark::GENERATION_MAX {
            Generation::MIN
        } else {
            Generation(self.0 + 1)
        }
    }

    /// The generation before this one (1 is preceded by 15).
    pub const fn previous(self) -> Generation {
        if self.0 <= mark::GENERATION_MIN {
            Generation::MAX
        } else {
            Generation(self.0 - 1)
        }
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_are_1_to_15_and_wrap() {
        assert_eq!(Generation::new(0), None);
        assert_eq!(Generation::new(16), None);
        let g = |n| Generation::new(n).unwrap();
        assert_eq!(g(1).next(), g(2));
        assert_eq!(g(14).next(), g(15));
        assert_eq!(g(15).next(), g(1));
        assert_eq!(g(1).previous(), g(15));
        assert_eq!(g(9).previous().next(), g(9));
        assert_eq!(g(7).to_string(), "7");
    }
}
