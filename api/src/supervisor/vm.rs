//! One VM's task: it owns the VM's `vmm` process and control socket, turns the VMM's events
//! into the VM's state (published through a `watch`) and the service's events, forwards
//! requests from HTTP handlers (which only hold a [`VmHandle`] and send commands), and notices
//! when the process ends. HTTP handlers never touch VM state.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crashvisor_control::{Request, ServerLine};
use dumpd::store::Retention;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use super::console::ConsoleLog;
use super::control::{self, ControlConn};
use super::process::{self, VmmProcess};
use super::spec::VmSpec;
use super::state::{Effect, ProcessEnd, Tracker, VmState};
use crate::error::ApiError;
use crate::events::{EventBus, NewEvent};
use crate::metrics::Metrics;

/// How long the VMM may take to open its control socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a VMM may take to end after `shutdown` before it gets SIGTERM, and after SIGTERM
/// before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
const TERM_GRACE: Duration = Duration::from_secs(2);
/// How long the last event lines of an exited VMM are read for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests that may wait for the VMM at once.
const MAX_PENDING: usize = 256;
/// Commands that may queue for the task.
const COMMAND_QUEUE: usize = 64;
/// Console lines quoted in a failure's reason.
const FAILURE_CONSOLE_LINES: usize = 10;

/// Where a control request's result goes.
type ControlReply = oneshot::Sender<Result<Value, ApiError>>;

/// What HTTP handlers ask of a VM.
pub enum VmCommand {
    /// Send a control request and return its result.
    Control {
        /// The request.
        request: Request,
        /// The reply.
        reply: ControlReply,
    },
    /// Stop the VM (the VMM exits; the VM stays listed as stopped).
    Stop {
        /// Answered once the VMM has exited.
        reply: oneshot::Sender<()>,
    },
    /// Restart the VM's VMM with the same configuration.
    Reboot {
        /// Answered once the new VMM runs.
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
}

/// A VM's published status.
#[derive(Clone, Debug, Serialize)]
pub struct VmStatus {
    /// Its state.
    pub state: VmState,
    /// The VMM's process id while it runs.
    pub pid: Option<u32>,
    /// Guest boots so far.
    pub boots: u64,
    /// Guest panics so far.
    pub crashes: u64,
    /// Ids of the vmcores it produced.
    pub vmcores: Vec<String>,
    /// The last panic (detector, cpu, message, ...).
    pub last_panic: Option<Value>,
    /// The last lockup (kind, cpu, arg).
    pub last_lockup: Option<Value>,
    /// Why it failed.
    pub failure: Option<String>,
    /// The guest kernel's release.
    pub release: Option<String>,
    /// When the current boot said hello.
    #[serde(skip)]
    pub booted_at: Option<Instant>,
}

/// What a handler holds to reach a VM.
#[derive(Clone)]
pub struct VmHandle {
    /// The configuration.
    pub spec: Arc<VmSpec>,
    /// When the VM was created.
    pub created: SystemTime,
    /// Its console output.
    pub console: Arc<ConsoleLog>,
    commands: mpsc::Sender<VmCommand>,
    status: watch::Receiver<VmStatus>,
}

impl VmHandle {
    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The current status.
    pub fn status(&self) -> VmStatus {
        self.status.borrow().clone()
    }

    /// The current state.
    pub fn state(&self) -> VmState {
        self.status.borrow().state
    }

    /// Sends a control request and waits up to `timeout` for its result.
    pub async fn control(&self, request: Request, timeout: Duration) -> Result<Value, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.send(VmCommand::Control { request, reply }).await?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(gone(self.name())),
            Err(_) => Err(ApiError::new(
                axum::http::StatusCode::GATEWAY_TIMEOUT,
                "guest_timeout",
                format!("the VMM did not answer within {} s", timeout.as_secs()),
            )),
        }
    }

    /// Stops the VM and waits until its VMM has exited.
    pub async fn stop(&self) {
        let (reply, done) = oneshot::channel();
        if self.send(VmCommand::Stop { reply }).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Restarts the VM's VMM and waits until the new one runs.
    pub async fn reboot(&self) -> Result<(), ApiError> {
        let (reply, done) = oneshot::channel();
        self.send(VmCommand::Reboot { reply }).await?;
        done.await.map_err(|_| gone(self.name()))?
    }

    async fn send(&self, command: VmCommand) -> Result<(), ApiError> {
        self.commands.send(command).await.map_err(|_| gone(self.name()))
    }
}

fn gone(name: &str) -> ApiError {
    ApiError::conflict("vm_unavailable", format!("VM {name} is being deleted"))
}

