//! Reading a kdump-compressed file as a [`DumpImage`].
//!
//! Opening reads the headers, the notes and both bitmaps (bounded by the file's size and by
//! [`MAX_MAPNR`]) and checks every field with checked arithmetic; pages are read on demand: one
//! `pread` of the page descriptor, one of the data, then decompression into a page buffer. A
//! few recently read pages are cached, since analysis reads small fields one at a time.
//!
//! A pfn in the 1st bitmap but not the 2nd was left out by the dump level (zero or free page)
//! and reads as zeros, as `crash` reads it and as the holes of an ELF vmcore read; a pfn in
//! neither is not in the dump ([`ReadError::NotInDump`]).

use std::fs::File;
use std::sync::Mutex;

use super::bitmap::Bitmap;
use super::compress::{decompress, DecompressError};
use super::flattened::{PlainFile, ReadAt};
use super::header::{DiskDumpHeader, KdumpSubHeader, PageDesc};
use super::{BLOCK_SIZE, DIRECT_MAP_BASE, DISK_DUMP_HEADER_SIZE, DUMP_DH_COMPRESSED_INCOMPLETE, KDUMP_SIGNATURE};
use super::{DUMP_DH_COMPRESSED_LZO, DUMP_DH_COMPRESSED_SNAPPY, DUMP_DH_COMPRESSED_ZLIB, DUMP_DH_COMPRESSED_ZSTD};
use super::{HEADER_VERSION, KDUMP_SUB_HEADER_SIZE, MAX_MAPNR, MAX_NOTES_LEN, PAGE_DESC_SIZE, PAGE_SIZE};
use crashvisor_klib::elfcore::ElfError;
use crashvisor_klib::elfnote::SegmentNotes;

use crate::elf::build::LoadSpec;
use crate::image::{DumpImage, OwnedNote, ReadError};

/// Pages kept decompressed for repeated small reads.
const CACHED_PAGES: usize = 16;
/// Bitmap bytes read per `pread` when opening.
const BITMAP_READ: u64 = 256 * BLOCK_SIZE;
/// Every compression flag a page may carry.
const COMPRESSION_FLAGS: u32 =
    DUMP_DH_COMPRESSED_ZLIB | DUMP_DH_COMPRESSED_LZO | DUMP_DH_COMPRESSED_SNAPPY | DUMP_DH_COMPRESSED_ZSTD;

