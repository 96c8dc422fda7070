//! ELF notes: encoding, decoding, and the two notes a crashing kernel leaves for kdump.
//!
//! A note is a 12-byte header `{ n_namesz, n_descsz, n_type }` (little-endian `u32`s), the
//! name (`n_namesz` bytes including its NUL, padded to 4), then the descriptor (`n_descsz`
//! bytes, padded to 4). Linux uses 4-byte alignment for 64-bit files too.
//!
//! The crashing kernel writes, per CPU, an `NT_PRSTATUS` note named `"CORE"` into a
//! [`CRASH_NOTE_BYTES`]-byte buffer ([`write_prstatus`], like `crash_save_cpu`), and one
//! `"VMCOREINFO"` note into a [`VMCOREINFO_NOTE_SIZE`]-byte buffer
//! ([`write_vmcoreinfo_note`]). Each buffer ends with an all-zero note header; readers such as
//! `/proc/vmcore` stop at the first note whose `n_namesz` is 0 ([`NoteIter`],
//! [`notes_real_size`]). A vmcore reader checks a file's notes strictly instead
//! ([`SegmentNotes`]).
//!
//! The registers in an `NT_PRSTATUS` note are x86_64's `user_regs_struct` ([`UserRegs`]),
//! whose first 21 words are the interrupt frame, Linux's `pt_regs` ([`PtRegs`]): the guest
//! saves them from its interrupt frames, the host from KVM's registers.
//!
//! ```
//! use crashvisor_klib::elfnote::{prstatus_regs, write_prstatus, NoteIter, CRASH_NOTE_BYTES, NT_PRSTATUS};
//!
//! let mut regs = [0u64; 27];
//! regs[16] = 0xffff_ffff_8100_1234; // rip
//! let mut buf = [0u8; CRASH_NOTE_BYTES];
//! write_prstatus(&mut buf, 7, &regs);
//!
//! let note = NoteIter::new(&buf).next().expect("one note");
//! assert_eq!((note.name, note.n_type), (&b"CORE"[..], NT_PRSTATUS));
//! assert_eq!(prstatus_regs(note.desc), Some((7, regs)));
//! ```

use crate::elfcore::ElfError;
use crate::le::{u32_at, u64_at};

/// Size of a note header (`Elf64_Nhdr`: namesz, descsz, type).
pub const NOTE_HEADER_SIZE: usize = 12;
/// `n_type` of a process-status note carrying one CPU's registers.
pub const NT_PRSTATUS: u32 = 1;
/// Name of Linux's `NT_PRSTATUS` notes.
pub const CORE_NOTE_NAME: &[u8] = b"CORE";
/// Size of x86_64's `struct elf_prstatus`; gdb ignores `NT_PRSTATUS` notes of any other size.
pub const PRSTATUS_SIZE: usize = 336;
/// Offset of `pr_pid` in `struct elf_prstatus` (gdb's LWP id).
pub const PRSTATUS_PID_OFFSET: usize = 32;
/// Offset of `pr_reg` (a `user_regs_struct`) in `struct elf_prstatus`.
pub const PRSTATUS_REG_OFFSET: usize = 112;
/// Registers in `pr_reg`, in `user_regs_struct` order: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax
/// rcx rdx rsi rdi orig_rax rip cs eflags rsp ss fs_base gs_base ds es fs gs.
pub const ELF_NGREG: usize = 27;
/// The registers of `pr_reg` by name, in order.
pub const USER_REGS_NAMES: [&str; ELF_NGREG] = [
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax",
    "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
];
/// Index of `rbp` in `pr_reg`.
pub const REG_RBP: usize = 4;
/// Index of `rip` in `pr_reg`.
pub const REG_RIP: usize = 16;
/// Index of `rsp` in `pr_reg`.
pub const REG_RSP: usize = 19;
/// Size of one crash note: header, `"CORE\0"` padded to 8, the 336-byte descriptor.
pub const CRASH_NOTE_SIZE: usize = NOTE_HEADER_SIZE + 8 + PRSTATUS_SIZE;
/// Size of a per-CPU crash-note buffer (`note_buf_t`): one note plus the zero terminator
/// header (and 12 unused bytes, as Linux sizes it for two headers); `crash_notes_size` in sysfs.
pub const CRASH_NOTE_BYTES: usize = 2 * NOTE_HEADER_SIZE + 8 + PRSTATUS_SIZE;
/// Name of the VMCOREINFO note.
pub const VMCOREINFO_NOTE_NAME: &[u8] = b"VMCOREINFO";
/// `n_type` of the VMCOREINFO note.
pub const VMCOREINFO_NOTE_TYPE: u32 = 0;
/// Most VMCOREINFO text bytes (one page); longer text is truncated, as Linux does.
pub const VMCOREINFO_BYTES: usize = 4096;
/// Size of the VMCOREINFO note buffer: two headers, the name padded to 12, the text area.
pub const VMCOREINFO_NOTE_SIZE: usize = 2 * NOTE_HEADER_SIZE + 12 + VMCOREINFO_BYTES;

