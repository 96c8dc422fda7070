//! Preemption control: a per-CPU count; the scheduler preempts only while it is zero.

use crate::arch::percpu;

/// Disables preemption on this CPU (nests).
#[inline(always)]
pub fn disable() {
    percpu::preempt_count_add(1);
}

/// Re-enables preemption; reschedules now if that was the last level and a reschedule is due.
#[inline(always)]
pub fn enable() {
    if percpu::preempt_count_add(-1) == 0 && percpu::need_resched() && crate::sync::irq::enabled() {
        crate::sched::preempt_schedule();
    }
}

/// Re-enables preemption without rescheduling (for paths that must not switch tasks).
#[inline(always)]
pub fn enable_no_resched() {
    percpu::preempt_count_add(-1);
}
