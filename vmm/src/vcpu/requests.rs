//! Requests to vCPU threads from other host threads: inject an NMI, pause, resume; and the
//! machine's pause state, kept here once.
//!
//! `KVM_NMI` and `KVM_KVMCLOCK_CTRL` are vCPU ioctls and each `VcpuFd` belongs to its thread,
//! so a requester only sets a flag and kicks the thread out of `KVM_RUN` (the kick signal);
//! the thread services its flags before it re-enters the guest (`vcpu::run`). A vCPU whose
//! command another thread finishes ([`HostCall`]) waits in the same place, so it can still be
//! paused and stopped meanwhile.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::VcpuState;

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
    /// A [`HostCall`] of this vCPU is in progress: it stays out of the guest.
    in_host_call: AtomicBool,
}

/// Who pauses the machine. Each holds its own pause: the vCPUs run only when nobody does, so
/// a host-side dump's brief pause neither ends nor shows as an operator's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pauser {
    /// An operator (`pause`) or the `--on-panic pause` policy.
    Operator = 1 << 0,
    /// A host-side dump taking its snapshot.
    Snapshot = 1 << 1,
}

/// The request flags of every vCPU of one machine, and its pause state.
pub struct VcpuRequests {
    slots: Vec<Slot>,
    /// Each vCPU's registers as of its last park (what a host-side dump reads).
    states: Mutex<Vec<Option<VcpuState>>>,
    /// The [`Pauser`]s holding the machine paused, as bits.
    paused: AtomicU8,
    /// Number of vCPU threads parked by a pause.
    parked: Mutex<usize>,
    changed: Condvar,
}

