//! The PVH boot data the VMM leaves in guest memory (`hvm_start_info`): the RAM ranges of its
//! memory map and the command line. Ring 3 reads them through the identity map, before the
//! fill may overwrite them.

use core::fmt;

use crashvisor_abi::layout::CMDLINE_MAX_SIZE;
use crashvisor_abi::pvh::{MemmapEntry, StartInfo, MEMMAP_TYPE_RAM, START_INFO_MAGIC};

use crate::layout::IDENTITY_MAP_END_GPA;

/// Most RAM ranges kept from the memory map (our VMM writes at most three, QEMU two).
pub const MAX_RAM_RANGES: usize = 16;

/// Why the boot data cannot be used.
#[derive(Debug)]
pub enum PvhError {
    /// `hvm_start_info.magic` is wrong: not a PVH boot.
    BadMagic(u32),
    /// Start info version 0 has no memory map.
    NoMemoryMap,
    /// More RAM ranges than `MAX_RAM_RANGES`.
    TooManyRamRanges,
    /// RAM that ends here, beyond what boot.rs maps.
    RamBeyondMap {
        /// One past the range's last byte.
        end_gpa: u64,
    },
    /// No NUL within `CMDLINE_MAX_SIZE` bytes of the command line.
    CmdlineTooLong,
}

impl fmt::Display for PvhError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic(magic) => write!(f, "the PVH start info has magic {magic:#x}, not {START_INFO_MAGIC:#x}"),
            Self::NoMemoryMap => f.write_str("the PVH start info (version 0) has no memory map"),
            Self::TooManyRamRanges => write!(f, "the memory map has more than {MAX_RAM_RANGES} RAM ranges"),
            Self::RamBeyondMap { end_gpa } => {
                write!(f, "RAM reaches {end_gpa:#x}, beyond the {} GiB this kernel maps", IDENTITY_MAP_END_GPA >> 30)
            }
            Self::CmdlineTooLong => write!(f, "the command line is longer than {} bytes", CMDLINE_MAX_SIZE - 1),
        }
    }
}

/// A range of RAM, `[start_gpa, end_gpa)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RamRange {
    /// First byte.
    pub start_gpa: u64,
    /// One past the last byte.
    pub end_gpa: u64,
}

/// The RAM ranges of the memory map, in map order.
#[derive(Clone, Copy, Debug)]
pub struct RamMap {
    ranges: [RamRange; MAX_RAM_RANGES],
    len: usize,
}

impl RamMap {
    /// The RAM entries (type 1) of a PVH memory map, all within the identity map.
    pub fn from_memmap(entries: &[MemmapEntry]) -> Result<Self, PvhError> {
        let mut map = Self { ranges: [RamRange::default(); MAX_RAM_RANGES], len: 0 };
        for entry in entries.iter().filter(|e| e.kind == MEMMAP_TYPE_RAM) {
            let range = RamRange { start_gpa: entry.addr, end_gpa: entry.addr.saturating_add(entry.size) };
            if range.end_gpa > IDENTITY_MAP_END_GPA {
                return Err(PvhError::RamBeyondMap { end_gpa: range.end_gpa });
            }
            let slot = map.ranges.get_mut(map.len).ok_or(PvhError::TooManyRamRanges)?;
            *slot = range;
            map.len += 1;
        }
        Ok(map)
    }

    /// The ranges.
    pub fn ranges(&self) -> &[RamRange] {
        &self.ranges[..self.len]
    }

    /// Bytes of RAM in all ranges.
    pub fn total_bytes(&self) -> u64 {
        self.ranges().iter().map(|r| r.end_gpa - r.start_gpa).sum()
    }
}

/// What the kernel takes from the boot data.
pub struct BootData<'a> {
    /// The RAM of the memory map.
    pub ram: RamMap,
    /// The command line, without its NUL.
    pub cmdline: &'a [u8],
}

/// Reads the boot data at `start_info_gpa`.
///
/// # Safety
/// `start_info_gpa` is the `hvm_start_info` address the PVH entry received, the start info,
/// its memory map and its command line lie in identity-mapped memory (boot.rs maps
/// `[0, IDENTITY_MAP_END_GPA)`), and nothing writes them during `'a`.
pub unsafe fn read<'a>(start_info_gpa: u64) -> Result<BootData<'a>, PvhError> {
    // SAFETY: the caller guarantees a mapped, unchanging start info at this address; PVH aligns
    // it to 8 bytes.
    let info = unsafe { &*(start_info_gpa as *const StartInfo) };
    if info.magic != START_INFO_MAGIC {
        return Err(PvhError::BadMagic(info.magic));
    }
    if info.version < 1 {
        return Err(PvhError::NoMemoryMap);
    }
    // SAFETY: version 1 has `memmap_entries` entries at `memmap_paddr`, mapped and unchanging
    // as the caller guarantees.
    let memmap =
        unsafe { core::slice::from_raw_parts(info.memmap_paddr as *const MemmapEntry, info.memmap_entries as usize) };
    let ram = RamMap::from_memmap(memmap)?;
    let cmdline = match info.cmdline_paddr {
        0 => &[][..],
        gpa => {
            // SAFETY: the command line is mapped and unchanging (the caller's guarantee), and
            // the VMM reserves `CMDLINE_MAX_SIZE` bytes for it (Linux's COMMAND_LINE_SIZE).
            let area = unsafe { core::slice::from_raw_parts(gpa as *const u8, CMDLINE_MAX_SIZE as usize) };
            let len = area.iter().position(|&b| b == 0).ok_or(PvhError::CmdlineTooLong)?;
            &area[..len]
        }
    };
    Ok(BootData { ram, cmdline })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(addr: u64, size: u64, kind: u32) -> MemmapEntry {
        MemmapEntry { addr, size, kind, reserved: 0 }
    }

    #[test]
    fn keeps_ram_entries_only() {
        let map = RamMap::from_memmap(&[
            entry(0, 0xa_0000, MEMMAP_TYPE_RAM),
            entry(0xa_0000, 0x6_0000, 2),
            entry(0x10_0000, 0xff0_0000, MEMMAP_TYPE_RAM),
        ])
        .expect("two ranges fit");
        assert_eq!(
            map.ranges(),
            [RamRange { start_gpa: 0, end_gpa: 0xa_0000 }, RamRange { start_gpa: 0x10_0000, end_gpa: 0x1000_0000 }]
        );
        assert_eq!(map.total_bytes(), 0x1000_0000 - 0x6_0000);
    }

    #[test]
    fn too_many_ram_ranges() {
        let entries: Vec<MemmapEntry> =
            (0..=MAX_RAM_RANGES as u64).map(|i| entry(i << 20, 1 << 20, MEMMAP_TYPE_RAM)).collect();
        assert!(matches!(RamMap::from_memmap(&entries), Err(PvhError::TooManyRamRanges)));
    }

    #[test]
    fn ram_beyond_the_identity_map() {
        let entries = [entry(1 << 32, IDENTITY_MAP_END_GPA, MEMMAP_TYPE_RAM)];
        let end_gpa = (1 << 32) + IDENTITY_MAP_END_GPA;
        assert!(matches!(RamMap::from_memmap(&entries), Err(PvhError::RamBeyondMap { end_gpa: e }) if e == end_gpa));
        assert!(RamMap::from_memmap(&[entry(1 << 32, IDENTITY_MAP_END_GPA - (1 << 32), MEMMAP_TYPE_RAM)]).is_ok());
    }
}
