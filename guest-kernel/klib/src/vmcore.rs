//! Linux's `/proc/vmcore` layout, computed from an elfcorehdr, and the dump ranges behind it.
//!
//! `fs/proc/vmcore.c` turns the elfcorehdr into a file:
//!
//! 1. Each PT_NOTE's notes are read from old memory up to its first zero note header ("real
//!    size"), and concatenated in program-header order (CPUs, then VMCOREINFO) — see
//!    [`append_note_segment`].
//! 2. The ELF header keeps its fields except `e_phnum`; the program headers are one merged
//!    PT_NOTE first (`p_offset` = the headers' size rounded up to a page, `p_align` 4), then the
//!    other program headers in order. The headers are padded to a page, and so are the notes.
//! 3. Each PT_LOAD's data follows as a page-rounded chunk `[rounddown(src), roundup(src +
//!    memsz))` of old memory (`src` is the elfcorehdr's `p_offset`), chunks back to back, with
//!    `p_offset = chunk_off + (src - rounddown(src))`.
//!
//! [`VmcoreLayout`] computes those numbers, [`VmcoreLayout::write_headers`] writes the header
//! blob (headers, padding, notes, padding), and [`DumpRangeBuilder`] lists which old memory
//! goes where in the file, optionally leaving free pages out (makedumpfile's dump level 16)
//! using the crashed kernel's frame bitmap.
//!
//! Unlike Linux, a range covers only the PT_LOAD's own bytes `[src, src + memsz)`; the rest of
//! the page-rounded chunk is a hole (zeros) rather than whatever memory surrounds the segment.
//!
//! ```
//! use crashvisor_abi::dump::DumpRange;
//! use crashvisor_klib::elfcore::{CoreHeader, CoreHeaderBuilder};
//! use crashvisor_klib::vmcore::{DumpRangeBuilder, VmcoreLayout};
//!
//! let mut hdr = [0u8; 256];
//! let mut b = CoreHeaderBuilder::new(&mut hdr)?;
//! b.note(0x7000, 368)?;
//! b.load(0xffff_8880_0010_0000, 0x10_0000, 0x10_0000)?;
//! let len = b.finish();
//! let core = CoreHeader::parse(&hdr[..len])?;
//!
//! let layout = VmcoreLayout::new(core, 356)?;
//! assert_eq!((layout.notes_offset(), layout.data_offset()), (4096, 8192));
//!
//! let mut ranges = [DumpRange::default(); 4];
//! let summary = DumpRangeBuilder::new(&layout).build_into(&mut ranges)?;
//! assert_eq!(summary.ranges, 1);
//! assert_eq!(ranges[0], DumpRange { file_offset: 8192, gpa: 0x10_0000, len: 0x10_0000 });
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::fmt;

use crashvisor_abi::dump::DumpRange;
use crashvisor_abi::layout::PAGE_SIZE;

use crate::elfcore::{CoreHeader, ProgramHeader, ProgramHeaders, EHDR_SIZE, MAX_PHNUM, PHDR_SIZE, PT_LOAD, PT_NOTE};
use crate::elfnote::notes_real_size;

/// Frames per bitmap word.
const BITS: u64 = u64::BITS as u64;

/// Why a vmcore layout, header blob or range list could not be produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmcoreError {
    /// Offsets or sizes overflow 64 bits (hostile PT_LOAD sizes).
    Overflow,
    /// The merged program headers would not fit `e_phnum`.
    TooManyProgramHeaders,
    /// The output buffer is smaller than `needed` bytes.
    BufferTooSmall {
        /// Bytes needed.
        needed: u64,
    },
    /// The note bytes given differ in length from the layout's.
    NotesMismatch,
    /// The range buffer is too small; `needed` ranges were produced in all.
    TooManyRanges {
        /// Ranges needed.
        needed: u64,
    },
}

impl fmt::Display for VmcoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Overflow => f.write_str("vmcore offsets overflow"),
            Self::TooManyProgramHeaders => f.write_str("too many program headers for a vmcore"),
            Self::BufferTooSmall { needed } => write!(f, "the vmcore header buffer needs {needed} bytes"),
            Self::NotesMismatch => f.write_str("the merged notes differ in size from the layout"),
            Self::TooManyRanges { needed } => write!(f, "the dump needs {needed} ranges"),
        }
    }
}

impl core::error::Error for VmcoreError {}

