//! The lockup detectors' decisions, as pure comparisons of timestamps and counters
//! (Linux `kernel/watchdog.c`, `kernel/watchdog_buddy.c`, `kernel/hung_task.c`).
//!
//! The kernel keeps the per-CPU and per-task state and calls these from its timer, NMI and
//! `khungtaskd` paths; everything here is deterministic and unit-tested on the host.

/// Linux's default `watchdog_thresh`, in seconds.
pub const DEFAULT_WATCHDOG_THRESH: u32 = 10;
/// Largest `watchdog_thresh` Linux accepts.
pub const MAX_WATCHDOG_THRESH: u32 = 60;
/// The soft-lockup timer fires this many times per soft-lockup threshold (`NUM_SAMPLE_PERIODS`).
pub const NUM_SAMPLE_PERIODS: u64 = 5;
/// `report_ts` value meaning "touched: restart the report period" (Linux's `ULONG_MAX`).
pub const TOUCHED: u64 = u64::MAX;
/// Consecutive missed checks before the host-NMI hard-lockup detector reports.
pub const NMI_MISS_THRESH: u32 = 1;
/// Consecutive missed checks before the buddy detector reports (newest mainline).
pub const BUDDY_MISS_THRESH: u32 = 3;

/// Linux's `get_timestamp()`: `running_clock() >> 30`, units of ~1.074 s. All soft-lockup
/// comparisons and the printed "stuck for %us" use these units, as in Linux.
pub const fn timestamp(ns: u64) -> u64 {
    ns >> 30
}

/// The soft-lockup threshold: twice `watchdog_thresh` (Linux's `get_softlockup_thresh()`).
pub const fn softlockup_thresh(watchdog_thresh: u32) -> u64 {
    2 * watchdog_thresh as u64
}

/// The soft-lockup timer period in ns: `2*thresh/5` seconds (`sample_period`).
pub const fn sample_period_ns(watchdog_thresh: u32) -> u64 {
    softlockup_thresh(watchdog_thresh) * (1_000_000_000 / NUM_SAMPLE_PERIODS)
}

/// A CPU's soft-lockup state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftLockupState {
    /// When the CPU last rescheduled (the watchdog thread ran), in `timestamp` units.
    pub touch_ts: u64,
    /// Start of the current report period, or `TOUCHED`.
    pub report_ts: u64,
}

/// What one soft-lockup timer tick decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftCheck {
    /// The CPU was touched: a new report period starts now.
    Touched,
    /// Nothing to report.
    Quiet,
    /// Stuck: report, with the time since the last real reschedule.
    Lockup {
        /// Seconds (timestamp units) since `touch_ts`.
        duration: u64,
    },
}

impl SoftLockupState {
    /// The state of a CPU whose detector starts at `now` (`watchdog_enable`).
    pub const fn new(now: u64) -> Self {
        Self { touch_ts: now, report_ts: now }
    }

    /// The watchdog thread ran at `now` (`softlockup_fn` → `update_touch_ts`).
    pub fn reschedule(&mut self, now: u64) {
        self.touch_ts = now;
        self.report_ts = now;
    }

    /// `touch_softlockup_watchdog()`: restart the report period without pretending the CPU
    /// rescheduled (a later report still counts from `touch_ts`).
    pub fn touch(&mut self) {
        self.report_ts = TOUCHED;
    }

    /// One timer tick at `now` (`watchdog_timer_fn` after the paused check). A lockup
    /// restarts the report period, so a CPU that stays stuck is reported again every
    /// threshold, with a growing duration (5.12+).
    pub fn tick(&mut self, now: u64, watchdog_thresh: u32) -> SoftCheck {
        if self.report_ts == TOUCHED {
            self.report_ts = now;
            return SoftCheck::Touched;
        }
        if watchdog_thresh != 0 && now > self.report_ts.saturating_add(softlockup_thresh(watchdog_thresh)) {
            self.report_ts = now;
            return SoftCheck::Lockup { duration: now.saturating_sub(self.touch_ts) };
        }
        SoftCheck::Quiet
    }
}

