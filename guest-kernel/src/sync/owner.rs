//! A lock for the print paths (the log and the console): it remembers the CPU holding it, so a
//! print from an NMI that interrupted a print on the same CPU is skipped instead of
//! deadlocking, and a panicking CPU can break it (Linux's `bust_spinlocks`).

use core::sync::atomic::{AtomicU32, Ordering};

use crate::arch::percpu;
use crate::sync::irq;

const NO_OWNER: u32 = u32::MAX;

/// The lock; it guards whatever its user accesses inside `with`.
pub struct OwnerLock {
    owner: AtomicU32,
}

impl OwnerLock {
    /// A free lock.
    pub const fn new() -> Self {
        Self { owner: AtomicU32::new(NO_OWNER) }
    }

    /// Runs `f` holding the lock with interrupts off; `None` if this CPU already holds it.
    pub fn with<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        let me = percpu::cpu_id() as u32;
        let was = irq::save();
        loop {
            match self.owner.compare_exchange_weak(NO_OWNER, me, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => break,
                Err(owner) if owner == me => {
                    irq::restore(was);
                    return None;
                }
                Err(_) => core::hint::spin_loop(),
            }
        }
        let r = f();
        self.owner.store(NO_OWNER, Ordering::Release);
        irq::restore(was);
        Some(r)
    }

    /// Frees the lock whoever holds it (a panicking CPU, the others stopped or dead).
    pub fn bust(&self) {
        self.owner.store(NO_OWNER, Ordering::Release);
    }
}
