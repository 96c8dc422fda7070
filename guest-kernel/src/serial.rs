//! 16550 UART driver pieces shared by the console (COM1) and the control channel (COM2):
//! polled output in 16-byte bursts (one VM exit each), interrupt-driven input into a ring
//! that a task sleeps on.

use crate::arch::cpu;
use crate::sched::wait::WaitQueue;
use crate::sync::SpinLock;

const LSR_DATA_READY: u8 = 1 << 0;
const LSR_THR_EMPTY: u8 = 1 << 5;
/// A 16550's transmit FIFO depth.
const TX_FIFO: usize = 16;

/// A 16550 at an I/O port base.
pub struct Uart {
    base: u16,
}

impl Uart {
    /// The UART at `base`.
    pub const fn new(base: u16) -> Self {
        Self { base }
    }

    /// 115200 8N1, FIFOs on, interrupts off.
    pub fn init(&self) {
        cpu::outb(self.base + 1, 0);
        cpu::outb(self.base + 3, 0x80);
        cpu::outb(self.base, 1); // divisor 1: 115200 baud
        cpu::outb(self.base + 1, 0);
        cpu::outb(self.base + 3, 0x03);
        cpu::outb(self.base + 2, 0xc7);
        cpu::outb(self.base + 4, 0x0b); // DTR, RTS, OUT2 (gates the IRQ line on PCs)
    }

    /// Enables the received-data interrupt.
    pub fn enable_rx_interrupt(&self) {
        cpu::outb(self.base + 1, 0x01);
    }

    /// Writes `bytes`, a FIFO's worth per burst once the transmitter is empty.
    pub fn write(&self, bytes: &[u8]) {
        for chunk in bytes.chunks(TX_FIFO) {
            while cpu::inb(self.base + 5) & LSR_THR_EMPTY == 0 {
                cpu::pause();
            }
            cpu::outsb(self.base, chunk);
        }
    }

    /// The next received byte, if any.
    pub fn read(&self) -> Option<u8> {
        (cpu::inb(self.base + 5) & LSR_DATA_READY != 0).then(|| cpu::inb(self.base))
    }
}

/// Received bytes not yet consumed, and the task waiting for them.
///
/// When the ring is full the interrupt handler leaves the rest in the UART: the host holds
/// input back until the FIFO drains, so nothing is lost, and the reader pulls it in as it
/// makes room. (Dropping bytes here, as a real UART overruns, would tear a control request
/// in half whenever the reader fell behind on a busy host.)
pub struct RxQueue<const N: usize> {
    ring: SpinLock<Ring<N>>,
    waiters: WaitQueue,
}

struct Ring<const N: usize> {
    buf: [u8; N],
    head: usize,
    len: usize,
    /// The ring filled up with bytes still waiting in the UART.
    stalled: bool,
}

impl<const N: usize> RxQueue<N> {
    /// An empty queue.
    pub const fn new() -> Self {
        Self { ring: SpinLock::new(Ring { buf: [0; N], head: 0, len: 0, stalled: false }), waiters: WaitQueue::new() }
    }

    /// Moves what the UART holds into the queue, as far as it has room, and wakes the reader
    /// (from the UART's interrupt, and from the reader once it made room).
    pub fn fill_from(&self, uart: &Uart) {
        let mut got = false;
        {
            let mut ring = self.ring.lock_irqsave();
            ring.stalled = false;
            while ring.len < N {
                let Some(byte) = uart.read() else { break };
                let tail = (ring.head + ring.len) % N;
                ring.buf[tail] = byte;
                ring.len += 1;
                got = true;
            }
            ring.stalled = ring.len == N;
        }
        if got {
            self.waiters.wake_all();
        }
    }

    /// The next byte, and whether the ring had stalled the UART before it was taken.
    fn pop(&self) -> Option<(u8, bool)> {
        let mut ring = self.ring.lock_irqsave();
        if ring.len == 0 {
            return None;
        }
        let byte = ring.buf[ring.head];
        ring.head = (ring.head + 1) % N;
        ring.len -= 1;
        Some((byte, core::mem::replace(&mut ring.stalled, false)))
    }

    /// Blocks until a byte from `uart` arrives.
    pub fn read_byte(&self, uart: &Uart) -> u8 {
        loop {
            if let Some((byte, stalled)) = self.pop() {
                if stalled {
                    self.fill_from(uart);
                }
                return byte;
            }
            self.waiters.wait_interruptible(|| self.ring.lock_irqsave().len > 0);
        }
    }
}
