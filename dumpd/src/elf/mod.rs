//! ELF64 core files: a reader strict enough to validate what a guest hands over, and a builder
//! that lays out headers the way Linux's `/proc/vmcore` does ([`build`]).
//!
//! The reader never trusts a byte: every offset and size is checked with checked arithmetic
//! before it is used, and malformed input is an [`ElfError`], never a panic. It reads the ELF
//! header, the program headers and the notes of every `PT_NOTE` segment from a prefix of the
//! file (for a vmcore, the header blob before the first `PT_LOAD`'s data); `PT_LOAD` segments are
//! only described, since their data usually lies beyond that prefix.
//!
//! ```
//! use dumpd::elf::{build, Core, NT_PRSTATUS};
//!
//! let prstatus = [0u8; 336];
//! let notes = [build::NoteSpec { name: b"CORE", n_type: NT_PRSTATUS, desc: &prstatus }];
//! let loads = [build::LoadSpec { vaddr: 0xffff_8880_0010_0000, paddr: 0x10_0000, len: 0x2000 }];
//! let layout = build::layout(&notes, &loads).unwrap();
//!
//! let core = Core::parse(&layout.headers).unwrap();
//! assert_eq!(core.notes()[0].name, b"CORE");
//! assert_eq!(core.loads().count(), 1);
//! ```

pub mod build;
pub mod image;

/// `e_ident[EI_CLASS]` of a 64-bit file.
pub const ELFCLASS64: u8 = 2;
/// `e_ident[EI_DATA]` of a little-endian file.
pub const ELFDATA2LSB: u8 = 1;
/// `e_ident[EI_VERSION]` and `e_version`.
pub const EV_CURRENT: u8 = 1;
/// `e_type` of a core file.
pub const ET_CORE: u16 = 4;
/// `e_machine` of x86_64.
pub const EM_X86_64: u16 = 62;
/// Size of an ELF64 header.
pub const EHDR_SIZE: usize = 64;
/// Size of an ELF64 program header.
pub const PHDR_SIZE: usize = 56;
/// Size of a note header (`n_namesz`, `n_descsz`, `n_type`).
pub const NOTE_HEADER_SIZE: usize = 12;
/// `e_phnum` escape value meaning "more than 65534" (the real count is in section 0, which a
/// vmcore never has).
pub const PN_XNUM: u16 = 0xffff;
/// Program header type: loadable segment.
pub const PT_LOAD: u32 = 1;
/// Program header type: notes.
pub const PT_NOTE: u32 = 4;
/// Note type: `struct elf_prstatus` (registers of one CPU).
pub const NT_PRSTATUS: u32 = 1;
/// Size of x86_64's `struct elf_prstatus`, the only `NT_PRSTATUS` size gdb accepts.
pub const PRSTATUS_SIZE: usize = 336;
/// Segment flags: readable, writable, executable (Linux's vmcore PT_LOADs).
pub const PF_RWX: u32 = 7;