/// `n` rounded up to a multiple of 4, or `None` on overflow.
fn align4(n: usize) -> Option<usize> {
    n.checked_next_multiple_of(4)
}

/// Offset of the descriptor in a note whose name (without NUL) is `name_len` bytes.
pub fn desc_offset(name_len: usize) -> Option<usize> {
    NOTE_HEADER_SIZE.checked_add(align4(name_len.checked_add(1)?)?)
}

/// Total size of a note with a `name_len`-byte name (without NUL) and a `desc_len`-byte
/// descriptor, padding included.
pub fn note_size(name_len: usize, desc_len: usize) -> Option<usize> {
    desc_offset(name_len)?.checked_add(align4(desc_len)?)
}

/// Writes a note header and `name` (NUL-terminated, padded) at the start of `out`, and zeroes
/// the `desc_len`-byte descriptor area and its padding for the caller to fill at
/// [`desc_offset`]`(name.len())`. Returns the note's total size.
pub fn write_note(out: &mut [u8], name: &[u8], n_type: u32, desc_len: usize) -> Result<usize, ElfError> {
    const TOO_LARGE: ElfError = ElfError::Layout("the note name or descriptor is too large");
    let namesz = u32::try_from(name.len() + 1).map_err(|_| TOO_LARGE)?;
    let descsz = u32::try_from(desc_len).map_err(|_| TOO_LARGE)?;
    let size = note_size(name.len(), desc_len).ok_or(TOO_LARGE)?;
    let out = out.get_mut(..size).ok_or(ElfError::BufferTooSmall)?;
    out[0..4].copy_from_slice(&namesz.to_le_bytes());
    out[4..8].copy_from_slice(&descsz.to_le_bytes());
    out[8..12].copy_from_slice(&n_type.to_le_bytes());
    let name_end = NOTE_HEADER_SIZE + name.len();
    out[NOTE_HEADER_SIZE..name_end].copy_from_slice(name);
    out[name_end..].fill(0);
    Ok(size)
}

/// Writes a whole note (header, padded name, padded `desc`) at the start of `out` and returns
/// its size.
pub fn write_note_with_desc(out: &mut [u8], name: &[u8], n_type: u32, desc: &[u8]) -> Result<usize, ElfError> {
    let size = write_note(out, name, n_type, desc.len())?;
    // `write_note` checked that the note, descriptor included, fits.
    let start = size - align4(desc.len()).expect("write_note checked the size");
    out[start..start + desc.len()].copy_from_slice(desc);
    Ok(size)
}

