//! The physical memory map and the page-frame bitmap.
//!
//! [`MemoryMap`] is built from the PVH memory map the VMM hands over: a sorted list of
//! page-aligned, non-overlapping ranges, each RAM or some kind of reserved. Firmware
//! reservations win over RAM where they overlap (like Linux's `e820__update_table()`), RAM is
//! clipped inward and other kinds are rounded outward to 4 KiB pages. The kernel then carves
//! its own image, boot modules and the crash-kernel area out of RAM with
//! [`MemoryMap::reserve`]. [`FrameBitmap`] tracks which 4 KiB frames are in use.
//!
//! ```
//! use crashvisor_abi::pvh::MemmapEntry;
//! use crashvisor_klib::memmap::{FrameBitmap, MemoryMap, RangeKind};
//!
//! let ram = |addr, size| MemmapEntry { addr, size, kind: 1, reserved: 0 };
//! let mut map = MemoryMap::from_pvh(&[ram(0, 0xa_0000), ram(0x10_0000, 0x3f0_0000)])?;
//! map.reserve(0x100_0000, 0x120_0000, RangeKind::Kernel)?;
//!
//! let nr_frames = map.ram_end() / 4096;
//! let mut words = [0u64; FrameBitmap::words_needed(0x400_0000 / 4096)];
//! let mut frames = FrameBitmap::new(&mut words, nr_frames)?;
//! for range in map.ram() {
//!     frames.free_range(range.start_pfn(), range.end_pfn())?;
//! }
//! let pfn = frames.alloc().expect("RAM is free");
//! assert!(!frames.is_free(pfn));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::fmt;

use crashvisor_abi::layout::PAGE_SIZE;
use crashvisor_abi::pvh::{MemmapEntry, MEMMAP_TYPE_RAM};

pub mod buddy;
mod frames;

pub use frames::{frame_in_use, FrameBitmap, FrameError};

/// Most ranges a [`MemoryMap`] holds (as many as PVH memory-map entries the VMM may write).
pub const MAX_RANGES: usize = 128;

/// What a physical range is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RangeKind {
    /// Usable RAM not yet claimed.
    Ram,
    /// Not RAM for the kernel: firmware-reserved, ACPI, unusable or any non-RAM E820 type.
    Reserved,
    /// RAM holding the kernel image.
    Kernel,
    /// RAM holding a boot module (e.g. the initrd or the kdump kernel's ELF headers).
    Module,
    /// RAM holding boot data the kernel still needs (start info, command line, page tables,
    /// the frame bitmap).
    BootData,
    /// RAM reserved for the kdump capture kernel (`crashkernel=`).
    CrashKernel,
}

impl RangeKind {
    /// Whether the range is RAM (claimed or not), as opposed to firmware-reserved.
    pub fn is_ram_backed(self) -> bool {
        self != Self::Reserved
    }
}

/// A physical address range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// What the range is used for.
    pub kind: RangeKind,
}

impl MemRange {
    const EMPTY: Self = Self { start: 0, end: 0, kind: RangeKind::Reserved };

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.end - self.start
    }

    /// Whether `addr` is inside the range.
    pub fn contains(&self, addr: u64) -> bool {
        (self.start..self.end).contains(&addr)
    }

    /// First frame of the range.
    pub fn start_pfn(&self) -> u64 {
        self.start / PAGE_SIZE
    }

    /// One past the last frame of the range.
    pub fn end_pfn(&self) -> u64 {
        self.end / PAGE_SIZE
    }
}

/// Why a memory-map operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemmapError {
    /// The map would need more than [`MAX_RANGES`] ranges.
    TooManyRanges,
    /// The range is empty, overflows, or asks to reserve as [`RangeKind::Ram`].
    InvalidRange {
        /// Requested start.
        start: u64,
        /// Requested end.
        end: u64,
    },
    /// Part of the range to reserve is not unclaimed RAM.
    NotRam {
        /// Requested start (rounded down to a page).
        start: u64,
        /// Requested end (rounded up to a page).
        end: u64,
    },
}

