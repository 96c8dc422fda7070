//! ELF64 vmcores on the host, built on the guest's `no_std` ELF library (headers, program
//! headers and notes in `crashvisor_klib::elfcore` and `elfnote`, one `ElfError` for all):
//! [`Core`], a reader strict enough to validate what a guest hands over; [`build`], a builder
//! that lays out headers the way Linux's `/proc/vmcore` does; [`image`], a vmcore file opened
//! for reading.
//!
//! The reader never trusts a byte: every offset and size is checked with checked arithmetic
//! before it is used, and malformed input is an `ElfError`, never a panic. It reads the ELF
//! header, the program headers and the notes of every `PT_NOTE` segment from a prefix of the
//! file (for a vmcore, the header blob before the first `PT_LOAD`'s data); `PT_LOAD` segments are
//! only described, since their data usually lies beyond that prefix.
//!
//! ```
//! use crashvisor_klib::elfnote::NT_PRSTATUS;
//! use dumpd::elf::{build, Core};
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

use crashvisor_klib::elfcore::{file_range, ElfError, ElfFile, ElfHeader, ProgramHeader, PT_LOAD, PT_NOTE};
use crashvisor_klib::elfnote::{Note, SegmentNotes};

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
    /// Checks, besides [`ElfHeader::parse`] and [`ElfHeader::check_core`]: no segment's file
    /// span overflows; `PT_LOAD`s have `p_filesz <= p_memsz`; `PT_NOTE`s have `p_align` 0, 1, 4
    /// (notes aligned to 4 bytes) or 8, and hold whole notes ([`SegmentNotes`]).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ElfError> {
        let header = core_header(bytes)?;
        let elf = ElfFile::parse(bytes)?;
        let mut phdrs = Vec::with_capacity(elf.phnum());
        let mut notes = Vec::new();
        for (index, ph) in elf.program_headers().enumerate() {
            ph.p_offset.checked_add(ph.p_filesz).ok_or(ElfError::SegmentOverflow { index })?;
            match ph.p_type {
                PT_LOAD if ph.p_filesz > ph.p_memsz => {
                    return Err(ElfError::FileszExceedsMemsz { index, filesz: ph.p_filesz, memsz: ph.p_memsz })
                }
                PT_NOTE => {
                    let align = match ph.p_align {
                        0 | 1 | 4 => 4,
                        8 => 8,
                        align => return Err(ElfError::NoteAlignment { index, align }),
                    };
                    let len = bytes.len() as u64;
                    let truncated = ElfError::Truncated { what: "PT_NOTE segment", needed: ph.file_end(), len };
                    let data = file_range(bytes, ph.p_offset, ph.p_filesz).ok_or(truncated)?;
                    for note in SegmentNotes::new(data, ph.p_offset, align) {
                        notes.push(note?);
                    }
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
        let mut end = core_header(prefix)?.phdrs_end();
        let Ok(elf) = ElfFile::parse(prefix) else {
            return Ok(end);
        };
        for (index, ph) in elf.program_headers().enumerate() {
            if ph.p_type == PT_NOTE {
                end = end.max(ph.p_offset.checked_add(ph.p_filesz).ok_or(ElfError::SegmentOverflow { index })?);
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

/// The ELF header at the start of `bytes`, checked as a core file's.
fn core_header(bytes: &[u8]) -> Result<ElfHeader, ElfError> {
    let header = ElfHeader::parse(bytes)?;
    header.check_core()?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::build::{layout, LoadSpec, NoteSpec};
    use super::*;
    use crashvisor_klib::elfcore::{EHDR_SIZE, PHDR_SIZE, PN_XNUM};
    use crashvisor_klib::elfnote::{NOTE_HEADER_SIZE, NT_PRSTATUS, PRSTATUS_SIZE};

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
        assert_eq!(core.header().e_phnum, 3);
        let names: Vec<_> =
            core.notes().iter().map(|n| (String::from_utf8_lossy(n.name), n.n_type, n.desc.len())).collect();
        assert_eq!(
            names,
            [("CORE".into(), 1, PRSTATUS_SIZE), ("CORE".into(), 1, PRSTATUS_SIZE), ("VMCOREINFO".into(), 0, 41)]
        );
        assert!(core.notes()[0].is_prstatus());
        assert_eq!(core.notes()[2].desc, b"OSRELEASE=6.0.0-crashvisor\nPAGESIZE=4096\n");
        let loads: Vec<_> = core.loads().map(|l| (l.p_paddr, l.p_filesz, l.p_offset % 4096)).collect();
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
}