/// One decoded note.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Note<'a> {
    /// The name without its terminating NUL (if it had one).
    pub name: &'a [u8],
    /// `n_type`.
    pub n_type: u32,
    /// The descriptor, without padding.
    pub desc: &'a [u8],
    /// Offset of the note header: in the bytes walked, plus the base a [`SegmentNotes`] was
    /// given.
    pub offset: u64,
}

impl Note<'_> {
    /// Whether this is a Linux `CORE`/`NT_PRSTATUS` note.
    pub fn is_prstatus(&self) -> bool {
        self.name == CORE_NOTE_NAME && self.n_type == NT_PRSTATUS
    }
}

/// Iterates over the notes in a byte slice.
///
/// Stops, like `/proc/vmcore`'s "real size" walk, at the first note whose `n_namesz` is 0
/// (the terminator), and also at a truncated header or a note running past the end of the
/// bytes (Linux: "Exceeded p_memsz, dropping PT_NOTE entry"). [`NoteIter::offset`] is then the
/// size of the notes accepted.
#[derive(Clone, Debug)]
pub struct NoteIter<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> NoteIter<'a> {
    /// Starts at the beginning of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, offset: 0 }
    }

    /// Bytes taken by the notes returned so far.
    pub fn offset(&self) -> usize {
        self.offset
    }

    fn decode(&self) -> Option<(Note<'a>, usize)> {
        let rest = self.bytes.get(self.offset..)?;
        let header = rest.get(..NOTE_HEADER_SIZE)?;
        let (namesz, descsz, n_type) = (u32_at(header, 0), u32_at(header, 4), u32_at(header, 8));
        if namesz == 0 {
            return None;
        }
        // u32 values rounded up stay far below u64::MAX; the sum is checked against the slice.
        let name_pad = u64::from(namesz).next_multiple_of(4);
        let size = NOTE_HEADER_SIZE as u64 + name_pad + u64::from(descsz).next_multiple_of(4);
        if size > rest.len() as u64 {
            return None;
        }
        // Every offset below is at most `size`, which fits the slice.
        let name_end = NOTE_HEADER_SIZE + namesz as usize;
        let mut name = &rest[NOTE_HEADER_SIZE..name_end];
        if let [head @ .., 0] = name {
            name = head;
        }
        let desc_start = NOTE_HEADER_SIZE + name_pad as usize;
        let desc = &rest[desc_start..desc_start + descsz as usize];
        Some((Note { name, n_type, desc, offset: self.offset as u64 }, size as usize))
    }
}

impl<'a> Iterator for NoteIter<'a> {
    type Item = Note<'a>;

    fn next(&mut self) -> Option<Note<'a>> {
        let (note, size) = self.decode()?;
        self.offset += size;
        Some(note)
    }
}

/// The "real size" of a note segment: the bytes of its notes up to the first terminator (or
/// malformed note), which is what `/proc/vmcore` copies into its merged note segment.
pub fn notes_real_size(bytes: &[u8]) -> usize {
    let mut notes = NoteIter::new(bytes);
    notes.by_ref().for_each(drop);
    notes.offset()
}

/// Walks the notes of a vmcore's `PT_NOTE` segment strictly, as a reader of untrusted files
/// must: each note is a 12-byte header, the name padded to the alignment, then `n_descsz`
/// bytes (the last note's trailing padding may be missing). A note that does not fit is an
/// [`ElfError::Note`], after which the walk ends. Names end at their first NUL; a note whose
/// `n_namesz` is 0 is a note like any other, not a terminator.
#[derive(Clone, Debug)]
pub struct SegmentNotes<'a> {
    data: &'a [u8],
    base: u64,
    align: usize,
    at: usize,
}

impl<'a> SegmentNotes<'a> {
    /// The notes of `data`, a segment at file offset `base` (which only labels
    /// [`Note::offset`] and errors), aligned to `align` (4, or 8 for some `p_align = 8`
    /// segments).
    pub fn new(data: &'a [u8], base: u64, align: usize) -> Self {
        Self { data, base, align, at: 0 }
    }

