//! ELF64 x86_64 headers: building and parsing the crash kernel's `elfcorehdr`.
//!
//! The crashing kernel describes its memory to the capture kernel with an `ET_CORE` ELF header
//! and program headers only (no data, no sections), following Linux's conventions
//! (`crash_prepare_elf64_headers`): each PT_NOTE and PT_LOAD has `p_offset = p_paddr` = the
//! physical address of its data in the crashed kernel's memory, and `p_align = 0`. PT_NOTEs
//! (one per CPU, then VMCOREINFO) come first, then the PT_LOADs (kernel text, then one per RAM
//! range). [`CoreHeaderBuilder`] writes such a header into a caller buffer without allocating;
//! [`CoreHeader::parse`] validates one the way `/proc/vmcore` does.
//!
//! [`ElfFile`] is the shared little-endian ELF64 x86_64 reader, also used for executables
//! (see `kexec`).
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
//! assert_eq!(core.loads().next().map(|l| l.memsz), Some(0x3f0_0000));
//! # Ok::<(), crashvisor_klib::elfcore::ElfError>(())
//! ```

use core::fmt;

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
/// Most program headers `e_phnum` can count (0xffff means "see section 0", unsupported here).
pub const MAX_PHNUM: usize = 0xfffe;

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";

/// Why ELF bytes were rejected or could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Fewer bytes than the ELF header or the program headers need.
    Truncated,
    /// Not `\x7fELF`.
    BadMagic,
    /// Not ELFCLASS64.
    BadClass,
    /// Not little-endian.
    BadEncoding,
    /// `EI_VERSION` or `e_version` is not EV_CURRENT.
    BadVersion,
    /// `e_type` is not the expected one (`ET_CORE` or `ET_EXEC`).
    BadType,
    /// `e_machine` is not EM_X86_64.
    BadMachine,
    /// `e_ehsize` is not 64 or `e_phentsize` is not 56.
    BadHeaderSize,
    /// A core header's program headers do not directly follow the ELF header (`e_phoff` ≠ 64).
    BadPhoff,
    /// `e_phnum` is 0 (or `PN_XNUM`).
    NoProgramHeaders,
    /// The output buffer is full.
    BufferTooSmall,
    /// More program headers than `e_phnum` can count.
    TooManyProgramHeaders,
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Truncated => "the ELF headers are truncated",
            Self::BadMagic => "not an ELF file",
            Self::BadClass => "not a 64-bit ELF file",
            Self::BadEncoding => "not a little-endian ELF file",
            Self::BadVersion => "unknown ELF version",
            Self::BadType => "unexpected ELF file type",
            Self::BadMachine => "not an x86_64 ELF file",
            Self::BadHeaderSize => "unexpected ELF header or program header size",
            Self::BadPhoff => "the program headers do not follow the ELF header",
            Self::NoProgramHeaders => "the ELF file has no program headers",
            Self::BufferTooSmall => "the buffer is too small for the ELF headers",
            Self::TooManyProgramHeaders => "too many program headers",
        })
    }
}

impl core::error::Error for ElfError {}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(bytes)
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
        b[0..4].copy_from_slice(&self.p_type.to_le_bytes());
        b[4..8].copy_from_slice(&self.p_flags.to_le_bytes());
        let words = [self.p_offset, self.p_vaddr, self.p_paddr, self.p_filesz, self.p_memsz, self.p_align];
        for (slot, word) in b[8..].chunks_exact_mut(8).zip(words) {
            slot.copy_from_slice(&word.to_le_bytes());
        }
        b
    }
}

/// A little-endian ELF64 x86_64 file's header and program-header table, validated.
#[derive(Clone, Copy, Debug)]
pub struct ElfFile<'a> {
    ehdr: &'a [u8; EHDR_SIZE],
    phdrs: &'a [u8],
}

