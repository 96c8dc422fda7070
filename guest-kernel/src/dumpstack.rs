//! Linux's `show_regs`, `dump_stack` and frame-pointer call traces, symbolised with the
//! embedded symbol table (`func+0x1a/0x80`).

use crashvisor_klib::symbols;

use crate::arch::cpu;
use crate::arch::idt::PtRegs;
use crate::arch::percpu;
use crate::{kallsyms, sched, taint, uts};

/// Most frames a call trace follows.
const MAX_FRAMES: usize = 32;

/// The `CPU: ... Comm: ...` and `Hardware name:` lines.
pub fn print_cpu_header(level: u8) {
    let task = sched::current();
    let mut taint = [0u8; taint::TAINT_STRING_MAX];
    crate::printk!(
        level,
        "CPU: {} UID: 0 PID: {} Comm: {:.20} {} {} {} PREEMPT(full)",
        percpu::cpu_id(),
        task.pid,
        task.comm(),
        taint::describe(&mut taint),
        uts::RELEASE,
        uts::version_short()
    );
    crate::printk!(level, "Hardware name: {}", uts::HARDWARE_NAME);
}

fn symbolised(addr: u64, out: &mut [u8; 256]) -> &str {
    let table = kallsyms::table();
    let bytes = symbols::format_address(table.as_ref(), addr, out);
    core::str::from_utf8(bytes).unwrap_or("?")
}

fn symbolised_return(addr: u64, out: &mut [u8; 256]) -> &str {
    let table = kallsyms::table();
    let bytes = symbols::format_return_address(table.as_ref(), addr, out);
    core::str::from_utf8(bytes).unwrap_or("?")
}

/// Linux's `__show_regs` for kernel-mode registers.
pub fn show_regs(level: u8, regs: &PtRegs) {
    let mut buf = [0u8; 256];
    crate::printk!(level, "RIP: {:04x}:{}", regs.cs, symbolised(regs.rip, &mut buf));
    crate::printk!(level, "RSP: {:04x}:{:016x} EFLAGS: {:08x}", regs.ss, regs.rsp, regs.eflags);
    crate::printk!(level, "RAX: {:016x} RBX: {:016x} RCX: {:016x}", regs.rax, regs.rbx, regs.rcx);
    crate::printk!(level, "RDX: {:016x} RSI: {:016x} RDI: {:016x}", regs.rdx, regs.rsi, regs.rdi);
    crate::printk!(level, "RBP: {:016x} R08: {:016x} R09: {:016x}", regs.rbp, regs.r8, regs.r9);
    crate::printk!(level, "R10: {:016x} R11: {:016x} R12: {:016x}", regs.r10, regs.r11, regs.r12);
    crate::printk!(level, "R13: {:016x} R14: {:016x} R15: {:016x}", regs.r13, regs.r14, regs.r15);
    let gs = cpu::rdmsr(0xc000_0101);
    crate::printk!(level, "FS:  0000000000000000(0000) GS:{:016x}(0000) knlGS:0000000000000000", gs);
    crate::printk!(level, "CS:  {:04x} DS: 0000 ES: 0000 CR0: {:016x}", regs.cs, cpu::read_cr0());
    crate::printk!(level, "CR2: {:016x} CR3: {:016x} CR4: {:016x}", cpu::read_cr2(), cpu::read_cr3(), cpu::read_cr4());
}

/// The stack the frame at `rbp` may live on: the current task's stack or this CPU's NMI stack.
fn stack_bounds(rbp: u64) -> Option<(u64, u64)> {
    let task = sched::current();
    let task_stack = (task.stack_base, task.stack_base + task.stack_size);
    let nmi_stack = crate::arch::gdt::nmi_stack_range(percpu::cpu_id());
    [task_stack, nmi_stack].into_iter().find(|&(lo, hi)| lo != 0 && rbp >= lo && rbp + 16 <= hi)
}

/// Prints ` <TASK>` / frames / ` </TASK>` following frame pointers from `rbp`. Frames are
/// validated against `bounds` (or the current stacks), so a corrupt chain ends the trace.
pub fn print_trace_from(level: u8, mut rbp: u64, bounds: Option<(u64, u64)>, first_return: Option<u64>) {
    crate::printk!(level, "Call Trace:");
    crate::printk!(level, " <TASK>");
    let mut buf = [0u8; 256];
    if let Some(ret) = first_return {
        crate::printk!(level, " {}", symbolised_return(ret, &mut buf));
    }
    for _ in 0..MAX_FRAMES {
        let Some((lo, hi)) = bounds.or_else(|| stack_bounds(rbp)) else {
            break;
        };
        if rbp < lo || rbp + 16 > hi || !rbp.is_multiple_of(8) {
            break;
        }
        // SAFETY: `rbp` was checked to lie inside a mapped kernel stack with room for two words.
        let (next, ret) = unsafe { ((rbp as *const u64).read(), (rbp as *const u64).add(1).read()) };
        if ret == 0 {
            break;
        }
        crate::printk!(level, " {}", symbolised_return(ret, &mut buf));
        if next <= rbp {
            break;
        }
        rbp = next;
    }
    crate::printk!(level, " </TASK>");
}

/// The frame pointer of the caller.
#[inline(always)]
pub fn current_frame() -> u64 {
    let rbp: u64;
    // SAFETY: reads the frame-pointer register (frame pointers are forced on for this kernel).
    unsafe { core::arch::asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack, preserves_flags)) };
    rbp
}

/// Linux's `dump_stack()`.
#[inline(never)]
pub fn dump_stack(level: u8) {
    print_cpu_header(level);
    print_trace_from(level, current_frame(), None, None);
}

/// The trace of a task that is switched out: its frames start at the registers
/// `switch_context` pushed.
pub fn print_task_trace(level: u8, task: &sched::task::Task) {
    let rsp = task.saved_rsp();
    // switch_context pushed rbp first (5 words above the saved rsp), below its return address.
    let bounds = (task.stack_base, task.stack_base + task.stack_size);
    if rsp < bounds.0 || rsp + 7 * 8 > bounds.1 {
        return;
    }
    // SAFETY: both words lie inside the task's own stack (checked above).
    let (rbp, ret) = unsafe { (((rsp + 5 * 8) as *const u64).read(), ((rsp + 6 * 8) as *const u64).read()) };
    print_trace_from(level, rbp, Some(bounds), Some(ret));
}