fn round_up_page(n: u64) -> Option<u64> {
    n.checked_next_multiple_of(PAGE_SIZE)
}

/// Appends a PT_NOTE segment's notes (its real size: up to the first zero note header) to the
/// merged notes in `out[..used]`; returns the new length.
pub fn append_note_segment(out: &mut [u8], used: usize, segment: &[u8]) -> Result<usize, VmcoreError> {
    let real = &segment[..notes_real_size(segment)];
    let end = used.checked_add(real.len()).ok_or(VmcoreError::Overflow)?;
    let dest = out.get_mut(used..end).ok_or(VmcoreError::BufferTooSmall { needed: end as u64 })?;
    dest.copy_from_slice(real);
    Ok(end)
}

/// Where everything lies in `/proc/vmcore` for one elfcorehdr and merged-note size.
#[derive(Clone, Copy, Debug)]
pub struct VmcoreLayout<'a> {
    header: CoreHeader<'a>,
    phnum: u16,
    notes_offset: u64,
    notes_len: u64,
    data_offset: u64,
    file_size: u64,
}

impl<'a> VmcoreLayout<'a> {
    /// Lays out the vmcore of `header` whose merged notes are `notes_len` bytes. Checks every
    /// offset for overflow, so the accessors and iterators cannot fail.
    pub fn new(header: CoreHeader<'a>, notes_len: u64) -> Result<Self, VmcoreError> {
        let nr_notes = header.notes().count();
        let phnum = header.elf().phnum() - nr_notes + 1;
        if phnum > MAX_PHNUM {
            return Err(VmcoreError::TooManyProgramHeaders);
        }
        // At most 64 + 0xfffe * 56 bytes.
        let headers_len = (EHDR_SIZE + phnum * PHDR_SIZE) as u64;
        let notes_offset = round_up_page(headers_len).ok_or(VmcoreError::Overflow)?;
        let notes_pad = round_up_page(notes_len).ok_or(VmcoreError::Overflow)?;
        let data_offset = notes_offset.checked_add(notes_pad).ok_or(VmcoreError::Overflow)?;
        let mut file_size = data_offset;
        for load in header.loads() {
            let start = load.p_offset - load.p_offset % PAGE_SIZE;
            let end = load.p_offset.checked_add(load.p_memsz).and_then(round_up_page).ok_or(VmcoreError::Overflow)?;
            file_size = file_size.checked_add(end - start).ok_or(VmcoreError::Overflow)?;
        }
        Ok(Self { header, phnum: phnum as u16, notes_offset, notes_len, data_offset, file_size })
    }

    /// The elfcorehdr laid out.
    pub fn header(&self) -> &CoreHeader<'a> {
        &self.header
    }

    /// `e_phnum` of the vmcore: the merged PT_NOTE plus every other program header.
    pub fn phnum(&self) -> u16 {
        self.phnum
    }

    /// Bytes of the ELF header and program headers, before padding.
    pub fn headers_len(&self) -> u64 {
        (EHDR_SIZE + usize::from(self.phnum) * PHDR_SIZE) as u64
    }

    /// File offset of the merged notes: the headers rounded up to a page.
    pub fn notes_offset(&self) -> u64 {
        self.notes_offset
    }

    /// Bytes of merged notes (the merged PT_NOTE's `p_filesz`).
    pub fn notes_len(&self) -> u64 {
        self.notes_len
    }

    /// File offset of the first PT_LOAD chunk, which is also the header blob's size.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The vmcore's size: the end of the last PT_LOAD chunk.
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// The PT_LOADs with their place in the vmcore, in order.
    pub fn loads(&self) -> VmcoreLoads<'a> {
        VmcoreLoads { phdrs: self.header.program_headers(), chunk_offset: self.data_offset }
    }

    /// The merged PT_NOTE program header.
    pub fn note_phdr(&self) -> ProgramHeader {
        ProgramHeader {
            p_type: PT_NOTE,
            p_offset: self.notes_offset,
            p_filesz: self.notes_len,
            p_memsz: self.notes_len,
            p_align: 4,
            ..ProgramHeader::default()
        }
    }

    /// Writes the header blob, [`data_offset`](Self::data_offset) bytes: the ELF header (the
    /// elfcorehdr's, with the new `e_phnum`), the merged PT_NOTE, the other program headers
    /// (PT_LOAD offsets rewritten), zeros, the merged `notes`, zeros. Returns its length.
    pub fn write_headers(&self, notes: &[u8], out: &mut [u8]) -> Result<usize, VmcoreError> {
        if notes.len() as u64 != self.notes_len {
            return Err(VmcoreError::NotesMismatch);
        }
        let needed = self.data_offset;
        let len = usize::try_from(needed).map_err(|_| VmcoreError::BufferTooSmall { needed })?;
        let out = out.get_mut(..len).ok_or(VmcoreError::BufferTooSmall { needed })?;
        out[..EHDR_SIZE].copy_from_slice(self.header.elf().ehdr_bytes());
        out[56..58].copy_from_slice(&self.phnum.to_le_bytes());
        let mut at = EHDR_SIZE;
        let mut put = |phdr: &ProgramHeader| {
            out[at..at + PHDR_SIZE].copy_from_slice(&phdr.to_bytes());
            at += PHDR_SIZE;
        };
        put(&self.note_phdr());
        let mut loads = self.loads();
        for mut phdr in self.header.program_headers().filter(|p| p.p_type != PT_NOTE) {
            if phdr.p_type == PT_LOAD {
                phdr.p_offset = loads.next().expect("one layout entry per PT_LOAD").offset;
            }
            put(&phdr);
        }
        // The headers fit below notes_offset, and the notes below data_offset; both fit `len`.
        let notes_at = self.notes_offset as usize;
        out[at..notes_at].fill(0);
        out[notes_at..notes_at + notes.len()].copy_from_slice(notes);
        out[notes_at + notes.len()..].fill(0);
        Ok(len)
    }
}

