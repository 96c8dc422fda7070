//! Reading and validating a capture kernel's [`DumpDescriptor`] (see `crashvisor_abi::dump`).
//!
//! Everything is untrusted guest data. The descriptor, its range table and its header blob are
//! copied out of guest memory once, then checked as copies, so a guest changing them while the
//! host writes cannot slip anything past the checks. Each broken rule is its own
//! [`DescriptorError`], which the device logs and answers with `STATUS_INVALID_ARGUMENT`.

use std::mem::offset_of;

use crashvisor_abi::dump::{
    DumpDescriptor, DumpRange, DUMP_LEVEL_ALL, DUMP_MAGIC, DUMP_VERSION, MAX_DUMP_FILE_SIZE, MAX_DUMP_HEADERS_LEN,
    MAX_DUMP_LOG_LEN, MAX_DUMP_RANGES,
};
use crashvisor_klib::elfcore::{ElfError, EHDR_SIZE, PT_LOAD};
use crashvisor_klib::elfnote::PRSTATUS_SIZE;
use crashvisor_klib::le;
use dumpd::elf::Core;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Size of the descriptor in guest memory.
pub const DESCRIPTOR_SIZE: usize = std::mem::size_of::<DumpDescriptor>();
/// Size of one range in guest memory.
pub const RANGE_SIZE: usize = std::mem::size_of::<DumpRange>();
/// Page size the vmcore's data chunks are rounded to (the file may end up to one page after the
/// last `PT_LOAD`'s data, as `/proc/vmcore` rounds its last chunk).
const PAGE_SIZE: u64 = 4096;

/// A rule of the dump contract the guest broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorError {
    /// A structure or buffer the descriptor points at is not entirely in guest RAM.
    #[error("the {what} at {gpa:#x} ({len} bytes) is not in guest RAM")]
    OutOfRam {
        /// What it is.
        what: &'static str,
        /// Its guest-physical address.
        gpa: u64,
        /// Its length.
        len: u64,
    },
    /// Wrong magic.
    #[error("the descriptor has magic {0:#x}, expected {DUMP_MAGIC:#x}")]
    Magic(u64),
    /// Unknown version.
    #[error("the descriptor has version {0}, expected {DUMP_VERSION}")]
    Version(u32),
    /// `reserved` is not zero.
    #[error("the descriptor's reserved field is {0:#x}, expected 0")]
    Reserved(u64),
    /// A dump level with bits makedumpfile does not define.
    #[error("dump level {0} has bits outside {DUMP_LEVEL_ALL}")]
    DumpLevel(u32),
    /// Header blob too short for an ELF header, or over the limit.
    #[error("the headers are {0} bytes; they must be {EHDR_SIZE} to {MAX_DUMP_HEADERS_LEN} bytes")]
    HeadersLen(u64),
    /// File size below the headers or over the limit.
    #[error("the file size {file_size} is below the headers' {headers_len} bytes or above {MAX_DUMP_FILE_SIZE}")]
    FileSize {
        /// `file_size`.
        file_size: u64,
        /// `headers_len`.
        headers_len: u64,
    },
    /// Too many ranges.
    #[error("{0} ranges; at most {MAX_DUMP_RANGES} are allowed")]
    TooManyRanges(u64),
    /// A log over the limit.
    #[error("the {log} is {len} bytes; at most {MAX_DUMP_LOG_LEN} are allowed")]
    LogTooLong {
        /// Which log.
        log: &'static str,
        /// Its length.
        len: u64,
    },
    /// The headers are not an ELF64 x86_64 core file with well-formed notes.
    #[error("the headers are not a valid ELF core file")]
    Headers(#[source] ElfError),
    /// A `PT_LOAD`'s data starts inside the headers.
    #[error("PT_LOAD {index} starts at file offset {offset:#x}, inside the headers ({headers_len:#x} bytes)")]
    LoadInsideHeaders {
        /// Index among the program headers.
        index: usize,
        /// Its `p_offset`.
        offset: u64,
        /// `headers_len`.
        headers_len: u64,
    },
    /// A `PT_LOAD`'s data ends past `file_size`.
    #[error("PT_LOAD {index} ends at file offset {end:#x}, past the file size {file_size:#x}")]
    LoadPastEnd {
        /// Index among the program headers.
        index: usize,
        /// End of its data.
        end: u64,
        /// `file_size`.
        file_size: u64,
    },
    /// Two `PT_LOAD`s share file bytes.
    #[error("PT_LOAD {index}'s file span overlaps another PT_LOAD's")]
    LoadsOverlap {
        /// Index among the program headers.
        index: usize,
    },
    /// `file_size` is not the end of the last `PT_LOAD`'s data (page-rounded at most).
    #[error("the file size {file_size:#x} does not match the end of the PT_LOAD data at {data_end:#x}")]
    FileSizeMismatch {
        /// `file_size`.
        file_size: u64,
        /// End of the last `PT_LOAD`'s data (or of the headers without any).
        data_end: u64,
    },
    /// A range starts inside the headers.
    #[error("range {index} starts at file offset {file_offset:#x}, inside the headers ({headers_len:#x} bytes)")]
    RangeInHeaders {
        /// Index of the range.
        index: usize,
        /// Its file offset.
        file_offset: u64,
        /// `headers_len`.
        headers_len: u64,
    },
    /// A range's file offset is below the one before it.
    #[error("range {index} is not sorted by file offset")]
    RangeUnsorted {
        /// Index of the range.
        index: usize,
    },
    /// A range overlaps the one before it in the file.
    #[error("range {index} overlaps range {} in the file", index - 1)]
    RangeOverlap {
        /// Index of the range.
        index: usize,
    },
    /// A range ends past `file_size`.
    #[error("range {index} ends past the file size {file_size:#x}")]
    RangePastEnd {
        /// Index of the range.
        index: usize,
        /// `file_size`.
        file_size: u64,
    },
    /// A range's memory is not entirely in guest RAM.
    #[error("range {index}'s memory {gpa:#x}+{len:#x} is not in guest RAM")]
    RangeOutOfRam {
        /// Index of the range.
        index: usize,
        /// Its guest-physical address.
        gpa: u64,
        /// Its length.
        len: u64,
    },
    /// A range's file span is not entirely `PT_LOAD` data.
    #[error("range {index} (file offset {file_offset:#x}, {len:#x} bytes) is not inside PT_LOAD data")]
    RangeOutsideLoads {
        /// Index of the range.
        index: usize,
        /// Its file offset.
        file_offset: u64,
        /// Its length.
        len: u64,
    },
}

