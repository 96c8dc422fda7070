//! The crash policy: what the VMM does when its guest panics (pvpanic and `--on-panic`,
//! `--on-crash-loaded`) or an operator asks for a dump. Host-side dumps go to the crash sink,
//! one at a time.

use std::sync::Arc;
use std::time::Duration;

use crashvisor_abi::platform::{PVPANIC_CRASH_LOADED, PVPANIC_PANICKED};
use dumpd::store::Trigger;

use super::CrashSink;
use crate::config::{CrashLoadedPolicy, DumpFormat, PanicPolicy};
use crate::devices::crash_reason::CrashInfo;
use crate::snapshot::{After, Snapshot};
use crate::vcpu::RunContext;
use crate::vm::{ResetCause, StopReason};

/// How long an operator's `nmi` with `capture` lets the guest handle the NMI (and print what
/// it prints) before the snapshot: its handler runs emulated here, at ~1.5 µs per instruction.
const NMI_CAPTURE_DELAY: Duration = Duration::from_millis(200);

/// Why a host-side dump was not started.
#[derive(Debug, thiserror::Error)]
pub enum DumpRefused {
    /// No machine runs.
    #[error("no machine is running (the VM is rebooting or has stopped)")]
    NoMachine,
    /// Another dump is queued or being written.
    #[error("a dump is already being written; wait for its vmcore_ready")]
    Busy,
    /// The crash sink takes no more jobs (the VMM is ending).
    #[error("the crash sink is not taking dumps")]
    SinkStopped,
}

/// What the controller itself does about a pvpanic write, beyond what the policy started.
#[derive(Debug, PartialEq, Eq)]
pub enum PanicAction {
    /// Nothing more.
    Nothing,
    /// Pause the VM, as an operator's `pause` does (so clients hear of it).
    Pause,
}

/// The VMM's crash policy and the sink its dumps go to.
pub struct CrashPolicy {
    on_panic: PanicPolicy,
    on_crash_loaded: CrashLoadedPolicy,
    format: DumpFormat,
    sink: CrashSink,
}

impl CrashPolicy {
    /// A policy writing host-side dumps in `format` into `sink`.
    pub fn new(on_panic: PanicPolicy, on_crash_loaded: CrashLoadedPolicy, format: DumpFormat, sink: CrashSink) -> Self {
        Self { on_panic, on_crash_loaded, format, sink }
    }

    /// An operator's dump of `machine`; `after_nmi` gives the guest time to handle an NMI first.
    /// Its events follow.
    pub fn operator_dump(&self, machine: Option<&Arc<RunContext>>, after_nmi: bool) -> Result<(), DumpRefused> {
        let delay = if after_nmi { NMI_CAPTURE_DELAY } else { Duration::ZERO };
        self.dump(machine, Trigger::OnDemand, None, After::Resume, delay)
    }

    /// Carries out the policy for a pvpanic write of `bits` (with the guest's crash reason);
    /// what it cannot do is logged.
    pub fn on_pvpanic(&self, machine: Option<&Arc<RunContext>>, bits: u8, reason: Option<CrashInfo>) -> PanicAction {
        let dump = |after| self.dump(machine, Trigger::Pvpanic, reason.clone(), after, Duration::ZERO);
        let outcome = if bits & PVPANIC_PANICKED != 0 {
            match self.on_panic {
                PanicPolicy::None => Ok(()),
                PanicPolicy::Dump => dump(After::Resume),
                PanicPolicy::DumpAndReboot => dump(After::Reboot),
                PanicPolicy::DumpAndPoweroff => dump(After::PowerOff),
                PanicPolicy::Pause => return PanicAction::Pause,
                PanicPolicy::Reboot => machine
                    .map(|m| m.request_stop(StopReason::Reset(ResetCause::PanicPolicy)))
                    .ok_or(DumpRefused::NoMachine),
            }
        } else if bits & PVPANIC_CRASH_LOADED != 0 && self.on_crash_loaded == CrashLoadedPolicy::Dump {
            dump(After::Resume)
        } else {
            Ok(())
        };
        if let Err(e) = outcome {
            tracing::error!("the panic policy could not be carried out: {e}");
        }
        PanicAction::Nothing
    }

    /// Queues a host-side dump of `machine` after `delay`, unless one is queued or running.
    fn dump(
        &self,
        machine: Option<&Arc<RunContext>>,
        trigger: Trigger,
        reason: Option<CrashInfo>,
        after: After,
        delay: Duration,
    ) -> Result<(), DumpRefused> {
        let machine = machine.ok_or(DumpRefused::NoMachine)?;
        if self.sink.is_busy() {
            return Err(DumpRefused::Busy);
        }
        let snapshot = Snapshot::new(machine.clone(), after, self.format, delay);
        if self.sink.submit(trigger, reason, Box::new(snapshot)) {
            Ok(())
        } else {
            Err(DumpRefused::SinkStopped)
        }
    }
}
