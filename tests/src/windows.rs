//! When Linux's lockup detectors report, as windows of time after the fault starts, derived
//! from the detectors' arithmetic (docs/watchdogs.md, /work/shared/linux-semantics.md §1–§3).
//! The end-to-end tests check measured latencies against these, and the `detect` benchmark
//! prints them next to its figures.
//!
//! Everything is measured from the moment the fault starts (`s`): a task starts spinning, or
//! blocks. A test only knows when the acknowledgement of its `inject` request arrived, which is
//! just before `s` (the guest starts the fault only after answering).

use std::time::Duration;

/// Linux's `get_timestamp()` unit: `running_clock() >> 30`, so 2^30 ns (~1.074 s). The
/// soft-lockup detector compares, and prints, whole units.
pub const TIMESTAMP_UNIT: Duration = Duration::from_nanos(1 << 30);
/// The soft-lockup timer fires this many times per soft threshold (`NUM_SAMPLE_PERIODS`).
const NUM_SAMPLE_PERIODS: u32 = 5;
/// Consecutive missed checks before the buddy detector reports (newest mainline).
pub const BUDDY_MISS_THRESH: u32 = 3;

/// Detection happens after `earliest` (exclusive) and no later than `latest` after the fault
/// started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Strict lower bound.
    pub earliest: Duration,
    /// Inclusive upper bound.
    pub latest: Duration,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({:.2} s, {:.2} s]", self.earliest.as_secs_f64(), self.latest.as_secs_f64())
    }
}

/// The watchdog timer's period, `2*thresh/5` s (`sample_period`).
pub fn sample_period(watchdog_thresh: u32) -> Duration {
    Duration::from_secs(2 * u64::from(watchdog_thresh)) / NUM_SAMPLE_PERIODS
}

/// The soft-lockup detector with `watchdog_thresh` = `t` (`p` = the sample period, `U` = the
/// timestamp unit).
///
/// While the CPU can schedule, its `watchdog/N` thread runs right after every timer tick and
/// sets `touch_ts` (and `report_ts`) to the tick's timestamp; the last such tick `T` before the
/// spin is within one period before `s`. The timer keeps ticking at `T + k*p`; the first tick
/// whose timestamp exceeds `⌊T/U⌋ + 2t` reports. That needs `k*p > 2t*U` at the luckiest phase
/// (so `k ≥ 6`, as `2t*U/p = 5U` is 5.37 periods) and `k*p ≥ (2t+1)*U` at the worst. So the
/// report comes after `6p - p = 2t` and at most `p*⌈(2t+1)*U/p⌉` after `s`: (4.0 s, 5.6 s] for
/// t = 2, (2.0 s, 3.6 s] for t = 1.
pub fn soft_lockup(watchdog_thresh: u32) -> Window {
    let p = sample_period(watchdog_thresh);
    let worst_ticks = ((2 * u128::from(watchdog_thresh) + 1) * TIMESTAMP_UNIT.as_nanos()).div_ceil(p.as_nanos());
    Window { earliest: p * NUM_SAMPLE_PERIODS, latest: p * worst_ticks as u32 }
}

/// The seconds a first soft-lockup report says the CPU was stuck (`now - touch_ts` in
/// timestamp units), as an inclusive range: more than `2t`, and at most one tick's worth of
/// units more.
pub fn soft_lockup_stuck_secs(watchdog_thresh: u32) -> (u64, u64) {
    let t = u64::from(watchdog_thresh);
    let units_per_tick = sample_period(watchdog_thresh).as_nanos().div_ceil(TIMESTAMP_UNIT.as_nanos()) as u64;
    (2 * t + 1, 2 * t + units_per_tick)
}

/// The hard-lockup detector on the host's NMI (every `t` s, one miss reports). The first NMI
/// after `s` may still see the timer count that moved before `s`; the second cannot.
pub fn hard_lockup_nmi(watchdog_thresh: u32) -> Window {
    Window { earliest: Duration::ZERO, latest: 2 * Duration::from_secs(watchdog_thresh.into()) }
}

/// The buddy detector: the next CPU checks the victim's timer count on each of its own ticks
/// and reports at the third check in a row that saw no progress. The victim's last tick `L` is
/// within one period before `s`; the checker's first tick after `L` sees progress, and the
/// third after that reports: `(3p, 4p]` after `L`, so `(2p, 4p]` after `s`.
pub fn hard_lockup_buddy(watchdog_thresh: u32) -> Window {
    let p = sample_period(watchdog_thresh);
    Window { earliest: p * (BUDDY_MISS_THRESH - 1), latest: p * (BUDDY_MISS_THRESH + 1) }
}

/// The hung-task detector with `hung_task_timeout_secs` = `timeout` and scans every `interval`
/// (`hung_task_check_interval_secs`, or the timeout when 0). The first scan after the task
/// blocks sees its switch count change and starts its clock; the first scan at least
/// `timeout` later reports: `(n*interval, (n+1)*interval]` after `s`, `n = ⌈timeout/interval⌉`,
/// so `(timeout, 2*timeout]` with the default interval.
pub fn hung_task(timeout: Duration, interval: Duration) -> Window {
    let scans = timeout.as_nanos().div_ceil(interval.as_nanos()) as u32;
    Window { earliest: interval * scans, latest: interval * (scans + 1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn soft_lockup_window_for_small_thresholds() {
        assert_eq!(sample_period(2), secs(0.8));
        assert_eq!(soft_lockup(2), Window { earliest: secs(4.0), latest: secs(5.6) });
        assert_eq!(soft_lockup(1), Window { earliest: secs(2.0), latest: secs(3.6) });
        // Linux's default: the report always comes 6 ticks (24 s) after the last touch.
        assert_eq!(soft_lockup(10), Window { earliest: secs(20.0), latest: secs(24.0) });
    }

    #[test]
    fn the_rough_soft_window_2t_plus_p_plus_1_holds_only_for_some_thresholds() {
        // `2t + 2t/5 + 1` s ignores that a timestamp unit is 1.074 s, not 1 s.
        let rough = |t: u32| Duration::from_secs(2 * u64::from(t) + 1) + sample_period(t);
        assert!(soft_lockup(2).latest <= rough(2));
        assert!(soft_lockup(1).latest > rough(1));
        assert!(soft_lockup(3).latest > rough(3));
    }

    #[test]
    fn stuck_for_is_one_more_than_the_threshold_while_ticks_are_shorter_than_a_unit() {
        assert_eq!(soft_lockup_stuck_secs(1), (3, 3));
        assert_eq!(soft_lockup_stuck_secs(2), (5, 5));
        assert_eq!(soft_lockup_stuck_secs(10), (21, 24));
    }

    #[test]
    fn hard_and_hung_windows() {
        assert_eq!(hard_lockup_nmi(2), Window { earliest: Duration::ZERO, latest: secs(4.0) });
        assert_eq!(hard_lockup_buddy(2), Window { earliest: secs(1.6), latest: secs(3.2) });
        let two = Duration::from_secs(2);
        assert_eq!(hung_task(two, two), Window { earliest: two, latest: 2 * two });
        assert_eq!(hung_task(Duration::from_secs(5), two), Window { earliest: secs(6.0), latest: secs(8.0) });
    }
}
