//! The dump device: a capture kernel's hand-off of its vmcore (`Command::Dump`) or of why it has
//! none (`Command::DumpFailed`); see `crashvisor_abi::dump` for the contract.
//!
//! On `Dump` the device reads and validates the descriptor ([`descriptor`]) and hands the crash
//! sink a [`Handoff`]: the vmcore's layout, straight from guest RAM (zero pages become holes),
//! and both logs; the same layout is the `/proc/vmcore` a core collector reads, when the VM has
//! one. The issuing vCPU stays out of the guest until the sink has committed the crash
//! (parked, so the VMM can still pause or stop it); the status it then reads says how it went.
//! The capture kernel has nothing else to do meanwhile.

pub mod descriptor;

use std::mem::offset_of;

use crashvisor_abi::dump::{DumpDescriptor, DumpFailure, DUMP_FAILURE_MAGIC, DUMP_FAILURE_MESSAGE_LEN};
use crashvisor_abi::platform::{STATUS_INVALID_ARGUMENT, STATUS_IO_ERROR, STATUS_OK};
use dumpd::elf::build::CoreLayout;
use dumpd::error_chain;
use dumpd::store::{CrashMeta, Trigger};
use dumpd::writer::Run;
use vm_memory::GuestMemoryMmap;

use self::descriptor::{read_and_validate, read_bytes};
use super::crash_reason::{self, CrashInfo};
use crate::crash::{
    write_output, CaptureError, CrashSink, GuestRam, Logs, Output, ProcVmcore, Producer, VmcoreFile, Writing,
};
use crashvisor_control::Event;

/// Where the platform device takes the status of a hand-off the sink finished.
pub type Reply = Box<dyn FnOnce(u32) + Send>;

/// A capture kernel's accepted hand-off, for the crash sink.
pub struct Handoff {
    memory: GuestMemoryMmap,
    descriptor: DumpDescriptor,
    core: CoreLayout,
    reply: Reply,
}

impl Producer for Handoff {
    fn describe(&self, meta: &mut CrashMeta) {
        meta.dump_level = Some(self.descriptor.dump_level);
        meta.timings.capture_kernel_ns = Some(self.descriptor.capture_ns);
    }

    fn started(&self) -> Option<Event> {
        let d = &self.descriptor;
        Some(Event::CaptureStarted { dump_level: d.dump_level, size: d.file_size, ranges: d.nr_ranges })
    }

    fn proc_vmcore(&self) -> Option<ProcVmcore<'_>> {
        Some(ProcVmcore { core: &self.core, memory: &self.memory })
    }

    fn start(&mut self, vmcore: &VmcoreFile<'_>) -> Result<Writing, CaptureError> {
        let stats = write_output(vmcore.file, &Output::Elf(&self.core), &GuestRam::new(&self.memory))
            .map_err(CaptureError::Write)?;
        Ok(Writing::Done(stats))
    }

    fn logs(&mut self) -> Result<Logs, CaptureError> {
        let d = &self.descriptor;
        let read = |what, gpa, len| match len {
            0 => Ok(Vec::new()),
            len => read_bytes(&self.memory, what, gpa, len).map_err(|e| CaptureError::Log(Box::new(e))),
        };
        Ok(Logs {
            vmcore_dmesg: Some(read("vmcore-dmesg log", d.vmcore_dmesg_gpa, d.vmcore_dmesg_len)?),
            kexec_dmesg: Some(read("kexec-dmesg log", d.kexec_dmesg_gpa, d.kexec_dmesg_len)?),
        })
    }

    fn finish(self: Box<Self>, committed: bool) {
        (self.reply)(if committed { STATUS_OK } else { STATUS_IO_ERROR });
    }
}

