//! Writing a kdump-compressed file in one sequential pass over the output, streaming from a
//! [`MemorySource`].
//!
//! The page descriptors come before the page data and each names its data's offset, so the
//! number of dumped pages must be known before the first descriptor is written: it is the
//! present pages less those the dump level leaves out, which the caller names (free pages, for
//! bit 16), so memory is read once. Zero pages are stored as makedumpfile stores them at `-d 1`:
//! they stay in the dump (tools read them as zeros, while a page left out cannot be read at
//! all) and their descriptors all point at one shared zero page. Pages are compressed on a
//! pool of threads and written in order ([`super::parallel`]). Memory use is the two bitmaps
//! (one bit per pfn, only 4 KiB blocks that hold a set bit), two 1 MiB output buffers and a
//! few 1 MiB batches per compressing thread, whatever the guest's size.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::bitmap::Bitmap;
use super::compress::Compression;
use super::header::{DiskDumpHeader, KdumpSubHeader, PageDesc};
use super::kernel_info::{phys_base, utsname};
use super::parallel::{compress_in_order, Batch, CompressFailure, Compressed, Stop, Stored};
use super::{BLOCK_SIZE, DL_EXCLUDE_ZERO, DL_MAX, HEADER_VERSION, KDUMP_SUB_HEADER_SIZE};
use super::{MAX_MAPNR, MAX_NOTES_LEN, PAGE_DESC_SIZE, PAGE_SIZE};
use crashvisor_klib::elfcore::ElfError;
use crashvisor_klib::elfnote::{CORE_NOTE_NAME, NT_PRSTATUS, VMCOREINFO_NOTE_NAME};

use crate::elf::build::{encode_notes, LoadSpec, NoteSpec};
use crate::writeback::Writeback;
use crate::writer::{is_zero, MemorySource, SourceError};

/// Bytes buffered before a write, for the descriptors and for the page data.
const OUTPUT_BUFFER: usize = 1 << 20;

/// What goes into the file.
#[derive(Clone, Copy)]
pub struct KdumpInput<'a> {
    /// The notes, in order: one `NT_PRSTATUS` per CPU, `VMCOREINFO`, ...
    pub notes: &'a [NoteSpec<'a>],
    /// The memory the dump holds, as `PT_LOAD`s describe it (overlaps allowed: kernel text is
    /// usually mapped twice). A page partly covered is dumped with the rest as zeros.
    pub loads: &'a [LoadSpec],
    /// Where the bytes come from, by physical address.
    pub memory: &'a dyn MemorySource,
}

/// How to write it.
#[derive(Clone, Copy)]
pub struct KdumpOptions<'a> {
    /// Page compression.
    pub compression: Compression,
    /// makedumpfile dump level, 0 to 31: recorded in the sub-header; bit 1 (zero pages) is
    /// what this writer always does, bits 2 to 16 leave out the pages `excluded` names.
    pub dump_level: u32,
    /// For levels with bits 2 to 16: whether the level leaves a pfn out (a free page for bit
    /// 16; the kernel's page metadata knows, the writer does not).
    pub excluded: Option<&'a dyn Fn(u64) -> bool>,
    /// Leave out only those of the `excluded` pages that are all zero: every byte of memory
    /// stays in the dump, which is still small when free memory was never touched. Costs a
    /// read of each such page before the file is written.
    pub exclude_only_zero: bool,
    /// `disk_dump_header.timestamp`: when the dump was taken.
    pub timestamp: SystemTime,
    /// Called now and then with (bytes of memory processed, bytes to process in all).
    pub progress: Option<&'a dyn Fn(u64, u64)>,
}

/// What one write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KdumpStats {
    /// The file's length.
    pub file_bytes: u64,
    /// Pfns in the dump (set in the 1st bitmap).
    pub pages_present: u64,
    /// Pages written (set in the 2nd bitmap).
    pub pages_dumped: u64,
    /// Pages the dump level left out (free pages, for bit 16).
    pub pages_excluded: u64,
    /// Pages stored compressed.
    pub pages_compressed: u64,
    /// Pages stored raw (they did not shrink, or no compression).
    pub pages_raw: u64,
    /// Zero pages pointing at the shared zero page.
    pub pages_shared_zero: u64,
    /// Time from the first read to the last write.
    pub duration: Duration,
}

