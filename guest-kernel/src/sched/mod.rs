//! The scheduler: per-CPU run queues with a FIFO class above a round-robin normal class,
//! preemption at interrupt exit and at `preempt_enable`, time slices only while tasks wait.
//! Dead tasks are reaped as in Linux: once a task that exited has been switched away from, the
//! next task hands it to kthreadd, which unlinks it from the task list and, after a grace
//! period for the list's readers, frees its stack and its `Task`.

pub mod task;
pub mod wait;

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use self::task::{Policy, Task, PF_IDLE, PF_KTHREAD, TASK_DEAD, TASK_RUNNING};
use crate::arch::idt::vector;
use crate::arch::percpu::{self, MAX_CPUS};
use crate::arch::{apic, switch};
use crate::sync::{irq, SpinLock};

/// pid of kthreadd, the parent of every kernel thread.
pub const KTHREADD_PID: u32 = 2;

/// Kernel stack size of a task.
pub const STACK_SIZE: usize = 16 * 1024;
/// Time slice of normal tasks.
const SLICE_NS: u64 = 10_000_000;

/// A CPU's runnable tasks (the running one is not in here).
struct RunQueue {
    fifo: VecDeque<&'static Task>,
    normal: VecDeque<&'static Task>,
}

impl RunQueue {
    const fn new() -> Self {
        Self { fifo: VecDeque::new(), normal: VecDeque::new() }
    }

    fn enqueue(&mut self, task: &'static Task) {
        task.on_rq.store(true, Ordering::Relaxed);
        match task.policy {
            Policy::Fifo(prio) => {
                let pos = self
                    .fifo
                    .iter()
                    .position(|t| matches!(t.policy, Policy::Fifo(p) if p < prio))
                    .unwrap_or(self.fifo.len());
                self.fifo.insert(pos, task);
            }
            Policy::Normal => self.normal.push_back(task),
        }
    }

    fn pick(&mut self) -> Option<&'static Task> {
        let task = self.fifo.pop_front().or_else(|| self.normal.pop_front())?;
        task.on_rq.store(false, Ordering::Relaxed);
        Some(task)
    }

    fn len(&self) -> usize {
        self.fifo.len() + self.normal.len()
    }
}

static RUN_QUEUES: [SpinLock<RunQueue>; MAX_CPUS] = [const { SpinLock::new(RunQueue::new()) }; MAX_CPUS];
static SLICE_ARMED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// Per CPU: the task the last context switch left (Linux's `rq->prev`, for `finish_task_switch`).
static SWITCHED_FROM: [AtomicPtr<Task>; MAX_CPUS] = [const { AtomicPtr::new(null_mut()) }; MAX_CPUS];
/// Dead tasks waiting for kthreadd, linked through `Task::next_zombie`.
static ZOMBIES: AtomicPtr<Task> = AtomicPtr::new(null_mut());
/// kthreadd, the reaper.
static KTHREADD: AtomicPtr<Task> = AtomicPtr::new(null_mut());
/// How long kthreadd sleeps between looks while task-list readers finish.
const GRACE_POLL_NS: u64 = 1_000_000;

/// The task running on this CPU.
pub fn current() -> &'static Task {
    // SAFETY: every CPU sets `current` (to its idle task) before it runs any code that can
    // call this, and a task is freed only after it stopped running for good.
    unsafe { &*percpu::current() }
}

/// Whether `a` should preempt `b`.
fn preempts(a: &Task, b: &Task) -> bool {
    match (a.policy, b.policy) {
        (Policy::Fifo(pa), Policy::Fifo(pb)) => pa > pb,
        (Policy::Fifo(_), Policy::Normal) => true,
        (Policy::Normal, _) => b.flags & PF_IDLE != 0,
    }
}

/// Turns the code running on this CPU into its idle task (pid 0, "swapper/N").
pub fn init_idle(cpu: usize, stack_base: u64, stack_size: u64) {
    let name = idle_name(cpu);
    let mut idle = Task::new(0, 0, name.as_str(), Policy::Normal, cpu as u32, PF_KTHREAD | PF_IDLE);
    idle.stack_base = stack_base;
    idle.stack_size = stack_size;
    let idle: &'static Task = Box::leak(Box::new(idle));
    task::register(idle);
    let block = percpu::of(cpu);
    block.idle.store(idle as *const Task as *mut Task, Ordering::Relaxed);
    block.set_current(idle as *const Task as *mut Task);
}

fn idle_name(cpu: usize) -> heapless_name::Name {
    heapless_name::Name::swapper(cpu)
}

