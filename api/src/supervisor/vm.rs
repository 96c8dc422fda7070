//! One VM's task: it owns the VM's `vmm` process (started here, or adopted again after a
//! restart of the service) and control socket, turns the VMM's events into the VM's state
//! (published through a `watch`) and the service's events, keeps the VM's record in the state
//! directory, follows the VMM's console and stderr files, forwards requests from HTTP handlers
//! (which only hold a [`VmHandle`] and send commands), and notices when the process ends.
//! HTTP handlers never touch VM state.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crashvisor_control::{Event, Request, ServerLine};
use dumpd::store::{CrashStore, Retention};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use super::adopt::{self, Adopted, STATUS_ID};
use super::console::{ConsoleLog, CONSOLE_RING_BYTES};
use super::control::{self, ControlConn};
use super::follow::{self, Follower};
use super::handle::ControlReply;
pub use super::handle::{VmCommand, VmHandle, VmStatus};
use super::keeper::RecordKeeper;
use super::process::{Exit, StderrLog, VmmProcess};
use super::record::{StateDirError, VmDir, VmRecord, VmmIdentity, RECORD_FORMAT};
use super::spec::VmSpec;
use super::state::{Effect, ProcessEnd, Tracker};
use crate::error::ApiError;
use crate::events::{EventBus, NewEvent};
use crate::metrics::Metrics;

/// How long the VMM may take to open its control socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a VMM may take to end after `shutdown` before it gets SIGTERM, and after SIGTERM
/// before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// `STOP_GRACE` while a dump is being written: the VMM finishes it before it ends.
pub(super) const DUMP_STOP_GRACE: Duration = Duration::from_secs(60);
const TERM_GRACE: Duration = Duration::from_secs(2);
/// How long the last event lines of an exited VMM are read for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait, once a VMM ended, for its dump writer to let go of a crash the VMM had taken
/// over (the writer looks every 5 ms).
const WRITER_LET_GO: Duration = Duration::from_secs(1);
/// Requests that may wait for the VMM at once.
const MAX_PENDING: usize = 256;
/// Commands that may queue for the task.
const COMMAND_QUEUE: usize = 64;
/// Console lines quoted in a failure's reason.
const FAILURE_CONSOLE_LINES: usize = 10;
/// stderr read back after a restart, for a failure's reason.
const STDERR_READ_BACK: u64 = 8 * 1024;
/// stderr kept on disk behind what has been read.
const STDERR_KEEP_BYTES: u64 = 64 * 1024;

/// Where a VM's VMM comes from and what it is given.
#[derive(Clone, Debug)]
pub struct Launch {
    /// This binary (it runs the VMM as `crashvisor vmm`).
    pub exe: PathBuf,
    /// The VM's control socket.
    pub control: PathBuf,
    /// The VM's directory in the state directory (record, VMM configuration, console, stderr).
    pub dir: VmDir,
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
    /// The crash store, searched for crashes committed while no service ran.
    pub store: CrashStore,
}

/// Starts the task of a new VM and returns its handle, once the VM's record is on disk: a
/// service killed right after it answered the creation finds the VM when it restarts.
pub fn start(spec: VmSpec, launch: Launch, services: Services) -> Result<VmHandle, StateDirError> {
    let (mut task, handle) = new_task(spec, SystemTime::now(), Tracker::new(), launch, services, None);
    let record = task.record();
    task.launch.dir.write(&record)?;
    task.keeper = Some(RecordKeeper::start(task.launch.dir.clone(), record, true));
    run_task(task, None);
    Ok(handle)
}

/// Starts the task of a VM found in the state directory: its VMM, if the VM was live, is
/// adopted again (or the VM fails, saying why).
pub fn restore(record: VmRecord, launch: Launch, services: Services) -> VmHandle {
    let created = UNIX_EPOCH + Duration::from_millis(record.created_unix_ms);
    let restored = Some(record.vmm);
    let (mut task, handle) = new_task(record.spec, created, record.status, launch, services, record.vmm);
    // Written anew: the found record may be of an older format or half-known state.
    task.keeper = Some(RecordKeeper::start(task.launch.dir.clone(), task.record(), false));
    run_task(task, restored);
    handle
}

