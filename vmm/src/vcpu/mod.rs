//! vCPU threads: each runs `KVM_RUN` in a loop and hands exits to `exit::handle`.
//!
//! Stopping a vCPU that sits inside `KVM_RUN` (for instance halted, waiting for an interrupt)
//! uses the usual kick: the stopper sets a flag and sends `KICK_SIGNAL` to the thread; the
//! handler sets `kvm_run.immediate_exit`, so `KVM_RUN` returns `EINTR` now or on its next entry.
//! Other requests (NMI, pause) use the same kick; see `requests`. This module also owns what the
//! machine's lifecycle needs of its vCPUs: pausing, stopping, their recorded [`VcpuState`].

pub mod exit;
pub mod requests;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use self::requests::{Pauser, VcpuRequests};
use crate::devices::Devices;
use crate::error::VmmError;
use crate::vm::StopReason;

thread_local! {
    /// This thread's `kvm_run.immediate_exit`, for the kick signal handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// The real-time signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    IMMEDIATE_EXIT.with(|p| {
        let p = p.get();
        if !p.is_null() {
            // SAFETY: the pointer is set by `run` on this same thread to its vCPU's mapped
            // `kvm_run.immediate_exit` and cleared before the mapping goes away; a volatile byte
            // store is async-signal-safe.
            unsafe { p.write_volatile(1) };
        }
    });
}

/// Installs the kick handler once per process.
pub fn install_kick_handler() -> Result<(), VmmError> {
    static INSTALLED: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick).map_err(|e| e.errno()))
        .map_err(|errno| VmmError::Signal(vmm_sys_util::errno::Error::new(errno)))
}

/// A vCPU's state as KVM reports it while the vCPU is parked.
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuState {
    /// General-purpose registers, RIP, RFLAGS.
    pub regs: kvm_regs,
    /// Segment and control registers (CR3 for the page walk, FS/GS bases).
    pub sregs: kvm_sregs,
}

/// What the vCPU threads of one machine share.
pub struct RunContext {
    /// The machine's devices.
    pub devices: Devices,
    /// Guest RAM (for describing emulation failures).
    pub memory: GuestMemoryMmap,
    /// Requests to the vCPU threads (NMI, pause).
    pub vcpus: Arc<VcpuRequests>,
    stopping: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    stopped: Condvar,
}

impl RunContext {
    /// Shared state for a machine with these devices, memory and vCPU mailboxes.
    pub fn new(devices: Devices, memory: GuestMemoryMmap, vcpus: Arc<VcpuRequests>) -> Self {
        Self {
            devices,
            memory,
            vcpus,
            stopping: AtomicBool::new(false),
            reason: Mutex::new(None),
            stopped: Condvar::new(),
        }
    }

    /// Asks the machine to stop; the first reason given wins.
    pub fn request_stop(&self, reason: StopReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
        self.stopping.store(true, Ordering::SeqCst);
        self.stopped.notify_all();
        drop(slot);
        // Paused vCPUs wake up, see the stop flag and end.
        self.vcpus.wake_all();
    }

    /// Pauses the machine for `by`: the NMI watchdog stops ticking and every vCPU parks (after
    /// telling KVM the guest is stopped, so its kvmclock page shows `PVCLOCK_GUEST_STOPPED`).
    /// Returns whether all vCPUs parked within `timeout`.
    pub fn pause(&self, by: Pauser, timeout: std::time::Duration) -> bool {
        self.vcpus.pause(by, timeout, || self.devices.platform.nmi_watchdog().pause())
    }

    /// Ends `by`'s pause; once nobody holds the machine paused it runs, and the next
    /// NMI-watchdog tick comes a full period from now.
    pub fn resume(&self, by: Pauser) {
        self.vcpus.resume(by, || self.devices.platform.nmi_watchdog().resume());
    }

    /// Whether an operator (or the panic policy) paused the machine.
    pub fn is_paused(&self) -> bool {
        self.vcpus.is_paused_by(Pauser::Operator)
    }