/// Why bytes are not an acceptable ELF64 x86_64 core file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// Fewer bytes than a structure needs.
    #[error("the file ends at byte {len}, inside the {what} (which needs bytes up to {needed})")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed from the start of the file.
        needed: u64,
        /// Bytes available.
        len: u64,
    },
    /// Not `\x7fELF`.
    #[error("not an ELF file (bad magic)")]
    Magic,
    /// A header field has a value this reader does not accept.
    #[error("the ELF header's {field} is {value:#x}, expected {expected}")]
    Header {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What was expected, in words.
        expected: &'static str,
    },
    /// A program header's offset plus size does not fit in 64 bits.
    #[error("program header {index}: its file span overflows")]
    SegmentOverflow {
        /// Index of the program header.
        index: usize,
    },
    /// A `PT_LOAD` with more bytes in the file than in memory.
    #[error("program header {index}: p_filesz {filesz:#x} exceeds p_memsz {memsz:#x}")]
    FileszExceedsMemsz {
        /// Index of the program header.
        index: usize,
        /// `p_filesz`.
        filesz: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// A `PT_NOTE` with an alignment notes cannot have.
    #[error("program header {index}: PT_NOTE alignment {align} (notes are aligned to 4 or 8)")]
    NoteAlignment {
        /// Index of the program header.
        index: usize,
        /// `p_align`.
        align: u64,
    },
    /// A note does not fit in its segment.
    #[error("note at file offset {offset:#x} runs past the end of its PT_NOTE segment ({reason})")]
    Note {
        /// File offset of the note header.
        offset: u64,
        /// Which part does not fit.
        reason: &'static str,
    },
    /// A segment's data lies beyond the end of the file.
    #[error("program header {index}: its data ends at {end:#x}, past the end of the file at {len:#x}")]
    PastEnd {
        /// Index of the program header.
        index: usize,
        /// End of its data.
        end: u64,
        /// Length of the file.
        len: u64,
    },
    /// [`build::layout`] was given more than an ELF core file can describe.
    #[error("cannot lay out the core file: {0}")]
    Layout(&'static str),
}

/// The fields of the ELF header a core file reader needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfHeader {
    /// `e_ident[EI_OSABI]`.
    pub osabi: u8,
    /// `e_phoff`.
    pub phoff: u64,
    /// `e_phnum`.
    pub phnum: u16,
}

impl ElfHeader {
    /// File offset just past the program header table.
    pub fn phdrs_end(&self) -> u64 {
        // Cannot overflow: `parse` checked it.
        self.phoff + u64::from(self.phnum) * PHDR_SIZE as u64
    }

    /// Parses and checks the 64-byte header at the start of `bytes`: magic, ELFCLASS64,
    /// little-endian, version 1, ET_CORE, EM_X86_64, header and entry sizes, a non-zero program
    /// header count (not `PN_XNUM`) whose table starts after this header.
    pub fn parse(bytes: &[u8]) -> Result<Self, ElfError> {
        let ehdr = bytes.get(..EHDR_SIZE).ok_or(truncated("ELF header", EHDR_SIZE as u64, bytes))?;
        if ehdr[..4] != *b"\x7fELF" {
            return Err(ElfError::Magic);
        }
        let check = |field, value: u64, want: u64, expected| {
            if value == want {
                Ok(())
            } else {
                Err(ElfError::Header { field, value, expected })
            }
        };
        check("class", ehdr[4].into(), ELFCLASS64.into(), "2 (ELFCLASS64)")?;
        check("data encoding", ehdr[5].into(), ELFDATA2LSB.into(), "1 (little-endian)")?;
        check("ident version", ehdr[6].into(), EV_CURRENT.into(), "1")?;
        check("e_type", u16_at(ehdr, 16).into(), ET_CORE.into(), "4 (ET_CORE)")?;
        check("e_machine", u16_at(ehdr, 18).into(), EM_X86_64.into(), "62 (EM_X86_64)")?;
        check("e_version", u32_at(ehdr, 20).into(), EV_CURRENT.into(), "1")?;
        check("e_ehsize", u16_at(ehdr, 52).into(), EHDR_SIZE as u64, "64")?;
        check("e_phentsize", u16_at(ehdr, 54).into(), PHDR_SIZE as u64, "56")?;
        let phoff = u64_at(ehdr, 32);
        let phnum = u16_at(ehdr, 56);
        if phnum == 0 || phnum == PN_XNUM {
            return Err(ElfError::Header { field: "e_phnum", value: phnum.into(), expected: "1 to 65534" });
        }
        if phoff < EHDR_SIZE as u64 {
            return Err(ElfError::Header { field: "e_phoff", value: phoff, expected: "an offset past the ELF header" });
        }
        phoff.checked_add(u64::from(phnum) * PHDR_SIZE as u64).ok_or(ElfError::Header {
            field: "e_phoff",
            value: phoff,
            expected: "an offset whose table fits in 64 bits",
        })?;
        Ok(Self { osabi: ehdr[7], phoff, phnum })
    }
}

