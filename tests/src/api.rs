//! `Service`: the real `crashvisor serve` on an ephemeral port with its own crash store and
//! state directory, driven only over HTTP, as a test harness would: a small blocking HTTP/1.1
//! client (std only) and a Server-Sent Events reader that stamps each event on arrival. A
//! service can be killed and started again on the same directories, to adopt its VMs again.
//!
//! ```no_run
//! use crashvisor_tests::api::Service;
//! use serde_json::json;
//! use std::time::Duration;
//!
//! let service = Service::start(&[]);
//! let mut events = service.events("/v1/events?since=0");
//! let vm = service.post("/v1/vms", &json!({"name": "web-1", "kdump": {}}));
//! assert_eq!(vm.status, 201);
//! events.wait("web-1", "booted", Duration::from_secs(60));
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{built_binary, require_kvm, TempDir};

/// SIGKILL's number on Linux.
const SIGKILL: i32 = 9;
/// How long the service may take to listen, and to stop on SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound of one HTTP exchange (a vmcore download included).
const HTTP_TIMEOUT: Duration = Duration::from_secs(120);

/// Held by each test of the service for its whole run: the tests of one binary run one at a
/// time (each boots VMs, and the host may have only a couple of cores).
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SLOT: Mutex<()> = Mutex::new(());
    // A test that failed while holding the slot poisons it; its service is gone all the same.
    SLOT.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running `crashvisor serve`; dropping it stops it with SIGTERM (and kills it if it hangs).
