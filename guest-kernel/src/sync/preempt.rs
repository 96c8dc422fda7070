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
        crate::sched::schedule();
    }
}

/// Re-enables preemption without rescheduling (for paths that must not switch tasks).
#[inline(always)]
pub fn enable_no_resched() {
    percpu::preempt_count_add(-1);
}

/// Whether the scheduler may preempt the current task now.
#[inline(always)]
pub fn preemptible() -> bool {
    percpu::preempt_count() == 0 && crate::sync::irq::enabled()
}

/// A guard that keeps preemption disabled while it lives. `!Send`: it belongs to this CPU.
pub struct PreemptGuard(core::marker::PhantomData<*const ()>);

impl PreemptGuard {
    /// Disables preemption until the guard is dropped.
    pub fn new() -> Self {
        disable();
        Self(core::marker::PhantomData)
    }
}

impl Drop for PreemptGuard {
    fn drop(&mut self) {
        enable();
    }
}