/// Handles `Command::Dump` with the descriptor at `gpa`: validates it and hands the crash to
/// `sink` (which posts `capture_started` once the crash is begun in the store); the sink answers through `reply` once the
/// crash is stored (`None` is returned). A descriptor that breaks a rule is refused at once:
/// `reply` is dropped, the failure recorded, and `Some(STATUS_INVALID_ARGUMENT)` returned.
pub fn dump(
    memory: &GuestMemoryMmap,
    sink: &CrashSink,
    gpa: u64,
    reason: Option<CrashInfo>,
    reply: Reply,
    post: &mut dyn FnMut(Event),
) -> Option<u32> {
    let valid = match read_and_validate(memory, gpa) {
        Ok(valid) => valid,
        Err(e) => {
            let reason = format!("the capture kernel's dump descriptor broke a rule: {}", error_chain(&e));
            tracing::warn!("{reason}");
            sink.record_failure(Trigger::Kdump, reason);
            return Some(STATUS_INVALID_ARGUMENT);
        }
    };
    for warning in &valid.warnings {
        tracing::warn!("the capture kernel's vmcore: {warning}");
    }
    let d = valid.descriptor;
    tracing::info!(
        "capture kernel handed over a {}-byte vmcore ({} ranges, dump level {}); writing it",
        d.file_size,
        d.nr_ranges,
        d.dump_level,
    );
    let runs = valid.ranges.iter().map(|r| Run { file_offset: r.file_offset, addr: r.gpa, len: r.len }).collect();
    let core = CoreLayout { headers: valid.headers, runs, file_size: d.file_size };
    let handoff = Handoff { memory: memory.clone(), descriptor: d, core, reply };
    if !sink.submit(Trigger::Kdump, reason, Box::new(handoff)) {
        // The hand-off was dropped: the vCPU reads STATUS_IO_ERROR; clients must not wait.
        post(Event::DumpFailed { reason: "the crash sink takes no more jobs; the vmcore was not stored".into() });
    }
    None
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

/// Handles `Command::DumpFailed` with the report at `gpa`: logs it and has the sink record it
/// (`failures.jsonl`, `dump_failed`). `STATUS_OK`, or `STATUS_INVALID_ARGUMENT` for an
/// unreadable report (still recorded as a failure).
pub fn dump_failed(memory: &GuestMemoryMmap, sink: &CrashSink, gpa: u64) -> u32 {
    let (reason, status) = match read_failure(memory, gpa) {
        Ok(message) => (format!("the capture kernel could not produce a vmcore: {message}"), STATUS_OK),
        Err(e) => {
            (format!("the capture kernel failed and its failure report is unreadable: {e}"), STATUS_INVALID_ARGUMENT)
        }
    };
    tracing::warn!("{reason}");
    sink.record_failure(Trigger::Kdump, reason);
    status
}

#[cfg(test)]
pub(crate) mod tests {
    use super::descriptor::{descriptor_bytes, range_bytes};
    use super::*;
    use crate::control::{ControlInput, Inbox};
    use crate::crash::{DumpTarget, SinkThread};
    use crashvisor_abi::dump::{DumpRange, DUMP_LEVEL_ALL, DUMP_MAGIC, DUMP_VERSION};
    use crashvisor_abi::layout::PAGE_OFFSET;
    use crashvisor_abi::platform::Detector;
    use crashvisor_klib::elfnote::{NT_PRSTATUS, PRSTATUS_SIZE};
    use dumpd::elf::build::{layout, LoadSpec, NoteSpec};
    use dumpd::elf::Core;
    use dumpd::store::{CrashStore, Retention, FILE_KEXEC_DMESG, FILE_VMCORE, FILE_VMCORE_DMESG};
    use std::path::{Path, PathBuf};
    use std::sync::mpsc::Receiver;
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
            DumpTarget {
                crash_dir: self.0.clone(),
                vm_name: "testvm".into(),
                retention: Retention::default(),
                core_collector: None,
            }
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

    /// The events clients would see, in order.
    pub(crate) fn events(inputs: &Receiver<ControlInput>) -> Vec<Event> {
        inputs
            .try_iter()
            .filter_map(|input| match input {
                ControlInput::Event(event) => Some(event),
                _ => None,
            })
            .collect()
    }

    /// Runs `Command::Dump` as the platform device does, through a crash sink writing into
    /// `target`: the status the vCPU reads once the sink is done, and the events clients see.
    pub(crate) fn run_dump(
        memory: &GuestMemoryMmap,
        target: DumpTarget,
        reason: Option<CrashInfo>,
    ) -> (u32, Vec<Event>) {
        let (inbox, inputs) = Inbox::channel();
        let sink = SinkThread::start(target, inbox.clone()).unwrap();
        let (reply, replied) = std::sync::mpsc::channel();
        let reply = Box::new(move |status| reply.send(status).unwrap());
        let post = &mut |event| assert!(inbox.try_post(ControlInput::Event(event)));
        let now = dump(memory, &sink.sink(), DESCRIPTOR_GPA, reason, reply, post);
        // Dropping the sink's thread lets its jobs finish.
        drop(sink);
        (now.unwrap_or_else(|| replied.try_recv().expect("the sink answered")), events(&inputs))
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
        let (status, events) = run_dump(&g.memory, store.target(), Some(sysrq_reason()));
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
            Event::CaptureStarted { dump_level: DUMP_LEVEL_ALL, size: g.descriptor.file_size, ranges: 3 }
        );
        assert_eq!(
            events[1],
            Event::VmcoreReady {
                id: crash.id.clone(),
                path: crash.path.display().to_string(),
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
        let (status, events) = run_dump(&g.memory, store.target(), None);
        assert_eq!(status, STATUS_INVALID_ARGUMENT);
        let [Event::DumpFailed { reason }] = events.as_slice() else { panic!("{events:?}") };
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
        let target = DumpTarget {
            crash_dir: blocked,
            vm_name: "vm".into(),
            retention: Retention::default(),
            core_collector: None,
        };
        let g = guest();
        g.install();
        let (status, events) = run_dump(&g.memory, target, None);
        assert_eq!(status, STATUS_IO_ERROR);
        // Nothing was begun in the store, so the capture never started.
        let [Event::DumpFailed { reason }] = events.as_slice() else { panic!("{events:?}") };
        assert!(reason.contains("cannot store the vmcore"), "{reason}");
    }

    #[test]
    fn a_hand_off_the_sink_cannot_take_fails_at_once() {
        let store = TestDir::new("dump-stopped");
        let g = guest();
        g.install();
        let (inbox, inputs) = Inbox::channel();
        let sink = SinkThread::start(store.target(), inbox.clone()).unwrap().sink();
        let (reply, replied) = std::sync::mpsc::channel::<u32>();
        let reply = Box::new(move |status| reply.send(status).unwrap());
        let post = &mut |event| assert!(inbox.try_post(ControlInput::Event(event)));
        assert_eq!(dump(&g.memory, &sink, DESCRIPTOR_GPA, None, reply, post), None);
        assert!(replied.recv().is_err(), "the reply is dropped unanswered: the vCPU reads its I/O error");
        let events = events(&inputs);
        let [Event::DumpFailed { reason }] = events.as_slice() else { panic!("{events:?}") };
        assert!(reason.contains("not stored"), "{reason}");
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

        let (inbox, inputs) = Inbox::channel();
        let sink = SinkThread::start(store.target(), inbox).unwrap();
        assert_eq!(dump_failed(&memory, &sink.sink(), 0x1000), STATUS_OK);
        assert_eq!(dump_failed(&memory, &sink.sink(), 0x2000), STATUS_INVALID_ARGUMENT);
        drop(sink);
        let events = events(&inputs);
        let reasons: Vec<_> = events
            .iter()
            .map(|e| match e {
                Event::DumpFailed { reason } => reason.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(reasons[0], "the capture kernel could not produce a vmcore: no elfcorehdr= on the command line");
        assert!(reasons[1].contains("unreadable"));
        assert_eq!(CrashStore::open(&store.0).unwrap().failures().unwrap().len(), 2);
    }
}
