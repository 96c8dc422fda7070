//! Where this VMM's vmcores go: one crash sink, the policy that starts host-side dumps, and the
//! one writer that turns guest memory into a vmcore file.
//!
//! Two producers make vmcores: the dump device (`devices::dump`: a capture kernel hands over its
//! `/proc/vmcore`) and the host-side snapshot (`snapshot`: the VMM dumps its guest). Each hands
//! the [`sink`] a job — trigger, crash reason, and a [`Producer`] that writes its [`Output`] from
//! a source of guest memory — and the sink, on its own thread, owns everything else: the crash
//! store, the hidden temporary crash, the logs, `meta.json`, the atomic commit, retention, and
//! the events clients see. No vCPU thread waits on a disk. The [`policy`] decides when the host
//! dumps (pvpanic, operators).

pub mod fork;
pub mod policy;
pub mod ram;
pub mod sink;

use std::fs::File;
use std::path::PathBuf;

use dumpd::elf::build::{CoreLayout, LoadSpec, NoteSpec};
use dumpd::error_chain;
use dumpd::kdump::{write_kdump, Compression, KdumpInput, KdumpOptions};
use dumpd::store::Retention;
use dumpd::writer::{write_vmcore, MemorySource};

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
}

/// A vmcore's layout: what the file holds and where each piece of memory goes.
pub enum Output<'a> {
    /// An ELF core file laid out as `CoreLayout` says.
    Elf(&'a CoreLayout),
    /// makedumpfile's kdump-compressed format of these notes and loads, zero pages left out.
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

/// makedumpfile's dump level bit 1: zero pages are left out of kdump-compressed files.
const DUMP_LEVEL_ZERO: u32 = 1;

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
            let options = KdumpOptions {
                compression: *compression,
                dump_level: DUMP_LEVEL_ZERO,
                free_pages: None,
                timestamp: std::time::SystemTime::now(),
                progress: None,
            };
            write_kdump(file, &input, &options)
                .map(|s| VmcoreStats {
                    file_bytes: s.file_bytes,
                    written_bytes: s.file_bytes,
                    zero_pages_skipped: s.zero_pages_excluded,
                })
                .map_err(|e| error_chain(&e))
        }
    }
}
