//! Events: what devices report about the guest ([`DeviceEvent`]), turned into the event lines
//! every client receives (`crashvisor_control::Event`). The translation is a pure function of
//! the device event and a little per-boot state, so it is tested without a VM.

use std::time::Instant;

use crashvisor_abi::platform::{EventKind, PVPANIC_CRASH_LOADED, PVPANIC_PANICKED};
use crashvisor_control::{Event, LockupKind, PanicAbout, PanicSource};

use crate::devices::crash_reason::CrashInfo;

/// What a device saw the guest do (posted from vCPU threads).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceEvent {
    /// A write to `PLATFORM_EVENT`. For `Panic`, `crash` is the reason set before, if any.
    Platform {
        /// The kind.
        kind: EventKind,
        /// The CPU it concerns.
        cpu: u8,
        /// The kind's argument.
        arg: u16,
        /// The crash reason the guest handed over, for panics.
        crash: Option<CrashInfo>,
    },
    /// A pvpanic write with these (known) bits, and the crash reason set before, if any.
    Pvpanic {
        /// `PVPANIC_*` bits.
        bits: u8,
        /// The crash reason the guest handed over.
        crash: Option<CrashInfo>,
    },
}

/// Whether the event comes at most a few times per crash, so no rate limit applies.
pub fn is_rare(event: &Event) -> bool {
    matches!(
        event,
        Event::Panic { .. }
            | Event::CrashLoaded
            | Event::CaptureStarted { .. }
            | Event::SnapshotTaken { .. }
            | Event::DumpProgress { .. }
            | Event::VmcoreReady { .. }
            | Event::DumpFailed { .. }
    )
}

/// Per-boot memory of what was already reported.
#[derive(Debug, Default)]
pub struct BootEvents {
    panic_reported: bool,
}

/// Turns a device event into the event lines it causes (none, one or two). Both the event
/// register and pvpanic announce a panic; only the first is reported, until a crash kernel
/// starts (whose own panic is news again).
pub fn translate(event: DeviceEvent, state: &mut BootEvents) -> Vec<Event> {
    match event {
        DeviceEvent::Platform { kind, cpu, arg, crash } => {
            let event = match kind {
                EventKind::SoftLockup => lockup(LockupKind::Soft, cpu, arg),
                EventKind::HardLockup => lockup(LockupKind::Hard, cpu, arg),
                EventKind::HungTask => lockup(LockupKind::HungTask, cpu, arg),
                EventKind::Oops => Event::Oops { cpu, pid: arg },
                EventKind::UnknownNmi => Event::UnknownNmi { cpu, reason: arg },
                EventKind::Panic => {
                    return panic(state, PanicSource::Event, Some(u32::from(cpu)), crash).into_iter().collect()
                }
                EventKind::ControlReady => {
                    tracing::info!("guest control thread ready on CPU {cpu} (protocol {arg})");
                    return Vec::new();
                }
            };
            vec![event]
        }
        DeviceEvent::Pvpanic { bits, crash } => {
            let mut events = Vec::new();
            if bits & PVPANIC_CRASH_LOADED != 0 {
                state.panic_reported = false;
                events.push(Event::CrashLoaded);
            }
            if bits & PVPANIC_PANICKED != 0 {
                let cpu = crash.as_ref().map(|c| c.cpu);
                events.extend(panic(state, PanicSource::Pvpanic, cpu, crash));
            }
            events
        }
    }
}

fn lockup(kind: LockupKind, cpu: u8, arg: u16) -> Event {
    Event::LockupDetected { kind, cpu, arg }
}

fn panic(state: &mut BootEvents, source: PanicSource, cpu: Option<u32>, reason: Option<CrashInfo>) -> Option<Event> {
    if std::mem::replace(&mut state.panic_reported, true) {
        return None;
    }
    let about = match reason {
        Some(reason) => PanicAbout::Reason(reason),
        None => PanicAbout::Cpu { cpu },
    };
    Some(Event::Panic { source, about })
}

/// A token bucket bounding how many guest events per second reach clients, so a guest
/// hammering the event port cannot flood them.
#[derive(Debug)]
pub struct RateLimit {
    burst: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
    /// Events refused so far.
    pub dropped: u64,
}

impl RateLimit {
    /// Up to `burst` events at once, refilled at `per_sec`.
    pub fn new(burst: u32, per_sec: u32, now: Instant) -> Self {
        Self { burst: f64::from(burst), per_sec: f64::from(per_sec), tokens: f64::from(burst), last: now, dropped: 0 }
    }

    /// Whether one more event may pass at `now`.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crashvisor_abi::platform::Detector;
    use std::time::Duration;

