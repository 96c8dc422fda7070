//! Writes a vmcore from a copy-on-write view of guest memory: a forked child process gets the
//! VMM's private guest mapping as it is at `fork()`, writes the vmcore from it, and exits,
//! while the parent resumes the guest at once. Guest writes after the fork break the sharing
//! page by page; the child keeps seeing the memory of the instant of the fork.
//!
//! The child of a multithreaded process may only do what does not need locks another thread
//! could have held at the fork: it writes through `dumpd`'s writer (plain reads, `pwrite`,
//! and glibc's malloc, which glibc makes safe across `fork`), never logs, and leaves with
//! `_exit`. It reports through a shared anonymous page: bytes done, the writer's statistics,
//! and an error message.
//!
//! A dump in flight survives its VMM. The child runs in a session of its own (no hang-up or
//! signal to the VMM's process group reaches it) and, once the vmcore is written, waits for the
//! VMM to take the crash over (`TAKEN`: the crash sink finishes it). If the VMM has died
//! instead (the child's parent changed), the child finishes the crash alone, as the sink would
//! have: logs read back from the vmcore, `meta.json`, the atomic commit and retention, or, when
//! the vmcore could not be written or committed, the temporary directory removed and the
//! failure recorded in the store. Then it exits: no writer outlives its dump. The two hand-offs
//! are one compare-and-swap on the shared page, so exactly one process finishes each crash; a
//! VMM that dies after taking it over leaves a temporary directory the next sweep removes.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dumpd::store::{CrashMeta, FailureRecord};
use vm_memory::GuestMemoryMmap;

use super::sink::{describe_failure, finish_vmcore, Logs};
use super::{write_output, GuestRam, Output, VmcoreFile, VmcoreStats};

/// Longest error message the child reports.
const MESSAGE_MAX: usize = 3000;
/// Longest wait for the child to drop the VMM's descriptors.
const DETACH_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a child whose vmcore is written looks whether the VMM took the crash over or died.
const HANDOFF_POLL: Duration = Duration::from_millis(5);

/// [`Report::state`]: the child is done writing (the outcome is in the report) and waits.
const WRITTEN: u64 = 1;
/// [`Report::state`]: the VMM finishes the crash; the child exits.
const TAKEN: u64 = 2;
/// [`Report::state`]: the VMM died; the child finishes the crash alone.
const ORPHANED: u64 = 3;

/// Closes every descriptor from 3 up except those in `keep`, which is sorted (the child's
/// first act: it allocates nothing).
fn close_other_fds(keep: &[RawFd]) {
    let close_range = |first: RawFd, last: libc::c_uint| {
        // SAFETY: close_range only closes descriptors of this (child) process.
        unsafe { libc::syscall(libc::SYS_close_range, first as libc::c_uint, last, 0) };
    };
    let mut first = 3;
    for &fd in keep {
        if fd > first {
            close_range(first, (fd - 1) as libc::c_uint);
        }
        first = first.max(fd + 1);
    }
    close_range(first, libc::c_uint::MAX);
}

/// The page the child reports through.
#[repr(C)]
struct Report {
    /// Set by the child once it holds nothing of the VMM but the memory and the file.
    detached: AtomicU64,
    /// 0 while the child writes (the page starts zeroed), then `WRITTEN`, `TAKEN` or `ORPHANED`.
    state: AtomicU64,
    done: AtomicU64,
    file_bytes: AtomicU64,
    written_bytes: AtomicU64,
    zero_pages_skipped: AtomicU64,
    message_len: AtomicU64,
    message: [u8; MESSAGE_MAX],
}

/// A `MAP_SHARED` anonymous mapping holding a [`Report`], shared with the child.
struct SharedReport {
    ptr: *mut Report,
}

// SAFETY: the mapping is only accessed through atomics and, for the message, by the child
// before it exits and by the parent after it has been reaped.
unsafe impl Send for SharedReport {}

impl SharedReport {
    fn new() -> std::io::Result<Self> {
        // SAFETY: an anonymous shared mapping of a fresh region; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                std::mem::size_of::<Report>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // Zero-filled by the kernel: every counter starts at 0.
        Ok(Self { ptr: ptr.cast() })
    }

