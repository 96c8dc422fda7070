//! The supervisor: the VMs the service runs, one `vmm` process each. It finds the VMs of the
//! state directory again when the service starts (adopting their VMMs), admits new VMs against
//! the limits, starts their tasks ([`vm`]), finds them for handlers, deletes them, and stops
//! them all when the service shuts down.

pub mod adopt;
pub mod console;
pub mod control;
pub mod core_collector;
pub mod follow;
pub mod handle;
pub mod keeper;
pub mod process;
pub mod record;
pub mod spec;
pub mod state;
pub mod vm;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use dumpd::store::Retention;
use serde_json::json;

use self::record::StateDir;
use self::spec::CreateVm;
pub use self::state::VmState;
use self::vm::{Launch, Services};
pub use self::vm::{VmHandle, VmStatus};
use crate::error::ApiError;
use crate::events::NewEvent;
use crate::limits::{Limits, Usage};

/// How long service shutdown waits for VMs to stop (their stops escalate to SIGKILL sooner,
/// even while a dump is written).
const SHUTDOWN_TIMEOUT: Duration = vm::DUMP_STOP_GRACE.saturating_add(Duration::from_secs(10));

/// Where VMMs come from and write to.
#[derive(Clone, Debug)]
pub struct Paths {
    /// The binary that runs a VMM as `<exe> vmm ...` (this one).
    pub exe: PathBuf,
    /// The directory of the control sockets.
    pub run_dir: PathBuf,
    /// The crash store.
    pub crash_dir: PathBuf,
    /// What the crash store keeps (every VMM prunes by it).
    pub retention: Retention,
}

/// The VMs of the service.
pub struct Supervisor {
    vms: Mutex<BTreeMap<String, VmHandle>>,
    next_default_name: AtomicU64,
    paths: Paths,
    limits: Limits,
    services: Services,
    state: StateDir,
}

impl Supervisor {
    /// A supervisor with the VMs recorded in `state`, their VMMs adopted again (in the
    /// background: each VM shows its last known state until its task has found its VMM).
    pub fn open(paths: Paths, limits: Limits, services: Services, state: StateDir) -> Self {
        let mut vms = BTreeMap::new();
        match state.scan() {
            Ok(found) => {
                for (name, record) in found {
                    match record {
                        Ok(record) => {
                            let launch = Launch {
                                exe: paths.exe.clone(),
                                control: record.control_socket.clone(),
                                dir: state.vm(&name),
                                crash_dir: paths.crash_dir.clone(),
                                retention: paths.retention,
                            };
                            vms.insert(name, vm::restore(record, launch, services.clone()));
                        }
                        Err(e) => tracing::error!(
                            "{e}; VM {name} is not served (remove {} once its VMM, if any, is gone)",
                            state.root().join("vms").join(&name).display()
                        ),
                    }
                }
            }
            Err(e) => tracing::error!("cannot look for the VMs of the last service: {e}"),
        }
        if !vms.is_empty() {
            tracing::info!("found {} VMs in the state directory {}", vms.len(), state.root().display());
        }
        Self { vms: Mutex::new(vms), next_default_name: AtomicU64::new(1), paths, limits, services, state }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, VmHandle>> {
        self.vms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state directory.
    pub fn state_dir(&self) -> &StateDir {
        &self.state
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Checks `request`, admits it against the limits and starts the VM.
    pub fn create(&self, request: CreateVm) -> Result<VmHandle, ApiError> {
        let mut vms = self.lock();
        let default_name = loop {
            let name = format!("vm-{}", self.next_default_name.fetch_add(1, Ordering::Relaxed));
            if !vms.contains_key(&name) {
                break name;
            }
        };
        let spec = request.into_spec(default_name)?;
        if vms.contains_key(&spec.name) {
            return Err(ApiError::conflict(
                "already_exists",
                format!("a VM named {} exists; pick another name or delete it first", spec.name),
            ));
        }
        let usage = vms.values().filter(|vm| vm.state().is_live()).fold(Usage::default(), |u, vm| Usage {
            vcpus: u.vcpus + vm.spec.vcpus as usize,
            memory_mib: u.memory_mib + vm.spec.memory_mib,
        });
        self.limits.admit(vms.len(), usage, spec.vcpus, spec.memory_mib)?;
        let dir = self.state.vm(&spec.name);
        dir.create().map_err(ApiError::internal)?;
        let launch = Launch {
            exe: self.paths.exe.clone(),
            control: self.paths.run_dir.join(format!("{}.sock", spec.name)),
            dir,
            crash_dir: self.paths.crash_dir.clone(),
            retention: self.paths.retention,
        };
        let name = spec.name.clone();
        let event = json!({"vcpus": spec.vcpus, "memory_mib": spec.memory_mib, "cmdline": spec.cmdline});
        let handle = vm::start(spec, launch, self.services.clone()).map_err(ApiError::internal)?;
        vms.insert(name.clone(), handle.clone());
        self.services.bus.publish(&name, NewEvent::new("created", event));
        Ok(handle)
    }

    /// The VM named `name`.
    pub fn get(&self, name: &str) -> Result<VmHandle, ApiError> {
        self.lock()
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no VM named {name:?}; GET /v1/vms lists them")))
    }

    /// Every VM, by name.
    pub fn list(&self) -> Vec<VmHandle> {
        self.lock().values().cloned().collect()
    }

    /// VMs by state, for the metrics.
    pub fn count_by_state(&self) -> BTreeMap<VmState, usize> {
        let mut counts = BTreeMap::new();
        for vm in self.lock().values() {
            *counts.entry(vm.state()).or_default() += 1;
        }
        counts
    }

    /// Stops the VM `name` and forgets it (its directory in the state directory goes too).
    pub async fn delete(&self, name: &str) -> Result<(), ApiError> {
        let handle = self.get(name)?;
        handle.stop().await;
        handle.forget().await?;
        // Another delete may have won the race; either way it is gone.
        if self.lock().remove(name).is_some() {
            self.services.bus.publish(name, NewEvent::new("deleted", json!({})));
        }
        Ok(())
    }

    /// Stops every VM and forgets it (service shutdown: the next service starts with none).
    /// Each stop ends in SIGKILL within `SHUTDOWN_TIMEOUT`; a VM whose VMM outlives even that
    /// keeps its record, for the next service to find.
    pub async fn shutdown(&self) {
        let vms = self.list();
        if vms.is_empty() {
            return;
        }
        tracing::info!("stopping {} VMs", vms.len());
        let stop_and_forget = |vm: &VmHandle| {
            let vm = vm.clone();
            async move {
                vm.stop().await;
                if let Err(e) = vm.forget().await {
                    tracing::warn!("VM {} stays in the state directory: {e}", vm.name());
                }
            }
        };
        let stops = futures_util::future::join_all(vms.iter().map(stop_and_forget));
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, stops).await.is_err() {
            tracing::warn!("some VMs did not stop within {SHUTDOWN_TIMEOUT:?}; they stay in the state directory");
        }
    }
}
