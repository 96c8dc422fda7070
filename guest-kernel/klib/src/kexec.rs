//! `kexec_load` argument checks, and reading the kernel image that kexec loads.
//!
//! [`check_flags`], [`check_entry`] and [`check_segments`] are Linux's checks
//! (`kernel/kexec.c`, `sanity_check_segment_list()` in `kernel/kexec_core.c`), in Linux's
//! order, each failure carrying the errno Linux returns ([`KexecError::errno`]).
//!
//! [`KernelElf`] reads the pristine PVH kernel (an ELF64 x86_64 executable): its PT_LOAD
//! segments and the 32-bit PVH entry point from the `"Xen"` note of type
//! [`XEN_ELFNOTE_PHYS32_ENTRY`]. The kernel runs at any 2 MiB-aligned physical base;
//! [`relocate`] moves its physical addresses there.
//!
//! ```
//! use crashvisor_klib::kexec::{check_segments, relocate, Segment, KexecError};
//!
//! let crash = Some((0x2000_0000, 0x2400_0000)); // [start, end)
//! let kernel = Segment { bufsz: 0x12_3456, mem: 0x2000_0000, memsz: 0x12_4000 };
//! assert_eq!(check_segments(&[kernel], 0x4_0000, crash), Ok(()));
//! let stray = Segment { bufsz: 0, mem: 0x1000, memsz: 0x1000 };
//! assert_eq!(check_segments(&[kernel, stray], 0x4_0000, crash), Err(KexecError::OutsideCrashRegion { index: 1 }));
//!
//! assert_eq!(relocate(0x100_2000, 0x100_0000, 0x2000_0000), Some(0x2000_2000));
//! ```

use core::fmt;

use crashvisor_abi::layout::{KERNEL_ALIGN, PAGE_SIZE};

use crate::elfcore::{file_range, ElfError, ElfFile, ProgramHeader, ET_EXEC, PT_LOAD, PT_NOTE};
use crate::elfnote::NoteIter;
use crate::le;

/// Most segments one `kexec_load` takes.
pub const KEXEC_SEGMENT_MAX: usize = 16;
/// `kexec_load` flag: load the crash (kdump) image.
pub const KEXEC_ON_CRASH: u64 = 0x1;
/// `kexec_load` flag: kexec jump, `machine_kexec` may return.
pub const KEXEC_PRESERVE_CONTEXT: u64 = 0x2;
/// `kexec_load` flag: the elfcorehdr may be updated on CPU/memory hotplug (Linux 6.6).
pub const KEXEC_UPDATE_ELFCOREHDR: u64 = 0x4;
/// `kexec_load` flag: the image supports crash hotplug.
pub const KEXEC_CRASH_HOTPLUG_SUPPORT: u64 = 0x8;
/// Every flag `kexec_load` knows.
pub const KEXEC_FLAGS: u64 =
    KEXEC_ON_CRASH | KEXEC_PRESERVE_CONTEXT | KEXEC_UPDATE_ELFCOREHDR | KEXEC_CRASH_HOTPLUG_SUPPORT;
/// The architecture field of the flags.
pub const KEXEC_ARCH_MASK: u64 = 0xffff_0000;
/// Architecture field: the running kernel's.
pub const KEXEC_ARCH_DEFAULT: u64 = 0;
/// Architecture field: x86_64 (`EM_X86_64 << 16`).
pub const KEXEC_ARCH_X86_64: u64 = 62 << 16;
/// Segments must end below this (x86_64 `MAXMEM - 1` with 4-level paging: 2^46 - 1).
pub const KEXEC_DESTINATION_MEMORY_LIMIT: u64 = (1 << 46) - 1;
/// `EINVAL`.
pub const EINVAL: i32 = 22;
/// `EADDRNOTAVAIL`.
pub const EADDRNOTAVAIL: i32 = 99;
/// Xen ELF note type of the 32-bit PVH entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Name of Xen ELF notes.
pub const XEN_NOTE_NAME: &[u8] = b"Xen";

/// One `struct kexec_segment`, without the user buffer pointer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Bytes to copy from the buffer.
    pub bufsz: u64,
    /// Destination physical address.
    pub mem: u64,
    /// Destination size; bytes past `bufsz` are zeroed.
    pub memsz: u64,
}