/// Why a kdump-compressed file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum KdumpError {
    /// Reading the file failed.
    #[error("cannot read the file")]
    Io(#[source] std::io::Error),
    /// The file ends before something its headers say is there.
    #[error("the file ends at byte {len}, inside the {what} (which needs bytes up to {needed})")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed from the start of the file.
        needed: u64,
        /// The file's length.
        len: u64,
    },
    /// Not `"KDUMP   "`.
    #[error("the signature is {found:?}, not \"KDUMP   \" (a diskdump or flattened file?)")]
    Signature {
        /// The first 8 bytes.
        found: String,
    },
    /// A header version this reader does not know.
    #[error(
        "header_version is {version}; this reader takes 1 to {HEADER_VERSION} (makedumpfile writes {HEADER_VERSION})"
    )]
    Version {
        /// The version found.
        version: u32,
    },
    /// A block size other than the page size.
    #[error("block_size is {block_size}; this reader takes only {BLOCK_SIZE} (x86_64 pages)")]
    BlockSize {
        /// The block size found.
        block_size: u32,
    },
    /// A header field out of range or inconsistent with the others.
    #[error("{field} is {value:#x}, expected {expected}")]
    Field {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What was expected, in words.
        expected: &'static str,
    },
    /// The copied ELF notes do not parse.
    #[error("the ELF notes copied into the sub-header are malformed")]
    Notes(#[source] ElfError),
    /// A page descriptor that cannot be right.
    #[error("the page descriptor of pfn {pfn:#x} (offset {:#x}, size {}, flags {:#x}) {problem}", desc.offset, desc.size, desc.flags)]
    PageDesc {
        /// The page.
        pfn: u64,
        /// The descriptor.
        desc: PageDesc,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A page's data does not decode.
    #[error("the data of pfn {pfn:#x} is corrupt")]
    PageData {
        /// The page.
        pfn: u64,
        /// Why.
        #[source]
        source: DecompressError,
    },
}

/// A kdump-compressed vmcore opened for reading.
#[derive(Debug)]
pub struct KdumpImage {
    file: Box<dyn ReadAt>,
    file_len: u64,
    header: DiskDumpHeader,
    sub_header: KdumpSubHeader,
    notes: Vec<OwnedNote>,
    max_mapnr: u64,
    present: Bitmap,
    dumped: Bitmap,
    ranks: Vec<u64>,
    desc_offset: u64,
    cache: Mutex<Vec<(u64, Box<[u8]>)>>,
}

impl KdumpImage {
    /// Reads and checks the headers, notes and bitmaps of the kdump-compressed file `file`.
    pub fn open(file: File) -> Result<Self, KdumpError> {
        Self::open_from(Box::new(PlainFile::new(file).map_err(KdumpError::Io)?))
    }

    /// The same for a kdump-compressed dump read through `file` (a [`Flattened`] one, say).
    ///
    /// [`Flattened`]: super::flattened::Flattened
    pub fn open_from(file: Box<dyn ReadAt>) -> Result<Self, KdumpError> {
        let file_len = file.file_len();
        let source: &dyn ReadAt = &*file;
        let mut raw = [0u8; DISK_DUMP_HEADER_SIZE];
        read_exact(source, file_len, 0, &mut raw, "disk_dump_header")?;
        let header = DiskDumpHeader::decode(&raw);
        check_header(&header)?;
        let sub_end = blocks(1 + u64::from(header.sub_hdr_size), "sub_hdr_size")?;
        let mut raw = [0u8; KDUMP_SUB_HEADER_SIZE];
        read_exact(source, file_len, BLOCK_SIZE, &mut raw, "kdump_sub_header")?;
        let sub_header = KdumpSubHeader::decode(&raw);
        let max_mapnr = check_sub_header(&header, &sub_header)?;

        let each = max_mapnr.div_ceil(super::bitmap::BITS_PER_BLOCK);
        if u64::from(header.bitmap_blocks) != 2 * each {
            return Err(field(
                "bitmap_blocks",
                header.bitmap_blocks.into(),
                "two bitmaps of one bit per pfn up to max_mapnr, in whole blocks",
            ));
        }
        let desc_offset = sub_end + 2 * each * BLOCK_SIZE; // each < 2^19: no overflow
        if desc_offset > file_len {
            return Err(KdumpError::Truncated { what: "bitmaps", needed: desc_offset, len: file_len });
        }
        let notes = read_notes(source, file_len, &header, &sub_header, sub_end)?;
        // Both bitmaps lie inside the file, so their block tables are bounded by its size.
        let mut present = Bitmap::new(max_mapnr);
        let mut dumped = Bitmap::new(max_mapnr);
        read_bitmap(source, file_len, sub_end, &mut present, "1st bitmap")?;
        read_bitmap(source, file_len, sub_end + each * BLOCK_SIZE, &mut dumped, "2nd bitmap")?;
        let ranks = dumped.block_ranks();
        let total = ranks.last().copied().unwrap_or(0);
        let descs_end = desc_offset + total * PAGE_DESC_SIZE; // below 2^64: total < 2^34
        if descs_end > file_len {
            return Err(KdumpError::Truncated { what: "page descriptors", needed: descs_end, len: file_len });
        }
        Ok(Self {
            file,
            file_len,
            header,
            sub_header,
            notes,
            max_mapnr,
            present,
            dumped,
            ranks,
            desc_offset,
            cache: Mutex::new(Vec::with_capacity(CACHED_PAGES)),
        })
    }

    /// The `disk_dump_header`.
    pub fn header(&self) -> &DiskDumpHeader {
        &self.header
    }

    /// The `kdump_sub_header`.
    pub fn sub_header(&self) -> &KdumpSubHeader {
        &self.sub_header
    }

    /// The number of pfns the bitmaps cover.
    pub fn max_mapnr(&self) -> u64 {
        self.max_mapnr
    }

    /// Pfns present (1st bitmap).
    pub fn pages_present(&self) -> u64 {
        self.present.count_ones()
    }

    /// Pages with data in the file (2nd bitmap).
    pub fn pages_dumped(&self) -> u64 {
        self.ranks.last().copied().unwrap_or(0)
    }

    /// The pfns present but not in the file: the pages the dump level left out, in order.
    pub fn excluded_pfns(&self) -> impl Iterator<Item = u64> + '_ {
        self.present.ones().filter(|&pfn| !self.dumped.get(pfn))
    }

    /// The memory as ELF `PT_LOAD`s would describe it: one per run of present pfns, at Linux's
    /// direct-map addresses (`0xffff888000000000 + paddr`). A kdump file does not keep the
    /// kernel-text mapping.
    pub fn loads(&self) -> Vec<LoadSpec> {
        let mut loads: Vec<LoadSpec> = Vec::new();
        for pfn in self.present.ones() {
            let paddr = pfn * PAGE_SIZE;
            match loads.last_mut() {
                Some(last) if last.paddr + last.len == paddr => last.len += PAGE_SIZE,
                _ => loads.push(LoadSpec { vaddr: DIRECT_MAP_BASE + paddr, paddr, len: PAGE_SIZE }),
            }
        }
        loads
    }

    /// Copies `buf.len()` bytes of page `pfn` from `offset` into `buf`.
    fn read_page_part(&self, pfn: u64, offset: usize, buf: &mut [u8]) -> Result<(), ReadError> {
        let paddr = pfn * PAGE_SIZE + offset as u64;
        if self.dumped.get(pfn) {
            {
                let cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if let Some((_, page)) = cache.iter().find(|(p, _)| *p == pfn) {
                    buf.copy_from_slice(&page[offset..offset + buf.len()]);
                    return Ok(());
                }
            }
            let mut page = vec![0u8; PAGE_SIZE as usize].into_boxed_slice();
            self.load_page(pfn, &mut page).map_err(|e| corrupt(paddr, e))?;
            buf.copy_from_slice(&page[offset..offset + buf.len()]);
            let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if cache.len() == CACHED_PAGES {
                cache.remove(0);
            }
            cache.push((pfn, page));
            Ok(())
        } else if self.present.get(pfn) {
            buf.fill(0);
            Ok(())
        } else {
            Err(ReadError::NotInDump { paddr })
        }
    }

    /// Reads and decodes dumped page `pfn` into `page`.
    fn load_page(&self, pfn: u64, page: &mut [u8]) -> Result<(), KdumpError> {
        let index = self.dumped.rank(&self.ranks, pfn);
        let mut raw = [0u8; PAGE_DESC_SIZE as usize];
        // Inside the file: `open` checked the end of the descriptor table.
        let at = self.desc_offset + index * PAGE_DESC_SIZE;
        self.file.read_exact_at(&mut raw, at).map_err(KdumpError::Io)?;
        let desc = PageDesc::decode(&raw);
        let bad = |problem| KdumpError::PageDesc { pfn, desc, problem };
        if desc.size == 0 && desc.offset == 0 && self.header.status & DUMP_DH_COMPRESSED_INCOMPLETE != 0 {
            return Err(bad(
                "is empty: the dump is incomplete (makedumpfile ran out of space) and this page was not written",
            ));
        }
        if desc.size == 0 || u64::from(desc.size) > PAGE_SIZE {
            return Err(bad("has a size outside 1 to 4096"));
        }
        if desc.offset.checked_add(desc.size.into()).is_none_or(|end| end > self.file_len) {
            return Err(bad("points past the end of the file"));
        }
        if desc.flags & COMPRESSION_FLAGS == 0 {
            if u64::from(desc.size) != PAGE_SIZE {
                return Err(bad("stores a raw page that is not 4096 bytes"));
            }
            return self.file.read_exact_at(page, desc.offset).map_err(KdumpError::Io);
        }
        let mut data = [0u8; PAGE_SIZE as usize];
        let data = &mut data[..desc.size as usize];
        self.file.read_exact_at(data, desc.offset).map_err(KdumpError::Io)?;
        decompress(desc.flags, data, page).map_err(|source| KdumpError::PageData { pfn, source })
    }
}

