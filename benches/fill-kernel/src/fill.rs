//! Which pages get noise, and writing it.

use crashvisor_abi::layout::PAGE_SIZE;

use crate::noise::{PageNoise, WORDS_PER_PAGE};
use crate::pvh::RamMap;

/// How much of RAM gets noise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Pages with an even page frame number (physical address / 4096); odd ones stay untouched.
    Half,
    /// Every page.
    Full,
}

impl Mode {
    /// The mode's name on the command line and the console.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Half => "half",
            Self::Full => "full",
        }
    }

    /// Whether the page at `page_gpa` gets noise.
    pub fn fills(self, page_gpa: u64) -> bool {
        match self {
            Self::Half => (page_gpa / PAGE_SIZE).is_multiple_of(2),
            Self::Full => true,
        }
    }
}

/// What a fill wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FillStats {
    /// Pages written.
    pub pages: u64,
    /// Bytes written (`pages` × 4096).
    pub bytes: u64,
}

/// The pages `mode` fills: the whole pages of `ram` at or above `from_gpa`, in map order.
pub fn pages(ram: &RamMap, from_gpa: u64, mode: Mode) -> impl Iterator<Item = u64> + '_ {
    ram.ranges().iter().flat_map(move |range| {
        let start = range.start_gpa.max(from_gpa).next_multiple_of(PAGE_SIZE);
        let end = range.end_gpa & !(PAGE_SIZE - 1);
        (start..end.max(start)).step_by(PAGE_SIZE as usize).filter(move |&gpa| mode.fills(gpa))
    })
}

/// Writes every page of `pages(ram, from_gpa, mode)` with its noise under `seed`.
///
/// # Safety
/// Those pages are identity-mapped and writable, and nothing in this program lives in them.
pub unsafe fn fill(ram: &RamMap, from_gpa: u64, mode: Mode, seed: u64) -> FillStats {
    let mut stats = FillStats::default();
    for page_gpa in pages(ram, from_gpa, mode) {
        let page = page_gpa as *mut u64;
        for (index, word) in PageNoise::new(seed, page_gpa).take(WORDS_PER_PAGE).enumerate() {
            // SAFETY: `index` < 512 keeps the write inside the page, which the caller gives us
            // to write. Volatile: only the host reads these bytes, never this program.
            unsafe { page.add(index).write_volatile(word) };
        }
        stats.pages += 1;
    }
    stats.bytes = stats.pages * PAGE_SIZE;
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crashvisor_abi::pvh::{MemmapEntry, MEMMAP_TYPE_RAM};

    fn ram(ranges: &[(u64, u64)]) -> RamMap {
        let entries: Vec<MemmapEntry> = ranges
            .iter()
            .map(|&(addr, end)| MemmapEntry { addr, size: end - addr, kind: MEMMAP_TYPE_RAM, reserved: 0 })
            .collect();
        RamMap::from_memmap(&entries).expect("few ranges")
    }

    #[test]
    fn half_takes_even_frames_above_the_image() {
        let map = ram(&[(0, 0xa_0000), (0x10_0000, 0x10_8000)]);
        let got: Vec<u64> = pages(&map, 0x10_3000, Mode::Half).collect();
        assert_eq!(got, [0x10_4000, 0x10_6000]);
    }

    #[test]
    fn full_takes_every_whole_page_of_every_range() {
        let map = ram(&[(0x10_0800, 0x10_3800), (0x1_0000_0000, 0x1_0000_2000)]);
        let got: Vec<u64> = pages(&map, 0x10_0000, Mode::Full).collect();
        assert_eq!(got, [0x10_1000, 0x10_2000, 0x1_0000_0000, 0x1_0000_1000]);
    }

    #[test]
    fn ranges_below_the_start_are_skipped() {
        let map = ram(&[(0, 0xa_0000)]);
        assert_eq!(pages(&map, 0x20_0000, Mode::Full).count(), 0);
    }
}
