//! The dump device: a capture kernel's hand-off of its vmcore (`Command::Dump`) or of why it has
//! none (`Command::DumpFailed`); see `crashvisor_abi::dump` for the contract.
//!
//! On `Dump` the device reads and validates the descriptor ([`descriptor`]), then writes the
//! crash into the store with `dumpd`: the vmcore straight from guest RAM (zero pages become
//! holes), both logs and `meta.json`, committed atomically. The issuing vCPU blocks meanwhile;
//! the capture kernel has nothing else to do. Events tell clients how it went.

pub mod descriptor;
mod ram;

pub use self::ram::GuestRam;

use std::mem::offset_of;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use crashvisor_abi::dump::{DumpFailure, DUMP_FAILURE_MAGIC, DUMP_FAILURE_MESSAGE_LEN};
use crashvisor_abi::platform::{STATUS_INVALID_ARGUMENT, STATUS_IO_ERROR, STATUS_OK};
use dumpd::error_chain;
use dumpd::store::{
    CommittedCrash, CrashFiles, CrashMeta, CrashReasonMeta, CrashSizes, CrashStore, FailureRecord, PendingCrash,
    Retention, StoreError, Trigger, FILE_KEXEC_DMESG, FILE_VMCORE, FILE_VMCORE_DMESG,
};
use dumpd::writer::{write_vmcore, Run, WriteError};
use vm_memory::GuestMemoryMmap;

use self::descriptor::{read_and_validate, read_bytes, DescriptorError, ValidDump};
use super::crash_reason::{self, CrashInfo};

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

/// Commits `pending`, then applies the target's retention (never to the crash just committed).
pub(crate) fn commit(pending: PendingCrash, target: &DumpTarget) -> Result<CommittedCrash, StoreError> {
    let (committed, pruned) = pending.commit_with_retention(&target.retention)?;
    match pruned {
        Ok(report) => {
            for crash in &report.removed {
                tracing::info!("crash store retention removed {}", crash.id);
            }
            for (id, e) in &report.failed {
                tracing::warn!("crash store retention could not remove {id}: {}", error_chain(e));
            }
        }
        Err(e) => tracing::warn!("crash store retention failed: {}", error_chain(&e)),
    }
    Ok(committed)
}

/// What the dump device reports to the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DumpEvent {
    /// A descriptor was accepted; the host is writing the vmcore.
    CaptureStarted {
        /// The dump level the capture kernel applied.
        dump_level: u32,
        /// The vmcore's apparent size.
        size: u64,
        /// Number of memory ranges.
        ranges: u64,
    },
    /// The crash directory is committed.
    VmcoreReady {
        /// The crash directory's name.
        id: String,
        /// Its path.
        path: PathBuf,
        /// The vmcore's apparent size.
        size: u64,
        /// Bytes it takes on disk.
        on_disk: u64,
    },
    /// A host-side snapshot is taken: the vCPUs ran again after `pause_us` microseconds and
    /// `total` bytes of memory are being written from a copy-on-write view of it.
    SnapshotTaken {
        /// How long the vCPUs were stopped.
        pause_us: u64,
        /// Bytes of memory to write.
        total: u64,
    },
    /// A host-side dump's progress: bytes of memory written of `total`.
    Progress {
        /// Bytes done.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// No vmcore: the descriptor was refused, writing failed, or the capture kernel gave up.
    Failed {
        /// Why.
        reason: String,
    },
}

impl DumpEvent {
    /// `VmcoreReady` for a committed crash.
    pub(crate) fn vmcore_ready(crash: CommittedCrash, sizes: &CrashSizes) -> Self {
        Self::VmcoreReady {
            id: crash.id,
            path: crash.path,
            size: sizes.vmcore_apparent_bytes,
            on_disk: sizes.vmcore_on_disk_bytes,
        }
    }
}

