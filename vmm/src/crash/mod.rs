//! Where this VMM's vmcores go: one crash sink, the policy that starts host-side dumps, and the
//! one writer that turns guest memory into a vmcore file.
//!
//! Two producers make vmcores: the dump device (`devices::dump`: a capture kernel hands over its
//! `/proc/vmcore`) and the host-side snapshot (`snapshot`: the VMM dumps its guest). Each hands
//! the [`sink`] a job — trigger, crash reason, and a [`Producer`] that writes its [`Output`] from
//! a source of guest memory — and the sink, on its own thread, owns everything else: the crash
//! store, the hidden temporary crash, the logs, `meta.json`, the atomic commit, retention, and
//! the events clients see. No vCPU thread waits on a disk. The [`policy`] decides when the host
//! dumps (pvpanic, operators). A VM may have a [`collector`] (kdump.conf's `core_collector`):
//! then the sink has that program write a hand-off's vmcore from its ELF [`ProcVmcore`], and
//! the producer's own writer only when the program fails.

pub mod collector;
pub mod fork;
pub mod policy;
pub mod ram;
pub mod sink;

use std::fs::File;
use std::path::PathBuf;

use dumpd::elf::build::{CoreLayout, LoadSpec, NoteSpec};
use dumpd::error_chain;
use dumpd::kdump::free_pages::FreePages;
use dumpd::kdump::{write_kdump, Compression, KdumpInput, KdumpOptions};
use dumpd::store::Retention;
use dumpd::writer::{write_vmcore, MemorySource};
use vm_memory::GuestMemoryMmap;

use self::collector::CoreCollector;

pub use self::ram::GuestRam;
pub use self::sink::{CaptureError, CrashSink, Logs, Producer, SinkThread, VmcoreFile, Writing};

/// Where this VM's crashes go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpTarget {
    /// The crash store directory (created on the first crash).
    pub crash_dir: PathBuf,
    /// The VM's name in the store.
    pub vm_name: String,
    /// What the store keeps: older crashes go after each commit.
    pub retention: Retention,
    /// The program that turns a capture kernel's `/proc/vmcore` into the stored vmcore
    /// (kdump.conf's `core_collector`); the producer's own writer when `None` or when it fails.
    pub core_collector: Option<CoreCollector>,
}

/// A crashed kernel's `/proc/vmcore` as a capture kernel hands it over: the ELF file `core`
/// lays out, its memory read from `memory`. What a core collector reads.
#[derive(Clone, Copy)]
pub struct ProcVmcore<'a> {
    /// The file's layout: headers, then runs of memory at their file offsets.
    pub core: &'a CoreLayout,
    /// The guest memory the runs are in.
    pub memory: &'a GuestMemoryMmap,
}

/// A vmcore's layout: what the file holds and where each piece of memory goes.
pub enum Output<'a> {
    /// An ELF core file laid out as `CoreLayout` says.
    Elf(&'a CoreLayout),
    /// makedumpfile's kdump-compressed format of these notes and loads: zero pages stored once,
    /// and those of the guest's free pages that are zero left out when its VMCOREINFO locates
    /// them (so every byte of memory is kept, and untouched memory costs nothing).
    Kdump {
        /// The notes.
        notes: &'a [NoteSpec<'a>],
        /// The memory.
        loads: &'a [LoadSpec],
        /// Page compression.
        compression: Compression,
    },
}

/// What writing a vmcore did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmcoreStats {
    /// The file's length (holes included).
    pub file_bytes: u64,
    /// Bytes actually written.
    pub written_bytes: u64,
    /// Zero pages left out (holes, or not stored).
    pub zero_pages_skipped: u64,
}

/// makedumpfile's dump level 1: zero pages are stored once in kdump-compressed files.
const DUMP_LEVEL_ZERO: u32 = 1;
/// makedumpfile's dump level 17: free pages may be left out too (here: the zero ones).
const DUMP_LEVEL_ZERO_FREE: u32 = 17;

/// Writes `output` from `source` into `file` (not synced); an error is the whole error chain
/// as text, which a forked writer can hand back.
pub fn write_output(file: &File, output: &Output<'_>, source: &dyn MemorySource) -> Result<VmcoreStats, String> {
    match output {
        Output::Elf(core) => write_vmcore(file, &core.headers, &core.runs, core.file_size, source)
            .map(|s| VmcoreStats {
                file_bytes: s.apparent_bytes,
                written_bytes: s.written_bytes,
                zero_pages_skipped: s.zero_pages_skipped,
            })
            .map_err(|e| error_chain(&e)),
        Output::Kdump { notes, loads, compression } => {
            let input = KdumpInput { notes, loads, memory: source };
            let vmcoreinfo =
                notes.iter().find(|n| n.name == b"VMCOREINFO").and_then(|n| std::str::from_utf8(n.desc).ok());
            let free = vmcoreinfo.and_then(|text| FreePages::read(text, source));
            let is_free = |pfn: u64| free.as_ref().is_some_and(|f| f.is_free(pfn));
            let options = KdumpOptions {
                compression: *compression,
                dump_level: if free.is_some() { DUMP_LEVEL_ZERO_FREE } else { DUMP_LEVEL_ZERO },
                excluded: free.is_some().then_some(&is_free as &dyn Fn(u64) -> bool),
                exclude_only_zero: true,
                timestamp: std::time::SystemTime::now(),
                progress: None,
            };
            write_kdump(file, &input, &options)
                .map(|s| VmcoreStats {
                    file_bytes: s.file_bytes,
                    written_bytes: s.file_bytes,
                    zero_pages_skipped: s.pages_shared_zero,
                })
                .map_err(|e| error_chain(&e))
        }
    }
}
