//! The hung-task detector (Linux `kernel/hung_task.c`): `khungtaskd` wakes every check
//! interval and reports tasks that stayed in `TASK_UNINTERRUPTIBLE` without switching for
//! `hung_task_timeout_secs`.

use core::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use crashvisor_abi::platform::{Detector, EventKind};
use crashvisor_klib::watchdog::{hung_task_interval_secs, HungCheck, HungTaskState};

use crate::printk::KERN_ERR;
use crate::sched::task::{Task, PF_KTHREAD, TASK_INTERRUPTIBLE, TASK_UNINTERRUPTIBLE};
use crate::{dumpstack, nmi, panic, platform, printk, sched, taint, time, uts, watchdog};

/// `kernel.hung_task_timeout_secs` (`CONFIG_DEFAULT_HUNG_TASK_TIMEOUT`; 0 disables).
pub static TIMEOUT_SECS: AtomicU64 = AtomicU64::new(120);
/// `kernel.hung_task_check_interval_secs` (0: use the timeout).
pub static CHECK_INTERVAL_SECS: AtomicU64 = AtomicU64::new(0);
/// `kernel.hung_task_warnings` (-1: unlimited).
pub static WARNINGS: AtomicI64 = AtomicI64::new(10);
/// `kernel.hung_task_panic`: panic once a scan finds this many hung tasks (0 = never).
pub static PANIC_COUNT: AtomicU32 = AtomicU32::new(0);
/// `kernel.hung_task_check_count`: most tasks a scan looks at (`PID_MAX_LIMIT`).
pub static CHECK_COUNT: AtomicU64 = AtomicU64::new(4_194_304);
/// `kernel.hung_task_all_cpu_backtrace`.
pub static ALL_CPU_BACKTRACE: AtomicBool = AtomicBool::new(false);

static KHUNGTASKD: AtomicPtr<Task> = AtomicPtr::new(core::ptr::null_mut());

/// Starts `khungtaskd`.
pub fn init() {
    if let Some(task) = sched::spawn("khungtaskd", sched::task::Policy::Normal, None, khungtaskd, 0) {
        KHUNGTASKD.store(task as *const Task as *mut Task, Ordering::Release);
    }
}

/// Wakes `khungtaskd` early (a timeout or interval sysctl changed).
pub fn kick() {
    let task = KHUNGTASKD.load(Ordering::Acquire);
    if !task.is_null() {
        // SAFETY: tasks are never freed; the pointer was stored from a `&'static Task`.
        sched::wake_up(unsafe { &*task });
    }
}

fn khungtaskd(_: usize) {
    loop {
        let timeout = TIMEOUT_SECS.load(Ordering::Relaxed);
        let interval = hung_task_interval_secs(timeout, CHECK_INTERVAL_SECS.load(Ordering::Relaxed));
        if interval == 0 {
            sched::set_current_state(TASK_INTERRUPTIBLE);
            sched::schedule(); // disabled: sleep until a sysctl write wakes us
            continue;
        }
        sched::sleep_ns_state(interval.saturating_mul(1_000_000_000), TASK_INTERRUPTIBLE);
        let timeout = TIMEOUT_SECS.load(Ordering::Relaxed);
        // No scans after an oops or panic, as Linux.
        if timeout == 0 || panic::in_progress() || taint::test(taint::TAINT_DIE) {
            continue;
        }
        scan(timeout);
    }
}

/// One pass over every task (Linux's `check_hung_uninterruptible_tasks`).
fn scan(timeout_secs: u64) {
    let limit = CHECK_COUNT.load(Ordering::Relaxed);
    let panic_count = PANIC_COUNT.load(Ordering::Relaxed);
    let mut hung = 0u32;
    let mut should_panic = false;
    let tasks = sched::task::list();
    for task in tasks.iter().take(limit as usize) {
        if task.state() != TASK_UNINTERRUPTIBLE {
            continue; // not D, or TASK_IDLE (NOLOAD), killable, frozen
        }
        let mut state = HungTaskState {
            last_switch_count: task.last_switch_count.load(Ordering::Relaxed),
            last_switch_time_ns: task.last_switch_time_ns.load(Ordering::Relaxed),
        };
        let decision = state.check(task.switch_count(), time::now_ns(), timeout_secs);
        task.last_switch_count.store(state.last_switch_count, Ordering::Relaxed);
        task.last_switch_time_ns.store(state.last_switch_time_ns, Ordering::Relaxed);
        let HungCheck::Hung { blocked_secs } = decision else { continue };
        hung += 1;
        if panic_count != 0 && hung >= panic_count {
            printk::console_verbose();
            should_panic = true;
        }
        let warnings = WARNINGS.load(Ordering::Relaxed);
        if warnings != 0 || should_panic {
            if warnings > 0 {
                WARNINGS.fetch_sub(1, Ordering::Relaxed);
            }
            report(task, blocked_secs);
            if WARNINGS.load(Ordering::Relaxed) == 0 && warnings > 0 {
                crate::pr_err!("Future hung task reports are suppressed, see sysctl kernel.hung_task_warnings");
            }
        }
        watchdog::touch_nmi_watchdog();
    }
    if hung > 0 && ALL_CPU_BACKTRACE.load(Ordering::Relaxed) {
        nmi::backtrace_all_but_self();
    }
    if should_panic {
        panic::panic_with(Detector::HungTask, format_args!("hung_task: blocked tasks"));
    }
}

fn report(task: &Task, blocked_secs: u64) {
    let mut taint_buf = [0u8; taint::TAINT_STRING_MAX];
    crate::pr_err!("INFO: task {}:{} blocked for more than {} seconds.", task.comm(), task.pid, blocked_secs);
    crate::pr_err!("      {} {} {}", taint::describe(&mut taint_buf), uts::RELEASE, uts::version_short());
    crate::pr_err!("\"echo 0 > /proc/sys/kernel/hung_task_timeout_secs\" disables this message.");
    let thread_flags: u64 = if task.flags & PF_KTHREAD != 0 { 0x0000_4000 } else { 0 };
    crate::printk!(
        KERN_ERR,
        "task:{:<15.15} state:{} stack:{:<5} pid:{:<5} tgid:{:<5} ppid:{:<6} task_flags:0x{:04x} flags:0x{:08x}",
        task.comm(),
        task.state_char(),
        0, // free stack bytes: Linux prints 0 without CONFIG_DEBUG_STACK_USAGE
        task.pid,
        task.pid,
        task.ppid,
        task.flags,
        thread_flags
    );
    dumpstack::print_task_trace(KERN_ERR, task);
    // The ABI's hung-task event names the CPU the detector ran on, and the task's pid.
    platform::event(EventKind::HungTask, crate::arch::percpu::cpu_id(), task.pid.min(u32::from(u16::MAX)) as u16);
}
