//! The COM1 console: polled output in 16-byte bursts (one VM exit each), interrupt-driven
//! input collected for the shell.

use core::sync::atomic::{AtomicU32, Ordering};

use crashvisor_abi::serial::COM1_PORT;

use crate::arch::cpu;
use crate::sched::wait::WaitQueue;
use crate::sync::SpinLock;

const THR: u16 = COM1_PORT;
const RBR: u16 = COM1_PORT;
const IER: u16 = COM1_PORT + 1;
const FCR: u16 = COM1_PORT + 2;
const LCR: u16 = COM1_PORT + 3;
const MCR: u16 = COM1_PORT + 4;
const LSR: u16 = COM1_PORT + 5;
const LSR_DATA_READY: u8 = 1 << 0;
const LSR_THR_EMPTY: u8 = 1 << 5;
/// A 16550's transmit FIFO depth.
const TX_FIFO: usize = 16;

/// The CPU holding the output lock, or `NO_OWNER`. A re-entrant print from the same CPU (an NMI
/// that interrupted a print) skips output instead of deadlocking; a panicking CPU takes over.
static OUTPUT_OWNER: AtomicU32 = AtomicU32::new(NO_OWNER);
const NO_OWNER: u32 = u32::MAX;

/// Programs COM1: 115200 8N1, FIFOs on, receive interrupts on.
pub fn init() {
    cpu::outb(IER, 0);
    cpu::outb(LCR, 0x80);
    cpu::outb(THR, 1); // divisor 1: 115200 baud
    cpu::outb(IER, 0);
    cpu::outb(LCR, 0x03);
    cpu::outb(FCR, 0xc7);
    cpu::outb(MCR, 0x0b); // DTR, RTS, OUT2 (gates the IRQ line on PCs)
}

/// Enables the receive interrupt (once the I/O APIC routes it).
pub fn enable_rx_interrupt() {
    cpu::outb(IER, 0x01);
}

fn write_raw(bytes: &[u8]) {
    for chunk in bytes.chunks(TX_FIFO) {
        while cpu::inb(LSR) & LSR_THR_EMPTY == 0 {
            cpu::pause();
        }
        cpu::outsb(THR, chunk);
    }
}

/// Runs `f` holding the console output lock (interrupts off). Returns `None` if this CPU
/// already holds it (a nested print from NMI context).
pub fn with_output<R>(f: impl FnOnce(&mut dyn FnMut(&[u8])) -> R) -> Option<R> {
    let me = crate::arch::percpu::cpu_id() as u32;
    let irq = crate::sync::irq::save();
    loop {
        match OUTPUT_OWNER.compare_exchange_weak(NO_OWNER, me, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => break,
            Err(owner) if owner == me => {
                crate::sync::irq::restore(irq);
                return None;
            }
            Err(_) => cpu::pause(),
        }
    }
    let mut emit = |bytes: &[u8]| write_raw(bytes);
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

/// Bytes received on COM1 and not yet read by the shell.
struct InputRing {
    buf: [u8; 256],
    head: usize,
    len: usize,
}

static INPUT: SpinLock<InputRing> = SpinLock::new(InputRing {
    buf: [0; 256],
    head: 0,
    len: 0,
});
static INPUT_WAITERS: WaitQueue = WaitQueue::new();

/// COM1 interrupt: drain the receive FIFO into the input ring and wake readers.
pub fn interrupt() {
    let mut got = false;
    {
        let mut ring = INPUT.lock_irqsave();
        while cpu::inb(LSR) & LSR_DATA_READY != 0 {
            let byte = cpu::inb(RBR);
            if ring.len < ring.buf.len() {
                let tail = (ring.head + ring.len) % ring.buf.len();
                ring.buf[tail] = byte;
                ring.len += 1;
            }
            got = true;
        }
    }
    if got {
        INPUT_WAITERS.wake_all();
    }
}

/// Blocks until a byte of console input arrives.
pub fn read_byte() -> u8 {
    loop {
        let byte = {
            let mut ring = INPUT.lock_irqsave();
            if ring.len > 0 {
                let b = ring.buf[ring.head];
                ring.head = (ring.head + 1) % ring.buf.len();
                ring.len -= 1;
                Some(b)
            } else {
                None
            }
        };
        if let Some(b) = byte {
            return b;
        }
        INPUT_WAITERS.wait_interruptible(|| INPUT.lock_irqsave().len > 0);
    }
}