/// One program header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramHeader {
    /// `p_type`.
    pub p_type: u32,
    /// `p_flags`.
    pub flags: u32,
    /// `p_offset`.
    pub offset: u64,
    /// `p_vaddr`.
    pub vaddr: u64,
    /// `p_paddr`.
    pub paddr: u64,
    /// `p_filesz`.
    pub filesz: u64,
    /// `p_memsz`.
    pub memsz: u64,
    /// `p_align`.
    pub align: u64,
}

impl ProgramHeader {
    /// File offset just past the segment's data (checked when parsed).
    pub fn file_end(&self) -> u64 {
        self.offset.saturating_add(self.filesz)
    }

    fn parse(b: &[u8]) -> Self {
        Self {
            p_type: u32_at(b, 0),
            flags: u32_at(b, 4),
            offset: u64_at(b, 8),
            vaddr: u64_at(b, 16),
            paddr: u64_at(b, 24),
            filesz: u64_at(b, 32),
            memsz: u64_at(b, 40),
            align: u64_at(b, 48),
        }
    }
}

/// One note of a `PT_NOTE` segment, borrowed from the parsed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Note<'a> {
    /// The name without its NUL terminator (and anything after a NUL).
    pub name: &'a [u8],
    /// `n_type`.
    pub n_type: u32,
    /// The descriptor, `n_descsz` bytes.
    pub desc: &'a [u8],
    /// File offset of the note header.
    pub offset: u64,
}

impl Note<'_> {
    /// The name as text (lossy).
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(self.name).into_owned()
    }

    /// Whether this is a Linux `CORE`/`NT_PRSTATUS` note.
    pub fn is_prstatus(&self) -> bool {
        self.name == b"CORE" && self.n_type == NT_PRSTATUS
    }
}

/// A parsed core file prefix: the header, every program header, and every note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Core<'a> {
    header: ElfHeader,
    phdrs: Vec<ProgramHeader>,
    notes: Vec<Note<'a>>,
}

impl<'a> Core<'a> {
    /// Parses `bytes`, which must hold the ELF header, the program header table and the data of
    /// every `PT_NOTE` segment (`PT_LOAD` data may lie beyond; see [`Core::check_file_len`]).
    ///
    /// Checks, besides [`ElfHeader::parse`]: no segment's file span overflows; `PT_LOAD`s have
    /// `p_filesz <= p_memsz`; `PT_NOTE`s have `p_align` 0, 1, 4 (notes aligned to 4 bytes) or 8,
    /// and hold whole notes: a 12-byte header, the name padded to the alignment, then
    /// `n_descsz` bytes (the last note's trailing padding may be missing).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ElfError> {
        let header = ElfHeader::parse(bytes)?;
        let table = slice(bytes, header.phoff, header.phdrs_end() - header.phoff, "program header table")?;
        let mut phdrs = Vec::with_capacity(usize::from(header.phnum));
        let mut notes = Vec::new();
        for (index, raw) in table.chunks_exact(PHDR_SIZE).enumerate() {
            let ph = ProgramHeader::parse(raw);
            ph.offset.checked_add(ph.filesz).ok_or(ElfError::SegmentOverflow { index })?;
            match ph.p_type {
                PT_LOAD if ph.filesz > ph.memsz => {
                    return Err(ElfError::FileszExceedsMemsz { index, filesz: ph.filesz, memsz: ph.memsz })
                }
                PT_NOTE => {
                    let align = match ph.align {
                        0 | 1 | 4 => 4,
                        8 => 8,
                        align => return Err(ElfError::NoteAlignment { index, align }),
                    };
                    let data = slice(bytes, ph.offset, ph.filesz, "PT_NOTE segment")?;
                    parse_notes(data, ph.offset, align, &mut notes)?;
                }
                _ => {}
            }
            phdrs.push(ph);
        }
        Ok(Self { header, phdrs, notes })
    }

    /// How many leading bytes of a file `prefix` starts must be read for [`Core::parse`]:
    /// the end of the program header table or of the last `PT_NOTE` segment, whichever is
    /// later. `prefix` needs the ELF header and, to see the notes, the program header table;
    /// with less, the answer is the end of what must be read next.
    pub fn required_len(prefix: &[u8]) -> Result<u64, ElfError> {
        let header = ElfHeader::parse(prefix)?;
        let mut end = header.phdrs_end();
        let Some(table) = prefix.get(header.phoff as usize..end as usize) else {
            return Ok(end);
        };
        for (index, raw) in table.chunks_exact(PHDR_SIZE).enumerate() {
            let ph = ProgramHeader::parse(raw);
            if ph.p_type == PT_NOTE {
                end = end.max(ph.offset.checked_add(ph.filesz).ok_or(ElfError::SegmentOverflow { index })?);
            }
        }
        Ok(end)
    }

    /// The ELF header.
    pub fn header(&self) -> &ElfHeader {
        &self.header
    }

    /// Every program header, in file order.
    pub fn program_headers(&self) -> &[ProgramHeader] {
        &self.phdrs
    }

    /// The `PT_LOAD` program headers, in file order.
    pub fn loads(&self) -> impl Iterator<Item = &ProgramHeader> + '_ {
        self.phdrs.iter().filter(|ph| ph.p_type == PT_LOAD)
    }

    /// The notes of every `PT_NOTE` segment, in order.
    pub fn notes(&self) -> &[Note<'a>] {
        &self.notes
    }

    /// Checks that every segment's data lies within a file of `len` bytes.
    pub fn check_file_len(&self, len: u64) -> Result<(), ElfError> {
        for (index, ph) in self.phdrs.iter().enumerate() {
            if ph.file_end() > len {
                return Err(ElfError::PastEnd { index, end: ph.file_end(), len });
            }
        }
        Ok(())
    }
}