/// A PT_LOAD and its place in the vmcore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmcoreLoad {
    /// `p_vaddr`, unchanged.
    pub vaddr: u64,
    /// `p_paddr`, unchanged.
    pub paddr: u64,
    /// Physical address of the data in old memory (the elfcorehdr's `p_offset`).
    pub src: u64,
    /// `p_filesz`, unchanged.
    pub filesz: u64,
    /// `p_memsz`, unchanged: the bytes copied from `src`.
    pub memsz: u64,
    /// File offset of the page-rounded chunk.
    pub chunk_offset: u64,
    /// Size of the chunk: `roundup(src + memsz) - rounddown(src)`.
    pub chunk_len: u64,
    /// The vmcore's `p_offset`: `chunk_offset + src % PAGE_SIZE`.
    pub offset: u64,
}

/// Iterator over a layout's PT_LOADs (see [`VmcoreLayout::loads`]).
#[derive(Clone, Debug)]
pub struct VmcoreLoads<'a> {
    phdrs: ProgramHeaders<'a>,
    chunk_offset: u64,
}

impl Iterator for VmcoreLoads<'_> {
    type Item = VmcoreLoad;

    fn next(&mut self) -> Option<VmcoreLoad> {
        let phdr = self.phdrs.by_ref().find(|p| p.p_type == PT_LOAD)?;
        // `VmcoreLayout::new` checked these sums for overflow.
        let start = phdr.p_offset - phdr.p_offset % PAGE_SIZE;
        let end = (phdr.p_offset + phdr.p_memsz).next_multiple_of(PAGE_SIZE);
        let load = VmcoreLoad {
            vaddr: phdr.p_vaddr,
            paddr: phdr.p_paddr,
            src: phdr.p_offset,
            filesz: phdr.p_filesz,
            memsz: phdr.p_memsz,
            chunk_offset: self.chunk_offset,
            chunk_len: end - start,
            offset: self.chunk_offset + (phdr.p_offset - start),
        };
        self.chunk_offset += end - start;
        Some(load)
    }
}

/// What a range list covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpSummary {
    /// Number of ranges (after merging).
    pub ranges: u64,
    /// Bytes of old memory they copy.
    pub bytes: u64,
}

/// Produces the [`DumpRange`]s of a vmcore's PT_LOAD data: sorted by file offset, adjacent runs
/// merged, and, with [`exclude_free_pages`](Self::exclude_free_pages), without the pages the
/// crashed kernel's frame bitmap marks free (they become holes).
#[derive(Clone, Copy, Debug)]
pub struct DumpRangeBuilder<'a> {
    layout: &'a VmcoreLayout<'a>,
    free_map: Option<(&'a [u64], u64)>,
}

