//! The soft-lockup detector's per-CPU state and report (Linux `watchdog_timer_fn`'s tail).

use core::sync::atomic::{AtomicBool, Ordering};

use crashvisor_abi::platform::{Detector, EventKind};
use crashvisor_klib::watchdog::{softlockup_should_panic, SoftCheck, SoftLockupState};

use super::{SOFTLOCKUP_ALL_CPU_BACKTRACE, SOFTLOCKUP_PANIC};
use crate::arch::percpu::MAX_CPUS;
use crate::arch::traps;
use crate::printk::KERN_EMERG;
use crate::sync::SpinLock;
use crate::{dumpstack, nmi, platform, sched, taint};

static STATE: [SpinLock<SoftLockupState>; MAX_CPUS] = [const { SpinLock::new(SoftLockupState::new(0)) }; MAX_CPUS];
/// One CPU at a time prints an all-CPU backtrace report (Linux's `soft_lockup_nmi_warn`).
static ALL_CPU_REPORT: AtomicBool = AtomicBool::new(false);

/// Starts `cpu`'s state afresh at `now` (`watchdog_enable`).
pub fn reset(cpu: usize, now: u64) {
    *STATE[cpu].lock_irqsave() = SoftLockupState::new(now);
}

/// The CPU's watchdog thread ran at `now`.
pub fn rescheduled(cpu: usize, now: u64) {
    STATE[cpu].lock_irqsave().reschedule(now);
}

/// `touch_softlockup_watchdog()` for `cpu`.
pub fn touch(cpu: usize) {
    STATE[cpu].lock_irqsave().touch();
}

/// One timer tick's check on `cpu` at `now` (timer interrupt context).
pub fn check(cpu: usize, now: u64) {
    let decision = STATE[cpu].lock_irqsave().tick(now, super::thresh());
    if let SoftCheck::Lockup { duration } = decision {
        report(cpu, duration);
    }
}

fn report(cpu: usize, duration: u64) {
    let all_cpus = SOFTLOCKUP_ALL_CPU_BACKTRACE.load(Ordering::Relaxed);
    if all_cpus && ALL_CPU_REPORT.swap(true, Ordering::AcqRel) {
        return; // another CPU is printing an all-CPU report
    }
    let task = sched::current();
    crate::pr_emerg!(
        "watchdog: BUG: soft lockup - CPU#{} stuck for {}s! [{}:{}]",
        cpu,
        duration,
        task.comm(),
        task.pid
    );
    crate::pr_emerg!("Modules linked in:");
    match traps::irq_regs() {
        Some(regs) => {
            crate::kexec::crash::set_regs(&regs);
            dumpstack::show_interrupted(KERN_EMERG, &regs);
        }
        None => dumpstack::dump_stack(KERN_EMERG),
    }
    if all_cpus {
        nmi::backtrace_all_but_self();
        ALL_CPU_REPORT.store(false, Ordering::Release);
    }
    taint::add(taint::TAINT_SOFTLOCKUP);
    platform::event(EventKind::SoftLockup, cpu, duration.min(u64::from(u16::MAX)) as u16);
    if softlockup_should_panic(duration, super::thresh(), SOFTLOCKUP_PANIC.load(Ordering::Relaxed)) {
        crate::panic::panic_with(Detector::SoftLockup, format_args!("softlockup: hung tasks"));
    }
}
