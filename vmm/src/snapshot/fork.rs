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

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dumpd::elf::build::{CoreLayout, LoadSpec, NoteSpec};
use dumpd::kdump::free_pages::FreePages;
use dumpd::kdump::{write_kdump, Compression, KdumpInput, KdumpOptions};
use dumpd::writer::{write_vmcore, MemorySource};
use vm_memory::GuestMemoryMmap;

use dumpd::error_chain;

use crate::devices::dump::GuestRam;

/// Longest error message the child reports.
const MESSAGE_MAX: usize = 3000;
/// Longest wait for the child to drop the VMM's descriptors.
const DETACH_TIMEOUT: Duration = Duration::from_secs(1);

/// Closes every descriptor from 3 up except `keep` (the child's first act).
fn close_other_fds(keep: RawFd) {
    let close_range = |first: RawFd, last: libc::c_uint| {
        // SAFETY: close_range only closes descriptors of this (child) process.
        unsafe { libc::syscall(libc::SYS_close_range, first as libc::c_uint, last, 0) };
    };
    if keep > 3 {
        close_range(3, (keep - 1) as libc::c_uint);
    }
    close_range(keep.max(2) + 1, libc::c_uint::MAX);
}

/// The page the child reports through.
#[repr(C)]
struct Report {
    /// Set by the child once it holds nothing of the VMM but the memory and the file.
    detached: AtomicU64,
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

/// What the child writes.
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

/// makedumpfile's dump level 1: zero pages are stored once in kdump-compressed files.
const DUMP_LEVEL_ZERO: u32 = 1;
/// makedumpfile's dump level 17: free pages may be left out too (here: the zero ones).
const DUMP_LEVEL_ZERO_FREE: u32 = 17;

/// Writes `output` from `source` into `file`: (file size, bytes written, zero pages left out).
fn write_output(file: &File, output: &Output<'_>, source: &dyn MemorySource) -> Result<(u64, u64, u64), String> {
    match output {
        Output::Elf(core) => write_vmcore(file, &core.headers, &core.runs, core.file_size, source)
            .map(|s| (s.apparent_bytes, s.written_bytes, s.zero_pages_skipped))
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
                .map(|s| (s.file_bytes, s.file_bytes, s.pages_shared_zero))
                .map_err(|e| error_chain(&e))
        }
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
    /// Forks a child that writes `core` from `memory` into `file` and syncs it. The snapshot
    /// is the memory at the moment of this call.
    pub fn start(file: &File, output: &Output<'_>, memory: &GuestMemoryMmap) -> Result<Self, ForkError> {
        let shared = SharedReport::new().map_err(ForkError::Start)?;
        // SAFETY: see the module documentation for what the child does; the parent continues
        // normally.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(ForkError::Start(std::io::Error::last_os_error()));
        }
        if pid == 0 {
            let report = shared.report();
            // Hold no descriptor of the VMM (KVM's VM and vCPUs, eventfds, sockets) but the
            // vmcore's: the parent may tear the machine down and build a new one at once.
            close_other_fds(file.as_raw_fd());
            report.detached.store(1, Ordering::Release);
            let source = GuestRam::counting(memory, &report.done);
            let result = write_output(file, output, &source)
                .and_then(|stats| file.sync_all().map(|()| stats).map_err(|e| format!("cannot sync the vmcore: {e}")));
            let code = match result {
                Ok((file_bytes, written_bytes, zero_pages_skipped)) => {
                    report.file_bytes.store(file_bytes, Ordering::Relaxed);
                    report.written_bytes.store(written_bytes, Ordering::Relaxed);
                    report.zero_pages_skipped.store(zero_pages_skipped, Ordering::Relaxed);
                    0
                }
                Err(message) => {
                    shared.set_message(&message);
                    1
                }
            };
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

    /// Waits up to `timeout` for the child; `None` while it still runs, else how it ended:
    /// `(file_bytes, written_bytes, zero_pages_skipped)`.
    pub fn poll(&self, timeout: Duration) -> Option<Result<(u64, u64, u64), ForkError>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let mut status = 0;
            // SAFETY: waits for our own child, writing its status into a local.
            let reaped = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
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

    fn outcome(&self, status: i32) -> Result<(u64, u64, u64), ForkError> {
        let report = self.shared.report();
        match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
            (true, 0) => Ok((
                report.file_bytes.load(Ordering::Relaxed),
                report.written_bytes.load(Ordering::Relaxed),
                report.zero_pages_skipped.load(Ordering::Relaxed),
            )),
            (true, _) => Err(ForkError::Write(self.shared.message())),
            _ => Err(ForkError::Died(status)),
        }
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