impl<'a> DumpRangeBuilder<'a> {
    /// Ranges covering every PT_LOAD's bytes.
    pub fn new(layout: &'a VmcoreLayout<'a>) -> Self {
        Self { layout, free_map: None }
    }

    /// Leaves out frames that are free in `words`, a frame bitmap laid out like
    /// [`crate::memmap::FrameBitmap`]'s (1 bit per 4 KiB frame, set = in use) for `nr_frames`
    /// frames. Frames past `nr_frames` or past the words count as in use. A partly covered
    /// page at a PT_LOAD edge is left out if its frame is free.
    pub fn exclude_free_pages(self, words: &'a [u64], nr_frames: u64) -> Self {
        Self { free_map: Some((words, nr_frames)), ..self }
    }

    /// Passes each range to `sink`, in file-offset order.
    pub fn for_each(&self, sink: impl FnMut(DumpRange)) -> DumpSummary {
        let mut merger = Merger { pending: None, sink, summary: DumpSummary::default() };
        for load in self.layout.loads() {
            let (src, end) = (load.src, load.src + load.memsz);
            let mut push = |first: u64, last: u64| {
                merger.push(DumpRange { file_offset: load.offset + (first - src), gpa: first, len: last - first });
            };
            match self.free_map {
                None if src < end => push(src, end),
                None => {}
                Some((words, nr_frames)) => {
                    let (first_pfn, end_pfn) = (src / PAGE_SIZE, end.div_ceil(PAGE_SIZE));
                    used_frame_runs(words, nr_frames, first_pfn, end_pfn, |a, b| {
                        // Runs lie inside [first_pfn, end_pfn), whose byte addresses the
                        // layout checked; clip the edge pages to the segment.
                        push((a * PAGE_SIZE).max(src), (b * PAGE_SIZE).min(end));
                    });
                }
            }
        }
        merger.finish()
    }

    /// Writes the ranges into `out`. If it is too small, fills it and reports how many ranges
    /// there are in all.
    pub fn build_into(&self, out: &mut [DumpRange]) -> Result<DumpSummary, VmcoreError> {
        let mut n = 0usize;
        let summary = self.for_each(|range| {
            if let Some(slot) = out.get_mut(n) {
                *slot = range;
            }
            n = n.saturating_add(1);
        });
        if summary.ranges > out.len() as u64 {
            return Err(VmcoreError::TooManyRanges { needed: summary.ranges });
        }
        Ok(summary)
    }
}

/// Joins ranges that continue each other in both the file and memory.
struct Merger<F> {
    pending: Option<DumpRange>,
    sink: F,
    summary: DumpSummary,
}

impl<F: FnMut(DumpRange)> Merger<F> {
    fn push(&mut self, range: DumpRange) {
        if range.len == 0 {
            return;
        }
        self.summary.bytes += range.len;
        if let Some(p) = &mut self.pending {
            if p.file_offset + p.len == range.file_offset && p.gpa + p.len == range.gpa {
                p.len += range.len;
                return;
            }
        }
        self.flush();
        self.pending = Some(range);
    }

    fn flush(&mut self) {
        if let Some(range) = self.pending.take() {
            self.summary.ranges += 1;
            (self.sink)(range);
        }
    }

    fn finish(mut self) -> DumpSummary {
        self.flush();
        self.summary
    }
}

/// Index of the lowest set bit of a non-zero word, via `bsr` (`leading_zeros`) rather than
/// `tzcnt`, which emulators may not know (see `memmap::frames`).
fn lowest_set_bit(word: u64) -> u64 {
    u64::from(63 - (word & word.wrapping_neg()).leading_zeros())
}

