//! One `vmm` process: `<this binary> vmm --config FILE`, started by this service or adopted
//! again after a restart. A started VMM runs in a session of its own with stdin from
//! `/dev/null` and its console (stdout) and stderr appended to files, so nothing ties it to the
//! service: it outlives a killed service and never blocks on, or takes SIGPIPE from, a pipe
//! nobody reads. The process is held through a pidfd, so a signal never reaches another process
//! that reuses its pid, and its end is seen whether or not it is this service's child (an
//! adopted VMM's exit status is not: only its parent learns it). A clean stop is the control
//! socket's `shutdown`; SIGTERM and SIGKILL are the fallbacks. Dropping a `VmmProcess` leaves
//! the VMM running: only an explicit stop ends a VM, so nothing that ends the service early
//! takes its VMs down.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use tokio::io::unix::AsyncFd;
use tokio::process::{Child, Command};

use super::record::{Liveness, VmmIdentity};

/// stderr lines kept for a failure's reason.
const STDERR_TAIL_LINES: usize = 20;

/// A VMM process.
pub struct VmmProcess {
    identity: VmmIdentity,
    pidfd: AsyncFd<OwnedFd>,
    /// The child, when this service started it: its exit status.
    child: Option<Child>,
}

/// How a VMM process ended.
#[derive(Debug)]
pub enum Exit {
    /// This service's child: its exit status.
    Status(ExitStatus),
    /// An adopted VMM: it ended, how is known only to its parent.
    Unknown,
}

impl Exit {
    /// Whether it exited with status 0, if known.
    pub fn success(&self) -> Option<bool> {
        match self {
            Self::Status(status) => Some(status.success()),
            Self::Unknown => None,
        }
    }

    /// The exit in words: `exit status 1`, `killed by signal 9 (SIGKILL)`.
    pub fn describe(&self) -> String {
        match self {
            Self::Status(status) => describe(*status),
            Self::Unknown => "an unknown status (the VMM was adopted after a restart of the service, and only its \
                              parent learns its exit status)"
                .into(),
        }
    }
}

impl VmmProcess {
    /// Starts `exe vmm --config config` with its console appended to `console` and its stderr
    /// to `stderr`.
    pub fn spawn(exe: &Path, config: &Path, console: File, stderr: File) -> std::io::Result<Self> {
        let mut command = Command::new(exe);
        command
            .arg("vmm")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(console))
            .stderr(Stdio::from(stderr));
        // SAFETY: the closure runs in the child between fork and exec and calls only setsid(2),
        // which is async-signal-safe and touches no memory of the parent's. A session of its
        // own: no signal from the service's terminal or process group reaches the VMM, and it
        // has no controlling terminal to lose when the service's goes away.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        let pid = child.id().ok_or_else(|| std::io::Error::other("the VMM exited and was reaped at once"))?;
        // Not reaped until this service waits for it, so the pid is still the child's.
        let identity = VmmIdentity::of(pid).map_err(std::io::Error::other)?;
        let pidfd = pidfd_open(pid)?;
        Ok(Self { identity, pidfd, child: Some(child) })
    }

    /// Holds the running process `identity` again; `None` if it has ended (or its pid now
    /// belongs to another process).
    pub fn adopt(identity: VmmIdentity) -> std::io::Result<Option<Self>> {
        let pidfd = match pidfd_open(identity.pid) {
            Ok(pidfd) => pidfd,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
            Err(e) => return Err(e),
        };
        // The pidfd names whatever ran under the pid when it was opened: if that is still the
        // process that started at the recorded time, the pidfd is that process.
        if identity.liveness() == Liveness::Ended {
            return Ok(None);
        }
        Ok(Some(Self { identity, pidfd, child: None }))
    }

    /// Who it is.
    pub fn identity(&self) -> VmmIdentity {
        self.identity
    }

    /// Waits until it ends. Cancel safe.
    pub async fn wait(&mut self) -> std::io::Result<Exit> {
        match &mut self.child {
            Some(child) => Ok(Exit::Status(child.wait().await?)),
            None => {
                // A pidfd turns readable when its process has ended.
                let _ = self.pidfd.readable().await?;
                Ok(Exit::Unknown)
            }
        }
    }

    /// Sends SIGTERM (the VMM ends at once: the fallback when it does not answer `shutdown`).
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends SIGKILL.
    pub fn kill(&self) {
        self.signal(libc::SIGKILL);
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: pidfd_send_signal(2) with a pidfd this value owns, no siginfo (a null pointer
        // is allowed) and no flags; it touches no memory of ours.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.get_ref().as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        let error = std::io::Error::last_os_error();
        // ESRCH: it has already ended.
        if sent != 0 && error.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!(pid = self.identity.pid, "cannot send signal {signal} to the VMM: {error}");
        }
    }
}

