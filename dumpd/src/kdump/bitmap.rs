//! A kdump bitmap (one bit per pfn, LSB first) kept sparse: only 4 KiB blocks holding a set
//! bit are in memory, so a guest with memory at 0 and at 60 TiB costs two blocks plus one
//! pointer per block, not a bitmap of every pfn in between.

use crashvisor_klib::le::u64_at;

use super::BLOCK_SIZE;

/// Bits in one bitmap block.
pub const BITS_PER_BLOCK: u64 = BLOCK_SIZE * 8;

/// A bitmap of `len` bits stored as optional 4 KiB blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    len: u64,
    blocks: Vec<Option<Box<[u8]>>>,
}

impl Bitmap {
    /// An all-zero bitmap of `len` bits. The caller bounds `len` (see `MAX_MAPNR`): the block
    /// table costs one pointer per 32768 bits.
    pub fn new(len: u64) -> Self {
        let blocks = usize::try_from(len.div_ceil(BITS_PER_BLOCK)).unwrap_or(usize::MAX);
        Self { len, blocks: vec![None; blocks] }
    }

    /// The number of bits.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the bitmap has no bits at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of 4 KiB blocks the bitmap takes in a file.
    pub fn block_count(&self) -> u64 {
        self.blocks.len() as u64
    }

    /// Whether bit `bit` is set (false past the end).
    pub fn get(&self, bit: u64) -> bool {
        if bit >= self.len {
            return false;
        }
        let (block, byte, mask) = locate(bit);
        self.blocks[block].as_ref().is_some_and(|b| b[byte] & mask != 0)
    }

    /// Sets bit `bit`; bits past the end are ignored.
    pub fn set(&mut self, bit: u64) {
        if bit >= self.len {
            return;
        }
        let (block, byte, mask) = locate(bit);
        self.blocks[block].get_or_insert_with(zero_block)[byte] |= mask;
    }

    /// Sets bits `start..end` (clamped to the bitmap).
    pub fn set_range(&mut self, start: u64, end: u64) {
        let end = end.min(self.len);
        let mut bit = start;
        while bit < end {
            if bit.is_multiple_of(8) && end - bit >= 8 {
                let (block, byte, _) = locate(bit);
                let whole = ((end - bit) / 8).min(BLOCK_SIZE - byte as u64) as usize;
                self.blocks[block].get_or_insert_with(zero_block)[byte..byte + whole].fill(0xff);
                bit += whole as u64 * 8;
            } else {
                self.set(bit);
                bit += 1;
            }
        }
    }

    /// Block `index` as it goes in the file, or `None` if it is all zero (or past the end).
    pub fn block(&self, index: u64) -> Option<&[u8]> {
        self.blocks.get(usize::try_from(index).ok()?)?.as_deref()
    }

    /// Stores block `index` as read from a file; bits past the end are dropped, and an all-zero
    /// block takes no memory. `bytes` must be one block long.
    pub fn set_block(&mut self, index: u64, bytes: &[u8]) {
        let Some(slot) = usize::try_from(index).ok().and_then(|i| self.blocks.get_mut(i)) else { return };
        let mut block = zero_block();
        let n = bytes.len().min(block.len());
        block[..n].copy_from_slice(&bytes[..n]);
        let first = index * BITS_PER_BLOCK;
        if first + BITS_PER_BLOCK > self.len {
            let valid = self.len - first; // < BITS_PER_BLOCK; `index` is a valid block
            let byte = (valid / 8) as usize;
            if !valid.is_multiple_of(8) {
                block[byte] &= (1u8 << (valid % 8)) - 1;
                block[byte + 1..].fill(0);
            } else {
                block[byte..].fill(0);
            }
        }
        *slot = block.iter().any(|&b| b != 0).then_some(block);
    }

    /// The set bits, ascending.
    pub fn ones(&self) -> impl Iterator<Item = u64> + '_ {
        self.blocks.iter().enumerate().filter_map(|(i, b)| Some((i as u64, b.as_deref()?))).flat_map(|(i, block)| {
            block.chunks_exact(8).enumerate().flat_map(move |(w, word)| {
                let base = i * BITS_PER_BLOCK + w as u64 * 64;
                Ones { word: u64_at(word, 0), base }
            })
        })
    }

    /// The number of set bits.
    pub fn count_ones(&self) -> u64 {
        self.blocks.iter().flatten().map(|b| popcount(b)).sum()
    }

    /// The number of set bits before each block, then the total, for [`Bitmap::rank`].
    pub fn block_ranks(&self) -> Vec<u64> {
        let mut ranks = Vec::with_capacity(self.blocks.len() + 1);
        let mut total = 0;
        for block in &self.blocks {
            ranks.push(total);
            total += block.as_deref().map_or(0, popcount);
        }
        ranks.push(total);
        ranks
    }

    /// The number of set bits before `bit`, given this bitmap's [`Bitmap::block_ranks`]: the
    /// index of `bit`'s page descriptor when this is the 2nd bitmap.
    pub fn rank(&self, ranks: &[u64], bit: u64) -> u64 {
        let bit = bit.min(self.len);
        let block = (bit / BITS_PER_BLOCK) as usize;
        let before = ranks.get(block).copied().unwrap_or(0);
        let Some(bytes) = self.blocks.get(block).and_then(|b| b.as_deref()) else { return before };
        let in_block = (bit % BITS_PER_BLOCK) as usize; // < BLOCK_SIZE * 8
        let partial_mask = ((1u16 << (in_block % 8)) - 1) as u8;
        before + popcount(&bytes[..in_block / 8]) + u64::from((bytes[in_block / 8] & partial_mask).count_ones())
    }
}