/// Parses a note segment stored outside an ELF file (a kdump file's copy of the notes): notes
/// aligned to 4 bytes, `data` at file offset `base` (which only labels errors and
/// [`Note::offset`]).
pub fn parse_note_segment(data: &[u8], base: u64) -> Result<Vec<Note<'_>>, ElfError> {
    let mut notes = Vec::new();
    parse_notes(data, base, 4, &mut notes)?;
    Ok(notes)
}

/// Parses the notes of one `PT_NOTE` segment (`data`, at file offset `base`).
fn parse_notes<'a>(data: &'a [u8], base: u64, align: usize, notes: &mut Vec<Note<'a>>) -> Result<(), ElfError> {
    let mut at = 0usize;
    while at < data.len() {
        let offset = base + at as u64;
        let err = |reason| ElfError::Note { offset, reason };
        let header = data.get(at..at + NOTE_HEADER_SIZE).ok_or(err("header"))?;
        let namesz = u32_at(header, 0) as usize;
        let descsz = u32_at(header, 4) as usize;
        let n_type = u32_at(header, 8);
        let name_at = at + NOTE_HEADER_SIZE;
        let name = name_at.checked_add(namesz).and_then(|end| data.get(name_at..end)).ok_or(err("name"))?;
        let desc_at = align_up(name_at + namesz, align).ok_or(err("name padding"))?;
        let desc = desc_at.checked_add(descsz).and_then(|end| data.get(desc_at..end)).ok_or(err("descriptor"))?;
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        notes.push(Note { name, n_type, desc, offset });
        // The last note's padding may be cut off by the segment's end.
        at = align_up(desc_at + descsz, align).map_or(data.len(), |next| next.min(data.len()));
    }
    Ok(())
}

/// `value` rounded up to `align` (a power of two), `None` on overflow.
fn align_up(value: usize, align: usize) -> Option<usize> {
    Some(value.checked_add(align - 1)? & !(align - 1))
}

fn truncated(what: &'static str, needed: u64, bytes: &[u8]) -> ElfError {
    ElfError::Truncated { what, needed, len: bytes.len() as u64 }
}