    /// The note at `self.at` and the offset of the next.
    fn decode(&self) -> Result<(Note<'a>, usize), ElfError> {
        let (data, at) = (self.data, self.at);
        let offset = self.base.saturating_add(at as u64);
        let err = |reason| ElfError::Note { offset, reason };
        let header = data.get(at..at + NOTE_HEADER_SIZE).ok_or(err("header"))?;
        let (namesz, descsz) = (u32_at(header, 0) as usize, u32_at(header, 4) as usize);
        let name_at = at + NOTE_HEADER_SIZE;
        let name = name_at.checked_add(namesz).and_then(|end| data.get(name_at..end)).ok_or(err("name"))?;
        let desc_at = (name_at + namesz).checked_next_multiple_of(self.align).ok_or(err("name padding"))?;
        let desc = desc_at.checked_add(descsz).and_then(|end| data.get(desc_at..end)).ok_or(err("descriptor"))?;
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        // The last note's padding may be cut off by the segment's end.
        let next = (desc_at + descsz).checked_next_multiple_of(self.align).map_or(data.len(), |n| n.min(data.len()));
        Ok((Note { name, n_type: u32_at(header, 8), desc, offset }, next))
    }
}

impl<'a> Iterator for SegmentNotes<'a> {
    type Item = Result<Note<'a>, ElfError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.data.len() {
            return None;
        }
        let decoded = self.decode();
        self.at = decoded.as_ref().map_or(self.data.len(), |&(_, next)| next);
        Some(decoded.map(|(note, _)| note))
    }
}

/// Linux's `struct pt_regs` on x86_64, the frame the guest's interrupt entry pushes: the first
/// 21 words of `user_regs_struct`, in its order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct PtRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    /// The error code of an exception, the system call number, or -1.
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

const _: () = assert!(core::mem::size_of::<PtRegs>() == 21 * 8);

/// x86_64's `struct user_regs_struct`, the `pr_reg` of an `NT_PRSTATUS` note: the interrupt
/// frame, then the segment bases and selectors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserRegs {
    /// `r15` to `ss`.
    pub regs: PtRegs,
    /// The FS base (`MSR_FS_BASE`).
    pub fs_base: u64,
    /// The GS base (`MSR_GS_BASE`).
    pub gs_base: u64,
    /// The DS selector.
    pub ds: u64,
    /// The ES selector.
    pub es: u64,
    /// The FS selector.
    pub fs: u64,
    /// The GS selector.
    pub gs: u64,
}

impl UserRegs {
    /// The registers in `pr_reg` order (see [`USER_REGS_NAMES`]).
    pub fn to_array(&self) -> [u64; ELF_NGREG] {
        let r = &self.regs;
        [
            r.r15,
            r.r14,
            r.r13,
            r.r12,
            r.rbp,
            r.rbx,
            r.r11,
            r.r10,
            r.r9,
            r.r8,
            r.rax,
            r.rcx,
            r.rdx,
            r.rsi,
            r.rdi,
            r.orig_rax,
            r.rip,
            r.cs,
            r.eflags,
            r.rsp,
            r.ss,
            self.fs_base,
            self.gs_base,
            self.ds,
            self.es,
            self.fs,
            self.gs,
        ]
    }
}

