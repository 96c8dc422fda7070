//! Linux's `die()`: the oops report, then kill the task or panic.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::arch::idt::PtRegs;
use crate::arch::{cpu, traps};
use crate::printk::KERN_EMERG;
use crate::sched::task::PF_IDLE;
use crate::{dumpstack, panic, printk, sched, taint};

static DIE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Reports an exception in kernel code (`what` is Linux's die string, e.g. "Oops" or
/// "general protection fault") and ends the faulting task, or panics.
pub fn die(what: &str, error_code: u64, regs: &PtRegs) {
    printk::console_verbose();
    let n = DIE_COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
    crate::pr_emerg!("Oops: {}: {:04x} [#{}] SMP NOPTI", what, error_code, n);
    dumpstack::print_cpu_header(KERN_EMERG);
    dumpstack::show_regs(KERN_EMERG, regs);
    dumpstack::print_trace_from(KERN_EMERG, regs.rbp, None, None);
    crate::pr_emerg!("Modules linked in:");
    if what == "Oops" {
        crate::pr_emerg!("CR2: {:016x}", cpu::read_cr2());
    }
    oops_end(regs)
}

fn oops_end(_regs: &PtRegs) {
    taint::add(taint::TAINT_DIE);
    crate::pr_emerg!("---[ end trace 0000000000000000 ]---");
    if traps::in_interrupt() {
        panic::panic(format_args!("Fatal exception in interrupt"));
    }
    if panic::panic_on_oops() {
        panic::panic(format_args!("Fatal exception"));
    }
    let task = sched::current();
    if task.flags & PF_IDLE != 0 || task.pid == 1 {
        panic::panic(format_args!("Attempted to kill the idle task!"));
    }
    sched::exit_current();
}
