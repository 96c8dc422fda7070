//! Requests to vCPU threads from other host threads: inject an NMI, pause, resume.
//!
//! `KVM_NMI` and `KVM_KVMCLOCK_CTRL` are vCPU ioctls and each `VcpuFd` belongs to its thread,
//! so a requester only sets a flag and kicks the thread out of `KVM_RUN` (the kick signal);
//! the thread services its flags before it re-enters the guest (`vcpu::run`).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::snapshot::regs::VcpuState;

/// Request bit: inject an NMI.
const REQUEST_NMI: u32 = 1 << 0;

/// One vCPU's mailbox.
struct Slot {
    pending: AtomicU32,
    /// `NMI_REASON_*` bits for the guest's `PLATFORM_NMI_REASON` register.
    nmi_reason: AtomicU32,
    /// The vCPU's thread while it runs. Kicks happen under this lock, so a thread that has
    /// deregistered (and may have exited) is never signalled.
    thread: Mutex<Option<libc::pthread_t>>,
}

/// The request flags of every vCPU of one machine, and its pause state.
pub struct VcpuRequests {
    slots: Vec<Slot>,
    /// Each vCPU's registers as of its last park (what a host-side dump reads).
    states: Mutex<Vec<Option<VcpuState>>>,
    paused: AtomicBool,
    /// Number of vCPU threads parked by a pause.
    parked: Mutex<usize>,
    changed: Condvar,
}

impl VcpuRequests {
    /// Mailboxes for `count` vCPUs, not paused.
    pub fn new(count: usize) -> Self {
        Self {
            slots: (0..count)
                .map(|_| Slot { pending: AtomicU32::new(0), nmi_reason: AtomicU32::new(0), thread: Mutex::new(None) })
                .collect(),
            states: Mutex::new(vec![None; count]),
            paused: AtomicBool::new(false),
            parked: Mutex::new(0),
            changed: Condvar::new(),
        }
    }

    /// Number of vCPUs.
    pub fn count(&self) -> usize {
        self.slots.len()
    }

