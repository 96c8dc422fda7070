//! The service's event stream: what happens to its VMs (booted, lockup_detected, panicked,
//! vmcore_ready, failed, ...), numbered in order, kept in a bounded history and broadcast to
//! every subscriber (the SSE endpoints). A subscriber gets the history after a sequence number
//! and then the live events, with no gap and no duplicate. Numbers keep rising across restarts
//! of the service: it reserves them in blocks, durably, before it uses them, and the next
//! service starts after the last block reserved, so a client that resumes with the last number
//! it saw (`Last-Event-ID`) gets every later event.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::broadcast;

use crate::clock;

/// Events kept for late subscribers (`?since=` / `Last-Event-ID`).
pub const HISTORY_LEN: usize = 4096;
/// Events that may wait for one slow subscriber before it skips ahead.
const CHANNEL_CAPACITY: usize = 1024;
/// Sequence numbers reserved at once.
pub const SEQ_BLOCK: u64 = 4096;

/// One event; as an SSE message's data, with the same name as the message's `event` and the
/// same `seq` as its `id`.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = Event)]
pub struct ServiceEvent {
    /// Its number, in the order events happened (from 1 for a service's first run; a restarted
    /// service goes on above the last service's numbers).
    pub seq: u64,
    /// The event's name (`booted`, `vmcore_ready`, ...; docs/api.md lists them).
    pub event: String,
    /// The VM it concerns.
    pub vm: String,
    /// When the service saw it, RFC 3339 UTC.
    pub time: String,
    /// The same in milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
    /// The event's own fields.
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

/// An event before it is numbered.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// The name.
    pub event: String,
    /// Its fields.
    pub fields: Map<String, Value>,
}

impl NewEvent {
    /// An event named `event` with the fields of `fields` (a JSON object; anything else gives
    /// no fields).
    pub fn new(event: impl Into<String>, fields: Value) -> Self {
        let fields = match fields {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        Self { event: event.into(), fields }
    }
}

struct History {
    next_seq: u64,
    /// The first number not reserved yet.
    reserved: u64,
    events: VecDeque<Arc<ServiceEvent>>,
}

/// Keeps the first sequence number a later service may use (called before any number below
/// it is used).
pub type ReserveSeq = Box<dyn Fn(u64) + Send + Sync>;

/// The event bus.
pub struct EventBus {
    history: Mutex<History>,
    sender: broadcast::Sender<Arc<ServiceEvent>>,
    reserve: Option<ReserveSeq>,
}

/// A subscription: the retained events after the requested sequence number, then `live`.
pub struct Subscription {
    /// Retained events the subscriber asked for, oldest first.
    pub backlog: Vec<Arc<ServiceEvent>>,
    /// Everything published after the backlog.
    pub live: broadcast::Receiver<Arc<ServiceEvent>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// An empty bus numbering from 1, for one run only.
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(CHANNEL_CAPACITY);
        let history = History { next_seq: 1, reserved: u64::MAX, events: VecDeque::new() };
        Self { history: Mutex::new(history), sender, reserve: None }
    }

    /// An empty bus numbering from `first` (what the last service reserved), reserving its
    /// numbers through `reserve`.
    pub fn resuming(first: u64, reserve: ReserveSeq) -> Self {
        let (sender, _) = broadcast::channel(CHANNEL_CAPACITY);
        let first = first.max(1);
        let history = History { next_seq: first, reserved: first, events: VecDeque::new() };
        Self { history: Mutex::new(history), sender, reserve: Some(reserve) }
    }

    fn lock(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Numbers, records and broadcasts `event` of VM `vm`.
    pub fn publish(&self, vm: &str, event: NewEvent) -> Arc<ServiceEvent> {
        let now = SystemTime::now();
        let mut history = self.lock();
        let seq = history.next_seq;
        history.next_seq += 1;
        if seq >= history.reserved {
            history.reserved = seq + SEQ_BLOCK;
            if let Some(reserve) = &self.reserve {
                reserve(history.reserved);
            }
        }
        let event = Arc::new(ServiceEvent {
            seq,
            event: event.event,
            vm: vm.to_owned(),
            time: clock::rfc3339(now),
            time_unix_ms: clock::unix_ms(now),
            fields: event.fields,
        });
        tracing::info!(vm, seq, "event {}", event.event);
        if history.events.len() == HISTORY_LEN {
            history.events.pop_front();
        }
        history.events.push_back(event.clone());
        // No subscriber is fine.
        let _ = self.sender.send(event.clone());
        event
    }

    /// Subscribes to events with a sequence number above `after` (0: every retained event;
    /// `None`: only events from now on).
    pub fn subscribe(&self, after: Option<u64>) -> Subscription {
        let history = self.lock();
        let backlog = match after {
            Some(after) => history.events.iter().filter(|e| e.seq > after).cloned().collect(),
            None => Vec::new(),
        };
        // Subscribing under the lock: nothing is published between the backlog and `live`.
        Subscription { backlog, live: self.sender.subscribe() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subscribers_get_the_backlog_then_live_events_without_gaps() {
        let bus = EventBus::new();
        bus.publish("a", NewEvent::new("booted", json!({"boot": 1})));
        bus.publish("b", NewEvent::new("panicked", json!({})));
        let mut sub = bus.subscribe(Some(1));
        assert_eq!(sub.backlog.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
        bus.publish("a", NewEvent::new("vmcore_ready", json!({"id": "a-x"})));
        let live = sub.live.try_recv().unwrap();
        assert_eq!((live.seq, live.event.as_str(), live.vm.as_str()), (3, "vmcore_ready", "a"));
        let json = serde_json::to_value(&*live).unwrap();
        assert_eq!(json["id"], "a-x");
        assert_eq!(json["event"], "vmcore_ready");
        assert!(bus.subscribe(None).backlog.is_empty());
        assert_eq!(bus.subscribe(Some(0)).backlog.len(), 3);
    }

    #[test]
    fn numbers_are_reserved_before_use_and_a_resumed_bus_goes_on_above() {
        let reserved = Arc::new(Mutex::new(Vec::new()));
        let keep = reserved.clone();
        let bus = EventBus::resuming(0, Box::new(move |until| keep.lock().unwrap().push(until)));
        assert_eq!(bus.publish("a", NewEvent::new("booted", json!({}))).seq, 1);
        assert_eq!(*reserved.lock().unwrap(), [1 + SEQ_BLOCK], "reserved before the first is used");
        for _ in 1..SEQ_BLOCK {
            bus.publish("a", NewEvent::new("oops", json!({})));
        }
        assert_eq!(reserved.lock().unwrap().len(), 1, "one write per block");
        assert_eq!(bus.publish("a", NewEvent::new("oops", json!({}))).seq, 1 + SEQ_BLOCK);
        assert_eq!(*reserved.lock().unwrap(), [1 + SEQ_BLOCK, 1 + 2 * SEQ_BLOCK]);
        // The next service starts where the last reservation ends: above every number used.
        let next = EventBus::resuming(1 + 2 * SEQ_BLOCK, Box::new(|_| {}));
        assert_eq!(next.publish("a", NewEvent::new("adopted", json!({}))).seq, 1 + 2 * SEQ_BLOCK);
    }

    #[test]
    fn history_is_bounded() {
        let bus = EventBus::new();
        for _ in 0..HISTORY_LEN + 5 {
            bus.publish("a", NewEvent::new("oops", json!({})));
        }
        let sub = bus.subscribe(Some(0));
        assert_eq!(sub.backlog.len(), HISTORY_LEN);
        assert_eq!(sub.backlog[0].seq, 6);
    }
}
