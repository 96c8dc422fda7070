//! The guest channel: the controller's end of the line protocol on COM2. It owns the guest's
//! hello, the table of requests awaiting an answer (wire ids, deadlines), and the channel's
//! health: whether the guest still answers, the resynchronisation mark after a request went
//! unanswered, and the probe that notices when an unresponsive guest answers again.
//!
//! A slow host may delay an answer for as long as a request's timeout; it never loses one, and
//! a request that timed out never leaves the channel stuck for the next one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crashvisor_abi::control::{parse_line, Verb};
use crashvisor_control::{ControlError, ControlErrorCode};
use serde_json::Value;

use super::guest::{self, GuestRequest, Hello, PendingTable};
use crate::devices::control_uart::ControlUart;

/// Most guest requests in flight at once (probes included).
pub const MAX_IN_FLIGHT: usize = 64;
/// How long a health probe waits for its answer before the next one is sent.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The resynchronisation mark: an empty line, which the guest ignores (`crashvisor_abi::control`).
const RESYNC_MARK: &[u8] = b"\n";

/// A request in flight: a client's, or the channel's own probe.
enum Outstanding<W> {
    Client { waiter: W, sent: Instant },
    Probe { sent: Instant },
}

impl<W> Outstanding<W> {
    fn sent(&self) -> Instant {
        match self {
            Self::Client { sent, .. } | Self::Probe { sent } => *sent,
        }
    }
}

/// What a line from the guest meant.
pub enum Received<W> {
    /// The guest's hello: its control thread (re)started.
    Hello(Hello),
    /// The answer to a client's request.
    Answer(W, Result<Value, ControlError>),
    /// Nothing anyone waits for (a late answer, a probe's answer, a malformed line).
    Nothing,
}

/// The controller's end of the guest channel. `W` says whom to answer.
pub struct GuestChannel<W> {
    uart: Arc<ControlUart>,
    hello: Option<Hello>,
    pending: PendingTable<Outstanding<W>>,
    /// When the guest last sent a line.
    last_heard: Option<Instant>,
    /// A request went unanswered and nothing was heard since.
    unresponsive: bool,
    /// Send the resynchronisation mark before the next request.
    resync: bool,
    /// Guest lines that did not parse.
    malformed_lines: u64,
}

impl<W> GuestChannel<W> {
    /// A channel writing requests to `uart`, down until the guest says hello.
    pub fn new(uart: Arc<ControlUart>) -> Self {
        Self {
            uart,
            hello: None,
            pending: PendingTable::new(MAX_IN_FLIGHT),
            last_heard: None,
            unresponsive: false,
            resync: false,
            malformed_lines: 0,
        }
    }

    /// The guest's hello while its channel is up.
    pub fn hello(&self) -> Option<&Hello> {
        self.hello.as_ref()
    }

    /// Whether the guest's control thread is up and answering: false before its hello, after
    /// a reboot or a panic, and while requests go unanswered.
    pub fn is_answering(&self) -> bool {
        self.hello.is_some() && !self.unresponsive
    }

    /// Takes the channel down (reboot, panic, power off) and returns the requests that wait.
    pub fn down(&mut self) -> Vec<W> {
        self.hello = None;
        self.unresponsive = false;
        self.resync = false;
        self.pending.drain().into_iter().filter_map(client_waiter).collect()
    }

    /// Sends `request` for `waiter`; refused while the channel is down or full.
    pub fn send(&mut self, waiter: W, request: &GuestRequest) -> Result<(), ControlError> {
        if self.hello.is_none() {
            return Err(ControlError::new(
                ControlErrorCode::GuestUnavailable,
                "the guest's control channel is not up (no hello from the guest yet)",
            ));
        }
        let now = Instant::now();
        let entry = Outstanding::Client { waiter, sent: now };
        let wire_id = self.pending.insert(entry, now + request.timeout).ok_or_else(|| {
            ControlError::new(ControlErrorCode::Busy, format!("{MAX_IN_FLIGHT} requests already wait for the guest"))
        })?;
        let sent = guest::request_line(wire_id, request).and_then(|line| self.write_line(&line));
        if sent.is_err() {
            self.pending.take(wire_id);
        }
        sent
    }

