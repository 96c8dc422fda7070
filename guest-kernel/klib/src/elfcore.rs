//! ELF64 x86_64 headers: the one reader and writer of ELF and program headers, the ELF error
//! type, and the crash kernel's `elfcorehdr`.
//!
//! [`ElfHeader`] and [`ProgramHeader`] decode and encode the headers; [`ElfFile`] is a
//! validated file's header and program-header table (executables, see `kexec`, and core
//! files). The host's vmcore reader and writer (`dumpd::elf`) are built on these.
//!
//! The crashing kernel describes its memory to the capture kernel with an `ET_CORE` ELF header
//! and program headers only (no data, no sections), following Linux's conventions
//! (`crash_prepare_elf64_headers`): each PT_NOTE and PT_LOAD has `p_offset = p_paddr` = the
//! physical address of its data in the crashed kernel's memory, and `p_align = 0`. PT_NOTEs
//! (one per CPU, then VMCOREINFO) come first, then the PT_LOADs (kernel text, then one per RAM
//! range). [`CoreHeaderBuilder`] writes such a header into a caller buffer without allocating;
//! [`CoreHeader::parse`] validates one the way `/proc/vmcore` does.
//!
//! ```
//! use crashvisor_klib::elfcore::{CoreHeader, CoreHeaderBuilder};
//!
//! let mut buf = [0u8; 512];
//! let mut hdr = CoreHeaderBuilder::new(&mut buf)?;
//! hdr.note(0x7f00_0000, 368)?;
//! hdr.load(0xffff_8880_0010_0000, 0x10_0000, 0x3f0_0000)?;
//! let len = hdr.finish();
//!
//! let core = CoreHeader::parse(&buf[..len])?;
//! assert_eq!(core.notes().map(|n| (n.paddr, n.size)).collect::<Vec<_>>(), [(0x7f00_0000, 368)]);
//! assert_eq!(core.loads().next().map(|l| l.p_memsz), Some(0x3f0_0000));
//! # Ok::<(), crashvisor_klib::elfcore::ElfError>(())
//! ```

use core::fmt;

use crate::le::{put_u16, put_u32, put_u64, u16_at, u32_at, u64_at};

/// Size of an ELF64 header.
pub const EHDR_SIZE: usize = 64;
/// Size of an ELF64 program header.
pub const PHDR_SIZE: usize = 56;
/// `EI_CLASS` of 64-bit files.
pub const ELFCLASS64: u8 = 2;
/// `EI_DATA` of little-endian files.
pub const ELFDATA2LSB: u8 = 1;
/// `EI_VERSION` and `e_version`.
pub const EV_CURRENT: u8 = 1;
/// `e_type` of executables.
pub const ET_EXEC: u16 = 2;
/// `e_type` of core files.
pub const ET_CORE: u16 = 4;
/// `e_machine` of x86_64.
pub const EM_X86_64: u16 = 62;
/// Loadable segment.
pub const PT_LOAD: u32 = 1;
/// Note segment.
pub const PT_NOTE: u32 = 4;
/// Segment flag: executable.
pub const PF_X: u32 = 1;
/// Segment flag: writable.
pub const PF_W: u32 = 2;
/// Segment flag: readable.
pub const PF_R: u32 = 4;
/// `e_phnum` escape value meaning "more than 65534" (the real count is in section 0, which
/// these files never have): not supported.
pub const PN_XNUM: u16 = 0xffff;
/// Most program headers `e_phnum` can count.
pub const MAX_PHNUM: usize = PN_XNUM as usize - 1;

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";