/// A descriptor that passed every check, with host copies of its ranges and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidDump {
    /// The descriptor as read.
    pub descriptor: DumpDescriptor,
    /// The header blob (file offset 0).
    pub headers: Vec<u8>,
    /// The ranges, sorted and checked.
    pub ranges: Vec<DumpRange>,
    /// Things tools will dislike that do not make the dump useless (logged at warn).
    pub warnings: Vec<String>,
}

/// Reads the descriptor at `gpa` and checks it, its headers and its ranges against the rules of
/// `crashvisor_abi::dump`.
pub fn read_and_validate(memory: &GuestMemoryMmap, gpa: u64) -> Result<ValidDump, DescriptorError> {
    let descriptor = read_descriptor(memory, gpa)?;
    check_descriptor(memory, &descriptor)?;
    let headers = read_bytes(memory, "header blob", descriptor.headers_gpa, descriptor.headers_len)?;
    // nr_ranges is at most MAX_DUMP_RANGES here: the product cannot overflow.
    let table = read_bytes(memory, "range table", descriptor.ranges_gpa, descriptor.nr_ranges * RANGE_SIZE as u64)?;
    let ranges: Vec<DumpRange> = table.chunks_exact(RANGE_SIZE).map(decode_range).collect();
    let warnings = check_layout(memory, &descriptor, &headers, &ranges)?;
    Ok(ValidDump { descriptor, headers, ranges, warnings })
}