/// Writes a CPU's crash note exactly as Linux's `crash_save_cpu()`: the buffer is zeroed, then
/// an `NT_PRSTATUS` note named `"CORE"` with a 336-byte `elf_prstatus` holding only `pr_pid`
/// and `pr_reg`, then (zeros) the terminating header.
///
/// Use a distinct non-zero `pid` per CPU (e.g. cpu + 1), or gdb merges the CPUs' threads.
pub fn write_prstatus(out: &mut [u8; CRASH_NOTE_BYTES], pid: u32, regs: &[u64; ELF_NGREG]) {
    out.fill(0);
    let desc = desc_offset(CORE_NOTE_NAME.len()).expect("the name is 4 bytes");
    write_note(out, CORE_NOTE_NAME, NT_PRSTATUS, PRSTATUS_SIZE).expect("the buffer holds one crash note");
    let prstatus = &mut out[desc..desc + PRSTATUS_SIZE];
    prstatus[PRSTATUS_PID_OFFSET..PRSTATUS_PID_OFFSET + 4].copy_from_slice(&pid.to_le_bytes());
    let reg_bytes = &mut prstatus[PRSTATUS_REG_OFFSET..PRSTATUS_REG_OFFSET + ELF_NGREG * 8];
    for (slot, reg) in reg_bytes.chunks_exact_mut(8).zip(regs) {
        slot.copy_from_slice(&reg.to_le_bytes());
    }
}

/// `pr_pid` and `pr_reg` of an `NT_PRSTATUS` descriptor; `None` unless it is exactly
/// [`PRSTATUS_SIZE`] bytes (as gdb requires).
pub fn prstatus_regs(desc: &[u8]) -> Option<(u32, [u64; ELF_NGREG])> {
    let desc: &[u8; PRSTATUS_SIZE] = desc.try_into().ok()?;
    let regs = core::array::from_fn(|i| u64_at(desc, PRSTATUS_REG_OFFSET + i * 8));
    Some((u32_at(desc, PRSTATUS_PID_OFFSET), regs))
}

