//! A 16550 UART (vm-superio) with an interrupt line, an output sink and an input queue: the
//! part COM1 (the console) and COM2 (the control channel) share.
//!
//! Input the host queues waits in a bounded buffer and moves into the UART's 64-byte receive
//! FIFO whenever the guest has drained it, so the host never polls and the guest gets one
//! interrupt per FIFO-full. The UART is reset at reboot; its output and interrupt line stay.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::Mutex;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Most bytes of input waiting for the guest to read them.
pub const INPUT_QUEUE_CAPACITY: usize = 64 * 1024;
/// The receive-buffer register (offset 0 without DLAB).
const DATA_OFFSET: u8 = 0;
/// The line-status register and its data-ready bit.
const LSR_OFFSET: u8 = 5;
const LSR_DATA_READY: u8 = 1;

/// Raises the UART's interrupt line through a KVM irqfd.
pub struct IrqLine(EventFd);

impl Trigger for IrqLine {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Collects the bytes of one guest access so they reach the output in one write.
pub struct Sink<W> {
    pending: Vec<u8>,
    out: W,
}

impl<W> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(()) // the UART flushes per byte; `Uart::write` flushes per access instead
    }
}

type Serial16550<W> = Serial<IrqLine, vm_superio::serial::NoEvents, Sink<W>>;

struct State<W> {
    serial: Serial16550<W>,
    input: VecDeque<u8>,
}

impl<W> State<W> {
    /// Moves queued input into the receive FIFO as far as it has room.
    fn top_up(&mut self) {
        let room = self.serial.fifo_capacity().min(self.input.len());
        if room == 0 {
            return;
        }
        let chunk: Vec<u8> = self.input.drain(..room).collect();
        if let Err(e) = self.serial.enqueue_raw_bytes(&chunk) {
            tracing::debug!("UART input interrupt failed: {e:?}");
        }
    }
}

/// One 16550 UART writing to a `W`. `name` appears in log messages.
pub struct Uart<W = Box<dyn Write + Send>> {
    name: &'static str,
    state: Mutex<Option<State<W>>>,
    irq: EventFd,
}

impl<W: Write> Uart<W> {
    /// A UART writing to `out`, interrupting through its irqfd (see [`Uart::irq`]).
    pub fn new(name: &'static str, out: W) -> io::Result<Self> {
        let irq = EventFd::new(libc::EFD_NONBLOCK)?;
        let serial = Serial::new(IrqLine(irq.try_clone()?), Sink { pending: Vec::new(), out });
        Ok(Self { name, state: Mutex::new(Some(State { serial, input: VecDeque::new() })), irq })
    }