/// Copies the descriptor at `gpa` out of guest memory and decodes it.
pub fn read_descriptor(memory: &GuestMemoryMmap, gpa: u64) -> Result<DumpDescriptor, DescriptorError> {
    let bytes = read_bytes(memory, "descriptor", gpa, DESCRIPTOR_SIZE as u64)?;
    let u64_at = |offset| le::u64_at(&bytes, offset);
    let u32_at = |offset| le::u32_at(&bytes, offset);
    Ok(DumpDescriptor {
        magic: u64_at(offset_of!(DumpDescriptor, magic)),
        version: u32_at(offset_of!(DumpDescriptor, version)),
        dump_level: u32_at(offset_of!(DumpDescriptor, dump_level)),
        headers_gpa: u64_at(offset_of!(DumpDescriptor, headers_gpa)),
        headers_len: u64_at(offset_of!(DumpDescriptor, headers_len)),
        ranges_gpa: u64_at(offset_of!(DumpDescriptor, ranges_gpa)),
        nr_ranges: u64_at(offset_of!(DumpDescriptor, nr_ranges)),
        file_size: u64_at(offset_of!(DumpDescriptor, file_size)),
        vmcore_dmesg_gpa: u64_at(offset_of!(DumpDescriptor, vmcore_dmesg_gpa)),
        vmcore_dmesg_len: u64_at(offset_of!(DumpDescriptor, vmcore_dmesg_len)),
        kexec_dmesg_gpa: u64_at(offset_of!(DumpDescriptor, kexec_dmesg_gpa)),
        kexec_dmesg_len: u64_at(offset_of!(DumpDescriptor, kexec_dmesg_len)),
        capture_ns: u64_at(offset_of!(DumpDescriptor, capture_ns)),
        reserved: u64_at(offset_of!(DumpDescriptor, reserved)),
    })
}

/// Checks the descriptor's own fields: magic, version, reserved, dump level, limits, and that
/// the header blob, range table and logs lie in guest RAM.
pub fn check_descriptor(memory: &GuestMemoryMmap, d: &DumpDescriptor) -> Result<(), DescriptorError> {
    if d.magic != DUMP_MAGIC {
        return Err(DescriptorError::Magic(d.magic));
    }
    if d.version != DUMP_VERSION {
        return Err(DescriptorError::Version(d.version));
    }
    if d.reserved != 0 {
        return Err(DescriptorError::Reserved(d.reserved));
    }
    if d.dump_level & !DUMP_LEVEL_ALL != 0 {
        return Err(DescriptorError::DumpLevel(d.dump_level));
    }
    if !(EHDR_SIZE as u64..=MAX_DUMP_HEADERS_LEN).contains(&d.headers_len) {
        return Err(DescriptorError::HeadersLen(d.headers_len));
    }
    if d.file_size < d.headers_len || d.file_size > MAX_DUMP_FILE_SIZE {
        return Err(DescriptorError::FileSize { file_size: d.file_size, headers_len: d.headers_len });
    }
    if d.nr_ranges > MAX_DUMP_RANGES {
        return Err(DescriptorError::TooManyRanges(d.nr_ranges));
    }
    for (log, len) in [("vmcore-dmesg log", d.vmcore_dmesg_len), ("kexec-dmesg log", d.kexec_dmesg_len)] {
        if len > MAX_DUMP_LOG_LEN {
            return Err(DescriptorError::LogTooLong { log, len });
        }
    }
    let buffers = [
        ("header blob", d.headers_gpa, d.headers_len),
        ("range table", d.ranges_gpa, d.nr_ranges * RANGE_SIZE as u64),
        ("vmcore-dmesg log", d.vmcore_dmesg_gpa, d.vmcore_dmesg_len),
        ("kexec-dmesg log", d.kexec_dmesg_gpa, d.kexec_dmesg_len),
    ];
    for (what, gpa, len) in buffers {
        if len > 0 && !in_ram(memory, gpa, len) {
            return Err(DescriptorError::OutOfRam { what, gpa, len });
        }
    }
    Ok(())
}