    fn platform(kind: EventKind, cpu: u8, arg: u16) -> DeviceEvent {
        DeviceEvent::Platform { kind, cpu, arg, crash: None }
    }

    fn reason() -> CrashInfo {
        CrashInfo {
            detector: Detector::HardLockup,
            cpu: 1,
            pid: 0,
            comm: "swapper/1".into(),
            message: "Hard LOCKUP".into(),
        }
    }

    #[test]
    fn lockups_and_oopses_become_events() {
        let mut s = BootEvents::default();
        let lines: Vec<String> = [
            platform(EventKind::SoftLockup, 1, 22),
            platform(EventKind::HardLockup, 1, 0),
            platform(EventKind::HungTask, 0, 57),
            platform(EventKind::Oops, 0, 12),
            platform(EventKind::UnknownNmi, 1, 0),
        ]
        .into_iter()
        .flat_map(|e| translate(e, &mut s))
        .map(|e| e.to_line())
        .collect();
        assert_eq!(
            lines,
            [
                "{\"event\":\"lockup_detected\",\"kind\":\"soft\",\"cpu\":1,\"arg\":22}\n",
                "{\"event\":\"lockup_detected\",\"kind\":\"hard\",\"cpu\":1,\"arg\":0}\n",
                "{\"event\":\"lockup_detected\",\"kind\":\"hung_task\",\"cpu\":0,\"arg\":57}\n",
                "{\"event\":\"oops\",\"cpu\":0,\"pid\":12}\n",
                "{\"event\":\"unknown_nmi\",\"cpu\":1,\"reason\":0}\n",
            ]
        );
        assert!(translate(platform(EventKind::ControlReady, 0, 1), &mut s).is_empty());
    }

    #[test]
    fn a_panic_is_reported_once_with_its_reason() {
        let mut s = BootEvents::default();
        let event = DeviceEvent::Platform { kind: EventKind::Panic, cpu: 1, arg: 0, crash: Some(reason()) };
        let first = translate(event.clone(), &mut s);
        let json: serde_json::Value = serde_json::from_str(&first[0].to_line()).unwrap();
        assert_eq!(json["event"], "panic");
        assert_eq!(json["source"], "event");
        assert_eq!(json["detector"], "hardlockup");
        assert_eq!(json["comm"], "swapper/1");
        assert_eq!(json["message"], "Hard LOCKUP");
        assert_eq!(json["cpu"], 1);
        let pvpanic = DeviceEvent::Pvpanic { bits: PVPANIC_PANICKED, crash: Some(reason()) };
        assert!(translate(pvpanic.clone(), &mut s).is_empty(), "already reported");
        // A crash kernel starts; its panic is news.
        let loaded = DeviceEvent::Pvpanic { bits: PVPANIC_CRASH_LOADED, crash: None };
        assert_eq!(translate(loaded, &mut s), [Event::CrashLoaded]);
        assert_eq!(translate(pvpanic, &mut s).len(), 1);
    }

    #[test]
    fn a_panic_without_reason_has_no_reason_fields() {
        let mut s = BootEvents::default();
        let events = translate(DeviceEvent::Pvpanic { bits: PVPANIC_PANICKED, crash: None }, &mut s);
        assert_eq!(events[0].to_line(), "{\"event\":\"panic\",\"source\":\"pvpanic\"}\n");
    }

    #[test]
    fn dump_events_have_fixed_shapes() {
        let lines: Vec<String> = [
            Event::CaptureStarted { dump_level: 31, size: 8192, ranges: 2 },
            Event::VmcoreReady { id: "vm-x".into(), path: "/c/vm-x".into(), size: 8192, on_disk: 4096 },
            Event::DumpFailed { reason: "no elfcorehdr".into() },
        ]
        .into_iter()
        .inspect(|e| assert!(is_rare(e)))
        .map(|e| e.to_line())
        .collect();
        assert_eq!(
            lines,
            [
                "{\"event\":\"capture_started\",\"dump_level\":31,\"size\":8192,\"ranges\":2}\n",
                "{\"event\":\"vmcore_ready\",\"id\":\"vm-x\",\"path\":\"/c/vm-x\",\"size\":8192,\"on_disk\":4096}\n",
                "{\"event\":\"dump_failed\",\"reason\":\"no elfcorehdr\"}\n",
            ]
        );
        assert!(!is_rare(&Event::Oops { cpu: 0, pid: 1 }));
    }

    #[test]
    fn the_rate_limit_allows_bursts_then_a_steady_rate() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(3, 10, t0);
        assert!((0..3).all(|_| r.allow(t0)));
        assert!(!r.allow(t0));
        assert!(r.allow(t0 + Duration::from_millis(100)));
        assert!(!r.allow(t0 + Duration::from_millis(100)));
        assert_eq!(r.dropped, 2);
    }
}