/// Calls `emit(a, b)` for each maximal run `[a, b)` of in-use frames within `[start, end)`.
/// Frames at or past `nr_frames` or past the words count as in use. Whole-word runs cost one
/// comparison per word.
fn used_frame_runs(words: &[u64], nr_frames: u64, start: u64, end: u64, mut emit: impl FnMut(u64, u64)) {
    if start >= end {
        return;
    }
    let known_end = nr_frames.min((words.len() as u64).saturating_mul(BITS)).min(end);
    let mut run: Option<u64> = None;
    if start < known_end {
        let (first, last) = (start / BITS, (known_end - 1) / BITS);
        // Below `known_end`, so the indices are inside `words`.
        for (index, &word) in (first..=last).zip(&words[first as usize..=last as usize]) {
            let base = index * BITS;
            let mut word = word;
            // Bits outside [start, known_end) count as in use: they only extend runs, which
            // are clipped below, and past known_end everything is in use anyway.
            if index == first {
                word |= (1u64 << (start % BITS)) - 1;
            }
            if index == last && !known_end.is_multiple_of(BITS) {
                word |= u64::MAX << (known_end % BITS);
            }
            if word == u64::MAX {
                run = run.or(Some(base));
                continue;
            }
            if word == 0 {
                if let Some(run_start) = run.take() {
                    if base > start {
                        emit(run_start.max(start), base);
                    }
                }
                continue;
            }
            let mut pos = 0;
            loop {
                if let Some(run_start) = run {
                    let free = !word & (u64::MAX << pos);
                    if free == 0 {
                        break;
                    }
                    pos = lowest_set_bit(free);
                    if base + pos > start {
                        emit(run_start.max(start), base + pos);
                    }
                    run = None;
                } else {
                    let used = word & (u64::MAX << pos);
                    if used == 0 {
                        break;
                    }
                    pos = lowest_set_bit(used);
                    run = Some(base + pos);
                }
            }
        }
    }
    // Past known_end every frame is in use, so an open run extends to the end.
    let tail = if known_end < end { Some(run.unwrap_or(known_end)) } else { run };
    if let Some(run_start) = tail.map(|s| s.max(start)).filter(|&s| s < end) {
        emit(run_start, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elfcore::CoreHeaderBuilder;
    use crate::elfnote::{write_prstatus, write_vmcoreinfo_note, CRASH_NOTE_BYTES, ELF_NGREG, VMCOREINFO_NOTE_SIZE};
    use alloc::vec;
    use alloc::vec::Vec;

    const MIB: u64 = 1 << 20;

    /// 2 CPU notes, VMCOREINFO, kernel text, low RAM, an unaligned segment, high RAM.
    fn worked_header(buf: &mut [u8]) -> CoreHeader<'_> {
        let mut b = CoreHeaderBuilder::new(buf).unwrap();
        b.note(0x7f00_1000, 368).unwrap();
        b.note(0x7f00_2000, 368).unwrap();
        b.note(0x7f00_3000, 4132).unwrap();
        b.load(0xffff_ffff_8100_0000, 16 * MIB, 0x12_3456).unwrap();
        b.load(0xffff_8880_0000_1000, 0x1000, 0x9_f000).unwrap();
        b.load(0xffff_8880_0010_0800, 0x10_0800, 0x1000).unwrap();
        b.load(0xffff_8880_0020_0000, 2 * MIB, 62 * MIB).unwrap();
        let len = b.finish();
        CoreHeader::parse(&buf[..len]).unwrap()
    }

    #[test]
    fn layout_matches_linux_rules_on_a_worked_example() {
        let mut buf = [0u8; 1024];
        let core = worked_header(&mut buf);
        // Real note sizes: 356 per CPU; VMCOREINFO with 100 bytes of text is 12 + 12 + 100.
        let notes_len = 356 + 356 + 124;
        let layout = VmcoreLayout::new(core, notes_len).unwrap();
        // 7 program headers become 1 merged PT_NOTE + 4 PT_LOADs: 64 + 5 * 56 = 344 bytes.
        assert_eq!(layout.phnum(), 5);
        assert_eq!(layout.headers_len(), 344);
        assert_eq!(layout.notes_offset(), 4096);
        assert_eq!(layout.notes_len(), 836);
        assert_eq!(layout.data_offset(), 8192);
        let loads: Vec<_> = layout.loads().map(|l| (l.chunk_offset, l.chunk_len, l.offset)).collect();
        assert_eq!(
            loads,
            [
                // 16 MiB + 0x123456 rounds up to 16 MiB + 0x124000.
                (0x2000, 0x12_4000, 0x2000),
                (0x12_6000, 0x9_f000, 0x12_6000),
                // 0x100800..0x101800 is the chunk 0x100000..0x102000; p_offset is 0x800 in.
                (0x1c_5000, 0x2000, 0x1c_5800),
                (0x1c_7000, 62 * MIB, 0x1c_7000),
            ]
        );
        assert_eq!(layout.file_size(), 0x1c_7000 + 62 * MIB);
        let note = layout.note_phdr();
        assert_eq!((note.p_offset, note.p_filesz, note.p_memsz, note.p_align), (4096, 836, 836, 4));
    }

    #[test]
    fn header_blob_is_linux_shaped() {
        let mut hdr = [0u8; 1024];
        let core = worked_header(&mut hdr);
        let mut notes = vec![0u8; 2 * CRASH_NOTE_BYTES + VMCOREINFO_NOTE_SIZE];
        let mut cpu = [0u8; CRASH_NOTE_BYTES];
        let mut used = 0;
        for pid in 1..=2 {
            write_prstatus(&mut cpu, pid, &[pid as u64; ELF_NGREG]);
            used = append_note_segment(&mut notes, used, &cpu).unwrap();
        }
        let mut info = [0u8; VMCOREINFO_NOTE_SIZE];
        write_vmcoreinfo_note(&mut info, &[b'k'; 100]);
        used = append_note_segment(&mut notes, used, &info).unwrap();
        assert_eq!(used, 836);
        let layout = VmcoreLayout::new(core, used as u64).unwrap();

        let mut blob = vec![0xeeu8; 9000];
        assert_eq!(layout.write_headers(&notes[..used - 1], &mut blob), Err(VmcoreError::NotesMismatch));
        assert_eq!(
            layout.write_headers(&notes[..used], &mut blob[..8191]),
            Err(VmcoreError::BufferTooSmall { needed: 8192 })
        );
        assert_eq!(layout.write_headers(&notes[..used], &mut blob), Ok(8192));
        assert_eq!(blob[8192], 0xee, "nothing past the blob");
        assert_eq!(&blob[..56], &layout.header().elf().ehdr_bytes()[..56], "the ELF header is kept");
        assert_eq!(crate::le::u16_at(&blob, 56), 5);
        let phdr = |i: usize| ProgramHeader::from_bytes(blob[64 + i * 56..120 + i * 56].try_into().unwrap());
        assert_eq!(phdr(0), layout.note_phdr());
        let loads: Vec<_> = layout.loads().collect();
        for (i, load) in loads.iter().enumerate() {
            let p = phdr(i + 1);
            assert_eq!((p.p_type, p.p_flags, p.p_offset), (PT_LOAD, 7, load.offset));
            assert_eq!((p.p_vaddr, p.p_paddr, p.p_memsz), (load.vaddr, load.paddr, load.memsz));
        }
        assert!(blob[344..4096].iter().all(|&b| b == 0));
        assert_eq!(&blob[4096..4096 + 836], &notes[..836]);
        assert!(blob[4096 + 836..8192].iter().all(|&b| b == 0));
        // The blob parses as a core file whose merged notes read back.
        let parsed = CoreHeader::parse(&blob).unwrap();
        assert_eq!(parsed.notes().count(), 1);
        let pids: Vec<_> = crate::elfnote::NoteIter::new(&blob[4096..4096 + 836])
            .filter_map(|n| crate::elfnote::prstatus_regs(n.desc).map(|(pid, _)| pid))
            .collect();
        assert_eq!(pids, [1, 2]);
        assert_eq!(alloc::format!("{}", VmcoreError::TooManyRanges { needed: 3 }), "the dump needs 3 ranges");
    }

    #[test]
    fn append_note_segment_takes_the_real_size_and_checks_room() {
        let mut cpu = [0u8; CRASH_NOTE_BYTES];
        write_prstatus(&mut cpu, 1, &[0; ELF_NGREG]);
        let mut out = [0u8; 400];
        assert_eq!(append_note_segment(&mut out, 0, &cpu), Ok(356));
        assert_eq!(append_note_segment(&mut out, 356, &cpu), Err(VmcoreError::BufferTooSmall { needed: 712 }));
        assert_eq!(append_note_segment(&mut out, 356, &[0u8; 368]), Ok(356), "an unsaved CPU adds nothing");
        assert_eq!(append_note_segment(&mut out, usize::MAX, &cpu), Err(VmcoreError::Overflow));
    }

    #[test]
    fn hostile_sizes_are_errors() {
        let mut buf = [0u8; 256];
        let mut b = CoreHeaderBuilder::new(&mut buf).unwrap();
        b.note(0, 368).unwrap();
        b.load(0, u64::MAX - 10, 5).unwrap();
        let len = b.finish();
        let core = CoreHeader::parse(&buf[..len]).unwrap();
        assert_eq!(VmcoreLayout::new(core, 0).unwrap_err(), VmcoreError::Overflow);
        let mut buf = [0u8; 256];
        let mut b = CoreHeaderBuilder::new(&mut buf).unwrap();
        b.load(0, 0, u64::MAX / 2).unwrap();
        b.load(0, 0, u64::MAX / 2).unwrap();
        b.load(0, 0, 4096).unwrap();
        let len = b.finish();
        let core = CoreHeader::parse(&buf[..len]).unwrap();
        assert_eq!(VmcoreLayout::new(core, 0).unwrap_err(), VmcoreError::Overflow);
        assert_eq!(VmcoreLayout::new(core, u64::MAX).unwrap_err(), VmcoreError::Overflow);
    }

    #[test]
    fn headers_without_notes_still_get_an_empty_merged_note() {
        let mut buf = [0u8; 256];
        let mut b = CoreHeaderBuilder::new(&mut buf).unwrap();
        b.load(0, 0x1000, 0x1000).unwrap();
        let len = b.finish();
        let layout = VmcoreLayout::new(CoreHeader::parse(&buf[..len]).unwrap(), 0).unwrap();
        assert_eq!((layout.phnum(), layout.notes_offset(), layout.data_offset()), (2, 4096, 4096));
        assert_eq!(layout.file_size(), 8192);
    }

    fn ranges(builder: &DumpRangeBuilder<'_>) -> Vec<(u64, u64, u64)> {
        let mut out = Vec::new();
        let summary = builder.for_each(|r| out.push((r.file_offset, r.gpa, r.len)));
        assert_eq!(summary.ranges, out.len() as u64);
        assert_eq!(summary.bytes, out.iter().map(|r| r.2).sum::<u64>());
        out
    }

    /// One PT_LOAD `[src, src + size)` with no notes.
    fn single_load(buf: &mut [u8], src: u64, size: u64) -> CoreHeader<'_> {
        let mut b = CoreHeaderBuilder::new(buf).unwrap();
        b.load(src, src, size).unwrap();
        let len = b.finish();
        CoreHeader::parse(&buf[..len]).unwrap()
    }

    #[test]
    fn ranges_without_exclusion_follow_the_layout_and_merge() {
        let mut buf = [0u8; 1024];
        let core = worked_header(&mut buf);
        let layout = VmcoreLayout::new(core, 836).unwrap();
        let got = ranges(&DumpRangeBuilder::new(&layout));
        assert_eq!(
            got,
            [
                (0x2000, 16 * MIB, 0x12_3456),
                (0x12_6000, 0x1000, 0x9_f000),
                (0x1c_5800, 0x10_0800, 0x1000),
                (0x1c_7000, 2 * MIB, 62 * MIB)
            ]
        );
        // Two page-aligned segments, back to back in memory, merge into one range.
        let mut buf = [0u8; 256];
        let mut b = CoreHeaderBuilder::new(&mut buf).unwrap();
        b.load(0, 0x1000, 0x1000).unwrap();
        b.load(0, 0x2000, 0x3000).unwrap();
        b.load(0, 0x9000, 0).unwrap();
        let len = b.finish();
        let layout = VmcoreLayout::new(CoreHeader::parse(&buf[..len]).unwrap(), 0).unwrap();
        assert_eq!(ranges(&DumpRangeBuilder::new(&layout)), [(4096, 0x1000, 0x4000)]);
    }

    #[test]
    fn free_pages_become_holes() {
        // 256 frames (1 MiB): word 0 all used, word 1 all free, word 2 mixed, word 3 all used.
        let words = [u64::MAX, 0, 0xff00_0000_0000_00f0, u64::MAX];
        let mut buf = [0u8; 256];
        let layout = VmcoreLayout::new(single_load(&mut buf, 0, MIB), 0).unwrap();
        let off = layout.data_offset();
        let got = ranges(&DumpRangeBuilder::new(&layout).exclude_free_pages(&words, 256));
        let page = |pfn: u64| pfn * PAGE_SIZE;
        assert_eq!(
            got,
            [(off, 0, page(64)), (off + page(132), page(132), page(4)), (off + page(184), page(184), page(256 - 184)),]
        );
    }

    #[test]
    fn partial_pages_at_edges_are_clipped() {
        let words = [!0b0110u64]; // frames 1 and 2 free
        let mut buf = [0u8; 256];
        // The segment covers 0x0800..0x3800: half of frame 0, frames 1-2, half of frame 3.
        let layout = VmcoreLayout::new(single_load(&mut buf, 0x800, 0x3000), 0).unwrap();
        let off = layout.data_offset() + 0x800;
        let got = ranges(&DumpRangeBuilder::new(&layout).exclude_free_pages(&words, 64));
        assert_eq!(got, [(off, 0x800, 0x800), (off + 0x2800, 0x3000, 0x800)]);
        // A free frame under a partial edge page drops that part.
        let words = [!0b1001u64];
        let got = ranges(&DumpRangeBuilder::new(&layout).exclude_free_pages(&words, 64));
        assert_eq!(got, [(off + 0x800, 0x1000, 0x2000)]);
    }

    #[test]
    fn frames_past_the_bitmap_count_as_used() {
        let words = [0u64; 2];
        let mut buf = [0u8; 256];
        let layout = VmcoreLayout::new(single_load(&mut buf, 0, 200 * PAGE_SIZE), 0).unwrap();
        let off = layout.data_offset();
        // nr_frames 100: frames 100..200 are unknown, so dumped.
        let got = ranges(&DumpRangeBuilder::new(&layout).exclude_free_pages(&words, 100));
        assert_eq!(got, [(off + 100 * PAGE_SIZE, 100 * PAGE_SIZE, 100 * PAGE_SIZE)]);
        // Fewer words than nr_frames needs: past the words, everything is used.
        let got = ranges(&DumpRangeBuilder::new(&layout).exclude_free_pages(&words[..1], 1000));
        assert_eq!(got, [(off + 64 * PAGE_SIZE, 64 * PAGE_SIZE, 136 * PAGE_SIZE)]);
        assert!(ranges(&DumpRangeBuilder::new(&layout).exclude_free_pages(&words, 200))
            .iter()
            .all(|r| r.1 >= 128 * PAGE_SIZE));
    }

    #[test]
    fn build_into_reports_the_needed_count() {
        let words = [0xaaaa_aaaa_aaaa_aaaau64]; // every other frame used
        let mut buf = [0u8; 256];
        let layout = VmcoreLayout::new(single_load(&mut buf, 0, 64 * PAGE_SIZE), 0).unwrap();
        let builder = DumpRangeBuilder::new(&layout).exclude_free_pages(&words, 64);
        let mut small = [DumpRange::default(); 10];
        assert_eq!(builder.build_into(&mut small), Err(VmcoreError::TooManyRanges { needed: 32 }));
        assert_eq!(small[9].gpa, 19 * PAGE_SIZE, "the buffer is filled with the first ranges");
        let mut big = [DumpRange::default(); 32];
        assert_eq!(builder.build_into(&mut big), Ok(DumpSummary { ranges: 32, bytes: 32 * PAGE_SIZE }));
        assert_eq!(big[31], DumpRange { file_offset: 4096 + 63 * PAGE_SIZE, gpa: 63 * PAGE_SIZE, len: PAGE_SIZE });
    }

    #[test]
    fn bitmap_runs_match_a_bit_by_bit_model() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut rand = || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            state >> 11
        };
        for round in 0..300 {
            let nr_words = 1 + rand() % 6;
            let words: Vec<u64> = (0..nr_words)
                .map(|_| match rand() % 4 {
                    0 => 0,
                    1 => u64::MAX,
                    _ => rand() ^ (rand() << 13),
                })
                .collect();
            let nr_frames = rand() % (nr_words * 64 + 40);
            let start = rand() % (nr_words * 64 + 64);
            let end = start + rand() % 300;
            let used = |pfn: u64| pfn >= nr_frames || crate::memmap::frame_in_use(&words, pfn) != Some(false);
            let mut expected = Vec::new();
            let mut pfn = start;
            while pfn < end {
                if used(pfn) {
                    let a = pfn;
                    while pfn < end && used(pfn) {
                        pfn += 1;
                    }
                    expected.push((a, pfn));
                } else {
                    pfn += 1;
                }
            }
            let mut got = Vec::new();
            used_frame_runs(&words, nr_frames, start, end, |a, b| got.push((a, b)));
            assert_eq!(got, expected, "round {round}: words {words:x?} nr {nr_frames} range {start}..{end}");
        }
    }
}