/// A service that was killed and not started again has its VMMs killed on drop, so a failed
/// test leaves no VMM behind.
pub struct Service {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The crash store it serves.
    pub crash_dir: TempDir,
    /// Its state directory.
    pub state_dir: TempDir,
    args: Vec<String>,
    /// Variables added to its environment.
    env: Vec<(String, String)>,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// An HTTP response, read whole.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// Header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    ///
    /// # Panics
    ///
    /// If it is not JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("status {}: not JSON ({e}): {:?}", self.status, self.text()))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error.code` of an error body (empty if there is none).
    pub fn error_code(&self) -> String {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

impl Service {
    /// Starts `crashvisor serve --addr 127.0.0.1:0` with a fresh crash store and `args`, and
    /// waits until it listens.
    ///
    /// # Panics
    ///
    /// If KVM is missing, the binary is not built, or the service does not start.
    #[track_caller]
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_store(TempDir::new("api-crash"), args)
    }

    /// As [`Service::start`], serving the crash store `crash_dir` (which may hold crashes).
    #[track_caller]
    pub fn start_with_store(crash_dir: TempDir, args: &[&str]) -> Self {
        Self::start_with_env(crash_dir, args, &[])
    }

    /// As [`Service::start_with_store`], with variables `env` added to its environment (the
    /// `AWS_*` settings of a fleet store).
    #[track_caller]
    pub fn start_with_env(crash_dir: TempDir, args: &[&str], env: &[(&str, String)]) -> Self {
        require_kvm();
        let state_dir = TempDir::new("api-state");
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        let (child, addr, stderr) = spawn_serve(&crash_dir, &state_dir, &args, &env);
        Self { child, addr, crash_dir, state_dir, args, env, stderr }
    }

    /// Kills the service with SIGKILL (its VMMs run on) and waits until it is gone.
    pub fn kill(&mut self) -> std::process::ExitStatus {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        let _ = self.child.kill();
        self.child.wait().unwrap_or_else(|e| panic!("cannot wait for the killed service: {e}"))
    }

    /// Starts the service again on the same crash store and state directory, with the same
    /// options and environment, once the last one has ended (see [`Service::kill`]).
    ///
    /// # Panics
    ///
    /// If the last one still runs, or the new one does not start.
    #[track_caller]
    pub fn restart(&mut self) {
        assert!(matches!(self.child.try_wait(), Ok(Some(_))), "the service still runs; kill it first");
        let (child, addr, stderr) = spawn_serve(&self.crash_dir, &self.state_dir, &self.args, &self.env);
        (self.child, self.addr, self.stderr) = (child, addr, stderr);
    }

    /// Waits until VM `vm`'s kdump is operational (its capture kernel loaded).
    ///
    /// # Panics
    ///
    /// If it is not within `BOOT_TIMEOUT`.
    #[track_caller]
    pub fn wait_kdump(&self, vm: &str) {
        let deadline = Instant::now() + crate::BOOT_TIMEOUT;
        loop {
            let status = self.get(&format!("/v1/vms/{vm}/kdump"));
            if status.status == 200 && status.json()["state"] == "operational" {
                return;
            }
            assert!(Instant::now() < deadline, "kdump of {vm} never became operational: {}", status.text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The record of VM `name` in the state directory (`vm.json`, docs/api.md).
    ///
    /// # Panics
    ///
    /// If it cannot be read.
    #[track_caller]
    pub fn vm_record(&self, name: &str) -> Value {
        let path = self.state_dir.path().join("vms").join(name).join("vm.json");
        let text = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
    }

    /// The service's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The service's log so far (stderr).
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
    }

    /// Runs the `crashvisor` client (`args`: a subcommand and its arguments) against this
    /// service and returns what it printed.
    ///
    /// # Panics
    ///
    /// If the client cannot run or fails.
    #[track_caller]
    pub fn client(&self, args: &[&str]) -> String {
        let binary = built_binary("crashvisor", "api");
        let server = format!("http://{}", self.addr);
        let output = Command::new(&binary)
            .args(args)
            .args(["--server", &server])
            .env_remove("CRASHVISOR_TOKEN")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "crashvisor {} failed ({}): {stdout}{stderr}", args.join(" "), output.status);
        stdout
    }

    /// Sends a request with extra `headers` and a raw `body`.
    ///
    /// # Panics
    ///
    /// If the exchange fails at the HTTP level.
    #[track_caller]
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> HttpResponse {
        exchange(&self.addr, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\nservice log:\n{}", self.log()))
    }

    /// `GET path`.
    #[track_caller]
    pub fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, &[], None)
    }

    /// `POST path` with a JSON body.
    #[track_caller]
    pub fn post(&self, path: &str, body: &Value) -> HttpResponse {
        self.send_json("POST", path, body)
    }

    /// `PUT path` with a JSON body.
    #[track_caller]
    pub fn put(&self, path: &str, body: &Value) -> HttpResponse {
        self.send_json("PUT", path, body)
    }

    /// `DELETE path`.
    #[track_caller]
    pub fn delete(&self, path: &str) -> HttpResponse {
        self.request("DELETE", path, &[], None)
    }

    #[track_caller]
    fn send_json(&self, method: &str, path: &str, body: &Value) -> HttpResponse {
        let body = body.to_string();
        self.request(method, path, &[("content-type", "application/json")], Some(body.as_bytes()))
    }

    /// Opens the SSE stream at `path` (`/v1/events?since=0`, ...).
    ///
    /// # Panics
    ///
    /// If it cannot be opened.
    #[track_caller]
    pub fn events(&self, path: &str) -> EventStream {
        EventStream::open(&self.addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Sends SIGTERM and waits for the service to exit; its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("crashvisor serve did not stop within {START_TIMEOUT:?} of SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the service and hands back its crash store.
    pub fn into_store(mut self) -> TempDir {
        self.terminate();
        let dir = TempDir::new("api-crash-moved");
        std::fs::remove_dir(dir.path()).expect("an empty directory");
        std::fs::rename(self.crash_dir.path(), dir.path()).expect("move the crash store");
        dir
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(status)) if status.signal() == Some(SIGKILL)) {
            // Killed and not started again: nobody will stop its VMMs.
            kill_vmms_of(self.state_dir.path());
        }
        self.terminate();
    }
}

/// Starts `crashvisor serve` on `crash_dir` and `state_dir` with `args` and waits until it
/// listens: the child, its address, its stderr as it comes.
#[track_caller]
fn spawn_serve(
    crash_dir: &TempDir,
    state_dir: &TempDir,
    args: &[String],
    env: &[(String, String)],
) -> (Child, String, Arc<Mutex<Vec<String>>>) {
    let binary = built_binary("crashvisor", "api");
    let mut child = Command::new(&binary)
        .args(["serve", "--addr", "127.0.0.1:0", "--crash-dir", crash_dir.arg(), "--state-dir", state_dir.arg()])
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("CRASHVISOR_TOKEN")
        .env_remove("CRASHVISOR_ADDR")
        .env_remove("CRASHVISOR_RUN_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let lines = stderr.clone();
    let pipe = child.stderr.take().expect("stderr is piped");
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    });
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout is piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let addr = match rx.recv_timeout(START_TIMEOUT) {
        Ok(line) => match line.strip_prefix("crashvisor listening on http://") {
            Some(addr) => addr.to_owned(),
            None => panic!("crashvisor serve printed {line:?} instead of its address"),
        },
        Err(_) => {
            let _ = child.kill();
            let log = stderr.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
            panic!("crashvisor serve did not start listening:\n{log}");
        }
    };
    (child, addr, stderr)
}

/// SIGKILLs the VMMs of `state_dir` (and their dump writers): the processes whose command line
/// names a configuration in it, as the service starts them — those it recorded and one it was
/// starting when it was killed.
fn kill_vmms_of(state_dir: &std::path::Path) {
    let configs = format!("{}/vms/", state_dir.display());
    let Ok(processes) = std::fs::read_dir("/proc") else { return };
    for pid in processes.flatten().filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.split(|&b| b == 0).any(|arg| arg.starts_with(configs.as_bytes())) {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        }
    }
}

