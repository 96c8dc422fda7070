//! The NMI handler: the panic stop, NMI backtraces, and Linux's unknown-NMI path
//! (`arch/x86/kernel/nmi.c`).

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crashvisor_abi::platform::{Detector, EventKind, NMI_REASON_OPERATOR, NMI_REASON_PORT, NMI_REASON_WATCHDOG};

use crate::arch::cpu;
use crate::arch::idt::PtRegs;
use crate::arch::percpu;
use crate::printk::KERN_INFO;
use crate::{dumpstack, platform, smp};

/// `kernel.unknown_nmi_panic`.
pub static UNKNOWN_NMI_PANIC: AtomicBool = AtomicBool::new(false);
/// `kernel.panic_on_unrecovered_nmi`.
pub static PANIC_ON_UNRECOVERED_NMI: AtomicBool = AtomicBool::new(false);
/// `kernel.panic_on_io_nmi`.
pub static PANIC_ON_IO_NMI: AtomicBool = AtomicBool::new(false);

/// CPUs asked for an NMI backtrace (bit per CPU).
static BACKTRACE_MASK: AtomicU64 = AtomicU64::new(0);

/// Reason-port bits (Linux's `NMI_REASON_SERR` and `NMI_REASON_IOCHK`).
const NMI_REASON_SERR: u8 = 0x80;
const NMI_REASON_IOCHK: u8 = 0x40;

/// How long a CPU that asked for NMI backtraces waits for them, in ms (Linux's
/// `nmi_trigger_cpumask_backtrace`: up to 10 seconds).
const BACKTRACE_WAIT_MS: u64 = 10_000;

/// Asks `cpu` to print its registers and stack from NMI context, and waits until it has (at
/// most `BACKTRACE_WAIT_MS`), so the backtrace comes before what the asker prints next.
pub fn request_backtrace(cpu: usize) {
    send_backtrace_nmi(cpu);
    wait_for_backtraces(1 << cpu);
}

fn send_backtrace_nmi(cpu: usize) {
    BACKTRACE_MASK.fetch_or(1 << cpu, Ordering::SeqCst);
    crate::arch::apic::send_nmi(percpu::of(cpu).apic_id.load(Ordering::Relaxed));
}

/// Linux's wait in `nmi_trigger_cpumask_backtrace`: 1 ms at a time, touching this CPU's
/// soft-lockup watchdog, until the CPUs of `mask` have printed.
fn wait_for_backtraces(mask: u64) {
    let me = percpu::cpu_id();
    for _ in 0..BACKTRACE_WAIT_MS {
        if BACKTRACE_MASK.load(Ordering::SeqCst) & mask == 0 {
            return;
        }
        crate::time::delay_ns(1_000_000);
        crate::watchdog::softlockup::touch(me);
    }
}

/// Asks every other online CPU for an NMI backtrace (Linux's
/// `trigger_allbutcpu_cpu_backtrace`).
pub fn backtrace_all_but_self() {
    let me = percpu::cpu_id();
    let others: alloc::vec::Vec<usize> =
        (0..smp::possible_cpus()).filter(|&c| c != me && percpu::of(c).online.load(Ordering::Relaxed)).collect();
    if others.is_empty() {
        return;
    }
    crate::printk!(KERN_INFO, "Sending NMI from CPU {} to CPUs {:?}:", me, others);
    let mask = others.iter().fold(0, |mask, &cpu| mask | 1 << cpu);
    for cpu in others {
        send_backtrace_nmi(cpu);
    }
    wait_for_backtraces(mask);
}

/// Called for vector 2 with the interrupted registers. Like Linux's `default_do_nmi`: the
/// local handlers first (the panic stop, NMI backtraces, the host's watchdog tick), and only
/// an NMI none of them claims goes down the unknown-NMI path.
pub fn handle(regs: &mut PtRegs) {
    let cpu = percpu::cpu_id();
    if crate::kexec::crash::in_shootdown() {
        crate::kexec::crash::shootdown_this_cpu(regs);
    }
    if smp::stop_requested() {
        smp::stop_this_cpu();
    }
    let mut claimed = false;
    if BACKTRACE_MASK.load(Ordering::SeqCst) & (1 << cpu) != 0 {
        crate::printk!(KERN_INFO, "NMI backtrace for cpu {}", cpu);
        dumpstack::show_interrupted(KERN_INFO, regs);
        // Cleared once printed: the asker waits for it (Linux's nmi_cpu_backtrace).
        BACKTRACE_MASK.fetch_and(!(1 << cpu), Ordering::SeqCst);
        claimed = true;
    }
    let reason = platform::nmi_reason();
    if reason & NMI_REASON_WATCHDOG != 0 {
        crate::watchdog::hardlockup::nmi_check(regs);
        claimed = true;
    }
    if reason & NMI_REASON_OPERATOR != 0 || !claimed {
        unknown_nmi(regs, cpu);
    }
}

/// Linux's `unknown_nmi_error` and the port-0x61 reasons before it (`default_do_nmi`).
fn unknown_nmi(regs: &PtRegs, cpu: usize) {
    let reason = cpu::inb(NMI_REASON_PORT);
    let panics = |flag: &AtomicBool| flag.load(Ordering::Relaxed);
    if reason & NMI_REASON_SERR != 0 {
        crate::pr_emerg!("NMI: PCI system error (SERR) for reason {:02x} on CPU {}.", reason, cpu);
        if panics(&PANIC_ON_UNRECOVERED_NMI) {
            crate::panic::nmi_panic(Detector::UnknownNmi, format_args!("NMI: Not continuing"));
        }
    } else if reason & NMI_REASON_IOCHK != 0 {
        crate::pr_emerg!("NMI: IOCK error (debug interrupt?) for reason {:02x} on CPU {}.", reason, cpu);
        dumpstack::show_regs(crate::printk::KERN_EMERG, regs);
        if panics(&PANIC_ON_IO_NMI) {
            crate::panic::nmi_panic(Detector::UnknownNmi, format_args!("NMI IOCK error: Not continuing"));
        }
        return;
    } else {
        crate::pr_emerg!("Uhhuh. NMI received for unknown reason {:02x} on CPU {}.", reason, cpu);
        platform::event(EventKind::UnknownNmi, cpu, u16::from(reason));
        crate::kexec::crash::set_regs(regs);
        if panics(&UNKNOWN_NMI_PANIC) || panics(&PANIC_ON_UNRECOVERED_NMI) {
            crate::panic::nmi_panic(Detector::UnknownNmi, format_args!("NMI: Not continuing"));
        }
    }
    crate::pr_emerg!("Dazed and confused, but trying to continue");
}
