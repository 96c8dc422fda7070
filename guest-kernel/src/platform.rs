//! The guest's side of the crashvisor platform device (see `crashvisor_abi::platform`).

use crashvisor_abi::platform::{
    encode_event, Command, EventKind, PLATFORM_ARG_HI, PLATFORM_ARG_LO, PLATFORM_COMMAND, PLATFORM_EVENT,
    PLATFORM_NMI_REASON,
};

use crate::arch::cpu;
use crate::sync::irq;

/// Runs a platform command with a 64-bit argument; returns the host's status.
pub fn command(command: Command, arg: u64) -> u32 {
    // The argument latch is per vCPU; keep interrupts off so nothing on this CPU interleaves.
    irq::without_interrupts(|| {
        cpu::outl(PLATFORM_ARG_LO, arg as u32);
        cpu::outl(PLATFORM_ARG_HI, (arg >> 32) as u32);
        cpu::outl(PLATFORM_COMMAND, command as u32);
        cpu::inl(PLATFORM_COMMAND)
    })
}

/// Tells the host about an event (one port write: safe from NMI context).
pub fn event(kind: EventKind, cpu: usize, arg: u16) {
    cpu::outl(PLATFORM_EVENT, encode_event(kind, cpu as u8, arg));
}

/// Why the host sent this CPU an NMI (`NMI_REASON_*` bits; reading clears them).
pub fn nmi_reason() -> u32 {
    cpu::inl(PLATFORM_NMI_REASON)
}