/// Why `kexec_load` refuses its arguments; [`errno`](Self::errno) is Linux's return value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KexecError {
    /// Unknown flags or another architecture (EINVAL).
    InvalidFlags,
    /// More than [`KEXEC_SEGMENT_MAX`] segments (EINVAL).
    TooManySegments,
    /// The crash image's entry point lies outside the crash region (EADDRNOTAVAIL).
    EntryOutsideCrashRegion,
    /// A segment's start or end is not page aligned, or it wraps around (EADDRNOTAVAIL).
    Unaligned {
        /// Index of the segment.
        index: usize,
    },
    /// A segment ends at or past [`KEXEC_DESTINATION_MEMORY_LIMIT`] (EADDRNOTAVAIL).
    BeyondMemoryLimit {
        /// Index of the segment.
        index: usize,
    },
    /// Two segments overlap (EINVAL).
    Overlap {
        /// Index of the later segment.
        index: usize,
        /// Index of the earlier one it overlaps.
        other: usize,
    },
    /// A segment's `bufsz` exceeds its `memsz` (EINVAL).
    BufferLargerThanMemory {
        /// Index of the segment.
        index: usize,
    },
    /// A segment, or all of them together, take more than half of RAM (EINVAL).
    TooLarge,
    /// A crash image's segment lies outside the crash region (EADDRNOTAVAIL).
    OutsideCrashRegion {
        /// Index of the segment.
        index: usize,
    },
}

impl KexecError {
    /// The positive errno Linux returns (negated) for this failure.
    pub fn errno(self) -> i32 {
        match self {
            Self::InvalidFlags
            | Self::TooManySegments
            | Self::Overlap { .. }
            | Self::BufferLargerThanMemory { .. }
            | Self::TooLarge => EINVAL,
            Self::EntryOutsideCrashRegion
            | Self::Unaligned { .. }
            | Self::BeyondMemoryLimit { .. }
            | Self::OutsideCrashRegion { .. } => EADDRNOTAVAIL,
        }
    }

    /// The errno's name, e.g. `"EADDRNOTAVAIL"`.
    pub fn errno_name(self) -> &'static str {
        if self.errno() == EINVAL {
            "EINVAL"
        } else {
            "EADDRNOTAVAIL"
        }
    }
}

impl fmt::Display for KexecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidFlags => f.write_str("invalid kexec flags"),
            Self::TooManySegments => f.write_str("too many kexec segments"),
            Self::EntryOutsideCrashRegion => f.write_str("the entry point lies outside the crash kernel region"),
            Self::Unaligned { index } => write!(f, "segment {index} is not page aligned"),
            Self::BeyondMemoryLimit { index } => write!(f, "segment {index} lies beyond the destination limit"),
            Self::Overlap { index, other } => write!(f, "segment {index} overlaps segment {other}"),
            Self::BufferLargerThanMemory { index } => write!(f, "segment {index} has bufsz larger than memsz"),
            Self::TooLarge => f.write_str("the segments take more than half of RAM"),
            Self::OutsideCrashRegion { index } => write!(f, "segment {index} lies outside the crash kernel region"),
        }
    }
}

impl core::error::Error for KexecError {}

/// Checks `kexec_load` flags like Linux: only known flags, and the architecture field is 0 or
/// x86_64. Returns whether the crash image is meant ([`KEXEC_ON_CRASH`]).
pub fn check_flags(flags: u64) -> Result<bool, KexecError> {
    let arch = flags & KEXEC_ARCH_MASK;
    if flags & KEXEC_FLAGS != flags & !KEXEC_ARCH_MASK || (arch != KEXEC_ARCH_DEFAULT && arch != KEXEC_ARCH_X86_64) {
        return Err(KexecError::InvalidFlags);
    }
    Ok(flags & KEXEC_ON_CRASH != 0)
}

/// For a crash image (`crash` is the reservation `[start, end)`), checks that `entry` lies in
/// it, as Linux does before looking at the segments. Always `Ok` without `crash`.
pub fn check_entry(entry: u64, crash: Option<(u64, u64)>) -> Result<(), KexecError> {
    match crash {
        Some((start, end)) if entry < start || entry >= end => Err(KexecError::EntryOutsideCrashRegion),
        _ => Ok(()),
    }
}

