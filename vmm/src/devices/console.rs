//! COM1: the console UART, whose output goes to stdout or a file and whose input comes from the
//! VMM's stdin. The console outlives guest reboots; the UART itself is reset.

use std::io::{self, Read, Write};
use std::ops::Deref;
use std::time::Duration;

use super::uart::Uart;

/// The console UART and where its bytes go.
pub struct Console(Uart);

/// The Ctrl-A prefix of console escapes (Ctrl-A x quits, as in QEMU).
pub const ESCAPE_PREFIX: u8 = 0x01;

impl Console {
    /// A console writing to `out`, interrupting through its irqfd (to be registered as GSI 4).
    pub fn new(out: Box<dyn Write + Send>) -> io::Result<Self> {
        Uart::new("console", out).map(Self)
    }

    /// Feeds `input` to the guest, waiting while the input queue is full.
    /// Returns false if the console is gone.
    pub fn feed(&self, mut input: &[u8]) -> bool {
        while !input.is_empty() {
            let accepted = self.0.enqueue(input);
            input = &input[accepted..];
            if !input.is_empty() {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        true
    }
}

impl Deref for Console {
    type Target = Uart;
    fn deref(&self) -> &Uart {
        &self.0
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