/// Checks the headers (an ELF64 x86_64 core with well-formed notes, whose `PT_LOAD` data lies
/// after the headers, inside the file, without overlaps, and ends the file) and the ranges
/// (sorted, not overlapping, after the headers, inside the file and guest RAM, each covered by
/// `PT_LOAD` data). Returns warnings about what tools may dislike.
pub fn check_layout(
    memory: &GuestMemoryMmap,
    d: &DumpDescriptor,
    headers: &[u8],
    ranges: &[DumpRange],
) -> Result<Vec<String>, DescriptorError> {
    let core = Core::parse(headers).map_err(DescriptorError::Headers)?;
    let mut loads: Vec<(usize, u64, u64)> = Vec::new(); // (index, start, end) in the file
    for (index, ph) in core.program_headers().iter().enumerate() {
        if ph.p_type != PT_LOAD {
            continue;
        }
        if ph.p_offset < d.headers_len {
            return Err(DescriptorError::LoadInsideHeaders { index, offset: ph.p_offset, headers_len: d.headers_len });
        }
        if ph.file_end() > d.file_size {
            return Err(DescriptorError::LoadPastEnd { index, end: ph.file_end(), file_size: d.file_size });
        }
        loads.push((index, ph.p_offset, ph.file_end()));
    }
    loads.sort_by_key(|&(_, start, end)| (start, end));
    for pair in loads.windows(2) {
        if pair[1].1 < pair[0].2 {
            return Err(DescriptorError::LoadsOverlap { index: pair[1].0 });
        }
    }
    let data_end = loads.iter().map(|l| l.2).max().unwrap_or(d.headers_len);
    if d.file_size > data_end.next_multiple_of(PAGE_SIZE) {
        return Err(DescriptorError::FileSizeMismatch { file_size: d.file_size, data_end });
    }
    check_ranges(memory, d, ranges, &loads)?;

    let mut warnings = Vec::new();
    let short = core.notes().iter().filter(|n| n.is_prstatus() && n.desc.len() != PRSTATUS_SIZE).count();
    if short > 0 {
        warnings.push(format!("{short} NT_PRSTATUS notes are not {PRSTATUS_SIZE} bytes; gdb ignores them"));
    }
    if !core.notes().iter().any(|n| n.name == b"VMCOREINFO") {
        warnings.push("no VMCOREINFO note; vmcore-dmesg and crash need it".into());
    }
    if loads.is_empty() {
        warnings.push("no PT_LOAD segments: the vmcore holds no memory".into());
    }
    Ok(warnings)
}

fn check_ranges(
    memory: &GuestMemoryMmap,
    d: &DumpDescriptor,
    ranges: &[DumpRange],
    loads: &[(usize, u64, u64)],
) -> Result<(), DescriptorError> {
    let mut previous: Option<(u64, u64)> = None; // (file offset, end) of the range before
    for (index, r) in ranges.iter().enumerate() {
        if r.file_offset < d.headers_len {
            return Err(DescriptorError::RangeInHeaders {
                index,
                file_offset: r.file_offset,
                headers_len: d.headers_len,
            });
        }
        if let Some((offset, end)) = previous {
            if r.file_offset < offset {
                return Err(DescriptorError::RangeUnsorted { index });
            }
            if r.file_offset < end {
                return Err(DescriptorError::RangeOverlap { index });
            }
        }
        let end = match r.file_offset.checked_add(r.len) {
            Some(end) if end <= d.file_size => end,
            _ => return Err(DescriptorError::RangePastEnd { index, file_size: d.file_size }),
        };
        previous = Some((r.file_offset, end));
        if r.len == 0 {
            continue;
        }
        if !in_ram(memory, r.gpa, r.len) {
            return Err(DescriptorError::RangeOutOfRam { index, gpa: r.gpa, len: r.len });
        }
        if !covered_by_loads(loads, r.file_offset, end) {
            return Err(DescriptorError::RangeOutsideLoads { index, file_offset: r.file_offset, len: r.len });
        }
    }
    Ok(())
}

/// Whether PT_LOAD data covers every byte of `start..end`: the PT_LOAD holding `start`, then
/// as many following PT_LOADs as needed, each starting where the one before ends (a capture
/// kernel merges ranges that continue each other in the file and in memory, which can join
/// consecutive PT_LOADs). `loads` is sorted and free of overlaps.
fn covered_by_loads(loads: &[(usize, u64, u64)], start: u64, end: u64) -> bool {
    let Some(mut i) = loads.partition_point(|&(_, load_start, _)| load_start <= start).checked_sub(1) else {
        return false;
    };
    if start >= loads[i].2 {
        return false;
    }
    while end > loads[i].2 {
        match loads.get(i + 1) {
            Some(next) if next.1 == loads[i].2 => i += 1,
            _ => return false,
        }
    }
    true
}

