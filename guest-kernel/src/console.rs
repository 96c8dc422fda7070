//! The COM1 console: Linux-style output (`\n` as `\r\n`, one CPU at a time, NMI-safe) and
//! interrupt-driven input for the shell.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

use crashvisor_abi::serial::COM1_PORT;

use crate::arch::percpu::{self, MAX_CPUS};
use crate::serial::{RxQueue, Uart};
use crate::sync::owner::OwnerLock;

static UART: Uart = Uart::new(COM1_PORT);
static INPUT: RxQueue<256> = RxQueue::new();

/// One CPU prints at a time; a nested print from NMI context on the same CPU is deferred to
/// the print it interrupted.
static OUTPUT: OwnerLock = OwnerLock::new();

/// Bytes of console output one CPU's NMIs may defer (an NMI backtrace fits).
const DEFERRED_LEN: usize = 4096;

/// Console output an NMI produced while its CPU was printing: as Linux's printk defers an
/// NMI's console output to the console lock's holder, the print it interrupted writes it out
/// before it lets the console go. Only the CPU itself touches its buffer, the NMI appending and
/// the interrupted print draining, so the two never run at once.
struct Deferred {
    len: AtomicUsize,
    buf: UnsafeCell<[u8; DEFERRED_LEN]>,
}

// SAFETY: each CPU uses only its own entry, and an NMI runs to its end before the code it
// interrupted resumes (see `Deferred`).
unsafe impl Sync for Deferred {}

static DEFERRED: [Deferred; MAX_CPUS] =
    [const { Deferred { len: AtomicUsize::new(0), buf: UnsafeCell::new([0; DEFERRED_LEN]) } }; MAX_CPUS];

/// Appends to this CPU's deferred output (what does not fit is dropped).
fn defer(bytes: &[u8]) {
    let deferred = &DEFERRED[percpu::cpu_id()];
    let len = deferred.len.load(Ordering::Acquire);
    let n = bytes.len().min(DEFERRED_LEN - len);
    // SAFETY: `len + n <= DEFERRED_LEN`; the bytes from `len` on are read by nobody until the
    // new length is published, and only this CPU writes its buffer.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), deferred.buf.get().cast::<u8>().add(len), n) };
    deferred.len.store(len + n, Ordering::Release);
}

/// Writes out this CPU's deferred output, with the console held; an NMI meanwhile only
/// appends, and is written out in turn.
fn flush_deferred() {
    let deferred = &DEFERRED[percpu::cpu_id()];
    let mut done = 0;
    loop {
        let len = deferred.len.load(Ordering::Acquire);
        if len == done {
            match deferred.len.compare_exchange(len, 0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(_) => continue,
            }
        }
        // SAFETY: the bytes below `len` were published by `defer` and do not change until the
        // length goes back to 0, which only this loop does.
        UART.write(unsafe { core::slice::from_raw_parts(deferred.buf.get().cast::<u8>().add(done), len - done) });
        done = len;
    }
}

/// Programs COM1.
pub fn init() {
    UART.init();
}

/// Enables the receive interrupt (once the I/O APIC routes it).
pub fn enable_rx_interrupt() {
    UART.enable_rx_interrupt();
}

/// Runs `f` with the console output lock held (interrupts off). In an NMI that interrupted
/// this CPU's own print, `f` writes into the deferred output instead, which the interrupted
/// print writes out when it ends.
pub fn with_output(f: impl FnOnce(&mut dyn FnMut(&[u8]))) {
    let mut f = Some(f);
    let printed = OUTPUT.with(|| {
        if let Some(f) = f.take() {
            f(&mut |bytes: &[u8]| UART.write(bytes));
        }
        flush_deferred();
    });
    if printed.is_none() {
        if let Some(f) = f.take() {
            f(&mut defer);
        }
        return;
    }
    // An NMI between the flush and the release deferred its output: write it now.
    while DEFERRED[percpu::cpu_id()].len.load(Ordering::Acquire) != 0 {
        OUTPUT.with(flush_deferred);
    }
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