impl DumpImage for KdumpImage {
    fn notes(&self) -> &[OwnedNote] {
        &self.notes
    }

    fn read_piece(&self, paddr: u64, buf: &mut [u8]) -> Result<usize, ReadError> {
        let (pfn, offset) = (paddr / PAGE_SIZE, (paddr % PAGE_SIZE) as usize);
        if pfn >= self.max_mapnr {
            return Err(ReadError::NotInDump { paddr });
        }
        let len = (PAGE_SIZE as usize - offset).min(buf.len());
        self.read_page_part(pfn, offset, &mut buf[..len])?;
        Ok(len)
    }

    fn phys_end(&self) -> u64 {
        self.max_mapnr * PAGE_SIZE
    }
}

/// `ReadError::Corrupt` with the whole error chain as the reason.
fn corrupt(paddr: u64, error: KdumpError) -> ReadError {
    match error {
        KdumpError::Io(e) => ReadError::Io(e),
        other => ReadError::Corrupt { paddr, reason: crate::error_chain(&other) },
    }
}

fn field(field: &'static str, value: u64, expected: &'static str) -> KdumpError {
    KdumpError::Field { field, value, expected }
}

/// `n` blocks in bytes.
fn blocks(n: u64, what: &'static str) -> Result<u64, KdumpError> {
    n.checked_mul(BLOCK_SIZE).ok_or(field(what, n, "a size that fits in 64 bits"))
}