/// A tiny fixed string for "swapper/N".
mod heapless_name {
    pub struct Name {
        buf: [u8; 16],
        len: usize,
    }
    impl Name {
        pub fn swapper(cpu: usize) -> Self {
            let mut buf = [0u8; 16];
            buf[..8].copy_from_slice(b"swapper/");
            let mut len = 8;
            if cpu >= 10 {
                buf[len] = b'0' + (cpu / 10) as u8;
                len += 1;
            }
            buf[len] = b'0' + (cpu % 10) as u8;
            Self { buf, len: len + 1 }
        }
        pub fn as_str(&self) -> &str {
            core::str::from_utf8(&self.buf[..self.len]).unwrap_or("swapper")
        }
    }
}

/// Creates a kernel thread running `entry(arg)` on `cpu` (or the least busy CPU when
/// `cpu` is `None`) and makes it runnable.
pub fn spawn(name: &str, policy: Policy, cpu: Option<usize>, entry: fn(usize), arg: usize) -> Option<&'static Task> {
    let cpu = cpu.unwrap_or_else(least_loaded_cpu);
    let (stack, stack_phys) = crate::arch::vmap::alloc_stack(STACK_SIZE as u64)?;
    let pid = task::alloc_pid();
    // As in Linux: init (pid 1) is a child of pid 0; kernel threads are children of kthreadd.
    let ppid = if pid <= KTHREADD_PID { 0 } else { KTHREADD_PID };
    let mut task = Task::new(pid, ppid, name, policy, cpu as u32, PF_KTHREAD);
    task.stack_base = stack;
    task.stack_size = STACK_SIZE as u64;
    task.stack_phys = stack_phys;
    task.entry = Some(entry);
    task.arg = arg;
    // SAFETY: the task is not shared yet; its stack was just allocated for it.
    unsafe { *task.saved_rsp.get() = switch::initial_stack(stack + STACK_SIZE as u64) };
    let task: &'static Task = Box::leak(Box::new(task));
    task.last_switch_time_ns.store(crate::time::now_ns(), Ordering::Relaxed);
    task::register(task);
    if pid == KTHREADD_PID {
        KTHREADD.store(task as *const Task as *mut Task, Ordering::Release);
    }
    enqueue_and_kick(task);
    Some(task)
}

fn least_loaded_cpu() -> usize {
    (0..MAX_CPUS)
        .filter(|&c| percpu::of(c).online.load(Ordering::Relaxed))
        .min_by_key(|&c| RUN_QUEUES[c].lock_irqsave().len())
        .unwrap_or(0)
}

/// Queues a runnable task on its CPU and makes that CPU reschedule if the task should run now.
fn enqueue_and_kick(task: &'static Task) {
    let cpu = task.cpu();
    let block = percpu::of(cpu);
    {
        let mut rq = RUN_QUEUES[cpu].lock_irqsave();
        if task.on_rq.load(Ordering::Relaxed) || core::ptr::eq(block.current(), task) {
            return; // already queued, or running (and about to see TASK_RUNNING)
        }
        rq.enqueue(task);
    }
    // SAFETY: `current` of an online CPU always points at a live task.
    let running = unsafe { &*block.current() };
    let local = cpu == percpu::cpu_id();
    if preempts(task, running) {
        block.set_need_resched(true);
        if !local {
            apic::send_ipi(block.apic_id.load(Ordering::Relaxed), vector::RESCHEDULE);
        }
    } else if local {
        arm_slice(cpu);
    } else if !SLICE_ARMED[cpu].load(Ordering::Relaxed) {
        // The task waits behind a normal task on another CPU: that CPU arms its own time slice
        // (timers are per CPU) from the IPI, or the woken task would wait until the running
        // one blocks.
        apic::send_ipi(block.apic_id.load(Ordering::Relaxed), vector::RESCHEDULE);
    }
}

/// The reschedule IPI: another CPU queued a task here. Preemption happens at interrupt exit
/// when `need_resched` is set; otherwise the queued task gets the CPU when this slice ends.
pub fn reschedule_interrupt() {
    let cpu = percpu::cpu_id();
    if RUN_QUEUES[cpu].lock_irqsave().len() > 0 {
        arm_slice(cpu);
    }
}

/// Makes a sleeping task runnable. Returns false if it was already running.
pub fn wake_up(task: &'static Task) -> bool {
    if task.state.swap(TASK_RUNNING, Ordering::AcqRel) == TASK_RUNNING {
        return false;
    }
    enqueue_and_kick(task);
    true
}

/// Sets the current task's state before it checks its wait condition and calls `schedule`.
pub fn set_current_state(state: u8) {
    current().state.store(state, Ordering::SeqCst);
}

fn slice_expired(cpu: usize) {
    SLICE_ARMED[cpu].store(false, Ordering::Relaxed);
    if RUN_QUEUES[cpu].lock_irqsave().len() > 0 {
        percpu::this().set_need_resched(true);
    }
}

