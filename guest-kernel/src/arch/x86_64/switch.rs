//! The context switch: save callee-saved registers on the old stack, swap stack pointers,
//! restore them from the new one.

use core::arch::global_asm;

global_asm!(
    r#"
    .text
    .globl switch_context
    .type switch_context, @function
    /* switch_context(prev_rsp: *mut u64 [rdi], next_rsp: u64 [rsi]) */
switch_context:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    mov [rdi], rsp
    mov rsp, rsi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret
    .size switch_context, . - switch_context

    /* First code a new task runs: interrupts on, then the Rust entry; rbp = 0 ends backtraces. */
    .globl task_trampoline
    .type task_trampoline, @function
task_trampoline:
    xor ebp, ebp
    sti
    call task_entry
    ud2
    .size task_trampoline, . - task_trampoline
"#
);

extern "C" {
    /// Saves the current context into `*prev_rsp` and resumes the one saved at `next_rsp`.
    pub fn switch_context(prev_rsp: *mut u64, next_rsp: u64);
    fn task_trampoline();
}

/// Number of callee-saved registers `switch_context` pops before returning.
const SAVED_REGISTERS: usize = 6;

/// The VMCOREINFO keys of a switched-out task's stack, which has the layout of Linux's
/// `struct inactive_task_frame` (r15, r14, r13, r12, bx, bp, ret_addr from the saved stack
/// pointer up): where `switch_context` saved rbp and its return address, so a dump analyser
/// walks a sleeping task's frames.
pub fn write_vmcoreinfo(w: &mut dyn core::fmt::Write) -> core::fmt::Result {
    writeln!(w, "OFFSET(inactive_task_frame.bp)={}", (SAVED_REGISTERS - 1) * 8)?;
    writeln!(w, "OFFSET(inactive_task_frame.ret_addr)={}", SAVED_REGISTERS * 8)
}

/// Prepares a fresh stack so that switching to it starts `task_trampoline`; returns the
/// initial saved stack pointer.
pub fn initial_stack(stack_top: u64) -> u64 {
    // Stack at entry to task_trampoline: 16-byte aligned minus the return-address slot, as if
    // called. Layout (low to high): 6 zeroed registers, return address, padding.
    let top = stack_top & !0xf;
    let ret_slot = top - 16;
    let rsp = ret_slot - (SAVED_REGISTERS as u64) * 8;
    // SAFETY: the caller passes the top of a freshly allocated stack it owns; the slots written
    // lie within its top 64 bytes.
    unsafe {
        (ret_slot as *mut u64).write(task_trampoline as *const () as u64);
        for i in 0..SAVED_REGISTERS {
            (rsp as *mut u64).add(i).write(0);
        }
    }
    rsp
}