    /// The event file descriptor to register as the UART's irqfd with each new VM.
    pub fn irq(&self) -> &EventFd {
        &self.irq
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<State<W>>> {
        // A poisoned lock only means another vCPU thread panicked mid-access; the UART state is
        // still usable for the rest of the run.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts the UART back in its power-on state and drops queued input, keeping the output.
    pub fn reset(&self) -> io::Result<()> {
        let mut guard = self.lock();
        if let Some(old) = guard.take() {
            *guard = Some(State {
                serial: Serial::new(IrqLine(self.irq.try_clone()?), old.serial.into_writer()),
                input: VecDeque::new(),
            });
        }
        Ok(())
    }

    /// A guest write of `data` at register `offset`.
    pub fn write(&self, offset: u8, data: &[u8]) {
        let mut guard = self.lock();
        let Some(state) = guard.as_mut() else { return };
        for &byte in data {
            if let Err(e) = state.serial.write(offset, byte) {
                tracing::warn!("{} write failed: {e:?}", self.name);
            }
        }
        let sink = state.serial.writer_mut();
        if !sink.pending.is_empty() {
            if let Err(e) = sink.out.write_all(&sink.pending).and_then(|()| sink.out.flush()) {
                tracing::warn!("{} output failed: {e}", self.name);
            }
            sink.pending.clear();
        }
    }

    /// A guest read at register `offset`.
    pub fn read(&self, offset: u8, data: &mut [u8]) {
        let mut guard = self.lock();
        let Some(state) = guard.as_mut() else {
            data.fill(0xff);
            return;
        };
        for byte in data.iter_mut() {
            *byte = state.serial.read(offset);
        }
        // Refill only once the FIFO is empty: one interrupt per FIFO-full, not per byte.
        if offset == DATA_OFFSET && !state.input.is_empty() && state.serial.read(LSR_OFFSET) & LSR_DATA_READY == 0 {
            state.top_up();
        }
    }

    /// Queues as much of `input` for the guest as the input queue has room for and returns how
    /// many bytes it took (0 when full, or when the UART is gone).
    pub fn enqueue(&self, input: &[u8]) -> usize {
        let mut guard = self.lock();
        let Some(state) = guard.as_mut() else {
            return 0;
        };
        let n = input.len().min(INPUT_QUEUE_CAPACITY.saturating_sub(state.input.len()));
        state.input.extend(&input[..n]);
        state.top_up();
        n
    }

    /// Queues all of `input` or nothing; false when the queue lacks room for it.
    pub fn enqueue_all(&self, input: &[u8]) -> bool {
        let mut guard = self.lock();
        let Some(state) = guard.as_mut() else {
            return false;
        };
        if state.input.len() + input.len() > INPUT_QUEUE_CAPACITY {
            return false;
        }
        state.input.extend(input);
        state.top_up();
        true
    }

    /// Runs `f` on the output (under the UART's lock).
    pub fn with_output<R>(&self, f: impl FnOnce(&mut W) -> R) -> Option<R> {
        self.lock().as_mut().map(|state| f(&mut state.serial.writer_mut().out))
    }

    /// Bytes queued for the guest that have not yet reached the FIFO.
    pub fn queued_input(&self) -> usize {
        self.lock().as_ref().map_or(0, |s| s.input.len())
    }

    /// Reads what the guest would read, as a guest driver does (data while the line status says
    /// data ready), until nothing is left (tests).
    #[cfg(test)]
    pub(crate) fn drain_input(&self) -> Vec<u8> {
        let mut got = Vec::new();
        loop {
            let mut lsr = [0u8];
            self.read(LSR_OFFSET, &mut lsr);
            if lsr[0] & LSR_DATA_READY == 0 {
                return got;
            }
            let mut b = [0u8];
            self.read(DATA_OFFSET, &mut b);
            got.push(b[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex as StdMutex};

    /// Output that tests can inspect.
    #[derive(Clone, Default)]
    struct Shared(Arc<StdMutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn queued_input_flows_through_the_small_fifo() {
        let uart = Uart::new("test", Box::new(io::sink())).unwrap();
        let input: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        assert_eq!(uart.enqueue(&input), input.len());
        assert_eq!(uart.drain_input(), input);
        assert_eq!(uart.queued_input(), 0);
    }

    #[test]
    fn the_queue_is_bounded_and_enqueue_all_is_atomic() {
        let uart = Uart::new("test", Box::new(io::sink())).unwrap();
        let big = vec![b'x'; INPUT_QUEUE_CAPACITY + 200];
        let mut taken = 0;
        while uart.enqueue(&big) > 0 {
            taken += 1;
            assert!(taken < 10, "the queue and FIFO hold a bounded amount");
        }
        assert_eq!(uart.queued_input(), INPUT_QUEUE_CAPACITY);
        assert!(!uart.enqueue_all(b"line\n"));
        assert_eq!(uart.enqueue(b"y"), 0);
        uart.drain_input();
        assert!(uart.enqueue_all(b"line\n"));
        uart.reset().unwrap();
        assert_eq!(uart.queued_input(), 0);
        assert!(uart.drain_input().is_empty(), "reset drops pending input");
    }

    #[test]
    fn output_reaches_the_sink_per_access() {
        let out = Shared::default();
        let uart = Uart::new("test", Box::new(out.clone())).unwrap();
        uart.write(DATA_OFFSET, b"hello");
        assert_eq!(&*out.0.lock().unwrap(), b"hello");
    }
}
