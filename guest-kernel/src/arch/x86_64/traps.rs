//! Interrupt and exception dispatch. Exceptions in kernel code end as a Linux-style oops.

use core::sync::atomic::{AtomicPtr, Ordering};

use super::idt::{vector, PtRegs};
use crashvisor_abi::lkdtm::CrashPoint;
use crashvisor_abi::platform::Detector;

use super::percpu::MAX_CPUS;
use super::{apic, cpu, percpu};

const RFLAGS_IF: u64 = 1 << 9;
/// ISA IRQ of COM1.
const COM1_VECTOR: u8 = vector::ISA_IRQ_BASE + crashvisor_abi::serial::COM1_IRQ as u8;
/// ISA IRQ of COM2 (the control channel).
const COM2_VECTOR: u8 = vector::ISA_IRQ_BASE + crashvisor_abi::serial::COM2_IRQ as u8;

/// Called by `interrupt_common` for every vector with the saved registers.
#[no_mangle]
extern "C" fn interrupt_dispatch(vector: u64, regs: &mut PtRegs) {
    match vector as u8 {
        vector::NMI => {
            let block = percpu::this();
            block.nmi_depth.fetch_add(1, Ordering::Relaxed);
            crate::nmi::handle(regs);
            block.nmi_depth.fetch_sub(1, Ordering::Relaxed);
        }
        v @ 0..=31 => exception(v, regs),
        vector::SPURIOUS => {}
        v => {
            let block = percpu::this();
            block.irq_depth.fetch_add(1, Ordering::Relaxed);
            IRQ_REGS[percpu::cpu_id()].store(regs as *mut PtRegs, Ordering::Relaxed);
            crate::lkdtm::hit(CrashPoint::IntHardwareEntry);
            match v {
                vector::LOCAL_TIMER => crate::time::interrupt(),
                COM1_VECTOR => {
                    crate::lkdtm::hit(CrashPoint::IntHwIrqEn);
                    crate::console::interrupt();
                }
                COM2_VECTOR => {
                    crate::lkdtm::hit(CrashPoint::IntHwIrqEn);
                    crate::control::interrupt();
                }
                vector::CALL_FUNCTION => crate::smp::call_function_interrupt(),
                vector::RESCHEDULE => crate::sched::reschedule_interrupt(),
                _ => {}
            }
            apic::eoi();
            IRQ_REGS[percpu::cpu_id()].store(core::ptr::null_mut(), Ordering::Relaxed);
            block.irq_depth.fetch_sub(1, Ordering::Relaxed);
            if regs.eflags & RFLAGS_IF != 0 && percpu::preempt_count() == 0 && percpu::need_resched() {
                crate::sched::preempt_schedule();
            }
        }
    }
}

/// Per CPU: the registers of the code the current hardware interrupt interrupted.
static IRQ_REGS: [AtomicPtr<PtRegs>; MAX_CPUS] = [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];

/// The interrupted registers while this CPU handles a hardware interrupt (Linux's
/// `get_irq_regs()`), for reports made from timer callbacks.
pub fn irq_regs() -> Option<PtRegs> {
    let regs = IRQ_REGS[percpu::cpu_id()].load(Ordering::Relaxed);
    // SAFETY: non-null only while the interrupt frame it points to is live on this CPU's stack
    // (set on entry, cleared before return), and only this CPU reads its own slot.
    (!regs.is_null()).then(|| unsafe { *regs })
}

/// Whether the CPU is handling a hardware interrupt, an NMI or a double fault (Linux's
/// `in_interrupt()`).
pub fn in_interrupt() -> bool {
    let block = percpu::this();
    block.irq_depth.load(Ordering::Relaxed) != 0 || block.nmi_depth.load(Ordering::Relaxed) != 0
}

fn exception_name(v: u8) -> &'static str {
    match v {
        0 => "divide error",
        1 => "debug",
        3 => "int3",
        4 => "overflow",
        5 => "bounds",
        6 => "invalid opcode",
        7 => "device not available",
        8 => "double fault",
        10 => "invalid TSS",
        11 => "segment not present",
        12 => "stack segment",
        13 => "general protection fault",
        16 => "coprocessor error",
        17 => "alignment check",
        18 => "machine check",
        19 => "simd error",
        _ => "exception",
    }
}

