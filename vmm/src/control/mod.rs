//! The machine control channel: a unix-socket server speaking JSON lines to operators (the
//! crashvisor API, tests, `socat`), and the guest's control thread behind COM2.
//!
//! Threads and who owns what (after Firecracker's API thread):
//! - the **server** (`server`) accepts clients and turns their lines into [`ControlInput`]s;
//!   it never touches the VM;
//! - the **controller** (`controller`) is the VM side: one thread that owns the guest channel
//!   (`channel`: request ids, timeouts, health) and the clients (`clients`: outboxes, fan-out,
//!   slow-client dropping), pauses, resumes and shuts down the machine, injects NMIs, and
//!   broadcasts events to every client;
//! - devices on vCPU threads post what the guest reports (COM2 lines, platform events,
//!   pvpanic) with [`Inbox::try_post`], which never blocks.
//!
//! The wire types are `crashvisor_control`'s; the protocol is documented in
//! `docs/control-protocol.md`.

pub mod channel;
pub mod clients;
pub mod controller;
pub mod events;
pub mod guest;
pub mod memory;
pub mod server;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::crash::policy::CrashPolicy;
use crate::devices::control_uart::ControlUart;
use crate::error::VmmError;
use crate::vcpu::RunContext;
use crate::vm::StopReason;

/// How many inputs may wait for the controller; devices drop (and count) beyond this.
const INBOX_CAPACITY: usize = 4096;

/// A connected client, numbered from 1 in connection order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientId(pub u64);

/// Everything the controller reacts to.
pub enum ControlInput {
    /// A client connected; its response and event lines go to `outbox`.
    ClientConnected {
        /// The client.
        client: ClientId,
        /// Lines for the client's writer thread.
        outbox: SyncSender<String>,
    },
    /// A client sent a line: a parsed request, or why it could not be parsed.
    ClientRequest {
        /// The client.
        client: ClientId,
        /// The request.
        request: Result<crashvisor_control::ClientRequest, crashvisor_control::Rejected>,
    },
    /// A client closed its end (or its connection failed).
    ClientClosed(ClientId),
    /// A complete line from the guest on COM2 (without its `\n`).
    GuestLine(String),
    /// Something a device saw the guest do.
    Device(events::DeviceEvent),
    /// An event for every client as it is (the crash sink's and the dump device's).
    Event(crashvisor_control::Event),
    /// A machine was built and is about to run.
    MachineStarted(Arc<RunContext>),
    /// The machine stopped; `rebooting` says whether a new one follows.
    MachineStopped {
        /// Why it stopped.
        reason: StopReason,
        /// Whether the VMM reboots it.
        rebooting: bool,
    },
    /// The VMM got SIGTERM: stop as for a client's `shutdown`.
    Terminate,
    /// The VMM is ending.
    Shutdown,
}

/// The controller's input channel.
#[derive(Clone)]
pub struct Inbox {
    tx: SyncSender<ControlInput>,
    dropped: Arc<AtomicU64>,
}

impl Inbox {
    /// A new inbox and the receiver the controller reads.
    pub fn channel() -> (Self, Receiver<ControlInput>) {
        let (tx, rx) = sync_channel(INBOX_CAPACITY);
        (Self { tx, dropped: Arc::default() }, rx)
    }

    /// Posts without blocking (for vCPU threads); a full inbox drops the input. False if it
    /// was dropped or nobody listens.
    pub fn try_post(&self, input: ControlInput) -> bool {
        match self.tx.try_send(input) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!("the control inbox is full; dropping guest input");
                }
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Posts, waiting while the inbox is full (for server and VMM threads). False if nobody
    /// listens any more.
    pub fn post(&self, input: ControlInput) -> bool {
        self.tx.send(input).is_ok()
    }

    /// Inputs dropped because the inbox was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// What the control channel needs from the VM configuration.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// Where to listen, if anywhere.
    pub socket: Option<PathBuf>,
    /// Number of vCPUs of the VM.
    pub vcpus: usize,
}

/// The running control channel. Dropping it ends the controller, flushes what clients are
/// owed and removes the socket.
pub struct ControlHandle {
    inbox: Inbox,
    controller: Option<JoinHandle<()>>,
    server: Option<server::Server>,
}

/// Starts the controller (carrying out `crash`'s policy) and, with a socket path, the server.
pub fn start(
    config: &ControlConfig,
    inbox: Inbox,
    receiver: Receiver<ControlInput>,
    control_uart: Arc<ControlUart>,
    crash: CrashPolicy,
) -> Result<ControlHandle, VmmError> {
    let server = match &config.socket {
        Some(path) => Some(
            server::Server::start(path, inbox.clone())
                .map_err(|source| VmmError::ControlSocket { path: path.clone(), source })?,
        ),
        None => None,
    };
    let controller = controller::Controller::new(receiver, control_uart, config, crash);
    let controller = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || controller.run())
        .map_err(|source| VmmError::Thread { what: "control", source })?;
    Ok(ControlHandle { inbox, controller: Some(controller), server })
}

impl ControlHandle {
    /// The inbox devices post to.
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// Tells the controller a new machine runs.
    pub fn machine_started(&self, ctx: Arc<RunContext>) {
        self.inbox.post(ControlInput::MachineStarted(ctx));
    }

    /// Tells the controller the machine stopped.
    pub fn machine_stopped(&self, reason: StopReason, rebooting: bool) {
        self.inbox.post(ControlInput::MachineStopped { reason, rebooting });
    }
}

impl Drop for ControlHandle {
    fn drop(&mut self) {
        self.inbox.post(ControlInput::Shutdown);
        if let Some(controller) = self.controller.take() {
            if controller.join().is_err() {
                tracing::error!("the control thread panicked");
            }
        }
        if let Some(server) = self.server.take() {
            server.finish();
        }
    }
}
