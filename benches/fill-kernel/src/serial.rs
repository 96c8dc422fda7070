//! COM1 from ring 3: each byte goes out with one `out`, which the TSS's I/O permission bitmap
//! allows (boot.rs). No line-status polling: the 16550s of our VMM and QEMU take every byte
//! written to the transmit register at once.

use core::arch::asm;
use core::fmt;

use crashvisor_abi::serial::COM1_PORT;

/// The console, COM1's transmit register.
pub struct Com1;

impl fmt::Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            // SAFETY: an `out` to COM1's data port touches no memory and no other device; boot.rs's
            // I/O bitmap grants ring 3 exactly COM1's ports, so it cannot fault.
            unsafe { asm!("out dx, al", in("dx") COM1_PORT, in("al") byte, options(nomem, nostack, preserves_flags)) };
        }
        Ok(())
    }
}
