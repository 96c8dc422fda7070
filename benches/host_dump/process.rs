//! What the bench reads in `/proc` about the processes it measures: peak resident memory
//! (`VmHWM`, which `clear_refs` resets), the dump writer a VMM forked, and whether that writer
//! has reached its final `fsync` (the VMM reports no moment between "written" and "synced").

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

/// How often the writer is looked at while a dump runs.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(2);
/// `/proc/PID/clear_refs`: this value resets the peak resident set size to the current one.
const CLEAR_REFS_PEAK_RSS: &str = "5";

/// `error`, followed by what the process `who` wrote to its stderr file `stderr` so far.
pub fn with_stderr(error: anyhow::Error, who: &str, stderr: &Path) -> anyhow::Error {
    let text = std::fs::read_to_string(stderr).unwrap_or_default();
    if text.trim().is_empty() {
        error
    } else {
        anyhow!("{error:#}\n{who}'s stderr:\n{}", text.trim_end())
    }
}

/// Peak resident set size of `pid` in KiB (`VmHWM` in `/proc/PID/status`); `None` once the
/// process is gone.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|line| line.strip_prefix("VmHWM:"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// Resets the peak resident set size of `pid` to its current size, so the next
/// [`peak_rss_kib`] is the peak since now.
pub fn reset_peak_rss(pid: u32) -> Result<()> {
    let path = format!("/proc/{pid}/clear_refs");
    std::fs::write(&path, CLEAR_REFS_PEAK_RSS).with_context(|| format!("cannot reset the peak RSS in {path}"))
}

/// A child of process `parent` (the parent field of `/proc/*/stat`), if it has one.
fn child_of(parent: u32) -> Option<u32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        // `pid (comm) state ppid ...`: the name may hold spaces and parentheses.
        let mut after_name = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
        let ppid: u32 = after_name.nth(1)?.parse().ok()?;
        (ppid == parent).then_some(pid)
    })
}

/// Whether `pid` is inside system call `number` now (`/proc/PID/syscall`); `None` if that
/// cannot be read (the process is gone, or ptrace access is refused).
fn in_syscall(pid: u32, number: libc::c_long) -> Option<bool> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    Some(text.split_whitespace().next()? == number.to_string())
}

/// What was seen of a VMM's dump writer while it ran.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriterSeen {
    /// Its peak resident set size in KiB, as last read before it ended. A forked process starts
    /// with its parent's resident set (the guest RAM it shares copy-on-write) as its peak.
    pub peak_rss_kib: Option<u64>,
    /// When it was first seen in `fsync`: its vmcore written, not yet synced.
    pub fsync_at: Option<Instant>,
}

/// A thread that watches for the dump writer a VMM forks, until [`WriterWatch::finish`].
pub struct WriterWatch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<WriterSeen>,
}

impl WriterWatch {
    /// Starts watching for a child of `vmm_pid` (start it before the dump is requested).
    pub fn start(vmm_pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || watch(vmm_pid, &stopping));
        Self { stop, thread }
    }

    /// Stops watching (after the dump is committed: the writer has ended) and returns what was
    /// seen.
    pub fn finish(self) -> WriterSeen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

fn watch(vmm_pid: u32, stop: &AtomicBool) -> WriterSeen {
    let mut seen = WriterSeen::default();
    let mut writer = None;
    while !stop.load(Ordering::Relaxed) {
        writer = writer.or_else(|| child_of(vmm_pid));
        if let Some(pid) = writer {
            if let Some(peak) = peak_rss_kib(pid) {
                seen.peak_rss_kib = Some(seen.peak_rss_kib.unwrap_or(0).max(peak));
            }
            if seen.fsync_at.is_none() && in_syscall(pid, libc::SYS_fsync) == Some(true) {
                seen.fsync_at = Some(Instant::now());
            }
        }
        std::thread::sleep(SAMPLE_INTERVAL);
    }
    seen
}

/// How long a VMM may take to serve its socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Connects to `socket` with `connect` once `child` (`program`) serves `what` there; an error if
/// it exits first or does not within a minute.
pub fn connect_while_alive<T>(
    socket: &Path,
    child: &mut std::process::Child,
    program: &str,
    what: &str,
    connect: impl Fn(&Path) -> std::io::Result<T>,
) -> Result<T> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        match connect(socket) {
            Ok(connection) => return Ok(connection),
            Err(e) if Instant::now() >= deadline => {
                anyhow::bail!("cannot connect to {what} at {} within {CONNECT_TIMEOUT:?}: {e}", socket.display())
            }
            Err(_) => {}
        }
        if let Some(status) = child.try_wait().with_context(|| format!("cannot wait for {program}"))? {
            anyhow::bail!("{program} exited ({status}) before it served {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