/// Why a kdump file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum KdumpWriteError {
    /// A dump level outside 0 to 31.
    #[error("dump level {level} is not a dump level: use 0 to 31")]
    DumpLevel {
        /// The level asked for.
        level: u32,
    },
    /// Dump level bits 2 to 16 without a way to tell which pages they leave out.
    #[error(
        "dump level {level} leaves out pages by their kernel metadata (free pages, page cache, user data), \
         but nothing says which; use 0 or 1"
    )]
    NoExcludedPages {
        /// The level asked for.
        level: u32,
    },
    /// The input cannot be described by a kdump file.
    #[error("cannot lay out the kdump file: {0}")]
    Layout(&'static str),
    /// The notes cannot be encoded.
    #[error("cannot encode the notes")]
    Notes(#[source] ElfError),
    /// The memory source failed.
    #[error("cannot read the page at physical address {paddr:#x}")]
    Source {
        /// The page's address.
        paddr: u64,
        /// The source's error.
        #[source]
        source: SourceError,
    },
    /// The compressor failed.
    #[error("cannot compress the page at physical address {paddr:#x}")]
    Compress {
        /// The page's address.
        paddr: u64,
        /// The compressor's error.
        #[source]
        source: std::io::Error,
    },
    /// Writing the file failed.
    #[error("cannot write the kdump file")]
    Io(#[from] std::io::Error),
}

/// Where everything goes in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    sub_hdr_blocks: u64,
    bitmap_blocks: u64,
    bitmap_offset: u64,
    desc_offset: u64,
    data_offset: u64,
}

/// Writes a kdump-compressed file into `file` (which should be empty), in one pass over the
/// file. The caller syncs and renames it (see the crash store).
pub fn write_kdump(
    file: &File,
    input: &KdumpInput<'_>,
    options: &KdumpOptions<'_>,
) -> Result<KdumpStats, KdumpWriteError> {
    let level = options.dump_level;
    if level > DL_MAX {
        return Err(KdumpWriteError::DumpLevel { level });
    }
    let excluded = match options.excluded {
        Some(f) if level & !DL_EXCLUDE_ZERO != 0 => Some(f),
        None if level & !DL_EXCLUDE_ZERO != 0 => return Err(KdumpWriteError::NoExcludedPages { level }),
        _ => None,
    };
    let start = Instant::now();
    let ranges = merge(input.loads)?;
    let max_mapnr = ranges.last().map_or(0, |r| r.1.div_ceil(PAGE_SIZE));
    if max_mapnr > MAX_MAPNR {
        return Err(KdumpWriteError::Layout("memory above 64 TiB (max_mapnr over 2^34)"));
    }
    let notes = encode_notes(input.notes).map_err(KdumpWriteError::Notes)?;
    if notes.bytes.len() as u64 > MAX_NOTES_LEN {
        return Err(KdumpWriteError::Layout("the notes take more than 64 MiB"));
    }
    let mut present = Bitmap::new(max_mapnr);
    for &(start, end) in &ranges {
        present.set_range(start / PAGE_SIZE, end.div_ceil(PAGE_SIZE));
    }
    let pages = PageReader { ranges: &ranges, memory: input.memory };
    let stats = KdumpStats { pages_present: present.count_ones(), ..KdumpStats::default() };
    let mut pass = Pass { pages, stats, progress: options.progress };
    let dumped = pass.select(&present, excluded, options.exclude_only_zero)?;
    pass.stats.pages_dumped = dumped.count_ones();

    let layout = layout(notes.bytes.len() as u64, present.block_count(), pass.stats.pages_dumped)?;
    let vmcoreinfo_note = input.notes.iter().position(|n| n.name == VMCOREINFO_NOTE_NAME);
    let vmcoreinfo = vmcoreinfo_note.and_then(|i| std::str::from_utf8(input.notes[i].desc).ok());
    let notes_offset = BLOCK_SIZE + KDUMP_SUB_HEADER_SIZE as u64;
    let mut header = DiskDumpHeader::new(HEADER_VERSION, BLOCK_SIZE as u32);
    header.utsname = utsname(vmcoreinfo, input.loads, input.memory);
    let since_epoch = options.timestamp.duration_since(UNIX_EPOCH).unwrap_or_default();
    header.timestamp_sec = since_epoch.as_secs();
    header.timestamp_usec = u64::from(since_epoch.subsec_micros());
    header.status = options.compression.flag();
    // Both fit: the sub-header blocks are bounded by MAX_NOTES_LEN, the bitmaps by MAX_MAPNR.
    header.sub_hdr_size = layout.sub_hdr_blocks as u32;
    header.bitmap_blocks = layout.bitmap_blocks as u32;
    header.max_mapnr = u32::try_from(max_mapnr).unwrap_or(u32::MAX);
    header.nr_cpus = input.notes.iter().filter(|n| n.name == CORE_NOTE_NAME && n.n_type == NT_PRSTATUS).count() as u32;
    let sub = KdumpSubHeader {
        phys_base: phys_base(vmcoreinfo, input.loads),
        dump_level: level,
        offset_vmcoreinfo: vmcoreinfo_note.map_or(0, |i| notes_offset + notes.desc_offsets[i] as u64),
        size_vmcoreinfo: vmcoreinfo_note.map_or(0, |i| input.notes[i].desc.len() as u64),
        offset_note: notes_offset,
        size_note: notes.bytes.len() as u64,
        max_mapnr_64: max_mapnr,
        ..KdumpSubHeader::default()
    };

    file.write_all_at(&header.encode(), 0)?;
    let mut block1 = Vec::with_capacity(KDUMP_SUB_HEADER_SIZE + notes.bytes.len());
    block1.extend_from_slice(&sub.encode());
    block1.extend_from_slice(&notes.bytes);
    file.write_all_at(&block1, BLOCK_SIZE)?;
    let bitmap_len = present.block_count() * BLOCK_SIZE;
    for (bitmap, base) in [(&present, layout.bitmap_offset), (&dumped, layout.bitmap_offset + bitmap_len)] {
        for index in 0..bitmap.block_count() {
            if let Some(block) = bitmap.block(index) {
                file.write_all_at(block, base + index * BLOCK_SIZE)?;
            }
        }
    }
    let end = pass.write_pages(file, &layout, &dumped, options.compression)?;
    file.set_len(end)?;
    pass.stats.file_bytes = end;
    pass.stats.duration = start.elapsed();
    Ok(pass.stats)
}

/// Sorts and merges the loads' physical ranges into disjoint `(start, end)` byte ranges.
fn merge(loads: &[LoadSpec]) -> Result<Vec<(u64, u64)>, KdumpWriteError> {
    let mut ranges = Vec::with_capacity(loads.len());
    for load in loads.iter().filter(|l| l.len > 0) {
        let end = load.paddr.checked_add(load.len).ok_or(KdumpWriteError::Layout("a load wraps around"))?;
        ranges.push((load.paddr, end));
    }
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    Ok(merged)
}

fn layout(notes_len: u64, bitmap_blocks_each: u64, pages_dumped: u64) -> Result<Layout, KdumpWriteError> {
    let too_large = KdumpWriteError::Layout("the file would pass 2^63 bytes");
    let sub_hdr_blocks = (KDUMP_SUB_HEADER_SIZE as u64 + notes_len).div_ceil(BLOCK_SIZE);
    let bitmap_blocks = 2 * bitmap_blocks_each;
    if u32::try_from(bitmap_blocks).is_err() {
        return Err(KdumpWriteError::Layout("the bitmaps take more than 2^32 blocks"));
    }
    let bitmap_offset = (1 + sub_hdr_blocks) * BLOCK_SIZE;
    let desc_offset = bitmap_offset + bitmap_blocks * BLOCK_SIZE;
    let data_offset = pages_dumped
        .checked_mul(PAGE_DESC_SIZE)
        .and_then(|d| d.checked_add(desc_offset))
        .filter(|&o| i64::try_from(o).is_ok())
        .ok_or(too_large)?;
    Ok(Layout { sub_hdr_blocks, bitmap_blocks, bitmap_offset, desc_offset, data_offset })
}

/// The pass over memory.
struct Pass<'a> {
    pages: PageReader<'a>,
    stats: KdumpStats,
    progress: Option<&'a dyn Fn(u64, u64)>,
}

