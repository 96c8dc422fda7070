//! The hard-lockup detector: checked on each CPU by the host's periodic NMI, or, when the host
//! offers no NMIs, by the next CPU from its watchdog timer (the buddy detector).

use core::sync::atomic::Ordering;

use crashvisor_abi::platform::{Detector, EventKind};
use crashvisor_klib::watchdog::{
    buddy_of, nmi_check_judges, HardCheck, HardLockupState, BUDDY_MISS_THRESH, NMI_MISS_THRESH,
};

use super::{BUDDY_MODE, HARDLOCKUP_ALL_CPU_BACKTRACE, HARDLOCKUP_PANIC, HRTIMER_INTERRUPTS, WATCHDOG_CPUMASK};
use crate::arch::idt::PtRegs;
use crate::arch::percpu::{self, MAX_CPUS};
use crate::printk::KERN_EMERG;
use crate::sync::SpinLock;
use crate::{dumpstack, kvmclock, nmi, platform, smp};

static STATE: [SpinLock<HardLockupState>; MAX_CPUS] =
    [const { SpinLock::new(HardLockupState { saved: 0, missed: 0, touched: false, warned: false }) }; MAX_CPUS];
/// Each CPU's run time (ns, steal left out) at its last judged NMI check.
static RUN_AT_CHECK: [core::sync::atomic::AtomicU64; MAX_CPUS] =
    [const { core::sync::atomic::AtomicU64::new(0) }; MAX_CPUS];

/// Whether the buddy detector is the hard-lockup detector now.
pub fn buddy_active() -> bool {
    BUDDY_MODE.load(Ordering::Relaxed)
}

/// Starts `cpu`'s state afresh with its counter at `hrtimer_interrupts`.
pub fn reset(cpu: usize, hrtimer_interrupts: u64) {
    *STATE[cpu].lock_irqsave() = HardLockupState { saved: hrtimer_interrupts, ..HardLockupState::default() };
    RUN_AT_CHECK[cpu].store(super::run_ns(cpu), Ordering::Relaxed);
}

/// The `touch_nmi_watchdog()` half for `cpu`.
pub fn touch(cpu: usize) {
    if let Some(mut state) = STATE[cpu].try_lock_irqsave() {
        state.touched = true;
    }
}

/// Touches the buddy of `cpu` (watchdog_buddy.c does this when a CPU joins).
pub fn touch_buddy_of(cpu: usize) {
    if let Some(next) = buddy_of(cpu, WATCHDOG_CPUMASK.load(Ordering::Relaxed), smp::possible_cpus()) {
        touch(next);
    }
}

/// The host's watchdog NMI on this CPU: check it, with the interrupted registers.
pub fn nmi_check(regs: &PtRegs) {
    let cpu = percpu::cpu_id();
    if !super::hard_enabled(cpu) || buddy_active() {
        return;
    }
    if kvmclock::check_and_clear_guest_paused() {
        touch(cpu);
    }
    // Time the host kept this vCPU off a physical CPU is not time it was locked up: judge the
    // CPU only once it has run long enough since its last judged check.
    let run = super::run_ns(cpu);
    if !nmi_check_judges(run.saturating_sub(RUN_AT_CHECK[cpu].load(Ordering::Relaxed)), super::thresh()) {
        return;
    }
    RUN_AT_CHECK[cpu].store(run, Ordering::Relaxed);
    let Some(mut state) = STATE[cpu].try_lock_irqsave() else { return };
    let decision = state.check(HRTIMER_INTERRUPTS[cpu].load(Ordering::Relaxed), NMI_MISS_THRESH);
    drop(state);
    if decision == HardCheck::Lockup {
        report(cpu, cpu, Some(regs));
    }
}

/// The buddy detector, from `cpu`'s watchdog timer: check the next CPU.
pub fn buddy_check(cpu: usize, _count: u64) {
    let Some(victim) = buddy_of(cpu, WATCHDOG_CPUMASK.load(Ordering::Relaxed), smp::possible_cpus()) else {
        return;
    };
    if !super::hard_enabled(victim) || !percpu::of(victim).online.load(Ordering::Relaxed) {
        return;
    }
    let Some(mut state) = STATE[victim].try_lock_irqsave() else { return };
    let decision = state.check(HRTIMER_INTERRUPTS[victim].load(Ordering::Relaxed), BUDDY_MISS_THRESH);
    drop(state);
    if decision == HardCheck::Lockup {
        report(cpu, victim, None);
    }
}

fn report(reporter: usize, victim: usize, regs: Option<&PtRegs>) {
    crate::pr_emerg!("watchdog: CPU{}: Watchdog detected hard LOCKUP on cpu {}", reporter, victim);
    crate::pr_emerg!("Modules linked in:");
    match regs {
        Some(regs) if reporter == victim => {
            crate::kexec::crash::set_regs(regs);
            dumpstack::show_interrupted(KERN_EMERG, regs);
        }
        _ => nmi::request_backtrace(victim),
    }
    if HARDLOCKUP_ALL_CPU_BACKTRACE.load(Ordering::Relaxed) {
        nmi::backtrace_all_but_self();
    }
    platform::event(EventKind::HardLockup, victim, reporter as u16);
    if HARDLOCKUP_PANIC.load(Ordering::Relaxed) {
        crate::panic::nmi_panic(Detector::HardLockup, format_args!("Hard LOCKUP"));
    }
}
