//! `Control`: a client of the VMM's control socket (`vmm --control PATH`, see
//! docs/control-protocol.md). One JSON request per line out (any JSON object, so tests can send
//! hostile ones); responses and events in, each stamped with the `Instant` its line was read, so
//! tests can time what the guest does. Every line the VMM sends must be a response or an event
//! of `crashvisor_control`'s types; anything else fails the test.
//!
//! [`Control::request`] sends one request and waits for the response with its id; pipelined
//! clients [`Control::send`] several and collect each with [`Control::response`], in any
//! order (responses that arrive for another id wait in a buffer). Events that arrive meanwhile are kept, in order, for [`Control::wait_event`], which takes
//! the first buffered event a predicate accepts and leaves the others where they are; every
//! event ever received also stays in [`Control::history`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use crashvisor_control::{Response, ServerLine};
use serde_json::{json, Value};

/// One event line (`{"event": "...", ...}`) and when it was read.
#[derive(Clone, Debug)]
pub struct Event {
    /// When the reader thread read the line.
    pub at: Instant,
    /// The whole JSON object, `event` key included.
    pub body: Value,
}

impl Event {
    /// The event's name (`booted`, `lockup_detected`, `panic`, ...).
    pub fn name(&self) -> &str {
        self.body["event"].as_str().unwrap_or("")
    }

    /// Whether this is a `name` event.
    pub fn is(&self, name: &str) -> bool {
        self.name() == name
    }

    /// Whether this is a `lockup_detected` event of `kind` (`soft`, `hard`, `hung_task`).
    pub fn is_lockup(&self, kind: &str) -> bool {
        self.is("lockup_detected") && self.body["kind"] == kind
    }

    /// Field `key` as an unsigned number (`None` if absent or not one).
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.body[key].as_u64()
    }

    /// Field `key` as a string (`None` if absent or not one).
    pub fn str(&self, key: &str) -> Option<&str> {
        self.body[key].as_str()
    }
}

impl std::ops::Index<&str> for Event {
    type Output = Value;
    /// Field `key`, or `Value::Null` if absent.
    fn index(&self, key: &str) -> &Value {
        &self.body[key]
    }
}

/// An error response's body as tests compare it: `{"code": ..., "message": ...}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    /// The documented code (`bad_argument`, `unknown_sysctl`, ...).
    pub code: String,
    /// The VMM's or guest's explanation.
    pub message: String,
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// A response and when it was read (for a request that starts something in the guest, such as
/// `inject`, the moment the host knew the guest had accepted it).
#[derive(Clone, Debug)]
pub struct Reply {
    /// When the reader thread read the response line.
    pub at: Instant,
    /// `result` of an `"ok": true` response, or the error of an `"ok": false` one.
    pub outcome: Result<Value, ErrorReply>,
}

/// Why the client could not get what it waited for (a test failure, not a protocol error).
#[derive(Debug)]
pub enum ControlFailure {
    /// Nothing arrived in time.
    Timeout(String),
    /// The VMM closed the connection (it exited).
    Closed(String),
    /// The socket failed, or the VMM sent a line that is neither a response nor an event.
    Broken(String),
}

impl fmt::Display for ControlFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout(what) => write!(f, "control socket: timed out waiting for {what}"),
            Self::Closed(what) => write!(f, "control socket: the VMM closed the connection while waiting for {what}"),
            Self::Broken(what) => write!(f, "control socket: {what}"),
        }
    }
}

/// What the reader thread passes on.
enum Incoming {
    Event(Event),
    Response(Instant, Response),
    Garbage(String),
    Closed,
}

/// A connected control-socket client.
pub struct Control {
    stream: UnixStream,
    incoming: Receiver<Incoming>,
    /// Events received and not yet taken by `wait_event`, oldest first.
    pending: VecDeque<Event>,
    /// Every event received, oldest first.
    history: Vec<Event>,
    /// Ids sent and not yet collected, and the responses that came for them meanwhile.
    outstanding: HashSet<u64>,
    answers: HashMap<u64, Reply>,
    next_id: u64,
    closed: bool,
}

impl Control {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> std::io::Result<Self> {
        let stream = UnixStream::connect(path)?;
        let reader = stream.try_clone()?;
        let (sender, incoming) = mpsc::channel();
        spawn_reader(reader, sender);
        Ok(Self {
            stream,
            incoming,
            pending: VecDeque::new(),
            history: Vec::new(),
            outstanding: HashSet::new(),
            answers: HashMap::new(),
            next_id: 1,
            closed: false,
        })
    }

    /// Sends `request` (a JSON object; its `id` is set here) and waits up to `timeout` for the
    /// response, buffering the events that come first.
    pub fn request(&mut self, request: Value, timeout: Duration) -> Result<Reply, ControlFailure> {
        let id = self.send(request)?;
        self.response(id, timeout)
    }