impl Pass<'_> {
    /// The 2nd bitmap: the present pages less those the dump level leaves out (if `only_zero`,
    /// those of them that are all zero).
    fn select(
        &mut self,
        present: &Bitmap,
        excluded: Option<&dyn Fn(u64) -> bool>,
        only_zero: bool,
    ) -> Result<Bitmap, KdumpWriteError> {
        let mut dumped = Bitmap::new(present.len());
        let mut buf = [0; PAGE_SIZE as usize];
        for pfn in present.ones() {
            if excluded.is_some_and(|is_excluded| is_excluded(pfn))
                && (!only_zero || is_zero(self.pages.read(pfn, &mut buf)?))
            {
                self.stats.pages_excluded += 1;
            } else {
                dumped.set(pfn);
            }
        }
        Ok(dumped)
    }

    /// Writes the descriptors and the page data (the shared zero page first), the pages
    /// compressed on a pool of threads ([`compress_in_order`]); returns the end of the file.
    fn write_pages(
        &mut self,
        file: &File,
        layout: &Layout,
        dumped: &Bitmap,
        compression: Compression,
    ) -> Result<u64, KdumpWriteError> {
        let mut descs = Appender::new(file, layout.desc_offset);
        let mut data = Appender::new(file, layout.data_offset);
        let zero_desc = PageDesc { offset: layout.data_offset, size: PAGE_SIZE as u32, flags: 0, page_flags: 0 };
        data.push(&[0; PAGE_SIZE as usize])?;
        let (pages, stats, progress) = (&self.pages, &mut self.stats, self.progress);
        let total = stats.pages_dumped * PAGE_SIZE;
        let mut pfns = dumped.ones();
        let next_batch = || {
            let mut batch = Batch::new();
            while !batch.is_full() {
                let Some(pfn) = pfns.next() else { break };
                match pages.lent(pfn) {
                    Some(page) => batch.push_lent(pfn, page),
                    None => batch.push_copied(pfn, |into| pages.copy(pfn, into))?,
                }
            }
            Ok(Some(batch).filter(|batch| !batch.pfns.is_empty()))
        };
        let mut pages_written = 0u64;
        let write = |batch: &Batch<'_>, compressed: &Compressed| {
            for (stored, bytes) in compressed.pages() {
                let flags = match stored {
                    Stored::Zero => {
                        stats.pages_shared_zero += 1;
                        descs.push(&zero_desc.encode())?;
                        continue;
                    }
                    Stored::Compressed(_) => {
                        stats.pages_compressed += 1;
                        compression.flag()
                    }
                    Stored::Raw => {
                        stats.pages_raw += 1;
                        0
                    }
                };
                // At most a page.
                let size = bytes.len() as u32;
                descs.push(&PageDesc { offset: data.end(), size, flags, page_flags: 0 }.encode())?;
                data.push(bytes)?;
            }
            pages_written += batch.pfns.len() as u64;
            if let Some(report) = progress {
                report(pages_written * PAGE_SIZE, total);
            }
            Ok(())
        };
        compress_in_order(compression, next_batch, write).map_err(|stop| match stop {
            Stop::Caller(error) => error,
            Stop::Compress(CompressFailure { pfn, source }) => {
                KdumpWriteError::Compress { paddr: pfn * PAGE_SIZE, source }
            }
        })?;
        descs.flush()?;
        data.flush()?;
        Ok(data.end())
    }
}

