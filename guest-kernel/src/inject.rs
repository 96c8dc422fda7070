//! Fault injection for test harnesses: each fault runs on a target CPU, in a kernel thread
//! that reproduces the real condition (a spin with preemption or interrupts off, an ABBA
//! deadlock, an uninterruptible sleep, a NULL dereference, `BUG()`, a stack overflow, ...),
//! optionally for a bounded time so a lockup also ends by itself; or an LKDTM crash type run
//! as a write to `DIRECT` would run it.

use alloc::boxed::Box;
use alloc::string::String;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crashvisor_abi::control::FaultKind;
use crashvisor_abi::lkdtm::CrashType;

use crate::arch::{cpu, percpu};
use crate::sched::task::{Policy, TASK_UNINTERRUPTIBLE};
use crate::sched::wait::WaitQueue;
use crate::sync::{irq, preempt, SpinLock};
use crate::{sched, smp};

/// Why a fault could not be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectError {
    /// The target CPU is not online.
    NoSuchCpu,
    /// The fault needs a second CPU (a deadlock) and there is none.
    NeedsTwoCpus,
    /// No memory for the fault's thread.
    NoMemory,
}

/// What to inject.
pub struct Fault {
    /// Which fault.
    pub kind: FaultKind,
    /// Target CPU.
    pub cpu: usize,
    /// End the condition after this long (lockups, hung task); `None` = forever.
    pub duration_ms: Option<u64>,
    /// Panic message (`panic`).
    pub message: String,
}

/// What a job's thread runs.
#[derive(Clone, Copy)]
enum Action {
    Fault(FaultKind),
    Lkdtm(CrashType),
}

struct Job {
    action: Action,
    duration_ms: Option<u64>,
    message: String,
    /// For a deadlock: which lock this side takes first.
    first_lock_a: bool,
    /// Runs once `RELEASED` reaches this.
    ticket: u64,
}

/// Jobs released so far; a job starts once `RELEASED` reaches its ticket.
static RELEASED: AtomicU64 = AtomicU64::new(0);
/// Tickets handed to prepared jobs.
static PREPARED: AtomicU64 = AtomicU64::new(0);
static RELEASE_WAITERS: WaitQueue = WaitQueue::new();

/// Starts every prepared fault (after the requester has been answered).
pub fn release() {
    RELEASED.store(PREPARED.load(Ordering::SeqCst), Ordering::SeqCst);
    RELEASE_WAITERS.wake_all();
}

/// Injects `fault` now.
pub fn inject(fault: Fault) -> Result<u32, InjectError> {
    let pid = prepare(fault)?;
    release();
    Ok(pid)
}

/// Creates the thread that carries `fault`, held until `release`; returns its pid.
pub fn prepare(fault: Fault) -> Result<u32, InjectError> {
    let online = |c: usize| c < smp::possible_cpus() && percpu::of(c).online.load(Ordering::Relaxed);
    if !online(fault.cpu) {
        return Err(InjectError::NoSuchCpu);
    }
    let ticket = PREPARED.fetch_add(1, Ordering::SeqCst) + 1;
    let job = |first_lock_a| Job {
        action: Action::Fault(fault.kind),
        duration_ms: fault.duration_ms,
        message: fault.message.clone(),
        first_lock_a,
        ticket,
    };
    if fault.kind == FaultKind::Deadlock {
        let other = (1..smp::possible_cpus()).map(|d| (fault.cpu + d) % smp::possible_cpus()).find(|&c| online(c));
        let other = other.ok_or(InjectError::NeedsTwoCpus)?;
        DEADLOCK_GATE.store(false, Ordering::SeqCst);
        spawn_job(other, job(false))?;
        return spawn_job(fault.cpu, job(true));
    }
    spawn_job(fault.cpu, job(true))
}

/// Creates the thread that runs LKDTM crash type `kind` on `cpu` (in `lkdtm/<cpu>`, as a write
/// to `DIRECT`), held until `release`; returns its pid.
pub fn prepare_lkdtm(kind: CrashType, cpu: usize) -> Result<u32, InjectError> {
    if !(cpu < smp::possible_cpus() && percpu::of(cpu).online.load(Ordering::Relaxed)) {
        return Err(InjectError::NoSuchCpu);
    }
    let ticket = PREPARED.fetch_add(1, Ordering::SeqCst) + 1;
    let job =
        Job { action: Action::Lkdtm(kind), duration_ms: None, message: String::new(), first_lock_a: true, ticket };
    spawn_job(cpu, job)
}

fn spawn_job(cpu: usize, job: Job) -> Result<u32, InjectError> {
    let name = match job.action {
        Action::Fault(kind) => alloc::format!("{}/{}", kind.as_str(), cpu),
        Action::Lkdtm(_) => alloc::format!("lkdtm/{cpu}"),
    };
    let arg = Box::into_raw(Box::new(job)) as usize;
    match sched::spawn(&name, Policy::Normal, Some(cpu), run_job, arg) {
        Some(task) => Ok(task.pid),
        None => {
            // SAFETY: the thread was not created, so this is the only owner of the job.
            drop(unsafe { Box::from_raw(arg as *mut Job) });
            Err(InjectError::NoMemory)
        }
    }
}

