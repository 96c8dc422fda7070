//! The lockup detectors (Linux `kernel/watchdog.c`): per CPU, a timer every `2*thresh/5` s
//! that counts `hrtimer_interrupts`, kicks the CPU's top-priority `watchdog/N` thread and
//! checks for a soft lockup; the host's periodic NMI (or, when the host offers none, the next
//! CPU's timer) checks for a hard lockup. The decisions are `crashvisor_klib::watchdog`'s.

pub mod hardlockup;
pub mod softlockup;

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crashvisor_abi::platform::{Command, STATUS_OK};
use crashvisor_klib::watchdog::{sample_period_ns, timestamp, DEFAULT_WATCHDOG_THRESH, MAX_WATCHDOG_THRESH};

use crate::arch::percpu::{self, MAX_CPUS};
use crate::sched::task::{Policy, Task, TASK_INTERRUPTIBLE};
use crate::{kvmclock, platform, sched, smp, time};

/// `kernel.watchdog`: both detectors on.
pub static WATCHDOG_ENABLED: AtomicBool = AtomicBool::new(true);
/// `kernel.soft_watchdog`.
pub static SOFT_WATCHDOG_ENABLED: AtomicBool = AtomicBool::new(true);
/// `kernel.nmi_watchdog`: the hard-lockup detector. On by default here: the VMM provides the
/// NMI clock (Linux's KVM guests turn it off).
pub static NMI_WATCHDOG_ENABLED: AtomicBool = AtomicBool::new(true);
/// `kernel.watchdog_thresh`, seconds (0 disables both detectors).
pub static WATCHDOG_THRESH: AtomicU32 = AtomicU32::new(DEFAULT_WATCHDOG_THRESH);
/// `kernel.watchdog_cpumask`, one bit per CPU.
pub static WATCHDOG_CPUMASK: AtomicU64 = AtomicU64::new(u64::MAX);
/// `kernel.softlockup_panic` (panic once duration/thresh reaches it; 0 = never).
pub static SOFTLOCKUP_PANIC: AtomicU32 = AtomicU32::new(0);
/// `kernel.hardlockup_panic`.
pub static HARDLOCKUP_PANIC: AtomicBool = AtomicBool::new(false);
/// `kernel.softlockup_all_cpu_backtrace`.
pub static SOFTLOCKUP_ALL_CPU_BACKTRACE: AtomicBool = AtomicBool::new(false);
/// `kernel.hardlockup_all_cpu_backtrace`.
pub static HARDLOCKUP_ALL_CPU_BACKTRACE: AtomicBool = AtomicBool::new(false);

/// The hard-lockup detector runs on the CPUs' timers (buddy) because the host gives no NMIs.
pub static BUDDY_MODE: AtomicBool = AtomicBool::new(false);