/// Reads whole pages from the merged ranges; bytes outside them read as zeros. A page the
/// source lends (and does not know to be zero: a zero page is filled in, never touched) is used
/// in place.
struct PageReader<'a> {
    ranges: &'a [(u64, u64)],
    memory: &'a dyn MemorySource,
}

impl<'a> PageReader<'a> {
    /// Page `pfn` where it lies, when it is whole in one range, the source lends it and does
    /// not know it to be zero.
    fn lent(&self, pfn: u64) -> Option<&'a [u8]> {
        // pfn < MAX_MAPNR, so this does not overflow.
        let (page_start, page_end) = (pfn * PAGE_SIZE, (pfn + 1) * PAGE_SIZE);
        let first = self.ranges.partition_point(|r| r.1 <= page_start);
        let whole = self.ranges.get(first).is_some_and(|r| r.0 <= page_start && page_end <= r.1);
        let memory: &'a dyn MemorySource = self.memory;
        (whole && !memory.known_zero(page_start, PAGE_SIZE)).then(|| memory.lend(page_start, PAGE_SIZE as usize))?
    }

    /// Copies page `pfn` into `page` (a page long).
    fn copy(&self, pfn: u64, page: &mut [u8]) -> Result<(), KdumpWriteError> {
        let (page_start, page_end) = (pfn * PAGE_SIZE, (pfn + 1) * PAGE_SIZE);
        let first = self.ranges.partition_point(|r| r.1 <= page_start);
        let mut filled = 0;
        for &(start, end) in self.ranges[first..].iter().take_while(|r| r.0 < page_end) {
            let (from, to) = (start.max(page_start), end.min(page_end));
            let (lo, hi) = ((from - page_start) as usize, (to - page_start) as usize);
            page[filled..lo].fill(0);
            self.memory
                .read(from, &mut page[lo..hi])
                .map_err(|source| KdumpWriteError::Source { paddr: page_start, source })?;
            filled = hi;
        }
        page[filled..].fill(0);
        Ok(())
    }

    /// Page `pfn`, lent or copied into `buf` (a page long).
    fn read<'b>(&self, pfn: u64, buf: &'b mut [u8]) -> Result<&'b [u8], KdumpWriteError>
    where
        'a: 'b,
    {
        if let Some(page) = self.lent(pfn) {
            return Ok(page);
        }
        self.copy(pfn, buf)?;
        Ok(buf)
    }
}

