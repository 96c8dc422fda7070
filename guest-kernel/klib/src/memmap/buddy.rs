//! The free frames as Linux's buddy allocator holds them: blocks of 2^order frames, aligned to
//! their size, each marked on its first page (`PageBuddy`, `private` = order).
//!
//! The guest allocates with a [`FrameBitmap`](super::FrameBitmap); this module keeps the
//! `struct page` array telling the same story in Linux's terms, so makedumpfile can leave the
//! free pages out of a dump. The blocks are a function of the bitmap alone — every free frame
//! belongs to the largest fully free aligned block of at most [`MAX_PAGE_ORDER`] containing it
//! (what a buddy allocator that always merges reaches) — so an allocation or a free changes
//! only the first pages of the blocks around it, a handful of writes:
//!
//! - [`blocks`] splits a free range into its blocks (boot time: one write per block);
//! - [`after_alloc`] gives the blocks left around frames just allocated;
//! - [`after_free`] gives the blocks that frames just freed join, and the first pages of the
//!   blocks they swallowed, which stop being first pages.
//!
//! The callers write the allocated or freed frames' own pages themselves.
//!
//! ```
//! use crashvisor_klib::memmap::buddy::{after_alloc, blocks, Block, Change};
//!
//! // Frames 0..16 free: one block of order 4.
//! assert_eq!(blocks(0, 16).collect::<Vec<_>>(), [Block { pfn: 0, order: 4 }]);
//! // Frame 5 allocated: what is left of the block splits.
//! let free = |start: u64, end: u64| (start..end).all(|pfn| pfn != 5 && pfn < 16);
//! let mut changes = Vec::new();
//! after_alloc(5, 6, free, |change| changes.push(change));
//! assert_eq!(
//!     changes,
//!     [Change::Head(Block { pfn: 0, order: 2 }), Change::Head(Block { pfn: 4, order: 0 }),
//!      Change::Head(Block { pfn: 6, order: 1 }), Change::Head(Block { pfn: 8, order: 3 })]
//! );
//! ```

use crate::page::MAX_PAGE_ORDER;

/// A free block: 2^`order` frames from `pfn`, which is a multiple of 2^`order`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Block {
    /// First frame.
    pub pfn: u64,
    /// log2 of the number of frames.
    pub order: u32,
}

impl Block {
    /// One past the last frame.
    pub const fn end(&self) -> u64 {
        self.pfn + (1 << self.order)
    }
}

/// A change to the first pages of free blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// This block is free: its first page becomes `PageBuddy` with its order.
    Head(Block),
    /// This free frame is no longer the first of a block (its block merged into a larger one).
    NotHead(u64),
}

/// The blocks of the free range `[start, end)`, lowest first: at each frame the largest block
/// that starts there and fits.
pub fn blocks(start: u64, end: u64) -> Blocks {
    Blocks { next: start, end }
}

/// Iterator returned by [`blocks`].
#[derive(Clone, Debug)]
pub struct Blocks {
    next: u64,
    end: u64,
}

impl Iterator for Blocks {
    type Item = Block;

    fn next(&mut self) -> Option<Block> {
        if self.next >= self.end {
            return None;
        }
        let mut order = 0;
        while order < MAX_PAGE_ORDER
            && self.next.is_multiple_of(2 << order)
            && self.next.checked_add(2 << order).is_some_and(|end| end <= self.end)
        {
            order += 1;
        }
        let block = Block { pfn: self.next, order };
        self.next = block.end();
        Some(block)
    }
}

/// The block holding free frame `pfn`: the largest aligned block of order up to
/// [`MAX_PAGE_ORDER`] whose frames `is_free(start, end)` says are all free. `None` if `pfn`
/// itself is not free.
pub fn containing_block(pfn: u64, is_free: impl Fn(u64, u64) -> bool) -> Option<Block> {
    if !is_free(pfn, pfn + 1) {
        return None;
    }
    let mut block = Block { pfn, order: 0 };
    while block.order < MAX_PAGE_ORDER {
        let size = 1u64 << block.order;
        let sibling = block.pfn ^ size;
        if !sibling.checked_add(size).is_some_and(|end| is_free(sibling, end)) {
            break;
        }
        block = Block { pfn: block.pfn & !size, order: block.order + 1 };
    }
    Some(block)
}

/// Frames `[start, end)` were free and have just been allocated; `is_free` answers for the
/// frames now. Reports the blocks that what was left of their blocks forms.
pub fn after_alloc(start: u64, end: u64, is_free: impl Fn(u64, u64) -> bool, mut change: impl FnMut(Change)) {
    if start >= end {
        return;
    }
    // Free before the allocation: free now, or one of the frames just allocated.
    let was_free = |from: u64, to: u64| {
        let below = (from, to.min(start));
        let above = (from.max(end), to);
        (below.0 >= below.1 || is_free(below.0, below.1)) && (above.0 >= above.1 || is_free(above.0, above.1))
    };
    let (Some(first), Some(last)) = (containing_block(start, was_free), containing_block(end - 1, was_free)) else {
        return;
    };
    blocks(first.pfn, start).chain(blocks(end, last.end())).for_each(|block| change(Change::Head(block)));
}

