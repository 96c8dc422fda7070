//! Tiny hand-made kernels for the VMM's loader: ELF64 x86_64 executables built in memory.
//!
//! How the fixture is made (all fields little-endian):
//!
//! ```text
//! file offset  what
//! 0x000        ELF header, 64 bytes: ELFCLASS64, ELFDATA2LSB, ET_EXEC, EM_X86_64,
//!              e_entry = the load address, e_phoff = 0x40, no section headers
//! 0x040        PT_LOAD program header, 56 bytes: p_offset = 0x1000, p_vaddr = p_paddr = the load
//!              address, p_filesz = p_memsz = the code's length, flags R+W+X, align 0x1000
//! 0x078        (PVH kernels only) PT_NOTE program header: p_offset = 0xb0, p_filesz = 20
//! 0x0b0        (PVH kernels only) the note: namesz = 4, descsz = 4,
//!              type = 18 (XEN_ELFNOTE_PHYS32_ENTRY), name = "Xen\0", desc = 32-bit entry
//! 0x1000       the code
//! ```
//!
//! A PVH kernel starts at its entry in 32-bit protected mode with paging off, so the code is
//! 32-bit x86 machine code. The bytes are written out by hand in the tests, with their
//! assembly alongside.

use crate::TempFile;

const ELF_HEADER_SIZE: u16 = 64;
const PROGRAM_HEADER_SIZE: u16 = 56;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EV_CURRENT: u8 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;
/// The Xen ELF note type carrying the 32-bit physical PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Where the note starts: right after the ELF header and two program headers.
const NOTE_OFFSET: usize = 0xb0;
/// Where the code starts in the file (page-aligned, like a real linker would place it).
const CODE_OFFSET: usize = 0x1000;

/// A one-segment kernel: `code` loaded at `load_gpa`, optionally with a PVH entry note.
#[derive(Clone, Debug)]
pub struct ElfKernel {
    /// Machine code (32-bit x86 for a PVH kernel).
    pub code: Vec<u8>,
    /// Guest-physical load address of the code, also the ELF entry.
    pub load_gpa: u64,
    /// The PVH entry point, or `None` for a kernel without the PVH note.
    pub pvh_entry: Option<u32>,
}

impl ElfKernel {
    /// A PVH kernel whose entry is the first byte of `code`, loaded at `load_gpa` (below 4 GiB).
    pub fn pvh(code: &[u8], load_gpa: u32) -> Self {
        Self { code: code.to_vec(), load_gpa: load_gpa.into(), pvh_entry: Some(load_gpa) }
    }

    /// The same kernel without the PVH note (a plain ELF executable).
    pub fn without_pvh_note(mut self) -> Self {
        self.pvh_entry = None;
        self
    }

    /// The ELF file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut file = Vec::with_capacity(CODE_OFFSET + self.code.len());
        let phnum: u16 = if self.pvh_entry.is_some() { 2 } else { 1 };

        // ELF header.
        file.extend_from_slice(b"\x7fELF");
        file.extend_from_slice(&[ELFCLASS64, ELFDATA2LSB, EV_CURRENT]);
        file.resize(16, 0); // OS ABI (System V), ABI version, padding
        file.extend_from_slice(&ET_EXEC.to_le_bytes());
        file.extend_from_slice(&EM_X86_64.to_le_bytes());
        file.extend_from_slice(&u32::from(EV_CURRENT).to_le_bytes());
        file.extend_from_slice(&self.load_gpa.to_le_bytes()); // e_entry
        file.extend_from_slice(&u64::from(ELF_HEADER_SIZE).to_le_bytes()); // e_phoff
        file.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        file.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        file.extend_from_slice(&ELF_HEADER_SIZE.to_le_bytes());
        file.extend_from_slice(&PROGRAM_HEADER_SIZE.to_le_bytes());
        file.extend_from_slice(&phnum.to_le_bytes());
        file.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
        file.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
        file.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
        assert_eq!(file.len(), usize::from(ELF_HEADER_SIZE));