fn check_header(h: &DiskDumpHeader) -> Result<(), KdumpError> {
    if h.signature != KDUMP_SIGNATURE {
        return Err(KdumpError::Signature { found: String::from_utf8_lossy(&h.signature).into_owned() });
    }
    if !(1..=HEADER_VERSION).contains(&h.header_version) {
        return Err(KdumpError::Version { version: h.header_version });
    }
    if u64::from(h.block_size) != BLOCK_SIZE {
        return Err(KdumpError::BlockSize { block_size: h.block_size });
    }
    if h.sub_hdr_size == 0 || i32::try_from(h.sub_hdr_size).is_err() {
        return Err(field("sub_hdr_size", h.sub_hdr_size.into(), "1 or more blocks (the sub-header)"));
    }
    Ok(())
}

/// Checks the sub-header against the header; returns `max_mapnr`.
fn check_sub_header(h: &DiskDumpHeader, sub: &KdumpSubHeader) -> Result<u64, KdumpError> {
    if sub.split != 0 {
        return Err(field(
            "split",
            sub.split.into(),
            "0 (split dumps must be reassembled with makedumpfile --reassemble)",
        ));
    }
    let max_mapnr = if h.header_version >= 6 { sub.max_mapnr_64 } else { h.max_mapnr.into() };
    if max_mapnr > MAX_MAPNR {
        return Err(field("max_mapnr", max_mapnr, "at most 2^34 pfns (64 TiB)"));
    }
    if u64::from(h.max_mapnr) != max_mapnr.min(u32::MAX.into()) {
        return Err(field("max_mapnr", h.max_mapnr.into(), "max_mapnr_64, or 2^32-1 when that is larger"));
    }
    Ok(max_mapnr)
}

