//! Wait queues: tasks sleep until a condition holds and someone wakes them.

use alloc::vec::Vec;

use super::task::{Task, TASK_INTERRUPTIBLE, TASK_RUNNING};
use super::{current, schedule, set_current_state, wake_up};
use crate::sync::SpinLock;

/// A queue of sleeping tasks.
pub struct WaitQueue {
    waiters: SpinLock<Vec<&'static Task>>,
}

impl WaitQueue {
    /// An empty queue.
    pub const fn new() -> Self {
        Self { waiters: SpinLock::new(Vec::new()) }
    }

    fn wait(&self, state: u8, mut condition: impl FnMut() -> bool) {
        let me = current();
        loop {
            {
                let mut waiters = self.waiters.lock_irqsave();
                if !waiters.iter().any(|t| core::ptr::eq(*t, me)) {
                    waiters.push(me);
                }
                set_current_state(state);
            }
            if condition() {
                break;
            }
            schedule();
            if condition() {
                break;
            }
        }
        set_current_state(TASK_RUNNING);
        self.waiters.lock_irqsave().retain(|t| !core::ptr::eq(*t, me));
    }

    /// Sleeps in `TASK_INTERRUPTIBLE` until `condition` holds (checked after each wake-up).
    pub fn wait_interruptible(&self, condition: impl FnMut() -> bool) {
        self.wait(TASK_INTERRUPTIBLE, condition)
    }

    /// Wakes every waiter.
    pub fn wake_all(&self) {
        let waiters: Vec<&'static Task> = core::mem::take(&mut *self.waiters.lock_irqsave());
        for task in waiters {
            wake_up(task);
        }
    }
}
