//! One `vmm` child process: `<this binary> vmm ARGS...` in its own process group, its console
//! (stdout) copied into the VM's [`ConsoleLog`], its stderr logged and its last lines kept for a
//! failure's reason, its stdin kept for the console's `Ctrl-A x` (a clean stop).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use tracing::Instrument;

use super::console::ConsoleLog;

/// stderr lines kept for a failure's reason.
const STDERR_TAIL_LINES: usize = 20;
/// The console escape that makes the VMM stop the VM and exit cleanly (docs/vmm.md).
const CONSOLE_QUIT: &[u8] = b"\x01x";

/// A running VMM.
pub struct VmmProcess {
    /// The child; killed if dropped.
    pub child: Child,
    stdin: Option<ChildStdin>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

impl VmmProcess {
    /// Starts `exe vmm args...` (stderr is logged in the current span).
    pub fn spawn(exe: &Path, args: &[OsString], console: Arc<ConsoleLog>) -> std::io::Result<Self> {
        let mut child = Command::new(exe)
            .arg("vmm")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C at the service's terminal reaches the service,
            // which then stops its VMs in order.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take();
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
        Ok(Self { child, stdin, stderr_tail })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Asks the VMM to stop the VM and exit (the console's `Ctrl-A x`); false if it cannot be
    /// asked (the caller kills it instead).
    pub async fn request_stop(&mut self) -> bool {
        match self.stdin.as_mut() {
            Some(stdin) => stdin.write_all(CONSOLE_QUIT).await.is_ok() && stdin.flush().await.is_ok(),
            None => false,
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
