//! Laying out the start of a vmcore the way Linux's `/proc/vmcore` does: the ELF header and the
//! program headers (one merged `PT_NOTE` first, then the `PT_LOAD`s), padded to a page; the
//! notes, padded to a page; then each `PT_LOAD`'s data as a page-rounded chunk, back to back,
//! with `p_offset = chunk start + (p_paddr - rounddown(p_paddr, page))`.
//!
//! The result is the header blob plus the [`Run`]s that copy memory into the file, ready for
//! [`crate::writer::write_vmcore`].

use crashvisor_klib::elfcore::{ElfError, ElfHeader, ProgramHeader, EHDR_SIZE, MAX_PHNUM, PHDR_SIZE, PT_NOTE};
use crashvisor_klib::elfnote::{desc_offset, note_size, write_note_with_desc};

use crate::writer::Run;

/// Page size of the layout.
pub const PAGE_SIZE: u64 = 4096;

/// A note to write: its name (without NUL; one is added), type and descriptor.
#[derive(Debug, Clone, Copy)]
pub struct NoteSpec<'a> {
    /// The name, e.g. `b"CORE"`.
    pub name: &'a [u8],
    /// `n_type`.
    pub n_type: u32,
    /// The descriptor.
    pub desc: &'a [u8],
}

/// A `PT_LOAD` to describe: `len` bytes of physical memory at `paddr`, seen at `vaddr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSpec {
    /// `p_vaddr`.
    pub vaddr: u64,
    /// `p_paddr`, also where the data is read from.
    pub paddr: u64,
    /// `p_filesz` and `p_memsz`.
    pub len: u64,
}

/// The start of a vmcore and how to fill in the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreLayout {
    /// ELF header, program headers and notes, page-padded: the file's first bytes.
    pub headers: Vec<u8>,
    /// One run per non-empty `PT_LOAD`, in file order.
    pub runs: Vec<Run>,
    /// The file's length: the end of the last `PT_LOAD`'s data.
    pub file_size: u64,
}

/// Lays out a core file with `notes` in one `PT_NOTE` and one `PT_LOAD` per entry of `loads`.
pub fn layout(notes: &[NoteSpec<'_>], loads: &[LoadSpec]) -> Result<CoreLayout, ElfError> {
    let phnum =
        loads.len().checked_add(1).filter(|&n| n <= MAX_PHNUM).ok_or(ElfError::Layout("too many program headers"))?;
    let phdrs_end = EHDR_SIZE + phnum * PHDR_SIZE;
    let notes_offset = round_up(phdrs_end as u64).ok_or(ElfError::Layout("headers too large"))?;
    let note_bytes = encode_notes(notes)?.bytes;
    let data_offset = notes_offset
        .checked_add(note_bytes.len() as u64)
        .and_then(round_up)
        .ok_or(ElfError::Layout("notes too large"))?;

    let mut headers = Vec::with_capacity(usize::try_from(data_offset).unwrap_or(0));
    headers.extend_from_slice(&ElfHeader::core(phnum as u16).to_bytes());
    let note_len = note_bytes.len() as u64;
    let note = ProgramHeader {
        p_type: PT_NOTE,
        p_offset: notes_offset,
        p_filesz: note_len,
        p_memsz: note_len,
        p_align: 4,
        ..Default::default()
    };
    headers.extend_from_slice(&note.to_bytes());
    let mut next = data_offset;
    let mut runs = Vec::with_capacity(loads.len());
    let mut file_size = data_offset;
    for load in loads {
        let chunk_start = load.paddr & !(PAGE_SIZE - 1);
        let end = load.paddr.checked_add(load.len).and_then(round_up).ok_or(ElfError::Layout("PT_LOAD overflows"))?;
        let offset = next + (load.paddr - chunk_start);
        headers.extend_from_slice(&ProgramHeader::load(offset, load.vaddr, load.paddr, load.len).to_bytes());
        if load.len > 0 {
            runs.push(Run { file_offset: offset, addr: load.paddr, len: load.len });
        }
        file_size = offset + load.len;
        next = next.checked_add(end - chunk_start).ok_or(ElfError::Layout("file too large"))?;
    }
    headers.resize(notes_offset as usize, 0);
    headers.extend_from_slice(&note_bytes);
    headers.resize(data_offset as usize, 0);
    Ok(CoreLayout { headers, runs, file_size })
}

/// The bytes of a `PT_NOTE` segment holding `notes`, and where each descriptor starts in them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedNotes {
    /// The segment: per note a 12-byte header, the name with its NUL, the descriptor, each
    /// padded to 4 bytes.
    pub bytes: Vec<u8>,
    /// Offset of each note's descriptor in `bytes`, in the order of the notes.
    pub desc_offsets: Vec<usize>,
}