/// Frames `[start, end)` were in use and have just been freed; `is_free` answers for the
/// frames now. Reports the blocks they are now part of, and the first pages of the blocks those
/// swallowed.
pub fn after_free(start: u64, end: u64, is_free: impl Fn(u64, u64) -> bool, mut change: impl FnMut(Change)) {
    let mut pfn = start;
    while pfn < end {
        let Some(block) = containing_block(pfn, &is_free) else {
            return;
        };
        // The blocks that were free beside the freed frames inside the new block.
        let swallowed = blocks(block.pfn, start.max(block.pfn)).chain(blocks(end.min(block.end()), block.end()));
        swallowed.filter(|old| old.pfn != block.pfn).for_each(|old| change(Change::NotHead(old.pfn)));
        change(Change::Head(block));
        pfn = block.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memmap::FrameBitmap;
    use alloc::collections::BTreeMap;
    use alloc::vec;
    use alloc::vec::Vec;

    /// The blocks of a bitmap, computed the slow way: each free frame's largest fully free
    /// aligned block.
    fn canonical(bitmap: &FrameBitmap) -> BTreeMap<u64, u32> {
        let mut heads = BTreeMap::new();
        let mut pfn = 0;
        while pfn < bitmap.nr_frames() {
            if bitmap.is_free(pfn) {
                let mut order = 0;
                while order < MAX_PAGE_ORDER {
                    let bigger = pfn & !((2u64 << order) - 1);
                    if !bitmap.is_free_range(bigger, bigger + (2 << order)) {
                        break;
                    }
                    order += 1;
                }
                let head = pfn & !((1u64 << order) - 1);
                heads.insert(head, order);
                pfn = head + (1 << order);
            } else {
                pfn += 1;
            }
        }
        heads
    }

    fn apply(heads: &mut BTreeMap<u64, u32>, change: Change) {
        match change {
            Change::Head(block) => {
                heads.insert(block.pfn, block.order);
            }
            Change::NotHead(pfn) => {
                assert!(heads.remove(&pfn).is_some(), "NotHead({pfn}) for a frame that was no head");
            }
        }
    }

    #[test]
    fn blocks_are_aligned_maximal_and_capped() {
        assert_eq!(
            blocks(3, 20).collect::<Vec<_>>(),
            [
                Block { pfn: 3, order: 0 },
                Block { pfn: 4, order: 2 },
                Block { pfn: 8, order: 3 },
                Block { pfn: 16, order: 2 }
            ]
        );
        let big: Vec<_> = blocks(0, 3000).collect();
        assert_eq!(big[..2], [Block { pfn: 0, order: 10 }, Block { pfn: 1024, order: 10 }]);
        assert_eq!(big.iter().map(|b| 1u64 << b.order).sum::<u64>(), 3000);
        assert_eq!(blocks(7, 7).count(), 0);
        assert_eq!(blocks(u64::MAX - 1, u64::MAX).count(), 1);
    }

    #[test]
    fn randomized_against_the_canonical_blocks() {
        let nr_frames = 5000;
        let mut words = vec![0u64; FrameBitmap::words_needed(nr_frames)];
        let mut bitmap = FrameBitmap::new(&mut words, nr_frames).unwrap();
        let mut heads = BTreeMap::new();
        for (start, end) in [(1, 700), (900, 4999)] {
            bitmap.free_range(start, end).unwrap();
            blocks(start, end).for_each(|b| apply(&mut heads, Change::Head(b)));
        }
        assert_eq!(heads, canonical(&bitmap));
        let mut state = 0x9e37_79b9_u64;
        let mut rand = |n: u64| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % n
        };
        let mut allocated: Vec<(u64, u64)> = Vec::new();
        for _ in 0..3000 {
            if rand(3) != 0 || allocated.is_empty() {
                let count = 1 + rand(40);
                let Some(start) = bitmap.alloc_contiguous(count, 1 << rand(4)) else { continue };
                // Allocated frames stop being heads; the caller overwrites their pages.
                let taken: Vec<u64> = heads.range(start..start + count).map(|(&p, _)| p).collect();
                taken.iter().for_each(|p| {
                    heads.remove(p);
                });
                after_alloc(start, start + count, |s, e| bitmap.is_free_range(s, e), |c| apply(&mut heads, c));
                allocated.push((start, count));
            } else {
                let (start, count) = allocated.swap_remove(rand(allocated.len() as u64) as usize);
                // Free a random part: the allocator frees whole runs, but any used range works.
                let from = start + rand(count);
                let to = from + 1 + rand(start + count - from);
                bitmap.free_range(from, to).unwrap();
                after_free(from, to, |s, e| bitmap.is_free_range(s, e), |c| apply(&mut heads, c));
                if from > start {
                    allocated.push((start, from - start));
                }
                if to < start + count {
                    allocated.push((to, start + count - to));
                }
            }
            assert_eq!(heads, canonical(&bitmap));
        }
    }

    #[test]
    fn a_free_merges_up_to_the_largest_order() {
        let mut words = [0u64; 32];
        let mut bitmap = FrameBitmap::new(&mut words, 2048).unwrap();
        bitmap.free_range(0, 2048).unwrap();
        bitmap.mark_used_range(1023, 1024).unwrap();
        let mut heads: BTreeMap<u64, u32> = canonical(&bitmap);
        assert_eq!(heads.len(), 11);
        bitmap.free(1023).unwrap();
        let mut changes = Vec::new();
        after_free(1023, 1024, |s, e| bitmap.is_free_range(s, e), |c| changes.push(c));
        changes.iter().for_each(|&c| apply(&mut heads, c));
        assert_eq!(heads, BTreeMap::from([(0, 10), (1024, 10)]));
        assert_eq!(changes.last(), Some(&Change::Head(Block { pfn: 0, order: 10 })));
        assert_eq!(changes.iter().filter(|c| matches!(c, Change::NotHead(_))).count(), 9);
    }
}
