//! Crash analysis: what `crash` shows first — the summary banner, per-CPU backtraces, the kernel
//! log and the task list — read from a vmcore through [`DumpImage`] and the crashed kernel's
//! `VMCOREINFO` only (docs/analysis.md lists the keys), never from side files.
//!
//! [`Dump`] ties a dump's memory to its `VMCOREINFO`: it translates kernel virtual addresses
//! ([`vtop`]) and reads typed values. The other modules build serde-serialisable reports on it,
//! which the CLI prints crash-style or as JSON and the REST API serves.
//!
//! ```no_run
//! use dumpd::analysis::{backtrace, summary, symbols::KernelSymbols, tasks, Dump};
//!
//! let image = dumpd::image::open("vmcore".as_ref())?;
//! let dump = Dump::new(image.as_ref())?;
//! let kernel = KernelSymbols::load("guest-kernel.elf".as_ref())?;
//! kernel.verify(&dump)?;
//! let tasks = tasks::task_list(&dump)?;
//! let summary = summary::summarize(&dump, &tasks, "vmcore", Some("guest-kernel.elf"));
//! print!("{summary}");
//! if let Some(cpu) = summary.panic_cpu() {
//!     print!("{}", backtrace::cpu_backtrace(&dump, &tasks, cpu, Some(&kernel))?);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Every read of dump memory can fail (pages left out of the dump, corrupt pointers, hostile
//! files): readers return [`AnalysisError`], never panic, and walks of linked structures are
//! bounded. Where a structure is damaged part-way (a task list or a log), the reports keep
//! what was read and say what went wrong in a `problem` field.

pub mod backtrace;
pub mod log;
pub mod registers;
pub mod summary;
pub mod symbols;
pub mod tasks;
pub mod vmcoreinfo;
pub mod vtop;

pub(crate) use crate::error_chain;
use crate::image::DumpImage;

use self::registers::CpuRegisters;
use self::vmcoreinfo::{VmcoreInfo, VmcoreInfoError};
use self::vtop::{Translator, VtopError};

/// Why a dump could not be analysed.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    /// The dump has no `VMCOREINFO` note.
    #[error("the dump has no VMCOREINFO note, so its kernel's structures cannot be found")]
    NoVmcoreinfo,
    /// A `VMCOREINFO` key is missing or malformed.
    #[error(transparent)]
    Vmcoreinfo(#[from] VmcoreInfoError),
    /// Memory the analysis needs could not be read.
    #[error("cannot read {what}")]
    Memory {
        /// What was being read.
        what: String,
        /// Why.
        #[source]
        source: VtopError,
    },
    /// A value read from the dump makes no sense (a kernel structure is corrupt).
    #[error("{0}")]
    Corrupt(String),
    /// The caller asked for something the dump does not have (a CPU, a pid).
    #[error("{0}")]
    NotFound(String),
}

/// A dump opened for analysis: its memory, its `VMCOREINFO`, and address translation.
pub struct Dump<'a> {
    image: &'a dyn DumpImage,
    info: VmcoreInfo,
    translator: Translator,
}

impl std::fmt::Debug for Dump<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dump").field("info", &self.info).field("translator", &self.translator).finish()
    }
}

impl<'a> Dump<'a> {
    /// Parses the dump's `VMCOREINFO` and sets up address translation.
    pub fn new(image: &'a dyn DumpImage) -> Result<Self, AnalysisError> {
        let note = image.notes().iter().find(|n| n.is_vmcoreinfo()).ok_or(AnalysisError::NoVmcoreinfo)?;
        let info = VmcoreInfo::parse(&String::from_utf8_lossy(&note.desc));
        let translator = Translator::new(&info)?;
        Ok(Self { image, info, translator })
    }

    /// The crashed kernel's `VMCOREINFO`.
    pub fn info(&self) -> &VmcoreInfo {
        &self.info
    }

    /// The dump's notes and physical memory.
    pub fn image(&self) -> &dyn DumpImage {
        self.image
    }