const PF_WRITE: u64 = 1 << 1;
const PF_USER: u64 = 1 << 2;
const PF_RSVD: u64 = 1 << 3;
const PF_INSTR: u64 = 1 << 4;
const PF_PROT: u64 = 1 << 0;
const PF_PK: u64 = 1 << 5;

/// Linux's `handle_stack_overflow`: the task's stack guard page was hit.
fn stack_overflow(regs: &PtRegs, address: u64) {
    let task = crate::sched::current();
    crate::pr_emerg!(
        "BUG: TASK stack guard page was hit at {:016x} (stack is {:016x}..{:016x})",
        address,
        task.stack_base,
        task.stack_base + task.stack_size
    );
    crate::oops::die("stack guard page", 0, regs, Detector::StackOverflow);
}

/// A double fault (Linux's `exc_double_fault`, in NMI context): a kernel stack overflow (the
/// guard page below a task's stack was hit and the page fault could not be delivered on that
/// stack), or another fault that could not be delivered. Fatal either way: the oops of NMI
/// context panics.
fn double_fault(regs: &PtRegs) -> ! {
    percpu::this().nmi_depth.fetch_add(1, Ordering::Relaxed);
    let address = cpu::read_cr2();
    if super::vmap::is_guard_page(address, crate::sched::current().stack_base) {
        stack_overflow(regs, address);
    }
    crate::pr_emerg!("PANIC: double fault, error_code: 0x{:x}", regs.orig_rax);
    crate::oops::die("double fault", regs.orig_rax, regs, Detector::Oops);
    crate::panic::panic(format_args!("Machine halted."))
}

fn page_fault(regs: &PtRegs) {
    let address = cpu::read_cr2();
    let error = regs.orig_rax;
    if super::vmap::is_guard_page(address, crate::sched::current().stack_base) {
        return stack_overflow(regs, address);
    }
    if address < 4096 {
        crate::pr_alert!("BUG: kernel NULL pointer dereference, address: {:016x}", address);
    } else {
        crate::pr_alert!("BUG: unable to handle page fault for address: {:016x}", address);
    }
    let access = if error & PF_INSTR != 0 {
        "instruction fetch"
    } else if error & PF_WRITE != 0 {
        "write access"
    } else {
        "read access"
    };
    let mode = if error & PF_USER != 0 { "user" } else { "supervisor" };
    crate::pr_alert!("#PF: {} {} in kernel mode", mode, access);
    let reason = if error & PF_PROT == 0 {
        "not-present page"
    } else if error & PF_RSVD != 0 {
        "reserved bit violation"
    } else if error & PF_PK != 0 {
        "protection keys violation"
    } else {
        "permissions violation"
    };
    crate::pr_alert!("#PF: error_code(0x{:04x}) - {}", error, reason);
    super::paging::print_walk(address);
    crate::oops::die("Oops", error, regs, Detector::Oops);
}

/// The invalid-opcode exception: a `WARN()` (reported, then execution goes on after its `ud2`),
/// a `BUG()`, or a real invalid opcode.
fn invalid_opcode(regs: &mut PtRegs) {
    match crate::bug::find(regs.rip) {
        Some(entry) if entry.is_warning() => {
            crate::warn::report(entry, regs);
            regs.rip += crate::bug::UD2_LEN;
        }
        Some(entry) => {
            crate::bug::report(entry);
            crate::oops::die("invalid opcode", 0, regs, Detector::Bug);
        }
        None => crate::oops::die("invalid opcode", 0, regs, Detector::Oops),
    }
}

fn exception(v: u8, regs: &mut PtRegs) {
    match v {
        6 => invalid_opcode(regs),
        14 => page_fault(regs),
        13 if regs.orig_rax == 0 => {
            crate::oops::die("general protection fault", 0, regs, Detector::Oops);
        }
        8 => double_fault(regs),
        _ => {
            let error = if regs.orig_rax == u64::MAX { 0 } else { regs.orig_rax };
            crate::oops::die(exception_name(v), error, regs, Detector::Oops);
        }
    }
}
