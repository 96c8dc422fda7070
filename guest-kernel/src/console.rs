//! The COM1 console: Linux-style output (`\n` as `\r\n`, one CPU at a time, NMI-safe) and
//! interrupt-driven input for the shell.

use core::sync::atomic::{AtomicU32, Ordering};

use crashvisor_abi::serial::COM1_PORT;

use crate::arch::cpu;
use crate::serial::{RxQueue, Uart};

static UART: Uart = Uart::new(COM1_PORT);
static INPUT: RxQueue<256> = RxQueue::new();

/// The CPU holding the output lock, or `NO_OWNER`. A re-entrant print from the same CPU (an NMI
/// that interrupted a print) skips output instead of deadlocking; a panicking CPU takes over.
static OUTPUT_OWNER: AtomicU32 = AtomicU32::new(NO_OWNER);
const NO_OWNER: u32 = u32::MAX;

/// Programs COM1.
pub fn init() {
    UART.init();
}

/// Enables the receive interrupt (once the I/O APIC routes it).
pub fn enable_rx_interrupt() {
    UART.enable_rx_interrupt();
}

/// Runs `f` holding the console output lock (interrupts off). Returns `None` if this CPU
/// already holds it (a nested print from NMI context).
pub fn with_output<R>(f: impl FnOnce(&mut dyn FnMut(&[u8])) -> R) -> Option<R> {
    let me = crate::arch::percpu::cpu_id() as u32;
    let irq = crate::sync::irq::save();
    loop {
        match OUTPUT_OWNER.compare_exchange_weak(NO_OWNER, me, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => break,
            Err(owner) if owner == me => {
                crate::sync::irq::restore(irq);
                return None;
            }
            Err(_) => cpu::pause(),
        }
    }
    let mut emit = |bytes: &[u8]| UART.write(bytes);
    let r = f(&mut emit);
    OUTPUT_OWNER.store(NO_OWNER, Ordering::Release);
    crate::sync::irq::restore(irq);
    Some(r)
}

/// Lets the panicking CPU print even if another CPU died holding the console.
pub fn bust_lock() {
    OUTPUT_OWNER.store(NO_OWNER, Ordering::Release);
}

/// Writes text to the console, turning `\n` into `\r\n` as Linux's serial console does.
pub fn write_text(text: &[u8]) {
    with_output(|emit| {
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            if i > 0 {
                emit(b"\r\n");
            }
            emit(line);
        }
    });
}

/// COM1 interrupt: queue the received bytes for the shell.
pub fn interrupt() {
    INPUT.fill_from(&UART);
}

/// Blocks until a byte of console input arrives.
pub fn read_byte() -> u8 {
    INPUT.read_byte()
}