/// Whether `gpa..gpa + len` lies entirely in guest RAM (possibly across adjacent regions).
pub fn in_ram(memory: &GuestMemoryMmap, gpa: u64, len: u64) -> bool {
    let Ok(count) = usize::try_from(len) else { return false };
    gpa.checked_add(len).is_some() && GuestMemoryBackend::check_range(memory, GuestAddress(gpa), count)
}

/// Copies `len` bytes at `gpa` out of guest RAM.
pub fn read_bytes(
    memory: &GuestMemoryMmap,
    what: &'static str,
    gpa: u64,
    len: u64,
) -> Result<Vec<u8>, DescriptorError> {
    let out_of_ram = DescriptorError::OutOfRam { what, gpa, len };
    if !in_ram(memory, gpa, len) {
        return Err(out_of_ram);
    }
    // In RAM, so at most the guest's size: allocating it is fine.
    let mut bytes = vec![0u8; len as usize];
    memory.read_slice(&mut bytes, GuestAddress(gpa)).map_err(|_| out_of_ram)?;
    Ok(bytes)
}

fn decode_range(bytes: &[u8]) -> DumpRange {
    DumpRange {
        file_offset: le::u64_at(bytes, offset_of!(DumpRange, file_offset)),
        gpa: le::u64_at(bytes, offset_of!(DumpRange, gpa)),
        len: le::u64_at(bytes, offset_of!(DumpRange, len)),
    }
}

/// The guest's bytes for a descriptor (little-endian, no padding), for tests.
#[cfg(test)]
pub(crate) fn descriptor_bytes(d: &DumpDescriptor) -> Vec<u8> {
    let mut b = vec![0u8; DESCRIPTOR_SIZE];
    let mut put64 = |at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    put64(offset_of!(DumpDescriptor, magic), d.magic);
    put64(offset_of!(DumpDescriptor, headers_gpa), d.headers_gpa);
    put64(offset_of!(DumpDescriptor, headers_len), d.headers_len);
    put64(offset_of!(DumpDescriptor, ranges_gpa), d.ranges_gpa);
    put64(offset_of!(DumpDescriptor, nr_ranges), d.nr_ranges);
    put64(offset_of!(DumpDescriptor, file_size), d.file_size);
    put64(offset_of!(DumpDescriptor, vmcore_dmesg_gpa), d.vmcore_dmesg_gpa);
    put64(offset_of!(DumpDescriptor, vmcore_dmesg_len), d.vmcore_dmesg_len);
    put64(offset_of!(DumpDescriptor, kexec_dmesg_gpa), d.kexec_dmesg_gpa);
    put64(offset_of!(DumpDescriptor, kexec_dmesg_len), d.kexec_dmesg_len);
    put64(offset_of!(DumpDescriptor, capture_ns), d.capture_ns);
    put64(offset_of!(DumpDescriptor, reserved), d.reserved);
    let v = offset_of!(DumpDescriptor, version);
    b[v..v + 4].copy_from_slice(&d.version.to_le_bytes());
    let l = offset_of!(DumpDescriptor, dump_level);
    b[l..l + 4].copy_from_slice(&d.dump_level.to_le_bytes());
    b
}