fn arm_slice(cpu: usize) {
    if !SLICE_ARMED[cpu].swap(true, Ordering::Relaxed)
        && crate::time::add_timer_ns(SLICE_NS, slice_expired, cpu).is_none()
    {
        SLICE_ARMED[cpu].store(false, Ordering::Relaxed);
    }
}

/// Linux's `HARDIRQ_OFFSET`: how a hard interrupt shows in the preemption count it prints.
const HARDIRQ_OFFSET: i32 = 0x1_0000;

/// Picks the next task on this CPU and switches to it. The current task gives up the CPU: it
/// stays runnable only if its state is `TASK_RUNNING` (Linux's `schedule()`).
pub fn schedule() {
    switch_tasks(false);
}

/// Preempts the current task (interrupt exit, `preempt_enable`, a spinlock's unlock with a
/// reschedule due): it stays on the run queue whatever its state, as Linux's
/// `preempt_schedule` (`__schedule(SM_PREEMPT)`).
///
/// A task between `set_current_state(TASK_INTERRUPTIBLE)` and its own `schedule()` has not
/// looked at its wait condition yet. Treating a preemption in that window as a sleep put it to
/// sleep with no waker left whenever the wake-up had come before it queued itself: the
/// injected hung task, parked on `RELEASE_WAITERS` until its release, stayed in S for good and
/// was never reported (seen once in ~380 runs of the hung-task test on a busy host, where a
/// vCPU thread stalls long enough inside the window for a slice or FIFO wake-up to land there;
/// a wait queue's unlock is itself a preemption point, right after the state is set).
pub fn preempt_schedule() {
    switch_tasks(true);
}

fn switch_tasks(preempted: bool) {
    let irqs = percpu::this().irq_depth.load(Ordering::Relaxed) as i32;
    let atomic = percpu::preempt_count() + irqs * HARDIRQ_OFFSET;
    if atomic != 0 || crate::arch::traps::in_interrupt() {
        crate::pr_err!("BUG: scheduling while atomic: {}/{}/0x{:08x}", current().comm(), current().pid, atomic);
        return;
    }
    let was_enabled = irq::save();
    let cpu = percpu::cpu_id();
    let block = percpu::this();
    let prev = current();
    block.set_need_resched(false);
    let next = {
        let mut rq = RUN_QUEUES[cpu].lock();
        let is_idle = prev.flags & PF_IDLE != 0;
        let prev_state = prev.state();
        let prev_runnable = prev_state == TASK_RUNNING || (preempted && prev_state != TASK_DEAD);
        if prev_runnable && !is_idle && !prev.on_rq.load(Ordering::Relaxed) {
            // Preempted, not sleeping: a FIFO task keeps the CPU unless something better waits.
            if let Policy::Fifo(prio) = prev.policy {
                // Preempted FIFO tasks stay at the head of their priority level.
                let pos = rq
                    .fifo
                    .iter()
                    .position(|t| matches!(t.policy, Policy::Fifo(p) if p <= prio))
                    .unwrap_or(rq.fifo.len());
                rq.fifo.insert(pos, prev);
                prev.on_rq.store(true, Ordering::Relaxed);
            } else {
                rq.enqueue(prev);
            }
        }
        let next = match rq.pick() {
            Some(t) => t,
            // SAFETY: `idle` is set for every online CPU by `init_idle`.
            None => unsafe { &*block.idle.load(Ordering::Relaxed) },
        };
        // `current` changes under the run-queue lock, in the same critical section that
        // decided whether `prev` stays runnable. `enqueue_and_kick` skips a task that is still
        // `current` (it will see TASK_RUNNING here); if `current` changed only after this lock
        // was dropped, a wake-up from another CPU in between would find `prev` still current,
        // skip the enqueue after `prev` had been judged asleep, and `prev` would sit in
        // TASK_RUNNING on no run queue for good. The window is a few instructions on a real
        // CPU; on a busy host the vCPU thread can be descheduled inside it for milliseconds,
        // which is how the control thread (woken by the COM2 interrupt on CPU 0) was lost.
        block.set_current(next as *const Task as *mut Task);
        if rq.len() > 0 && matches!(next.policy, Policy::Normal) {
            drop(rq);
            arm_slice(cpu);
        }
        next
    };
    if core::ptr::eq(prev, next) {
        irq::restore(was_enabled);
        return;
    }
    if preempted || prev.state() == TASK_RUNNING {
        prev.nivcsw.fetch_add(1, Ordering::Relaxed);
    } else {
        prev.nvcsw.fetch_add(1, Ordering::Relaxed);
    }
    SWITCHED_FROM[cpu].store(prev as *const Task as *mut Task, Ordering::Relaxed);
    // SAFETY: interrupts are off, `prev` is this CPU's current task and `next` is a runnable
    // task of this CPU whose saved stack pointer was written by a previous switch (or by
    // `initial_stack`). Neither can be switched to by another CPU meanwhile.
    unsafe { switch::switch_context(prev.saved_rsp.get(), *next.saved_rsp.get()) };
    finish_task_switch();
    irq::restore(was_enabled);
}

