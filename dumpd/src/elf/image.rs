//! An ELF vmcore opened for reading as a [`DumpImage`]: the headers and notes are read once
//! (bounded, through the strict [`Core`] parser); memory is read on demand with `pread`, so a
//! 64 GiB sparse vmcore costs a few kilobytes to open.
//!
//! Physical addresses map to file offsets through the `PT_LOAD`s' `p_paddr..p_paddr + p_memsz`.
//! A vmcore usually maps some memory twice (kernel text at its text address and again in the
//! direct map); either copy serves. Bytes past a segment's `p_filesz` read as zeros.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crashvisor_klib::elfcore::{ElfError, ProgramHeader, EHDR_SIZE, PT_LOAD};

use super::build::LoadSpec;
use super::Core;
use crate::image::{DumpImage, OwnedNote, ReadError};

/// Largest header area read (ELF header, program headers, notes): far above any real vmcore's
/// (a few pages per CPU), low enough that a hostile file cannot make the reader allocate much.
pub const MAX_HEADERS_LEN: u64 = 64 << 20;

/// Why a file could not be opened as an ELF vmcore.
#[derive(Debug, thiserror::Error)]
pub enum ElfImageError {
    /// Reading the file failed.
    #[error("cannot read the file")]
    Io(#[source] std::io::Error),
    /// The headers or notes are malformed.
    #[error(transparent)]
    Format(#[from] ElfError),
    /// The headers and notes are larger than this reader accepts.
    #[error("its headers and notes take {needed} bytes, more than the {MAX_HEADERS_LEN} this reader accepts")]
    HeadersTooLarge {
        /// Bytes the headers claim.
        needed: u64,
    },
    /// A `PT_LOAD` whose physical range wraps around.
    #[error("program header {index}: p_paddr {paddr:#x} + p_memsz {memsz:#x} wraps around the address space")]
    PhysWraps {
        /// Index of the program header.
        index: usize,
        /// `p_paddr`.
        paddr: u64,
        /// `p_memsz`.
        memsz: u64,
    },
}

/// A part of physical memory served by one `PT_LOAD`; pieces never overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    /// First physical address.
    start: u64,
    /// Physical address just past the piece.
    end: u64,
    /// Physical address where the segment's file data ends (`start..data_end` is in the file,
    /// `data_end..end` reads as zeros); between `start` and `end`.
    data_end: u64,
    /// File offset of `start` (meaningful only when `data_end > start`).
    file_offset: u64,
}

/// An ELF64 x86_64 vmcore opened for reading.
#[derive(Debug)]
pub struct ElfImage {
    file: File,
    notes: Vec<OwnedNote>,
    loads: Vec<ProgramHeader>,
    pieces: Vec<Piece>,
    phys_end: u64,
}

impl ElfImage {
    /// Reads and checks the headers and notes of the vmcore in `file`.
    pub fn open(file: File) -> Result<Self, ElfImageError> {
        let file_len = file.metadata().map_err(ElfImageError::Io)?.len();
        let headers = read_headers(&file, file_len)?;
        let core = Core::parse(&headers)?;
        core.check_file_len(file_len)?;
        let notes = core.notes().iter().copied().map(OwnedNote::from).collect();
        let loads: Vec<ProgramHeader> = core.loads().copied().collect();
        let mut phys_end = 0;
        for (index, ph) in core.program_headers().iter().enumerate() {
            if ph.p_type == PT_LOAD {
                let end = ph.p_paddr.checked_add(ph.p_memsz).ok_or(ElfImageError::PhysWraps {
                    index,
                    paddr: ph.p_paddr,
                    memsz: ph.p_memsz,
                })?;
                phys_end = phys_end.max(end);
            }
        }
        let pieces = pieces(&loads);
        Ok(Self { file, notes, loads, pieces, phys_end })
    }

    /// The `PT_LOAD` segments, in file order: what memory the dump holds and the virtual
    /// addresses the crashed kernel saw it at (`len` is `p_memsz`).
    pub fn loads(&self) -> Vec<LoadSpec> {
        self.loads.iter().map(|ph| LoadSpec { vaddr: ph.p_vaddr, paddr: ph.p_paddr, len: ph.p_memsz }).collect()
    }
}

impl DumpImage for ElfImage {
    fn notes(&self) -> &[OwnedNote] {
        &self.notes
    }

    fn read_piece(&self, paddr: u64, buf: &mut [u8]) -> Result<usize, ReadError> {
        let index = self.pieces.partition_point(|p| p.end <= paddr);
        let piece = self.pieces.get(index).filter(|p| p.start <= paddr).ok_or(ReadError::NotInDump { paddr })?;
        let len = usize::try_from(piece.end - paddr).unwrap_or(usize::MAX).min(buf.len());
        let in_file = usize::try_from(piece.data_end.saturating_sub(paddr)).unwrap_or(usize::MAX).min(len);
        // `open` checked that the segment's data lies within the file; a file truncated since
        // then fails here with UnexpectedEof.
        self.file.read_exact_at(&mut buf[..in_file], piece.file_offset + (paddr - piece.start))?;
        buf[in_file..len].fill(0);
        Ok(len)
    }