/// The guest's bytes for a range table, for tests.
#[cfg(test)]
pub(crate) fn range_bytes(ranges: &[DumpRange]) -> Vec<u8> {
    ranges.iter().flat_map(|r| [r.file_offset, r.gpa, r.len]).flat_map(u64::to_le_bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{guest, Guest, DESCRIPTOR_GPA};
    use super::*;

    fn validate(g: &Guest) -> Result<ValidDump, DescriptorError> {
        g.install();
        read_and_validate(&g.memory, DESCRIPTOR_GPA)
    }

    /// The error of the guest after `change`, installed afresh.
    fn error_after(change: impl FnOnce(&mut Guest)) -> DescriptorError {
        let mut g = guest();
        change(&mut g);
        validate(&g).expect_err("the descriptor was accepted")
    }

    #[test]
    fn a_well_formed_descriptor_passes() {
        let g = guest();
        let valid = validate(&g).unwrap();
        assert_eq!(valid.ranges, g.ranges);
        assert_eq!(valid.headers, g.headers);
        assert!(valid.warnings.is_empty(), "{:?}", valid.warnings);
    }

    #[test]
    fn the_descriptor_fields_are_checked() {
        use DescriptorError as E;
        assert!(matches!(read_and_validate(&guest().memory, 0xffff_fff0), Err(E::OutOfRam { what: "descriptor", .. })));
        assert_eq!(error_after(|g| g.descriptor.magic = 1), E::Magic(1));
        assert_eq!(error_after(|g| g.descriptor.version = 2), E::Version(2));
        assert_eq!(error_after(|g| g.descriptor.reserved = 5), E::Reserved(5));
        assert_eq!(error_after(|g| g.descriptor.dump_level = 32), E::DumpLevel(32));
        assert_eq!(error_after(|g| g.descriptor.headers_len = 63), E::HeadersLen(63));
        assert_eq!(
            error_after(|g| g.descriptor.headers_len = MAX_DUMP_HEADERS_LEN + 1),
            E::HeadersLen(MAX_DUMP_HEADERS_LEN + 1)
        );
        assert!(matches!(error_after(|g| g.descriptor.file_size = 100), E::FileSize { file_size: 100, .. }));
        assert!(matches!(error_after(|g| g.descriptor.file_size = MAX_DUMP_FILE_SIZE + 1), E::FileSize { .. }));
        assert_eq!(
            error_after(|g| g.descriptor.nr_ranges = MAX_DUMP_RANGES + 1),
            E::TooManyRanges(MAX_DUMP_RANGES + 1)
        );
        assert!(matches!(
            error_after(|g| g.descriptor.kexec_dmesg_len = MAX_DUMP_LOG_LEN + 1),
            E::LogTooLong { log: "kexec-dmesg log", .. }
        ));
        assert!(matches!(
            error_after(|g| g.descriptor.headers_gpa = 0xfff_f000),
            E::OutOfRam { what: "header blob", .. }
        ));
        assert!(matches!(
            error_after(|g| g.descriptor.ranges_gpa = u64::MAX - 8),
            E::OutOfRam { what: "range table", .. }
        ));
        assert!(matches!(
            error_after(|g| g.descriptor.vmcore_dmesg_gpa = 0x1_0000_0000),
            E::OutOfRam { what: "vmcore-dmesg log", .. }
        ));
        // An empty log's address does not matter.
        let mut g = guest();
        g.descriptor.kexec_dmesg_len = 0;
        g.descriptor.kexec_dmesg_gpa = u64::MAX;
        assert!(validate(&g).is_ok());
    }

    #[test]
    fn the_headers_must_be_a_core_file() {
        use DescriptorError as E;
        let e = error_after(|g| g.headers[16] = 2); // ET_EXEC
        assert!(matches!(e, E::Headers(ElfError::Header { field: "e_type", .. })), "{e:?}");
        // A note whose descriptor runs past its segment.
        let e = error_after(|g| {
            let note = Core::parse(&g.headers).unwrap().notes()[0].offset as usize;
            g.headers[note + 4..note + 8].copy_from_slice(&100_000u32.to_le_bytes());
        });
        assert!(matches!(e, E::Headers(ElfError::Note { .. })), "{e:?}");
        // The PT_NOTE's data must be inside the blob.
        let e = error_after(|g| g.descriptor.headers_len = 4096);
        assert!(matches!(e, E::Headers(ElfError::Truncated { .. })), "{e:?}");
    }

    #[test]
    fn the_pt_loads_must_fit_the_file() {
        use DescriptorError as E;
        // Program header 1 is the first PT_LOAD; its p_offset is at byte 8 of the entry.
        let load = 64 + 56;
        let set_offset = |g: &mut Guest, index: usize, offset: u64| {
            let at = 64 + 56 * index + 8;
            g.headers[at..at + 8].copy_from_slice(&offset.to_le_bytes());
        };
        assert!(matches!(error_after(|g| set_offset(g, 1, 0x1000)), E::LoadInsideHeaders { index: 1, .. }));
        let e = error_after(|g| set_offset(g, 2, g.descriptor.file_size - 0x1000));
        assert!(matches!(e, E::LoadPastEnd { index: 2, .. }), "{e:?}");
        let e = error_after(|g| {
            let first = le::u64_at(&g.headers, load + 8);
            set_offset(g, 2, first + 0x1000);
        });
        assert!(matches!(e, E::LoadsOverlap { index: 2 } | E::LoadsOverlap { index: 1 }), "{e:?}");
        let e = error_after(|g| g.descriptor.file_size += 0x1000);
        assert!(matches!(e, E::FileSizeMismatch { .. }), "{e:?}");
        // Up to a page of rounding is accepted.
        let mut g = guest();
        g.descriptor.file_size = g.descriptor.file_size.next_multiple_of(4096);
        assert!(validate(&g).is_ok());
    }

    #[test]
    fn every_range_rule_has_its_error() {
        use DescriptorError as E;
        let h = |g: &Guest| g.descriptor.headers_len;
        assert!(matches!(error_after(|g| g.ranges[0].file_offset = h(g) - 1), E::RangeInHeaders { index: 0, .. }));
        assert_eq!(error_after(|g| g.ranges.swap(0, 1)), E::RangeUnsorted { index: 1 });
        assert_eq!(
            error_after(|g| g.ranges[1].file_offset = g.ranges[0].file_offset + g.ranges[0].len - 1),
            E::RangeOverlap { index: 1 }
        );
        let last = guest().ranges.len() - 1;
        assert!(matches!(error_after(|g| g.ranges[last].len += 0x1000), E::RangePastEnd { .. }));
        assert!(matches!(error_after(|g| g.ranges[last].len = u64::MAX), E::RangePastEnd { .. }));
        assert_eq!(
            error_after(|g| g.ranges[0].gpa = 0xfff_f000),
            E::RangeOutOfRam { index: 0, gpa: 0xfff_f000, len: guest().ranges[0].len }
        );
        // Range 1 ends where the first PT_LOAD's data ends, mid-page: one byte more is in the
        // padding before the next chunk, which belongs to no PT_LOAD.
        let e = error_after(|g| g.ranges[1].len += 1);
        assert!(matches!(e, E::RangeOutsideLoads { index: 1, .. }), "{e:?}");
        // Empty ranges are harmless wherever they point in memory.
        let mut g = guest();
        let at = g.ranges[0].file_offset;
        g.ranges.insert(0, DumpRange { file_offset: at, gpa: u64::MAX, len: 0 });
        g.descriptor.nr_ranges += 1;
        assert!(validate(&g).is_ok());
    }

    #[test]
    fn ranges_may_span_pt_loads_that_continue_each_other() {
        let loads = [(1, 0x2000, 0x3000), (2, 0x3000, 0x4000), (3, 0x5000, 0x6000)];
        assert!(covered_by_loads(&loads, 0x2000, 0x4000));
        assert!(covered_by_loads(&loads, 0x2800, 0x3800));
        assert!(covered_by_loads(&loads, 0x5000, 0x6000));
        assert!(!covered_by_loads(&loads, 0x2800, 0x5800), "a gap between 0x4000 and 0x5000");
        assert!(!covered_by_loads(&loads, 0x1000, 0x2800), "before the first");
        assert!(!covered_by_loads(&loads, 0x4000, 0x4800), "in the gap");
        assert!(!covered_by_loads(&loads, 0x5800, 0x6001), "past the last");
        assert!(!covered_by_loads(&[], 0x2000, 0x2001));
    }

    #[test]
    fn missing_notes_are_warnings() {
        let g = super::super::tests::guest_with_notes(false);
        let valid = validate(&g).unwrap();
        assert_eq!(valid.warnings.len(), 1, "{:?}", valid.warnings);
        assert!(valid.warnings[0].contains("VMCOREINFO"));
    }
}