/// Linux's `finish_task_switch`, in the task switched to (interrupts off): a task that left
/// because it died is off its stack now, so kthreadd may reap it.
fn finish_task_switch() {
    let prev = SWITCHED_FROM[percpu::cpu_id()].swap(null_mut(), Ordering::Relaxed);
    // SAFETY: `SWITCHED_FROM` holds the task this CPU just switched away from; a task is freed
    // only by kthreadd, after this hand-over.
    let Some(prev) = (unsafe { prev.as_ref() }) else { return };
    if prev.state() != TASK_DEAD {
        return;
    }
    let mut head = ZOMBIES.load(Ordering::Relaxed);
    loop {
        prev.next_zombie.store(head, Ordering::Relaxed);
        match ZOMBIES.compare_exchange_weak(
            head,
            prev as *const Task as *mut Task,
            Ordering::Release,
            Ordering::Relaxed,
        ) {
            Ok(_) => break,
            Err(now) => head = now,
        }
    }
    // SAFETY: kthreadd never exits, so the pointer stays valid once set.
    if let Some(reaper) = unsafe { KTHREADD.load(Ordering::Acquire).as_ref() } {
        wake_up(reaper);
    }
}

/// The Rust entry of a new task (called by `task_trampoline` with interrupts on).
#[no_mangle]
extern "C" fn task_entry() -> ! {
    irq::without_interrupts(finish_task_switch);
    let task = current();
    if let Some(entry) = task.entry {
        entry(task.arg);
    }
    exit_current()
}

/// Ends the current task; it never runs again.
pub fn exit_current() -> ! {
    irq::disable();
    current().state.store(TASK_DEAD, Ordering::SeqCst);
    loop {
        // With preemption possibly disabled by a crashed holder, force it clear: this task
        // holds nothing any more.
        while percpu::preempt_count() > 0 {
            crate::sync::preempt::enable_no_resched();
        }
        schedule();
    }
}

fn wake_from_timer(task_addr: usize) {
    // SAFETY: the address is a leaked `&'static Task` passed by `sleep_ns`.
    let task: &'static Task = unsafe { &*(task_addr as *const Task) };
    wake_up(task);
}

/// Sleeps for `ns` nanoseconds in `state` (Linux's `schedule_timeout` with that state).
pub fn sleep_ns_state(ns: u64, state: u8) {
    let me = current();
    set_current_state(state);
    let timer = crate::time::add_timer_ns(ns, wake_from_timer, me as *const Task as usize);
    schedule();
    if let Some(id) = timer {
        crate::time::cancel(id);
    }
    me.state.store(TASK_RUNNING, Ordering::SeqCst);
}

/// The idle loop of a CPU: halt until there is work.
pub fn idle_loop() -> ! {
    loop {
        irq::disable();
        let pending = percpu::need_resched() || RUN_QUEUES[percpu::cpu_id()].lock().len() > 0;
        if pending {
            irq::enable();
            schedule();
        } else {
            crate::arch::cpu::sti_hlt();
        }
    }
}

/// kthreadd (pid 2): the parent of kernel threads, and their reaper (Linux reaps a dead
/// kernel thread at once, `release_task`, and frees it after an RCU grace period).
pub fn kthreadd(_: usize) {
    loop {
        set_current_state(task::TASK_INTERRUPTIBLE);
        let zombies = ZOMBIES.swap(null_mut(), Ordering::Acquire);
        if zombies.is_null() {
            schedule();
            continue;
        }
        set_current_state(TASK_RUNNING);
        reap(zombies);
    }
}

/// Unlinks and frees the dead tasks chained from `first`.
fn reap(first: *mut Task) {
    let dead = || {
        // SAFETY: the chain holds tasks handed over by `finish_task_switch`, freed only below.
        core::iter::successors(unsafe { first.as_ref() }, |t| unsafe { t.next_zombie.load(Ordering::Relaxed).as_ref() })
    };
    for task in dead() {
        task::unlink(task);
    }
    task::synchronize(|| sleep_ns_state(GRACE_POLL_NS, task::TASK_INTERRUPTIBLE));
    let mut next = first;
    while !next.is_null() {
        // SAFETY: a dead, unlinked task no reader can reach any more (the grace period passed);
        // it was leaked from a `Box` by `spawn`, and this is its only owner now.
        let task = unsafe { Box::from_raw(next) };
        next = task.next_zombie.load(Ordering::Relaxed);
        if task.stack_phys != 0 {
            crate::arch::vmap::free_stack(task.stack_base, task.stack_phys, task.stack_size);
        }
        drop(task);
    }
}
