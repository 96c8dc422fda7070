//! A VM's console (COM1) output: the last `CONSOLE_RING_BYTES` kept for `GET .../console`, and
//! every new chunk broadcast to followers (`?follow=1`). A follower subscribes under the same
//! lock that appends, so it sees the ring and then every later byte exactly once.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::broadcast;

/// Console bytes kept per VM.
pub const CONSOLE_RING_BYTES: usize = 256 * 1024;
/// Chunks that may wait for one slow follower before it skips ahead.
const FOLLOW_CAPACITY: usize = 256;

struct Ring {
    bytes: VecDeque<u8>,
    /// Set once the VM has ended for good: followers stop.
    finished: bool,
}

/// The console log of one VM.
pub struct ConsoleLog {
    ring: Mutex<Ring>,
    sender: broadcast::Sender<Bytes>,
}

/// What a follower gets: the ring's contents, then live chunks (an empty chunk means the VM
/// ended).
pub struct ConsoleFollow {
    /// The ring's contents when the follower arrived.
    pub backlog: Bytes,
    /// Later chunks; `None` if the VM had already ended.
    pub live: Option<broadcast::Receiver<Bytes>>,
}

impl Default for ConsoleLog {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsoleLog {
    /// An empty log.
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(FOLLOW_CAPACITY);
        Self { ring: Mutex::new(Ring { bytes: VecDeque::new(), finished: false }), sender }
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends console output.
    pub fn push(&self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        let mut ring = self.lock();
        let keep = chunk.len().min(CONSOLE_RING_BYTES);
        let overflow = (ring.bytes.len() + keep).saturating_sub(CONSOLE_RING_BYTES);
        ring.bytes.drain(..overflow);
        ring.bytes.extend(&chunk[chunk.len() - keep..]);
        let _ = self.sender.send(Bytes::copy_from_slice(chunk));
    }

    /// Marks the end: followers get an empty chunk and stop.
    pub fn finish(&self) {
        let mut ring = self.lock();
        if !ring.finished {
            ring.finished = true;
            let _ = self.sender.send(Bytes::new());
        }
    }

    /// The kept output.
    pub fn snapshot(&self) -> Bytes {
        let ring = self.lock();
        let (a, b) = ring.bytes.as_slices();
        Bytes::from([a, b].concat())
    }

    /// The last `lines` lines of the kept output, for failure reports.
    pub fn tail_lines(&self, lines: usize) -> String {
        let text = self.snapshot();
        let text = String::from_utf8_lossy(&text);
        let all: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.is_empty()).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The kept output and a subscription to what follows.
    pub fn follow(&self) -> ConsoleFollow {
        let ring = self.lock();
        let (a, b) = ring.bytes.as_slices();
        let backlog = Bytes::from([a, b].concat());
        let live = (!ring.finished).then(|| self.sender.subscribe());
        ConsoleFollow { backlog, live }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_bytes_and_feeds_followers() {
        let log = ConsoleLog::new();
        log.push(b"hello\n");
        let mut follow = log.follow();
        assert_eq!(&follow.backlog[..], b"hello\n");
        log.push(b"world\n");
        let live = follow.live.as_mut().unwrap();
        assert_eq!(&live.try_recv().unwrap()[..], b"world\n");
        log.finish();
        assert!(live.try_recv().unwrap().is_empty(), "the end marker");
        assert!(log.follow().live.is_none());
        assert_eq!(log.tail_lines(1), "world");
    }

    #[test]
    fn the_ring_is_bounded() {
        let log = ConsoleLog::new();
        log.push(&vec![b'a'; CONSOLE_RING_BYTES]);
        log.push(b"tail");
        let snapshot = log.snapshot();
        assert_eq!(snapshot.len(), CONSOLE_RING_BYTES);
        assert!(snapshot.ends_with(b"tail"));
        log.push(&vec![b'b'; CONSOLE_RING_BYTES + 10]);
        assert!(log.snapshot().iter().all(|&b| b == b'b'));
    }
}
