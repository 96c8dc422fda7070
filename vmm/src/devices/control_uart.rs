//! COM2: the UART of the control channel. What the guest writes is split into lines and posted
//! to the controller; requests from the controller are queued as the guest's input. Like the
//! console it outlives reboots, and its UART is reset with the machine.

use std::io::{self, Write};
use std::ops::Deref;

use crashvisor_abi::control::MAX_RESPONSE_LEN;

use super::uart::Uart;
use crate::control::{ControlInput, Inbox};

/// The control UART.
pub struct ControlUart(Uart<LineSink>);

impl ControlUart {
    /// A control UART posting the guest's lines to `inbox`.
    pub fn new(inbox: Inbox) -> io::Result<Self> {
        let sink = LineSink { splitter: LineSplitter::new(MAX_RESPONSE_LEN), inbox };
        Uart::new("control channel", sink).map(Self)
    }

    /// Puts the UART in its power-on state and forgets any partial line, so the next boot's
    /// first line (its hello) starts clean.
    pub fn reset(&self) -> io::Result<()> {
        self.0.reset()?;
        self.0.with_output(|sink| sink.splitter.clear());
        Ok(())
    }

    /// Queues one whole request line for the guest; false when the input queue lacks room
    /// (the guest is not reading).
    pub fn send_line(&self, line: &[u8]) -> bool {
        self.0.enqueue_all(line)
    }

    /// What the guest would read from COM2 now, as text (tests).
    #[cfg(test)]
    pub(crate) fn guest_reads(&self) -> String {
        String::from_utf8(self.0.drain_input()).expect("the control channel sends text")
    }
}

impl Deref for ControlUart {
    type Target = Uart<LineSink>;
    fn deref(&self) -> &Uart<LineSink> {
        &self.0
    }
}

/// The UART's output: complete lines go to the controller, without blocking the vCPU.
pub struct LineSink {
    splitter: LineSplitter,
    inbox: Inbox,
}

impl Write for LineSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let inbox = &self.inbox;
        self.splitter.push(buf, &mut |line| {
            inbox.try_post(ControlInput::GuestLine(line));
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Splits a byte stream into lines of at most `max` bytes (without the `\n`). Longer lines and
/// lines that are not UTF-8 are dropped (and counted), never buffered without bound.
#[derive(Debug)]
pub struct LineSplitter {
    line: Vec<u8>,
    max: usize,
    /// Inside a line that grew too long: skip to its end.
    discarding: bool,
    /// Lines dropped so far.
    pub dropped: u64,
}

impl LineSplitter {
    /// A splitter for lines of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { line: Vec::new(), max, discarding: false, dropped: 0 }
    }

    /// Forgets the line in progress.
    pub fn clear(&mut self) {
        self.line = Vec::new();
        self.discarding = false;
    }

    /// Consumes `bytes`, handing each completed line to `emit`.
    pub fn push(&mut self, bytes: &[u8], emit: &mut dyn FnMut(String)) {
        for piece in bytes.split_inclusive(|&b| b == b'\n') {
            let (body, complete) = match piece.split_last() {
                Some((b'\n', body)) => (body, true),
                _ => (piece, false),
            };
            if !self.discarding {
                if self.line.len() + body.len() > self.max {
                    self.discarding = true;
                    self.line = Vec::new();
                } else {
                    self.line.extend_from_slice(body);
                }
            }
            if complete {
                self.finish_line(emit);
            }
        }
    }

    fn finish_line(&mut self, emit: &mut dyn FnMut(String)) {
        let line = std::mem::take(&mut self.line);
        if std::mem::replace(&mut self.discarding, false) {
            self.drop_line("longer than the protocol allows");
            return;
        }
        match String::from_utf8(line) {
            Ok(line) => emit(line),
            Err(_) => self.drop_line("not UTF-8"),
        }
    }

    fn drop_line(&mut self, why: &str) {
        self.dropped += 1;
        if self.dropped.is_power_of_two() {
            tracing::warn!("dropped a control line from the guest: {why} ({} so far)", self.dropped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(splitter: &mut LineSplitter, input: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        splitter.push(input, &mut |l| lines.push(l));
        lines
    }

    #[test]
    fn lines_may_arrive_in_pieces() {
        let mut s = LineSplitter::new(64);
        assert!(split(&mut s, b"0 hel").is_empty());
        assert_eq!(split(&mut s, b"lo version=1\n1 ok\n2"), ["0 hello version=1", "1 ok"]);
        assert_eq!(split(&mut s, b" ok\n\n"), ["2 ok", ""]);
    }

    #[test]
    fn overlong_and_invalid_lines_are_dropped() {
        let mut s = LineSplitter::new(4);
        assert!(split(&mut s, b"12345").is_empty());
        assert!(split(&mut s, b"678").is_empty());
        assert_eq!(split(&mut s, b"9\nok\n\xff\xfe\nfine\n"), ["ok", "fine"]);
        assert_eq!(s.dropped, 2);
        assert_eq!(split(&mut s, b"abcd\n"), ["abcd"], "exactly max is fine");
    }

    #[test]
    fn guest_output_reaches_the_inbox() {
        let (inbox, inputs) = Inbox::channel();
        let uart = ControlUart::new(inbox).unwrap();
        uart.write(0, b"0 hello version=1\n");
        match inputs.try_recv() {
            Ok(ControlInput::GuestLine(line)) => assert_eq!(line, "0 hello version=1"),
            _ => panic!("no guest line"),
        }
        assert!(uart.send_line(b"1 ps\n"));
        uart.write(0, b"half a li");
        uart.reset().unwrap();
        uart.write(0, b"0 hello\n");
        match inputs.try_recv() {
            Ok(ControlInput::GuestLine(line)) => assert_eq!(line, "0 hello", "reset drops partial lines"),
            _ => panic!("no guest line"),
        }
    }
}