/// The set bits of one 64-bit word.
struct Ones {
    word: u64,
    base: u64,
}

impl Iterator for Ones {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.word == 0 {
            return None;
        }
        let bit = self.word.trailing_zeros();
        self.word &= self.word - 1;
        Some(self.base + u64::from(bit))
    }
}

fn zero_block() -> Box<[u8]> {
    vec![0u8; BLOCK_SIZE as usize].into_boxed_slice()
}

/// (block index, byte in block, bit mask) of `bit`.
fn locate(bit: u64) -> (usize, usize, u8) {
    ((bit / BITS_PER_BLOCK) as usize, (bit % BITS_PER_BLOCK / 8) as usize, 1 << (bit % 8))
}

fn popcount(bytes: &[u8]) -> u64 {
    let words = bytes.chunks_exact(8);
    let tail: u64 = words.remainder().iter().map(|b| u64::from(b.count_ones())).sum();
    words.map(|w| u64::from(u64_at(w, 0).count_ones())).sum::<u64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_gets_and_counts() {
        let mut b = Bitmap::new(3 * BITS_PER_BLOCK + 5);
        assert_eq!(b.block_count(), 4);
        for bit in [0, 7, 8, 63, 64, BITS_PER_BLOCK - 1, 3 * BITS_PER_BLOCK + 4] {
            b.set(bit);
        }
        b.set(3 * BITS_PER_BLOCK + 5); // past the end: ignored
        assert!(b.get(7) && b.get(8) && !b.get(9) && !b.get(u64::MAX));
        assert!(b.block(1).is_none() && b.block(2).is_none(), "untouched blocks take no memory");
        let ones: Vec<u64> = b.ones().collect();
        assert_eq!(ones, [0, 7, 8, 63, 64, BITS_PER_BLOCK - 1, 3 * BITS_PER_BLOCK + 4]);
        assert_eq!(b.count_ones(), 7);
        let ranks = b.block_ranks();
        assert_eq!(ranks, [0, 6, 6, 6, 7]);
        for (i, &bit) in ones.iter().enumerate() {
            assert_eq!(b.rank(&ranks, bit), i as u64, "rank of {bit}");
        }
        assert_eq!(b.rank(&ranks, 9), 3);
        assert_eq!(b.rank(&ranks, b.len()), 7);
        let mut whole = Bitmap::new(2 * BITS_PER_BLOCK);
        whole.set(2 * BITS_PER_BLOCK - 1);
        assert_eq!(whole.rank(&whole.block_ranks(), whole.len()), 1, "rank at the very end");
    }

    #[test]
    fn ranges_match_single_bits() {
        for (start, end) in
            [(0, 0), (3, 5), (0, 64), (5, 40_000), (BITS_PER_BLOCK - 3, BITS_PER_BLOCK + 70), (9, 99_999)]
        {
            let mut fast = Bitmap::new(70_000);
            let mut slow = Bitmap::new(70_000);
            fast.set_range(start, end);
            for bit in start..end.min(70_000) {
                slow.set(bit);
            }
            assert_eq!(fast, slow, "{start}..{end}");
        }
    }

    #[test]
    fn blocks_from_a_file_drop_bits_past_the_end() {
        let mut b = Bitmap::new(BITS_PER_BLOCK + 12);
        b.set_block(1, &[0xff; BLOCK_SIZE as usize]);
        assert_eq!(b.count_ones(), 12);
        b.set_block(0, &[0; BLOCK_SIZE as usize]);
        assert!(b.block(0).is_none());
        b.set_block(7, &[0xff; BLOCK_SIZE as usize]); // no such block: ignored
        let mut exact = Bitmap::new(BITS_PER_BLOCK + 16);
        exact.set_block(1, &[0xff; BLOCK_SIZE as usize]);
        assert_eq!(exact.count_ones(), 16);
    }
}