    /// Sends `request` (a JSON object; its `id` is set here) without waiting, and returns the
    /// id to collect its response with.
    pub fn send(&mut self, mut request: Value) -> Result<u64, ControlFailure> {
        let id = self.next_id;
        self.next_id += 1;
        let Some(object) = request.as_object_mut() else {
            return Err(ControlFailure::Broken(format!("a request must be a JSON object, not {request}")));
        };
        object.insert("id".into(), json!(id));
        let mut line = request.to_string();
        line.push('\n');
        self.stream
            .write_all(line.as_bytes())
            .map_err(|e| ControlFailure::Broken(format!("cannot send {}: {e}", line.trim_end())))?;
        self.outstanding.insert(id);
        Ok(id)
    }

    /// Waits up to `timeout` for the response to request `id`, buffering events and the
    /// responses to other outstanding requests. Either way `id` is collected: an answer that
    /// comes after a timeout here is dropped.
    pub fn response(&mut self, id: u64, timeout: Duration) -> Result<Reply, ControlFailure> {
        let what = format!("the response to request {id}");
        let deadline = Instant::now() + timeout;
        let result = loop {
            if let Some(reply) = self.answers.remove(&id) {
                break Ok(reply);
            }
            let (at, response) = match self.receive(deadline, &what) {
                Ok(Some(response)) => response,
                Ok(None) => continue, // an event, buffered by `receive`
                Err(failure) => break Err(failure),
            };
            let Some(answered) = response.id.as_u64().filter(|i| self.outstanding.contains(i)) else {
                continue; // an answer to a request that timed out here: nobody waits for it
            };
            let outcome =
                response.outcome.map_err(|e| ErrorReply { code: e.code.as_str().to_owned(), message: e.message });
            self.answers.insert(answered, Reply { at, outcome });
        };
        self.outstanding.remove(&id);
        result
    }

    /// Waits up to `timeout` for an event `accept`s: the first buffered one, else the next
    /// one to arrive. The event is taken out of the buffer; events before it stay there.
    pub fn wait_event(
        &mut self,
        accept: impl Fn(&Event) -> bool,
        what: &str,
        timeout: Duration,
    ) -> Result<Event, ControlFailure> {
        let deadline = Instant::now() + timeout;
        let mut checked = 0;
        loop {
            if let Some(i) = self.pending.iter().skip(checked).position(&accept) {
                return Ok(self.pending.remove(checked + i).expect("the position is in the buffer"));
            }
            checked = self.pending.len();
            self.receive(deadline, what)?;
        }
    }

    /// Every event received so far, oldest first (taken by `wait_event` or not), after reading
    /// whatever has already arrived.
    pub fn history(&mut self) -> &[Event] {
        while let Ok(incoming) = self.incoming.try_recv() {
            // Responses, garbage and the end of the stream show up again at the next wait; here
            // only events matter.
            if let Incoming::Event(event) = incoming {
                self.buffer(event);
            }
        }
        &self.history
    }

    /// Takes one line (or fails) before `deadline`: a response, or `None` for an event, which
    /// is buffered.
    fn receive(&mut self, deadline: Instant, what: &str) -> Result<Option<(Instant, Response)>, ControlFailure> {
        if self.closed {
            return Err(ControlFailure::Closed(what.to_string()));
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
        match self.incoming.recv_timeout(timeout) {
            Ok(Incoming::Event(event)) => {
                self.buffer(event);
                Ok(None)
            }
            Ok(Incoming::Response(at, response)) => Ok(Some((at, response))),
            Ok(Incoming::Garbage(text)) => Err(ControlFailure::Broken(text)),
            Ok(Incoming::Closed) | Err(RecvTimeoutError::Disconnected) => {
                self.closed = true;
                Err(ControlFailure::Closed(what.to_string()))
            }
            Err(RecvTimeoutError::Timeout) => Err(ControlFailure::Timeout(what.to_string())),
        }
    }

    fn buffer(&mut self, event: Event) {
        self.pending.push_back(event.clone());
        self.history.push(event);
    }
}

/// A line as the VMM's types read it; events keep their JSON for the tests to look into.
fn classify(at: Instant, line: &str) -> Incoming {
    let garbage = |e: serde_json::Error| {
        Incoming::Garbage(format!("the VMM sent a line that is neither a response nor an event ({e}): {line:?}"))
    };
    let value: Value = match serde_json::from_str(line) {
        Ok(value) => value,
        Err(e) => return garbage(e),
    };
    match ServerLine::from_value(value.clone()) {
        Ok(ServerLine::Event(_)) => Incoming::Event(Event { at, body: value }),
        Ok(ServerLine::Response(response)) => Incoming::Response(at, response),
        Err(e) => garbage(e),
    }
}

/// Reads lines from the socket, stamps them, and passes them on until the connection ends.
fn spawn_reader(stream: UnixStream, sender: Sender<Incoming>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        loop {
            line.clear();
            let incoming = match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => classify(Instant::now(), &line),
            };
            if sender.send(incoming).is_err() {
                return; // the client is gone
            }
        }
        let _ = sender.send(Incoming::Closed);
    });
}
