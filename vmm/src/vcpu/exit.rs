//! Turning one KVM exit into an action. A free function, so tests can feed it fabricated exits.

use kvm_ioctls::VcpuExit;

use crate::devices::{Devices, IoAction};
use crate::vm::{ResetCause, StopReason};

/// What the vCPU loop does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Re-enter the guest.
    Continue,
    /// Stop the machine.
    Stop(StopReason),
    /// KVM could not emulate an instruction; the loop gathers the details.
    EmulationFailure,
}

/// KVM's `KVM_SYSTEM_EVENT_SHUTDOWN`.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
/// KVM's `KVM_SYSTEM_EVENT_RESET`.
const SYSTEM_EVENT_RESET: u32 = 2;

/// Handles one exit of vCPU `vcpu`.
pub fn handle(exit: VcpuExit<'_>, vcpu: usize, devices: &Devices) -> Outcome {
    match exit {
        VcpuExit::IoOut(port, data) => match devices.io_out(vcpu, port, data) {
            IoAction::Continue => Outcome::Continue,
            IoAction::Stop(reason) => Outcome::Stop(reason),
        },
        VcpuExit::IoIn(port, data) => {
            devices.io_in(vcpu, port, data);
            Outcome::Continue
        }
        // No MMIO devices: reads float high, writes are dropped.
        VcpuExit::MmioRead(_, data) => {
            data.fill(0xff);
            Outcome::Continue
        }
        VcpuExit::MmioWrite(..) | VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::IrqWindowOpen => Outcome::Continue,
        VcpuExit::Shutdown => Outcome::Stop(StopReason::Reset(ResetCause::TripleFault)),
        VcpuExit::SystemEvent(SYSTEM_EVENT_SHUTDOWN, _) => Outcome::Stop(StopReason::PowerOff),
        VcpuExit::SystemEvent(SYSTEM_EVENT_RESET, _) => Outcome::Stop(StopReason::Reset(ResetCause::ResetControl)),
        VcpuExit::InternalError => Outcome::EmulationFailure,
        VcpuExit::FailEntry(reason, cpu) => Outcome::Stop(StopReason::Fatal(format!(
            "vCPU {vcpu}: KVM failed to enter the guest (hardware reason {reason:#x}, host CPU {cpu})"
        ))),
        other => Outcome::Stop(StopReason::Fatal(format!("vCPU {vcpu}: unexpected KVM exit {other:?}"))),
    }
}