/// Per CPU: watchdog timer ticks (Linux's `hrtimer_interrupts`, the hard detector's pulse).
pub static HRTIMER_INTERRUPTS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per CPU: the next timer deadline (TSC), 0 when the CPU's watchdog is stopped.
static NEXT_DEADLINE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per CPU: a generation number; a timer from an older configuration does not re-arm.
static GENERATION: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
/// Per CPU: the `watchdog/N` thread has been kicked and has not run yet.
static KICK_PENDING: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// Per CPU: the `watchdog/N` thread.
static THREADS: [core::sync::atomic::AtomicPtr<Task>; MAX_CPUS] =
    [const { core::sync::atomic::AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];

/// Whether the soft-lockup detector is on for `cpu`.
pub fn soft_enabled(cpu: usize) -> bool {
    WATCHDOG_ENABLED.load(Ordering::Relaxed)
        && SOFT_WATCHDOG_ENABLED.load(Ordering::Relaxed)
        && thresh() != 0
        && in_mask(cpu)
}

/// Whether the hard-lockup detector is on for `cpu`.
pub fn hard_enabled(cpu: usize) -> bool {
    WATCHDOG_ENABLED.load(Ordering::Relaxed)
        && NMI_WATCHDOG_ENABLED.load(Ordering::Relaxed)
        && thresh() != 0
        && in_mask(cpu)
}

fn in_mask(cpu: usize) -> bool {
    WATCHDOG_CPUMASK.load(Ordering::Relaxed) & (1 << cpu) != 0
}

/// `watchdog_thresh`.
pub fn thresh() -> u32 {
    WATCHDOG_THRESH.load(Ordering::Relaxed)
}

/// The detectors' clock for `cpu`, in Linux's `get_timestamp()` units (see [`run_ns`]).
pub fn clock_ts(cpu: usize) -> u64 {
    timestamp(run_ns(cpu))
}

/// Nanoseconds `cpu` has had since boot: time since boot minus the time the host kept it from
/// running (steal time is not lockup time).
pub fn run_ns(cpu: usize) -> u64 {
    time::now_ns().saturating_sub(kvmclock::steal_ns(cpu))
}

/// Parses the boot parameters of the detectors (`nowatchdog`, `nosoftlockup`,
/// `watchdog_thresh=`, `softlockup_panic=`, `nmi_watchdog=`, ...). Boot CPU, before `init`.
pub fn parse_boot_params(cmdline: &crashvisor_klib::cmdline::Cmdline<'_>) {
    use crashvisor_klib::cmdline::{parse_bool, parse_u64};
    if cmdline.has_flag("nowatchdog") {
        WATCHDOG_ENABLED.store(false, Ordering::Relaxed);
    }
    if cmdline.has_flag("nosoftlockup") {
        SOFT_WATCHDOG_ENABLED.store(false, Ordering::Relaxed);
    }
    if let Some(Some(v)) = cmdline.get("watchdog_thresh") {
        if let Some(v) = parse_u64(v).filter(|&v| v <= u64::from(MAX_WATCHDOG_THRESH)) {
            WATCHDOG_THRESH.store(v as u32, Ordering::Relaxed);
        }
    }
    if let Some(Some(v)) = cmdline.get("softlockup_panic") {
        if let Some(v) = parse_u64(v) {
            SOFTLOCKUP_PANIC.store(v.min(u64::from(u32::MAX)) as u32, Ordering::Relaxed);
        }
    }
    for (key, flag) in [
        ("softlockup_all_cpu_backtrace", &SOFTLOCKUP_ALL_CPU_BACKTRACE),
        ("hardlockup_all_cpu_backtrace", &HARDLOCKUP_ALL_CPU_BACKTRACE),
        ("hardlockup_panic", &HARDLOCKUP_PANIC),
    ] {
        if let Some(Some(v)) = cmdline.get(key) {
            if let Some(on) = parse_bool(v) {
                flag.store(on, Ordering::Relaxed);
            }
        }
    }
    // nmi_watchdog=0|1|panic|nopanic, comma separated (Linux's hardlockup_panic_setup).
    if let Some(Some(value)) = cmdline.get("nmi_watchdog") {
        for word in value.split(',') {
            match word {
                "0" => NMI_WATCHDOG_ENABLED.store(false, Ordering::Relaxed),
                "1" => NMI_WATCHDOG_ENABLED.store(true, Ordering::Relaxed),
                "panic" => HARDLOCKUP_PANIC.store(true, Ordering::Relaxed),
                "nopanic" => HARDLOCKUP_PANIC.store(false, Ordering::Relaxed),
                _ => {}
            }
        }
    }
}

/// Starts the detectors on every online CPU: the `watchdog/N` threads, the timers, and the
/// host's NMI clock. Boot CPU, after SMP bring-up.
pub fn init() {
    for (cpu, slot) in THREADS.iter().enumerate().take(smp::possible_cpus()) {
        if !percpu::of(cpu).online.load(Ordering::Relaxed) {
            continue;
        }
        let name = alloc::format!("watchdog/{cpu}");
        if let Some(task) = sched::spawn(&name, Policy::Fifo(99), Some(cpu), watchdog_thread, cpu) {
            slot.store(task as *const Task as *mut Task, Ordering::Release);
        }
    }
    reconfigure();
}

/// Restarts the detectors with the current knobs on every online CPU (Linux's
/// `lockup_detector_reconfigure`, run when a watchdog sysctl is written).
pub fn reconfigure() {
    let hard_anywhere = (0..smp::possible_cpus()).any(hard_enabled);
    let period_ms = if hard_anywhere { u64::from(thresh()) * 1000 } else { 0 };
    let status = platform::command(Command::SetNmiWatchdog, period_ms);
    BUDDY_MODE.store(hard_anywhere && status != STATUS_OK, Ordering::Relaxed);
    for cpu in 0..smp::possible_cpus() {
        if percpu::of(cpu).online.load(Ordering::Relaxed) {
            smp::call_on_cpu(cpu, restart_on_this_cpu, 0);
        }
    }
}

/// Stops and restarts this CPU's timer and state (call-function IPI context).
fn restart_on_this_cpu(_: usize) {
    let cpu = percpu::cpu_id();
    let generation = GENERATION[cpu].fetch_add(1, Ordering::AcqRel) + 1;
    let now = clock_ts(cpu);
    softlockup::reset(cpu, now);
    hardlockup::reset(cpu, HRTIMER_INTERRUPTS[cpu].load(Ordering::Relaxed));
    if hardlockup::buddy_active() {
        // Enabling touches this CPU and its buddy (watchdog_buddy.c).
        hardlockup::touch_buddy_of(cpu);
    }
    if !(soft_enabled(cpu) || hard_enabled(cpu)) {
        NEXT_DEADLINE[cpu].store(0, Ordering::Relaxed);
        return;
    }
    let deadline = crate::arch::cpu::rdtsc() + time::ns_to_tsc(sample_period_ns(thresh()));
    NEXT_DEADLINE[cpu].store(deadline, Ordering::Relaxed);
    time::add_timer(deadline, watchdog_timer_fn, generation as usize);
}

/// The per-CPU watchdog timer (Linux's `watchdog_timer_fn`), in interrupt context.
fn watchdog_timer_fn(generation: usize) {
    let cpu = percpu::cpu_id();
    if generation as u32 != GENERATION[cpu].load(Ordering::Acquire) || crate::panic::in_progress() {
        return;
    }
    if !(soft_enabled(cpu) || hard_enabled(cpu)) {
        return;
    }
    let count = HRTIMER_INTERRUPTS[cpu].fetch_add(1, Ordering::Relaxed) + 1;
    if hardlockup::buddy_active() {
        hardlockup::buddy_check(cpu, count);
    }
    // Kick the watchdog thread unless its last kick is still pending (Linux queues the
    // stopper work only once the previous one completed).
    if !KICK_PENDING[cpu].swap(true, Ordering::AcqRel) {
        let task = THREADS[cpu].load(Ordering::Acquire);
        if !task.is_null() {
            // SAFETY: tasks are never freed; the pointer was stored from a `&'static Task`.
            sched::wake_up(unsafe { &*task });
        }
    }
    // Re-arm one period after the previous deadline, so the period does not drift.
    let period = time::ns_to_tsc(sample_period_ns(thresh()));
    let mut deadline = NEXT_DEADLINE[cpu].load(Ordering::Relaxed) + period;
    let now_tsc = crate::arch::cpu::rdtsc();
    if deadline <= now_tsc {
        deadline = now_tsc + period; // the CPU was held up: do not fire a burst of catch-ups
    }
    NEXT_DEADLINE[cpu].store(deadline, Ordering::Relaxed);
    time::add_timer(deadline, watchdog_timer_fn, generation);

    if kvmclock::check_and_clear_guest_paused() {
        softlockup::touch(cpu);
        return;
    }
    if soft_enabled(cpu) {
        softlockup::check(cpu, clock_ts(cpu));
    }
}

/// `watchdog/N`: woken by the timer, it marks its CPU as having rescheduled (Linux's
/// `softlockup_fn`, run in the top-priority stopper thread).
fn watchdog_thread(cpu: usize) {
    loop {
        sched::set_current_state(TASK_INTERRUPTIBLE);
        if KICK_PENDING[cpu].load(Ordering::Acquire) {
            sched::set_current_state(crate::sched::task::TASK_RUNNING);
            softlockup::rescheduled(cpu, clock_ts(cpu));
            KICK_PENDING[cpu].store(false, Ordering::Release);
        } else {
            sched::schedule();
        }
    }
}

/// `touch_nmi_watchdog()`: this CPU is making progress in a long non-preemptible path.
pub fn touch_nmi_watchdog() {
    let cpu = percpu::cpu_id();
    hardlockup::touch(cpu);
    softlockup::touch(cpu);
}