/// Appends bytes at increasing file offsets through a buffer, and sends them on to the disk
/// as it goes ([`Writeback`]).
struct Appender<'f> {
    file: &'f File,
    offset: u64,
    buf: Vec<u8>,
    writeback: Writeback<'f>,
}

impl<'f> Appender<'f> {
    fn new(file: &'f File, offset: u64) -> Self {
        Self { file, offset, buf: Vec::with_capacity(OUTPUT_BUFFER), writeback: Writeback::new(file, offset) }
    }

    /// The file offset just past what was pushed.
    fn end(&self) -> u64 {
        self.offset + self.buf.len() as u64
    }

    fn push(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.buf.len() + bytes.len() > OUTPUT_BUFFER {
            self.flush()?;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.write_all_at(&self.buf, self.offset)?;
        self.offset += self.buf.len() as u64;
        self.buf.clear();
        self.writeback.written_to(self.offset)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kdump::header::UtsName;
    use crate::kdump::{DUMP_DH_COMPRESSED_ZLIB, DUMP_DH_COMPRESSED_ZSTD, KDUMP_SIGNATURE};
    use crate::test_dir::TestDir;
    use crate::writer::tests::Buffer;
    use crashvisor_klib::le::{u32_at, u64_at};

    /// 2 MiB of memory at 0 in four kinds of page: zero (n % 4 == 0), text (1), noise (2),
    /// and mostly zero with one marked byte (3).
    pub(crate) fn memory() -> Buffer {
        let mut bytes = vec![0u8; 2 << 20];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for (n, page) in bytes.chunks_mut(PAGE_SIZE as usize).enumerate() {
            match n % 4 {
                1 => page.iter_mut().enumerate().for_each(|(i, b)| *b = b"crashvisor page "[i % 16] ^ n as u8),
                2 => page.iter_mut().for_each(|b| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }),
                3 => page[n % 4096] = n as u8 | 1,
                _ => {}
            }
        }
        Buffer::new(0, bytes)
    }

    pub(crate) const VMCOREINFO: &[u8] = b"OSRELEASE=6.1.0-cv\nPAGESIZE=4096\nNUMBER(phys_base)=16777216\n";

    pub(crate) fn notes() -> Vec<NoteSpec<'static>> {
        static PRSTATUS: [u8; 336] = [3; 336];
        vec![
            NoteSpec { name: b"CORE", n_type: NT_PRSTATUS, desc: &PRSTATUS },
            NoteSpec { name: b"CORE", n_type: NT_PRSTATUS, desc: &PRSTATUS },
            NoteSpec { name: b"VMCOREINFO", n_type: 0, desc: VMCOREINFO },
        ]
    }