/// Why ELF bytes (headers, program headers, notes) were rejected or could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Fewer bytes than a structure needs.
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed from the start of the file.
        needed: u64,
        /// Bytes available.
        len: u64,
    },
    /// Not `\x7fELF`.
    Magic,
    /// A header field has a value this reader does not accept.
    Header {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What was expected, in words.
        expected: &'static str,
    },
    /// A program header's offset plus size does not fit in 64 bits.
    SegmentOverflow {
        /// Index of the program header.
        index: usize,
    },
    /// A `PT_LOAD` with more bytes in the file than in memory.
    FileszExceedsMemsz {
        /// Index of the program header.
        index: usize,
        /// `p_filesz`.
        filesz: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// A `PT_NOTE` with an alignment notes cannot have.
    NoteAlignment {
        /// Index of the program header.
        index: usize,
        /// `p_align`.
        align: u64,
    },
    /// A note does not fit in its segment.
    Note {
        /// File offset of the note header.
        offset: u64,
        /// Which part does not fit.
        reason: &'static str,
    },
    /// A segment's data lies beyond the end of the file.
    PastEnd {
        /// Index of the program header.
        index: usize,
        /// End of its data.
        end: u64,
        /// Length of the file.
        len: u64,
    },
    /// The output buffer cannot hold the headers or the note.
    BufferTooSmall,
    /// More than an ELF core file can describe was to be written.
    Layout(&'static str),
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated { what, needed, len } => {
                write!(f, "the file ends at byte {len}, inside the {what} (which needs bytes up to {needed})")
            }
            Self::Magic => f.write_str("not an ELF file (bad magic)"),
            Self::Header { field, value, expected } => {
                write!(f, "the ELF header's {field} is {value:#x}, expected {expected}")
            }
            Self::SegmentOverflow { index } => write!(f, "program header {index}: its file span overflows"),
            Self::FileszExceedsMemsz { index, filesz, memsz } => {
                write!(f, "program header {index}: p_filesz {filesz:#x} exceeds p_memsz {memsz:#x}")
            }
            Self::NoteAlignment { index, align } => {
                write!(f, "program header {index}: PT_NOTE alignment {align} (notes are aligned to 4 or 8)")
            }
            Self::Note { offset, reason } => {
                write!(f, "note at file offset {offset:#x} runs past the end of its PT_NOTE segment ({reason})")
            }
            Self::PastEnd { index, end, len } => {
                write!(f, "program header {index}: its data ends at {end:#x}, past the end of the file at {len:#x}")
            }
            Self::BufferTooSmall => f.write_str("the output buffer is too small for the ELF headers or note"),
            Self::Layout(reason) => write!(f, "cannot lay out the core file: {reason}"),
        }
    }
}

impl core::error::Error for ElfError {}

/// `Ok` if a header field has the value wanted, else the error naming it.
fn expect_field(field: &'static str, value: u64, want: u64, expected: &'static str) -> Result<(), ElfError> {
    if value == want {
        Ok(())
    } else {
        Err(ElfError::Header { field, value, expected })
    }
}

/// The fields of an ELF64 x86_64 little-endian header that vary between files; the rest
/// (identification, machine, version, header sizes) is fixed, checked when parsed and written
/// by [`to_bytes`](Self::to_bytes). No section headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElfHeader {
    /// `e_type` (`ET_EXEC`, `ET_CORE`).
    pub e_type: u16,
    /// `e_entry`.
    pub e_entry: u64,
    /// `e_phoff`: file offset of the program header table.
    pub e_phoff: u64,
    /// `e_phnum`.
    pub e_phnum: u16,
}

impl ElfHeader {
    /// A core file's header with `phnum` program headers right after it (OSABI 0, no entry).
    pub fn core(phnum: u16) -> Self {
        Self { e_type: ET_CORE, e_entry: 0, e_phoff: EHDR_SIZE as u64, e_phnum: phnum }
    }

