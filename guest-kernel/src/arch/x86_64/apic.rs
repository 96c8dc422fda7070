//! The local APIC in x2APIC mode (MSR access only) and the I/O APIC.

use core::sync::atomic::{AtomicBool, Ordering};

use crashvisor_abi::layout::{IOAPIC_GPA, PAGE_OFFSET};

use super::cpu;
use super::idt::vector;

const MSR_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;
const MSR_X2APIC_ID: u32 = 0x802;
const MSR_X2APIC_EOI: u32 = 0x80b;
const MSR_X2APIC_SVR: u32 = 0x80f;
const MSR_X2APIC_ICR: u32 = 0x830;
const MSR_X2APIC_LVT_TIMER: u32 = 0x832;
const MSR_X2APIC_LVT_LINT0: u32 = 0x835;
const MSR_X2APIC_LVT_LINT1: u32 = 0x836;
const MSR_X2APIC_LVT_ERROR: u32 = 0x837;
const MSR_X2APIC_TIMER_INITIAL: u32 = 0x838;
const MSR_X2APIC_TIMER_DIVIDE: u32 = 0x83e;
const MSR_TSC_DEADLINE: u32 = 0x6e0;

const SVR_ENABLE: u64 = 1 << 8;
const LVT_MASKED: u64 = 1 << 16;
const LVT_TIMER_TSC_DEADLINE: u64 = 0b10 << 17;
const ICR_DELIVERY_NMI: u64 = 0b100 << 8;
const ICR_DELIVERY_INIT: u64 = 0b101 << 8;
const ICR_DELIVERY_STARTUP: u64 = 0b110 << 8;
const ICR_LEVEL_ASSERT: u64 = 1 << 14;
const ICR_ALL_EXCLUDING_SELF: u64 = 0b11 << 18;

/// Whether the TSC-deadline timer mode is used (else one-shot counts at the APIC bus rate).
static TSC_DEADLINE: AtomicBool = AtomicBool::new(false);

/// Whether this CPU supports x2APIC mode.
pub fn x2apic_supported() -> bool {
    cpu::cpuid(1, 0).ecx & (1 << 21) != 0
}

/// Enables this CPU's local APIC in x2APIC mode with the spurious vector, LINT1 as NMI.
pub fn init_local() {
    let base = cpu::rdmsr(MSR_APIC_BASE);
    // SAFETY: switching the APIC to x2APIC mode (enable then EXTD, as the SDM requires) and
    // programming its LVTs only changes interrupt delivery to this CPU.
    unsafe {
        cpu::wrmsr(MSR_APIC_BASE, base | APIC_BASE_ENABLE);
        cpu::wrmsr(MSR_APIC_BASE, base | APIC_BASE_ENABLE | APIC_BASE_X2APIC);
        cpu::wrmsr(MSR_X2APIC_SVR, SVR_ENABLE | u64::from(vector::SPURIOUS));
        cpu::wrmsr(MSR_X2APIC_LVT_LINT0, LVT_MASKED);
        cpu::wrmsr(MSR_X2APIC_LVT_LINT1, 0b100 << 8); // NMI
        cpu::wrmsr(MSR_X2APIC_LVT_ERROR, u64::from(vector::ERROR_APIC));
    }
    clear_in_service();
    let deadline = cpu::cpuid(1, 0).ecx & (1 << 24) != 0;
    TSC_DEADLINE.store(deadline, Ordering::Relaxed);
    let lvt = if deadline { LVT_TIMER_TSC_DEADLINE } else { 0 } | u64::from(vector::LOCAL_TIMER);
    // SAFETY: programs this CPU's timer LVT to the timer vector, whose handler exists.
    unsafe {
        cpu::wrmsr(MSR_X2APIC_TIMER_DIVIDE, 0b1011); // divide by 1
        cpu::wrmsr(MSR_X2APIC_LVT_TIMER, lvt);
    }
}

/// Linux's `lapic_shutdown` (`disable_local_APIC`) before kexec: masks every LVT and
/// software-disables the local APIC. With LINT1 masked no external NMI (the host's operator
/// and watchdog NMIs arrive there) reaches this CPU while it jumps into the next kernel with a
/// stale IDT, nor while that kernel boots, until its `init_local` unmasks LINT1 again.
pub fn shutdown_local() {
    // SAFETY: masking LVTs and clearing the APIC's software enable only stops interrupt
    // delivery to this CPU, which is about to leave this kernel.
    unsafe {
        for lvt in [MSR_X2APIC_LVT_TIMER, MSR_X2APIC_LVT_LINT0, MSR_X2APIC_LVT_LINT1, MSR_X2APIC_LVT_ERROR] {
            cpu::wrmsr(lvt, LVT_MASKED);
        }
        cpu::wrmsr(MSR_X2APIC_SVR, u64::from(vector::SPURIOUS));
    }
}