/// Pages a segment of `memsz` bytes takes (`PAGE_COUNT`).
fn page_count(memsz: u64) -> u64 {
    memsz.div_ceil(PAGE_SIZE)
}

/// Checks `kexec_load` segments like Linux, in its order: at most 16; page-aligned start and
/// end, no wrap, below [`KEXEC_DESTINATION_MEMORY_LIMIT`]; no overlaps; `bufsz ≤ memsz`; each
/// and all together at most half of `ram_pages`; and for a crash image (`crash` is the
/// reservation `[start, end)`, end exclusive) every segment inside the reservation. No
/// segments (an unload) pass.
pub fn check_segments(segments: &[Segment], ram_pages: u64, crash: Option<(u64, u64)>) -> Result<(), KexecError> {
    if segments.len() > KEXEC_SEGMENT_MAX {
        return Err(KexecError::TooManySegments);
    }
    for (index, s) in segments.iter().enumerate() {
        let end = s.mem.checked_add(s.memsz).ok_or(KexecError::Unaligned { index })?;
        if !s.mem.is_multiple_of(PAGE_SIZE) || !end.is_multiple_of(PAGE_SIZE) {
            return Err(KexecError::Unaligned { index });
        }
        if end >= KEXEC_DESTINATION_MEMORY_LIMIT {
            return Err(KexecError::BeyondMemoryLimit { index });
        }
    }
    // Ends no longer overflow.
    for (index, s) in segments.iter().enumerate() {
        for (other, p) in segments[..index].iter().enumerate() {
            if s.mem + s.memsz > p.mem && s.mem < p.mem + p.memsz {
                return Err(KexecError::Overlap { index, other });
            }
        }
    }
    if let Some(index) = segments.iter().position(|s| s.bufsz > s.memsz) {
        return Err(KexecError::BufferLargerThanMemory { index });
    }
    let half = ram_pages / 2;
    let mut total: u64 = 0;
    for s in segments {
        let pages = page_count(s.memsz);
        if pages > half {
            return Err(KexecError::TooLarge);
        }
        // At most 16 segments of at most u64::MAX / 2 pages each.
        total = total.saturating_add(pages);
    }
    if total > half {
        return Err(KexecError::TooLarge);
    }
    if let Some((start, end)) = crash {
        if let Some(index) = segments.iter().position(|s| s.mem < start || s.mem + s.memsz > end) {
            return Err(KexecError::OutsideCrashRegion { index });
        }
    }
    Ok(())
}

/// `paddr` of an image linked at physical `link_base`, moved to `load_base`. `None` unless both
/// bases are 2 MiB aligned ([`KERNEL_ALIGN`], the kernel map's page size), `paddr` is at or
/// above `link_base`, and the result fits.
pub fn relocate(paddr: u64, link_base: u64, load_base: u64) -> Option<u64> {
    if !link_base.is_multiple_of(KERNEL_ALIGN) || !load_base.is_multiple_of(KERNEL_ALIGN) {
        return None;
    }
    paddr.checked_sub(link_base)?.checked_add(load_base)
}

/// Why a kernel image was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelElfError {
    /// The ELF headers are invalid (or not those of an executable).
    Elf(ElfError),
    /// No PT_LOAD segment.
    NoLoadSegments,
    /// A segment's file bytes lie outside the file, its `p_filesz` exceeds `p_memsz`, or its
    /// physical end overflows.
    BadSegment {
        /// Index of the program header.
        index: usize,
    },
    /// No `"Xen"` note of type [`XEN_ELFNOTE_PHYS32_ENTRY`] with a 4- or 8-byte 32-bit address.
    NoPvhEntry,
    /// The PVH entry point lies outside the loaded segments' physical span.
    EntryOutsideImage,
}

impl From<ElfError> for KernelElfError {
    fn from(err: ElfError) -> Self {
        Self::Elf(err)
    }
}

