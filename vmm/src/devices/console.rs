//! COM1: a 16550 UART (vm-superio) whose output goes to stdout or a file and whose input comes
//! from the VMM's stdin. The console outlives guest reboots; the UART itself is reset.

use std::io::{self, Read, Write};
use std::sync::Mutex;
use std::time::Duration;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Raises the UART's interrupt line through a KVM irqfd.
pub struct IrqLine(EventFd);

impl Trigger for IrqLine {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Collects the bytes of one guest access so they reach the output in one write.
pub struct Sink {
    pending: Vec<u8>,
    out: Box<dyn Write + Send>,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(()) // the UART flushes per byte; `Console::write` flushes per access instead
    }
}

type Uart = Serial<IrqLine, vm_superio::serial::NoEvents, Sink>;

/// The console UART and where its bytes go.
pub struct Console {
    uart: Mutex<Option<Uart>>,
    irq: EventFd,
}

/// The Ctrl-A prefix of console escapes (Ctrl-A x quits, as in QEMU).
pub const ESCAPE_PREFIX: u8 = 0x01;

impl Console {
    /// A console writing to `out`, interrupting through `irq` (to be registered as GSI 4).
    pub fn new(out: Box<dyn Write + Send>) -> io::Result<Self> {
        let irq = EventFd::new(libc::EFD_NONBLOCK)?;
        let uart = Serial::new(
            IrqLine(irq.try_clone()?),
            Sink {
                pending: Vec::new(),
                out,
            },
        );
        Ok(Self {
            uart: Mutex::new(Some(uart)),
            irq,
        })
    }

    /// The event file descriptor to register as the UART's irqfd with each new VM.
    pub fn irq(&self) -> &EventFd {
        &self.irq
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Uart>> {
        // A poisoned lock only means another vCPU thread panicked mid-access; the UART state is
        // still usable for the rest of the run.
        self.uart.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts the UART back in its power-on state, keeping the output.
    pub fn reset(&self) -> io::Result<()> {
        let mut guard = self.lock();
        if let Some(old) = guard.take() {
            *guard = Some(Serial::new(
                IrqLine(self.irq.try_clone()?),
                old.into_writer(),
            ));
        }
        Ok(())
    }

    /// A guest write of `data` at register `offset`.
    pub fn write(&self, offset: u8, data: &[u8]) {
        let mut guard = self.lock();
        let Some(uart) = guard.as_mut() else { return };
        for &byte in data {
            if let Err(e) = uart.write(offset, byte) {
                tracing::warn!("console write failed: {e}");
            }
        }
        let sink = uart.writer_mut();
        if !sink.pending.is_empty() {
            if let Err(e) = sink
                .out
                .write_all(&sink.pending)
                .and_then(|()| sink.out.flush())
            {
                tracing::warn!("console output failed: {e}");
            }
            sink.pending.clear();
        }
    }

    /// A guest read at register `offset`.
    pub fn read(&self, offset: u8, data: &mut [u8]) {
        let mut guard = self.lock();
        match guard.as_mut() {
            Some(uart) => data.iter_mut().for_each(|b| *b = uart.read(offset)),
            None => data.fill(0xff),
        }
    }

    /// Feeds `input` to the guest, waiting while the UART's receive FIFO is full.
    /// Returns false if the console is gone.
    pub fn feed(&self, mut input: &[u8]) -> bool {
        while !input.is_empty() {
            let accepted = {
                let mut guard = self.lock();
                let Some(uart) = guard.as_mut() else {
                    return false;
                };
                uart.enqueue_raw_bytes(input).unwrap_or(0)
            };
            input = &input[accepted..];
            if !input.is_empty() {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        true
    }
}

/// Copies `source` into the console until end of input. Ctrl-A x calls `quit` instead.
pub fn pump_input(console: &Console, mut source: impl Read, quit: impl Fn()) {
    let mut buf = [0u8; 256];
    let mut escape = false;
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        for &byte in &buf[..n] {
            if escape {
                escape = false;
                if byte == b'x' {
                    quit();
                    return;
                }
                if byte != ESCAPE_PREFIX && !console.feed(&[ESCAPE_PREFIX]) {
                    return;
                }
            } else if byte == ESCAPE_PREFIX {
                escape = true;
                continue;
            }
            if !console.feed(&[byte]) {
                return;
            }
        }
    }
}