/// Whether a soft lockup of `duration` panics with `softlockup_panic` = `panic_after`
/// (newest Linux: an integer N, panic once `duration / watchdog_thresh >= N`; 0 never).
pub fn softlockup_should_panic(duration: u64, watchdog_thresh: u32, panic_after: u32) -> bool {
    panic_after != 0 && watchdog_thresh != 0 && duration / u64::from(watchdog_thresh) >= u64::from(panic_after)
}

/// Whether a host-NMI hard-lockup check may judge a CPU that has run `ran_ns` (steal time left
/// out) since its last judged check, with NMIs every `watchdog_thresh` seconds of wall time.
/// A CPU that ran less than half a period cannot be blamed for missing its timer ticks (the
/// host kept it off a physical CPU); its check waits, and its run time adds up, until it did run
/// that long. (Forgiving such checks instead would never judge a CPU on a host that steals half
/// of every period, and a real lockup there would go unreported.)
///
/// Why half a period is enough: the soft-lockup timer fires every `2 * thresh / 5` s of wall
/// time, so the first tick due after the last judged check is due at most `0.4 * thresh` s
/// after it, and run time never outpaces wall time. Of `0.5 * thresh` s of run time, at least
/// `0.1 * thresh` s therefore come after a tick fell due, and a healthy CPU takes a pending
/// timer interrupt as soon as it runs with interrupts on.
pub const fn nmi_check_judges(ran_ns: u64, watchdog_thresh: u32) -> bool {
    ran_ns >= watchdog_thresh as u64 * 500_000_000
}

/// A CPU's hard-lockup state, checked from NMI (own CPU) or by its buddy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardLockupState {
    /// `hrtimer_interrupts` at the last check.
    pub saved: u64,
    /// Consecutive checks that saw no progress.
    pub missed: u32,
    /// `touch_nmi_watchdog()` was called since the last check.
    pub touched: bool,
    /// This episode was reported already (Linux reports once per episode).
    pub warned: bool,
}

/// What one hard-lockup check decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HardCheck {
    /// The CPU was touched; its counter was re-saved.
    Touched,
    /// The counter moved (or not enough misses yet).
    Quiet,
    /// Locked up, first report of this episode.
    Lockup,
    /// Still locked up, already reported.
    StillLocked,
}

impl HardLockupState {
    /// Checks the CPU whose timer-tick counter is now `hrtimer_interrupts`
    /// (`watchdog_hardlockup_check`), needing `miss_thresh` consecutive misses.
    pub fn check(&mut self, hrtimer_interrupts: u64, miss_thresh: u32) -> HardCheck {
        if self.touched {
            self.touched = false;
            self.saved = hrtimer_interrupts;
            self.missed = 0;
            return HardCheck::Touched;
        }
        if self.saved != hrtimer_interrupts {
            self.saved = hrtimer_interrupts;
            self.missed = 0;
            self.warned = false;
            return HardCheck::Quiet;
        }
        self.missed = self.missed.saturating_add(1);
        if self.missed < miss_thresh.max(1) {
            return HardCheck::Quiet;
        }
        if self.warned {
            HardCheck::StillLocked
        } else {
            self.warned = true;
            HardCheck::Lockup
        }
    }
}

/// The CPU a buddy checks: the next CPU in `mask` after `cpu`, wrapping; `None` if `cpu` is
/// alone (Linux's `watchdog_next_cpu`).
pub fn buddy_of(cpu: usize, mask: u64, nr_cpus: usize) -> Option<usize> {
    let nr_cpus = nr_cpus.min(64);
    (1..nr_cpus).map(|step| (cpu + step) % nr_cpus).find(|&c| mask & (1 << c) != 0).filter(|&c| c != cpu)
}

/// What a hung-task scan decided for one task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HungCheck {
    /// Never switched out: a task that has not run yet cannot be hung.
    NeverRan,
    /// It switched since the last scan; its blocked time restarts now.
    Progressed,
    /// Blocked, but for less than the timeout.
    Waiting,
    /// Blocked for `blocked_secs` ≥ the timeout: report.
    Hung {
        /// Whole seconds since it last switched.
        blocked_secs: u64,
    },
}