impl VcpuRequests {
    /// Mailboxes for `count` vCPUs, not paused.
    pub fn new(count: usize) -> Self {
        Self {
            slots: (0..count)
                .map(|_| Slot {
                    pending: AtomicU32::new(0),
                    nmi_reason: AtomicU32::new(0),
                    thread: Mutex::new(None),
                    in_host_call: AtomicBool::new(false),
                })
                .collect(),
            states: Mutex::new(vec![None; count]),
            paused: AtomicU8::new(0),
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

    /// Whether anybody holds the machine paused (or is pausing it).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst) != 0
    }

    /// Whether `by` holds the machine paused.
    pub fn is_paused_by(&self, by: Pauser) -> bool {
        self.paused.load(Ordering::SeqCst) & by as u8 != 0
    }

    fn parked(&self) -> MutexGuard<'_, usize> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pauses every vCPU for `by` and waits up to `timeout` for all of them to park; returns
    /// whether they did. The vCPU threads park before they next enter the guest. `stop_clocks`
    /// (the machine's clocks that must stand still while it is paused) runs first, under the
    /// same lock as the pause state, so a concurrent `resume` cannot start them again after it.
    pub fn pause(&self, by: Pauser, timeout: Duration, stop_clocks: impl FnOnce()) -> bool {
        let mut parked = self.parked();
        stop_clocks();
        self.paused.fetch_or(by as u8, Ordering::SeqCst);
        // vCPUs waiting for a host call wait on `changed`, not in `KVM_RUN`.
        self.changed.notify_all();
        for id in 0..self.slots.len() {
            self.kick(id);
        }
        let deadline = Instant::now() + timeout;
        while *parked < self.slots.len() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            parked = self.changed.wait_timeout(parked, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }

    /// Ends `by`'s pause; the parked vCPUs run again unless somebody else holds them, and then
    /// `start_clocks` runs (under the lock of the pause state). Returns whether the machine runs
    /// now.
    pub fn resume(&self, by: Pauser, start_clocks: impl FnOnce()) -> bool {
        let _parked = self.parked();
        let running = self.paused.fetch_and(!(by as u8), Ordering::SeqCst) & !(by as u8) == 0;
        if running {
            start_clocks();
        }
        self.changed.notify_all();
        running
    }

    /// Wakes parked vCPUs so they notice `stopping` (called after the machine's stop flag is
    /// set).
    pub fn wake_all(&self) {
        let _parked = self.parked();
        self.changed.notify_all();
    }

    /// vCPU side: keeps vCPU `id` out of the guest until the returned call is dropped (its
    /// command is finished on another thread).
    pub fn begin_host_call(self: &Arc<Self>, id: usize) -> HostCall {
        if let Some(slot) = self.slots.get(id) {
            slot.in_host_call.store(true, Ordering::SeqCst);
        }
        HostCall { vcpus: self.clone(), id }
    }

    fn in_host_call(&self, id: usize) -> bool {
        self.slots.get(id).is_some_and(|s| s.in_host_call.load(Ordering::SeqCst))
    }

    /// vCPU side: blocks vCPU `id` while the machine is paused or its host call is in progress,
    /// until `stopping`. `on_park` runs each time the vCPU parks for a pause (the vCPU thread
    /// tells KVM the guest is stopped there and records its registers).
    pub fn park(&self, id: usize, stopping: &dyn Fn() -> bool, mut on_park: impl FnMut()) {
        if !self.is_paused() && !self.in_host_call(id) {
            return;
        }
        let mut parked = self.parked();
        let mut counted = false;
        while !stopping() {
            let paused = self.is_paused();
            if paused != counted {
                if paused {
                    drop(parked);
                    on_park();
                    parked = self.parked();
                    *parked += 1;
                } else {
                    *parked -= 1;
                }
                counted = paused;
                self.changed.notify_all();
            } else if !paused && !self.in_host_call(id) {
                break;
            } else {
                parked = self.changed.wait(parked).unwrap_or_else(|e| e.into_inner());
            }
        }
        if counted {
            *parked -= 1;
        }
    }
}

/// A vCPU's command that another thread finishes (a capture kernel's hand-off written by the
/// crash sink): the vCPU stays out of the guest until this is dropped.
pub struct HostCall {
    vcpus: Arc<VcpuRequests>,
    id: usize,
}

impl Drop for HostCall {
    fn drop(&mut self) {
        let _parked = self.vcpus.parked();
        if let Some(slot) = self.vcpus.slots.get(self.id) {
            slot.in_host_call.store(false, Ordering::SeqCst);
        }
        self.vcpus.changed.notify_all();
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
        assert!(!r.pause(Pauser::Operator, Duration::from_millis(10), || {}), "nobody parked yet");
        let threads: Vec<_> = (0..2)
            .map(|id| {
                let (r, stopping) = (r.clone(), stopping.clone());
                std::thread::spawn(move || {
                    let mut parked = false;
                    r.park(id, &|| stopping.load(Ordering::SeqCst), || parked = true);
                    parked
                })
            })
            .collect();
        assert!(r.pause(Pauser::Operator, Duration::from_secs(5), || {}));
        assert!(r.resume(Pauser::Operator, || {}));
        for t in threads {
            assert!(t.join().unwrap());
        }
        let mut called = false;
        r.park(0, &|| false, || called = true);
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
                r.park(0, &|| stopping.load(Ordering::SeqCst), || {})
            })
        };
        assert!(r.pause(Pauser::Operator, Duration::from_secs(5), || {}));
        stopping.store(true, Ordering::SeqCst);
        r.wake_all();
        thread.join().unwrap();
        assert!(r.is_paused());
    }

    #[test]
    fn each_pauser_holds_its_own_pause() {
        let r = VcpuRequests::new(0);
        let clocks = std::cell::Cell::new(true);
        let (stop, start) = (|| clocks.set(false), || clocks.set(true));
        assert!(r.pause(Pauser::Operator, Duration::ZERO, stop));
        assert!(r.pause(Pauser::Snapshot, Duration::ZERO, stop));
        assert!(!r.resume(Pauser::Snapshot, start), "the operator's pause stays");
        assert!(r.is_paused() && r.is_paused_by(Pauser::Operator) && !r.is_paused_by(Pauser::Snapshot));
        assert!(!clocks.get(), "the clocks stand still while anybody holds the machine");
        assert!(r.resume(Pauser::Operator, start));
        assert!(!r.is_paused() && clocks.get());
    }

    #[test]
    fn a_vcpu_in_a_host_call_waits_for_it_and_can_be_paused_meanwhile() {
        let r = Arc::new(VcpuRequests::new(1));
        let call = r.begin_host_call(0);
        let parks = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let thread = {
            let (r, parks) = (r.clone(), parks.clone());
            std::thread::spawn(move || {
                r.park(0, &|| false, || {
                    parks.fetch_add(1, Ordering::SeqCst);
                })
            })
        };
        assert!(r.pause(Pauser::Operator, Duration::from_secs(5), || {}), "a vCPU in a host call parks for a pause");
        assert!(r.resume(Pauser::Operator, || {}));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!thread.is_finished(), "the host call is still in progress");
        drop(call);
        thread.join().unwrap();
        assert_eq!(parks.load(Ordering::SeqCst), 1);

        let _call = r.begin_host_call(0);
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let (r, stopping) = (r.clone(), stopping.clone());
            std::thread::spawn(move || r.park(0, &|| stopping.load(Ordering::SeqCst), || {}))
        };
        stopping.store(true, Ordering::SeqCst);
        r.wake_all();
        thread.join().unwrap();
    }
}