    /// Queues one request line, after the resynchronisation mark when one is owed.
    fn write_line(&mut self, line: &str) -> Result<(), ControlError> {
        let queued = if self.resync {
            let mut marked = Vec::with_capacity(RESYNC_MARK.len() + line.len());
            marked.extend_from_slice(RESYNC_MARK);
            marked.extend_from_slice(line.as_bytes());
            self.uart.send_line(&marked)
        } else {
            self.uart.send_line(line.as_bytes())
        };
        if !queued {
            return Err(ControlError::new(
                ControlErrorCode::Busy,
                "the guest is not reading its control channel (input queue full)",
            ));
        }
        self.resync = false;
        Ok(())
    }

    /// Reads one line from the guest.
    pub fn receive(&mut self, text: &str, now: Instant) -> Received<W> {
        let line = match parse_line(text) {
            Ok(line) => line,
            Err(e) => {
                // Counted, and logged sparingly: a guest can write garbage fast.
                self.malformed_lines += 1;
                if self.malformed_lines.is_power_of_two() {
                    tracing::warn!(
                        "ignoring a malformed control line from the guest ({e}; {} so far)",
                        self.malformed_lines
                    );
                }
                return Received::Nothing;
            }
        };
        self.heard(now);
        if line.is_hello() {
            // A new control thread: nothing sent before it will be answered, and its line
            // buffer starts empty.
            self.resync = false;
            return match guest::parse_hello(&line) {
                Ok(hello) => {
                    self.hello = Some(hello.clone());
                    Received::Hello(hello)
                }
                Err(e) => {
                    tracing::error!("the guest's control channel is unusable: {e}");
                    self.hello = None;
                    Received::Nothing
                }
            };
        }
        match self.pending.take(line.id) {
            Some(Outstanding::Client { waiter, .. }) => Received::Answer(waiter, guest::response_result(&line)),
            Some(Outstanding::Probe { .. }) => Received::Nothing,
            None => {
                tracing::debug!("guest answered request {} that nobody waits for", line.id);
                Received::Nothing
            }
        }
    }

    fn heard(&mut self, now: Instant) {
        self.last_heard = Some(now);
        if std::mem::replace(&mut self.unresponsive, false) {
            tracing::info!("the guest's control channel answers again");
        }
    }

    /// When [`GuestChannel::expire`] has work next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.next_deadline()
    }

    /// Takes the requests whose deadline passed and returns their waiters. A request that
    /// expires with nothing heard from the guest since it was sent marks the guest
    /// unresponsive; from then on a probe is kept in flight until the guest answers again.
    pub fn expire(&mut self, now: Instant) -> Vec<W> {
        let expired = self.pending.expire(now);
        if expired.is_empty() {
            return Vec::new();
        }
        // The guest may hold part of an expired request (or still be reading it): the next
        // request starts after a resynchronisation mark.
        self.resync = true;
        let silent = expired.iter().any(|o| self.last_heard.is_none_or(|heard| heard < o.sent()));
        if silent && self.hello.is_some() && !self.unresponsive {
            tracing::warn!("the guest's control channel stopped answering");
            self.unresponsive = true;
        }
        if self.unresponsive && !self.pending.any(|o| matches!(o, Outstanding::Probe { .. })) {
            self.probe(now);
        }
        expired.into_iter().filter_map(client_waiter).collect()
    }

    /// Sends a `hello` request whose answer (any line, in fact) shows the guest answers again.
    fn probe(&mut self, now: Instant) {
        let request = GuestRequest { verb: Verb::Hello, args: Vec::new(), timeout: PROBE_TIMEOUT };
        let Some(wire_id) = self.pending.insert(Outstanding::Probe { sent: now }, now + PROBE_TIMEOUT) else {
            return; // full of client requests: their answers tell as much
        };
        let sent = guest::request_line(wire_id, &request).and_then(|line| self.write_line(&line));
        if sent.is_err() {
            self.pending.take(wire_id);
        }
    }

    /// Whether a request of a client `waits` for is in flight.
    pub fn any_waiting(&self, mut waits: impl FnMut(&W) -> bool) -> bool {
        self.pending.any(|o| matches!(o, Outstanding::Client { waiter, .. } if waits(waiter)))
    }

    /// Forgets the requests of the clients `keep` refuses (their answers are then ignored).
    pub fn retain(&mut self, mut keep: impl FnMut(&W) -> bool) {
        self.pending.retain(|o| match o {
            Outstanding::Client { waiter, .. } => keep(waiter),
            Outstanding::Probe { .. } => true,
        });
    }
}