/// Encodes `notes` as one `PT_NOTE` segment, 4-byte aligned as Linux writes them.
pub fn encode_notes(notes: &[NoteSpec<'_>]) -> Result<EncodedNotes, ElfError> {
    let mut bytes = Vec::new();
    let mut desc_offsets = Vec::with_capacity(notes.len());
    for note in notes {
        let at = bytes.len();
        let size = note_size(note.name.len(), note.desc.len()).ok_or(ElfError::Layout("note too large"))?;
        bytes.resize(at + size, 0);
        write_note_with_desc(&mut bytes[at..], note.name, note.n_type, note.desc)?;
        desc_offsets.push(at + desc_offset(note.name.len()).expect("note_size checked the name"));
    }
    Ok(EncodedNotes { bytes, desc_offsets })
}

fn round_up(value: u64) -> Option<u64> {
    Some(value.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::Core;
    use crashvisor_klib::elfcore::PN_XNUM;

    #[test]
    fn follows_the_proc_vmcore_layout() {
        let notes = [NoteSpec { name: b"VMCOREINFO", n_type: 0, desc: b"PAGESIZE=4096\n" }];
        let loads = [
            LoadSpec { vaddr: 0xffff_8880_0000_0000, paddr: 0, len: 0xa_0000 },
            // Not page aligned: the chunk starts at the page, p_offset points inside it.
            LoadSpec { vaddr: 0xffff_8880_0010_0800, paddr: 0x10_0800, len: 0x1000 },
            LoadSpec { vaddr: 0, paddr: 0x20_0000, len: 0 },
        ];
        let layout = layout(&notes, &loads).unwrap();
        assert_eq!(layout.headers.len(), 2 * 4096);
        let core = Core::parse(&layout.headers).unwrap();
        let ph = core.program_headers();
        assert_eq!((ph[0].p_type, ph[0].p_offset, ph[0].p_align), (PT_NOTE, 4096, 4));
        assert_eq!(ph[0].p_filesz, 12 + 12 + 16);
        assert_eq!(ph[1].p_offset, 0x2000);
        assert_eq!(ph[2].p_offset, 0x2000 + 0xa_0000 + 0x800);
        assert_eq!(ph[3].p_offset, 0x2000 + 0xa_0000 + 0x2000);
        assert_eq!(
            layout.runs,
            [
                Run { file_offset: 0x2000, addr: 0, len: 0xa_0000 },
                Run { file_offset: 0xa_2800, addr: 0x10_0800, len: 0x1000 }
            ]
        );
        assert_eq!(layout.file_size, ph[3].p_offset);
        assert_eq!(core.notes()[0].desc, b"PAGESIZE=4096\n");
    }

    #[test]
    fn refuses_what_cannot_be_described() {
        let too_many = vec![LoadSpec { vaddr: 0, paddr: 0, len: 0 }; usize::from(PN_XNUM)];
        assert_eq!(layout(&[], &too_many), Err(ElfError::Layout("too many program headers")));
        let wraps = [LoadSpec { vaddr: 0, paddr: u64::MAX - 10, len: 100 }];
        assert_eq!(layout(&[], &wraps), Err(ElfError::Layout("PT_LOAD overflows")));
    }
}