impl<'a> ElfFile<'a> {
    /// Checks the identification, version, machine and header sizes, and that the program
    /// headers (`e_phoff`, `e_phnum`) lie inside `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ElfError> {
        let ehdr: &[u8; EHDR_SIZE] = bytes.get(..EHDR_SIZE).ok_or(ElfError::Truncated)?.try_into().expect("64 bytes");
        if ehdr[..4] != ELF_MAGIC {
            return Err(ElfError::BadMagic);
        }
        if ehdr[4] != ELFCLASS64 {
            return Err(ElfError::BadClass);
        }
        if ehdr[5] != ELFDATA2LSB {
            return Err(ElfError::BadEncoding);
        }
        if ehdr[6] != EV_CURRENT || u32_at(ehdr, 20) != u32::from(EV_CURRENT) {
            return Err(ElfError::BadVersion);
        }
        if u16_at(ehdr, 18) != EM_X86_64 {
            return Err(ElfError::BadMachine);
        }
        if usize::from(u16_at(ehdr, 52)) != EHDR_SIZE || usize::from(u16_at(ehdr, 54)) != PHDR_SIZE {
            return Err(ElfError::BadHeaderSize);
        }
        let phnum = usize::from(u16_at(ehdr, 56));
        if phnum > MAX_PHNUM {
            return Err(ElfError::NoProgramHeaders);
        }
        let phoff = usize::try_from(u64_at(ehdr, 32)).map_err(|_| ElfError::Truncated)?;
        let end = phoff.checked_add(phnum * PHDR_SIZE).ok_or(ElfError::Truncated)?;
        let phdrs = bytes.get(phoff..end).ok_or(ElfError::Truncated)?;
        Ok(Self { ehdr, phdrs })
    }

    /// `e_type`.
    pub fn e_type(&self) -> u16 {
        u16_at(self.ehdr, 16)
    }

    /// `e_entry`.
    pub fn entry(&self) -> u64 {
        u64_at(self.ehdr, 24)
    }

    /// `e_phoff`.
    pub fn phoff(&self) -> u64 {
        u64_at(self.ehdr, 32)
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
        ehdr.fill(0);
        ehdr[..4].copy_from_slice(&ELF_MAGIC);
        ehdr[4] = ELFCLASS64;
        ehdr[5] = ELFDATA2LSB;
        ehdr[6] = EV_CURRENT;
        ehdr[16..18].copy_from_slice(&ET_CORE.to_le_bytes());
        ehdr[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        ehdr[20..24].copy_from_slice(&u32::from(EV_CURRENT).to_le_bytes());
        ehdr[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes());
        ehdr[52..54].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
        ehdr[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        Ok(Self { out, phnum: 0 })
    }

    /// Appends a program header.
    pub fn push(&mut self, phdr: &ProgramHeader) -> Result<(), ElfError> {
        if self.phnum >= MAX_PHNUM {
            return Err(ElfError::TooManyProgramHeaders);
        }
        let at = self.len();
        let slot = self.out.get_mut(at..at + PHDR_SIZE).ok_or(ElfError::BufferTooSmall)?;
        slot.copy_from_slice(&phdr.to_bytes());
        self.phnum += 1;
        // At most MAX_PHNUM, which fits.
        self.out[56..58].copy_from_slice(&(self.phnum as u16).to_le_bytes());
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
        self.push(&ProgramHeader {
            p_type: PT_LOAD,
            p_flags: PF_R | PF_W | PF_X,
            p_offset: paddr,
            p_vaddr: vaddr,
            p_paddr: paddr,
            p_filesz: size,
            p_memsz: size,
            p_align: 0,
        })
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

/// A PT_LOAD of an elfcorehdr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreLoad {
    /// `p_vaddr`.
    pub vaddr: u64,
    /// `p_paddr`.
    pub paddr: u64,
    /// `p_offset`: the physical address the data is read from (normally `paddr`; kexec-tools
    /// points the low 640K at its backup copy).
    pub offset: u64,
    /// `p_filesz`.
    pub filesz: u64,
    /// `p_memsz`: the bytes `/proc/vmcore` copies from `offset`.
    pub memsz: u64,
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
        if elf.e_type() != ET_CORE {
            return Err(ElfError::BadType);
        }
        if elf.phnum() == 0 {
            return Err(ElfError::NoProgramHeaders);
        }
        if elf.phoff() != EHDR_SIZE as u64 {
            return Err(ElfError::BadPhoff);
        }
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

    /// The PT_LOADs, in order.
    pub fn loads(&self) -> impl Iterator<Item = CoreLoad> + 'a {
        self.program_headers().filter(|p| p.p_type == PT_LOAD).map(|p| CoreLoad {
            vaddr: p.p_vaddr,
            paddr: p.p_paddr,
            offset: p.p_offset,
            filesz: p.p_filesz,
            memsz: p.p_memsz,
        })
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
        let loads: Vec<_> = core.loads().map(|l| (l.vaddr, l.paddr, l.offset, l.memsz)).collect();
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
        let check = |offset: usize, bytes: &[u8], err: ElfError| {
            let mut bad = good;
            bad[offset..offset + bytes.len()].copy_from_slice(bytes);
            assert_eq!(CoreHeader::parse(&bad[..len]).unwrap_err(), err, "patch at {offset}");
        };
        check(0, b"\x7fELG", ElfError::BadMagic);
        check(4, &[1], ElfError::BadClass);
        check(5, &[2], ElfError::BadEncoding);
        check(6, &[0], ElfError::BadVersion);
        check(20, &[2], ElfError::BadVersion);
        check(16, &ET_EXEC.to_le_bytes(), ElfError::BadType);
        check(18, &3u16.to_le_bytes(), ElfError::BadMachine);
        check(52, &52u16.to_le_bytes(), ElfError::BadHeaderSize);
        check(54, &32u16.to_le_bytes(), ElfError::BadHeaderSize);
        check(56, &0u16.to_le_bytes(), ElfError::NoProgramHeaders);
        check(56, &0xffffu16.to_le_bytes(), ElfError::NoProgramHeaders);
        check(56, &6u16.to_le_bytes(), ElfError::Truncated);
        check(32, &120u64.to_le_bytes(), ElfError::Truncated);
        check(32, &u64::MAX.to_le_bytes(), ElfError::Truncated);
        check(32, &0u64.to_le_bytes(), ElfError::BadPhoff);
        for cut in 0..len {
            let err = CoreHeader::parse(&good[..cut]).unwrap_err();
            assert!(matches!(err, ElfError::Truncated), "cut at {cut}: {err:?}");
        }
        assert_eq!(alloc::format!("{}", ElfError::BadType), "unexpected ELF file type");
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