/// Whether process `pid` runs (it exists and is not a zombie).
pub fn process_runs(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    state.is_some_and(|s| s != "Z" && s != "X")
}

/// The running VMMs of this build (`vmm`, or `crashvisor vmm` as the service starts them) and
/// their forked dump writers, which run the same program.
pub fn vmm_processes() -> Vec<u32> {
    let profile_dir = crate::vmm_binary().parent().map(Path::to_path_buf).unwrap_or_default();
    let is_vmm = |pid: u32| {
        let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else { return false };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let first_arg = cmdline.split(|&b| b == 0).nth(1).unwrap_or_default();
        exe.parent() == Some(profile_dir.as_path()) && (exe.ends_with("vmm") || first_arg == b"vmm")
    };
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| is_vmm(pid) && process_runs(pid))
        .collect()
}

/// The parent of process `pid` (field 4 of `/proc/PID/stat`), if it exists.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Sends signal `name` to process `pid` if it still exists (it may end meanwhile); whether it
/// was sent.
pub fn signal_if_alive(pid: u32, name: &str) -> bool {
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).stderr(Stdio::null()).status();
    status.is_ok_and(|s| s.success())
}

/// Sends signal `name` (`TERM`, `KILL`) to process `pid` with kill(1).
///
/// # Panics
///
/// If `kill` cannot be run or fails.
#[track_caller]
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{name} {pid} failed");
}

/// One HTTP/1.1 exchange on a new connection.
fn exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if let Some(body) = body {
        stream.write_all(body)?;
    }
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader)?;
    let mut body = Vec::new();
    body_reader(&headers, reader).read_to_end(&mut body)?;
    Ok(HttpResponse { status, headers, body })
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// The status line and headers.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            return Ok((status, headers));
        }
        let (name, value) = line.split_once(':').ok_or_else(|| invalid(format!("bad header {line:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
}

/// The body as a reader: chunked, of `content-length`, or to the end of the connection.
fn body_reader(headers: &[(String, String)], reader: BufReader<TcpStream>) -> Box<dyn Read + Send> {
    let value = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    if value("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return Box::new(Chunked { inner: reader, left: 0, done: false });
    }
    match value("content-length").and_then(|v| v.parse::<u64>().ok()) {
        Some(len) => Box::new(reader.take(len)),
        None => Box::new(reader),
    }
}

/// A `Transfer-Encoding: chunked` body.
struct Chunked<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            let size = line.trim().split(';').next().unwrap_or("");
            self.left = usize::from_str_radix(size, 16).map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let want = self.left.min(buf.len());
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n;
        if self.left == 0 {
            let mut crlf = String::new();
            self.inner.read_line(&mut crlf)?;
        }
        Ok(n)
    }
}

