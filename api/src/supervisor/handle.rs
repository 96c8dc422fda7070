//! What HTTP handlers hold to reach a VM: its configuration, its console, its published status
//! (a `watch`) and the channel of commands to its task ([`super::vm`]), which alone touches the
//! VM's state.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crashvisor_control::Request;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use super::console::ConsoleLog;
use super::spec::VmSpec;
use super::state::{Tracker, VmState};
use crate::error::ApiError;

/// Where a control request's result goes.
pub type ControlReply = oneshot::Sender<Result<Value, ApiError>>;

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
    /// Remove the stopped VM's directory from the state directory (it is being deleted).
    Forget {
        /// Answered once it is gone, or with why the VM cannot be forgotten now.
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

impl VmStatus {
    /// The status `tracker` gives, with the VMM's `pid` while the VM is live.
    pub fn of(tracker: &Tracker, pid: Option<u32>) -> Self {
        Self {
            state: tracker.state,
            pid: pid.filter(|_| tracker.state.is_live()),
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
    pub(super) commands: mpsc::Sender<VmCommand>,
    pub(super) status: watch::Receiver<VmStatus>,
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

    /// Removes the stopped VM from the state directory.
    pub async fn forget(&self) -> Result<(), ApiError> {
        let (reply, done) = oneshot::channel();
        self.send(VmCommand::Forget { reply }).await?;
        done.await.map_err(|_| gone(self.name()))?
    }

    async fn send(&self, command: VmCommand) -> Result<(), ApiError> {
        self.commands.send(command).await.map_err(|_| gone(self.name()))
    }
}

/// The error for a VM whose task is gone.
fn gone(name: &str) -> ApiError {
    ApiError::conflict("vm_unavailable", format!("VM {name} is being deleted"))
}