/// The notes: the copied ELF note segment (version 4 and later), else just the VMCOREINFO
/// text (version 3), else none. Both must lie inside the sub-header's blocks.
fn read_notes(
    file: &dyn ReadAt,
    file_len: u64,
    h: &DiskDumpHeader,
    sub: &KdumpSubHeader,
    sub_end: u64,
) -> Result<Vec<OwnedNote>, KdumpError> {
    let area = BLOCK_SIZE + KDUMP_SUB_HEADER_SIZE as u64..=sub_end;
    let inside = |offset: u64, size: u64| {
        size <= MAX_NOTES_LEN
            && area.contains(&offset)
            && offset.checked_add(size).is_some_and(|end| area.contains(&end))
    };
    let has_notes = h.header_version >= 4 && sub.size_note > 0;
    let has_vmcoreinfo = h.header_version >= 3 && sub.size_vmcoreinfo > 0;
    if has_notes && !inside(sub.offset_note, sub.size_note) {
        return Err(field("offset_note", sub.offset_note, "notes inside the sub-header blocks"));
    }
    if has_vmcoreinfo && !inside(sub.offset_vmcoreinfo, sub.size_vmcoreinfo) {
        return Err(field("offset_vmcoreinfo", sub.offset_vmcoreinfo, "VMCOREINFO inside the sub-header blocks"));
    }
    if has_notes {
        // Bounded by MAX_NOTES_LEN just above.
        let mut data = vec![0u8; sub.size_note as usize];
        read_exact(file, file_len, sub.offset_note, &mut data, "ELF notes")?;
        return SegmentNotes::new(&data, sub.offset_note, 4)
            .map(|note| note.map(OwnedNote::from))
            .collect::<Result<_, _>>()
            .map_err(KdumpError::Notes);
    }
    if has_vmcoreinfo {
        let mut desc = vec![0u8; sub.size_vmcoreinfo as usize];
        read_exact(file, file_len, sub.offset_vmcoreinfo, &mut desc, "VMCOREINFO")?;
        return Ok(vec![OwnedNote { name: b"VMCOREINFO".to_vec(), n_type: 0, desc }]);
    }
    Ok(Vec::new())
}

/// Reads a bitmap of `bitmap.block_count()` blocks at `offset`.
fn read_bitmap(
    file: &dyn ReadAt,
    file_len: u64,
    offset: u64,
    bitmap: &mut Bitmap,
    what: &'static str,
) -> Result<(), KdumpError> {
    let total = bitmap.block_count() * BLOCK_SIZE; // at most 2 GiB: max_mapnr <= 2^34
    let end = offset + total;
    if end > file_len {
        return Err(KdumpError::Truncated { what, needed: end, len: file_len });
    }
    let mut chunk = vec![0u8; total.min(BITMAP_READ) as usize];
    let mut done = 0;
    while done < total {
        let n = (total - done).min(BITMAP_READ) as usize;
        file.read_exact_at(&mut chunk[..n], offset + done).map_err(KdumpError::Io)?;
        for (i, block) in chunk[..n].chunks_exact(BLOCK_SIZE as usize).enumerate() {
            bitmap.set_block(done / BLOCK_SIZE + i as u64, block);
        }
        done += n as u64;
    }
    Ok(())
}