    /// The registers of each CPU, from the `NT_PRSTATUS` notes (see [`registers`]).
    pub fn cpus(&self) -> Vec<CpuRegisters> {
        registers::from_notes(self.image.notes())
    }

    /// Fills `buf` from kernel virtual memory at `vaddr`; `what` names it for the error.
    pub fn read(&self, what: &str, vaddr: u64, buf: &mut [u8]) -> Result<(), AnalysisError> {
        self.translator
            .read(self.image, vaddr, buf)
            .map_err(|source| AnalysisError::Memory { what: format!("{what} at {vaddr:#x}"), source })
    }

    /// Reads `len` bytes of kernel virtual memory.
    pub fn read_vec(&self, what: &str, vaddr: u64, len: usize) -> Result<Vec<u8>, AnalysisError> {
        let mut buf = vec![0; len];
        self.read(what, vaddr, &mut buf)?;
        Ok(buf)
    }

    /// Reads a little-endian `u64`.
    pub fn read_u64(&self, what: &str, vaddr: u64) -> Result<u64, AnalysisError> {
        let mut buf = [0; 8];
        self.read(what, vaddr, &mut buf)?;
        Ok(u64::from_le_bytes(buf))
    }

    /// Reads a little-endian `u32`.
    pub fn read_u32(&self, what: &str, vaddr: u64) -> Result<u32, AnalysisError> {
        let mut buf = [0; 4];
        self.read(what, vaddr, &mut buf)?;
        Ok(u32::from_le_bytes(buf))
    }
}

/// Serialises an address as a `0x` hexadecimal string (JSON numbers lose precision above 2^53,
/// and kernel addresses are far above).
pub(crate) fn hex<S: serde::Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_args!("{value:#x}"))
}

/// [`hex`] for an optional address.
pub(crate) fn hex_opt<S: serde::Serializer>(value: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => hex(v, serializer),
        None => serializer.serialize_none(),
    }
}

/// The bytes of a NUL-terminated (or NUL-padded) C string, as text (lossy).
pub(crate) fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// In-memory dumps for the unit tests of the analysis modules.
#[cfg(test)]
pub(crate) mod test_image {
    use crate::image::{DumpImage, OwnedNote, ReadError};

    /// Physical memory from address 0, and notes.
    pub(crate) struct TestImage {
        pub(crate) memory: Vec<u8>,
        pub(crate) notes: Vec<OwnedNote>,
    }

    impl TestImage {
        /// `len` bytes of zeroed memory and a VMCOREINFO note with `vmcoreinfo`.
        pub(crate) fn new(len: usize, vmcoreinfo: &str) -> Self {
            let note = OwnedNote { name: b"VMCOREINFO".to_vec(), n_type: 0, desc: vmcoreinfo.as_bytes().to_vec() };
            Self { memory: vec![0; len], notes: vec![note] }
        }

        /// Writes `bytes` at physical `paddr`.
        pub(crate) fn write(&mut self, paddr: u64, bytes: &[u8]) {
            let at = paddr as usize;
            self.memory[at..at + bytes.len()].copy_from_slice(bytes);
        }

        /// Writes a `u64` at physical `paddr`.
        pub(crate) fn write_u64(&mut self, paddr: u64, value: u64) {
            self.write(paddr, &value.to_le_bytes());
        }
    }

    impl DumpImage for TestImage {
        fn notes(&self) -> &[OwnedNote] {
            &self.notes
        }

        fn read_piece(&self, paddr: u64, buf: &mut [u8]) -> Result<usize, ReadError> {
            let at = usize::try_from(paddr).ok().filter(|&at| at < self.memory.len());
            let bytes = &self.memory[at.ok_or(ReadError::NotInDump { paddr })?..];
            let len = buf.len().min(bytes.len());
            buf[..len].copy_from_slice(&bytes[..len]);
            Ok(len)
        }

        fn phys_end(&self) -> u64 {
            self.memory.len() as u64
        }
    }
}
