//! `WARN()` (Linux's `__warn`): a `ud2` site flagged as a warning traps, is reported with the
//! interrupted registers and a call trace, taints the kernel `W`, and execution resumes after
//! it — unless `kernel.panic_on_warn` makes it panic.

use core::sync::atomic::{AtomicBool, Ordering};

use crashvisor_abi::platform::Detector;

use crate::arch::idt::PtRegs;
use crate::arch::percpu;
use crate::bug::{BugEntry, BUGFLAG_NO_CUT_HERE};
use crate::printk::KERN_WARNING;
use crate::{dumpstack, sched, taint};

/// `kernel.panic_on_warn`.
pub static PANIC_ON_WARN: AtomicBool = AtomicBool::new(false);

/// The line before every BUG, WARN and UBSAN report.
pub const CUT_HERE: &str = "------------[ cut here ]------------";

/// Linux's `__warn_printk`: the `cut here` line and a `WARN()`'s message, before its trap.
pub fn warn_printk(args: core::fmt::Arguments<'_>) {
    crate::pr_warn!("{}", CUT_HERE);
    crate::printk::printk(KERN_WARNING, args);
}

/// Reports the warning `entry` whose trap saved `regs` (the invalid-opcode handler resumes
/// after it).
pub fn report(entry: &BugEntry, regs: &PtRegs) {
    if entry.location.flags & BUGFLAG_NO_CUT_HERE == 0 {
        crate::pr_warn!("{}", CUT_HERE);
    }
    let task = sched::current();
    let mut site = [0u8; 256];
    crate::pr_warn!(
        "WARNING: {}:{} at {}, CPU#{}: {}/{}",
        entry.location.file,
        entry.location.line,
        dumpstack::symbolised(regs.rip, &mut site),
        percpu::cpu_id(),
        task.comm(),
        task.pid
    );
    crate::pr_warn!("Modules linked in:");
    dumpstack::print_cpu_header(KERN_WARNING);
    dumpstack::show_regs(KERN_WARNING, regs);
    dumpstack::print_trace_from(KERN_WARNING, regs.rbp);
    check_panic_on_warn("kernel");
    crate::pr_warn!("---[ end trace 0000000000000000 ]---");
    taint::add(taint::TAINT_WARN);
}

/// Linux's `check_panic_on_warn`: with `kernel.panic_on_warn`, a warning from `origin` panics.
pub fn check_panic_on_warn(origin: &str) {
    if PANIC_ON_WARN.load(Ordering::Relaxed) {
        crate::panic::panic_with(Detector::Warn, format_args!("{origin}: panic_on_warn set ..."));
    }
}

/// Linux's `WARN_ON(cond)`: warns when `cond` holds, and evaluates to it.
#[macro_export]
macro_rules! warn_on {
    ($cond:expr) => {{
        let condition: bool = $cond;
        if condition {
            $crate::__bug_site!($crate::bug::BUGFLAG_WARNING);
        }
        condition
    }};
}

/// Linux's `WARN(cond, fmt, ...)`: prints the message and warns when `cond` holds, and
/// evaluates to it.
#[macro_export]
macro_rules! warn {
    ($cond:expr, $($arg:tt)+) => {{
        let condition: bool = $cond;
        if condition {
            $crate::warn::warn_printk(format_args!($($arg)+));
            $crate::__bug_site!($crate::bug::BUGFLAG_WARNING | $crate::bug::BUGFLAG_NO_CUT_HERE);
        }
        condition
    }};
}

/// Linux's `WARN_ONCE(cond, fmt, ...)`: `warn!` the first time `cond` holds at this site.
#[macro_export]
macro_rules! warn_once {
    ($cond:expr, $($arg:tt)+) => {{
        static DONE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
        let condition: bool = $cond;
        if condition && !DONE.swap(true, core::sync::atomic::Ordering::Relaxed) {
            $crate::warn!(true, $($arg)+);
        }
        condition
    }};
}
