//! Interrupt masking on the local CPU.

use core::arch::asm;

const RFLAGS_IF: u64 = 1 << 9;

/// Whether interrupts are enabled on this CPU.
#[inline(always)]
pub fn enabled() -> bool {
    let flags: u64;
    // SAFETY: reading RFLAGS has no side effects.
    unsafe { asm!("pushfq; pop {}", out(reg) flags, options(nomem, preserves_flags)) };
    flags & RFLAGS_IF != 0
}

/// Disables interrupts and returns whether they were enabled (Linux's `local_irq_save`).
#[inline(always)]
pub fn save() -> bool {
    let was = enabled();
    disable();
    was
}

/// Re-enables interrupts if `was_enabled` (Linux's `local_irq_restore`).
#[inline(always)]
pub fn restore(was_enabled: bool) {
    if was_enabled {
        enable();
    }
}

/// Disables interrupts.
#[inline(always)]
pub fn disable() {
    // SAFETY: masking interrupts cannot break memory safety; callers pair it with `restore`.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

/// Enables interrupts.
#[inline(always)]
pub fn enable() {
    // SAFETY: the IDT is loaded before any caller can run, so interrupts have handlers.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

/// Runs `f` with interrupts disabled on this CPU.
#[inline(always)]
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    let was = save();
    let r = f();
    restore(was);
    r
}
