//! The unix-socket server: accepts clients and turns their lines into controller inputs.
//!
//! Each client has a reader thread (lines → [`ControlInput::ClientRequest`]) and a writer thread
//! draining a bounded outbox that only the controller fills. The server never touches the VM.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crashvisor_control::request::MAX_LINE_LEN;
use crashvisor_control::{parse_request, ControlError, ControlErrorCode, Rejected, Response};
use serde_json::Value;

use super::{ClientId, ControlInput, Inbox};

/// Most clients connected at once; more are refused with `too_many_clients`.
pub const MAX_CLIENTS: usize = 16;
/// Lines that may wait for one client; a client that falls further behind is disconnected.
pub const OUTBOX_CAPACITY: usize = 1024;
/// A client that accepts no data for this long is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the VMM waits at exit for clients to receive what they are owed.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Connected clients, counted until their writer thread ends.
#[derive(Default)]
struct LiveClients {
    count: Mutex<usize>,
    changed: Condvar,
}

impl LiveClients {
    fn lock(&self) -> MutexGuard<'_, usize> {
        self.count.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn try_add(&self) -> bool {
        let mut count = self.lock();
        if *count >= MAX_CLIENTS {
            return false;
        }
        *count += 1;
        true
    }

    fn remove(&self) {
        let mut count = self.lock();
        *count = count.saturating_sub(1);
        self.changed.notify_all();
    }

    fn wait_idle(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut count = self.lock();
        while *count > 0 {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            count = self.changed.wait_timeout(count, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

/// The listening server.
pub struct Server {
    path: PathBuf,
    live: Arc<LiveClients>,
}

impl Server {
    /// Listens on `path` (replacing a stale socket nobody listens on) and serves clients.
    pub fn start(path: &Path, inbox: Inbox) -> io::Result<Self> {
        remove_stale_socket(path)?;
        let listener = UnixListener::bind(path)?;
        let live = Arc::new(LiveClients::default());
        let accept_live = live.clone();
        std::thread::Builder::new()
            .name("control-accept".into())
            .spawn(move || accept_loop(&listener, &inbox, &accept_live))?;
        tracing::info!("control socket listening on {}", path.display());
        Ok(Self { path: path.to_path_buf(), live })
    }

    /// Gives clients a moment to receive their last lines, then removes the socket.
    pub fn finish(self) {
        self.live.wait_idle(FLUSH_TIMEOUT);
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::debug!("cannot remove {}: {e}", self.path.display());
        }
    }
}

fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(io::ErrorKind::AddrInUse, "another process is listening on it"));
            }
            std::fs::remove_file(path)
        }
        Ok(_) => Err(io::Error::new(io::ErrorKind::AlreadyExists, "it exists and is not a socket")),
    }
}

fn accept_loop(listener: &UnixListener, inbox: &Inbox, live: &Arc<LiveClients>) {
    let mut next_id = 1;
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let client = ClientId(next_id);
                next_id += 1;
                if let Err(e) = serve(stream, client, inbox, live) {
                    tracing::warn!("cannot serve control client {}: {e}", client.0);
                }
            }
            Err(e) => {
                tracing::warn!("control socket accept failed: {e}");
                // Out of descriptors, most likely: let some close.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn serve(mut stream: UnixStream, client: ClientId, inbox: &Inbox, live: &Arc<LiveClients>) -> io::Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    if !live.try_add() {
        let error = ControlError::new(
            ControlErrorCode::TooManyClients,
            format!("the VMM serves at most {MAX_CLIENTS} control clients"),
        );
        return stream.write_all(Response { id: Value::Null, outcome: Err(error) }.to_line().as_bytes());
    }
    let reader = match stream.try_clone() {
        Ok(reader) => reader,
        Err(e) => {
            live.remove();
            return Err(e);
        }
    };
    let (outbox, lines) = sync_channel(OUTBOX_CAPACITY);
    let writer_live = live.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("control-out{}", client.0))
        .spawn(move || write_lines(stream, &lines, &writer_live));
    if let Err(e) = spawned {
        live.remove();
        return Err(e);
    }
    inbox.post(ControlInput::ClientConnected { client, outbox });
    let reader_inbox = inbox.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("control-in{}", client.0))
        .spawn(move || read_requests(reader, client, &reader_inbox));
    if let Err(e) = spawned {
        inbox.post(ControlInput::ClientClosed(client));
        return Err(e);
    }
    tracing::debug!("control client {} connected", client.0);
    Ok(())
}

