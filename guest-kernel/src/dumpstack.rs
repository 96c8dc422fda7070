//! Linux's `show_regs`, `dump_stack` and frame-pointer call traces, symbolised with the
//! embedded symbol table (`func+0x1a/0x80`).
//!
//! A trace crosses contexts as Linux prints it: the frames of an NMI (on its own stack), of a
//! hardware interrupt (on the interrupted task's stack here: frames above the newest interrupt
//! frame while this CPU is in one) and of the task each sit between ` <NMI>`/` </NMI>`,
//! ` <IRQ>`/` </IRQ>` and ` <TASK>`/` </TASK>`. At an interrupt frame the walk prints the
//! interrupted registers (Linux's `show_regs_if_on_stack`), then the interrupted function and
//! the frames below it.

use crashvisor_klib::symbols;

use crate::arch::idt::{self, vector, PtRegs};
use crate::arch::{cpu, gdt, percpu};
use crate::{kallsyms, sched, taint, uts};

/// Most frames a call trace follows.
const MAX_FRAMES: usize = 48;

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

/// `addr` as `function+0xoff/0xsize` (`%pS`).
pub fn symbolised(addr: u64, out: &mut [u8; 256]) -> &str {
    let table = kallsyms::table();
    let bytes = symbols::format_address(table.as_ref(), addr, out);
    core::str::from_utf8(bytes).unwrap_or("?")
}

fn symbolised_return(addr: u64, out: &mut [u8; 256]) -> &str {
    let table = kallsyms::table();
    let bytes = symbols::format_return_address(table.as_ref(), addr, out);
    core::str::from_utf8(bytes).unwrap_or("?")
}

/// Linux's `__show_regs(regs, SHOW_REGS_SHORT)`: the instruction pointer and the general
/// registers, as a trace shows the registers it finds on a stack.
pub fn show_regs_short(level: u8, regs: &PtRegs) {
    let mut buf = [0u8; 256];
    crate::printk!(level, "RIP: {:04x}:{}", regs.cs, symbolised(regs.rip, &mut buf));
    if regs.orig_rax == u64::MAX {
        crate::printk!(level, "RSP: {:04x}:{:016x} EFLAGS: {:08x}", regs.ss, regs.rsp, regs.eflags);
    } else {
        crate::printk!(
            level,
            "RSP: {:04x}:{:016x} EFLAGS: {:08x} ORIG_RAX: {:016x}",
            regs.ss,
            regs.rsp,
            regs.eflags,
            regs.orig_rax
        );
    }
    crate::printk!(level, "RAX: {:016x} RBX: {:016x} RCX: {:016x}", regs.rax, regs.rbx, regs.rcx);
    crate::printk!(level, "RDX: {:016x} RSI: {:016x} RDI: {:016x}", regs.rdx, regs.rsi, regs.rdi);
    crate::printk!(level, "RBP: {:016x} R08: {:016x} R09: {:016x}", regs.rbp, regs.r8, regs.r9);
    crate::printk!(level, "R10: {:016x} R11: {:016x} R12: {:016x}", regs.r10, regs.r11, regs.r12);
    crate::printk!(level, "R13: {:016x} R14: {:016x} R15: {:016x}", regs.r13, regs.r14, regs.r15);
}

/// Linux's `__show_regs` for kernel-mode registers.
pub fn show_regs(level: u8, regs: &PtRegs) {
    show_regs_short(level, regs);
    let gs = cpu::rdmsr(0xc000_0101);
    crate::printk!(level, "FS:  0000000000000000(0000) GS:{:016x}(0000) knlGS:0000000000000000", gs);
    crate::printk!(level, "CS:  {:04x} DS: 0000 ES: 0000 CR0: {:016x}", regs.cs, cpu::read_cr0());
    crate::printk!(level, "CR2: {:016x} CR3: {:016x} CR4: {:016x}", cpu::read_cr2(), cpu::read_cr3(), cpu::read_cr4());
}

extern "C" {
    static _stext: u8;
    static _etext: u8;
}

/// Whether `addr` is in the kernel's text.
fn is_kernel_text(addr: u64) -> bool {
    // SAFETY: only the addresses of the linker symbols are taken.
    let (start, end) = unsafe { (&_stext as *const u8 as u64, &_etext as *const u8 as u64) };
    (start..end).contains(&addr)
}

/// The stacks a call trace walks, named as Linux names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    Task,
    Irq,
    Nmi,
    DoubleFault,
}

impl Section {
    fn name(self) -> &'static str {
        match self {
            Self::Task => "TASK",
            Self::Irq => "IRQ",
            Self::Nmi => "NMI",
            Self::DoubleFault => "#DF",
        }
    }
}

/// Where the frames of a trace may lie.
#[derive(Clone, Copy)]
enum Bounds {
    /// This CPU's current task stack and exception stacks.
    ThisCpu,
    /// One stack only (a switched-out task's).
    Only(u64, u64),
}

impl Bounds {
    /// The stack holding `len` bytes at `addr`, and the section it makes when it is an
    /// exception stack.
    fn stack_of(self, addr: u64, len: u64) -> Option<(u64, u64, Option<Section>)> {
        let inside = |(lo, hi): (u64, u64)| lo != 0 && addr >= lo && addr.checked_add(len).is_some_and(|end| end <= hi);
        match self {
            Self::Only(lo, hi) => inside((lo, hi)).then_some((lo, hi, None)),
            Self::ThisCpu => {
                let cpu = percpu::cpu_id();
                let task = sched::current();
                let stacks = [
                    (gdt::nmi_stack_range(cpu), Some(Section::Nmi)),
                    (gdt::double_fault_stack_range(cpu), Some(Section::DoubleFault)),
                    ((task.stack_base, task.stack_base + task.stack_size), None),
                ];
                stacks.into_iter().find(|&(range, _)| inside(range)).map(|((lo, hi), s)| (lo, hi, s))
            }
        }
    }
}

