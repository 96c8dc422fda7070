//! `Vm`: one `vmm` process, its console (stdout), its stderr, and its stdin.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{require_kvm, vmm_binary, BOOT_TIMEOUT, COMMAND_TIMEOUT, PROMPT};

/// Held by every live `Vm`: VMs of one test binary run one at a time (the test harness runs
/// tests on parallel threads, and the host may have only a couple of cores).
static VM_SLOT: Mutex<()> = Mutex::new(());

/// Console lines shown before the cursor when an expectation fails.
const CONSUMED_LINES_SHOWN: usize = 15;
/// Console lines shown after the cursor when an expectation fails.
const PENDING_LINES_SHOWN: usize = 60;
/// How often `wait_exit` looks at the process once its pipes have closed (it is exiting then,
/// so this is a matter of microseconds; std offers no way to wait for a child with a timeout).
const REAP_POLL: Duration = Duration::from_millis(2);

/// Something a console line can match: a `&str` the line contains, or a predicate on the line.
pub trait LineMatcher {
    /// Whether `line` (without its line ending) matches.
    fn matches(&self, line: &str) -> bool;
    /// What is awaited, for failure messages.
    fn describe(&self) -> String;
}

impl LineMatcher for &str {
    fn matches(&self, line: &str) -> bool {
        line.contains(*self)
    }
    fn describe(&self) -> String {
        format!("a line containing {self:?}")
    }
}

impl<F: Fn(&str) -> bool> LineMatcher for F {
    fn matches(&self, line: &str) -> bool {
        self(line)
    }
    fn describe(&self) -> String {
        "a line accepted by the predicate".into()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

enum Event {
    Data(Stream, Vec<u8>),
    Eof(Stream),
}

/// A running `vmm` process. Its console (stdout) is read as lines; `expect*` calls consume
/// them in order, so a sequence of `expect`s also checks the order of the output. Dropping the
/// `Vm` kills the process.
pub struct Vm {
    args: Vec<String>,
    child: Child,
    stdin: Option<ChildStdin>,
    events: Receiver<Event>,
    /// Everything the console printed so far.
    console: Vec<u8>,
    /// Offset in `console` up to which expectations have consumed the output.
    cursor: usize,
    stderr: Vec<u8>,
    stdout_open: bool,
    stderr_open: bool,
    status: Option<ExitStatus>,
    // Last: released only after `drop` has killed the process.
    _slot: MutexGuard<'static, ()>,
}

impl Vm {
    /// Starts `vmm` with `args`, stdin, stdout and stderr piped, and `VMM_LOG` unset so that
    /// stderr carries only warnings and errors. Waits first for any other `Vm` of this test
    /// binary to be dropped.
    ///
    /// # Panics
    ///
    /// If `/dev/kvm` is unusable, the `vmm` binary is missing, or it cannot be started.
    #[track_caller]
    pub fn start(args: &[&str]) -> Self {
        require_kvm();
        let binary = vmm_binary();
        // A test that failed while holding the slot poisons it; its VM is gone all the same.
        let slot = VM_SLOT.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = Command::new(&binary)
            .args(args)
            .env_remove("VMM_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let (sender, events) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        spawn_reader(Stream::Stdout, stdout, sender.clone());
        spawn_reader(Stream::Stderr, stderr, sender);
        Self {
            args: args.iter().map(|a| a.to_string()).collect(),
            stdin: child.stdin.take(),
            child,
            events,
            console: Vec::new(),
            cursor: 0,
            stderr: Vec::new(),
            stdout_open: true,
            stderr_open: true,
            status: None,
            _slot: slot,
        }
    }

    /// Waits for the first shell prompt and returns the console lines before it (the boot log).
    #[track_caller]
    pub fn boot(&mut self) -> Vec<String> {
        self.expect_prompt(BOOT_TIMEOUT)
    }

    /// Types `command` at the prompt and returns its output: the console lines up to the next
    /// prompt, without the echo of the command itself.
    #[track_caller]
    pub fn run(&mut self, command: &str) -> Vec<String> {
        self.send_line(command);
        let mut lines = self.expect_prompt(COMMAND_TIMEOUT);
        if lines.first().is_some_and(|echo| echo == command) {
            lines.remove(0);
        }
        lines
    }

    /// Sends `line` and a newline to the console input.
    #[track_caller]
    pub fn send_line(&mut self, line: &str) {
        self.send(format!("{line}\n").as_bytes());
    }

    /// Sends raw bytes (control characters included) to the console input.
    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
        let sent = match self.stdin.as_mut() {
            Some(stdin) => stdin.write_all(bytes).and_then(|()| stdin.flush()),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        };
        if let Err(e) = sent {
            self.fail(&format!("cannot type {bytes:?} on the console: {e}"));
        }
    }

    /// Waits for a complete console line that matches and returns it (without `\r\n`). The
    /// lines before it are consumed unmatched.
    ///
    /// # Panics
    ///
    /// After `timeout`, or as soon as the console closes, showing the recent output.
    #[track_caller]
    pub fn expect(&mut self, matcher: impl LineMatcher, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some((line, end)) = self.next_line() {
                self.cursor = end;
                if matcher.matches(&line) {
                    return line;
                }
            }
            self.await_console(deadline, &matcher.describe(), timeout);
        }
    }

    /// Waits for the shell prompt at the start of a line (the prompt has no line ending) and
    /// returns the complete lines before it; consumes both.
    #[track_caller]
    pub fn expect_prompt(&mut self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            if self.console[self.cursor..].starts_with(PROMPT.as_bytes()) {
                self.cursor += PROMPT.len();
                return lines;
            }
            match self.next_line() {
                Some((line, end)) => {
                    self.cursor = end;
                    lines.push(line);
                }
                None => self.await_console(deadline, &format!("the prompt {PROMPT:?}"), timeout),
            }
        }
    }

