//! Tasks: kernel threads with a name, a pid, a state and scheduling attributes.

use core::cell::UnsafeCell;
use core::fmt::{self, Write};
use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use crate::sync::SpinLock;

/// Linux's `TASK_RUNNING`.
pub const TASK_RUNNING: u8 = 0x00;
/// Linux's `TASK_INTERRUPTIBLE`.
pub const TASK_INTERRUPTIBLE: u8 = 0x01;
/// Linux's `TASK_UNINTERRUPTIBLE`.
pub const TASK_UNINTERRUPTIBLE: u8 = 0x02;
/// Linux's `TASK_DEAD`.
pub const TASK_DEAD: u8 = 0x80;
/// Linux's `TASK_NOLOAD` (with UNINTERRUPTIBLE: `TASK_IDLE`, not a hung task).
pub const TASK_NOLOAD: u8 = 0x40;

/// Linux's `PF_KTHREAD`.
pub const PF_KTHREAD: u32 = 0x0020_0000;
/// Linux's `PF_IDLE`.
pub const PF_IDLE: u32 = 0x0000_0002;

/// Scheduling class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// `SCHED_FIFO` with a priority 1..=99; runs before every normal task, never time-sliced.
    Fifo(u8),
    /// `SCHED_NORMAL`, round-robin among equals.
    Normal,
}

/// Length of `comm` (Linux's `TASK_COMM_LEN`).
pub const TASK_COMM_LEN: usize = 16;

/// A kernel thread.
pub struct Task {
    /// Saved stack pointer while switched out (touched only by `switch_context`).
    pub(super) saved_rsp: UnsafeCell<u64>,
    /// Process id.
    pub pid: u32,
    /// Parent's pid (kthreadd's children have 2, like Linux).
    pub ppid: u32,
    comm: [u8; TASK_COMM_LEN],
    /// `TASK_*` state.
    pub state: AtomicU8,
    /// Scheduling class and priority.
    pub policy: Policy,
    /// CPU whose run queue owns the task.
    pub cpu: AtomicU32,
    /// Queued on its CPU's run queue.
    pub(super) on_rq: AtomicBool,
    /// Voluntary context switches.
    pub nvcsw: AtomicU64,
    /// Involuntary context switches.
    pub nivcsw: AtomicU64,
    /// `PF_*` flags.
    pub flags: u32,
    /// Lowest address of the stack.
    pub stack_base: u64,
    /// Stack size in bytes.
    pub stack_size: u64,
    /// Physical address of a stack mapped outside the direct map (0 when it is in it).
    pub stack_phys: u64,
    /// Entry function and argument (new tasks).
    pub(super) entry: Option<fn(usize)>,
    pub(super) arg: usize,
    /// Hung-task bookkeeping: switch count at the last scan and when it last changed (ns).
    pub last_switch_count: AtomicU64,
    /// See `last_switch_count`.
    pub last_switch_time_ns: AtomicU64,
    /// The next task of the task list (null for the last one).
    next: AtomicPtr<Task>,
    /// The next dead task waiting to be reaped (see `sched::finish_task_switch`).
    pub(super) next_zombie: AtomicPtr<Task>,
}

// SAFETY: shared fields are atomics; `saved_rsp` is only accessed by the scheduler of the CPU
// that owns the task, with interrupts disabled.
unsafe impl Sync for Task {}