/// A call-trace walk: prints frames following frame pointers, switching sections at interrupt
/// frames.
struct Walk {
    level: u8,
    bounds: Bounds,
    section: Section,
    /// Hardware interrupts still on the stack below the walk (this CPU's nesting depth).
    irq_levels: u32,
}

impl Walk {
    /// A walk of this CPU's live stacks from `rbp`.
    fn this_cpu(level: u8, rbp: u64) -> Self {
        let irq_levels = percpu::this().irq_depth.load(core::sync::atomic::Ordering::Relaxed);
        let mut walk = Self { level, bounds: Bounds::ThisCpu, section: Section::Task, irq_levels };
        walk.section = match Bounds::ThisCpu.stack_of(rbp, 16) {
            Some((_, _, Some(section))) => section,
            _ => walk.task_or_irq(),
        };
        walk
    }

    fn task_or_irq(&self) -> Section {
        if self.irq_levels > 0 {
            Section::Irq
        } else {
            Section::Task
        }
    }

    fn enter(&mut self, section: Section) {
        self.section = section;
        crate::printk!(self.level, " <{}>", section.name());
    }

    fn leave(&self) {
        crate::printk!(self.level, " </{}>", self.section.name());
    }

    fn run(mut self, mut rbp: u64, first_return: Option<u64>) {
        let mut buf = [0u8; 256];
        crate::printk!(self.level, "Call Trace:");
        self.enter(self.section);
        if let Some(ret) = first_return {
            crate::printk!(self.level, " {}", symbolised_return(ret, &mut buf));
        }
        let interrupt_return = idt::interrupt_return();
        for _ in 0..MAX_FRAMES {
            let Some((_, hi, _)) = self.bounds.stack_of(rbp, 16).filter(|_| rbp.is_multiple_of(8)) else {
                break;
            };
            // SAFETY: `rbp` was checked to lie inside a mapped kernel stack with room for two words.
            let (next, ret) = unsafe { ((rbp as *const u64).read(), (rbp as *const u64).add(1).read()) };
            if !is_kernel_text(ret) {
                break; // the end of the chain, or a corrupted frame (Linux's __kernel_text_address)
            }
            let regs_at = rbp + idt::frame::REGS;
            let regs_fit = regs_at + core::mem::size_of::<PtRegs>() as u64 <= hi;
            if ret == interrupt_return && regs_fit {
                // SAFETY: both lie on the same stack as the frame (checked just above): the
                // vector and the registers `interrupt_common` pushed.
                let (vector, regs) =
                    unsafe { (((rbp + idt::frame::VECTOR) as *const u64).read(), (regs_at as *const PtRegs).read()) };
                self.interrupt_frame(vector, ret, &regs);
                rbp = regs.rbp;
                continue;
            }
            crate::printk!(self.level, " {}", symbolised_return(ret, &mut buf));
            if next <= rbp {
                break;
            }
            rbp = next;
        }
        self.leave();
    }

    /// An interrupt frame: the entry code's line, the interrupted registers, the interrupted
    /// function, and the section it runs in.
    fn interrupt_frame(&mut self, vector: u64, ret: u64, regs: &PtRegs) {
        let hardware = vector >= 32 && vector != u64::from(vector::SPURIOUS);
        let own_stack = matches!(vector as u8, vector::NMI | 8 | 18);
        if hardware && self.section == Section::Irq {
            self.irq_levels = self.irq_levels.saturating_sub(1);
        }
        let next =
            if own_stack || (hardware && self.section == Section::Irq) { self.task_or_irq() } else { self.section };
        if next != self.section || own_stack {
            self.leave();
            self.enter(next);
        }
        let mut buf = [0u8; 256];
        crate::printk!(self.level, " {}", symbolised_return(ret, &mut buf));
        show_regs_short(self.level, regs);
        crate::printk!(self.level, " {}", symbolised(regs.rip, &mut buf));
    }
}

/// The call trace of this CPU's live stacks from frame pointer `rbp` (a frame of the current
/// code or of registers this CPU saved), crossing NMI and interrupt frames.
pub fn print_trace_from(level: u8, rbp: u64) {
    Walk::this_cpu(level, rbp).run(rbp, None);
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
    print_trace_from(level, current_frame());
}

/// Linux's `show_regs()` of registers this CPU saved on entry to an interrupt or exception it
/// is handling: the registers, then the trace from here, through the interrupt frame into the
/// interrupted code.
#[inline(never)]
pub fn show_interrupted(level: u8, regs: &PtRegs) {
    print_cpu_header(level);
    show_regs(level, regs);
    print_trace_from(level, current_frame());
}

/// The trace of a task that is switched out: its frames start at the registers
/// `switch_context` pushed.
pub fn print_task_trace(level: u8, task: &sched::task::Task) {
    let rsp = task.saved_rsp();
    // switch_context pushed rbp first (5 words above the saved rsp), below its return address.
    let (lo, hi) = (task.stack_base, task.stack_base + task.stack_size);
    if rsp < lo || rsp + 7 * 8 > hi {
        return;
    }
    // SAFETY: both words lie inside the task's own stack (checked above).
    let (rbp, ret) = unsafe { (((rsp + 5 * 8) as *const u64).read(), ((rsp + 6 * 8) as *const u64).read()) };
    let walk = Walk { level, bounds: Bounds::Only(lo, hi), section: Section::Task, irq_levels: 0 };
    walk.run(rbp, Some(ret));
}