/// Where a VM's VMM comes from and what it is given.
#[derive(Clone, Debug)]
pub struct Launch {
    /// This binary (it runs the VMM as `crashvisor vmm`).
    pub exe: PathBuf,
    /// The VM's control socket.
    pub control: PathBuf,
    /// Where the VMM's configuration is written for it to read (`vmm --config`).
    pub config: PathBuf,
    /// The crash store.
    pub crash_dir: PathBuf,
    /// What the crash store keeps.
    pub retention: Retention,
}

/// The service-wide things a VM reports to.
#[derive(Clone)]
pub struct Services {
    /// The event bus.
    pub bus: Arc<EventBus>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
}

/// Starts the task of a new VM and returns its handle.
pub fn start(spec: VmSpec, launch: Launch, services: Services) -> VmHandle {
    let spec = Arc::new(spec);
    let console = Arc::new(ConsoleLog::new());
    let tracker = Tracker::new();
    let (status_tx, status) = watch::channel(status_of(&tracker, None));
    let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
    let task = VmTask { spec: spec.clone(), launch, services, console: console.clone(), tracker, status_tx, inbox };
    let span = tracing::info_span!("vm", name = %spec.name);
    tokio::spawn(task.run().instrument(span));
    VmHandle { spec, created: SystemTime::now(), console, commands, status }
}

fn status_of(tracker: &Tracker, pid: Option<u32>) -> VmStatus {
    VmStatus {
        state: tracker.state,
        pid,
        boots: tracker.boots,
        crashes: tracker.crashes,
        vmcores: tracker.vmcores.clone(),
        last_panic: tracker.last_panic.clone(),
        last_lockup: tracker.last_lockup.clone(),
        failure: tracker.failure.clone(),
        release: tracker.release.clone(),
        booted_at: tracker.booted_at,
    }
}

/// Why the VMM is being stopped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StopKind {
    Stop,
    Reboot,
}

/// One VMM process of the VM and what is in flight with it.
struct Session {
    process: VmmProcess,
    pid: Option<u32>,
    control: Option<ControlConn>,
    connecting: bool,
    /// Requests sent and not yet answered: their command's name and whom to answer.
    pending: HashMap<u64, (&'static str, ControlReply)>,
    next_id: u64,
    stop: Option<StopKind>,
    /// When the stop escalates (to SIGTERM, then SIGKILL).
    kill_at: Option<tokio::time::Instant>,
    terminated: bool,
    stop_waiters: Vec<oneshot::Sender<()>>,
    reboot_waiters: Vec<oneshot::Sender<Result<(), ApiError>>>,
    /// Why the service killed the VMM, if it did so on its own.
    killed_because: Option<&'static str>,
}

enum End {
    Finished,
    Reboot(Vec<oneshot::Sender<Result<(), ApiError>>>),
}

struct VmTask {
    spec: Arc<VmSpec>,
    launch: Launch,
    services: Services,
    console: Arc<ConsoleLog>,
    tracker: Tracker,
    status_tx: watch::Sender<VmStatus>,
    inbox: mpsc::Receiver<VmCommand>,
}

impl VmTask {
    /// Writes the VMM's configuration and starts it.
    async fn start_vmm(&self) -> Result<VmmProcess, String> {
        let Launch { exe, control, config, crash_dir, retention } = &self.launch;
        let vm = self.spec.vmm_config(control, crash_dir, *retention);
        let json = serde_json::to_vec_pretty(&vm).map_err(|e| format!("cannot start the VMM: {e}"))?;
        tokio::fs::write(config, json)
            .await
            .map_err(|e| format!("cannot start the VMM: cannot write its configuration {}: {e}", config.display()))?;
        VmmProcess::spawn(exe, config, self.console.clone())
            .map_err(|e| format!("cannot start the VMM ({}): {e}", exe.display()))
    }

    async fn run(mut self) {
        let mut inbox_open = true;
        loop {
            let process = match self.start_vmm().await {
                Ok(process) => process,
                Err(reason) => {
                    tracing::error!("{reason}");
                    let effects = self.tracker.on_spawn_failure(reason);
                    self.apply(effects, None);
                    break;
                }
            };
            let pid = process.pid();
            tracing::info!(pid, "VMM started");
            self.publish_status(pid);
            let mut session = Session {
                process,
                pid,
                control: None,
                connecting: true,
                pending: HashMap::new(),
                next_id: 1,
                stop: None,
                kill_at: None,
                terminated: false,
                stop_waiters: Vec::new(),
                reboot_waiters: Vec::new(),
                killed_because: None,
            };
            match self.supervise(&mut session, &mut inbox_open).await {
                End::Finished => break,
                End::Reboot(waiters) => {
                    self.tracker.restarted();
                    self.services.bus.publish(&self.spec.name, NewEvent::new("rebooted", json!({"cause": "api"})));
                    for waiter in waiters {
                        let _ = waiter.send(Ok(()));
                    }
                }
            }
        }
        if let Err(e) = tokio::fs::remove_file(&self.launch.config).await {
            tracing::debug!("cannot remove {}: {e}", self.launch.config.display());
        }
        self.console.finish();
        self.publish_status(None);
        // The VM is over; answer whoever still asks until the last handle is gone.
        while inbox_open {
            match self.inbox.recv().await {
                Some(command) => self.refuse(command),
                None => inbox_open = false,
            }
        }
    }