    /// Loads over `memory()`: the first 512 KiB, a hole, then 256 KiB ending mid-page, and a
    /// duplicate mapping of the first 64 KiB.
    pub(crate) fn loads() -> Vec<LoadSpec> {
        vec![
            LoadSpec { vaddr: START_TEXT, paddr: 0, len: 0x1_0000 },
            LoadSpec { vaddr: 0xffff_8880_0000_0000, paddr: 0, len: 0x8_0000 },
            LoadSpec { vaddr: 0xffff_8880_000c_0000, paddr: 0xc_0000, len: 0x4_0800 },
        ]
    }

    const START_TEXT: u64 = 0xffff_ffff_8100_0000;

    pub(crate) fn options(compression: Compression, dump_level: u32) -> KdumpOptions<'static> {
        KdumpOptions {
            compression,
            dump_level,
            excluded: None,
            exclude_only_zero: false,
            timestamp: UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            progress: None,
        }
    }

    pub(crate) fn write(path: &std::path::Path, options: &KdumpOptions<'_>) -> KdumpStats {
        let memory = memory();
        let (notes, loads) = (notes(), loads());
        let input = KdumpInput { notes: &notes, loads: &loads, memory: &memory };
        let file = File::create(path).unwrap();
        write_kdump(&file, &input, options).unwrap()
    }

    #[test]
    fn lent_memory_gives_the_same_file() {
        let dir = TestDir::new("kdump-lent");
        let (notes, loads) = (notes(), loads());
        // Pages 0x20-0x2f known zero (whatever their bytes: the writer must take the source's
        // word, and read them as zeros, as it does guest RAM never populated).
        let lent = Buffer { lends: true, known_zero: 0x2_0000..0x3_0000, ..memory() };
        let mut copied = memory();
        copied.bytes[0x2_0000..0x3_0000].fill(0);
        for (name, memory) in [("copied", &copied), ("lent", &lent)] {
            let input = KdumpInput { notes: &notes, loads: &loads, memory };
            write_kdump(&File::create(dir.path().join(name)).unwrap(), &input, &options(Compression::Zstd, 1)).unwrap();
        }
        let read = |name| std::fs::read(dir.path().join(name)).unwrap();
        assert!(read("lent") == read("copied"), "the files differ");
    }

    #[test]
    fn lays_out_makedumpfiles_format() {
        let dir = TestDir::new("kdump-layout");
        let path = dir.path().join("vmcore.kdump");
        let stats = write(&path, &options(Compression::Zstd, 1));
        let b = std::fs::read(&path).unwrap();
        assert_eq!(b.len() as u64, stats.file_bytes);

        // disk_dump_header
        assert_eq!(b[..8], KDUMP_SIGNATURE);
        assert_eq!(u32_at(&b, 8), 6);
        assert_eq!(&b[12 + 2 * 65..12 + 2 * 65 + 9], b"6.1.0-cv\0", "release from OSRELEASE");
        assert_eq!((u64_at(&b, 408), u64_at(&b, 416)), (1_700_000_000, 123_456));
        assert_eq!(u32_at(&b, 424), DUMP_DH_COMPRESSED_ZSTD);
        assert_eq!(u32_at(&b, 428), 4096);
        assert_eq!(u32_at(&b, 432), 1, "sub-header and notes fit one block");
        assert_eq!(u32_at(&b, 436), 2, "one block per bitmap");
        assert_eq!(u32_at(&b, 440), 0x101, "max_mapnr: the last load ends inside pfn 0x100");
        assert_eq!(u32_at(&b, 460), 2, "nr_cpus: two NT_PRSTATUS notes");

        // kdump_sub_header and the notes after it
        let sub = &b[4096..];
        assert_eq!(u64_at(sub, 0), 16 << 20, "phys_base from VMCOREINFO");
        assert_eq!(u32_at(sub, 8), 1);
        assert_eq!(u64_at(sub, 48), 4096 + 104, "offset_note");
        let notes = encode_notes(&super::tests::notes()).unwrap();
        assert_eq!(u64_at(sub, 56), notes.bytes.len() as u64);
        assert!(b[4200..4200 + notes.bytes.len()] == notes.bytes, "the notes verbatim");
        let (vmcoreinfo_at, vmcoreinfo_len) = (u64_at(sub, 32) as usize, u64_at(sub, 40) as usize);
        assert_eq!(&b[vmcoreinfo_at..vmcoreinfo_at + vmcoreinfo_len], VMCOREINFO);
        assert_eq!(u64_at(sub, 96), 0x101, "max_mapnr_64");

        // Bitmaps: pfns 0..0x80 and 0xc0..0x101 exist, and are all in the dump (zero pages
        // too, as makedumpfile keeps them: pfn % 4 == 0, and pfn 0x100, whose covered half is
        // zero).
        let (first, second) = (&b[2 * 4096..3 * 4096], &b[3 * 4096..4 * 4096]);
        let bit = |map: &[u8], pfn: usize| map[pfn / 8] >> (pfn % 8) & 1 == 1;
        for pfn in 0..0x120 {
            let present = pfn < 0x80 || (0xc0..0x101).contains(&pfn);
            assert_eq!(bit(first, pfn), present, "1st bitmap, pfn {pfn:#x}");
            assert_eq!(bit(second, pfn), present, "2nd bitmap, pfn {pfn:#x}");
        }
        assert_eq!(stats.pages_present, 0x80 + 0x41);
        assert_eq!(stats.pages_dumped, stats.pages_present);
        assert_eq!(stats.pages_shared_zero, 0x20 + 0x11);

        // Descriptors in pfn order: zero pages name the shared zero page at the start of the
        // data, the others their own data, back to back after it.
        let descs = 4 * 4096;
        let data_start = descs + 24 * stats.pages_dumped as usize;
        let mut expected_offset = data_start as u64 + 4096;
        let mut pfns = (0..0x80).chain(0xc0..0x101);
        for i in 0..stats.pages_dumped as usize {
            let d = PageDesc::decode(b[descs + 24 * i..descs + 24 * (i + 1)].try_into().unwrap());
            if pfns.next().unwrap() % 4 == 0 {
                assert_eq!(d, PageDesc { offset: data_start as u64, size: 4096, flags: 0, page_flags: 0 });
                continue;
            }
            assert_eq!(d.offset, expected_offset, "desc {i}");
            assert!(d.flags == 0 && d.size == 4096 || d.flags == DUMP_DH_COMPRESSED_ZSTD && d.size < 4096, "{d:?}");
            expected_offset += u64::from(d.size);
        }
        assert_eq!(expected_offset, stats.file_bytes);
        assert_eq!(stats.pages_raw, 0x20 + 0x10, "noise pages stay raw");
        assert_eq!(stats.pages_compressed + stats.pages_raw + stats.pages_shared_zero, stats.pages_dumped);
    }

    #[test]
    fn zero_pages_share_one_blob_and_free_pages_go() {
        let dir = TestDir::new("kdump-zero-blob");
        let path = dir.path().join("vmcore.kdump");
        let is_free = |pfn: u64| pfn == 1 || pfn == 4;
        let mut opts = options(Compression::Zlib, 31);
        opts.excluded = Some(&is_free);
        let stats = write(&path, &opts);
        assert_eq!(stats.pages_excluded, 2);
        // Only the zero one of the two when the others must stay.
        opts.exclude_only_zero = true;
        let kept = write(&dir.path().join("only-zero"), &opts);
        assert_eq!(
            (kept.pages_excluded, kept.pages_dumped),
            (1, kept.pages_present - 1),
            "pfn 4 is zero, pfn 1 is not"
        );
        assert_eq!(stats.pages_dumped, stats.pages_present - 2);
        assert_eq!(stats.pages_shared_zero, 0x20 + 0x11 - 1, "pfn 4 was free");
        let b = std::fs::read(&path).unwrap();
        let second = &b[3 * 4096..4 * 4096];
        assert_eq!(second[0], 0b1110_1101, "pfns 1 and 4 are not dumped");
        let data_start = 4 * 4096 + 24 * stats.pages_dumped;
        let first = PageDesc::decode(b[4 * 4096..4 * 4096 + 24].try_into().unwrap());
        assert_eq!(
            first,
            PageDesc { offset: data_start, size: 4096, flags: 0, page_flags: 0 },
            "pfn 0: the shared zero page"
        );
        assert!(b[data_start as usize..data_start as usize + 4096].iter().all(|&x| x == 0));
        assert_eq!(u32_at(&b, 424), DUMP_DH_COMPRESSED_ZLIB);
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        let dir = TestDir::new("kdump-refuse");
        let file = File::create(dir.path().join("out")).unwrap();
        let memory = memory();
        let (notes, loads) = (notes(), loads());
        let input = KdumpInput { notes: &notes, loads: &loads, memory: &memory };
        let err = |opts: &KdumpOptions<'_>, input: &KdumpInput<'_>| write_kdump(&file, input, opts).unwrap_err();
        assert!(matches!(err(&options(Compression::Zstd, 32), &input), KdumpWriteError::DumpLevel { level: 32 }));
        assert!(matches!(err(&options(Compression::Zstd, 17), &input), KdumpWriteError::NoExcludedPages { level: 17 }));
        assert!(matches!(err(&options(Compression::Zstd, 2), &input), KdumpWriteError::NoExcludedPages { level: 2 }));
        let far = [LoadSpec { vaddr: 0, paddr: 1 << 47, len: 4096 }];
        let far_input = KdumpInput { loads: &far, ..input };
        assert!(matches!(err(&options(Compression::Zstd, 0), &far_input), KdumpWriteError::Layout(_)));
        let wraps = [LoadSpec { vaddr: 0, paddr: u64::MAX - 5, len: 4096 }];
        assert!(matches!(
            err(&options(Compression::Zstd, 0), &KdumpInput { loads: &wraps, ..input }),
            KdumpWriteError::Layout(_)
        ));
        let beyond = [LoadSpec { vaddr: 0, paddr: 0, len: 4 << 20 }];
        let e = err(&options(Compression::Zstd, 1), &KdumpInput { loads: &beyond, ..input });
        assert!(matches!(e, KdumpWriteError::Source { paddr: 0x20_0000, .. }), "{e:?}");
    }

    #[test]
    fn utsname_and_progress() {
        let dir = TestDir::new("kdump-progress");
        let reports = std::cell::RefCell::new(Vec::new());
        let record = |done: u64, total: u64| reports.borrow_mut().push((done, total));
        let mut opts = options(Compression::None, 1);
        opts.progress = Some(&record);
        let stats = write(&dir.path().join("out"), &opts);
        let reports = reports.into_inner();
        let last = *reports.last().unwrap();
        assert_eq!(last.0, last.1, "ends at 100%");
        assert_eq!(last.1, stats.pages_dumped * PAGE_SIZE);
        assert!(reports.windows(2).all(|w| w[0].0 <= w[1].0), "{reports:?}");
        assert_eq!(stats.pages_raw + stats.pages_shared_zero, stats.pages_dumped);
        let header = std::fs::read(dir.path().join("out")).unwrap();
        let header = DiskDumpHeader::decode(header[..464].try_into().unwrap());
        assert_eq!(header.utsname, UtsName { release: "6.1.0-cv".into(), ..UtsName::default() });
        assert_eq!(header.status, 0);
    }
}