/// Why an accepted dump could not be stored (answered with `STATUS_IO_ERROR`).
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The crash store failed.
    #[error("the crash store failed")]
    Store(#[from] StoreError),
    /// Writing the vmcore failed.
    #[error("writing the vmcore failed")]
    Write(#[from] WriteError),
    /// Syncing or measuring the vmcore failed.
    #[error("cannot sync the vmcore")]
    Sync(#[source] std::io::Error),
    /// A log could not be read out of guest memory (it was checked: a host-side failure).
    #[error("cannot read a log from guest memory")]
    Log(#[source] DescriptorError),
}

/// A stored crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// The committed directory.
    pub crash: CommittedCrash,
    /// The vmcore's sizes.
    pub sizes: CrashSizes,
}

/// Handles `Command::Dump` with the descriptor at `gpa`: validates, writes, commits, and posts
/// events through `post`. Returns the command status.
pub fn dump(
    memory: &GuestMemoryMmap,
    target: &DumpTarget,
    gpa: u64,
    reason: Option<&CrashInfo>,
    post: &mut dyn FnMut(DumpEvent),
) -> u32 {
    let valid = match read_and_validate(memory, gpa) {
        Ok(valid) => valid,
        Err(e) => {
            let reason = format!("the capture kernel's dump descriptor broke a rule: {}", error_chain(&e));
            tracing::warn!("{reason}");
            fail(target, reason, post);
            return STATUS_INVALID_ARGUMENT;
        }
    };
    for warning in &valid.warnings {
        tracing::warn!("the capture kernel's vmcore: {warning}");
    }
    let d = &valid.descriptor;
    post(DumpEvent::CaptureStarted { dump_level: d.dump_level, size: d.file_size, ranges: d.nr_ranges });
    tracing::info!(
        "capture kernel handed over a {}-byte vmcore ({} ranges, dump level {}); writing it to {}",
        d.file_size,
        d.nr_ranges,
        d.dump_level,
        target.crash_dir.display()
    );
    match capture(memory, target, &valid, reason) {
        Ok(Captured { crash, sizes }) => {
            tracing::info!(
                "vmcore ready: {} ({} bytes, {} on disk)",
                crash.path.display(),
                sizes.vmcore_apparent_bytes,
                sizes.vmcore_on_disk_bytes
            );
            post(DumpEvent::vmcore_ready(crash, &sizes));
            STATUS_OK
        }
        Err(e) => {
            let reason = format!("cannot store the vmcore in {}: {}", target.crash_dir.display(), error_chain(&e));
            tracing::error!("{reason}");
            fail(target, reason, post);
            STATUS_IO_ERROR
        }
    }
}

/// Writes an accepted dump into the store and commits it.
pub fn capture(
    memory: &GuestMemoryMmap,
    target: &DumpTarget,
    valid: &ValidDump,
    reason: Option<&CrashInfo>,
) -> Result<Captured, CaptureError> {
    let started = Instant::now();
    let d = &valid.descriptor;
    let store = CrashStore::open(&target.crash_dir)?;
    let pending = store.begin(&target.vm_name)?;
    let file = pending.create_file(FILE_VMCORE)?;
    let runs: Vec<Run> =
        valid.ranges.iter().map(|r| Run { file_offset: r.file_offset, addr: r.gpa, len: r.len }).collect();
    let stats = write_vmcore(&file, &valid.headers, &runs, d.file_size, &GuestRam::new(memory))?;
    // Synced now so the block count is final (commit syncs again, at no cost).
    file.sync_all().map_err(CaptureError::Sync)?;
    let on_disk = file.metadata().map_err(CaptureError::Sync)?.blocks() * 512;
    drop(file);
    let logs = [
        (FILE_VMCORE_DMESG, "vmcore-dmesg log", d.vmcore_dmesg_gpa, d.vmcore_dmesg_len),
        (FILE_KEXEC_DMESG, "kexec-dmesg log", d.kexec_dmesg_gpa, d.kexec_dmesg_len),
    ];
    for (name, what, gpa, len) in logs {
        let text = if len == 0 { Vec::new() } else { read_bytes(memory, what, gpa, len).map_err(CaptureError::Log)? };
        pending.write_file(name, &text)?;
    }
    let sizes = CrashSizes {
        vmcore_apparent_bytes: stats.apparent_bytes,
        vmcore_on_disk_bytes: on_disk,
        vmcore_written_bytes: stats.written_bytes,
        zero_pages_skipped: stats.zero_pages_skipped,
    };
    let mut meta = CrashMeta::new(Trigger::Kdump, &target.vm_name, pending.created());
    meta.reason = reason.map(reason_meta);
    meta.dump_level = Some(d.dump_level);
    meta.sizes = sizes;
    meta.timings.capture_kernel_ns = Some(d.capture_ns);
    meta.timings.host_write_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    meta.files = CrashFiles {
        vmcore: FILE_VMCORE.into(),
        vmcore_dmesg: Some(FILE_VMCORE_DMESG.into()),
        kexec_dmesg: Some(FILE_KEXEC_DMESG.into()),
    };
    pending.write_meta(&meta)?;
    Ok(Captured { crash: commit(pending, target)?, sizes })
}

/// Why a capture kernel's failure report could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailureReportError {
    /// Not in guest RAM.
    #[error("the failure report at {0:#x} is not in guest RAM")]
    OutOfRam(u64),
    /// Wrong magic.
    #[error("the failure report has magic {0:#x}, expected {DUMP_FAILURE_MAGIC:#x}")]
    Magic(u64),
    /// Message length beyond the array.
    #[error("the failure report's message is {0} bytes, longer than {DUMP_FAILURE_MESSAGE_LEN}")]
    MessageLen(u64),
}

/// Reads the `DumpFailure` at `gpa` and returns its message.
pub fn read_failure(memory: &GuestMemoryMmap, gpa: u64) -> Result<String, FailureReportError> {
    let size = std::mem::size_of::<DumpFailure>() as u64;
    let bytes = read_bytes(memory, "failure report", gpa, size).map_err(|_| FailureReportError::OutOfRam(gpa))?;
    let u64_at = |at: usize| crashvisor_klib::le::u64_at(&bytes, at);
    let magic = u64_at(offset_of!(DumpFailure, magic));
    if magic != DUMP_FAILURE_MAGIC {
        return Err(FailureReportError::Magic(magic));
    }
    let len = u64_at(offset_of!(DumpFailure, message_len));
    if len > DUMP_FAILURE_MESSAGE_LEN as u64 {
        return Err(FailureReportError::MessageLen(len));
    }
    let at = offset_of!(DumpFailure, message);
    Ok(crash_reason::text(&bytes[at..at + len as usize]))
}

/// Handles `Command::DumpFailed` with the report at `gpa`: logs it, records it in the store's
/// failure log and posts `Failed`. `STATUS_OK`, or `STATUS_INVALID_ARGUMENT` for an unreadable
/// report (still reported as a failure).
pub fn dump_failed(memory: &GuestMemoryMmap, target: &DumpTarget, gpa: u64, post: &mut dyn FnMut(DumpEvent)) -> u32 {
    let (reason, status) = match read_failure(memory, gpa) {
        Ok(message) => (format!("the capture kernel could not produce a vmcore: {message}"), STATUS_OK),
        Err(e) => {
            (format!("the capture kernel failed and its failure report is unreadable: {e}"), STATUS_INVALID_ARGUMENT)
        }
    };
    tracing::warn!("{reason}");
    fail(target, reason, post);
    status
}

/// Records a failed kdump capture in the store's failure log and posts `Failed`.
fn fail(target: &DumpTarget, reason: String, post: &mut dyn FnMut(DumpEvent)) {
    record_failure(target, Trigger::Kdump, reason, post);
}

/// Records a failed capture in the store's failure log and posts `Failed`.
pub(crate) fn record_failure(target: &DumpTarget, trigger: Trigger, reason: String, post: &mut dyn FnMut(DumpEvent)) {
    let record = FailureRecord::new(&target.vm_name, trigger, reason, SystemTime::now());
    if let Err(e) = CrashStore::open(&target.crash_dir).and_then(|store| store.record_failure(&record)) {
        tracing::warn!("cannot record the failed capture: {}", error_chain(&e));
    }
    post(DumpEvent::Failed { reason: record.reason });
}

pub(crate) fn reason_meta(info: &CrashInfo) -> CrashReasonMeta {
    CrashReasonMeta {
        detector: info.detector.as_str().into(),
        cpu: info.cpu,
        pid: info.pid,
        comm: info.comm.clone(),
        message: info.message.clone(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::descriptor::{descriptor_bytes, range_bytes};
    use super::*;
    use crashvisor_abi::dump::{DumpDescriptor, DumpRange, DUMP_LEVEL_ALL, DUMP_MAGIC, DUMP_VERSION};
    use crashvisor_abi::layout::PAGE_OFFSET;
    use crashvisor_abi::platform::Detector;
    use crashvisor_klib::elfnote::{NT_PRSTATUS, PRSTATUS_SIZE};
    use dumpd::elf::build::{layout, LoadSpec, NoteSpec};
    use dumpd::elf::Core;
    use std::path::Path;
    use vm_memory::{Bytes, GuestAddress};

    /// Guest RAM of the fixture.
    pub(crate) const RAM_SIZE: usize = 16 << 20;
    /// Where the fixture's capture kernel keeps its descriptor.
    pub(crate) const DESCRIPTOR_GPA: u64 = 0x80_0000;
    const RANGES_GPA: u64 = 0x80_1000;
    const HEADERS_GPA: u64 = 0x81_0000;
    const VMCORE_DMESG_GPA: u64 = 0x90_0000;
    const KEXEC_DMESG_GPA: u64 = 0x91_0000;
    const VMCORE_DMESG: &[u8] = b"[    0.000000] Linux version 6.0.0-crashvisor\n[   12.345678] Kernel panic - not syncing: sysrq triggered crash\n";
    const KEXEC_DMESG: &[u8] = b"[    0.000000] crashvisor capture kernel\n";

    /// A crashed guest as its capture kernel leaves it: RAM with content, and the pieces of a
    /// hand-off (descriptor, headers, ranges, logs) to install into it.
    pub(crate) struct Guest {
        pub memory: GuestMemoryMmap,
        pub descriptor: DumpDescriptor,
        pub headers: Vec<u8>,
        pub ranges: Vec<DumpRange>,
    }

    impl Guest {
        /// Writes descriptor, ranges, headers and logs into guest RAM.
        pub(crate) fn install(&self) {
            let write = |bytes: &[u8], gpa: u64| self.memory.write_slice(bytes, GuestAddress(gpa)).unwrap();
            write(&descriptor_bytes(&self.descriptor), DESCRIPTOR_GPA);
            write(&range_bytes(&self.ranges), RANGES_GPA);
            write(&self.headers, HEADERS_GPA);
            write(VMCORE_DMESG, VMCORE_DMESG_GPA);
            write(KEXEC_DMESG, KEXEC_DMESG_GPA);
        }

        /// The vmcore the host must write, byte for byte.
        pub(crate) fn expected_vmcore(&self) -> Vec<u8> {
            let mut file = vec![0u8; self.descriptor.file_size as usize];
            file[..self.headers.len()].copy_from_slice(&self.headers);
            for r in &self.ranges {
                let at = r.file_offset as usize..(r.file_offset + r.len) as usize;
                self.memory.read_slice(&mut file[at], GuestAddress(r.gpa)).unwrap();
            }
            file
        }
    }

    /// A well-formed hand-off: two CPU notes and VMCOREINFO; two PT_LOADs (both end mid-page);
    /// three ranges, the first PT_LOAD split around "free" pages the dump level left
    /// out. RAM holds a pattern on every third page and is zero elsewhere.
    pub(crate) fn guest() -> Guest {
        guest_with_notes(true)
    }

    /// Like [`guest`], with or without the VMCOREINFO note.
    pub(crate) fn guest_with_notes(vmcoreinfo: bool) -> Guest {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM_SIZE)]).unwrap();
        for page in (0x100..0x510u64).step_by(3) {
            let pattern: Vec<u8> = (0..4096u64).map(|i| (page + i) as u8 | 1).collect();
            memory.write_slice(&pattern, GuestAddress(page * 4096)).unwrap();
        }
        let mut prstatus = [[0u8; PRSTATUS_SIZE]; 2];
        for (cpu, note) in prstatus.iter_mut().enumerate() {
            note[32..36].copy_from_slice(&(cpu as u32 + 1).to_le_bytes()); // pr_pid
            note[240..248].copy_from_slice(&0xffff_ffff_8100_1234u64.to_le_bytes());
            // rip
        }
        let mut notes = vec![
            NoteSpec { name: b"CORE", n_type: NT_PRSTATUS, desc: &prstatus[0] },
            NoteSpec { name: b"CORE", n_type: NT_PRSTATUS, desc: &prstatus[1] },
        ];
        if vmcoreinfo {
            notes.push(NoteSpec {
                name: b"VMCOREINFO",
                n_type: 0,
                desc: b"OSRELEASE=6.0.0-crashvisor\nPAGESIZE=4096\n",
            });
        }
        let loads = [
            LoadSpec { vaddr: PAGE_OFFSET + 0x10_0000, paddr: 0x10_0000, len: 0x1f_f800 },
            LoadSpec { vaddr: PAGE_OFFSET + 0x40_0000, paddr: 0x40_0000, len: 0x10_0800 },
        ];
        let core = layout(&notes, &loads).unwrap();
        let [first, second] = [core.runs[0], core.runs[1]];
        let ranges = vec![
            DumpRange { file_offset: first.file_offset, gpa: first.addr, len: 0x8000 },
            DumpRange {
                file_offset: first.file_offset + 0x1_0000,
                gpa: first.addr + 0x1_0000,
                len: first.len - 0x1_0000,
            },
            DumpRange { file_offset: second.file_offset, gpa: second.addr, len: second.len },
        ];
        let descriptor = DumpDescriptor {
            magic: DUMP_MAGIC,
            version: DUMP_VERSION,
            dump_level: DUMP_LEVEL_ALL,
            headers_gpa: HEADERS_GPA,
            headers_len: core.headers.len() as u64,
            ranges_gpa: RANGES_GPA,
            nr_ranges: ranges.len() as u64,
            file_size: core.file_size,
            vmcore_dmesg_gpa: VMCORE_DMESG_GPA,
            vmcore_dmesg_len: VMCORE_DMESG.len() as u64,
            kexec_dmesg_gpa: KEXEC_DMESG_GPA,
            kexec_dmesg_len: KEXEC_DMESG.len() as u64,
            capture_ns: 123_456_789,
            reserved: 0,
        };
        Guest { memory, descriptor, headers: core.headers, ranges }
    }

    /// A scratch crash store, removed when dropped.
    pub(crate) struct TestDir(pub PathBuf);

    impl TestDir {
        pub(crate) fn new(name: &str) -> Self {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("vmm-test-{name}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            Self(path)
        }

        pub(crate) fn target(&self) -> DumpTarget {
            DumpTarget { crash_dir: self.0.clone(), vm_name: "testvm".into(), retention: Retention::default() }
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn sysrq_reason() -> CrashInfo {
        CrashInfo {
            detector: Detector::Sysrq,
            cpu: 1,
            pid: 7,
            comm: "sh".into(),
            message: "sysrq triggered crash".into(),
        }
    }

    /// Checks a committed crash directory against the guest it came from.
    pub(crate) fn assert_crash_matches(dir: &Path, g: &Guest) {
        let vmcore = std::fs::read(dir.join(FILE_VMCORE)).unwrap();
        assert_eq!(vmcore.len() as u64, g.descriptor.file_size);
        assert!(vmcore == g.expected_vmcore(), "the vmcore differs from guest memory");
        assert_eq!(std::fs::read(dir.join(FILE_VMCORE_DMESG)).unwrap(), VMCORE_DMESG);
        assert_eq!(std::fs::read(dir.join(FILE_KEXEC_DMESG)).unwrap(), KEXEC_DMESG);
        let core = Core::parse(&vmcore[..g.headers.len()]).unwrap();
        core.check_file_len(vmcore.len() as u64).unwrap();
        assert_eq!(core.notes().iter().filter(|n| n.is_prstatus()).count(), 2);
    }

    #[test]
    fn a_dump_command_commits_a_byte_exact_crash() {
        let store = TestDir::new("dump");
        let g = guest();
        g.install();
        let mut events = Vec::new();
        let reason = sysrq_reason();
        let status = dump(&g.memory, &store.target(), DESCRIPTOR_GPA, Some(&reason), &mut |e| events.push(e));
        assert_eq!(status, STATUS_OK, "{events:?}");

        let crashes = CrashStore::open(&store.0).unwrap().list().unwrap();
        assert_eq!(crashes.len(), 1);
        let crash = &crashes[0];
        assert!(crash.id.starts_with("testvm-"), "{}", crash.id);
        assert_crash_matches(&crash.path, &g);

        let meta = crash.meta.as_ref().expect("meta.json");
        assert_eq!(meta.trigger, Trigger::Kdump);
        assert_eq!(meta.vm, "testvm");
        assert_eq!(meta.dump_level, Some(DUMP_LEVEL_ALL));
        assert_eq!(meta.reason.as_ref().unwrap().detector, "sysrq");
        assert_eq!(meta.reason.as_ref().unwrap().message, "sysrq triggered crash");
        assert_eq!(meta.timings.capture_kernel_ns, Some(123_456_789));
        assert_eq!(meta.sizes.vmcore_apparent_bytes, g.descriptor.file_size);
        assert!(meta.sizes.zero_pages_skipped > 0);
        assert!(meta.sizes.vmcore_on_disk_bytes < meta.sizes.vmcore_apparent_bytes, "{:?}", meta.sizes);
        assert_eq!(meta.files.kexec_dmesg.as_deref(), Some(FILE_KEXEC_DMESG));

        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(
            events[0],
            DumpEvent::CaptureStarted { dump_level: DUMP_LEVEL_ALL, size: g.descriptor.file_size, ranges: 3 }
        );
        assert_eq!(
            events[1],
            DumpEvent::VmcoreReady {
                id: crash.id.clone(),
                path: crash.path.clone(),
                size: g.descriptor.file_size,
                on_disk: meta.sizes.vmcore_on_disk_bytes
            }
        );
    }

    #[test]
    fn a_bad_descriptor_is_refused_and_recorded() {
        let store = TestDir::new("dump-bad");
        let mut g = guest();
        g.descriptor.magic = 0;
        g.install();
        let mut events = Vec::new();
        let status = dump(&g.memory, &store.target(), DESCRIPTOR_GPA, None, &mut |e| events.push(e));
        assert_eq!(status, STATUS_INVALID_ARGUMENT);
        let [DumpEvent::Failed { reason }] = events.as_slice() else { panic!("{events:?}") };
        assert!(reason.contains("magic"), "{reason}");
        let store = CrashStore::open(&store.0).unwrap();
        assert!(store.list().unwrap().is_empty());
        assert_eq!(store.failures().unwrap()[0].reason, *reason);
    }

    #[test]
    fn a_store_that_cannot_be_written_is_an_io_error() {
        let dir = TestDir::new("dump-io");
        std::fs::create_dir_all(&dir.0).unwrap();
        // The crash store's path is a file: nothing can be created under it.
        let blocked = dir.0.join("not-a-dir");
        std::fs::write(&blocked, b"").unwrap();
        let target = DumpTarget { crash_dir: blocked, vm_name: "vm".into(), retention: Retention::default() };
        let g = guest();
        g.install();
        let mut events = Vec::new();
        let status = dump(&g.memory, &target, DESCRIPTOR_GPA, None, &mut |e| events.push(e));
        assert_eq!(status, STATUS_IO_ERROR);
        assert!(matches!(events[0], DumpEvent::CaptureStarted { .. }));
        let DumpEvent::Failed { reason } = &events[1] else { panic!("{events:?}") };
        assert!(reason.contains("cannot store the vmcore"), "{reason}");
    }

    #[test]
    fn failure_reports_are_read_and_checked() {
        let store = TestDir::new("dump-failed");
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let report = DumpFailure::new(b"no elfcorehdr= on the command line");
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&report.magic.to_le_bytes());
        bytes.extend_from_slice(&report.message_len.to_le_bytes());
        bytes.extend_from_slice(&report.message);
        memory.write_slice(&bytes, GuestAddress(0x1000)).unwrap();
        assert_eq!(read_failure(&memory, 0x1000).unwrap(), "no elfcorehdr= on the command line");
        assert_eq!(read_failure(&memory, 0x2000), Err(FailureReportError::Magic(0)));
        assert_eq!(read_failure(&memory, 0xff00), Err(FailureReportError::OutOfRam(0xff00)));
        memory.write_slice(&300u64.to_le_bytes(), GuestAddress(0x1008)).unwrap();
        assert_eq!(read_failure(&memory, 0x1000), Err(FailureReportError::MessageLen(300)));
        memory.write_slice(&report.message_len.to_le_bytes(), GuestAddress(0x1008)).unwrap();

        let mut events = Vec::new();
        assert_eq!(dump_failed(&memory, &store.target(), 0x1000, &mut |e| events.push(e)), STATUS_OK);
        assert_eq!(dump_failed(&memory, &store.target(), 0x2000, &mut |e| events.push(e)), STATUS_INVALID_ARGUMENT);
        let reasons: Vec<_> = events
            .iter()
            .map(|e| match e {
                DumpEvent::Failed { reason } => reason.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(reasons[0], "the capture kernel could not produce a vmcore: no elfcorehdr= on the command line");
        assert!(reasons[1].contains("unreadable"));
        assert_eq!(CrashStore::open(&store.0).unwrap().failures().unwrap().len(), 2);
    }
}