/// Fills `buf` from `offset`, or says the file is too short for `what`.
fn read_exact(
    file: &dyn ReadAt,
    file_len: u64,
    offset: u64,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), KdumpError> {
    let needed = offset.saturating_add(buf.len() as u64);
    if needed > file_len {
        return Err(KdumpError::Truncated { what, needed, len: file_len });
    }
    file.read_exact_at(buf, offset).map_err(KdumpError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kdump::write::tests::{memory, notes, options, write, VMCOREINFO};
    use crate::kdump::{Compression, DL_EXCLUDE_ZERO};
    use crate::test_dir::TestDir;

    fn open(path: &std::path::Path) -> Result<KdumpImage, KdumpError> {
        KdumpImage::open(File::open(path).unwrap())
    }

    /// Whether `pfn` is in `write`'s loads.
    fn present(pfn: u64) -> bool {
        pfn < 0x80 || (0xc0..0x101).contains(&pfn)
    }

    #[test]
    fn reads_back_what_was_written() {
        let dir = TestDir::new("kdump-read");
        let memory = memory();
        for compression in [Compression::Zstd, Compression::Zlib, Compression::None] {
            for level in [0, DL_EXCLUDE_ZERO] {
                let path = dir.path().join(format!("{compression:?}-{level}"));
                let stats = write(&path, &options(compression, level));
                let image = open(&path).unwrap();
                assert_eq!(image.pages_dumped(), stats.pages_dumped);
                assert_eq!(image.pages_present(), stats.pages_present);
                assert_eq!(image.phys_end(), 0x101 * 4096);
                assert_eq!(image.sub_header().dump_level, level);
                let expected: Vec<OwnedNote> = notes()
                    .iter()
                    .map(|n| OwnedNote { name: n.name.to_vec(), n_type: n.n_type, desc: n.desc.to_vec() })
                    .collect();
                assert_eq!(image.notes(), expected);
                assert_eq!(image.vmcoreinfo().map(str::as_bytes), Some(VMCOREINFO));
                let mut page = [0u8; 4096];
                for pfn in 0..0x110 {
                    let result = image.read_phys(pfn * 4096, &mut page);
                    if !present(pfn) {
                        assert!(matches!(result, Err(ReadError::NotInDump { .. })), "pfn {pfn:#x}: {result:?}");
                        continue;
                    }
                    result.unwrap();
                    let want = &memory.bytes[pfn as usize * 4096..][..4096];
                    assert!(page[..] == *want, "{compression:?} level {level}: pfn {pfn:#x}");
                }
                // Unaligned reads across pages and from the cache.
                let mut span = vec![0u8; 3 * 4096];
                image.read_phys(0x1_0ff0, &mut span).unwrap();
                assert!(span[..] == memory.bytes[0x1_0ff0..0x1_0ff0 + 3 * 4096]);
                let mut word = [0u8; 8];
                image.read_phys(0x1_1ffc, &mut word).unwrap();
                assert_eq!(word[..], memory.bytes[0x1_1ffc..0x1_2004]);
                assert!(matches!(image.read_phys(0x7_f000, &mut span), Err(ReadError::NotInDump { paddr: 0x8_0000 })));
                assert!(matches!(image.read_phys(u64::MAX - 1, &mut word), Err(ReadError::NotInDump { .. })));
            }
        }
    }

    #[test]
    fn loads_are_runs_of_present_pages_in_the_direct_map() {
        let dir = TestDir::new("kdump-loads");
        let path = dir.path().join("k");
        write(&path, &options(Compression::Zstd, DL_EXCLUDE_ZERO));
        let loads = open(&path).unwrap().loads();
        assert_eq!(
            loads,
            [
                LoadSpec { vaddr: DIRECT_MAP_BASE, paddr: 0, len: 0x8_0000 },
                LoadSpec { vaddr: DIRECT_MAP_BASE + 0xc_0000, paddr: 0xc_0000, len: 0x4_1000 },
            ]
        );
    }

    /// A zstd level-1 file and its layout: data offset of the first descriptor.
    fn sample(dir: &TestDir) -> (std::path::PathBuf, Vec<u8>) {
        let path = dir.path().join("sample");
        write(&path, &options(Compression::Zstd, DL_EXCLUDE_ZERO));
        let bytes = std::fs::read(&path).unwrap();
        (path, bytes)
    }

    fn open_bytes(path: &std::path::Path, bytes: &[u8]) -> Result<KdumpImage, KdumpError> {
        std::fs::write(path, bytes).unwrap();
        open(path)
    }

    #[test]
    fn refuses_bad_headers_with_the_field_named() {
        let dir = TestDir::new("kdump-bad-header");
        let (path, good) = sample(&dir);
        let with = |at: usize, value: &[u8]| {
            let mut b = good.clone();
            b[at..at + value.len()].copy_from_slice(value);
            open_bytes(&path, &b).unwrap_err()
        };
        assert!(matches!(with(0, b"KDUMP  X"), KdumpError::Signature { .. }));
        assert!(matches!(with(8, &7u32.to_le_bytes()), KdumpError::Version { version: 7 }));
        assert!(matches!(with(8, &0u32.to_le_bytes()), KdumpError::Version { version: 0 }));
        assert!(matches!(with(428, &8192u32.to_le_bytes()), KdumpError::BlockSize { block_size: 8192 }));
        let field_of = |e: KdumpError| match e {
            KdumpError::Field { field, .. } => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field_of(with(432, &0u32.to_le_bytes())), "sub_hdr_size");
        assert_eq!(field_of(with(436, &4u32.to_le_bytes())), "bitmap_blocks");
        assert_eq!(field_of(with(440, &5u32.to_le_bytes())), "max_mapnr");
        assert_eq!(field_of(with(4096 + 96, &(1u64 << 40).to_le_bytes())), "max_mapnr");
        assert_eq!(field_of(with(4096 + 12, &1u32.to_le_bytes())), "split");
        assert_eq!(field_of(with(4096 + 48, &100u64.to_le_bytes())), "offset_note");
        assert_eq!(field_of(with(4096 + 56, &5000u64.to_le_bytes())), "offset_note");
        assert_eq!(field_of(with(4096 + 32, &u64::MAX.to_le_bytes())), "offset_vmcoreinfo");
        assert!(matches!(with(4200, &[0xff; 4]), KdumpError::Notes(_)));
        // A sub-header claiming many blocks: the bitmaps would start past the end.
        assert!(matches!(with(432, &1000u32.to_le_bytes()), KdumpError::Truncated { what: "bitmaps", .. }));
        assert!(matches!(open_bytes(&path, &good[..300]).unwrap_err(), KdumpError::Truncated { .. }));
        assert!(matches!(
            open_bytes(&path, &good[..4 * 4096 + 100]).unwrap_err(),
            KdumpError::Truncated { what: "page descriptors", .. }
        ));
        assert!(open_bytes(&path, &good).is_ok());
    }

    #[test]
    fn bad_page_descriptors_and_data_are_read_errors() {
        let dir = TestDir::new("kdump-bad-page");
        let (path, good) = sample(&dir);
        let desc_at = 4 * 4096 + 24; // pfn 1's descriptor: the second (pfn 0, a zero page, is in the dump too)
        let read_pfn1 = |bytes: &[u8]| {
            let image = open_bytes(&path, bytes).unwrap();
            match image.read_phys(4096, &mut [0u8; 16]) {
                Err(ReadError::Corrupt { paddr: 4096, reason }) => reason,
                other => panic!("{other:?}"),
            }
        };
        let with_desc = |desc: PageDesc| {
            let mut b = good.clone();
            b[desc_at..desc_at + 24].copy_from_slice(&desc.encode());
            read_pfn1(&b)
        };
        let d = PageDesc::decode(good[desc_at..desc_at + 24].try_into().unwrap());
        assert!(with_desc(PageDesc { size: 0, ..d }).contains("size outside 1 to 4096"));
        assert!(with_desc(PageDesc { size: 4097, ..d }).contains("size outside 1 to 4096"));
        assert!(with_desc(PageDesc { offset: good.len() as u64 - 10, ..d }).contains("past the end"));
        assert!(with_desc(PageDesc { offset: u64::MAX, ..d }).contains("past the end"));
        assert!(with_desc(PageDesc { flags: 0, ..d }).contains("raw page that is not 4096"));
        assert!(with_desc(PageDesc { flags: 0x4, ..d }).contains("does not support"));
        assert!(with_desc(PageDesc { flags: 0x3, ..d }).contains("does not support"));
        assert!(with_desc(PageDesc { flags: 0x2, ..d }).contains("lzo data does not decompress"));
        assert!(with_desc(PageDesc { size: d.size - 1, ..d }).contains("data of pfn 0x1 is corrupt"));
        let mut b = good.clone();
        b[d.offset as usize + 5] ^= 0xff;
        let reason = read_pfn1(&b);
        assert!(reason.contains("corrupt") || reason.contains("decompress"), "{reason}");
        // The reason carries the cause, not just "corrupt".
        assert!(with_desc(PageDesc { flags: 0x1, ..d }).contains("zlib"), "zstd data read as zlib");
    }
}
