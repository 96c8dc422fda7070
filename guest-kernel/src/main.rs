//! The crashvisor guest kernel.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

mod arch;
mod kallsyms;

use arch::cpu;
use crashvisor_abi::serial::COM1_PORT;

/// The Rust entry point, called by `start64` on the boot stack.
#[no_mangle]
extern "C" fn kernel_main(_start_info: u64, _phys_base: u64) -> ! {
    cpu::outsb(COM1_PORT, b"hello from the guest\n");
    loop {
        cpu::hlt();
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {
        cpu::hlt();
    }
}
