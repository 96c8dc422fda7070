//! One `vmm` child process: `<this binary> vmm --config FILE` in its own process group, its
//! console (stdout) copied into the VM's [`ConsoleLog`], its stderr logged and its last lines
//! kept for a failure's reason. A clean stop is the control socket's `shutdown`; SIGTERM and
//! SIGKILL are the fallbacks.

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use tracing::Instrument;

use super::console::ConsoleLog;

/// stderr lines kept for a failure's reason.
const STDERR_TAIL_LINES: usize = 20;

/// A running VMM.
pub struct VmmProcess {
    /// The child; killed if dropped.
    pub child: Child,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

impl VmmProcess {
    /// Starts `exe vmm --config config` (stderr is logged in the current span).
    pub fn spawn(exe: &Path, config: &Path, console: Arc<ConsoleLog>) -> std::io::Result<Self> {
        let mut child = Command::new(exe)
            .arg("vmm")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C at the service's terminal reaches the service,
            // which then stops its VMs in order.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        if let Some(mut stdout) = child.stdout.take() {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                // The console must always be drained: a full pipe would stall the guest.
                while let Ok(n @ 1..) = stdout.read(&mut buf).await {
                    console.push(&buf[..n]);
                }
            });
        }
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = child.stderr.take() {
            let tail = stderr_tail.clone();
            tokio::spawn(
                async move {
                    let mut lines = BufReader::new(stderr).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        tracing::info!("vmm: {line}");
                        let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                        if tail.len() == STDERR_TAIL_LINES {
                            tail.pop_front();
                        }
                        tail.push_back(line);
                    }
                }
                .in_current_span(),
            );
        }
        Ok(Self { child, stderr_tail })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends the VMM SIGTERM (it ends at once: the fallback when it does not answer
    /// `shutdown`).
    pub fn terminate(&self) {
        let Some(pid) = self.pid().and_then(|pid| libc::pid_t::try_from(pid).ok()) else { return };
        // SAFETY: kill(2) takes plain integers and touches no memory of ours; `pid` is our child,
        // not yet reaped (`child.id()` is `None` once it is), so the pid cannot name another
        // process.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            tracing::warn!("cannot send SIGTERM to the VMM: {}", std::io::Error::last_os_error());
        }
    }

    /// The last stderr lines.
    pub fn stderr_tail(&self) -> String {
        let tail = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// An exit status in words: `exit status 1`, `killed by signal 9 (SIGKILL)`.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}{}", signal_name(signal)),
        (None, None) => status.to_string(),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGTERM => " (SIGTERM)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGBUS => " (SIGBUS)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_read_well() {
        assert_eq!(describe(ExitStatus::from_raw(1 << 8)), "exit status 1");
        assert_eq!(describe(ExitStatus::from_raw(libc::SIGKILL)), "killed by signal 9 (SIGKILL)");
    }
}