    /// Parses and checks the 64-byte header at the start of `bytes`: magic, ELFCLASS64,
    /// little-endian, version 1, EM_X86_64, header and entry sizes, a program header count
    /// that is not `PN_XNUM`, and a table whose end fits in 64 bits. The table itself may lie
    /// beyond `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, ElfError> {
        let ehdr = bytes.get(..EHDR_SIZE).ok_or(ElfError::Truncated {
            what: "ELF header",
            needed: EHDR_SIZE as u64,
            len: bytes.len() as u64,
        })?;
        if ehdr[..4] != ELF_MAGIC {
            return Err(ElfError::Magic);
        }
        expect_field("class", ehdr[4].into(), ELFCLASS64.into(), "2 (ELFCLASS64)")?;
        expect_field("data encoding", ehdr[5].into(), ELFDATA2LSB.into(), "1 (little-endian)")?;
        expect_field("ident version", ehdr[6].into(), EV_CURRENT.into(), "1")?;
        expect_field("e_machine", u16_at(ehdr, 18).into(), EM_X86_64.into(), "62 (EM_X86_64)")?;
        expect_field("e_version", u32_at(ehdr, 20).into(), EV_CURRENT.into(), "1")?;
        expect_field("e_ehsize", u16_at(ehdr, 52).into(), EHDR_SIZE as u64, "64")?;
        expect_field("e_phentsize", u16_at(ehdr, 54).into(), PHDR_SIZE as u64, "56")?;
        let header = Self {
            e_type: u16_at(ehdr, 16),
            e_entry: u64_at(ehdr, 24),
            e_phoff: u64_at(ehdr, 32),
            e_phnum: u16_at(ehdr, 56),
        };
        if header.e_phnum == PN_XNUM {
            return Err(ElfError::Header { field: "e_phnum", value: PN_XNUM.into(), expected: "0 to 65534" });
        }
        header.e_phoff.checked_add(u64::from(header.e_phnum) * PHDR_SIZE as u64).ok_or(ElfError::Header {
            field: "e_phoff",
            value: header.e_phoff,
            expected: "an offset whose table fits in 64 bits",
        })?;
        Ok(header)
    }

    /// Checks what a core file needs beyond [`parse`](Self::parse): `ET_CORE`, at least one
    /// program header, and a table that starts after this header.
    pub fn check_core(&self) -> Result<(), ElfError> {
        expect_field("e_type", self.e_type.into(), ET_CORE.into(), "4 (ET_CORE)")?;
        if self.e_phnum == 0 {
            return Err(ElfError::Header { field: "e_phnum", value: 0, expected: "1 to 65534" });
        }
        if self.e_phoff < EHDR_SIZE as u64 {
            return Err(ElfError::Header {
                field: "e_phoff",
                value: self.e_phoff,
                expected: "an offset past the ELF header",
            });
        }
        Ok(())
    }

    /// File offset just past the program header table (it fits: `parse` checked).
    pub fn phdrs_end(&self) -> u64 {
        self.e_phoff.saturating_add(u64::from(self.e_phnum) * PHDR_SIZE as u64)
    }

    /// The header's 64 bytes.
    pub fn to_bytes(&self) -> [u8; EHDR_SIZE] {
        let mut b = [0u8; EHDR_SIZE];
        b[..4].copy_from_slice(&ELF_MAGIC);
        b[4..7].copy_from_slice(&[ELFCLASS64, ELFDATA2LSB, EV_CURRENT]);
        put_u16(&mut b, 16, self.e_type);
        put_u16(&mut b, 18, EM_X86_64);
        put_u32(&mut b, 20, EV_CURRENT.into());
        put_u64(&mut b, 24, self.e_entry);
        put_u64(&mut b, 32, self.e_phoff);
        put_u16(&mut b, 52, EHDR_SIZE as u16);
        put_u16(&mut b, 54, PHDR_SIZE as u16);
        put_u16(&mut b, 56, self.e_phnum);
        b
    }
}

/// One ELF64 program header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramHeader {
    /// Segment type (`PT_*`).
    pub p_type: u32,
    /// Flags (`PF_*`).
    pub p_flags: u32,
    /// File offset (in an elfcorehdr: the physical address of the data).
    pub p_offset: u64,
    /// Virtual address.
    pub p_vaddr: u64,
    /// Physical address.
    pub p_paddr: u64,
    /// Bytes in the file.
    pub p_filesz: u64,
    /// Bytes in memory.
    pub p_memsz: u64,
    /// Alignment.
    pub p_align: u64,
}