impl fmt::Display for MemmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooManyRanges => write!(f, "memory map needs more than {MAX_RANGES} ranges"),
            Self::InvalidRange { start, end } => {
                write!(f, "invalid memory range [{start:#x}-{end:#x})")
            }
            Self::NotRam { start, end } => {
                write!(f, "memory range [{start:#x}-{end:#x}) is not free RAM")
            }
        }
    }
}

impl core::error::Error for MemmapError {}

/// The physical memory map: sorted, non-overlapping, page-aligned ranges.
#[derive(Clone, Debug)]
pub struct MemoryMap {
    ranges: [MemRange; MAX_RANGES],
    len: usize,
}

impl MemoryMap {
    /// Builds the map from PVH memory-map entries (type 1 is RAM, anything else reserved).
    ///
    /// Zero-length entries are ignored, ranges reaching past 2^64 are cut at the top page,
    /// overlapping and adjacent ranges of a kind merge, and reserved wins over RAM.
    pub fn from_pvh(entries: &[MemmapEntry]) -> Result<Self, MemmapError> {
        let mut map = Self { ranges: [MemRange::EMPTY; MAX_RANGES], len: 0 };
        // Elementary intervals between all boundaries; each is reserved, RAM or a hole.
        let mut bounds = [0u64; 2 * MAX_RANGES];
        let mut nr_bounds = 0;
        for (start, end, _) in entries.iter().filter_map(entry_span) {
            let slots = bounds.get_mut(nr_bounds..nr_bounds + 2).ok_or(MemmapError::TooManyRanges)?;
            slots.copy_from_slice(&[start, end]);
            nr_bounds += 2;
        }
        let bounds = &mut bounds[..nr_bounds];
        bounds.sort_unstable();
        for pair in bounds.windows(2) {
            let &[start, end] = pair else { continue };
            if start == end {
                continue;
            }
            let kind = entries
                .iter()
                .filter_map(entry_span)
                .filter(|&(s, e, _)| s <= start && start < e)
                .map(|(.., kind)| kind)
                .reduce(|kind, other| match other {
                    RangeKind::Reserved => other,
                    _ => kind,
                });
            if let Some(kind) = kind {
                map.push(MemRange { start, end, kind })?;
            }
        }
        map.clip_ram();
        Ok(map)
    }

    /// All ranges in address order.
    pub fn ranges(&self) -> &[MemRange] {
        &self.ranges[..self.len]
    }