    /// Waits for the process to exit and returns its status.
    ///
    /// # Panics
    ///
    /// If it is still running after `timeout`, showing the recent output.
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let deadline = Instant::now() + timeout;
        let what = format!("the vmm process to exit within {timeout:?}");
        // The pipes close when the process exits: wait for that event first.
        while self.stdout_open || self.stderr_open {
            if !self.receive(deadline) && (self.stdout_open || self.stderr_open) {
                self.fail(&format!("timed out waiting for {what}"));
            }
        }
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.status = Some(status);
                    return status;
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(REAP_POLL),
                Ok(None) => self.fail(&format!("timed out waiting for {what}")),
                Err(e) => self.fail(&format!("cannot wait for the vmm process: {e}")),
            }
        }
    }

    /// Waits for the process to exit and checks its exit status.
    #[track_caller]
    pub fn expect_exit_code(&mut self, code: i32, timeout: Duration) {
        let status = self.wait_exit(timeout);
        if status.code() != Some(code) {
            self.fail(&format!("expected exit status {code}, got {status}"));
        }
    }

    /// Whether the process is still running (it is reaped if it has exited).
    pub fn is_running(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status.is_none()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&mut self) -> String {
        self.drain();
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Everything the console (stdout) printed so far, consumed or not.
    pub fn console(&mut self) -> String {
        self.drain();
        String::from_utf8_lossy(&self.console).into_owned()
    }

    /// Fails the test with `message`, the command line, the recent console output and stderr.
    #[track_caller]
    pub fn fail(&mut self, message: &str) -> ! {
        self.drain();
        let state = match self.child.try_wait() {
            Ok(Some(status)) => format!("exited: {status}"),
            Ok(None) => "still running".to_string(),
            Err(e) => format!("unknown ({e})"),
        };
        let consumed = lines_of(&self.console[..self.cursor]);
        let pending = lines_of(&self.console[self.cursor..]);
        panic!(
            "{message}\n\
             --- vmm {args} ({state})\n\
             --- console before the cursor (last {c} lines):\n{consumed}\n\
             --- console after the cursor (last {p} lines):\n{pending}\n\
             --- stderr:\n{stderr}\n---",
            args = self.args.join(" "),
            c = CONSUMED_LINES_SHOWN,
            p = PENDING_LINES_SHOWN,
            consumed = tail(&consumed, CONSUMED_LINES_SHOWN),
            pending = tail(&pending, PENDING_LINES_SHOWN),
            stderr = String::from_utf8_lossy(&self.stderr).trim_end(),
        );
    }

    /// The complete line at the cursor and the offset just past its `\n`.
    fn next_line(&self) -> Option<(String, usize)> {
        let rest = &self.console[self.cursor..];
        let newline = rest.iter().position(|&b| b == b'\n')?;
        let line = rest[..newline].strip_suffix(b"\r").unwrap_or(&rest[..newline]);
        Some((String::from_utf8_lossy(line).into_owned(), self.cursor + newline + 1))
    }

    /// Waits for more console output; fails if none comes before `deadline` or the console
    /// has closed.
    #[track_caller]
    fn await_console(&mut self, deadline: Instant, what: &str, timeout: Duration) {
        let before = self.console.len();
        while self.console.len() == before {
            if !self.stdout_open {
                self.fail(&format!("the console closed while waiting for {what}"));
            }
            if !self.receive(deadline) && self.stdout_open {
                self.fail(&format!("timed out after {timeout:?} waiting for {what}"));
            }
        }
    }

    /// Handles one event, waiting until `deadline` for it. False if none came in time.
    fn receive(&mut self, deadline: Instant) -> bool {
        let timeout = deadline.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(timeout) {
            Ok(event) => {
                self.apply(event);
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => {
                // Both readers are gone, so both streams are closed.
                self.stdout_open = false;
                self.stderr_open = false;
                false
            }
        }
    }

    /// Handles every event already received.
    fn drain(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.apply(event);
        }
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Data(Stream::Stdout, bytes) => self.console.extend_from_slice(&bytes),
            Event::Data(Stream::Stderr, bytes) => self.stderr.extend_from_slice(&bytes),
            Event::Eof(Stream::Stdout) => self.stdout_open = false,
            Event::Eof(Stream::Stderr) => self.stderr_open = false,
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.status.is_none() {
            // Errors mean the process is already gone; there is nothing else to do in a drop.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Forwards everything `source` yields to `events`, then its end.
fn spawn_reader(stream: Stream, mut source: impl Read + Send + 'static, events: Sender<Event>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match source.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if events.send(Event::Data(stream, buf[..n].to_vec())).is_err() {
                        return; // the Vm is gone
                    }
                }
            }
        }
        let _ = events.send(Event::Eof(stream));
    });
}

fn lines_of(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes).split('\n').map(|l| l.trim_end_matches('\r').to_string()).collect()
}

fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}
