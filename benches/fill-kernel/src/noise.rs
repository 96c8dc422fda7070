//! The noise a filled page holds: a function of the seed and the page's physical address only,
//! so whoever knows the seed can recompute any page (the formula is in the crate documentation).

/// splitmix64's increment (2^64 / φ).
const SPLITMIX64_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
/// splitmix64's first finaliser multiplier.
const SPLITMIX64_MUL1: u64 = 0xbf58_476d_1ce4_e5b9;
/// splitmix64's second finaliser multiplier.
const SPLITMIX64_MUL2: u64 = 0x94d0_49bb_1331_11eb;
/// xorshift64*'s output multiplier.
const XORSHIFT64STAR_MUL: u64 = 0x2545_f491_4f6c_dd1d;

/// Little-endian `u64` words in a 4 KiB page.
pub const WORDS_PER_PAGE: usize = 512;

/// One splitmix64 step from state `x`: spreads the bits of (seed, address) over the whole word.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(SPLITMIX64_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(SPLITMIX64_MUL1);
    z = (z ^ (z >> 27)).wrapping_mul(SPLITMIX64_MUL2);
    z ^ (z >> 31)
}

/// The words of one page, first to last: an xorshift64* stream started from the page's own
/// state. Endless; take `WORDS_PER_PAGE`.
pub struct PageNoise {
    state: u64,
}

impl PageNoise {
    /// The noise of the page at physical address `page_gpa` under `seed`.
    pub fn new(seed: u64, page_gpa: u64) -> Self {
        // xorshift's state must not be zero.
        Self { state: splitmix64(seed ^ page_gpa) | 1 }
    }
}

impl Iterator for PageNoise {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        Some(x.wrapping_mul(XORSHIFT64STAR_MUL))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixed values, computed independently (a few lines of Python following the crate
    /// documentation's formula): a host-side check of a dump must find exactly these.
    #[test]
    fn known_words() {
        let words: Vec<u64> = PageNoise::new(0, 0x20_0000).take(WORDS_PER_PAGE).collect();
        assert_eq!(words[0], FIRST_WORD_SEED0_2MIB);
        assert_eq!(words[WORDS_PER_PAGE - 1], LAST_WORD_SEED0_2MIB);
        assert_eq!(PageNoise::new(12, 0x1234_5000).next(), Some(FIRST_WORD_SEED12));
    }

    #[test]
    fn pages_and_seeds_differ() {
        let first = |seed, gpa| PageNoise::new(seed, gpa).next();
        assert_ne!(first(0, 0x20_0000), first(0, 0x20_1000));
        assert_ne!(first(0, 0x20_0000), first(1, 0x20_0000));
    }

    const FIRST_WORD_SEED0_2MIB: u64 = 0xb702_bdd7_bb97_c8c5;
    const LAST_WORD_SEED0_2MIB: u64 = 0x68cf_0a7b_343c_8e2a;
    const FIRST_WORD_SEED12: u64 = 0x956d_c40c_03ed_8d40;
}