/// When a spinning fault ends: `ms` of this CPU's run time from now, on the lockup detectors'
/// own clock (steal time left out), so a lockup lasts as long as the detectors see it last
/// however busy the host is. A wall-clock end would let a loaded host swallow a lockup whole.
fn spin_deadline(duration_ms: Option<u64>) -> Option<u64> {
    duration_ms.map(|ms| run_ns().saturating_add(ms.saturating_mul(1_000_000)))
}

fn run_ns() -> u64 {
    crate::watchdog::run_ns(percpu::cpu_id())
}

fn expired(deadline: Option<u64>) -> bool {
    deadline.is_some_and(|d| run_ns() >= d)
}

fn run_job(arg: usize) {
    // SAFETY: `arg` is the `Box<Job>` leaked by `spawn_job` for this thread alone.
    let job = unsafe { Box::from_raw(arg as *mut Job) };
    RELEASE_WAITERS.wait_interruptible(|| RELEASED.load(Ordering::SeqCst) >= job.ticket);
    let deadline = spin_deadline(job.duration_ms);
    let kind = match job.action {
        Action::Fault(kind) => kind,
        Action::Lkdtm(kind) => {
            crate::lkdtm::direct_entry(kind);
            return;
        }
    };
    match kind {
        FaultKind::SoftLockup => softlockup(deadline),
        FaultKind::HardLockup => hardlockup(deadline),
        FaultKind::HungTask => hung_task(deadline),
        FaultKind::Deadlock => deadlock(job.first_lock_a, deadline),
        FaultKind::Panic => crate::panic::panic(format_args!("{}", job.message)),
        FaultKind::Oops => null_dereference(),
        FaultKind::Bug => crate::bug!(),
        FaultKind::SysrqCrash => crate::sysrq::handle(b'c'),
        FaultKind::StackOverflow => {
            let _ = recurse(0);
        }
    }
}

/// A busy loop with preemption off: the CPU takes interrupts but never reschedules.
#[inline(never)]
fn softlockup(deadline: Option<u64>) {
    preempt::disable();
    while !expired(deadline) {
        cpu::pause();
    }
    preempt::enable();
}

/// A busy loop with interrupts off: not even the timer runs.
#[inline(never)]
fn hardlockup(deadline: Option<u64>) {
    irq::disable();
    while !expired(deadline) {
        cpu::pause();
    }
    irq::enable();
}

/// An uninterruptible sleep that nothing wakes (or that ends at the deadline).
#[inline(never)]
fn hung_task(deadline: Option<u64>) {
    match deadline {
        Some(d) => sched::sleep_ns_state(d.saturating_sub(run_ns()), TASK_UNINTERRUPTIBLE),
        None => loop {
            sched::set_current_state(TASK_UNINTERRUPTIBLE);
            sched::schedule();
        },
    }
}

static LOCK_A: SpinLock<()> = SpinLock::new(());
static LOCK_B: SpinLock<()> = SpinLock::new(());
/// Both sides hold their first lock: now each goes for the other's.
static DEADLOCK_GATE: AtomicBool = AtomicBool::new(false);
static DEADLOCK_HOLDERS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// ABBA: one side takes A then B, the other B then A; both spin with preemption off. With a
/// deadline, each gives up its second lock attempt then and releases.
#[inline(never)]
fn deadlock(first_lock_a: bool, deadline: Option<u64>) {
    let (first, second) = if first_lock_a { (&LOCK_A, &LOCK_B) } else { (&LOCK_B, &LOCK_A) };
    let held = first.lock();
    if DEADLOCK_HOLDERS.fetch_add(1, Ordering::SeqCst) + 1 == 2 {
        DEADLOCK_GATE.store(true, Ordering::SeqCst);
    }
    while !DEADLOCK_GATE.load(Ordering::SeqCst) && !expired(deadline) {
        cpu::pause();
    }
    loop {
        if let Some(both) = second.try_lock() {
            drop(both);
            break;
        }
        if expired(deadline) {
            break;
        }
        cpu::pause();
    }
    drop(held);
    DEADLOCK_HOLDERS.fetch_sub(1, Ordering::SeqCst);
}

/// Reads address 0, as Linux's `lkdtm` NULL dereference does.
#[inline(never)]
fn null_dereference() {
    // SAFETY: deliberately faults; the page-fault handler reports the oops and ends this task,
    // so the load never completes and no value is produced.
    unsafe { core::arch::asm!("mov rax, qword ptr [0]", out("rax") _, options(nostack, readonly)) };
}

/// Recurses until the stack's guard page stops it (a double fault on its own stack).
#[inline(never)]
#[allow(unconditional_recursion)] // the point: only the guard page ends it
fn recurse(depth: u64) -> u64 {
    let frame = [depth; 32];
    let frame = core::hint::black_box(frame);
    recurse(depth + 1).wrapping_add(frame[(depth % 32) as usize])
}