impl ProgramHeader {
    /// Decodes a little-endian program header.
    pub fn from_bytes(b: &[u8; PHDR_SIZE]) -> Self {
        Self {
            p_type: u32_at(b, 0),
            p_flags: u32_at(b, 4),
            p_offset: u64_at(b, 8),
            p_vaddr: u64_at(b, 16),
            p_paddr: u64_at(b, 24),
            p_filesz: u64_at(b, 32),
            p_memsz: u64_at(b, 40),
            p_align: u64_at(b, 48),
        }
    }

    /// Encodes the header little-endian.
    pub fn to_bytes(&self) -> [u8; PHDR_SIZE] {
        let mut b = [0u8; PHDR_SIZE];
        put_u32(&mut b, 0, self.p_type);
        put_u32(&mut b, 4, self.p_flags);
        let words = [self.p_offset, self.p_vaddr, self.p_paddr, self.p_filesz, self.p_memsz, self.p_align];
        for (i, word) in words.into_iter().enumerate() {
            put_u64(&mut b, 8 + 8 * i, word);
        }
        b
    }

    /// A PT_LOAD (RWX) of `size` bytes at physical `paddr`, mapped at `vaddr`, its data at file
    /// offset `offset` (`p_filesz = p_memsz`, alignment 0), as Linux's vmcores have them.
    pub fn load(offset: u64, vaddr: u64, paddr: u64, size: u64) -> Self {
        Self {
            p_type: PT_LOAD,
            p_flags: PF_R | PF_W | PF_X,
            p_offset: offset,
            p_vaddr: vaddr,
            p_paddr: paddr,
            p_filesz: size,
            p_memsz: size,
            p_align: 0,
        }
    }

    /// File offset just past the segment's data (saturating).
    pub fn file_end(&self) -> u64 {
        self.p_offset.saturating_add(self.p_filesz)
    }
}

/// `len` bytes of `file` at `offset`, or `None` if they do not all lie inside it.
pub fn file_range(file: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    file.get(start..end)
}

/// A little-endian ELF64 x86_64 file's header and program-header table, validated.
#[derive(Clone, Copy, Debug)]
pub struct ElfFile<'a> {
    header: ElfHeader,
    ehdr: &'a [u8; EHDR_SIZE],
    phdrs: &'a [u8],
}

impl<'a> ElfFile<'a> {
    /// Checks the header ([`ElfHeader::parse`]) and that the program headers lie inside
    /// `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ElfError> {
        let header = ElfHeader::parse(bytes)?;
        let end = header.phdrs_end();
        let truncated = ElfError::Truncated { what: "program header table", needed: end, len: bytes.len() as u64 };
        let phdrs =
            usize::try_from(end).ok().and_then(|end| bytes.get(header.e_phoff as usize..end)).ok_or(truncated)?;
        let ehdr = bytes.first_chunk().expect("ElfHeader::parse checked the length");
        Ok(Self { header, ehdr, phdrs })
    }

    /// The header.
    pub fn header(&self) -> &ElfHeader {
        &self.header
    }

    /// Number of program headers.
    pub fn phnum(&self) -> usize {
        self.phdrs.len() / PHDR_SIZE
    }

    /// The raw ELF header.
    pub fn ehdr_bytes(&self) -> &'a [u8; EHDR_SIZE] {
        self.ehdr
    }

    /// The program headers, in table order.
    pub fn program_headers(&self) -> ProgramHeaders<'a> {
        ProgramHeaders { chunks: self.phdrs.chunks_exact(PHDR_SIZE) }
    }
}

/// Iterator over an ELF file's program headers (see [`ElfFile::program_headers`]).
#[derive(Clone, Debug)]
pub struct ProgramHeaders<'a> {
    chunks: core::slice::ChunksExact<'a, u8>,
}