fn write_lines(mut stream: UnixStream, lines: &Receiver<String>, live: &LiveClients) {
    for line in lines {
        if stream.write_all(line.as_bytes()).is_err() {
            break;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    live.remove();
}

fn read_requests(stream: UnixStream, client: ClientId, inbox: &Inbox) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        let request = match read_line(&mut reader, MAX_LINE_LEN, &mut line) {
            Ok(LineRead::Line) => {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                parse_request(&line)
            }
            Ok(LineRead::TooLong) => Err(Rejected {
                id: Value::Null,
                error: ControlError::new(
                    ControlErrorCode::LineTooLong,
                    format!("a request line is at most {MAX_LINE_LEN} bytes"),
                ),
            }),
            Ok(LineRead::Eof) | Err(_) => break,
        };
        if !inbox.post(ControlInput::ClientRequest { client, request }) {
            return;
        }
    }
    inbox.post(ControlInput::ClientClosed(client));
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum LineRead {
    /// A line (its `\n` removed; also a last line without one).
    Line,
    /// A line longer than the limit; it was skipped.
    TooLong,
    /// End of input.
    Eof,
}

/// Reads one line into `line`, never holding more than `max` bytes of it.
pub fn read_line(reader: &mut impl BufRead, max: usize, line: &mut Vec<u8>) -> io::Result<LineRead> {
    line.clear();
    let mut too_long = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(match (too_long, line.is_empty()) {
                (true, _) => LineRead::TooLong,
                (false, true) => LineRead::Eof,
                (false, false) => LineRead::Line,
            });
        }
        let newline = available.iter().position(|&b| b == b'\n');
        let chunk = &available[..newline.unwrap_or(available.len())];
        if !too_long {
            if line.len() + chunk.len() > max {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let used = chunk.len() + usize::from(newline.is_some());
        reader.consume(used);
        if newline.is_some() {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(if too_long { LineRead::TooLong } else { LineRead::Line });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn lines(input: &[u8], max: usize) -> Vec<(LineRead, Vec<u8>)> {
        // A tiny buffer makes lines span several fills.
        let mut reader = BufReader::with_capacity(3, Cursor::new(input.to_vec()));
        let mut out = Vec::new();
        let mut line = Vec::new();
        loop {
            let read = read_line(&mut reader, max, &mut line).unwrap();
            if read == LineRead::Eof {
                return out;
            }
            out.push((read, line.clone()));
        }
    }

    #[test]
    fn splits_lines_and_bounds_their_length() {
        assert_eq!(
            lines(b"ab\r\n\ncdef\nlast", 4),
            vec![
                (LineRead::Line, b"ab".to_vec()),
                (LineRead::Line, b"".to_vec()),
                (LineRead::Line, b"cdef".to_vec()),
                (LineRead::Line, b"last".to_vec()),
            ]
        );
        assert_eq!(
            lines(b"toolong\nok\ntoolongagain", 4),
            vec![(LineRead::TooLong, vec![]), (LineRead::Line, b"ok".to_vec()), (LineRead::TooLong, vec![]),]
        );
        assert!(lines(b"", 4).is_empty());
    }

    #[test]
    fn the_client_limit_holds() {
        let live = LiveClients::default();
        assert!((0..MAX_CLIENTS).all(|_| live.try_add()));
        assert!(!live.try_add());
        live.remove();
        assert!(live.try_add());
        live.wait_idle(Duration::from_millis(1));
    }

    #[test]
    fn a_live_socket_is_not_replaced() {
        let dir = std::env::temp_dir().join(format!("vmm-control-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        assert_eq!(remove_stale_socket(&path).unwrap_err().kind(), io::ErrorKind::AddrInUse);
        drop(listener);
        remove_stale_socket(&path).unwrap();
        assert!(!path.exists());
        std::fs::write(&path, b"not a socket").unwrap();
        assert!(remove_stale_socket(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
