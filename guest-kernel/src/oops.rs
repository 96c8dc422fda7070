//! Linux's `die()`: the oops report, then kill the task or panic.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::arch::idt::PtRegs;
use crate::arch::{cpu, traps};
use crate::printk::KERN_EMERG;
use crate::sched::task::PF_IDLE;
use crashvisor_abi::platform::{Detector, EventKind};

use crate::{dumpstack, panic, platform, printk, sched, taint};

static DIE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Reports an exception in kernel code (`what` is Linux's die string, e.g. "Oops" or
/// "general protection fault") and ends the faulting task, or panics with `detector` as the
/// crash reason's (a survived oops leaves no reason behind for a later panic).
pub fn die(what: &str, error_code: u64, regs: &PtRegs, detector: Detector) {
    report(what, error_code, regs);
    oops_end(regs, detector);
}

/// The oops report alone, through `---[ end trace ... ]---`, tainting the kernel `D`.
pub fn report(what: &str, error_code: u64, regs: &PtRegs) {
    printk::console_verbose();
    let n = DIE_COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
    crate::pr_emerg!("Oops: {}: {:04x} [#{}] SMP NOPTI", what, error_code, n);
    dumpstack::print_cpu_header(KERN_EMERG);
    dumpstack::show_regs(KERN_EMERG, regs);
    dumpstack::print_trace_from(KERN_EMERG, regs.rbp);
    crate::pr_emerg!("Modules linked in:");
    if what == "Oops" {
        crate::pr_emerg!("CR2: {:016x}", cpu::read_cr2());
    }
    let pid = sched::current().pid.min(u32::from(u16::MAX)) as u16;
    platform::event(EventKind::Oops, crate::arch::percpu::cpu_id(), pid);
}

/// The end-of-oops marker, tainting the kernel `D`.
pub fn end_trace() {
    taint::add(taint::TAINT_DIE);
    crate::pr_emerg!("---[ end trace 0000000000000000 ]---");
}

/// Linux's `kexec_should_crash`: kdump starts at the oops itself (with its registers) when the
/// oops will panic anyway, unless the panic notifiers must run first.
fn kexec_should_crash() -> bool {
    let task = sched::current();
    !panic::CRASH_KEXEC_POST_NOTIFIERS.load(core::sync::atomic::Ordering::Relaxed)
        && (traps::in_interrupt() || task.pid <= 1 || panic::panic_on_oops())
}

/// Linux's `oops_end`: kdump first when the oops is fatal, then the end marker, then panic in
/// interrupt context or with `panic_on_oops`, else end the task.
fn oops_end(regs: &PtRegs, detector: Detector) {
    if kexec_should_crash() && crate::kexec::crash::crash_kernel_loaded() {
        panic::set_detector(detector);
        // kdump starts here, before any panic line (as Linux); the host still learns why.
        panic::send_crash_reason(if traps::in_interrupt() {
            "Fatal exception in interrupt"
        } else {
            "Fatal exception"
        });
        crate::kexec::crash::crash_kexec(Some(regs));
    }
    end_trace();
    if traps::in_interrupt() {
        panic::panic_with(detector, format_args!("Fatal exception in interrupt"));
    }
    if panic::panic_on_oops() {
        panic::panic_with(detector, format_args!("Fatal exception"));
    }
    let task = sched::current();
    if task.flags & PF_IDLE != 0 {
        panic::panic_with(detector, format_args!("Attempted to kill the idle task!"));
    }
    if task.pid == 1 {
        panic::panic_with(detector, format_args!("Attempted to kill init! exitcode=0x0000000b"));
    }
    sched::exit_current();
}