impl Iterator for ProgramHeaders<'_> {
    type Item = ProgramHeader;

    fn next(&mut self) -> Option<ProgramHeader> {
        let chunk = self.chunks.next()?;
        Some(ProgramHeader::from_bytes(chunk.try_into().expect("chunks are 56 bytes")))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

/// Writes an elfcorehdr into a caller buffer: the ELF header, then program headers in the
/// order they are added. `e_phnum` is kept current, so the bytes are valid after each call.
#[derive(Debug)]
pub struct CoreHeaderBuilder<'a> {
    out: &'a mut [u8],
    phnum: usize,
}

impl<'a> CoreHeaderBuilder<'a> {
    /// Writes the ELF header (`ET_CORE`, `EM_X86_64`, OSABI 0, no sections, no program headers
    /// yet) at the start of `out`.
    pub fn new(out: &'a mut [u8]) -> Result<Self, ElfError> {
        let ehdr = out.get_mut(..EHDR_SIZE).ok_or(ElfError::BufferTooSmall)?;
        ehdr.copy_from_slice(&ElfHeader::core(0).to_bytes());
        Ok(Self { out, phnum: 0 })
    }

    /// Appends a program header.
    pub fn push(&mut self, phdr: &ProgramHeader) -> Result<(), ElfError> {
        if self.phnum >= MAX_PHNUM {
            return Err(ElfError::Layout("too many program headers"));
        }
        let at = self.len();
        let slot = self.out.get_mut(at..at + PHDR_SIZE).ok_or(ElfError::BufferTooSmall)?;
        slot.copy_from_slice(&phdr.to_bytes());
        self.phnum += 1;
        // At most MAX_PHNUM, which fits.
        put_u16(self.out, 56, self.phnum as u16);
        Ok(())
    }

    /// Appends a PT_NOTE for `size` bytes of notes at physical `paddr` (`p_offset = p_paddr`,
    /// vaddr 0, align 0).
    pub fn note(&mut self, paddr: u64, size: u64) -> Result<(), ElfError> {
        self.push(&ProgramHeader {
            p_type: PT_NOTE,
            p_offset: paddr,
            p_paddr: paddr,
            p_filesz: size,
            p_memsz: size,
            ..ProgramHeader::default()
        })
    }

    /// Appends a PT_LOAD (RWX) for `size` bytes at physical `paddr` mapped at `vaddr`
    /// (`p_offset = p_paddr`, filesz = memsz, align 0).
    pub fn load(&mut self, vaddr: u64, paddr: u64, size: u64) -> Result<(), ElfError> {
        self.push(&ProgramHeader::load(paddr, vaddr, paddr, size))
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        EHDR_SIZE + self.phnum * PHDR_SIZE
    }

    /// Whether no program header has been added (such a header does not parse).
    pub fn is_empty(&self) -> bool {
        self.phnum == 0
    }

    /// Ends building; returns the header's size in bytes.
    pub fn finish(self) -> usize {
        self.len()
    }
}

/// A PT_NOTE of an elfcorehdr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreNote {
    /// Physical address of the notes: `p_offset`, where `/proc/vmcore` reads them.
    pub paddr: u64,
    /// `p_memsz`: the buffer's size (the notes end earlier, at a zero terminator).
    pub size: u64,
}

/// A validated elfcorehdr.
#[derive(Clone, Copy, Debug)]
pub struct CoreHeader<'a> {
    elf: ElfFile<'a>,
}