/// A pidfd for `pid`, registered with the runtime.
fn pidfd_open(pid: u32) -> std::io::Result<AsyncFd<OwnedFd>> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    // SAFETY: pidfd_open(2) takes plain integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(fd).map_err(std::io::Error::other)?;
    // SAFETY: `fd` was just returned by pidfd_open, is open, and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an `OwnedFd` returns its one open descriptor from every `as_raw_fd` and closes
    // it only when dropped, which the `AsyncFd` owning it does last.
    let registered = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
    registered.map_err(std::io::Error::from)
}

/// A VMM's stderr as the service sees it: each line logged (in the VM's span) and the last
/// lines kept for a failure's reason.
#[derive(Clone, Default)]
pub struct StderrLog {
    partial: Arc<Mutex<(Vec<u8>, VecDeque<String>)>>,
}

impl StderrLog {
    /// Takes a chunk of stderr; `log` says whether its lines are logged (not when they are the
    /// old lines read back after a restart).
    pub fn push(&self, chunk: &[u8], log: bool) {
        let mut guard = self.partial.lock().unwrap_or_else(|e| e.into_inner());
        let (partial, tail) = &mut *guard;
        partial.extend_from_slice(chunk);
        while let Some(end) = partial.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&partial[..end]).trim_end_matches('\r').to_owned();
            partial.drain(..=end);
            if log {
                tracing::info!("vmm: {line}");
            }
            if tail.len() == STDERR_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }

    /// The last lines.
    pub fn tail(&self) -> String {
        let guard = self.partial.lock().unwrap_or_else(|e| e.into_inner());
        guard.1.iter().cloned().collect::<Vec<_>>().join("\n")
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
        assert_eq!(Exit::Unknown.success(), None);
        assert!(Exit::Unknown.describe().contains("unknown"));
    }

    #[test]
    fn stderr_lines_are_kept_whole_and_bounded() {
        let log = StderrLog::default();
        log.push(b"first li", false);
        assert_eq!(log.tail(), "", "no line yet");
        log.push(b"ne\r\nsecond\n", false);
        assert_eq!(log.tail(), "first line\nsecond");
        for n in 0..STDERR_TAIL_LINES {
            log.push(format!("line {n}\n").as_bytes(), false);
        }
        assert_eq!(log.tail().lines().count(), STDERR_TAIL_LINES);
        assert!(log.tail().starts_with("line 0"));
    }

    #[tokio::test]
    async fn an_adopted_process_is_signalled_and_seen_to_end() {
        // A process this test starts and then holds as if adopted: not through its `Child`.
        let mut sleeper = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let identity = VmmIdentity::of(sleeper.id()).unwrap();
        let mut adopted = VmmProcess::adopt(identity).unwrap().expect("it runs");
        assert_eq!(adopted.identity(), identity);
        let wrong = VmmIdentity { start_time: identity.start_time + 1, ..identity };
        assert!(VmmProcess::adopt(wrong).unwrap().is_none(), "another start time: not that process");
        adopted.terminate();
        let exit = tokio::time::timeout(std::time::Duration::from_secs(10), adopted.wait()).await.unwrap().unwrap();
        assert!(matches!(exit, Exit::Unknown));
        assert_eq!(sleeper.wait().unwrap().signal(), Some(libc::SIGTERM));
        assert!(VmmProcess::adopt(identity).unwrap().is_none(), "reaped: gone");
    }
}