/// `bytes[offset..offset + len]`, or `Truncated`.
fn slice<'a>(bytes: &'a [u8], offset: u64, len: u64, what: &'static str) -> Result<&'a [u8], ElfError> {
    let end = offset.checked_add(len).ok_or(truncated(what, u64::MAX, bytes))?;
    usize::try_from(offset)
        .ok()
        .zip(usize::try_from(end).ok())
        .and_then(|(start, end)| bytes.get(start..end))
        .ok_or(truncated(what, end, bytes))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut le = [0u8; 4];
    le.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(le)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(le)
}

#[cfg(test)]
mod tests {
    use super::build::{layout, LoadSpec, NoteSpec};
    use super::*;

    /// A small valid core: two CPU notes, a VMCOREINFO note, two PT_LOADs.
    fn sample() -> Vec<u8> {
        let prstatus = [0x11u8; PRSTATUS_SIZE];
        let vmcoreinfo = b"OSRELEASE=6.0.0-crashvisor\nPAGESIZE=4096\n";
        let notes = [
            NoteSpec { name: b"CORE", n_type: NT_PRSTATUS, desc: &prstatus },
            NoteSpec { name: b"CORE", n_type: NT_PRSTATUS, desc: &prstatus },
            NoteSpec { name: b"VMCOREINFO", n_type: 0, desc: vmcoreinfo },
        ];
        let loads = [
            LoadSpec { vaddr: 0xffff_ffff_8100_0000, paddr: 0x100_0000, len: 0x3000 },
            LoadSpec { vaddr: 0xffff_8880_0010_0000, paddr: 0x10_0000, len: 0x10_0000 },
        ];
        layout(&notes, &loads).unwrap().headers
    }

    #[test]
    fn parses_a_valid_core() {
        let bytes = sample();
        let core = Core::parse(&bytes).unwrap();
        assert_eq!(core.header().phnum, 3);
        let names: Vec<_> = core.notes().iter().map(|n| (n.name_lossy(), n.n_type, n.desc.len())).collect();
        assert_eq!(
            names,
            [("CORE".into(), 1, PRSTATUS_SIZE), ("CORE".into(), 1, PRSTATUS_SIZE), ("VMCOREINFO".into(), 0, 41)]
        );
        assert!(core.notes()[0].is_prstatus());
        assert_eq!(core.notes()[2].desc, b"OSRELEASE=6.0.0-crashvisor\nPAGESIZE=4096\n");
        let loads: Vec<_> = core.loads().map(|l| (l.paddr, l.filesz, l.offset % 4096)).collect();
        assert_eq!(loads, [(0x100_0000, 0x3000, 0), (0x10_0000, 0x10_0000, 0)]);
        assert_eq!(Core::required_len(&bytes).unwrap(), core.program_headers()[0].file_end());
        assert!(core.check_file_len(core.loads().last().unwrap().file_end()).is_ok());
        assert!(matches!(core.check_file_len(8192), Err(ElfError::PastEnd { index: 1, .. })));
    }