/// x2APIC in-service register, 8 MSRs of 32 vectors each.
const MSR_X2APIC_ISR0: u32 = 0x810;

/// Acknowledges interrupts a previous kernel left in service (it may have jumped here from an
/// interrupt handler, as a crashed kernel does), so none blocks lower-priority vectors.
fn clear_in_service() {
    for _ in 0..256 {
        if (0..8).all(|i| cpu::rdmsr(MSR_X2APIC_ISR0 + i) == 0) {
            return;
        }
        eoi();
    }
}

/// This CPU's x2APIC id.
pub fn id() -> u32 {
    cpu::rdmsr(MSR_X2APIC_ID) as u32
}

/// Signals end of interrupt.
#[inline(always)]
pub fn eoi() {
    // SAFETY: writing 0 to the EOI register acknowledges the in-service interrupt.
    unsafe { cpu::wrmsr(MSR_X2APIC_EOI, 0) };
}

/// Arms this CPU's timer to fire at TSC value `deadline` (0 disarms it).
pub fn set_timer_deadline(deadline_tsc: u64, now_tsc: u64, apic_ticks_per_tsc_shift: (u64, u32)) {
    if TSC_DEADLINE.load(Ordering::Relaxed) {
        // SAFETY: the deadline MSR only schedules a timer interrupt on this CPU.
        unsafe { cpu::wrmsr(MSR_TSC_DEADLINE, deadline_tsc) };
    } else {
        let delta = deadline_tsc.saturating_sub(now_tsc).max(1);
        let (mult, shift) = apic_ticks_per_tsc_shift;
        let count = ((u128::from(delta) * u128::from(mult)) >> shift).clamp(1, u128::from(u32::MAX)) as u64;
        let count = if deadline_tsc == 0 { 0 } else { count };
        // SAFETY: the initial-count register only schedules a timer interrupt on this CPU.
        unsafe { cpu::wrmsr(MSR_X2APIC_TIMER_INITIAL, count) };
    }
}

fn send_icr(apic_id: u32, low: u64) {
    // SAFETY: an ICR write sends an IPI; the kernel handles every vector it sends.
    unsafe { cpu::wrmsr(MSR_X2APIC_ICR, (u64::from(apic_id) << 32) | low) };
}

/// Sends a fixed IPI with `vector` to the CPU with `apic_id`.
pub fn send_ipi(apic_id: u32, vector: u8) {
    send_icr(apic_id, u64::from(vector));
}

/// Sends an NMI to the CPU with `apic_id`.
pub fn send_nmi(apic_id: u32) {
    send_icr(apic_id, ICR_DELIVERY_NMI);
}

/// Sends an NMI to every CPU but this one.
pub fn send_nmi_all_but_self() {
    send_icr(0, ICR_DELIVERY_NMI | ICR_ALL_EXCLUDING_SELF);
}

/// Sends INIT to the CPU with `apic_id`.
pub fn send_init(apic_id: u32) {
    send_icr(apic_id, ICR_DELIVERY_INIT | ICR_LEVEL_ASSERT);
}

/// Sends a start-up IPI: the CPU starts in real mode at `page << 12`.
pub fn send_startup(apic_id: u32, page: u8) {
    send_icr(apic_id, ICR_DELIVERY_STARTUP | u64::from(page));
}

const IOAPIC_REGSEL: u64 = 0x00;
const IOAPIC_WINDOW: u64 = 0x10;

fn ioapic_write(reg: u32, value: u32) {
    let base = (PAGE_OFFSET + IOAPIC_GPA) as *mut u32;
    // SAFETY: the direct map covers the I/O APIC's page (the low 4 GiB are always mapped); the
    // select/window pair is the documented access protocol, used only by the boot CPU.
    unsafe {
        base.byte_add(IOAPIC_REGSEL as usize).write_volatile(reg);
        base.byte_add(IOAPIC_WINDOW as usize).write_volatile(value);
    }
}

/// Routes ISA IRQ `irq` (edge, active high) to `vector` on the CPU with `apic_id`.
pub fn route_isa_irq(irq: u8, vector: u8, apic_id: u32) {
    let reg = 0x10 + 2 * u32::from(irq);
    ioapic_write(reg + 1, apic_id << 24);
    ioapic_write(reg, u32::from(vector));
}

/// Masks the legacy 8259 PICs: all interrupts go through the I/O APIC.
pub fn disable_legacy_pic() {
    cpu::outb(0x21, 0xff);
    cpu::outb(0xa1, 0xff);
}
