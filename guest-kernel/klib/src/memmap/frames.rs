//! The page-frame bitmap: one bit per 4 KiB frame, set = in use.
//!
//! # Layout
//!
//! Frame `pfn` is bit `pfn % 64` of the little-endian `u64` word `pfn / 64`; read as bytes,
//! that is bit `pfn % 8` (least significant first) of byte `pfn / 8`. Bits past the last frame
//! are set. Only the words covering the frames are used. The kdump capture kernel (or
//! `dumpd`) can read the crashed kernel's bitmap out of the vmcore with [`frame_in_use`] to
//! skip free pages.
//!
//! # Cost
//!
//! The free-frame count is kept in a counter, never counted from the bits. A search hint, the
//! lowest word that may hold a free frame, makes [`FrameBitmap::alloc`] O(1) amortised when
//! frames are allocated in address order; frees below it move it back.

use core::fmt;

/// Frames per bitmap word.
const BITS: u64 = u64::BITS as u64;

/// Why a frame-bitmap operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The word slice is shorter than [`FrameBitmap::words_needed`].
    BitmapTooSmall,
    /// A frame number at or past the end, or a range with `start > end`.
    OutOfRange,
    /// Freeing a frame that is already free.
    DoubleFree,
    /// Marking used a frame that is already in use.
    AlreadyUsed,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BitmapTooSmall => "frame bitmap is too small for the frames",
            Self::OutOfRange => "frame number is out of range",
            Self::DoubleFree => "frame is already free",
            Self::AlreadyUsed => "frame is already in use",
        })
    }
}

impl core::error::Error for FrameError {}

/// Allocation state of `nr_frames` page frames, kept in a caller-provided word slice.
#[derive(Debug)]
pub struct FrameBitmap<'a> {
    words: &'a mut [u64],
    nr_frames: u64,
    free: u64,
    /// No word below this one has a free frame.
    hint: usize,
}

impl<'a> FrameBitmap<'a> {
    /// Words needed for `nr_frames` frames.
    pub const fn words_needed(nr_frames: u64) -> usize {
        nr_frames.div_ceil(BITS) as usize
    }

    /// Takes over `words` for `nr_frames` frames, all in use. Writes only the words needed.
    pub fn new(words: &'a mut [u64], nr_frames: u64) -> Result<Self, FrameError> {
        let needed = usize::try_from(nr_frames.div_ceil(BITS)).map_err(|_| FrameError::BitmapTooSmall)?;
        let words = words.get_mut(..needed).ok_or(FrameError::BitmapTooSmall)?;
        words.fill(u64::MAX);
        Ok(Self { words, nr_frames, free: 0, hint: 0 })
    }

    /// Number of frames tracked.
    pub fn nr_frames(&self) -> u64 {
        self.nr_frames
    }

    /// Number of free frames.
    pub fn free_count(&self) -> u64 {
        self.free
    }

    /// The bitmap words, e.g. to publish their address for the capture kernel.
    pub fn as_words(&self) -> &[u64] {
        self.words
    }

    /// Whether `pfn` is free; `false` past the end.
    pub fn is_free(&self, pfn: u64) -> bool {
        pfn < self.nr_frames && frame_in_use(self.words, pfn) == Some(false)
    }

    /// Whether every frame in `[start, end)` is free; `false` if any is past the end.
    pub fn is_free_range(&self, start: u64, end: u64) -> bool {
        self.check_range(start, end).is_ok() && self.all_words(start, end, |word, mask| word & mask == 0)
    }

    /// Frees one frame.
    pub fn free(&mut self, pfn: u64) -> Result<(), FrameError> {
        self.free_range(pfn, pfn.checked_add(1).ok_or(FrameError::OutOfRange)?)
    }

    /// Frees frames `[start, end)`. Fails, changing nothing, if any is already free.
    pub fn free_range(&mut self, start: u64, end: u64) -> Result<(), FrameError> {
        self.check_range(start, end)?;
        if !self.all_words(start, end, |word, mask| word & mask == mask) {
            return Err(FrameError::DoubleFree);
        }
        self.update_words(start, end, 0, |word, mask| word & !mask);
        self.free += end - start;
        if start < end {
            self.hint = self.hint.min(word_index(start));
        }
        Ok(())
    }

    /// Marks frames `[start, end)` in use. Fails, changing nothing, if any already is.
    pub fn mark_used_range(&mut self, start: u64, end: u64) -> Result<(), FrameError> {
        self.check_range(start, end)?;
        if !self.all_words(start, end, |word, mask| word & mask == 0) {
            return Err(FrameError::AlreadyUsed);
        }
        self.update_words(start, end, u64::MAX, |word, mask| word | mask);
        self.free -= end - start;
        Ok(())
    }