/// A task's hung-task bookkeeping (`last_switch_count`, `last_switch_time`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HungTaskState {
    /// `nvcsw + nivcsw` at the last scan.
    pub last_switch_count: u64,
    /// When that count last changed, in ns.
    pub last_switch_time_ns: u64,
}

impl HungTaskState {
    /// Linux's `check_hung_task` for a task in `TASK_UNINTERRUPTIBLE` with `switch_count`
    /// switches, at `now_ns`, with `timeout_secs` (> 0).
    pub fn check(&mut self, switch_count: u64, now_ns: u64, timeout_secs: u64) -> HungCheck {
        if switch_count == 0 {
            return HungCheck::NeverRan;
        }
        if switch_count != self.last_switch_count {
            self.last_switch_count = switch_count;
            self.last_switch_time_ns = now_ns;
            return HungCheck::Progressed;
        }
        let blocked_ns = now_ns.saturating_sub(self.last_switch_time_ns);
        if blocked_ns < timeout_secs.saturating_mul(1_000_000_000) {
            return HungCheck::Waiting;
        }
        HungCheck::Hung { blocked_secs: blocked_ns / 1_000_000_000 }
    }
}

/// How long `khungtaskd` sleeps between scans: `hung_task_check_interval_secs` if set and
/// shorter than the timeout, else the timeout (Linux's `hung_timeout_jiffies`).
pub fn hung_task_interval_secs(timeout_secs: u64, check_interval_secs: u64) -> u64 {
    if check_interval_secs != 0 && check_interval_secs < timeout_secs {
        check_interval_secs
    } else {
        timeout_secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_thresholds_match_linux_defaults() {
        assert_eq!(softlockup_thresh(DEFAULT_WATCHDOG_THRESH), 20);
        assert_eq!(sample_period_ns(DEFAULT_WATCHDOG_THRESH), 4_000_000_000);
        assert_eq!(sample_period_ns(2), 800_000_000);
        assert_eq!(timestamp(1 << 30), 1);
        assert_eq!(timestamp((1 << 30) - 1), 0);
    }

    #[test]
    fn soft_lockup_reports_strictly_after_the_threshold_and_again_each_period() {
        let thresh = 10;
        let mut s = SoftLockupState::new(100);
        // Ticks every ~4 units while stuck: quiet through 120, report at the first tick > 120.
        for now in [104, 108, 112, 116, 120] {
            assert_eq!(s.tick(now, thresh), SoftCheck::Quiet, "at {now}");
        }
        assert_eq!(s.tick(124, thresh), SoftCheck::Lockup { duration: 24 });
        // Re-reported a threshold later, duration growing from the last real reschedule.
        for now in [128, 132, 136, 140, 144] {
            assert_eq!(s.tick(now, thresh), SoftCheck::Quiet, "at {now}");
        }
        assert_eq!(s.tick(148, thresh), SoftCheck::Lockup { duration: 48 });
    }

    #[test]
    fn rescheduling_keeps_the_cpu_quiet() {
        let mut s = SoftLockupState::new(0);
        for now in (4..200).step_by(4) {
            s.reschedule(now - 1);
            assert_eq!(s.tick(now, 10), SoftCheck::Quiet);
        }
    }

    #[test]
    fn touch_restarts_the_period_but_not_the_duration() {
        let mut s = SoftLockupState::new(0);
        s.touch();
        assert_eq!(s.tick(15, 10), SoftCheck::Touched);
        assert_eq!(s.tick(35, 10), SoftCheck::Quiet);
        // The duration still counts from the last reschedule at 0.
        assert_eq!(s.tick(36, 10), SoftCheck::Lockup { duration: 36 });
    }

    #[test]
    fn zero_thresh_disables_reports() {
        let mut s = SoftLockupState::new(0);
        assert_eq!(s.tick(1000, 0), SoftCheck::Quiet);
    }

    #[test]
    fn softlockup_panic_is_an_integer_threshold() {
        assert!(!softlockup_should_panic(24, 10, 0));
        assert!(softlockup_should_panic(21, 10, 1));
        assert!(!softlockup_should_panic(24, 10, 3));
        assert!(softlockup_should_panic(30, 10, 3));
    }

    #[test]
    fn hard_lockup_reports_once_per_episode() {
        let mut h = HardLockupState::default();
        assert_eq!(h.check(5, NMI_MISS_THRESH), HardCheck::Quiet);
        assert_eq!(h.check(9, NMI_MISS_THRESH), HardCheck::Quiet);
        assert_eq!(h.check(9, NMI_MISS_THRESH), HardCheck::Lockup);
        assert_eq!(h.check(9, NMI_MISS_THRESH), HardCheck::StillLocked);
        // Recovered: the counter moves, the next episode is reported again.
        assert_eq!(h.check(12, NMI_MISS_THRESH), HardCheck::Quiet);
        assert_eq!(h.check(12, NMI_MISS_THRESH), HardCheck::Lockup);
    }

    #[test]
    fn nmi_checks_judge_only_after_half_a_period_of_run_time() {
        assert!(!nmi_check_judges(0, 2));
        assert!(!nmi_check_judges(999_999_999, 2));
        assert!(nmi_check_judges(1_000_000_000, 2));
        assert!(nmi_check_judges(5_000_000_000, 10));
        assert!(!nmi_check_judges(4_999_999_999, 10));
    }

    #[test]
    fn buddy_needs_three_misses_and_touch_resets() {
        let mut h = HardLockupState::default();
        assert_eq!(h.check(1, BUDDY_MISS_THRESH), HardCheck::Quiet);
        assert_eq!(h.check(1, BUDDY_MISS_THRESH), HardCheck::Quiet);
        assert_eq!(h.check(1, BUDDY_MISS_THRESH), HardCheck::Quiet);
        h.touched = true;
        assert_eq!(h.check(1, BUDDY_MISS_THRESH), HardCheck::Touched);
        assert_eq!(h.check(1, BUDDY_MISS_THRESH), HardCheck::Quiet);
        assert_eq!(h.check(1, BUDDY_MISS_THRESH), HardCheck::Quiet);
        assert_eq!(h.check(1, BUDDY_MISS_THRESH), HardCheck::Lockup);
    }

    #[test]
    fn buddies_form_a_ring_over_the_mask() {
        assert_eq!(buddy_of(0, 0b11, 2), Some(1));
        assert_eq!(buddy_of(1, 0b11, 2), Some(0));
        assert_eq!(buddy_of(0, 0b1, 1), None);
        assert_eq!(buddy_of(1, 0b1011, 4), Some(3));
        assert_eq!(buddy_of(3, 0b1011, 4), Some(0));
        assert_eq!(buddy_of(0, 0b0001, 4), None);
    }

    #[test]
    fn hung_task_needs_a_first_switch_then_the_full_timeout() {
        let mut t = HungTaskState::default();
        let s = 1_000_000_000;
        assert_eq!(t.check(0, 0, 120), HungCheck::NeverRan);
        assert_eq!(t.check(3, 10 * s, 120), HungCheck::Progressed);
        assert_eq!(t.check(3, 129 * s, 120), HungCheck::Waiting);
        assert_eq!(t.check(3, 130 * s, 120), HungCheck::Hung { blocked_secs: 120 });
        assert_eq!(t.check(3, 251 * s, 120), HungCheck::Hung { blocked_secs: 241 });
        assert_eq!(t.check(4, 252 * s, 120), HungCheck::Progressed);
    }

    #[test]
    fn khungtaskd_interval() {
        assert_eq!(hung_task_interval_secs(120, 0), 120);
        assert_eq!(hung_task_interval_secs(120, 30), 30);
        assert_eq!(hung_task_interval_secs(120, 300), 120);
    }
}
