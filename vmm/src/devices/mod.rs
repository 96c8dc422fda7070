//! Port-I/O devices and the bus that routes guest accesses to them.
//!
//! Every value the guest writes is untrusted: sizes and values are checked, unknown ports read
//! as all-ones and ignore writes, and nothing here can panic on guest input.

pub mod console;
pub mod control_uart;
pub mod crash_reason;
pub mod dump;
pub mod platform;
pub mod uart;

use std::sync::atomic::{AtomicU64, Ordering};

use crashvisor_abi::platform::{
    I8042_COMMAND_PORT, I8042_RESET_COMMAND, NMI_REASON_PORT, PLATFORM_PORT_BASE, PLATFORM_PORT_COUNT, PVPANIC_PORT,
    RESET_CONTROL_PORT,
};
use crashvisor_abi::serial::{COM1_PORT, COM2_PORT, UART_PORT_COUNT};

use self::console::Console;
use self::control_uart::ControlUart;
use self::platform::Platform;
use crate::vm::{ResetCause, StopReason};

/// What a vCPU does after a device access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IoAction {
    /// Keep running the guest.
    Continue,
    /// Stop the machine.
    Stop(StopReason),
}

/// The devices of one machine.
pub struct Devices {
    /// COM1, which outlives reboots.
    pub console: std::sync::Arc<Console>,
    /// COM2, the control channel, which outlives reboots.
    pub control_uart: std::sync::Arc<ControlUart>,
    /// The platform device and pvpanic.
    pub platform: Platform,
    /// Accesses to ports no device decodes (counted, not logged: a guest can make many).
    pub unknown_accesses: AtomicU64,
}

impl Devices {
    /// Handles a guest `out` of `data` to `port` from vCPU `vcpu`.
    pub fn io_out(&self, vcpu: usize, port: u16, data: &[u8]) -> IoAction {
        match port {
            p if (COM1_PORT..COM1_PORT + UART_PORT_COUNT).contains(&p) => {
                self.console.write((p - COM1_PORT) as u8, data);
                IoAction::Continue
            }
            p if (COM2_PORT..COM2_PORT + UART_PORT_COUNT).contains(&p) => {
                self.control_uart.write((p - COM2_PORT) as u8, data);
                IoAction::Continue
            }
            p if (PLATFORM_PORT_BASE..PLATFORM_PORT_BASE + PLATFORM_PORT_COUNT).contains(&p) => {
                self.platform.write(vcpu, p, data)
            }
            PVPANIC_PORT => {
                self.platform.pvpanic_event(data.first().copied().unwrap_or(0));
                IoAction::Continue
            }
            RESET_CONTROL_PORT if data.first().is_some_and(|v| v & 0x4 != 0) => {
                IoAction::Stop(StopReason::Reset(ResetCause::ResetControl))
            }
            I8042_COMMAND_PORT if data.first() == Some(&I8042_RESET_COMMAND) => {
                IoAction::Stop(StopReason::Reset(ResetCause::KeyboardController))
            }
            _ => {
                self.unknown_accesses.fetch_add(1, Ordering::Relaxed);
                IoAction::Continue
            }
        }
    }

    /// Handles a guest `in` from `port` on vCPU `vcpu`, filling `data`.
    pub fn io_in(&self, vcpu: usize, port: u16, data: &mut [u8]) {
        match port {
            p if (COM1_PORT..COM1_PORT + UART_PORT_COUNT).contains(&p) => {
                self.console.read((p - COM1_PORT) as u8, data)
            }
            p if (COM2_PORT..COM2_PORT + UART_PORT_COUNT).contains(&p) => {
                self.control_uart.read((p - COM2_PORT) as u8, data)
            }
            p if (PLATFORM_PORT_BASE..PLATFORM_PORT_BASE + PLATFORM_PORT_COUNT).contains(&p) => {
                self.platform.read(vcpu, p, data)
            }
            PVPANIC_PORT => data.fill(Platform::PVPANIC_FEATURES),
            // i8042 status: nothing to read, ready for commands. Port 0x61: no NMI reason.
            I8042_COMMAND_PORT | NMI_REASON_PORT => data.fill(0),
            _ => {
                self.unknown_accesses.fetch_add(1, Ordering::Relaxed);
                data.fill(0xff)
            }
        }
    }
}