impl fmt::Display for KernelElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Elf(_) => f.write_str("invalid kernel ELF headers"),
            Self::NoLoadSegments => f.write_str("the kernel image has no loadable segment"),
            Self::BadSegment { index } => write!(f, "kernel image segment {index} is malformed"),
            Self::NoPvhEntry => f.write_str("the kernel image has no PVH entry note"),
            Self::EntryOutsideImage => f.write_str("the PVH entry point lies outside the kernel image"),
        }
    }
}

impl core::error::Error for KernelElfError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Elf(err) => Some(err),
            _ => None,
        }
    }
}

/// A validated kernel image: ELF64 x86_64 `ET_EXEC` with PT_LOADs inside the file and a PVH
/// entry note.
#[derive(Clone, Copy, Debug)]
pub struct KernelElf<'a> {
    bytes: &'a [u8],
    elf: ElfFile<'a>,
    pvh_entry: u64,
    phys_start: u64,
    phys_end: u64,
}

impl<'a> KernelElf<'a> {
    /// Validates `bytes` and finds the PVH entry.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, KernelElfError> {
        let elf = ElfFile::parse(bytes)?;
        let e_type = elf.header().e_type;
        if e_type != ET_EXEC {
            return Err(ElfError::Header { field: "e_type", value: e_type.into(), expected: "2 (ET_EXEC)" }.into());
        }
        let (mut phys_start, mut phys_end) = (u64::MAX, 0);
        let mut pvh_entry = None;
        for (index, p) in elf.program_headers().enumerate() {
            if p.p_type != PT_LOAD && p.p_type != PT_NOTE {
                continue;
            }
            let data = file_range(bytes, p.p_offset, p.p_filesz).ok_or(KernelElfError::BadSegment { index })?;
            if p.p_type == PT_NOTE {
                pvh_entry = pvh_entry.or_else(|| find_pvh_entry(data));
                continue;
            }
            let end = p.p_paddr.checked_add(p.p_memsz).filter(|_| p.p_filesz <= p.p_memsz);
            let end = end.ok_or(KernelElfError::BadSegment { index })?;
            phys_start = phys_start.min(p.p_paddr);
            phys_end = phys_end.max(end);
        }
        if phys_start > phys_end {
            return Err(KernelElfError::NoLoadSegments);
        }
        let pvh_entry = pvh_entry.ok_or(KernelElfError::NoPvhEntry)?;
        if pvh_entry < phys_start || pvh_entry >= phys_end {
            return Err(KernelElfError::EntryOutsideImage);
        }
        Ok(Self { bytes, elf, pvh_entry, phys_start, phys_end })
    }

    /// The PT_LOAD segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = ProgramHeader> + 'a {
        self.elf.program_headers().filter(|p| p.p_type == PT_LOAD)
    }

    /// A segment's file bytes (`p_filesz` of them); bytes up to `p_memsz` are zeroed (bss).
    pub fn segment_data(&self, segment: &ProgramHeader) -> Option<&'a [u8]> {
        file_range(self.bytes, segment.p_offset, segment.p_filesz)
    }

    /// The physical PVH entry point at the link base.
    pub fn pvh_entry(&self) -> u64 {
        self.pvh_entry
    }

    /// Lowest physical address of the PT_LOADs (the link base, e.g. 16 MiB).
    pub fn phys_start(&self) -> u64 {
        self.phys_start
    }

    /// End of the highest PT_LOAD in memory (bss included).
    pub fn phys_end(&self) -> u64 {
        self.phys_end
    }
}

