//! Spinlocks that disable preemption (`lock`) or interrupts too (`lock_irqsave`), as Linux's
//! `spin_lock` and `spin_lock_irqsave`. A CPU spinning here with interrupts or preemption off
//! is exactly the condition the lockup detectors look for.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

use super::{irq, preempt};

/// A spinlock protecting a `T`.
pub struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock serialises all access to `value`, so sharing the lock between CPUs is sound
// whenever the protected value may be sent between them.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: as above; moving the lock moves the value.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// A new, unlocked lock.
    pub const fn new(value: T) -> Self {
        Self { locked: AtomicBool::new(false), value: UnsafeCell::new(value) }
    }

    fn acquire(&self) {
        while self.locked.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            while self.locked.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
    }

    fn try_acquire(&self) -> bool {
        self.locked.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok()
    }

    /// Locks, with preemption disabled while held.
    pub fn lock(&self) -> SpinGuard<'_, T> {
        preempt::disable();
        self.acquire();
        SpinGuard { lock: self, irq_was_enabled: None }
    }

    /// Locks with interrupts and preemption disabled while held.
    pub fn lock_irqsave(&self) -> SpinGuard<'_, T> {
        let was = irq::save();
        preempt::disable();
        self.acquire();
        SpinGuard { lock: self, irq_was_enabled: Some(was) }
    }

    /// Tries once to lock (preemption disabled while held).
    pub fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        preempt::disable();
        if self.try_acquire() {
            Some(SpinGuard { lock: self, irq_was_enabled: None })
        } else {
            preempt::enable_no_resched();
            None
        }
    }

    /// Tries once to lock with interrupts disabled; for NMI and panic paths that must not spin.
    pub fn try_lock_irqsave(&self) -> Option<SpinGuard<'_, T>> {
        let was = irq::save();
        preempt::disable();
        if self.try_acquire() {
            Some(SpinGuard { lock: self, irq_was_enabled: Some(was) })
        } else {
            preempt::enable_no_resched();
            irq::restore(was);
            None
        }
    }
}

/// Holds a `SpinLock`; unlocks (and restores preemption and interrupts) on drop.
pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
    irq_was_enabled: Option<bool>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while the lock is held, so no other reference exists.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`, and `&mut self` makes this the only reference.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
        match self.irq_was_enabled {
            Some(was) => {
                preempt::enable_no_resched();
                irq::restore(was);
                if was && crate::arch::percpu::preempt_count() == 0 && crate::arch::percpu::need_resched() {
                    crate::sched::preempt_schedule();
                }
            }
            None => preempt::enable(),
        }
    }
}