impl Task {
    /// Builds a task; the scheduler fills in the stack.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(pid: u32, ppid: u32, name: &str, policy: Policy, cpu: u32, flags: u32) -> Self {
        let mut comm = [0u8; TASK_COMM_LEN];
        let n = name.len().min(TASK_COMM_LEN - 1);
        comm[..n].copy_from_slice(&name.as_bytes()[..n]);
        Self {
            saved_rsp: UnsafeCell::new(0),
            pid,
            ppid,
            comm,
            state: AtomicU8::new(TASK_RUNNING),
            policy,
            cpu: AtomicU32::new(cpu),
            on_rq: AtomicBool::new(false),
            nvcsw: AtomicU64::new(0),
            nivcsw: AtomicU64::new(0),
            flags,
            stack_base: 0,
            stack_size: 0,
            stack_phys: 0,
            entry: None,
            arg: 0,
            last_switch_count: AtomicU64::new(0),
            last_switch_time_ns: AtomicU64::new(0),
            next: AtomicPtr::new(core::ptr::null_mut()),
            next_zombie: AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    /// The task's name (Linux's `comm`).
    pub fn comm(&self) -> &str {
        let len = self.comm.iter().position(|&b| b == 0).unwrap_or(TASK_COMM_LEN);
        core::str::from_utf8(&self.comm[..len]).unwrap_or("?")
    }

    /// The current `TASK_*` state.
    pub fn state(&self) -> u8 {
        self.state.load(Ordering::Relaxed)
    }

    /// Linux's one-letter state (`task_state_to_char`).
    pub fn state_char(&self) -> char {
        match self.state() {
            TASK_RUNNING => 'R',
            TASK_INTERRUPTIBLE => 'S',
            s if s == TASK_UNINTERRUPTIBLE | TASK_NOLOAD => 'I',
            TASK_UNINTERRUPTIBLE => 'D',
            TASK_DEAD => 'X',
            _ => '?',
        }
    }

    /// The CPU the task belongs to.
    pub fn cpu(&self) -> usize {
        self.cpu.load(Ordering::Relaxed) as usize
    }

    /// Voluntary plus involuntary switches.
    pub fn switch_count(&self) -> u64 {
        self.nvcsw.load(Ordering::Relaxed) + self.nivcsw.load(Ordering::Relaxed)
    }

    /// Saved stack pointer of a switched-out task (for backtraces of sleeping tasks).
    pub fn saved_rsp(&self) -> u64 {
        // SAFETY: a plain read of a word the scheduler writes; a racy value only affects a
        // diagnostic backtrace, which validates every frame it follows.
        unsafe { core::ptr::read_volatile(self.saved_rsp.get()) }
    }
}

/// The first task of the list of every task alive, oldest first, linked through `Task::next`.
/// Readers walk it without a lock, inside a [`ListReader`]; the reaper unlinks a dead task and
/// frees it only once every reader that could have reached it is gone (an SRCU-style grace
/// period: [`synchronize`]). A crash-dump analyser walks it too
/// (`SYMBOL(crashvisor_task_list)` in VMCOREINFO).
static TASK_LIST: AtomicPtr<Task> = AtomicPtr::new(core::ptr::null_mut());
/// The last task of the list; the lock serialises writers.
static TASK_LIST_TAIL: SpinLock<Option<&'static Task>> = SpinLock::new(None);
static NEXT_PID: AtomicU32 = AtomicU32::new(1);
/// The grace-period epoch, and the readers inside each parity of it.
static EPOCH: AtomicUsize = AtomicUsize::new(0);
static READERS: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

/// Allocates the next pid.
pub(super) fn alloc_pid() -> u32 {
    NEXT_PID.fetch_add(1, Ordering::Relaxed)
}

/// Appends a task to the task list.
pub(super) fn register(task: &'static Task) {
    let mut tail = TASK_LIST_TAIL.lock_irqsave();
    let link = match *tail {
        Some(last) => &last.next,
        None => &TASK_LIST,
    };
    // Release: a reader that sees the pointer sees the task's fields.
    link.store(task as *const Task as *mut Task, Ordering::Release);
    *tail = Some(task);
}

/// Unlinks `task` from the task list. Readers already standing on it can still follow its
/// `next`; it may be freed only after [`synchronize`].
pub(super) fn unlink(task: &Task) {
    let mut tail = TASK_LIST_TAIL.lock_irqsave();
    let mut link = &TASK_LIST;
    let mut previous = None;
    while let Some(current) = follow(link) {
        if core::ptr::eq(current, task) {
            link.store(task.next.load(Ordering::Acquire), Ordering::Release);
            if tail.is_some_and(|last| core::ptr::eq(last, task)) {
                *tail = previous;
            }
            return;
        }
        previous = Some(current);
        link = &current.next;
    }
}

/// A read-side critical section of the task list: tasks seen through it stay allocated until
/// it is dropped.
pub struct ListReader {
    epoch: usize,
}

impl ListReader {
    /// Every task, in creation order (tasks added meanwhile may be seen or not).
    pub fn iter(&self) -> impl Iterator<Item = &Task> {
        core::iter::successors(follow(&TASK_LIST), |task| follow(&task.next))
    }
}

impl Drop for ListReader {
    fn drop(&mut self) {
        READERS[self.epoch & 1].fetch_sub(1, Ordering::Release);
    }
}

/// Enters a read-side critical section of the task list. Lock-free and safe in any context
/// (an NMI, the crash path); a reader may sleep, which only delays the reaper.
pub fn list() -> ListReader {
    loop {
        let epoch = EPOCH.load(Ordering::SeqCst);
        READERS[epoch & 1].fetch_add(1, Ordering::SeqCst);
        // A reader counted under an epoch the reaper has already closed never walks: it
        // retries under the new one, so a closed epoch's count only ever drains.
        if EPOCH.load(Ordering::SeqCst) == epoch {
            return ListReader { epoch };
        }
        READERS[epoch & 1].fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits (calling `wait` between looks) until every reader that entered before this call has
/// left: tasks unlinked before it can then be freed. Reaper only (one caller at a time).
pub(super) fn synchronize(mut wait: impl FnMut()) {
    let closed = EPOCH.fetch_add(1, Ordering::SeqCst);
    while READERS[closed & 1].load(Ordering::SeqCst) != 0 {
        wait();
    }
}

/// The task a link of the list (`TASK_LIST` or a `Task::next`) points at.
fn follow(link: &AtomicPtr<Task>) -> Option<&'static Task> {
    // SAFETY: the links of the list only ever hold tasks leaked by `sched::spawn` (see
    // `register`), stored with release ordering, so a non-null pointer loaded with acquire
    // ordering points at an initialised task; a task is freed only after it was unlinked and a
    // grace period passed, so callers inside a `ListReader` never see a freed one.
    unsafe { link.load(Ordering::Acquire).as_ref() }
}

/// The VMCOREINFO keys of the task list: where it starts and the layout of a task (the field
/// types, hence sizes, are documented in docs/analysis.md).
pub fn write_vmcoreinfo(w: &mut dyn Write) -> fmt::Result {
    writeln!(w, "SYMBOL(crashvisor_task_list)={:x}", &TASK_LIST as *const _ as u64)?;
    writeln!(w, "SIZE(task_struct)={}", size_of::<Task>())?;
    let fields = [
        ("next", offset_of!(Task, next)),
        ("pid", offset_of!(Task, pid)),
        ("ppid", offset_of!(Task, ppid)),
        ("comm", offset_of!(Task, comm)),
        ("state", offset_of!(Task, state)),
        ("cpu", offset_of!(Task, cpu)),
        ("flags", offset_of!(Task, flags)),
        ("saved_rsp", offset_of!(Task, saved_rsp)),
        ("stack_base", offset_of!(Task, stack_base)),
        ("stack_size", offset_of!(Task, stack_size)),
    ];
    for (field, offset) in fields {
        writeln!(w, "OFFSET(task_struct.{field})={offset}")?;
    }
    Ok(())
}