    fn thread(&self, id: usize) -> Option<MutexGuard<'_, Option<libc::pthread_t>>> {
        let slot = self.slots.get(id)?;
        Some(slot.thread.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Registers the calling thread as vCPU `id`'s (so it can be kicked).
    pub fn register_current_thread(&self, id: usize) {
        if let Some(mut thread) = self.thread(id) {
            // SAFETY: pthread_self has no preconditions.
            *thread = Some(unsafe { libc::pthread_self() });
        }
    }

    /// Deregisters vCPU `id`'s thread; it must call this before it exits.
    pub fn deregister_thread(&self, id: usize) {
        if let Some(mut thread) = self.thread(id) {
            *thread = None;
        }
    }

    /// Kicks vCPU `id` out of `KVM_RUN` (or makes its next entry return at once).
    fn kick(&self, id: usize) {
        let Some(thread) = self.thread(id) else {
            return;
        };
        if let Some(thread) = *thread {
            // SAFETY: the thread registered itself and has not deregistered (we hold the lock it
            // deregisters under), so the handle names a live thread; the kick signal's handler
            // is installed before any vCPU thread starts.
            unsafe { libc::pthread_kill(thread, super::kick_signal()) };
        }
    }

    /// Asks vCPU `id` to take an NMI, adding `reason` (`NMI_REASON_*`) to what the guest reads
    /// from `PLATFORM_NMI_REASON`. False if there is no such vCPU.
    pub fn inject_nmi(&self, id: usize, reason: u32) -> bool {
        let Some(slot) = self.slots.get(id) else {
            return false;
        };
        // The reason is visible before the NMI can be delivered: the vCPU thread injects only
        // after it saw the request bit, which is set after the reason.
        slot.nmi_reason.fetch_or(reason, Ordering::SeqCst);
        slot.pending.fetch_or(REQUEST_NMI, Ordering::SeqCst);
        self.kick(id);
        true
    }

    /// The guest's read of `PLATFORM_NMI_REASON` on vCPU `id`: the reasons so far, cleared.
    pub fn take_nmi_reason(&self, id: usize) -> u32 {
        self.slots.get(id).map_or(0, |s| s.nmi_reason.swap(0, Ordering::SeqCst))
    }

    /// vCPU side: whether an NMI was requested since the last call (clears the request).
    pub fn take_nmi_request(&self, id: usize) -> bool {
        self.slots.get(id).is_some_and(|s| {
            s.pending.load(Ordering::Relaxed) != 0
                && s.pending.fetch_and(!REQUEST_NMI, Ordering::SeqCst) & REQUEST_NMI != 0
        })
    }

    /// vCPU side: records the registers of vCPU `id` (while it is parked).
    pub fn record_state(&self, id: usize, state: VcpuState) {
        if let Some(slot) = self.states.lock().unwrap_or_else(|e| e.into_inner()).get_mut(id) {
            *slot = Some(state);
        }
    }

    /// Every vCPU's registers as of its last park, in vCPU order (`None` for a vCPU whose
    /// registers KVM would not give).
    pub fn states(&self) -> Vec<Option<VcpuState>> {
        self.states.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the machine is paused (or being paused).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    fn parked(&self) -> MutexGuard<'_, usize> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pauses every vCPU and waits up to `timeout` for all of them to park; returns whether
    /// they did. The vCPU threads park before they next enter the guest.
    pub fn pause(&self, timeout: Duration) -> bool {
        self.paused.store(true, Ordering::SeqCst);
        for id in 0..self.slots.len() {
            self.kick(id);
        }
        let deadline = Instant::now() + timeout;
        let mut parked = self.parked();
        while *parked < self.slots.len() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            parked = self.changed.wait_timeout(parked, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }

    /// Lets the parked vCPUs run again.
    pub fn resume(&self) {
        let _parked = self.parked();
        self.paused.store(false, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Wakes parked vCPUs so they notice `stopping` (called after the machine's stop flag is
    /// set).
    pub fn wake_all(&self) {
        let _parked = self.parked();
        self.changed.notify_all();
    }

    /// vCPU side: blocks while the machine is paused and `stopping` is false. `on_park` runs
    /// first (the vCPU thread tells KVM the guest is stopped there).
    pub fn park(&self, stopping: &dyn Fn() -> bool, on_park: impl FnOnce()) {
        if !self.is_paused() {
            return;
        }
        on_park();
        let mut parked = self.parked();
        *parked += 1;
        self.changed.notify_all();
        while self.is_paused() && !stopping() {
            parked = self.changed.wait(parked).unwrap_or_else(|e| e.into_inner());
        }
        *parked -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn nmi_requests_and_reasons_accumulate_until_taken() {
        let r = VcpuRequests::new(2);
        assert!(r.inject_nmi(1, 1));
        assert!(r.inject_nmi(1, 2));
        assert!(!r.inject_nmi(2, 1), "no vCPU 2");
        assert!(!r.take_nmi_request(0));
        assert!(r.take_nmi_request(1));
        assert!(!r.take_nmi_request(1));
        assert_eq!(r.take_nmi_reason(1), 3);
        assert_eq!(r.take_nmi_reason(1), 0, "read-to-clear");
        assert_eq!(r.take_nmi_reason(99), 0);
    }

    #[test]
    fn pause_waits_for_every_vcpu_to_park_and_resume_releases_them() {
        let r = Arc::new(VcpuRequests::new(2));
        let stopping = Arc::new(AtomicBool::new(false));
        assert!(!r.pause(Duration::from_millis(10)), "nobody parked yet");
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (r, stopping) = (r.clone(), stopping.clone());
                std::thread::spawn(move || {
                    let mut parked = false;
                    r.park(&|| stopping.load(Ordering::SeqCst), || parked = true);
                    parked
                })
            })
            .collect();
        assert!(r.pause(Duration::from_secs(5)));
        r.resume();
        for t in threads {
            assert!(t.join().unwrap());
        }
        let mut called = false;
        r.park(&|| false, || called = true);
        assert!(!called, "not paused: park returns at once");
    }

    #[test]
    fn a_stop_releases_parked_vcpus() {
        let r = Arc::new(VcpuRequests::new(1));
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let (r, stopping) = (r.clone(), stopping.clone());
            std::thread::spawn(move || {
                // Like a vCPU thread, it parks once it sees the pause.
                while !r.is_paused() {
                    std::thread::yield_now();
                }
                r.park(&|| stopping.load(Ordering::SeqCst), || {})
            })
        };
        assert!(r.pause(Duration::from_secs(5)));
        stopping.store(true, Ordering::SeqCst);
        r.wake_all();
        thread.join().unwrap();
        assert!(r.is_paused());
    }
}
