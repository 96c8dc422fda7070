//! Restart and power off: the reset control register, then the keyboard controller, then a
//! triple fault (Linux's `reboot=` defaults in that spirit); power off through the platform
//! device.

use crashvisor_abi::platform::{
    Command, I8042_COMMAND_PORT, I8042_RESET_COMMAND, PLATFORM_ARG_HI, PLATFORM_ARG_LO, PLATFORM_COMMAND,
    RESET_CONTROL_PORT,
};

use crate::arch::cpu;
use crate::sync::irq;

/// Resets the machine now (Linux's `emergency_restart`).
pub fn emergency_restart() -> ! {
    irq::disable();
    cpu::outb(RESET_CONTROL_PORT, 0x06);
    cpu::outb(I8042_COMMAND_PORT, I8042_RESET_COMMAND);
    triple_fault()
}

/// Loads an empty IDT and faults: with no way to deliver the exception the CPU shuts down.
fn triple_fault() -> ! {
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let empty = Pointer { limit: 0, base: 0 };
    // SAFETY: deliberately makes the CPU unable to handle exceptions, then raises one; the
    // machine resets and nothing of this kernel runs again.
    unsafe { core::arch::asm!("lidt [{}]", "ud2", in(reg) &empty, options(noreturn)) }
}

/// `reboot: Restarting system`.
pub fn restart() -> ! {
    crate::pr_emerg!("reboot: Restarting system");
    emergency_restart()
}

/// `reboot: Power down`, then asks the host to power the machine off.
pub fn power_off() -> ! {
    crate::pr_emerg!("reboot: Power down");
    irq::disable();
    cpu::outl(PLATFORM_ARG_LO, 0);
    cpu::outl(PLATFORM_ARG_HI, 0);
    cpu::outl(PLATFORM_COMMAND, Command::PowerOff as u32);
    loop {
        cpu::hlt();
    }
}