    /// The unclaimed RAM ranges in address order.
    pub fn ram(&self) -> impl DoubleEndedIterator<Item = MemRange> + '_ {
        self.ranges().iter().copied().filter(|range| range.kind == RangeKind::Ram)
    }

    /// Bytes of RAM the machine has, claimed or not.
    pub fn total_ram(&self) -> u64 {
        self.ranges().iter().filter(|range| range.kind.is_ram_backed()).map(MemRange::size).sum()
    }

    /// Bytes of RAM not yet claimed by [`reserve`](Self::reserve).
    pub fn available_ram(&self) -> u64 {
        self.ram().map(|range| range.size()).sum()
    }

    /// One past the highest byte of RAM (Linux's `max_pfn << PAGE_SHIFT`), 0 without RAM.
    pub fn ram_end(&self) -> u64 {
        self.ranges().iter().rev().find(|range| range.kind.is_ram_backed()).map_or(0, |range| range.end)
    }

    /// The range containing `addr`, if any.
    pub fn find(&self, addr: u64) -> Option<MemRange> {
        self.ranges().iter().copied().find(|range| range.contains(addr))
    }

    /// The highest `size`-byte block of unclaimed RAM that starts at a multiple of `align`
    /// (a power of two) and ends at or below `limit`, like Linux's top-down memblock search
    /// for `crashkernel=`. Reserve it with [`reserve`](Self::reserve).
    pub fn find_free_top_down(&self, size: u64, align: u64, limit: u64) -> Option<u64> {
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        self.ram().rev().find_map(|range| {
            let end = range.end.min(limit);
            let start = end.checked_sub(size)? & !(align - 1);
            (start >= range.start).then_some(start)
        })
    }

    /// Marks `[start, end)`, rounded outward to pages, as `kind`, splitting the RAM range
    /// around it. The whole range must be unclaimed RAM; nothing changes on error.
    pub fn reserve(&mut self, start: u64, end: u64, kind: RangeKind) -> Result<(), MemmapError> {
        let invalid = MemmapError::InvalidRange { start, end };
        if start >= end || kind == RangeKind::Ram {
            return Err(invalid);
        }
        let start = start & !(PAGE_SIZE - 1);
        let end = end.checked_next_multiple_of(PAGE_SIZE).ok_or(invalid)?;
        let index = self
            .ranges()
            .iter()
            .position(|r| r.kind == RangeKind::Ram && r.start <= start && end <= r.end)
            .ok_or(MemmapError::NotRam { start, end })?;
        let ram = self.ranges[index];
        let pieces = [MemRange { end: start, ..ram }, MemRange { start, end, kind }, MemRange { start: end, ..ram }];
        let new_len = self.len - 1 + pieces.iter().filter(|p| p.start < p.end).count();
        if new_len > MAX_RANGES {
            return Err(MemmapError::TooManyRanges);
        }
        self.remove(index);
        for (at, piece) in (index..).zip(pieces.into_iter().filter(|p| p.start < p.end)) {
            self.insert(at, piece);
        }
        self.coalesce();
        Ok(())
    }

    /// Appends a range after the last, merging with it if adjacent and of the same kind.
    fn push(&mut self, range: MemRange) -> Result<(), MemmapError> {
        if let Some(last) = self.ranges[..self.len].last_mut() {
            if last.kind == range.kind && last.end == range.start {
                last.end = range.end;
                return Ok(());
            }
        }
        let slot = self.ranges.get_mut(self.len).ok_or(MemmapError::TooManyRanges)?;
        *slot = range;
        self.len += 1;
        Ok(())
    }

    /// Shrinks RAM ranges inward to whole pages and drops the empty ones.
    fn clip_ram(&mut self) {
        let mut kept = 0;
        for i in 0..self.len {
            let mut range = self.ranges[i];
            if range.kind == RangeKind::Ram {
                range.start = range.start.checked_next_multiple_of(PAGE_SIZE).unwrap_or(u64::MAX);
                range.end &= !(PAGE_SIZE - 1);
            }
            if range.start < range.end {
                self.ranges[kept] = range;
                kept += 1;
            }
        }
        self.len = kept;
    }

    /// Merges adjacent ranges of the same kind.
    fn coalesce(&mut self) {
        let mut kept = 0usize;
        for i in 0..self.len {
            let range = self.ranges[i];
            match kept.checked_sub(1).map(|last| &mut self.ranges[last]) {
                Some(last) if last.kind == range.kind && last.end == range.start => {
                    last.end = range.end;
                }
                _ => {
                    self.ranges[kept] = range;
                    kept += 1;
                }
            }
        }
        self.len = kept;
    }

    fn remove(&mut self, index: usize) {
        self.ranges.copy_within(index + 1..self.len, index);
        self.len -= 1;
    }

    /// Inserts at `index`; the caller has checked the capacity.
    fn insert(&mut self, index: usize, range: MemRange) {
        self.ranges.copy_within(index..self.len, index + 1);
        self.ranges[index] = range;
        self.len += 1;
    }
}