    /// Allocates the lowest free frame.
    pub fn alloc(&mut self) -> Option<u64> {
        if self.free == 0 {
            return None;
        }
        let (index, word) = self.words.iter_mut().enumerate().skip(self.hint).find(|(_, word)| **word != u64::MAX)?;
        // The lowest clear bit, located with `bsr` (baseline x86-64): `trailing_zeros`
        // compiles to `tzcnt`, which CPUs without BMI1 (and emulators) may not know.
        let lowest_clear = !*word & word.wrapping_add(1);
        let bit = 63 - lowest_clear.leading_zeros();
        *word |= lowest_clear;
        self.hint = index;
        self.free -= 1;
        Some(index as u64 * BITS + u64::from(bit))
    }

    /// Allocates the lowest `count` consecutive free frames starting at a multiple of
    /// `align_pfns` (a power of two; 0 means 1).
    pub fn alloc_contiguous(&mut self, count: u64, align_pfns: u64) -> Option<u64> {
        let align = align_pfns.max(1);
        if count == 0 || count > self.free || !align.is_power_of_two() {
            return None;
        }
        let mut start = (self.hint as u64 * BITS).checked_next_multiple_of(align)?;
        loop {
            let end = start.checked_add(count).filter(|&end| end <= self.nr_frames)?;
            match self.last_used(start, end) {
                None => {
                    self.update_words(start, end, u64::MAX, |word, mask| word | mask);
                    self.free -= count;
                    return Some(start);
                }
                Some(used) => start = (used + 1).checked_next_multiple_of(align)?,
            }
        }
    }

    fn check_range(&self, start: u64, end: u64) -> Result<(), FrameError> {
        if start <= end && end <= self.nr_frames {
            Ok(())
        } else {
            Err(FrameError::OutOfRange)
        }
    }

    /// Whether `test(word, mask)` holds for every word overlapping `[start, end)`. Whole words
    /// in the middle are scanned as a plain slice: boot frees all of RAM through here, and under
    /// an instruction emulator every instruction per word counts.
    fn all_words(&self, start: u64, end: u64, test: impl Fn(u64, u64) -> bool) -> bool {
        let (partial, full) = split_words(start, end);
        partial.into_iter().flatten().all(|(index, mask)| self.words.get(index).is_some_and(|&word| test(word, mask)))
            && self.words.get(full).is_some_and(|words| words.iter().all(|&word| test(word, u64::MAX)))
    }

    /// Replaces every word overlapping `[start, end)` with `update(word, mask)`; whole words
    /// become `update(word, u64::MAX)`, which must not depend on `word` (it is `full_value`).
    fn update_words(&mut self, start: u64, end: u64, full_value: u64, update: impl Fn(u64, u64) -> u64) {
        let (partial, full) = split_words(start, end);
        for (index, mask) in partial.into_iter().flatten() {
            if let Some(word) = self.words.get_mut(index) {
                *word = update(*word, mask);
            }
        }
        if let Some(words) = self.words.get_mut(full) {
            words.fill(full_value);
        }
    }

    /// The highest used frame in `[start, end)`.
    fn last_used(&self, start: u64, end: u64) -> Option<u64> {
        WordMasks::new(start, end)
            .filter_map(|(index, mask)| {
                let used = self.words.get(index)? & mask;
                (used != 0).then(|| index as u64 * BITS + u64::from(63 - used.leading_zeros()))
            })
            .last()
    }
}

/// Splits frames `[start, end)` into the partially covered words at either end, as
/// `(index, mask)`, and the range of wholly covered words between them.
fn split_words(start: u64, end: u64) -> ([Option<(usize, u64)>; 2], core::ops::Range<usize>) {
    if start >= end {
        return ([None, None], 0..0);
    }
    let first_full = start.div_ceil(BITS);
    let last_full = end / BITS;
    if first_full >= last_full {
        // No whole word: one or two partial words.
        let mut masks = WordMasks::new(start, end);
        return ([masks.next(), masks.next()], 0..0);
    }
    let head = (!start.is_multiple_of(BITS)).then(|| (word_index(start), u64::MAX << (start % BITS)));
    let tail = (!end.is_multiple_of(BITS)).then(|| (word_index(end), u64::MAX >> (BITS - end % BITS)));
    ([head, tail], word_index(first_full * BITS)..word_index(last_full * BITS))
}

/// Whether frame `pfn` is in use in a bitmap laid out like [`FrameBitmap`]'s (for example one
/// read from a crash dump); `None` past the end of `words`.
pub fn frame_in_use(words: &[u64], pfn: u64) -> Option<bool> {
    let word = words.get(usize::try_from(pfn / BITS).ok()?)?;
    Some(word >> (pfn % BITS) & 1 == 1)
}

