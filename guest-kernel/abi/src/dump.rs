//! The dump hand-off: how a capture kernel gives the host its `/proc/vmcore`.
//!
//! The capture kernel builds, in its own memory, the beginning of the vmcore exactly as Linux's
//! `/proc/vmcore` starts — ELF header, program headers, the merged PT_NOTE data, each part
//! padded to a page — and a list of ranges saying which guest-physical memory goes to which
//! file offset (the PT_LOAD data, minus what its dump level excludes). It then runs
//! `Command::Dump` with the address of a [`DumpDescriptor`]. The host copies nothing through
//! the guest: it writes the headers, then each range straight from guest memory, leaving zero
//! pages and everything not covered by a range as holes of a sparse file.
//!
//! Every field is untrusted: the host checks the magic and version, that every address range
//! lies in guest RAM, that sizes are within the limits below, that ranges are sorted by file
//! offset, do not overlap and start after the headers, and that the headers parse as an ELF64
//! core file whose notes are well formed.

/// `DumpDescriptor::magic`: `"CVDUMP\0\x01"` read as a little-endian `u64`.
pub const DUMP_MAGIC: u64 = u64::from_le_bytes(*b"CVDUMP\0\x01");
/// `DumpDescriptor::version` of this layout.
pub const DUMP_VERSION: u32 = 1;
/// Most ranges one descriptor may list.
pub const MAX_DUMP_RANGES: u64 = 65_536;
/// Largest header blob (ELF header, program headers, notes).
pub const MAX_DUMP_HEADERS_LEN: u64 = 16 << 20;
/// Largest log handed over (each of the two).
pub const MAX_DUMP_LOG_LEN: u64 = 8 << 20;
/// Largest vmcore file the host writes (the apparent size; holes cost nothing).
pub const MAX_DUMP_FILE_SIZE: u64 = 1 << 40;

/// makedumpfile's `-d` bit: exclude zero pages.
pub const DUMP_LEVEL_ZERO: u32 = 1;
/// makedumpfile's `-d` bit: exclude free pages.
pub const DUMP_LEVEL_FREE: u32 = 16;
/// Every bit makedumpfile defines (`-d 31`).
pub const DUMP_LEVEL_ALL: u32 = 31;

/// What a capture kernel hands the host (`Command::Dump`), 104 bytes, all little-endian.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpDescriptor {
    /// `DUMP_MAGIC`.
    pub magic: u64,
    /// `DUMP_VERSION`.
    pub version: u32,
    /// The makedumpfile `-d` level the capture kernel applied (free pages already left out of
    /// the ranges; zero pages the host leaves out as holes whatever the level).
    pub dump_level: u32,
    /// Guest-physical address of the header blob (file offset 0).
    pub headers_gpa: u64,
    /// Its length in bytes.
    pub headers_len: u64,
    /// Guest-physical address of `nr_ranges` [`DumpRange`]s, sorted by `file_offset`.
    pub ranges_gpa: u64,
    /// Number of ranges.
    pub nr_ranges: u64,
    /// The vmcore's apparent size: the end of the last PT_LOAD's data.
    pub file_size: u64,
    /// Guest-physical address of the crashed kernel's log as text (`vmcore-dmesg.txt`).
    pub vmcore_dmesg_gpa: u64,
    /// Its length.
    pub vmcore_dmesg_len: u64,
    /// Guest-physical address of the capture kernel's own log as text (`kexec-dmesg.log`).
    pub kexec_dmesg_gpa: u64,
    /// Its length.
    pub kexec_dmesg_len: u64,
    /// Nanoseconds the capture kernel took from its first instruction to this hand-off.
    pub capture_ns: u64,
    /// Zero.
    pub reserved: u64,
}

/// One run of guest memory copied into the vmcore, 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpRange {
    /// Where in the file the bytes go.
    pub file_offset: u64,
    /// Guest-physical address of the first byte.
    pub gpa: u64,
    /// Number of bytes.
    pub len: u64,
}

/// `DumpFailure::magic`: `"CVFAIL\0\x01"` as a little-endian `u64`.
pub const DUMP_FAILURE_MAGIC: u64 = u64::from_le_bytes(*b"CVFAIL\0\x01");
/// Size of `DumpFailure::message`.
pub const DUMP_FAILURE_MESSAGE_LEN: usize = 256;

/// Why a capture kernel produced no vmcore (`Command::DumpFailed`), 272 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DumpFailure {
    /// `DUMP_FAILURE_MAGIC`.
    pub magic: u64,
    /// Bytes of `message` in use.
    pub message_len: u64,
    /// What went wrong, UTF-8 (the host copes with anything).
    pub message: [u8; DUMP_FAILURE_MESSAGE_LEN],
}

impl DumpFailure {
    /// A failure saying `message` (truncated to fit).
    pub fn new(message: &[u8]) -> Self {
        let n = message.len().min(DUMP_FAILURE_MESSAGE_LEN);
        let mut text = [0u8; DUMP_FAILURE_MESSAGE_LEN];
        text[..n].copy_from_slice(&message[..n]);
        Self { magic: DUMP_FAILURE_MAGIC, message_len: n as u64, message: text }
    }
}

const _: () = assert!(core::mem::size_of::<DumpDescriptor>() == 104);
const _: () = assert!(core::mem::size_of::<DumpRange>() == 24);
const _: () = assert!(core::mem::size_of::<DumpFailure>() == 272);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics_spell_their_names() {
        assert_eq!(&DUMP_MAGIC.to_le_bytes(), b"CVDUMP\0\x01");
        assert_eq!(&DUMP_FAILURE_MAGIC.to_le_bytes(), b"CVFAIL\0\x01");
    }

    #[test]
    fn failure_message_is_truncated() {
        let long = [b'x'; 400];
        let f = DumpFailure::new(&long);
        assert_eq!(f.message_len, DUMP_FAILURE_MESSAGE_LEN as u64);
        let short = DumpFailure::new(b"no elfcorehdr");
        assert_eq!(&short.message[..short.message_len as usize], b"no elfcorehdr");
    }
}