fn find_pvh_entry(notes: &[u8]) -> Option<u64> {
    let note = NoteIter::new(notes).find(|n| n.name == XEN_NOTE_NAME && n.n_type == XEN_ELFNOTE_PHYS32_ENTRY)?;
    let entry = match note.desc.len() {
        4 => u64::from(le::u32_at(note.desc, 0)),
        8 => le::u64_at(note.desc, 0),
        _ => return None,
    };
    (entry <= u64::from(u32::MAX)).then_some(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elfcore::{ElfHeader, EHDR_SIZE, PF_R, PF_W, PF_X, PHDR_SIZE};
    use crate::elfnote::write_note_with_desc;
    use alloc::vec;
    use alloc::vec::Vec;

    const RAM_PAGES: u64 = 0x4_0000; // 1 GiB
    const CRASH: Option<(u64, u64)> = Some((0x2000_0000, 0x2400_0000));

    fn seg(mem: u64, memsz: u64) -> Segment {
        Segment { bufsz: memsz, mem, memsz }
    }

    #[test]
    fn flags_follow_linux() {
        assert_eq!(check_flags(0), Ok(false));
        assert_eq!(check_flags(KEXEC_ON_CRASH | KEXEC_ARCH_X86_64), Ok(true));
        assert_eq!(check_flags(KEXEC_FLAGS), Ok(true));
        assert_eq!(check_flags(0x10), Err(KexecError::InvalidFlags));
        assert_eq!(check_flags(3 << 16), Err(KexecError::InvalidFlags));
        assert_eq!(check_flags(1 << 32), Err(KexecError::InvalidFlags));
    }

    #[test]
    fn entry_must_be_in_the_crash_region() {
        assert_eq!(check_entry(0x10_0000, None), Ok(()));
        assert_eq!(check_entry(0x2000_0000, CRASH), Ok(()));
        assert_eq!(check_entry(0x23ff_ffff, CRASH), Ok(()));
        assert_eq!(check_entry(0x2400_0000, CRASH), Err(KexecError::EntryOutsideCrashRegion));
        assert_eq!(check_entry(0x1fff_ffff, CRASH), Err(KexecError::EntryOutsideCrashRegion));
    }

    #[test]
    fn segment_rules_each_fire_with_linux_errno() {
        assert_eq!(check_segments(&[], RAM_PAGES, CRASH), Ok(()), "an unload");
        let ok = [seg(0x2000_0000, 0x20_0000), seg(0x2020_0000, 0x1000)];
        assert_eq!(check_segments(&ok, RAM_PAGES, CRASH), Ok(()));
        assert_eq!(check_segments(&[seg(0x1000, 0x1000); 17], RAM_PAGES, None), Err(KexecError::TooManySegments));

        type Case<'a> = (&'a [Segment], Option<(u64, u64)>, KexecError, i32);
        let cases: [Case<'_>; 9] = [
            (&[seg(0x2000_0800, 0x1000)], None, KexecError::Unaligned { index: 0 }, EADDRNOTAVAIL),
            (&[seg(0x1000, 0x1000), seg(0x2000, 0x800)], None, KexecError::Unaligned { index: 1 }, EADDRNOTAVAIL),
            (&[seg(u64::MAX - 0xfff, 0x2000)], None, KexecError::Unaligned { index: 0 }, EADDRNOTAVAIL),
            (&[seg(1 << 46, 0x1000)], None, KexecError::BeyondMemoryLimit { index: 0 }, EADDRNOTAVAIL),
            (
                &[seg(0x1000, 0x3000), seg(0x8000, 0x1000), seg(0x3000, 0x1000)],
                None,
                KexecError::Overlap { index: 2, other: 0 },
                EINVAL,
            ),
            (
                &[Segment { bufsz: 0x1001, mem: 0x1000, memsz: 0x1000 }],
                None,
                KexecError::BufferLargerThanMemory { index: 0 },
                EINVAL,
            ),
            (&[seg(0, (RAM_PAGES / 2 + 1) * 4096)], None, KexecError::TooLarge, EINVAL),
            (
                &[seg(0, RAM_PAGES / 4 * 4096), seg(1 << 32, (RAM_PAGES / 4 + 1) * 4096)],
                None,
                KexecError::TooLarge,
                EINVAL,
            ),
            (
                &[seg(0x2000_0000, 0x1000), seg(0x23ff_f000, 0x2000)],
                CRASH,
                KexecError::OutsideCrashRegion { index: 1 },
                EADDRNOTAVAIL,
            ),
        ];
        for (segments, crash, err, errno) in cases {
            assert_eq!(check_segments(segments, RAM_PAGES, crash), Err(err), "{segments:x?}");
            assert_eq!(err.errno(), errno);
        }
        // Exactly half of RAM passes; adjacent segments do not overlap; crash-free loads go anywhere.
        assert_eq!(check_segments(&[seg(0, RAM_PAGES / 2 * 4096)], RAM_PAGES, None), Ok(()));
        assert_eq!(check_segments(&[seg(0x1000, 0x1000), seg(0x2000, 0x1000)], RAM_PAGES, None), Ok(()));
        assert_eq!(
            check_segments(&[seg(0x1000, 0x1000)], RAM_PAGES, CRASH),
            Err(KexecError::OutsideCrashRegion { index: 0 })
        );
        assert_eq!(KexecError::Overlap { index: 1, other: 0 }.errno_name(), "EINVAL");
        assert_eq!(KexecError::Unaligned { index: 0 }.errno_name(), "EADDRNOTAVAIL");
        assert_eq!(alloc::format!("{}", KexecError::Overlap { index: 2, other: 0 }), "segment 2 overlaps segment 0");
    }

    #[test]
    fn relocation_arithmetic() {
        assert_eq!(relocate(0x100_0000, 0x100_0000, 0x2000_0000), Some(0x2000_0000));
        assert_eq!(relocate(0x123_4567, 0x100_0000, 0x4_0020_0000), Some(0x4_0043_4567));
        assert_eq!(relocate(0xff_ffff, 0x100_0000, 0x2000_0000), None, "below the link base");
        assert_eq!(relocate(0x100_0000, 0x100_0000, 0x2010_0000), None, "load base not 2 MiB aligned");
        assert_eq!(relocate(0x100_0000, 0x100_1000, 0x2000_0000), None, "link base not 2 MiB aligned");
        assert_eq!(relocate(u64::MAX, 0, 0x20_0000), None);
    }

    /// A two-segment kernel linked at 16 MiB with a PVH note (like our linker script).
    fn build_image(desc: &[u8]) -> Vec<u8> {
        let phnum = 3;
        let data_at = EHDR_SIZE + phnum * PHDR_SIZE;
        let mut note = [0u8; 24];
        let note_len = write_note_with_desc(&mut note, b"Xen", XEN_ELFNOTE_PHYS32_ENTRY, desc).unwrap();
        let text_len = 0x200;
        let mut file = vec![0u8; data_at + text_len + note_len];
        let ehdr = ElfHeader { e_type: ET_EXEC, e_entry: 0xffff_ffff_8100_0000, e_phoff: 64, e_phnum: phnum as u16 };
        file[..EHDR_SIZE].copy_from_slice(&ehdr.to_bytes());
        let phdrs = [
            ProgramHeader {
                p_type: PT_LOAD,
                p_flags: PF_R | PF_X,
                p_offset: data_at as u64,
                p_vaddr: 0xffff_ffff_8100_0000,
                p_paddr: 0x100_0000,
                p_filesz: text_len as u64,
                p_memsz: text_len as u64,
                p_align: 0x1000,
            },
            ProgramHeader {
                p_type: PT_LOAD,
                p_flags: PF_R | PF_W,
                p_offset: (data_at + text_len) as u64,
                p_vaddr: 0xffff_ffff_8100_1000,
                p_paddr: 0x100_1000,
                p_filesz: note_len as u64,
                p_memsz: 0x3000,
                p_align: 0x1000,
            },
            ProgramHeader {
                p_type: PT_NOTE,
                p_flags: PF_R,
                p_offset: (data_at + text_len) as u64,
                p_vaddr: 0xffff_ffff_8100_1000,
                p_paddr: 0x100_1000,
                p_filesz: note_len as u64,
                p_memsz: note_len as u64,
                p_align: 4,
            },
        ];
        for (i, p) in phdrs.iter().enumerate() {
            file[64 + i * 56..120 + i * 56].copy_from_slice(&p.to_bytes());
        }
        file[data_at..data_at + 4].copy_from_slice(&[0xfa, 0xfc, 0xeb, 0xfe]);
        file[data_at + text_len..].copy_from_slice(&note[..note_len]);
        file
    }

    #[test]
    fn reads_segments_and_pvh_entry() {
        let file = build_image(&0x100_0010u32.to_le_bytes());
        let image = KernelElf::parse(&file).unwrap();
        assert_eq!(image.pvh_entry(), 0x100_0010);
        assert_eq!((image.phys_start(), image.phys_end()), (0x100_0000, 0x100_4000));
        let segments: Vec<_> = image.segments().collect();
        assert_eq!(segments.len(), 2);
        assert_eq!(segments[0].p_paddr, 0x100_0000);
        assert_eq!((segments[1].p_filesz, segments[1].p_memsz), (20, 0x3000));
        assert_eq!(&image.segment_data(&segments[0]).unwrap()[..4], &[0xfa, 0xfc, 0xeb, 0xfe]);
        let load_base = 0x2000_0000;
        assert_eq!(relocate(image.pvh_entry(), image.phys_start(), load_base), Some(0x2000_0010));
        // Linux's 8-byte form of the note.
        let file = build_image(&0x100_0020u64.to_le_bytes());
        assert_eq!(KernelElf::parse(&file).unwrap().pvh_entry(), 0x100_0020);
    }

    #[test]
    fn rejects_bad_images() {
        let good = build_image(&0x100_0010u32.to_le_bytes());
        let data_at = EHDR_SIZE + 3 * PHDR_SIZE;
        let patched = |at: usize, bytes: &[u8]| {
            let mut f = good.clone();
            f[at..at + bytes.len()].copy_from_slice(bytes);
            KernelElf::parse(&f).map(|_| ()).unwrap_err()
        };
        let not_exec = ElfError::Header { field: "e_type", value: 4, expected: "2 (ET_EXEC)" };
        assert_eq!(patched(16, &4u16.to_le_bytes()), KernelElfError::Elf(not_exec));
        // The entry outside the image, a note of the wrong type, an entry above 4 GiB.
        let note_desc = data_at + 0x200 + 16;
        assert_eq!(patched(note_desc, &0x200_0000u32.to_le_bytes()), KernelElfError::EntryOutsideImage);
        assert_eq!(patched(data_at + 0x200 + 8, &17u32.to_le_bytes()), KernelElfError::NoPvhEntry);
        let f = build_image(&0x1_0000_0000u64.to_le_bytes());
        assert_eq!(KernelElf::parse(&f).unwrap_err(), KernelElfError::NoPvhEntry);
        let f = build_image(&[1, 2]);
        assert_eq!(KernelElf::parse(&f).unwrap_err(), KernelElfError::NoPvhEntry);
        // Segment bytes past the file, filesz > memsz, physical end overflow.
        let phdr = |i: usize| 64 + i * 56;
        assert_eq!(patched(phdr(0) + 32, &0x10_0000u64.to_le_bytes()), KernelElfError::BadSegment { index: 0 });
        assert_eq!(patched(phdr(0) + 8, &u64::MAX.to_le_bytes()), KernelElfError::BadSegment { index: 0 });
        assert_eq!(patched(phdr(1) + 40, &1u64.to_le_bytes()), KernelElfError::BadSegment { index: 1 });
        assert_eq!(patched(phdr(1) + 24, &(u64::MAX - 10).to_le_bytes()), KernelElfError::BadSegment { index: 1 });
        assert_eq!(patched(phdr(2) + 32, &u64::MAX.to_le_bytes()), KernelElfError::BadSegment { index: 2 });
        // No PT_LOAD: both loads turned into another type.
        let mut f = good.clone();
        f[phdr(0)..phdr(0) + 4].copy_from_slice(&6u32.to_le_bytes());
        f[phdr(1)..phdr(1) + 4].copy_from_slice(&6u32.to_le_bytes());
        assert_eq!(KernelElf::parse(&f).unwrap_err(), KernelElfError::NoLoadSegments);
        assert_eq!(alloc::format!("{}", KernelElfError::NoPvhEntry), "the kernel image has no PVH entry note");
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let good = build_image(&0x100_0010u32.to_le_bytes());
        for cut in 0..good.len() {
            assert!(KernelElf::parse(&good[..cut]).is_err(), "cut at {cut}");
        }
        // Random corruption never panics.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..2000 {
            let mut f = good.clone();
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state % f.len() as u64) as usize;
                f[at] = (state >> 32) as u8;
            }
            let _ = KernelElf::parse(&f);
        }
    }
}
