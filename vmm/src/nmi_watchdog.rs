//! The host's periodic NMI: the clock of the guest's hard-lockup detector.
//!
//! Linux's perf NMI watchdog counts CPU cycles and takes an NMI every ~10 s; a VM has no such
//! counter it can trust, so the guest asks the host (`Command::SetNmiWatchdog`) for an NMI on
//! every vCPU every period, each marked `NMI_REASON_WATCHDOG`. One host thread per machine
//! ticks; it stands still while the machine is paused (the first tick after a resume comes a
//! full period later) and ends with the machine.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crashvisor_abi::platform::{NMI_REASON_WATCHDOG, NMI_WATCHDOG_MAX_PERIOD_MS, NMI_WATCHDOG_MIN_PERIOD_MS};

use crate::vcpu::requests::VcpuRequests;

/// Why the guest's request for a period was refused.
#[derive(Debug, thiserror::Error)]
pub enum NmiWatchdogError {
    /// The VMM runs with `--nmi-watchdog off`.
    #[error("the NMI watchdog is off (--nmi-watchdog off)")]
    Disabled,
    /// The period is outside the accepted range.
    #[error(
        "an NMI watchdog period of {0} ms is outside {NMI_WATCHDOG_MIN_PERIOD_MS}..={NMI_WATCHDOG_MAX_PERIOD_MS} ms"
    )]
    Period(u64),
    /// The ticker thread could not start.
    #[error("cannot start the NMI watchdog thread")]
    Thread(#[source] std::io::Error),
}

/// What the ticker does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Send the NMIs now.
    Tick,
    /// Sleep this long (or until something changes).
    Wait(Duration),
    /// Sleep until something changes.
    Idle,
    /// The machine is gone.
    Exit,
}

/// The ticker's timetable: a pure state machine, so tests need no threads or clocks.
#[derive(Debug, Default)]
struct Schedule {
    period: Option<Duration>,
    next_tick: Option<Instant>,
    paused: bool,
    shutdown: bool,
}

impl Schedule {
    fn set_period(&mut self, period: Option<Duration>, now: Instant) {
        self.period = period;
        self.next_tick = period.map(|p| now + p);
    }

    fn pause(&mut self) {
        self.paused = true;
    }

    fn resume(&mut self, now: Instant) {
        self.paused = false;
        self.next_tick = self.period.map(|p| now + p);
    }

    fn poll(&mut self, now: Instant) -> Step {
        if self.shutdown {
            return Step::Exit;
        }
        let (Some(period), Some(next), false) = (self.period, self.next_tick, self.paused) else {
            return Step::Idle;
        };
        if now < next {
            return Step::Wait(next - now);
        }
        // Keep the phase, but never make up for missed ticks with a burst.
        let mut following = next + period;
        if following <= now {
            following = now + period;
        }
        self.next_tick = Some(following);
        Step::Tick
    }
}

struct Shared {
    schedule: Mutex<Schedule>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Schedule)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }
}

/// The NMI watchdog of one machine.
pub struct NmiWatchdog {
    enabled: bool,
    vcpus: Arc<VcpuRequests>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl NmiWatchdog {
    /// A stopped watchdog for the vCPUs of `vcpus`; `enabled` false refuses every period.
    pub fn new(enabled: bool, vcpus: Arc<VcpuRequests>) -> Self {
        Self {
            enabled,
            vcpus,
            shared: Arc::new(Shared { schedule: Mutex::new(Schedule::default()), changed: Condvar::new() }),
            thread: Mutex::new(None),
        }
    }

    /// Whether the VMM offers the watchdog at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The current period in milliseconds (0: stopped).
    pub fn period_ms(&self) -> u64 {
        self.shared.lock().period.map_or(0, |p| p.as_millis() as u64)
    }

    /// The guest's `SetNmiWatchdog`: ticks every `period_ms` from now on, or stops for 0.
    pub fn set_period_ms(&self, period_ms: u64) -> Result<(), NmiWatchdogError> {
        if !self.enabled {
            return Err(NmiWatchdogError::Disabled);
        }
        let period = match period_ms {
            0 => None,
            ms if (NMI_WATCHDOG_MIN_PERIOD_MS..=NMI_WATCHDOG_MAX_PERIOD_MS).contains(&ms) => {
                Some(Duration::from_millis(ms))
            }
            ms => return Err(NmiWatchdogError::Period(ms)),
        };
        if period.is_some() {
            self.ensure_thread()?;
        }
        self.shared.update(|s| s.set_period(period, Instant::now()));
        Ok(())
    }

    fn ensure_thread(&self) -> Result<(), NmiWatchdogError> {
        let mut thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        if thread.is_none() {
            let (shared, vcpus) = (self.shared.clone(), self.vcpus.clone());
            *thread = Some(
                std::thread::Builder::new()
                    .name("nmi-watchdog".into())
                    .spawn(move || tick(&shared, &vcpus))
                    .map_err(NmiWatchdogError::Thread)?,
            );
        }
        Ok(())
    }

    /// Stops ticking until `resume`.
    pub fn pause(&self) {
        self.shared.update(Schedule::pause);
    }

    /// Ticks again, the first time a full period from now.
    pub fn resume(&self) {
        self.shared.update(|s| s.resume(Instant::now()));
    }

    /// Ends the ticker thread (the machine is going away) and waits for it.
    pub fn shutdown(&self) {
        self.shared.update(|s| s.shutdown = true);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("the NMI watchdog thread panicked");
            }
        }
    }
}