    fn report(&self) -> &Report {
        // SAFETY: the mapping is live, page aligned, large enough and zero-initialised, which is
        // a valid `Report`; shared access goes through atomics.
        unsafe { &*self.ptr }
    }

    fn set_message(&self, text: &str) {
        let len = text.len().min(MESSAGE_MAX);
        // SAFETY: only the child writes the message, before it exits; the parent reads it after
        // reaping the child. The slice stays within the mapping.
        unsafe {
            let message = std::ptr::addr_of_mut!((*self.ptr).message).cast::<u8>();
            std::ptr::copy_nonoverlapping(text.as_ptr(), message, len);
        }
        self.report().message_len.store(len as u64, Ordering::Release);
    }

    fn message(&self) -> String {
        let len = (self.report().message_len.load(Ordering::Acquire) as usize).min(MESSAGE_MAX);
        // SAFETY: called after the child was reaped; `len` bytes of the array were written.
        let bytes = unsafe { std::slice::from_raw_parts(std::ptr::addr_of!((*self.ptr).message).cast::<u8>(), len) };
        String::from_utf8_lossy(bytes).into_owned()
    }
}

impl Drop for SharedReport {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by `new` with this size and is no longer used.
        unsafe { libc::munmap(self.ptr.cast(), std::mem::size_of::<Report>()) };
    }
}

/// A child process writing a vmcore.
pub struct ForkedWriter {
    pid: libc::pid_t,
    shared: SharedReport,
    reaped: std::sync::atomic::AtomicBool,
}

/// Why the forked writer failed.
#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    /// `fork` or the shared page failed.
    #[error("cannot start the dump writer process")]
    Start(#[source] std::io::Error),
    /// The child reported an error.
    #[error("the dump writer failed: {0}")]
    Write(String),
    /// The child died without reporting.
    #[error("the dump writer process ended abnormally (wait status {0:#x})")]
    Died(i32),
}