/// An entry's range and kind: RAM as given, other kinds rounded outward to pages. `None`
/// for an empty entry.
fn entry_span(entry: &MemmapEntry) -> Option<(u64, u64, RangeKind)> {
    if entry.size == 0 {
        return None;
    }
    let end = entry.addr.saturating_add(entry.size);
    if entry.kind == MEMMAP_TYPE_RAM {
        return Some((entry.addr, end, RangeKind::Ram));
    }
    let start = entry.addr & !(PAGE_SIZE - 1);
    let end = end
        .checked_next_multiple_of(PAGE_SIZE)
        // Saturate at the last page boundary.
        .unwrap_or(!(PAGE_SIZE - 1));
    (start < end).then_some((start, end, RangeKind::Reserved))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crashvisor_abi::pvh::MEMMAP_TYPE_RESERVED;
    use RangeKind::*;

    fn entry(addr: u64, size: u64, kind: u32) -> MemmapEntry {
        MemmapEntry { addr, size, kind, reserved: 0 }
    }

    fn r(start: u64, end: u64, kind: RangeKind) -> MemRange {
        MemRange { start, end, kind }
    }

    #[test]
    fn builds_a_typical_pc_map() {
        let map = MemoryMap::from_pvh(&[
            entry(0x10_0000, 0xbff0_0000, MEMMAP_TYPE_RAM),
            entry(0, 0x9fc00, MEMMAP_TYPE_RAM),
            entry(0x9fc00, 0x400, MEMMAP_TYPE_RESERVED),
            entry(0xf0000, 0x10000, MEMMAP_TYPE_RESERVED),
            entry(0x1_0000_0000, 0x4000_0000, MEMMAP_TYPE_RAM),
            entry(0xfec0_0000, 0x1000, 4),
        ])
        .unwrap();
        assert_eq!(
            map.ranges(),
            [
                r(0, 0x9f000, Ram),
                r(0x9f000, 0xa0000, Reserved),
                r(0xf0000, 0x100000, Reserved),
                r(0x10_0000, 0xc000_0000, Ram),
                r(0xfec0_0000, 0xfec0_1000, Reserved),
                r(0x1_0000_0000, 0x1_4000_0000, Ram),
            ]
        );
        assert_eq!(map.total_ram(), 0x9f000 + 0xbff0_0000 + 0x4000_0000);
        assert_eq!(map.ram_end(), 0x1_4000_0000);
        assert_eq!(map.ram().count(), 3);
    }

    #[test]
    fn merges_overlapping_and_adjacent_ram_then_clips() {
        let map = MemoryMap::from_pvh(&[
            entry(0x1800, 0x1000, MEMMAP_TYPE_RAM),
            entry(0x2800, 0x2000, MEMMAP_TYPE_RAM),
            entry(0x2000, 0x8000, MEMMAP_TYPE_RAM),
            entry(0x20_0000, 0, MEMMAP_TYPE_RAM),
            entry(0x30_0800, 0x800, MEMMAP_TYPE_RAM),
        ])
        .unwrap();
        assert_eq!(map.ranges(), [r(0x2000, 0xa000, Ram)]);
    }

    #[test]
    fn reserved_wins_over_ram_and_splits_it() {
        let map = MemoryMap::from_pvh(&[
            entry(0, 0x10_0000, MEMMAP_TYPE_RAM),
            entry(0x4800, 0x1000, MEMMAP_TYPE_RESERVED),
            entry(0x5000, 0x2000, MEMMAP_TYPE_RESERVED),
        ])
        .unwrap();
        assert_eq!(map.ranges(), [r(0, 0x4000, Ram), r(0x4000, 0x7000, Reserved), r(0x7000, 0x10_0000, Ram)]);
        assert_eq!(map.available_ram(), 0x10_0000 - 0x3000);
    }

    #[test]
    fn handles_the_top_of_the_address_space() {
        let map = MemoryMap::from_pvh(&[
            entry(u64::MAX - 0x2fff, u64::MAX, MEMMAP_TYPE_RAM),
            entry(0x1000, 0x1000, MEMMAP_TYPE_RAM),
        ])
        .unwrap();
        assert_eq!(map.ranges(), [r(0x1000, 0x2000, Ram), r(u64::MAX - 0x2fff, !0xfff, Ram)]);
        assert!(MemoryMap::from_pvh(&[]).unwrap().ranges().is_empty());
    }

    #[test]
    fn rejects_too_many_entries() {
        let many: [MemmapEntry; MAX_RANGES + 1] =
            core::array::from_fn(|i| entry(i as u64 * 0x2000, 0x1000, MEMMAP_TYPE_RAM));
        assert_eq!(MemoryMap::from_pvh(&many).unwrap_err(), MemmapError::TooManyRanges);
        assert!(MemoryMap::from_pvh(&many[..MAX_RANGES]).is_ok());
    }

    #[test]
    fn reserve_splits_ram_and_validates() {
        let mut map = MemoryMap::from_pvh(&[entry(0, 0x100_0000, MEMMAP_TYPE_RAM)]).unwrap();
        map.reserve(0x20_0100, 0x30_0001, Kernel).unwrap();
        assert_eq!(
            map.ranges(),
            [r(0, 0x20_0000, Ram), r(0x20_0000, 0x30_1000, Kernel), r(0x30_1000, 0x100_0000, Ram)]
        );
        // Adjacent reservations of one kind merge.
        map.reserve(0x30_1000, 0x30_2000, Kernel).unwrap();
        assert_eq!(map.ranges()[1], r(0x20_0000, 0x30_2000, Kernel));
        // Overlapping an existing reservation fails and changes nothing.
        let before = map.ranges().to_vec();
        assert_eq!(
            map.reserve(0x1f_0000, 0x21_0000, Module),
            Err(MemmapError::NotRam { start: 0x1f_0000, end: 0x21_0000 })
        );
        assert_eq!(map.ranges().to_vec(), before);
        assert!(matches!(map.reserve(0x200_0000, 0x201_0000, Module), Err(MemmapError::NotRam { .. })));
        assert!(matches!(map.reserve(5, 5, Module), Err(MemmapError::InvalidRange { .. })));
        assert!(matches!(map.reserve(0, 0x1000, Ram), Err(MemmapError::InvalidRange { .. })));
        assert!(matches!(map.reserve(0, u64::MAX, Module), Err(MemmapError::InvalidRange { .. })));
        // Reserving a whole RAM range replaces it.
        map.reserve(0, 0x20_0000, BootData).unwrap();
        assert_eq!(map.ranges()[0], r(0, 0x20_0000, BootData));
        assert_eq!(map.total_ram(), 0x100_0000);
        assert_eq!(map.available_ram(), 0x100_0000 - 0x30_2000);
        assert_eq!(map.find(0x20_0000).unwrap().kind, Kernel);
        assert_eq!(map.find(0x100_0000), None);
    }

    #[test]
    fn reserve_reports_a_full_map() {
        let mut map = MemoryMap::from_pvh(&[entry(0, 0x1000_0000, MEMMAP_TYPE_RAM)]).unwrap();
        let mut addr = 0x1000;
        while map.ranges().len() < MAX_RANGES - 1 {
            map.reserve(addr, addr + 0x1000, Module).unwrap();
            addr += 0x2000;
        }
        // Splitting in the middle needs two more slots.
        assert_eq!(map.reserve(addr, addr + 0x1000, Module), Err(MemmapError::TooManyRanges));
        // Taking the head of the last RAM range needs one.
        map.reserve(addr - 0x1000, addr, BootData).unwrap();
        assert_eq!(map.ranges().len(), MAX_RANGES);
    }

    #[test]
    fn finds_free_blocks_top_down() {
        let mut map = MemoryMap::from_pvh(&[
            entry(0, 0x9f000, MEMMAP_TYPE_RAM),
            entry(0x10_0000, 0x7ff0_0000, MEMMAP_TYPE_RAM),
            entry(0x1_0000_0000, 0x1000_0000, MEMMAP_TYPE_RAM),
        ])
        .unwrap();
        let mib = 1 << 20;
        assert_eq!(map.find_free_top_down(64 * mib, 16 * mib, u64::MAX), Some(0x1_0c00_0000));
        assert_eq!(map.find_free_top_down(64 * mib, 16 * mib, 0x1_0000_0000), Some(0x7c00_0000));
        assert_eq!(map.find_free_top_down(0x1000, 0x1000, 0x10_0000), Some(0x9e000));
        assert_eq!(map.find_free_top_down(4096 * mib, 0x1000, u64::MAX), None);
        assert_eq!(map.find_free_top_down(0, 0x1000, u64::MAX), None);
        assert_eq!(map.find_free_top_down(0x1000, 3, u64::MAX), None);
        let base = map.find_free_top_down(64 * mib, 16 * mib, 0x1_0000_0000).unwrap();
        map.reserve(base, base + 64 * mib, CrashKernel).unwrap();
        assert_eq!(map.find_free_top_down(64 * mib, 16 * mib, 0x1_0000_0000), Some(0x7800_0000));
    }

    #[test]
    fn errors_read_as_sentences() {
        let err = MemmapError::NotRam { start: 0x1000, end: 0x2000 };
        assert_eq!(alloc::format!("{err}"), "memory range [0x1000-0x2000) is not free RAM");
    }
}