fn tick(shared: &Shared, vcpus: &VcpuRequests) {
    let mut schedule = shared.lock();
    loop {
        match schedule.poll(Instant::now()) {
            Step::Exit => return,
            Step::Idle => schedule = shared.changed.wait(schedule).unwrap_or_else(|e| e.into_inner()),
            Step::Wait(d) => schedule = shared.changed.wait_timeout(schedule, d).unwrap_or_else(|e| e.into_inner()).0,
            Step::Tick => {
                drop(schedule);
                for id in 0..vcpus.count() {
                    vcpus.inject_nmi(id, NMI_REASON_WATCHDOG);
                }
                schedule = shared.lock();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_millis(100);

    #[test]
    fn ticks_every_period_without_bursts() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        assert_eq!(s.poll(t0), Step::Idle);
        s.set_period(Some(P), t0);
        assert_eq!(s.poll(t0), Step::Wait(P));
        assert_eq!(s.poll(t0 + P), Step::Tick);
        assert_eq!(s.poll(t0 + P), Step::Wait(P));
        // Late by five periods: one tick, then a full period to the next.
        assert_eq!(s.poll(t0 + 7 * P), Step::Tick);
        assert_eq!(s.poll(t0 + 7 * P), Step::Wait(P));
        s.set_period(None, t0);
        assert_eq!(s.poll(t0 + 100 * P), Step::Idle);
    }

    #[test]
    fn a_pause_stops_ticks_and_resume_restarts_a_full_period_later() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.set_period(Some(P), t0);
        s.pause();
        assert_eq!(s.poll(t0 + 10 * P), Step::Idle);
        s.resume(t0 + 10 * P + P / 2);
        assert_eq!(s.poll(t0 + 11 * P), Step::Wait(P / 2));
        assert_eq!(s.poll(t0 + 11 * P + P / 2), Step::Tick);
        s.shutdown = true;
        assert_eq!(s.poll(t0), Step::Exit);
    }

    #[test]
    fn periods_are_checked_and_off_means_unsupported() {
        let vcpus = Arc::new(VcpuRequests::new(1));
        let off = NmiWatchdog::new(false, vcpus.clone());
        assert!(matches!(off.set_period_ms(1000), Err(NmiWatchdogError::Disabled)));
        let on = NmiWatchdog::new(true, vcpus.clone());
        assert!(matches!(on.set_period_ms(1), Err(NmiWatchdogError::Period(1))));
        assert!(matches!(on.set_period_ms(u64::MAX), Err(NmiWatchdogError::Period(_))));
        on.set_period_ms(0).unwrap();
        assert_eq!(on.period_ms(), 0);
        on.set_period_ms(NMI_WATCHDOG_MIN_PERIOD_MS).unwrap();
        assert_eq!(on.period_ms(), NMI_WATCHDOG_MIN_PERIOD_MS);
        // The ticker runs: an NMI request appears on the vCPU within a few periods.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !vcpus.take_nmi_request(0) {
            assert!(Instant::now() < deadline, "no tick");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(vcpus.take_nmi_reason(0) & NMI_REASON_WATCHDOG, NMI_REASON_WATCHDOG);
        on.shutdown();
    }
}