impl ForkedWriter {
    /// Forks a child that writes `output` from `memory` into `vmcore` and syncs it. The
    /// snapshot is the memory at the moment of this call. Should the VMM die first, the child
    /// finishes the crash with `vmcore.meta`.
    pub fn start(vmcore: &VmcoreFile<'_>, output: &Output<'_>, memory: &GuestMemoryMmap) -> Result<Self, ForkError> {
        let shared = SharedReport::new().map_err(ForkError::Start)?;
        let file = vmcore.file;
        let mut keep = [file.as_raw_fd(), vmcore.pending.lock().as_raw_fd()];
        keep.sort_unstable();
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: see the module documentation for what the child does; the parent continues
        // normally.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(ForkError::Start(std::io::Error::last_os_error()));
        }
        if pid == 0 {
            let report = shared.report();
            // Hold no descriptor of the VMM (KVM's VM and vCPUs, eventfds, sockets) but the
            // vmcore's and the crash's lock: the parent may tear the machine down and build a
            // new one at once, or die, and the crash store still sees the crash being written.
            close_other_fds(&keep);
            detach_from_vmm();
            report.detached.store(1, Ordering::Release);
            // SAFETY: this child is single-threaded and its copy of guest RAM is private: no
            // vCPU runs here, and the VMM's writes after the fork land in its own pages.
            let source = unsafe { GuestRam::frozen(memory, &report.done) };
            let result = write_output(file, output, &source)
                .and_then(|stats| file.sync_all().map(|()| stats).map_err(|e| format!("cannot sync the vmcore: {e}")));
            let code = match &result {
                Ok(stats) => {
                    report.file_bytes.store(stats.file_bytes, Ordering::Relaxed);
                    report.written_bytes.store(stats.written_bytes, Ordering::Relaxed);
                    report.zero_pages_skipped.store(stats.zero_pages_skipped, Ordering::Relaxed);
                    0
                }
                Err(message) => {
                    shared.set_message(message);
                    1
                }
            };
            report.state.store(WRITTEN, Ordering::Release);
            if wait_for_handoff(report, parent) == ORPHANED {
                finish_alone(vmcore, vmcore.meta.clone(), result);
            }
            // SAFETY: ends the child at once, without running the parent's exit handlers or
            // destructors (which belong to the parent's threads and state).
            unsafe { libc::_exit(code) }
        }
        let writer = Self { pid, shared, reaped: false.into() };
        writer.wait_detached();
        Ok(writer)
    }

    /// Waits (briefly: the child does it first thing) until the child dropped the VMM's
    /// descriptors, or has ended.
    fn wait_detached(&self) {
        let deadline = std::time::Instant::now() + DETACH_TIMEOUT;
        while self.shared.report().detached.load(Ordering::Acquire) == 0 && std::time::Instant::now() < deadline {
            std::hint::spin_loop();
        }
    }

    /// Bytes of memory read so far.
    pub fn done(&self) -> u64 {
        self.shared.report().done.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` for the child; `None` while it still runs, else how it ended.
    pub fn poll(&self, timeout: Duration) -> Option<Result<VmcoreStats, ForkError>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let state = &self.shared.report().state;
            // The vmcore is written: the VMM finishes the crash, and the child may go.
            let taken = state.compare_exchange(WRITTEN, TAKEN, Ordering::AcqRel, Ordering::Acquire).is_ok();
            let mut status = 0;
            let flags = if taken { 0 } else { libc::WNOHANG };
            // SAFETY: waits for our own child, writing its status into a local.
            let reaped = unsafe { libc::waitpid(self.pid, &mut status, flags) };
            if reaped == self.pid {
                self.reaped.store(true, Ordering::Relaxed);
                return Some(self.outcome(status));
            }
            if reaped < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    return Some(Err(ForkError::Start(e)));
                }
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn outcome(&self, status: i32) -> Result<VmcoreStats, ForkError> {
        let report = self.shared.report();
        match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
            (true, 0) => Ok(VmcoreStats {
                file_bytes: report.file_bytes.load(Ordering::Relaxed),
                written_bytes: report.written_bytes.load(Ordering::Relaxed),
                zero_pages_skipped: report.zero_pages_skipped.load(Ordering::Relaxed),
            }),
            (true, _) => Err(ForkError::Write(self.shared.message())),
            _ => Err(ForkError::Died(status)),
        }
    }
}

/// The child's first acts after dropping the VMM's descriptors: a session of its own, so that
/// neither a hang-up nor a signal to the VMM's process group ends the dump, and the default
/// action for SIGTERM, which the VMM blocks to take it on a thread of its own.
fn detach_from_vmm() {
    // SAFETY: setsid and signal are async-signal-safe and only change this (child) process.
    unsafe {
        libc::setsid();
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
    }
    crate::sigterm::unblock();
}

/// Waits until the VMM takes the written crash over (`TAKEN`) or has died (`ORPHANED`, this
/// child then owns the crash).
fn wait_for_handoff(report: &Report, parent: libc::pid_t) -> u64 {
    loop {
        let state = report.state.load(Ordering::Acquire);
        if state != WRITTEN {
            return state;
        }
        // SAFETY: getppid has no preconditions. A parent that died has been replaced by the
        // reaper this process was handed to.
        if unsafe { libc::getppid() } != parent {
            match report.state.compare_exchange(WRITTEN, ORPHANED, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return ORPHANED,
                Err(state) => return state,
            }
        }
        std::thread::sleep(HANDOFF_POLL);
    }
}

/// Finishes the crash in place of the dead VMM: commits it, or removes it and records why not.
/// Nothing is logged (see the module documentation); the store holds the outcome.
fn finish_alone(vmcore: &VmcoreFile<'_>, mut meta: CrashMeta, written: Result<VmcoreStats, String>) {
    let pending = vmcore.pending;
    let committed = written.and_then(|stats| {
        finish_vmcore(pending, vmcore.file, stats, Logs::default(), &mut meta).map_err(|e| dumpd::error_chain(&e))?;
        pending.write_meta(&meta).map_err(|e| dumpd::error_chain(&e))?;
        pending.commit_forked(vmcore.retention).map_err(|e| dumpd::error_chain(&e))
    });
    if let Err(reason) = committed {
        let what = describe_failure(meta.trigger, &pending.store().dir().display().to_string());
        let reason = format!("{what}: {reason} (finished by the dump writer after its VMM ended)");
        let record =
            FailureRecord::new(pending.vm_name(), meta.trigger, reason, std::time::SystemTime::now()).after_vmm_ended();
        // Recorded before the directory goes: a writer killed in between leaves it to a sweep,
        // which records the failure again rather than never.
        let _ = pending.store().record_failure(&record);
        pending.discard_forked();
    }
}

impl Drop for ForkedWriter {
    /// A writer given up on is killed and reaped, never left behind.
    fn drop(&mut self) {
        if !self.reaped.load(Ordering::Relaxed) {
            // SAFETY: signals and reaps our own child, which has not been reaped yet.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use dumpd::elf::build::{layout, LoadSpec};
    use dumpd::store::{CrashStore, Retention, Trigger, FILE_VMCORE};
    use vm_memory::GuestAddress;

    use super::*;
    use crate::devices::dump::tests::TestDir;

    /// Guest memory the writer cannot get through before the test stops it (all zero and never
    /// touched: it costs neither memory nor disk, and the writer is killed before it is done).
    const MEMORY: u64 = 1 << 30;
    /// Longest wait for the killed writer to end, or an orphaned one to finish.
    const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Guest memory of the orphaned writers (small: they run to the end).
    const SMALL_MEMORY: u64 = 16 << 20;

    /// Held by each test here: a process forked by one test holds copies of every descriptor
    /// of the test process for a moment, another test's crash locks among them.
    static FORKS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
        FORKS.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a writer of `SMALL_MEMORY` into `file` of `pending` from a process that exits at
    /// once, as a killed VMM would, and waits for that process.
    fn orphan_writer(pending: &dumpd::store::PendingCrash, file: &File) {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), SMALL_MEMORY as usize)]).unwrap();
        let core = layout(&[], &[LoadSpec { vaddr: 0, paddr: 0, len: SMALL_MEMORY }]).unwrap();
        let retention = Retention::default();
        let meta = CrashMeta::new(Trigger::OnDemand, pending.vm_name(), pending.created());
        let vmcore = VmcoreFile { file, pending, retention: &retention, meta: &meta };
        // SAFETY: the child forks the writer (as the VMM does) and leaves with `_exit`.
        let vmm = unsafe { libc::fork() };
        if vmm == 0 {
            let started = ForkedWriter::start(&vmcore, &Output::Elf(&core), &memory);
            let code = i32::from(started.is_err());
            // Left running, as a killed VMM leaves it (dropping it would kill it).
            std::mem::forget(started);
            // SAFETY: ends the stand-in VMM without running the test's destructors.
            unsafe { libc::_exit(code) }
        }
        assert!(vmm > 0, "fork failed");
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(vmm, &mut status, 0) }, vmm);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the writer did not start: {status:#x}");
    }

    #[test]
    fn a_writer_whose_vmm_died_commits_the_crash_alone() {
        let _serial = one_at_a_time();
        let dir = TestDir::new("fork-orphan");
        let store = CrashStore::open(&dir.0).unwrap();
        let pending = store.begin("vm").unwrap();
        let file = pending.create_file(FILE_VMCORE).unwrap();
        orphan_writer(&pending, &file);
        let deadline = std::time::Instant::now() + EXIT_TIMEOUT;
        let crash = loop {
            if let Some(crash) = store.list().unwrap().pop() {
                break crash;
            }
            assert!(std::time::Instant::now() < deadline, "the orphaned writer committed nothing");
            std::thread::sleep(Duration::from_millis(20));
        };
        let meta = crash.meta.expect("the committed crash has its meta.json");
        assert_eq!((meta.vm.as_str(), meta.trigger), ("vm", Trigger::OnDemand));
        assert!(meta.sizes.vmcore_apparent_bytes > SMALL_MEMORY, "{:?}", meta.sizes);
        assert_eq!(std::fs::metadata(crash.path.join(FILE_VMCORE)).unwrap().len(), meta.sizes.vmcore_apparent_bytes);
        assert!(!pending.path().exists() && store.failures().unwrap().is_empty());
    }

    #[test]
    fn a_writer_whose_vmm_died_records_its_failure_and_leaves_nothing() {
        let _serial = one_at_a_time();
        let dir = TestDir::new("fork-orphan-fails");
        let store = CrashStore::open(&dir.0).unwrap();
        let pending = store.begin("vm").unwrap();
        drop(pending.create_file(FILE_VMCORE).unwrap());
        // Read-only: every write of the vmcore fails.
        let file = File::open(pending.path().join(FILE_VMCORE)).unwrap();
        orphan_writer(&pending, &file);
        let deadline = std::time::Instant::now() + EXIT_TIMEOUT;
        let failure = loop {
            if let Some(failure) = store.failures().unwrap().pop() {
                break failure;
            }
            assert!(std::time::Instant::now() < deadline, "the orphaned writer recorded no failure");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!((failure.vm.as_str(), failure.trigger), ("vm", Trigger::OnDemand));
        assert!(failure.reason.contains("finished by the dump writer after its VMM ended"), "{}", failure.reason);
        assert!(!pending.path().exists(), "the failed crash's temporary directory stays");
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn a_store_opened_while_a_forked_writer_writes_leaves_its_crash_alone() {
        let _serial = one_at_a_time();
        let dir = TestDir::new("fork-sweep");
        let store = CrashStore::open(&dir.0).unwrap();
        let pending = store.begin("vm").unwrap();
        let file = pending.create_file(FILE_VMCORE).unwrap();
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY as usize)]).unwrap();
        let core = layout(&[], &[LoadSpec { vaddr: 0, paddr: 0, len: MEMORY }]).unwrap();
        let retention = Retention::default();
        let meta = CrashMeta::new(Trigger::OnDemand, "vm", pending.created());
        let vmcore = VmcoreFile { file: &file, pending: &pending, retention: &retention, meta: &meta };
        let writer = ForkedWriter::start(&vmcore, &Output::Elf(&core), &memory).unwrap();

        // Stop the writer where it is, then wait until it has stopped.
        let mut status = 0;
        // SAFETY: signals and waits for our own child, which has not been reaped.
        let stopped = unsafe {
            libc::kill(writer.pid, libc::SIGSTOP) == 0
                && libc::waitpid(writer.pid, &mut status, libc::WUNTRACED) == writer.pid
                && libc::WIFSTOPPED(status)
        };
        if !stopped {
            writer.reaped.store(true, Ordering::Relaxed);
        }
        assert!(stopped, "the writer ended before it could be stopped (wait status {status:#x})");
        assert!(writer.done() < MEMORY, "the writer had read all the memory already");

        // The VMM dies: its copy of the lock goes. This process stands in for it by pointing
        // the lock's descriptor at /dev/null; only the writer holds the lock now.
        let null = File::open("/dev/null").unwrap();
        // SAFETY: dup2 only changes what the descriptor number refers to; `pending` goes on
        // owning a valid descriptor (of /dev/null) and closes it when dropped.
        assert!(unsafe { libc::dup2(null.as_raw_fd(), pending.lock().as_raw_fd()) } >= 0);

        // A store opened now (opening sweeps) leaves the writer's crash alone.
        let reopened = CrashStore::open(&dir.0).unwrap();
        assert!(pending.path().join(FILE_VMCORE).is_file(), "the writer's crash was swept");
        assert!(reopened.sweep().unwrap().stale_temporary.is_empty());

        // Once the writer is gone (killed here; one that finishes exits alike), the next sweep
        // removes the crash nobody will commit.
        // SAFETY: signals our own child, which has not been reaped.
        assert_eq!(unsafe { libc::kill(writer.pid, libc::SIGKILL) }, 0);
        assert!(matches!(writer.poll(EXIT_TIMEOUT), Some(Err(ForkError::Died(_)))));
        assert_eq!(reopened.sweep().unwrap().stale_temporary, [pending.path()]);
    }
}