    /// Runs one VMM process until it ends.
    async fn supervise(&mut self, s: &mut Session, inbox_open: &mut bool) -> End {
        let connect_deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        if !*inbox_open {
            self.begin_stop(s, StopKind::Stop).await;
        }
        loop {
            let kill_at = s.kill_at.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                conn = tokio::time::timeout_at(connect_deadline, ControlConn::connect(&self.launch.control)),
                    if s.connecting =>
                {
                    s.connecting = false;
                    match conn {
                        Ok(conn) => s.control = Some(conn),
                        Err(_) => {
                            tracing::error!("the VMM did not open its control socket; killing it");
                            s.killed_because = Some("the VMM did not open its control socket within 10 s");
                            let _ = s.process.child.start_kill();
                        }
                    }
                }
                line = next_line(&mut s.control) => match line {
                    Some(line) => self.on_line(s, line),
                    None => s.control = None,
                },
                command = self.inbox.recv(), if *inbox_open => match command {
                    Some(command) => self.on_command(s, command).await,
                    None => {
                        // Every handle is gone: the VM was deleted.
                        *inbox_open = false;
                        self.begin_stop(s, StopKind::Stop).await;
                    }
                },
                status = s.process.child.wait() => return self.on_exit(s, status).await,
                () = tokio::time::sleep_until(kill_at), if s.kill_at.is_some() => escalate(s),
            }
        }
    }