/// A VM's task, not yet running, and its handle; `vmm`: the VMM recorded for a VM from the
/// state directory.
fn new_task(
    spec: VmSpec,
    created: SystemTime,
    tracker: Tracker,
    launch: Launch,
    services: Services,
    vmm: Option<VmmIdentity>,
) -> (VmTask, VmHandle) {
    let spec = Arc::new(spec);
    let console = Arc::new(ConsoleLog::new());
    let (status_tx, status) = watch::channel(VmStatus::of(&tracker, None));
    let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
    let created_unix_ms = created.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let task = VmTask {
        spec: spec.clone(),
        created_unix_ms,
        launch,
        services,
        console: console.clone(),
        stderr: StderrLog::default(),
        followers: Vec::new(),
        tracker,
        vmm,
        orphan_writer: None,
        keeper: None,
        status_tx,
        inbox,
    };
    (task, VmHandle { spec, created, console, commands, status })
}

/// Whether a dump writer forked by VMM `pid` still writes a crash (false when that cannot be
/// told).
async fn is_written_by(store: CrashStore, pid: u32) -> bool {
    matches!(tokio::task::spawn_blocking(move || store.is_written_by(pid)).await, Ok(Ok(true)))
}

/// Returns once no dump writer of VMM `pid` writes a crash any more (a writer always ends: it
/// commits or records its crash, then exits).
async fn writer_done(store: CrashStore, pid: Option<u32>) {
    let Some(pid) = pid else { return std::future::pending().await };
    while is_written_by(store.clone(), pid).await {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `task`; `restored`: the VMM recorded for a VM from the state directory.
fn run_task(task: VmTask, restored: Option<Option<VmmIdentity>>) {
    let span = tracing::info_span!("vm", name = %task.spec.name);
    tokio::spawn(task.run(restored).instrument(span));
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

impl Session {
    /// A session with `process`, connected already (adopted) or yet to connect (started).
    fn new(process: VmmProcess, control: Option<ControlConn>) -> Self {
        Self {
            process,
            connecting: control.is_none(),
            control,
            pending: HashMap::new(),
            next_id: STATUS_ID + 1,
            stop: None,
            kill_at: None,
            terminated: false,
            stop_waiters: Vec::new(),
            reboot_waiters: Vec::new(),
            killed_because: None,
        }
    }
}

enum End {
    Finished,
    Reboot(Vec<oneshot::Sender<Result<(), ApiError>>>),
}

struct VmTask {
    spec: Arc<VmSpec>,
    created_unix_ms: u64,
    launch: Launch,
    services: Services,
    console: Arc<ConsoleLog>,
    stderr: StderrLog,
    /// The console's and stderr's followers while a VMM runs.
    followers: Vec<Follower>,
    tracker: Tracker,
    /// The VMM process, while there is one.
    vmm: Option<VmmIdentity>,
    /// The pid of the ended VMM whose forked dump writer still finishes a crash alone: what it
    /// commits or records as failed is announced once it is done.
    orphan_writer: Option<u32>,
    /// The record's writer; gone once the VM is forgotten.
    keeper: Option<RecordKeeper>,
    status_tx: watch::Sender<VmStatus>,
    inbox: mpsc::Receiver<VmCommand>,
}

impl VmTask {
    /// `restored`: the VMM recorded for a VM from the state directory; `None` for a new VM.
    async fn run(mut self, restored: Option<Option<VmmIdentity>>) {
        let live = restored.is_none() || self.tracker.state.is_live();
        self.open_logs(live);
        let mut session = match restored {
            None => self.spawn_session().await,
            Some(recorded) => {
                let session = if live { self.adopt_session(recorded).await } else { None };
                self.announce_missed_vmcores(true).await;
                self.announce_missed_failures().await;
                session
            }
        };
        let mut inbox_open = true;
        while let Some(mut s) = session.take() {
            if let End::Reboot(waiters) = self.supervise(&mut s, &mut inbox_open).await {
                drop(s);
                self.tracker.restarted();
                self.services.bus.publish(&self.spec.name, NewEvent::new("rebooted", json!({"cause": "api"})));
                session = self.spawn_session().await;
                for waiter in waiters {
                    let _ = waiter.send(match session {
                        Some(_) => Ok(()),
                        None => Err(ApiError::conflict("vm_not_running", "the VM's new VMM could not be started")),
                    });
                }
            }
        }
        for follower in self.followers.drain(..) {
            follower.finish().await;
        }
        self.console.finish();
        self.publish_status();
        // The VM is over; answer whoever still asks until the last handle is gone, and announce
        // what a dump writer that outlived the VMM leaves when it is done.
        while inbox_open {
            tokio::select! {
                command = self.inbox.recv() => match command {
                    Some(VmCommand::Forget { reply }) => {
                        let _ = reply.send(self.forget().await);
                    }
                    Some(command) => self.refuse(command),
                    None => inbox_open = false,
                },
                () = writer_done(self.services.store.clone(), self.orphan_writer), if self.orphan_writer.is_some() => {
                    self.orphan_writer = None;
                    self.announce_missed_vmcores(false).await;
                    self.announce_missed_failures().await;
                }
            }
        }
        if let Some(keeper) = self.keeper.take() {
            keeper.finish().await;
        }
    }

    /// Reads the console's and stderr's files back (after a restart they hold what the VMM
    /// wrote before) and, if `follow`, follows them.
    fn open_logs(&mut self, follow: bool) {
        let dir = &self.launch.dir;
        let open = |path: PathBuf| File::options().read(true).write(true).create(true).truncate(false).open(path);
        match open(dir.console()).and_then(|file| follow::tail(&file, CONSOLE_RING_BYTES as u64).map(|t| (file, t))) {
            Ok((file, (old, len))) => {
                self.console.push(&old);
                if follow {
                    let console = self.console.clone();
                    let sink = move |chunk: &[u8]| console.push(chunk);
                    self.followers.push(Follower::start(file, len, CONSOLE_RING_BYTES as u64, sink));
                }
            }
            Err(e) => tracing::warn!("cannot read the console file {}: {e}", dir.console().display()),
        }
        match open(dir.stderr()).and_then(|file| follow::tail(&file, STDERR_READ_BACK).map(|t| (file, t))) {
            Ok((file, (old, len))) => {
                self.stderr.push(&old, false);
                if follow {
                    let stderr = self.stderr.clone();
                    let sink = move |chunk: &[u8]| stderr.push(chunk, true);
                    self.followers.push(Follower::start(file, len, STDERR_KEEP_BYTES, sink));
                }
            }
            Err(e) => tracing::warn!("cannot read the VMM's stderr file {}: {e}", dir.stderr().display()),
        }
    }

    /// Starts a VMM; `None` (the VM failed) if it cannot be.
    async fn spawn_session(&mut self) -> Option<Session> {
        match self.spawn().await {
            Ok(process) => {
                let identity = process.identity();
                tracing::info!(pid = identity.pid, "VMM started");
                self.vmm = Some(identity);
                self.publish_status();
                self.flush_record().await;
                Some(Session::new(process, None))
            }
            Err(reason) => {
                tracing::error!("{reason}");
                let effects = self.tracker.on_spawn_failure(reason);
                self.apply(effects).await;
                None
            }
        }
    }

    /// Writes the VMM's configuration and starts it, its console and stderr appended to the
    /// VM's files.
    async fn spawn(&mut self) -> Result<VmmProcess, String> {
        // On disk before the process exists: a service killed from here on finds the VM with
        // no VMM recorded, and looks for the one serving its control socket.
        self.vmm = None;
        self.publish_status();
        self.flush_record().await;
        let Launch { exe, control, dir, crash_dir, retention } = &self.launch;
        let vm = self.spec.vmm_config(control, crash_dir, *retention);
        let json = serde_json::to_vec_pretty(&vm).map_err(|e| format!("cannot start the VMM: {e}"))?;
        let config = dir.config();
        tokio::fs::write(&config, json)
            .await
            .map_err(|e| format!("cannot start the VMM: cannot write its configuration {}: {e}", config.display()))?;
        let append = |path: PathBuf| {
            File::options()
                .append(true)
                .create(true)
                .open(&path)
                .map_err(|e| format!("cannot start the VMM: cannot open {}: {e}", path.display()))
        };
        let (console, stderr) = (append(dir.console())?, append(dir.stderr())?);
        VmmProcess::spawn(exe, &config, console, stderr)
            .map_err(|e| format!("cannot start the VMM ({}): {e}", exe.display()))
    }

    /// Adopts the VM's VMM again after a restart of the service (or starts it, if the last
    /// service died before it had); `None` (the VM failed, or stopped if its VMM had said so)
    /// if it cannot be.
    async fn adopt_session(&mut self, recorded: Option<VmmIdentity>) -> Option<Session> {
        match adopt::adopt(recorded, &self.launch.control).await {
            Ok(Adopted { process, conn, status, events }) => {
                let identity = process.identity();
                self.vmm = Some(identity);
                for event in events {
                    let effects = self.tracker.on_control_event(&event, Instant::now());
                    self.apply(effects).await;
                }
                let effects = self.tracker.on_adopted(&status, identity.pid);
                tracing::info!(pid = identity.pid, state = self.tracker.state.as_str(), "VMM adopted");
                self.apply(effects).await;
                Some(Session::new(process, Some(conn)))
            }
            Err(reason) if recorded.is_none() => {
                // The last service died as it was starting the VMM (a new VM, or a reboot):
                // start it, as it was asked to.
                tracing::info!("no VMM was started for the VM ({reason}); starting one");
                self.spawn_session().await
            }
            Err(reason) => {
                tracing::warn!("cannot adopt the VMM: {reason}");
                self.record_abandoned_captures(recorded.map(|r| r.pid)).await;
                // As when a VMM exits: the dead VMM leaves the record with the VM's new state.
                self.vmm = None;
                let effects = self.tracker.on_lost(&reason, &self.last_output(None));
                self.apply(effects).await;
                None
            }
        }
    }

    /// Announces the VM's crashes committed while no service listened (`found_at_restart`), or
    /// by a dump writer that outlived the VMM.
    async fn announce_missed_vmcores(&mut self, found_at_restart: bool) {
        let store = self.services.store.clone();
        let (name, created, announced) = (self.spec.name.clone(), self.created_unix_ms, self.tracker.vmcores.clone());
        let missed = tokio::task::spawn_blocking(move || adopt::missed_vmcores(&store, &name, created, &announced));
        for event in missed.await.unwrap_or_default() {
            let mut effects = self.tracker.on_control_event(&event, Instant::now());
            for effect in effects.iter_mut().filter(|_| found_at_restart) {
                if let Effect::Publish(event) = effect {
                    event.fields.insert("found_at_restart".into(), Value::Bool(true));
                }
            }
            self.apply(effects).await;
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
                            s.process.kill();
                        }
                    }
                }
                line = next_line(&mut s.control) => match line {
                    Some(line) => self.on_line(s, line).await,
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
                exit = s.process.wait() => return self.on_exit(s, exit).await,
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
            VmCommand::Forget { reply } => {
                let _ = reply.send(Err(ApiError::conflict("vm_running", "the VM runs again; stop it first")));
            }
        }
    }

    /// Asks the VMM to stop (a stop wins over a reboot) with `shutdown`, escalating to SIGTERM
    /// after `STOP_GRACE` (`DUMP_STOP_GRACE` while a dump is written; at once when it cannot be
    /// asked) and to SIGKILL `TERM_GRACE` later.
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
            let grace = if self.tracker.is_dumping() { DUMP_STOP_GRACE } else { STOP_GRACE };
            tracing::info!("stopping the VMM (SIGTERM if it has not ended in {grace:?})");
            s.kill_at = Some(tokio::time::Instant::now() + grace);
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

    async fn on_line(&mut self, s: &mut Session, line: ServerLine) {
        match line {
            ServerLine::Event(event) => {
                let effects = self.tracker.on_control_event(&event, Instant::now());
                self.apply(effects).await;
            }
            ServerLine::Response(response) => {
                let pending = response.id.as_u64().and_then(|id| s.pending.remove(&id));
                if let Some((command, reply)) = pending {
                    let _ = reply.send(control::outcome(response, command));
                }
            }
        }
    }

    async fn on_exit(&mut self, s: &mut Session, exit: std::io::Result<Exit>) -> End {
        // The VMM sends its last events before it exits: read what is left.
        if let Some(mut conn) = s.control.take() {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
                while let Some(line) = conn.next().await {
                    self.on_line(s, line).await;
                }
            })
            .await;
        }
        for (_, (_, reply)) in s.pending.drain() {
            let _ = reply.send(Err(ApiError::conflict("vm_unavailable", "the VM stopped before answering")));
        }
        let (success, status) = match exit {
            Ok(exit) => (exit.success(), exit.describe()),
            Err(e) => (None, format!("an unknown status ({e})")),
        };
        tracing::info!("the VMM exited: {status}");
        // The VMM stays in the record until the VM's new state replaces it: a service killed in
        // between finds a VMM that is gone (the VM failed), never a live VM with no VMM recorded
        // (which it takes for a VMM the last service died starting, and starts).
        let vmm_pid = self.vmm.map(|v| v.pid);
        if s.stop == Some(StopKind::Reboot) {
            self.vmm = None;
            return End::Reboot(std::mem::take(&mut s.reboot_waiters));
        }
        for follower in &self.followers {
            follower.sync().await;
        }
        self.record_abandoned_captures(vmm_pid).await;
        if self.orphan_writer.is_none() {
            // A crash the VMM committed without saying so (killed right after), or one its dump
            // writer committed alone in the moment waited for above.
            self.announce_missed_vmcores(false).await;
        }
        let end = ProcessEnd { success, status, last_output: self.last_output(s.killed_because) };
        self.vmm = None;
        let effects = self.tracker.on_process_end(&end, s.stop.is_some());
        self.apply(effects).await;
        for waiter in s.stop_waiters.drain(..) {
            let _ = waiter.send(());
        }
        End::Finished
    }

    /// Sweeps the crash store once the VMM has ended: a capture it had begun and could not
    /// finish (it was killed while writing a vmcore) is recorded as failed there by the sweep,
    /// and announced here as `dump_failed`. A forked dump writer that outlived the VMM still
    /// holds its crash, and finishes it alone.
    async fn record_abandoned_captures(&mut self, vmm_pid: Option<u32>) {
        let store = self.services.store.clone();
        // A dump writer the VMM forked may be letting go of a crash the VMM took over just
        // before it died: wait a little for that, not for a writer that finishes alone (its
        // outcome is announced when it is done).
        if let Some(pid) = vmm_pid {
            let deadline = tokio::time::Instant::now() + WRITER_LET_GO;
            while is_written_by(store.clone(), pid).await {
                if tokio::time::Instant::now() >= deadline {
                    self.orphan_writer = Some(pid);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let swept = match tokio::task::spawn_blocking(move || store.sweep()).await {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => {
                tracing::warn!("cannot sweep the crash store after the VMM ended: {}", dumpd::error_chain(&e));
                return;
            }
            Err(_) => return,
        };
        if !swept.failed_captures.is_empty() {
            tracing::warn!("the crash store's sweep recorded {} abandoned capture(s)", swept.failed_captures.len());
        }
        // Those this sweep recorded, and those another process's sweep recorded first.
        self.announce_missed_failures().await;
    }

    /// Announces (`dump_failed`) the VM's failed captures recorded after a VMM of it ended.
    async fn announce_missed_failures(&mut self) {
        let store = self.services.store.clone();
        let (name, created) = (self.spec.name.clone(), self.created_unix_ms);
        let announced = self.tracker.failures_announced.clone();
        let missed = tokio::task::spawn_blocking(move || adopt::missed_failures(&store, &name, created, &announced));
        for (key, reason) in missed.await.unwrap_or_default() {
            tracing::warn!("a capture failed after the VMM ended: {reason}");
            self.tracker.failures_announced.push(key);
            let effects = self.tracker.on_control_event(&Event::DumpFailed { reason }, Instant::now());
            self.apply(effects).await;
        }
    }

    /// What the VM said last, for a failure's reason: why the service killed it, the VMM's
    /// stderr, the console.
    fn last_output(&self, killed_because: Option<&str>) -> String {
        let mut last_output = Vec::new();
        last_output.extend(killed_because.map(str::to_owned));
        last_output.extend(Some(self.stderr.tail()).filter(|t| !t.is_empty()));
        last_output.extend(Some(self.console.tail_lines(FAILURE_CONSOLE_LINES)).filter(|t| !t.is_empty()));
        last_output.join("\n")
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
            VmCommand::Reboot { reply } | VmCommand::Forget { reply } => {
                let _ = reply.send(Err(error()));
            }
        }
    }

    /// Stops keeping the record and removes the VM's directory.
    async fn forget(&mut self) -> Result<(), ApiError> {
        if let Some(keeper) = self.keeper.take() {
            keeper.finish().await;
        }
        let dir = self.launch.dir.clone();
        match tokio::task::spawn_blocking(move || dir.remove()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ApiError::internal(e)),
            Err(e) => Err(ApiError::internal(format!("cannot remove the VM's directory: {e}"))),
        }
    }

    /// Publishes the new status first (so a client that reacts to an event sees the state it
    /// implies) and, when it changed the VM's record and there are events, waits until the
    /// record is on disk (so a service restarted after a client heard of a boot, a panic or a
    /// failure knows of it too); then the events and counters.
    async fn apply(&mut self, effects: Vec<Effect>) {
        let changed = self.publish_status();
        if changed && effects.iter().any(|e| matches!(e, Effect::Publish(_))) {
            self.flush_record().await;
        }
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

    /// Publishes the status and hands the record to its writer; whether the record changed.
    fn publish_status(&self) -> bool {
        self.status_tx.send_replace(VmStatus::of(&self.tracker, self.vmm.map(|v| v.pid)));
        self.keeper.as_ref().is_some_and(|keeper| keeper.save(self.record()))
    }

    /// Waits until the record is on disk.
    async fn flush_record(&self) {
        if let Some(keeper) = &self.keeper {
            keeper.flush().await;
        }
    }

    /// The VM's record as it is now.
    fn record(&self) -> VmRecord {
        VmRecord {
            format: RECORD_FORMAT,
            spec: (*self.spec).clone(),
            created_unix_ms: self.created_unix_ms,
            control_socket: self.launch.control.clone(),
            vmm: self.vmm,
            status: self.tracker.clone(),
        }
    }
}

/// The next step of a stop the VMM did not carry out by itself: SIGTERM, then SIGKILL.
fn escalate(s: &mut Session) {
    if s.terminated {
        tracing::warn!("the VMM did not end within {TERM_GRACE:?} of SIGTERM; killing it");
        s.kill_at = None;
        s.process.kill();
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
