//! The NMI handler: the panic stop, NMI backtraces, and Linux's unknown-NMI path
//! (`arch/x86/kernel/nmi.c`).

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crashvisor_abi::platform::NMI_REASON_PORT;

use crate::arch::cpu;
use crate::arch::idt::PtRegs;
use crate::arch::percpu::{self, MAX_CPUS};
use crate::printk::KERN_INFO;
use crate::{dumpstack, smp};

/// `kernel.unknown_nmi_panic`.
pub static UNKNOWN_NMI_PANIC: AtomicBool = AtomicBool::new(false);
/// `kernel.panic_on_unrecovered_nmi`.
pub static PANIC_ON_UNRECOVERED_NMI: AtomicBool = AtomicBool::new(false);

/// CPUs asked for an NMI backtrace (bit per CPU).
static BACKTRACE_MASK: AtomicU64 = AtomicU64::new(0);
/// NMIs taken per CPU.
static NMI_COUNT: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Reason-port bits (Linux's `NMI_REASON_SERR` and `NMI_REASON_IOCHK`).
const NMI_REASON_SERR: u8 = 0x80;
const NMI_REASON_IOCHK: u8 = 0x40;

/// Asks `cpu` to print its registers and stack from NMI context.
pub fn request_backtrace(cpu: usize) {
    BACKTRACE_MASK.fetch_or(1 << cpu, Ordering::SeqCst);
    crate::arch::apic::send_nmi(percpu::of(cpu).apic_id.load(Ordering::Relaxed));
}

/// Called for vector 2 with the interrupted registers.
pub fn handle(regs: &mut PtRegs) {
    let cpu = percpu::cpu_id();
    NMI_COUNT[cpu].fetch_add(1, Ordering::Relaxed);
    if smp::stop_requested() {
        smp::stop_this_cpu();
    }
    if BACKTRACE_MASK.fetch_and(!(1 << cpu), Ordering::SeqCst) & (1 << cpu) != 0 {
        crate::printk!(KERN_INFO, "NMI backtrace for cpu {}", cpu);
        dumpstack::print_cpu_header(KERN_INFO);
        dumpstack::show_regs(KERN_INFO, regs);
        dumpstack::print_trace_from(KERN_INFO, regs.rbp, None, None);
        return;
    }
    unknown_nmi(regs, cpu);
}

fn unknown_nmi(_regs: &PtRegs, cpu: usize) {
    let reason = cpu::inb(NMI_REASON_PORT);
    if reason & NMI_REASON_SERR != 0 {
        crate::pr_emerg!(
            "NMI: PCI system error (SERR) for reason {:02x} on CPU {}.",
            reason,
            cpu
        );
    } else if reason & NMI_REASON_IOCHK != 0 {
        crate::pr_emerg!(
            "NMI: IOCK error (debug interrupt?) for reason {:02x} on CPU {}.",
            reason,
            cpu
        );
    } else {
        crate::pr_emerg!(
            "Uhhuh. NMI received for unknown reason {:02x} on CPU {}.",
            reason,
            cpu
        );
    }
    if UNKNOWN_NMI_PANIC.load(Ordering::Relaxed) || PANIC_ON_UNRECOVERED_NMI.load(Ordering::Relaxed)
    {
        crate::panic::panic(format_args!("NMI: Not continuing"));
    }
    crate::pr_emerg!("Dazed and confused, but trying to continue");
}
