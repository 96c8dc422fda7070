//! `Vm`: one `vmm` process, its console (stdout), its stderr, its stdin, and optionally a
//! client of its control socket.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crashvisor_abi::control::FaultKind;
use crashvisor_control::{Injection, Request, SysctlValue};
use serde_json::Value;

use crate::control::{Control, ErrorReply, Event as ControlEvent, Reply};
use crate::{require_kvm, vmm_binary, TempFile, BOOT_TIMEOUT, COMMAND_TIMEOUT, PROMPT};

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
/// Longest wait for the host-side dump of a failed test's guest.
const POST_MORTEM_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// Bytes and when the reader thread read them.
    Data(Stream, Vec<u8>, Instant),
    Eof(Stream),
}

/// A fault injected over the control socket.
#[derive(Clone, Copy, Debug)]
pub struct Injected {
    /// The pid of the task that carries it (the `inject` result's `pid`).
    pub pid: u32,
    /// When the acknowledgement was read: the fault starts in the guest only after it has sent
    /// this answer.
    pub at: Instant,
}

/// A running `vmm` process. Its console (stdout) is read as lines; `expect*` calls consume
/// them in order, so a sequence of `expect`s also checks the order of the output. Each chunk of
/// console output is stamped with the `Instant` it was read, so a line's arrival can be timed
/// ([`Vm::expect_stamped`]). A `Vm` started with [`Vm::start_controlled`] also has a
/// [`Control`] client (`request*`, `wait_event`, ...). Dropping the `Vm` kills the process.
pub struct Vm {
    args: Vec<String>,
    child: Child,
    stdin: Option<ChildStdin>,
    events: Receiver<Event>,
    /// Everything the console printed so far.
    console: Vec<u8>,
    /// For each chunk of console output: the length of `console` after it, and when it was read.
    arrivals: Vec<(usize, Instant)>,
    /// The control-socket client, for a VM started with `start_controlled`.
    control: Option<Control>,
    /// The socket's path (removed with the `Vm`).
    _socket: Option<TempFile>,
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
            arrivals: Vec::new(),
            control: None,
            _socket: None,
            cursor: 0,
            stderr: Vec::new(),
            stdout_open: true,
            stderr_open: true,
            status: None,
            _slot: slot,
        }
    }

    /// Starts `vmm` with `args` and `--control <temporary path>`, and connects a [`Control`]
    /// client to it. The VMM listens before the guest runs, so the client connects as soon as
    /// the console prints anything; the guest's `booted` event comes later (see
    /// [`Vm::wait_booted`]).
    ///
    /// # Panics
    ///
    /// As [`Vm::start`], or if the client cannot connect.
    #[track_caller]
    pub fn start_controlled(args: &[&str]) -> Self {
        let socket = TempFile::new("control.sock");
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--control", socket.arg()]);
        let mut vm = Self::start(&all);
        vm.await_first_output(BOOT_TIMEOUT);
        match Control::connect(socket.path()) {
            Ok(control) => vm.control = Some(control),
            Err(e) => vm.fail(&format!("cannot connect to the control socket {}: {e}", socket.arg())),
        }
        vm._socket = Some(socket);
        vm
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

    /// Like [`Vm::expect`], and also returns when the line arrived (when the chunk of output
    /// that completed it was read).
    #[track_caller]
    pub fn expect_stamped(&mut self, matcher: impl LineMatcher, timeout: Duration) -> (String, Instant) {
        let line = self.expect(matcher, timeout);
        (line, self.arrival_of(self.cursor))
    }

    /// A mark in the console output: [`Vm::lines_since`] returns the lines completed after it.
    /// It sits at the start of the line still being printed, so a line that had begun when the
    /// mark was taken (the shell's prompt, say, which a kernel line may follow) is returned
    /// whole rather than cut where the mark fell.
    pub fn console_mark(&mut self) -> usize {
        self.drain();
        self.console.iter().rposition(|&b| b == b'\n').map_or(0, |newline| newline + 1)
    }

    /// The console lines completed after `mark` (read so far, consumed or not), each with its
    /// arrival time.
    pub fn lines_since(&mut self, mark: usize) -> Vec<(String, Instant)> {
        self.drain();
        let mut lines = Vec::new();
        let mut start = mark;
        while let Some(newline) = self.console[start..].iter().position(|&b| b == b'\n') {
            let end = start + newline + 1;
            let bytes = &self.console[start..end - 1];
            let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
            lines.push((String::from_utf8_lossy(bytes).into_owned(), self.arrival_of(end)));
            start = end;
        }
        lines
    }

    /// When the console output up to offset `end` had all arrived.
    fn arrival_of(&self, end: usize) -> Instant {
        let chunk = self.arrivals.partition_point(|&(len, _)| len < end);
        self.arrivals.get(chunk).map_or_else(Instant::now, |&(_, at)| at)
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
        let events = match self.control.as_mut() {
            Some(control) => {
                let start = Instant::now();
                let shown: Vec<String> = control
                    .history()
                    .iter()
                    .map(|e| format!("{:>9.3}s ago {}", start.duration_since(e.at).as_secs_f64(), e.body))
                    .collect();
                format!("--- control events received:\n{}\n", shown.join("\n"))
            }
            None => String::new(),
        };
        let post_mortem = self.post_mortem();
        panic!(
            "{message}\n\
             --- vmm {args} ({state})\n\
             --- console before the cursor (last {c} lines):\n{consumed}\n\
             --- console after the cursor (last {p} lines):\n{pending}\n\
             {events}\
             {post_mortem}\
             --- stderr:\n{stderr}\n---",
            args = self.args.join(" "),
            c = CONSUMED_LINES_SHOWN,
            p = PENDING_LINES_SHOWN,
            consumed = tail(&consumed, CONSUMED_LINES_SHOWN),
            pending = tail(&pending, PENDING_LINES_SHOWN),
            stderr = String::from_utf8_lossy(&self.stderr).trim_end(),
        );
    }

    /// For a test that fails while its guest still runs: a host-side dump of the guest as it is
    /// (the VMM takes it whatever the guest does) and every task's state and stack read from
    /// it by `dumpd`, so that a hang no console line explains can be looked into; empty when
    /// there is no running VM with a control socket, and a line saying why when it fails.
    fn post_mortem(&mut self) -> String {
        if !self.is_running() {
            return String::new();
        }
        let Some(control) = self.control.as_mut() else { return String::new() };
        let dumped = control.request(serde_json::json!({"cmd": "dump"}), POST_MORTEM_TIMEOUT).and_then(|reply| {
            if let Err(e) = reply.outcome {
                return Err(crate::control::ControlFailure::Broken(format!("dump refused: {} {}", e.code, e.message)));
            }
            control.wait_event(
                |e| e.is("vmcore_ready") || e.is("dump_failed"),
                "the post-mortem vmcore",
                POST_MORTEM_TIMEOUT,
            )
        });
        let event = match dumped {
            Ok(event) => event,
            Err(e) => return format!("--- no post-mortem vmcore: {e}\n"),
        };
        let Some(dir) = event.str("path") else { return format!("--- no post-mortem vmcore: {}\n", event.body) };
        let vmcore = format!("{dir}/vmcore");
        let mut shown = format!("--- post-mortem vmcore {vmcore} (kept):\n");
        for args in [&["ps"][..], &["bt", "-a"][..]] {
            let output = Command::new(crate::dumpd_binary()).args(args).arg(&vmcore).output();
            match output {
                Ok(o) => {
                    shown.push_str(&String::from_utf8_lossy(&o.stdout));
                    shown.push_str(&String::from_utf8_lossy(&o.stderr));
                }
                Err(e) => shown.push_str(&format!("cannot run dumpd {}: {e}\n", args.join(" "))),
            }
        }
        shown
    }

    /// Waits until the console has printed something (or fails).
    #[track_caller]
    fn await_first_output(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        self.drain();
        if self.console.is_empty() {
            self.await_console(deadline, "the first console output", timeout);
        }
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
            Event::Data(Stream::Stdout, bytes, at) => {
                self.console.extend_from_slice(&bytes);
                self.arrivals.push((self.console.len(), at));
            }
            Event::Data(Stream::Stderr, bytes, _) => self.stderr.extend_from_slice(&bytes),
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

/// The control socket of a `Vm` started with [`Vm::start_controlled`]. Failures (no answer in
/// time, the connection closed) fail the test with the console, stderr and events received.
impl Vm {
    /// The control-socket client.
    #[track_caller]
    pub fn control(&mut self) -> &mut Control {
        if self.control.is_none() {
            self.fail("this Vm has no control socket: start it with Vm::start_controlled");
        }
        self.control.as_mut().expect("checked just above")
    }

    /// Sends `request` (a JSON object without `id`) and returns its response with the time it
    /// was read.
    #[track_caller]
    pub fn request_stamped(&mut self, request: Value) -> Reply {
        let reply = self.control().request(request, COMMAND_TIMEOUT);
        reply.unwrap_or_else(|failure| self.fail(&failure.to_string()))
    }

    /// Sends `request` and returns its `result`, or the error response.
    #[track_caller]
    pub fn request(&mut self, request: Value) -> Result<Value, ErrorReply> {
        self.request_stamped(request).outcome
    }

    /// Sends `request` and returns its `result`; an error response fails the test.
    #[track_caller]
    pub fn request_ok(&mut self, request: Value) -> Value {
        let shown = request.to_string();
        match self.request(request) {
            Ok(result) => result,
            Err(e) => self.fail(&format!("{shown} failed: {e}")),
        }
    }

    /// Waits up to `timeout` for an event `accept`s (the first one buffered, else the next to
    /// arrive) and takes it; `what` describes it for the failure message.
    #[track_caller]
    pub fn wait_event(
        &mut self,
        accept: impl Fn(&ControlEvent) -> bool,
        what: &str,
        timeout: Duration,
    ) -> ControlEvent {
        let event = self.control().wait_event(accept, what, timeout);
        event.unwrap_or_else(|failure| self.fail(&failure.to_string()))
    }

    /// Waits for the guest's `booted` event (its control thread is up) and returns its `boot`
    /// number (1 for the first boot).
    #[track_caller]
    pub fn wait_booted(&mut self) -> u64 {
        let event = self.wait_event(|e| e.is("booted"), "the booted event", BOOT_TIMEOUT);
        event.u64("boot").unwrap_or_else(|| self.fail(&format!("a booted event without a boot number: {}", event.body)))
    }

    /// Sends a typed request and returns its result; a refusal fails the test.
    #[track_caller]
    pub fn request_typed(&mut self, request: Request) -> Value {
        self.request_ok(typed(request))
    }

    /// Injects `fault` on `cpu` (for `duration_ms`, if given) and returns the pid of the task
    /// that carries it and when the acknowledgement arrived.
    #[track_caller]
    pub fn inject(&mut self, fault: &str, cpu: usize, duration_ms: Option<u64>) -> Injected {
        let fault = FaultKind::from_name(fault).unwrap_or_else(|| self.fail(&format!("no fault named {fault:?}")));
        let cpu = u32::try_from(cpu).unwrap_or_else(|_| self.fail(&format!("no CPU {cpu}")));
        let request = Request::Inject(Injection::Fault { fault, cpu: Some(cpu), duration_ms, message: None });
        self.inject_request(typed(request))
    }

    /// Sends an `inject` request (with any fields) and returns the pid and the ack's time.
    #[track_caller]
    pub fn inject_request(&mut self, request: Value) -> Injected {
        let shown = request.to_string();
        let reply = self.request_stamped(request);
        let pid = match &reply.outcome {
            Ok(result) => result["pid"].as_u64().and_then(|p| u32::try_from(p).ok()),
            Err(e) => self.fail(&format!("{shown} failed: {e}")),
        };
        let pid = pid.unwrap_or_else(|| self.fail(&format!("{shown} returned no pid: {:?}", reply.outcome)));
        Injected { pid, at: reply.at }
    }

    /// Reads sysctl `name` over the control socket.
    #[track_caller]
    pub fn sysctl_get(&mut self, name: &str) -> String {
        let result = self.request_ok(typed(Request::SysctlGet { name: name.into() }));
        sysctl_value(self, result)
    }

    /// Writes sysctl `name` over the control socket and returns the value read back.
    #[track_caller]
    pub fn sysctl_set(&mut self, name: &str, value: impl Into<Value>) -> String {
        let value = value.into();
        let value = serde_json::from_value::<SysctlValue>(value.clone())
            .unwrap_or_else(|_| self.fail(&format!("{value} is not a sysctl value (a string, number or boolean)")));
        let result = self.request_ok(typed(Request::SysctlSet { name: name.into(), value }));
        sysctl_value(self, result)
    }

    /// Waits for Linux's `Kernel panic - not syncing: MESSAGE` line and for the `panic` event,
    /// checks that the event carries the guest's crash reason with `detector` and `message`,
    /// and returns it.
    #[track_caller]
    pub fn expect_kernel_panic(&mut self, message: &str, detector: &str) -> ControlEvent {
        self.expect(crate::KernelLine::exactly(format!("Kernel panic - not syncing: {message}")), COMMAND_TIMEOUT);
        let event = self.wait_event(|e| e.is("panic"), "the panic event", COMMAND_TIMEOUT);
        if event.str("detector") != Some(detector) || event.str("message") != Some(message) {
            self.fail(&format!("expected a panic event from {detector:?} saying {message:?}, got {}", event.body));
        }
        event
    }

    /// Every control event received so far that arrived at or after `since`, oldest first.
    #[track_caller]
    pub fn events_since(&mut self, since: Instant) -> Vec<ControlEvent> {
        self.control().history().iter().filter(|e| e.at >= since).cloned().collect()
    }

    /// How long each vCPU's host thread (`vcpuN`, indexed by N) has waited for a physical CPU:
    /// its scheduler run delay from `/proc/PID/task/TID/schedstat`, which is what KVM reports
    /// to the guest as steal time. Zero for a thread or file that is not there (a host without
    /// schedstats).
    pub fn vcpu_run_delays(&mut self) -> Vec<Duration> {
        let mut delays = Vec::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.child.id())) else { return delays };
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let Some(cpu) = comm.trim_end().strip_prefix("vcpu").and_then(|n| n.parse::<usize>().ok()) else {
                continue;
            };
            let schedstat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            let run_delay_ns = schedstat.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
            if delays.len() <= cpu {
                delays.resize(cpu + 1, Duration::ZERO);
            }
            delays[cpu] = Duration::from_nanos(run_delay_ns);
        }
        delays
    }

    /// The steal time of each vCPU since `before` (an earlier [`Vm::vcpu_run_delays`]).
    pub fn stolen_since(&mut self, before: &[Duration]) -> Vec<Duration> {
        let now = self.vcpu_run_delays();
        now.iter().enumerate().map(|(cpu, d)| d.saturating_sub(before.get(cpu).copied().unwrap_or_default())).collect()
    }
}

/// A typed request as the JSON object the requests above take.
fn typed(request: Request) -> Value {
    serde_json::to_value(request).expect("a request is plain data")
}

/// The `value` of a sysctl result.
#[track_caller]
fn sysctl_value(vm: &mut Vm, result: Value) -> String {
    match result["value"].as_str() {
        Some(value) => value.to_string(),
        None => vm.fail(&format!("a sysctl result without a string value: {result}")),
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
                    if events.send(Event::Data(stream, buf[..n].to_vec(), Instant::now())).is_err() {
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
