//! A vmcore opened for reading, whatever its format: the crashed machine's notes and its
//! physical memory. Analysis and conversion work through [`DumpImage`]
//! only, so they behave the same on capture-kernel ELF vmcores, host-side ELF vmcores and
//! kdump-compressed files.

use crate::elf::NT_PRSTATUS;

/// One ELF note of the dump, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedNote {
    /// The name without its NUL terminator.
    pub name: Vec<u8>,
    /// `n_type`.
    pub n_type: u32,
    /// The descriptor.
    pub desc: Vec<u8>,
}

impl OwnedNote {
    /// Whether this is a Linux `CORE`/`NT_PRSTATUS` note.
    pub fn is_prstatus(&self) -> bool {
        self.name == b"CORE" && self.n_type == NT_PRSTATUS
    }

    /// Whether this is the `VMCOREINFO` note.
    pub fn is_vmcoreinfo(&self) -> bool {
        self.name == b"VMCOREINFO"
    }
}

/// Why memory could not be read from a dump.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No segment (ELF) or no bit in the first bitmap (kdump) covers the address.
    #[error("physical address {paddr:#x} is not in the dump")]
    NotInDump {
        /// The first address missing.
        paddr: u64,
    },
    /// The page was excluded by the dump level (a zero page reads as zeros, never this).
    #[error("page at physical address {paddr:#x} was excluded from the dump (free page)")]
    Excluded {
        /// The page's address.
        paddr: u64,
    },
    /// The file is shorter than its headers say, or a compressed page does not decode.
    #[error("the dump is corrupt at physical address {paddr:#x}: {reason}")]
    Corrupt {
        /// The page's address.
        paddr: u64,
        /// What was wrong.
        reason: String,
    },
    /// The file could not be read.
    #[error("cannot read the dump file: {0}")]
    Io(#[from] std::io::Error),
}

/// A dump's notes and physical memory.
pub trait DumpImage {
    /// Every note, in file order (one `NT_PRSTATUS` per CPU, the `VMCOREINFO` note, ...).
    fn notes(&self) -> &[OwnedNote];

    /// Fills `buf` with physical memory at `paddr..paddr + buf.len()`; the range may span
    /// pages and segments. Pages the dump left out as zero read as zeros.
    fn read_phys(&self, paddr: u64, buf: &mut [u8]) -> Result<(), ReadError>;

    /// The highest physical address the dump describes, plus one.
    fn phys_end(&self) -> u64;

    /// The `VMCOREINFO` text, if the dump has the note.
    fn vmcoreinfo(&self) -> Option<&str> {
        let note = self.notes().iter().find(|n| n.is_vmcoreinfo())?;
        std::str::from_utf8(&note.desc).ok()
    }
}