/// One Server-Sent Event and when it arrived.
#[derive(Clone, Debug)]
pub struct SseEvent {
    /// When the reader thread read it.
    pub at: Instant,
    /// The SSE `id` (the event's sequence number).
    pub id: Option<u64>,
    /// The SSE `event` (its name).
    pub name: String,
    /// Its `data`, parsed.
    pub data: Value,
}

/// An open SSE stream; events are read by a thread and kept until taken.
pub struct EventStream {
    incoming: Receiver<SseEvent>,
    pending: Vec<SseEvent>,
    /// Every event received so far.
    pub history: Vec<SseEvent>,
}

impl EventStream {
    fn open(addr: &str, path: &str) -> std::io::Result<Self> {
        let mut stream = TcpStream::connect(addr)?;
        let head = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n\r\n");
        stream.write_all(head.as_bytes())?;
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader)?;
        if status != 200 {
            let mut body = Vec::new();
            body_reader(&headers, reader).read_to_end(&mut body)?;
            return Err(invalid(format!("status {status}: {}", String::from_utf8_lossy(&body))));
        }
        let body = BufReader::new(body_reader(&headers, reader));
        let (tx, incoming) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut id, mut name, mut data) = (None, String::new(), String::new());
            for line in body.lines().map_while(Result::ok) {
                if line.is_empty() {
                    if !name.is_empty() || !data.is_empty() {
                        let data = serde_json::from_str(&data).unwrap_or(Value::String(data.clone()));
                        let event =
                            SseEvent { at: Instant::now(), id: id.take(), name: std::mem::take(&mut name), data };
                        if tx.send(event).is_err() {
                            return;
                        }
                    }
                    data.clear();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
        });
        Ok(Self { incoming, pending: Vec::new(), history: Vec::new() })
    }

    /// Every event received so far, including those not read yet (which stay buffered).
    pub fn received(&mut self) -> &[SseEvent] {
        while let Ok(event) = self.incoming.try_recv() {
            self.history.push(event.clone());
            self.pending.push(event);
        }
        &self.history
    }

    /// Waits up to `timeout` for the first event named `name` of VM `vm` (buffered or new);
    /// other events stay buffered.
    ///
    /// # Panics
    ///
    /// On timeout or when the stream ends, listing what arrived.
    #[track_caller]
    pub fn wait(&mut self, vm: &str, name: &str, timeout: Duration) -> SseEvent {
        self.wait_for(|e| e.name == name && e.data["vm"] == vm, &format!("{name} of {vm}"), timeout)
    }

    /// Waits up to `timeout` for the first event `accept`s.
    ///
    /// # Panics
    ///
    /// On timeout or when the stream ends.
    #[track_caller]
    pub fn wait_for(&mut self, accept: impl Fn(&SseEvent) -> bool, what: &str, timeout: Duration) -> SseEvent {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.pending.iter().position(&accept) {
                return self.pending.remove(i);
            }
            match self.incoming.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(event) => {
                    self.history.push(event.clone());
                    self.pending.push(event);
                }
                Err(e) => {
                    let seen: Vec<String> =
                        self.history.iter().map(|e| format!("{} {}", e.name, e.data["vm"])).collect();
                    let why = if e == RecvTimeoutError::Timeout { "timed out" } else { "the stream ended" };
                    panic!("{why} waiting for {what}; events so far: {seen:?}");
                }
            }
        }
    }
}