    async fn on_command(&mut self, s: &mut Session, command: VmCommand) {
        match command {
            VmCommand::Control { request, reply } => {
                let name = request.name();
                let refused = if s.stop.is_some() {
                    Some(ApiError::conflict("vm_unavailable", "the VM is stopping"))
                } else if s.pending.len() >= MAX_PENDING {
                    Some(ApiError::new(
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "busy",
                        format!("{MAX_PENDING} requests already wait for this VM; retry"),
                    ))
                } else {
                    None
                };
                if let Some(error) = refused {
                    let _ = reply.send(Err(error));
                    return;
                }
                let Some(conn) = s.control.as_mut() else {
                    let _ = reply.send(Err(ApiError::conflict(
                        "vm_unavailable",
                        "the VM's control socket is not connected (the VMM is starting or stopping); retry",
                    )));
                    return;
                };
                let id = s.next_id;
                s.next_id += 1;
                match conn.send(id, &request).await {
                    Ok(()) => {
                        s.pending.insert(id, (name, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(ApiError::conflict(
                            "vm_unavailable",
                            format!("cannot reach the VMM (it is probably exiting): {e}"),
                        )));
                    }
                }
            }
            VmCommand::Stop { reply } => {
                s.stop_waiters.push(reply);
                self.begin_stop(s, StopKind::Stop).await;
            }
            VmCommand::Reboot { reply } => {
                if s.stop == Some(StopKind::Stop) {
                    let _ = reply.send(Err(ApiError::conflict("vm_unavailable", "the VM is stopping")));
                    return;
                }
                s.reboot_waiters.push(reply);
                self.begin_stop(s, StopKind::Reboot).await;
            }
        }
    }

    /// Asks the VMM to stop (a stop wins over a reboot) with `shutdown`, escalating to SIGTERM
    /// after `STOP_GRACE` (at once when it cannot be asked) and to SIGKILL `TERM_GRACE` later.
    async fn begin_stop(&mut self, s: &mut Session, kind: StopKind) {
        let first = s.stop.is_none();
        if kind == StopKind::Stop {
            s.stop = Some(StopKind::Stop);
            for waiter in s.reboot_waiters.drain(..) {
                let _ = waiter.send(Err(ApiError::conflict("vm_unavailable", "the VM was stopped instead")));
            }
        } else if first {
            s.stop = Some(kind);
        }
        if first {
            tracing::info!("stopping the VMM");
            s.kill_at = Some(tokio::time::Instant::now() + STOP_GRACE);
            let id = s.next_id;
            s.next_id += 1;
            let asked = match s.control.as_mut() {
                Some(conn) => conn.send(id, &Request::Shutdown {}).await.is_ok(),
                None => false,
            };
            if !asked {
                escalate(s);
            }
        }
    }

    fn on_line(&mut self, s: &mut Session, line: ServerLine) {
        match line {
            ServerLine::Event(event) => {
                let effects = self.tracker.on_control_event(&event, Instant::now());
                self.apply(effects, s.pid);
            }
            ServerLine::Response(response) => {
                let pending = response.id.as_u64().and_then(|id| s.pending.remove(&id));
                if let Some((command, reply)) = pending {
                    let _ = reply.send(control::outcome(response, command));
                }
            }
        }
    }

    async fn on_exit(&mut self, s: &mut Session, status: std::io::Result<std::process::ExitStatus>) -> End {
        // The VMM sends its last events before it exits: read what is left.
        if let Some(mut conn) = s.control.take() {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
                while let Some(line) = conn.next().await {
                    self.on_line(s, line);
                }
            })
            .await;
        }
        for (_, (_, reply)) in s.pending.drain() {
            let _ = reply.send(Err(ApiError::conflict("vm_unavailable", "the VM stopped before answering")));
        }
        let (success, status) = match status {
            Ok(status) => (status.success(), process::describe(status)),
            Err(e) => (false, format!("an unknown status ({e})")),
        };
        tracing::info!("the VMM exited: {status}");
        if s.stop == Some(StopKind::Reboot) {
            return End::Reboot(std::mem::take(&mut s.reboot_waiters));
        }
        let mut last_output = Vec::new();
        last_output.extend(s.killed_because.map(str::to_owned));
        last_output.extend(Some(s.process.stderr_tail()).filter(|t| !t.is_empty()));
        last_output.extend(Some(self.console.tail_lines(FAILURE_CONSOLE_LINES)).filter(|t| !t.is_empty()));
        let end = ProcessEnd { success, status, last_output: last_output.join("\n") };
        let effects = self.tracker.on_process_end(&end, s.stop.is_some());
        self.apply(effects, None);
        for waiter in s.stop_waiters.drain(..) {
            let _ = waiter.send(());
        }
        End::Finished
    }

    fn refuse(&self, command: VmCommand) {
        let error = || {
            ApiError::conflict("vm_not_running", format!("VM {} is {}", self.spec.name, self.tracker.state.as_str()))
        };
        match command {
            VmCommand::Control { reply, .. } => {
                let _ = reply.send(Err(error()));
            }
            VmCommand::Stop { reply } => {
                let _ = reply.send(());
            }
            VmCommand::Reboot { reply } => {
                let _ = reply.send(Err(error()));
            }
        }
    }

    /// Publishes the new status first (so a client that reacts to an event sees the state it
    /// implies), then the events and counters.
    fn apply(&mut self, effects: Vec<Effect>, pid: Option<u32>) {
        self.publish_status(pid);
        let metrics = &self.services.metrics;
        for effect in effects {
            match effect {
                Effect::Publish(event) => {
                    self.services.bus.publish(&self.spec.name, event);
                }
                Effect::Lockup(kind) => metrics.lockup(&kind),
                Effect::Panic(detector) => metrics.panic(&detector),
                Effect::Vmcore { size, on_disk, capture } => metrics.vmcore(size, on_disk, capture),
                Effect::DumpFailed => metrics.dump_failed(),
                Effect::Failed => metrics.vm_failed(),
            }
        }
    }

    fn publish_status(&self, pid: Option<u32>) {
        let pid = if self.tracker.state.is_live() { pid } else { None };
        self.status_tx.send_replace(status_of(&self.tracker, pid));
    }
}

/// The next step of a stop the VMM did not carry out by itself: SIGTERM, then SIGKILL.
fn escalate(s: &mut Session) {
    if s.terminated {
        tracing::warn!("the VMM did not end within {TERM_GRACE:?} of SIGTERM; killing it");
        s.kill_at = None;
        let _ = s.process.child.start_kill();
    } else {
        tracing::warn!("the VMM did not stop by itself; sending SIGTERM");
        s.terminated = true;
        s.kill_at = Some(tokio::time::Instant::now() + TERM_GRACE);
        s.process.terminate();
    }
}

/// The next line of the control socket, or never when there is none.
async fn next_line(conn: &mut Option<ControlConn>) -> Option<ServerLine> {
    match conn {
        Some(conn) => conn.next().await,
        None => std::future::pending().await,
    }
}