/// Writes the VMCOREINFO note (name `"VMCOREINFO"`, type 0, `text` as the descriptor,
/// truncated to [`VMCOREINFO_BYTES`]) followed by the zero terminator, zeroing the rest of the
/// buffer. Returns the note's size without the terminator.
pub fn write_vmcoreinfo_note(out: &mut [u8; VMCOREINFO_NOTE_SIZE], text: &[u8]) -> usize {
    let text = &text[..text.len().min(VMCOREINFO_BYTES)];
    let size = write_note_with_desc(out, VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE, text)
        .expect("the buffer holds a full-page VMCOREINFO note");
    out[size..].fill(0);
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_linux() {
        assert_eq!(CRASH_NOTE_SIZE, 356);
        assert_eq!(CRASH_NOTE_BYTES, 368);
        assert_eq!(VMCOREINFO_NOTE_SIZE, 4132);
        assert_eq!(note_size(4, PRSTATUS_SIZE), Some(CRASH_NOTE_SIZE));
        assert_eq!(desc_offset(10), Some(24));
        assert_eq!(note_size(0, 0), Some(16));
        assert_eq!(note_size(usize::MAX, 0), None);
        assert_eq!(note_size(3, usize::MAX), None);
    }

    #[test]
    fn prstatus_is_byte_exact() {
        let mut regs = [0u64; ELF_NGREG];
        for (i, reg) in regs.iter_mut().enumerate() {
            *reg = 0x1111_0000_0000_0000 + i as u64;
        }
        let mut buf = [0xaau8; CRASH_NOTE_BYTES];
        write_prstatus(&mut buf, 0x0102_0304, &regs);
        assert_eq!((u32_at(&buf, 0), u32_at(&buf, 4), u32_at(&buf, 8)), (5, 336, 1));
        assert_eq!(&buf[12..20], b"CORE\0\0\0\0");
        let desc = 20;
        assert_eq!(u32_at(&buf, desc + 32), 0x0102_0304);
        assert_eq!(u64_at(&buf, desc + 112), regs[0], "r15 first");
        assert_eq!(u64_at(&buf, desc + 112 + 128), regs[REG_RIP]);
        assert_eq!(desc + 112 + 128, 260);
        assert_eq!(u64_at(&buf, desc + 112 + 152), regs[REG_RSP]);
        assert_eq!(u64_at(&buf, desc + 112 + 26 * 8), regs[26], "gs last");
        // Everything else of elf_prstatus is zero, and so is the terminator.
        assert!(buf[desc..desc + 32].iter().all(|&b| b == 0));
        assert!(buf[desc + 36..desc + 112].iter().all(|&b| b == 0));
        assert!(buf[desc + 328..].iter().all(|&b| b == 0));
        assert_eq!(notes_real_size(&buf), CRASH_NOTE_SIZE);
        let note = NoteIter::new(&buf).next().unwrap();
        assert_eq!(prstatus_regs(note.desc), Some((0x0102_0304, regs)));
    }

    #[test]
    fn prstatus_reader_wants_exactly_336_bytes() {
        assert_eq!(prstatus_regs(&[0u8; 296]), None);
        assert_eq!(prstatus_regs(&[0u8; 337]), None);
        assert_eq!(prstatus_regs(&[0u8; 336]), Some((0, [0; ELF_NGREG])));
    }

    #[test]
    fn vmcoreinfo_note_layout_and_truncation() {
        let mut buf = [0xffu8; VMCOREINFO_NOTE_SIZE];
        let size = write_vmcoreinfo_note(&mut buf, b"OSRELEASE=6.1.0\nPAGESIZE=4096\n");
        assert_eq!(size, 12 + 12 + 32);
        assert_eq!((u32_at(&buf, 0), u32_at(&buf, 4), u32_at(&buf, 8)), (11, 30, 0));
        assert_eq!(&buf[12..24], b"VMCOREINFO\0\0");
        assert_eq!(&buf[24..54], b"OSRELEASE=6.1.0\nPAGESIZE=4096\n");
        assert!(buf[54..].iter().all(|&b| b == 0), "padding, terminator and tail are zero");
        let notes: alloc::vec::Vec<_> = NoteIter::new(&buf).collect();
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].name, VMCOREINFO_NOTE_NAME);

        let long = [b'x'; 5000];
        assert_eq!(write_vmcoreinfo_note(&mut buf, &long), VMCOREINFO_NOTE_SIZE - NOTE_HEADER_SIZE);
        assert_eq!(u32_at(&buf, 4), 4096);
        assert_eq!(notes_real_size(&buf), VMCOREINFO_NOTE_SIZE - NOTE_HEADER_SIZE);
    }

    #[test]
    fn write_note_checks_room_and_pads() {
        let mut buf = [0xeeu8; 32];
        assert_eq!(write_note(&mut buf, b"ab", 9, 3), Ok(20));
        assert_eq!(&buf[12..20], &[b'a', b'b', 0, 0, 0, 0, 0, 0]);
        assert_eq!(buf[20], 0xee, "nothing past the note is touched");
        assert_eq!(write_note(&mut buf, b"abcd", 9, 13), Err(ElfError::BufferTooSmall));
        assert_eq!(write_note_with_desc(&mut buf, b"Xen", 18, &[1, 2, 3, 4, 5]), Ok(24));
        assert_eq!(&buf[16..24], &[1, 2, 3, 4, 5, 0, 0, 0]);
        assert!(matches!(write_note(&mut buf, b"", 0, usize::MAX), Err(ElfError::Layout(_))));
        assert_eq!(
            alloc::format!("{}", ElfError::BufferTooSmall),
            "the output buffer is too small for the ELF headers or note"
        );
    }

    #[test]
    fn iterator_walks_and_stops_at_terminator() {
        let mut buf = [0u8; 128];
        let a = write_note_with_desc(&mut buf, b"CORE", 1, &[7; 6]).unwrap();
        let b = write_note_with_desc(&mut buf[a..], b"X", 42, &[]).unwrap();
        // A note after the zero terminator is not seen.
        write_note_with_desc(&mut buf[a + b + 12..], b"LATE", 3, &[1]).unwrap();
        let mut notes = NoteIter::new(&buf);
        assert_eq!(notes.next(), Some(Note { name: b"CORE", n_type: 1, desc: &[7; 6], offset: 0 }));
        assert_eq!(notes.next(), Some(Note { name: b"X", n_type: 42, desc: &[], offset: a as u64 }));
        assert_eq!(notes.next(), None);
        assert_eq!(notes.offset(), a + b);
        assert_eq!(notes_real_size(&buf), a + b);
    }

    #[test]
    fn iterator_survives_hostile_bytes() {
        // A name without NUL is kept whole.
        let mut buf = [0u8; 24];
        buf[0..4].copy_from_slice(&4u32.to_le_bytes());
        buf[4..8].copy_from_slice(&4u32.to_le_bytes());
        buf[12..16].copy_from_slice(b"ABCD");
        assert_eq!(NoteIter::new(&buf).next().unwrap().name, b"ABCD");
        // Sizes past the end, huge sizes and truncated headers end the walk.
        for (namesz, descsz) in [(4u32, 9u32), (13, 0), (u32::MAX, 0), (1, u32::MAX), (u32::MAX, u32::MAX)] {
            buf[0..4].copy_from_slice(&namesz.to_le_bytes());
            buf[4..8].copy_from_slice(&descsz.to_le_bytes());
            assert_eq!(notes_real_size(&buf), 0, "namesz {namesz} descsz {descsz}");
        }
        for len in 0..12 {
            assert_eq!(NoteIter::new(&[1u8; 12][..len]).next(), None);
        }
        // Every truncation of a valid crash note yields no note and no panic.
        let mut crash = [0u8; CRASH_NOTE_BYTES];
        write_prstatus(&mut crash, 1, &[3; ELF_NGREG]);
        for len in 0..CRASH_NOTE_SIZE {
            assert_eq!(notes_real_size(&crash[..len]), 0);
        }
        assert_eq!(notes_real_size(&crash[..CRASH_NOTE_SIZE]), CRASH_NOTE_SIZE);
    }

    #[test]
    fn user_regs_follow_linux_order() {
        let regs = PtRegs { r15: 1, rbp: 5, orig_rax: 16, rip: 17, rsp: 20, ss: 21, ..PtRegs::default() };
        let user = UserRegs { regs, fs_base: 22, gs: 27, ..UserRegs::default() };
        let array = user.to_array();
        assert_eq!((array[0], array[REG_RBP], array[15], array[REG_RIP], array[REG_RSP]), (1, 5, 16, 17, 20));
        assert_eq!((array[20], array[21], array[26]), (21, 22, 27));
        assert_eq!(USER_REGS_NAMES[20..22], ["ss", "fs_base"]);
    }

    #[test]
    fn segment_notes_alignment_rules() {
        // Hand-made PT_NOTE data with 8-byte alignment: name "abcd\0" at 12..17, padded to 24.
        let mut data = alloc::vec::Vec::new();
        data.extend_from_slice(&5u32.to_le_bytes());
        data.extend_from_slice(&3u32.to_le_bytes());
        data.extend_from_slice(&7u32.to_le_bytes());
        data.extend_from_slice(b"abcd\0\0\0\0\0\0\0\0");
        data.extend_from_slice(b"xyz");
        fn notes(data: &[u8], base: u64, align: usize) -> Result<alloc::vec::Vec<Note<'_>>, ElfError> {
            SegmentNotes::new(data, base, align).collect()
        }
        assert_eq!(notes(&data, 0x100, 8).unwrap(), [Note { name: b"abcd", n_type: 7, desc: b"xyz", offset: 0x100 }]);
        // With 4-byte alignment the descriptor starts at 20 instead (inside the padding).
        assert_eq!(notes(&data[..23], 0, 4).unwrap()[0].desc, b"\0\0\0");
        // Trailing bytes too short for a header are an error.
        let mut longer = data.clone();
        longer.extend_from_slice(&[0; 5 + 4]);
        assert!(notes(&longer, 0, 8).is_err());
    }
}