fn client_waiter<W>(outstanding: Outstanding<W>) -> Option<W> {
    match outstanding {
        Outstanding::Client { waiter, .. } => Some(waiter),
        Outstanding::Probe { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Inbox;

    const HELLO: &str = "0 hello version=1 release=6.18.0-crashvisor cpus=2";

    fn channel() -> (GuestChannel<u32>, Arc<ControlUart>) {
        let (inbox, _) = Inbox::channel();
        let uart = Arc::new(ControlUart::new(inbox).unwrap());
        (GuestChannel::new(uart.clone()), uart)
    }

    fn request(verb: Verb, timeout_secs: u64) -> GuestRequest {
        GuestRequest { verb, args: Vec::new(), timeout: Duration::from_secs(timeout_secs) }
    }

    #[test]
    fn requests_wait_for_the_hello() {
        let (mut ch, uart) = channel();
        let e = ch.send(1, &request(Verb::Uptime, 10)).unwrap_err();
        assert_eq!(e.code, ControlErrorCode::GuestUnavailable);
        assert!(matches!(ch.receive(HELLO, Instant::now()), Received::Hello(h) if h.cpus == 2));
        assert!(ch.is_answering());
        ch.send(1, &request(Verb::Uptime, 10)).unwrap();
        assert_eq!(uart.guest_reads(), "1 uptime\n");
        match ch.receive("1 ok ns=5", Instant::now()) {
            Received::Answer(waiter, Ok(result)) => assert_eq!((waiter, result["ns"].as_u64()), (1, Some(5))),
            _ => panic!("no answer"),
        }
    }

    #[test]
    fn a_silent_guest_is_not_answering_until_it_answers_a_probe() {
        let (mut ch, uart) = channel();
        let t0 = Instant::now();
        ch.receive(HELLO, t0);
        ch.send(7, &request(Verb::Ps, 1)).unwrap();
        assert_eq!(uart.guest_reads(), "1 ps\n");
        let expired = ch.expire(Instant::now() + Duration::from_secs(2));
        assert_eq!(expired, [7]);
        assert!(!ch.is_answering(), "nothing was heard since the request was sent");
        assert_eq!(uart.guest_reads(), "\n2 hello\n", "a probe after the resynchronisation mark");
        // The guest answers the probe: the channel is up again, and nobody else gets an answer.
        assert!(matches!(ch.receive("2 ok version=1", Instant::now() + Duration::from_secs(3)), Received::Nothing));
        assert!(ch.is_answering());
        ch.send(8, &request(Verb::Uptime, 10)).unwrap();
        assert_eq!(uart.guest_reads(), "3 uptime\n", "no mark owed: the probe was answered");
    }

    #[test]
    fn a_guest_that_answers_others_stays_up_and_the_next_request_is_marked() {
        let (mut ch, uart) = channel();
        ch.receive(HELLO, Instant::now());
        ch.send(1, &request(Verb::Ps, 1)).unwrap();
        ch.send(2, &request(Verb::Uptime, 10)).unwrap();
        uart.guest_reads();
        assert!(matches!(ch.receive("2 ok ns=1", Instant::now() + Duration::from_millis(1)), Received::Answer(2, _)));
        assert_eq!(ch.expire(Instant::now() + Duration::from_secs(2)), [1]);
        assert!(ch.is_answering(), "the guest answered after request 1 was sent");
        ch.send(3, &request(Verb::Uptime, 10)).unwrap();
        assert_eq!(uart.guest_reads(), "\n3 uptime\n");
    }

    #[test]
    fn going_down_hands_back_every_waiter_but_probes() {
        let (mut ch, uart) = channel();
        ch.receive(HELLO, Instant::now());
        ch.send(1, &request(Verb::Ps, 1)).unwrap();
        ch.expire(Instant::now() + Duration::from_secs(2));
        ch.send(2, &request(Verb::Ps, 10)).unwrap();
        uart.guest_reads();
        let mut waiters = ch.down();
        waiters.sort();
        assert_eq!(waiters, [2]);
        assert!(!ch.is_answering());
        assert!(ch.next_deadline().is_none());
    }
}