        let code_len = self.code.len() as u64;
        program_header(&mut file, PT_LOAD, PF_R | PF_W | PF_X, CODE_OFFSET as u64, self.load_gpa, code_len, 0x1000);
        if let Some(entry) = self.pvh_entry {
            let mut note = Vec::new();
            note.extend_from_slice(&4u32.to_le_bytes()); // namesz
            note.extend_from_slice(&4u32.to_le_bytes()); // descsz
            note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(&entry.to_le_bytes());
            program_header(&mut file, PT_NOTE, PF_R, NOTE_OFFSET as u64, 0, note.len() as u64, 4);
            file.resize(NOTE_OFFSET, 0);
            file.extend_from_slice(&note);
        }
        file.resize(CODE_OFFSET, 0);
        file.extend_from_slice(&self.code);
        file
    }

    /// Writes the kernel to a fresh temporary file named after `hint`.
    pub fn write_temp(&self, hint: &str) -> TempFile {
        TempFile::with_contents(&format!("{hint}.elf"), &self.to_bytes())
    }
}

/// Appends one 56-byte `Elf64_Phdr` (physical and virtual addresses equal).
fn program_header(file: &mut Vec<u8>, p_type: u32, flags: u32, offset: u64, address: u64, size: u64, align: u64) {
    let start = file.len();
    file.extend_from_slice(&p_type.to_le_bytes());
    file.extend_from_slice(&flags.to_le_bytes());
    file.extend_from_slice(&offset.to_le_bytes());
    file.extend_from_slice(&address.to_le_bytes()); // p_vaddr
    file.extend_from_slice(&address.to_le_bytes()); // p_paddr
    file.extend_from_slice(&size.to_le_bytes()); // p_filesz
    file.extend_from_slice(&size.to_le_bytes()); // p_memsz
    file.extend_from_slice(&align.to_le_bytes());
    assert_eq!(file.len() - start, usize::from(PROGRAM_HEADER_SIZE));
}

#[cfg(test)]
mod tests {
    use goblin::elf::program_header::{PT_LOAD, PT_NOTE};
    use goblin::elf::Elf;

    use super::*;

    #[test]
    fn pvh_kernel_parses_with_its_note_and_segment() {
        let code = [0x0f, 0x0b];
        let bytes = ElfKernel::pvh(&code, 0x10_0000).to_bytes();
        let elf = Elf::parse(&bytes).expect("a valid ELF");
        assert!(elf.is_64 && elf.little_endian);
        assert_eq!(elf.header.e_type, goblin::elf::header::ET_EXEC);
        assert_eq!(elf.header.e_machine, goblin::elf::header::EM_X86_64);
        assert_eq!(elf.entry, 0x10_0000);

        let load: Vec<_> = elf.program_headers.iter().filter(|ph| ph.p_type == PT_LOAD).collect();
        assert_eq!(load.len(), 1);
        assert_eq!(load[0].p_paddr, 0x10_0000);
        assert_eq!(&bytes[load[0].file_range()], &code);

        let notes: Vec<_> = elf
            .iter_note_headers(&bytes)
            .expect("a PT_NOTE segment")
            .map(|note| note.expect("a well-formed note"))
            .collect();
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].name, "Xen");
        assert_eq!(notes[0].n_type, XEN_ELFNOTE_PHYS32_ENTRY);
        assert_eq!(notes[0].desc, 0x10_0000u32.to_le_bytes());
    }

    #[test]
    fn kernel_without_note_has_no_note_segment() {
        let bytes = ElfKernel::pvh(&[0x90], 0x20_0000).without_pvh_note().to_bytes();
        let elf = Elf::parse(&bytes).expect("a valid ELF");
        assert!(elf.program_headers.iter().all(|ph| ph.p_type != PT_NOTE));
        assert_eq!(elf.program_headers.len(), 1);
    }
}