fn word_index(pfn: u64) -> usize {
    // Frame numbers are checked against `nr_frames`, whose words fit in a slice.
    (pfn / BITS) as usize
}

/// The words overlapping `[start, end)` and, for each, the mask of the bits inside.
struct WordMasks {
    pfn: u64,
    end: u64,
}

impl WordMasks {
    fn new(start: u64, end: u64) -> Self {
        Self { pfn: start, end }
    }
}

impl Iterator for WordMasks {
    type Item = (usize, u64);

    fn next(&mut self) -> Option<(usize, u64)> {
        if self.pfn >= self.end {
            return None;
        }
        let word_start = self.pfn - self.pfn % BITS;
        let low = self.pfn - word_start;
        let high = (self.end - word_start).min(BITS);
        let mask = (u64::MAX >> (BITS - high)) & (u64::MAX << low);
        self.pfn = word_start + high;
        Some((word_index(word_start), mask))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    #[test]
    fn split_words_covers_exactly_the_frames_word_masks_covers() {
        for start in 0..200u64 {
            for end in start..200u64 {
                let mut expected: Vec<(usize, u64)> = WordMasks::new(start, end).collect();
                let (partial, full) = split_words(start, end);
                let mut got: Vec<(usize, u64)> = partial.into_iter().flatten().collect();
                got.extend(full.map(|i| (i, u64::MAX)));
                got.sort_unstable();
                expected.sort_unstable();
                assert_eq!(got, expected, "range {start}..{end}");
            }
        }
    }

    #[test]
    fn starts_all_used_and_touches_only_needed_words() {
        let mut words = [7u64; 4];
        let bitmap = FrameBitmap::new(&mut words, 100).unwrap();
        assert_eq!(bitmap.free_count(), 0);
        assert_eq!(bitmap.nr_frames(), 100);
        assert!(!bitmap.is_free(0));
        assert_eq!(bitmap.as_words(), [u64::MAX; 2]);
        assert_eq!(words[2..], [7, 7]);
        assert_eq!(FrameBitmap::words_needed(100), 2);
        assert_eq!(FrameBitmap::words_needed(128), 2);
        assert_eq!(FrameBitmap::words_needed(0), 0);
        let mut short = [0u64; 1];
        assert_eq!(FrameBitmap::new(&mut short, 65).unwrap_err(), FrameError::BitmapTooSmall);
    }

    #[test]
    fn free_and_mark_ranges_keep_the_count_and_are_atomic() {
        let mut words = [0u64; 4];
        let mut bitmap = FrameBitmap::new(&mut words, 200).unwrap();
        bitmap.free_range(10, 150).unwrap();
        assert_eq!(bitmap.free_count(), 140);
        assert!(bitmap.is_free(10) && bitmap.is_free(149));
        assert!(!bitmap.is_free(9) && !bitmap.is_free(150));
        assert_eq!(bitmap.free_range(140, 160), Err(FrameError::DoubleFree));
        assert!(!bitmap.is_free(150), "a failed free changes nothing");
        assert_eq!(bitmap.free_range(0, 201), Err(FrameError::OutOfRange));
        assert_eq!(bitmap.free_range(5, 4), Err(FrameError::OutOfRange));
        bitmap.free_range(7, 7).unwrap();

        assert!(bitmap.is_free_range(10, 150) && bitmap.is_free_range(149, 149));
        assert!(!bitmap.is_free_range(9, 150) && !bitmap.is_free_range(10, 151) && !bitmap.is_free_range(190, 201));
        bitmap.mark_used_range(64, 128).unwrap();
        assert_eq!(bitmap.free_count(), 76);
        assert_eq!(bitmap.as_words()[1], u64::MAX);
        assert_eq!(bitmap.mark_used_range(0, 11), Err(FrameError::AlreadyUsed));
        assert!(bitmap.is_free(10), "a failed mark changes nothing");
        assert_eq!(bitmap.free(64), Ok(()));
        assert_eq!(bitmap.free(64), Err(FrameError::DoubleFree));
        assert_eq!(bitmap.free(200), Err(FrameError::OutOfRange));
        assert_eq!(bitmap.free(u64::MAX), Err(FrameError::OutOfRange));
        assert!(!bitmap.is_free(1000));
    }

    #[test]
    fn alloc_returns_lowest_free_frame() {
        let mut words = [0u64; 3];
        let mut bitmap = FrameBitmap::new(&mut words, 130).unwrap();
        assert_eq!(bitmap.alloc(), None);
        bitmap.free_range(60, 130).unwrap();
        let got: Vec<_> = (0..70).map(|_| bitmap.alloc().unwrap()).collect();
        assert_eq!(got, (60..130).collect::<Vec<_>>());
        assert_eq!(bitmap.alloc(), None, "bits past nr_frames stay used");
        assert_eq!(bitmap.free_count(), 0);
        bitmap.free(100).unwrap();
        bitmap.free(61).unwrap();
        assert_eq!(bitmap.alloc(), Some(61), "a free below the hint moves it back");
        assert_eq!(bitmap.alloc(), Some(100));
    }

    #[test]
    fn alloc_contiguous_respects_alignment_and_holes() {
        let mut words = [0u64; 8];
        let mut bitmap = FrameBitmap::new(&mut words, 512).unwrap();
        bitmap.free_range(1, 512).unwrap();
        bitmap.mark_used_range(70, 71).unwrap();
        assert_eq!(bitmap.alloc_contiguous(64, 1), Some(1));
        assert_eq!(bitmap.alloc_contiguous(8, 0), Some(71));
        assert_eq!(bitmap.alloc_contiguous(16, 16), Some(80));
        assert_eq!(bitmap.alloc_contiguous(128, 128), Some(128));
        assert_eq!(bitmap.alloc_contiguous(256, 256), Some(256));
        assert_eq!(bitmap.alloc_contiguous(3, 3), None, "alignment must be a power of two");
        assert_eq!(bitmap.alloc_contiguous(0, 1), None);
        // Left free: 65..70, 79 and 96..128.
        assert_eq!(bitmap.alloc(), Some(65));
        assert_eq!(bitmap.alloc_contiguous(33, 1), None);
        let before = bitmap.free_count();
        assert_eq!(bitmap.alloc_contiguous(32, 1), Some(96));
        assert_eq!(bitmap.free_count(), before - 32);
        assert_eq!(bitmap.alloc_contiguous(1, 1), Some(66));
    }

    #[test]
    fn randomized_against_a_model() {
        let nr_frames = 1000;
        let mut words = vec![0u64; FrameBitmap::words_needed(nr_frames)];
        let mut bitmap = FrameBitmap::new(&mut words, nr_frames).unwrap();
        let mut model = vec![true; nr_frames as usize];
        let mut state = 0x1234_5678_u64;
        let mut rand = |n: u64| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % n
        };
        for _ in 0..5000 {
            match rand(4) {
                0 => {
                    let got = bitmap.alloc();
                    let expected = model.iter().position(|used| !used).map(|p| p as u64);
                    assert_eq!(got, expected);
                    if let Some(pfn) = got {
                        model[pfn as usize] = true;
                    }
                }
                1 => {
                    let (count, align) = (rand(20) + 1, 1 << rand(4));
                    let expected = (0..nr_frames)
                        .step_by(align as usize)
                        .find(|&s| s + count <= nr_frames && (s..s + count).all(|p| !model[p as usize]));
                    assert_eq!(bitmap.alloc_contiguous(count, align), expected);
                    if let Some(s) = expected {
                        (s..s + count).for_each(|p| model[p as usize] = true);
                    }
                }
                _ => {
                    let start = rand(nr_frames);
                    let end = (start + rand(30)).min(nr_frames);
                    let all_used = (start..end).all(|p| model[p as usize]);
                    let result = bitmap.free_range(start, end);
                    assert_eq!(result.is_ok(), all_used);
                    if all_used {
                        (start..end).for_each(|p| model[p as usize] = false);
                    }
                }
            }
            let free = model.iter().filter(|used| !**used).count() as u64;
            assert_eq!(bitmap.free_count(), free);
        }
        for pfn in 0..nr_frames {
            assert_eq!(frame_in_use(bitmap.as_words(), pfn), Some(model[pfn as usize]));
        }
    }

    #[test]
    fn bitmap_reads_as_lsb_first_bytes() {
        let mut words = [0u64; 2];
        let mut bitmap = FrameBitmap::new(&mut words, 128).unwrap();
        bitmap.free_range(0, 128).unwrap();
        bitmap.mark_used_range(9, 10).unwrap();
        bitmap.mark_used_range(64, 65).unwrap();
        let bytes: Vec<u8> = bitmap.as_words().iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(bytes[1], 0b10);
        assert_eq!(bytes[8], 0b1);
        assert_eq!(frame_in_use(&words, 9), Some(true));
        assert_eq!(frame_in_use(&words, 10), Some(false));
        assert_eq!(frame_in_use(&words, 128), None);
        assert_eq!(alloc::format!("{}", FrameError::DoubleFree), "frame is already free");
    }
}
