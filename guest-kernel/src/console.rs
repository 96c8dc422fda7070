//! The COM1 console: Linux-style output (`\n` as `\r\n`, one CPU at a time, NMI-safe) and
//! interrupt-driven input for the shell.

use crashvisor_abi::serial::COM1_PORT;

use crate::serial::{RxQueue, Uart};
use crate::sync::owner::OwnerLock;

static UART: Uart = Uart::new(COM1_PORT);
static INPUT: RxQueue<256> = RxQueue::new();

/// One CPU prints at a time; a nested print from NMI context on the same CPU is skipped.
static OUTPUT: OwnerLock = OwnerLock::new();

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
    OUTPUT.with(|| f(&mut |bytes: &[u8]| UART.write(bytes)))
}

/// Lets the panicking CPU print even if another CPU died holding the console.
pub fn bust_lock() {
    OUTPUT.bust();
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
    INPUT.read_byte(&UART)
}