    fn phys_end(&self) -> u64 {
        self.phys_end
    }
}

/// Splits the `PT_LOAD`s' physical ranges into non-overlapping pieces sorted by address; where
/// segments overlap, the one starting lowest (then the first in the file) serves.
fn pieces(loads: &[ProgramHeader]) -> Vec<Piece> {
    let mut sorted: Vec<&ProgramHeader> = loads.iter().filter(|ph| ph.p_memsz > 0).collect();
    sorted.sort_by_key(|ph| ph.p_paddr);
    let mut pieces = Vec::with_capacity(sorted.len());
    let mut covered = 0u64; // everything below is served by an earlier piece
    for ph in sorted {
        // `open` checked that these do not wrap.
        let end = ph.p_paddr + ph.p_memsz;
        let start = ph.p_paddr.max(covered);
        if start >= end {
            continue;
        }
        let data_end = (ph.p_paddr + ph.p_filesz).clamp(start, end);
        let file_offset = ph.p_offset + (start - ph.p_paddr).min(ph.p_filesz);
        pieces.push(Piece { start, end, data_end, file_offset });
        covered = end;
    }
    pieces
}

/// Reads the ELF header, then the program headers, then the notes: as much as [`Core::parse`]
/// needs, never more than [`MAX_HEADERS_LEN`] and never past the file's end.
pub fn read_headers(file: &File, file_len: u64) -> Result<Vec<u8>, ElfImageError> {
    let mut bytes = Vec::new();
    let mut want = EHDR_SIZE as u64;
    loop {
        if want > file_len {
            return Err(ElfError::Truncated { what: "headers and notes", needed: want, len: file_len }.into());
        }
        if want > MAX_HEADERS_LEN {
            return Err(ElfImageError::HeadersTooLarge { needed: want });
        }
        let have = bytes.len();
        // Both at most MAX_HEADERS_LEN, so they fit in usize.
        bytes.resize(want as usize, 0);
        file.read_exact_at(&mut bytes[have..], have as u64).map_err(ElfImageError::Io)?;
        let needed = Core::required_len(&bytes)?;
        if needed <= want {
            return Ok(bytes);
        }
        want = needed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::build::{layout, NoteSpec};
    use crate::test_dir::TestDir;
    use crate::writer::tests::Buffer;
    use crate::writer::write_vmcore;
    use crashvisor_klib::elfcore::PHDR_SIZE;
    use crashvisor_klib::elfnote::{NT_PRSTATUS, PRSTATUS_SIZE};

    /// 2 MiB of patterned memory at 0 (page n starts with n % 251 + 1 unless n % 4 == 0: zero page).
    fn memory() -> Buffer {
        let mut bytes = vec![0u8; 2 << 20];
        for (n, page) in bytes.chunks_mut(4096).enumerate() {
            if n % 4 != 0 {
                page[0] = (n % 251) as u8 + 1;
                page[4095] = 0xee;
            }
        }
        Buffer::new(0, bytes)
    }

    fn write_core(dir: &TestDir, loads: &[LoadSpec], memory: &Buffer) -> std::path::PathBuf {
        let prstatus = [7u8; PRSTATUS_SIZE];
        let notes = [
            NoteSpec { name: b"CORE", n_type: NT_PRSTATUS, desc: &prstatus },
            NoteSpec { name: b"VMCOREINFO", n_type: 0, desc: b"OSRELEASE=6.1.0\nPAGESIZE=4096\n" },
        ];
        let core = layout(&notes, loads).unwrap();
        let path = dir.path().join("vmcore");
        let file = File::create(&path).unwrap();
        write_vmcore(&file, &core.headers, &core.runs, core.file_size, memory).unwrap();
        path
    }

    #[test]
    fn reads_memory_through_the_loads() {
        let dir = TestDir::new("elf-image");
        let memory = memory();
        let loads = [
            // Kernel text, mapped twice: once at its text address, once in the direct map.
            LoadSpec { vaddr: 0xffff_ffff_8100_0000, paddr: 0x10_0000, len: 0x4000 },
            LoadSpec { vaddr: 0xffff_8880_0000_0000, paddr: 0, len: 0x10_0000 },
            LoadSpec { vaddr: 0xffff_8880_0010_0000, paddr: 0x10_0000, len: 0x8_0000 },
            // A hole at 0x18_0000..0x19_0000, then an unaligned segment.
            LoadSpec { vaddr: 0xffff_8880_0019_0800, paddr: 0x19_0800, len: 0x1_0000 },
        ];
        let path = write_core(&dir, &loads, &memory);
        let image = ElfImage::open(File::open(&path).unwrap()).unwrap();
        assert_eq!(image.loads(), loads);
        assert_eq!(image.phys_end(), 0x1a_0800);
        assert_eq!(image.notes().len(), 2);
        assert!(image.notes()[0].is_prstatus());
        assert_eq!(image.vmcoreinfo(), Some("OSRELEASE=6.1.0\nPAGESIZE=4096\n"));

        // Every page, one at a time, then one read across the first three segments.
        let mut page = vec![0u8; 4096];
        for addr in (0..0x18_0000).step_by(4096) {
            image.read_phys(addr, &mut page).unwrap();
            assert!(page == memory.bytes[addr as usize..addr as usize + 4096], "page {addr:#x}");
        }
        let mut big = vec![0u8; 0x18_0000 - 10];
        image.read_phys(5, &mut big).unwrap();
        assert!(big == memory.bytes[5..0x18_0000 - 5]);
        let mut tail = [0u8; 0x800];
        image.read_phys(0x1a_0000, &mut tail).unwrap();
        assert!(tail[..] == memory.bytes[0x1a_0000..0x1a_0800]);

        // The hole, the bytes before the unaligned segment, the end, and wrap-around.
        let missing = |addr: u64, len: usize| match image.read_phys(addr, &mut vec![0; len]) {
            Err(ReadError::NotInDump { paddr }) => paddr,
            other => panic!("{addr:#x}: {other:?}"),
        };
        assert_eq!(missing(0x17_f000, 0x2000), 0x18_0000);
        assert_eq!(missing(0x19_0000, 0x1000), 0x19_0000);
        assert_eq!(missing(0x19_0f00, 0x2_0000), 0x1a_0800);
        assert_eq!(missing(u64::MAX, 2), u64::MAX);
        image.read_phys(0x1a_0800, &mut []).unwrap();
    }

    #[test]
    fn memsz_past_filesz_reads_as_zeros() {
        let loads = [
            ProgramHeader {
                p_type: 1,
                p_flags: 7,
                p_offset: 0x1000,
                p_vaddr: 0,
                p_paddr: 0,
                p_filesz: 0x800,
                p_memsz: 0x2000,
                p_align: 0,
            },
            // Overlaps the first one's zero tail: the first (lowest) one serves.
            ProgramHeader {
                p_type: 1,
                p_flags: 7,
                p_offset: 0x9000,
                p_vaddr: 0,
                p_paddr: 0x1000,
                p_filesz: 0x2000,
                p_memsz: 0x2000,
                p_align: 0,
            },
        ];
        assert_eq!(
            pieces(&loads),
            [
                Piece { start: 0, end: 0x2000, data_end: 0x800, file_offset: 0x1000 },
                Piece { start: 0x2000, end: 0x3000, data_end: 0x3000, file_offset: 0xa000 },
            ]
        );
        // Entirely inside an earlier segment: no piece; empty segments: none either.
        let inner = ProgramHeader { p_paddr: 0x800, p_memsz: 0x100, ..loads[1] };
        let empty = ProgramHeader { p_paddr: 0x5000, p_memsz: 0, ..loads[1] };
        assert_eq!(pieces(&[loads[0], inner, empty]).len(), 1);
    }

    #[test]
    fn refuses_truncated_and_wrapping_files() {
        let dir = TestDir::new("elf-image-bad");
        let memory = memory();
        let path = write_core(&dir, &[LoadSpec { vaddr: 0, paddr: 0, len: 0x2_0000 }], &memory);
        let bytes = std::fs::read(&path).unwrap();
        let open = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            ElfImage::open(File::open(&path).unwrap())
        };
        let open_sparse = |bytes: &[u8], len: u64| {
            std::fs::write(&path, bytes).unwrap();
            std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len).unwrap();
            ElfImage::open(File::open(&path).unwrap())
        };
        assert!(matches!(open(&bytes[..30]), Err(ElfImageError::Format(ElfError::Truncated { .. }))));
        assert!(matches!(open(&bytes[..0x2000]), Err(ElfImageError::Format(ElfError::PastEnd { .. }))));
        let mut wraps = bytes.clone();
        let paddr_at = EHDR_SIZE + PHDR_SIZE + 24;
        wraps[paddr_at..paddr_at + 8].copy_from_slice(&(u64::MAX - 0x1000).to_le_bytes());
        assert!(matches!(open(&wraps), Err(ElfImageError::PhysWraps { index: 1, .. })));
        // A note segment claiming more than the limit is refused before anything is read.
        let mut huge = bytes.clone();
        let filesz_at = EHDR_SIZE + 32;
        huge[filesz_at..filesz_at + 8].copy_from_slice(&(MAX_HEADERS_LEN + 1).to_le_bytes());
        let huge = open_sparse(&huge, MAX_HEADERS_LEN + 0x2000);
        assert!(matches!(huge, Err(ElfImageError::HeadersTooLarge { .. })));
    }
}