    /// Whether a stop has been requested.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Blocks until a stop is requested and returns its reason.
    pub fn wait_for_stop(&self) -> StopReason {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(reason) = slot.clone() {
                return reason;
            }
            slot = self.stopped.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Runs vCPU `id` until the machine stops.
pub fn run(mut vcpu: VcpuFd, id: usize, ctx: Arc<RunContext>) {
    let _span = tracing::debug_span!("vcpu", id).entered();
    let immediate_exit: *mut u8 = &mut vcpu.get_kvm_run().immediate_exit;
    IMMEDIATE_EXIT.with(|p| p.set(immediate_exit));
    ctx.vcpus.register_current_thread(id);
    while !ctx.is_stopping() {
        service_requests(&vcpu, id, &ctx);
        if ctx.is_stopping() {
            break;
        }
        let outcome = match vcpu.run() {
            Ok(kvm_exit) => exit::handle(kvm_exit, id, &ctx.devices),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                exit::Outcome::Continue
            }
            Err(e) => exit::Outcome::Stop(StopReason::Fatal(format!("KVM_RUN failed on vCPU {id}: {e}"))),
        };
        match outcome {
            exit::Outcome::Continue => {}
            exit::Outcome::Stop(reason) => ctx.request_stop(reason),
            exit::Outcome::EmulationFailure => {
                ctx.request_stop(StopReason::EmulationFailure(describe_emulation_failure(&mut vcpu, id, &ctx.memory)))
            }
        }
    }
    ctx.vcpus.deregister_thread(id);
    IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
}

/// Carries out what other threads asked of this vCPU before it re-enters the guest.
fn service_requests(vcpu: &VcpuFd, id: usize, ctx: &RunContext) {
    ctx.vcpus.park(id, &|| ctx.is_stopping(), || {
        // Sets PVCLOCK_GUEST_STOPPED in the guest's kvmclock page at the next entry, so the
        // guest's watchdogs forgive the pause. EINVAL: the guest has not enabled kvmclock.
        if let Err(e) = vcpu.kvmclock_ctrl() {
            tracing::debug!("KVM_KVMCLOCK_CTRL failed: {e}");
        }
        // The registers, for a host-side dump taken while the machine is paused.
        match (vcpu.get_regs(), vcpu.get_sregs()) {
            (Ok(regs), Ok(sregs)) => ctx.vcpus.record_state(id, VcpuState { regs, sregs }),
            (Err(e), _) | (_, Err(e)) => tracing::warn!("vCPU {id}: KVM cannot give its registers: {e}"),
        }
    });
    if ctx.vcpus.take_nmi_request(id) {
        if let Err(e) = vcpu.nmi() {
            tracing::warn!("vCPU {id}: KVM cannot inject an NMI: {e}");
        }
    }
}

/// Names the guest RIP and the instruction bytes there, for a `KVM_EXIT_INTERNAL_ERROR`.
fn describe_emulation_failure(vcpu: &mut VcpuFd, id: usize, memory: &GuestMemoryMmap) -> String {
    // SAFETY: reading the `internal` member of the exit union is valid: this is called only
    // right after KVM_RUN returned KVM_EXIT_INTERNAL_ERROR, which fills that member.
    let suberror = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
    let Ok(regs) = vcpu.get_regs() else {
        return format!(
            "vCPU {id}: KVM cannot emulate a guest instruction (suberror {suberror}); registers unreadable"
        );
    };
    let bytes = vcpu.translate_gva(regs.rip).ok().filter(|t| t.valid != 0).and_then(|t| {
        let mut buf = [0u8; 15];
        memory.read_slice(&mut buf, GuestAddress(t.physical_address)).ok().map(|()| buf)
    });
    let bytes = match bytes {
        Some(b) => b.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "),
        None => "unreadable".to_string(),
    };
    format!(
        "vCPU {id}: KVM cannot emulate the guest instruction at RIP {:#018x} (suberror {suberror}); bytes there: {bytes}",
        regs.rip
    )
}