    #[test]
    fn rejects_wrong_headers_with_the_field_named() {
        let field = |at: usize, value: &[u8]| {
            let mut b = sample();
            b[at..at + value.len()].copy_from_slice(value);
            match Core::parse(&b) {
                Err(ElfError::Header { field, .. }) => field,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(field(4, &[1]), "class");
        assert_eq!(field(5, &[2]), "data encoding");
        assert_eq!(field(16, &2u16.to_le_bytes()), "e_type");
        assert_eq!(field(18, &3u16.to_le_bytes()), "e_machine");
        assert_eq!(field(54, &32u16.to_le_bytes()), "e_phentsize");
        assert_eq!(field(56, &0u16.to_le_bytes()), "e_phnum");
        assert_eq!(field(56, &PN_XNUM.to_le_bytes()), "e_phnum");
        assert_eq!(field(32, &8u64.to_le_bytes()), "e_phoff");
        assert_eq!(field(32, &u64::MAX.to_le_bytes()), "e_phoff");
        let mut b = sample();
        b[0] = 0;
        assert_eq!(Core::parse(&b), Err(ElfError::Magic));
    }

    #[test]
    fn rejects_malformed_segments_and_notes() {
        let phdr = |i: usize, at: usize| EHDR_SIZE + i * PHDR_SIZE + at;
        let mut b = sample();
        b[phdr(1, 32)..phdr(1, 40)].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(Core::parse(&b), Err(ElfError::SegmentOverflow { index: 1 })));
        let mut b = sample();
        b[phdr(1, 40)..phdr(1, 48)].copy_from_slice(&1u64.to_le_bytes());
        assert!(matches!(Core::parse(&b), Err(ElfError::FileszExceedsMemsz { index: 1, .. })));
        let mut b = sample();
        b[phdr(0, 48)..phdr(0, 56)].copy_from_slice(&16u64.to_le_bytes());
        assert!(matches!(Core::parse(&b), Err(ElfError::NoteAlignment { index: 0, align: 16 })));
        // A note whose descriptor claims more than the segment holds.
        let core = Core::parse(&sample()).unwrap().notes()[2].offset as usize;
        let mut b = sample();
        b[core + 4..core + 8].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(Core::parse(&b), Err(ElfError::Note { reason: "descriptor", .. })));
        let mut b = sample();
        b[core..core + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Core::parse(&b), Err(ElfError::Note { reason: "name", .. })));
    }

    #[test]
    fn every_truncation_is_rejected_cleanly() {
        let bytes = sample();
        let needed = Core::required_len(&bytes).unwrap() as usize;
        for len in 0..needed {
            let result = Core::parse(&bytes[..len]);
            assert!(result.is_err(), "a core cut at {len} bytes parsed");
        }
        assert!(Core::parse(&bytes[..needed]).is_ok());
    }

    #[test]
    fn every_byte_flip_is_rejected_or_parsed_without_panic() {
        let bytes = sample();
        let needed = Core::required_len(&bytes).unwrap() as usize;
        let mut parsed = 0;
        for at in 0..needed {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = bytes[..needed].to_vec();
                b[at] ^= flip;
                if let Ok(core) = Core::parse(&b) {
                    parsed += 1;
                    // Whatever parsed must be self-consistent.
                    for note in core.notes() {
                        assert!(note.offset as usize + NOTE_HEADER_SIZE + note.desc.len() <= b.len());
                    }
                    let _ = Core::required_len(&b);
                    let _ = core.check_file_len(u64::MAX);
                }
            }
        }
        assert!(parsed > 0, "flips in note payloads still parse");
    }

    #[test]
    fn required_len_grows_with_what_it_has_seen() {
        let bytes = sample();
        let phdrs_end = (EHDR_SIZE + 3 * PHDR_SIZE) as u64;
        assert_eq!(Core::required_len(&bytes[..EHDR_SIZE]).unwrap(), phdrs_end);
        assert_eq!(Core::required_len(&bytes).unwrap(), Core::required_len(&bytes[..phdrs_end as usize]).unwrap());
        assert!(Core::required_len(&bytes[..10]).is_err());
    }

    #[test]
    fn note_alignment_rules() {
        // Hand-made PT_NOTE data with 8-byte alignment: name "abcd\0" at 12..17, padded to 24.
        let mut data = Vec::new();
        data.extend_from_slice(&5u32.to_le_bytes());
        data.extend_from_slice(&3u32.to_le_bytes());
        data.extend_from_slice(&7u32.to_le_bytes());
        data.extend_from_slice(b"abcd\0\0\0\0\0\0\0\0");
        data.extend_from_slice(b"xyz");
        let mut notes = Vec::new();
        parse_notes(&data, 0x100, 8, &mut notes).unwrap();
        assert_eq!(notes, [Note { name: b"abcd", n_type: 7, desc: b"xyz", offset: 0x100 }]);
        // With 4-byte alignment the descriptor starts at 20 instead (inside the padding).
        notes.clear();
        parse_notes(&data[..23], 0, 4, &mut notes).unwrap();
        assert_eq!(notes[0].desc, b"\0\0\0");
        // Trailing bytes too short for a header are an error.
        let mut longer = data.clone();
        longer.extend_from_slice(&[0; 5 + 4]);
        assert!(parse_notes(&longer, 0, 8, &mut Vec::new()).is_err());
    }
}