impl<'a> CoreHeader<'a> {
    /// Validates like `/proc/vmcore` (magic, `ET_CORE`, `EM_X86_64`, class, versions, header
    /// sizes, `e_phnum > 0`), and that the program headers follow the ELF header (Linux reads
    /// them there whatever `e_phoff` says) inside `bytes`. Unlike Linux, big-endian files are
    /// rejected too.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ElfError> {
        let elf = ElfFile::parse(bytes)?;
        elf.header().check_core()?;
        expect_field("e_phoff", elf.header().e_phoff, EHDR_SIZE as u64, "64 (Linux reads the program headers there)")?;
        Ok(Self { elf })
    }

    /// The ELF file view.
    pub fn elf(&self) -> &ElfFile<'a> {
        &self.elf
    }

    /// All program headers, in order.
    pub fn program_headers(&self) -> ProgramHeaders<'a> {
        self.elf.program_headers()
    }

    /// The PT_NOTEs, in order.
    pub fn notes(&self) -> impl Iterator<Item = CoreNote> + 'a {
        self.program_headers().filter(|p| p.p_type == PT_NOTE).map(|p| CoreNote { paddr: p.p_offset, size: p.p_memsz })
    }

    /// The PT_LOADs, in order. `p_offset` is the physical address `/proc/vmcore` copies
    /// `p_memsz` bytes from: normally `p_paddr`, but kexec-tools points the low 640K at its
    /// backup copy.
    pub fn loads(&self) -> impl Iterator<Item = ProgramHeader> + 'a {
        self.program_headers().filter(|p| p.p_type == PT_LOAD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn sample(buf: &mut [u8]) -> usize {
        let mut b = CoreHeaderBuilder::new(buf).unwrap();
        assert!(b.is_empty());
        b.note(0x7f00_1000, 368).unwrap();
        b.note(0x7f00_2000, 368).unwrap();
        b.note(0x7f00_3000, 4132).unwrap();
        b.load(0xffff_ffff_8100_0000, 0x100_0000, 0x20_0000).unwrap();
        b.load(0xffff_8880_0010_0000, 0x10_0000, 0x3f0_0000).unwrap();
        b.finish()
    }

    #[test]
    fn builds_linux_elfcorehdr_bytes() {
        let mut buf = [0xa5u8; 512];
        let len = sample(&mut buf);
        assert_eq!(len, 64 + 5 * 56);
        assert_eq!(&buf[..8], b"\x7fELF\x02\x01\x01\x00");
        assert!(buf[8..16].iter().all(|&b| b == 0), "OSABI 0 and zero padding");
        assert_eq!(u16_at(&buf, 16), ET_CORE);
        assert_eq!(u16_at(&buf, 18), EM_X86_64);
        assert_eq!(u32_at(&buf, 20), 1);
        assert_eq!(u64_at(&buf, 24), 0, "no entry");
        assert_eq!(u64_at(&buf, 32), 64, "e_phoff");
        assert_eq!(u64_at(&buf, 40), 0, "no sections");
        assert_eq!((u16_at(&buf, 52), u16_at(&buf, 54), u16_at(&buf, 56)), (64, 56, 5));
        assert_eq!((u16_at(&buf, 58), u16_at(&buf, 60), u16_at(&buf, 62)), (0, 0, 0));
        let note = ProgramHeader::from_bytes(buf[64..120].try_into().unwrap());
        assert_eq!(
            note,
            ProgramHeader {
                p_type: PT_NOTE,
                p_flags: 0,
                p_offset: 0x7f00_1000,
                p_vaddr: 0,
                p_paddr: 0x7f00_1000,
                p_filesz: 368,
                p_memsz: 368,
                p_align: 0
            }
        );
        let load = ProgramHeader::from_bytes(buf[64 + 4 * 56..64 + 5 * 56].try_into().unwrap());
        assert_eq!(load.p_flags, 7);
        assert_eq!((load.p_offset, load.p_paddr, load.p_vaddr), (0x10_0000, 0x10_0000, 0xffff_8880_0010_0000));
        assert_eq!((load.p_filesz, load.p_memsz, load.p_align), (0x3f0_0000, 0x3f0_0000, 0));
        assert_eq!(buf[len], 0xa5, "nothing written past the headers");
    }

    #[test]
    fn parses_what_it_builds() {
        let mut buf = [0u8; 512];
        let len = sample(&mut buf);
        let core = CoreHeader::parse(&buf[..len]).unwrap();
        assert_eq!(core.elf().phnum(), 5);
        let notes: Vec<_> = core.notes().map(|n| (n.paddr, n.size)).collect();
        assert_eq!(notes, [(0x7f00_1000, 368), (0x7f00_2000, 368), (0x7f00_3000, 4132)]);
        let loads: Vec<_> = core.loads().map(|l| (l.p_vaddr, l.p_paddr, l.p_offset, l.p_memsz)).collect();
        assert_eq!(
            loads,
            [
                (0xffff_ffff_8100_0000, 0x100_0000, 0x100_0000, 0x20_0000),
                (0xffff_8880_0010_0000, 0x10_0000, 0x10_0000, 0x3f0_0000)
            ]
        );
        // Trailing bytes are fine.
        assert!(CoreHeader::parse(&buf).is_ok());
    }

    #[test]
    fn builder_reports_a_full_buffer() {
        let mut small = [0u8; 63];
        assert_eq!(CoreHeaderBuilder::new(&mut small).unwrap_err(), ElfError::BufferTooSmall);
        let mut buf = [0u8; 64 + 56 + 10];
        let mut b = CoreHeaderBuilder::new(&mut buf).unwrap();
        b.note(1, 2).unwrap();
        assert_eq!(b.load(0, 0, 1), Err(ElfError::BufferTooSmall));
        assert_eq!(b.finish(), 120);
        assert_eq!(u16_at(&buf, 56), 1);
    }

    #[test]
    fn parser_rejects_insane_headers() {
        let mut good = [0u8; 512];
        let len = sample(&mut good);
        // What each patch breaks: the field a Header error names, or the error's kind.
        let check = |offset: usize, bytes: &[u8], broken: &str| {
            let mut bad = good;
            bad[offset..offset + bytes.len()].copy_from_slice(bytes);
            let err = CoreHeader::parse(&bad[..len]).unwrap_err();
            let what = match err {
                ElfError::Header { field, .. } => field,
                ElfError::Magic => "magic",
                ElfError::Truncated { .. } => "truncated",
                other => panic!("patch at {offset}: {other:?}"),
            };
            assert_eq!(what, broken, "patch at {offset}");
        };
        check(0, b"\x7fELG", "magic");
        check(4, &[1], "class");
        check(5, &[2], "data encoding");
        check(6, &[0], "ident version");
        check(20, &[2], "e_version");
        check(16, &ET_EXEC.to_le_bytes(), "e_type");
        check(18, &3u16.to_le_bytes(), "e_machine");
        check(52, &52u16.to_le_bytes(), "e_ehsize");
        check(54, &32u16.to_le_bytes(), "e_phentsize");
        check(56, &0u16.to_le_bytes(), "e_phnum");
        check(56, &0xffffu16.to_le_bytes(), "e_phnum");
        check(56, &6u16.to_le_bytes(), "truncated");
        check(32, &120u64.to_le_bytes(), "truncated");
        check(32, &u64::MAX.to_le_bytes(), "e_phoff");
        check(32, &0u64.to_le_bytes(), "e_phoff");
        for cut in 0..len {
            let err = CoreHeader::parse(&good[..cut]).unwrap_err();
            assert!(matches!(err, ElfError::Truncated { .. }), "cut at {cut}: {err:?}");
        }
        let err = ElfError::Header { field: "e_type", value: 2, expected: "4 (ET_CORE)" };
        assert_eq!(alloc::format!("{err}"), "the ELF header's e_type is 0x2, expected 4 (ET_CORE)");
    }

    #[test]
    fn program_header_round_trips() {
        let p = ProgramHeader {
            p_type: 0x6474_e551,
            p_flags: 6,
            p_offset: 1,
            p_vaddr: 2,
            p_paddr: 3,
            p_filesz: 4,
            p_memsz: 5,
            p_align: u64::MAX,
        };
        assert_eq!(ProgramHeader::from_bytes(&p.to_bytes()), p);
    }
}
