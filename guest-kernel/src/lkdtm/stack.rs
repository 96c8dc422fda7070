//! LKDTM's stack types (from `bugs.c`): exhausting the stack, smashing a canary, the stack
//! guard pages, the stack offset, and a double fault.
//!
//! `CORRUPT_STACK` needs a stack protector, which Rust does not have for this target: its two
//! functions are written the way `-fstack-protector-strong` compiles them (a canary copied
//! from `__stack_chk_guard` between the local array and the saved frame pointer, compared
//! before returning, `__stack_chk_fail` when it changed).

use core::arch::global_asm;
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

use super::{lkdtm_err, lkdtm_info};
use crate::arch::{cpu, vmap};
use crate::sched;
use crate::sync::irq;

/// LKDTM's `REC_STACK_SIZE`: `CONFIG_FRAME_WARN / 2`.
const REC_STACK_SIZE: usize = 1024;
/// LKDTM's default recursion depth: twice what fills the stack.
const REC_NUM_DEFAULT: i32 = ((sched::STACK_SIZE / REC_STACK_SIZE) * 2) as i32;

static RECUR_COUNT: AtomicI32 = AtomicI32::new(REC_NUM_DEFAULT);

/// The stack canary (Linux keeps one per task; this kernel has one, for the functions that
/// carry a canary). Set at init, read-only afterwards.
#[no_mangle]
#[link_section = ".data..ro_after_init"]
#[allow(non_upper_case_globals)] // the symbol the canary code reads
static __stack_chk_guard: AtomicU64 = AtomicU64::new(0);

/// Picks the canary (Linux's `boot_init_stack_canary`). During init.
pub(super) fn init() {
    let tsc = cpu::rdtsc();
    // A canary with a zero low byte stops string overflows at it, as Linux's does.
    __stack_chk_guard.store((tsc.rotate_left(29) ^ 0x5a17_c0de_d00d_f00d) & !0xff, Ordering::Relaxed);
}

/// `recur_count`.
pub(super) fn recur_count() -> i32 {
    RECUR_COUNT.load(Ordering::Relaxed)
}

/// Sets `recur_count` (a negative value means the default).
pub(super) fn set_recur_count(depth: i32) {
    RECUR_COUNT.store(if depth < 0 { REC_NUM_DEFAULT } else { depth }, Ordering::Relaxed);
}

/// Linux's `recursive_loop`: a 1 KiB frame per level, written and read so it cannot be
/// optimised away, and no tail call.
#[inline(never)]
fn recursive_loop(remaining: i32) -> i32 {
    let mut buf = [0u8; REC_STACK_SIZE];
    let frame = core::hint::black_box(&mut buf);
    frame.fill(remaining as u8);
    let ret = if remaining == 0 {
        0
    } else {
        // C's `(int)buf[...]` of a `char` (signed on x86).
        recursive_loop(i32::from(frame[remaining as usize % REC_STACK_SIZE] as i8) - 1)
    };
    core::hint::black_box(&mut buf).fill(0);
    core::hint::black_box(ret)
}

/// Recursion until the guard page below the stack stops it.
pub fn lkdtm_EXHAUST_STACK() {
    let depth = recur_count();
    lkdtm_info!("Calling function with {} frame size to depth {} ...", REC_STACK_SIZE, depth);
    recursive_loop(depth);
    lkdtm_info!("FAIL: survived without exhausting stack?!");
}

global_asm!(
    r#"
    .macro PROTECTED_FRAME name
    .text
    .globl \name
    .type \name, @function
/* void \name(void (*fill)(void *)): an 8-byte local under a canary; `fill` writes into it. */
\name:
    push rbp
    mov rbp, rsp
    sub rsp, 16
    mov rax, qword ptr [rip + __stack_chk_guard]
    mov qword ptr [rbp - 8], rax
    mov rax, rdi
    lea rdi, [rbp - 16]
    call rax
    mov rax, qword ptr [rbp - 8]
    cmp rax, qword ptr [rip + __stack_chk_guard]
    jne 1f
    leave
    ret
1:  call __stack_chk_fail
    ud2
    .size \name, . - \name
    .endm

    PROTECTED_FRAME lkdtm_CORRUPT_STACK_frame
    PROTECTED_FRAME lkdtm_CORRUPT_STACK_STRONG_frame
"#
);

extern "C" {
    fn lkdtm_CORRUPT_STACK_frame(fill: extern "C" fn(*mut u8));
    fn lkdtm_CORRUPT_STACK_STRONG_frame(fill: extern "C" fn(*mut u8));
}

/// Linux's `__lkdtm_CORRUPT_STACK`: 64 bytes of `0xff` over an 8-byte local, through the
/// canary, the saved frame pointer and the return address.
#[inline(never)]
fn __lkdtm_CORRUPT_STACK(stack: *mut u8) {
    // SAFETY: deliberately smashes the caller's frame; the caller's canary check catches it
    // before anything returns through the overwritten words.
    unsafe { core::ptr::write_bytes(core::hint::black_box(stack), 0xff, 64) };
}

extern "C" fn corrupt_char_array(stack: *mut u8) {
    lkdtm_info!("Corrupting stack containing char array ...");
    __lkdtm_CORRUPT_STACK(stack);
}

extern "C" fn corrupt_union(stack: *mut u8) {
    lkdtm_info!("Corrupting stack containing union ...");
    __lkdtm_CORRUPT_STACK(stack);
}

/// An 8-byte `char` array smashed: the canary catches it.
pub fn lkdtm_CORRUPT_STACK() {
    // SAFETY: the frame function only calls `fill` with its own local; it does not return (the
    // canary is smashed, so it calls `__stack_chk_fail`).
    unsafe { lkdtm_CORRUPT_STACK_frame(corrupt_char_array) };
}

/// The same over a union (a canary only under `-fstack-protector-strong`).
pub fn lkdtm_CORRUPT_STACK_STRONG() {
    // SAFETY: as `lkdtm_CORRUPT_STACK`.
    unsafe { lkdtm_CORRUPT_STACK_STRONG_frame(corrupt_union) };
}

/// Linux's `__stack_chk_fail`: a function's canary changed.
#[no_mangle]
#[inline(never)]
extern "C" fn __stack_chk_fail() -> ! {
    let caller: u64;
    // SAFETY: with frame pointers forced on, `[rbp + 8]` is this function's return address.
    unsafe { core::arch::asm!("mov {}, [rbp + 8]", out(reg) caller, options(nostack, readonly)) };
    let mut buf = [0u8; 256];
    let table = crate::kallsyms::table();
    let site = crashvisor_klib::symbols::format_return_address(table.as_ref(), caller, &mut buf);
    let site = core::str::from_utf8(site).unwrap_or("?");
    crate::panic::panic(format_args!("stack-protector: Kernel stack is corrupted in: {site}"))
}

static STACK_PID: AtomicU32 = AtomicU32::new(0);
static STACK_ADDR: AtomicU64 = AtomicU64::new(0);

/// The stack offset of a local from the first run of this pid (no `randomize_kstack_offset`
/// here, so 0).
pub fn lkdtm_REPORT_STACK() {
    let magic = 0u64;
    let here = core::hint::black_box(&magic) as *const u64 as u64;
    let pid = sched::current().pid;
    if pid != STACK_PID.load(Ordering::Relaxed) {
        lkdtm_info!("Starting stack offset tracking for pid {}", pid);
        STACK_PID.store(pid, Ordering::Relaxed);
        STACK_ADDR.store(here, Ordering::Relaxed);
    }
    lkdtm_info!("Stack offset: {}", STACK_ADDR.load(Ordering::Relaxed).wrapping_sub(here) as i32);
}

/// Reads the byte at `address`.
fn read_byte(address: u64) -> u8 {
    // SAFETY: deliberately reads outside the task's stack; a fault ends the task (an oops).
    unsafe { (address as *const u8).read_volatile() }
}

/// Reads the byte below the task's stack: its guard page.
pub fn lkdtm_STACK_GUARD_PAGE_LEADING() {
    let stack = sched::current().stack_base;
    lkdtm_info!("attempting bad read from page below current stack");
    let byte = read_byte(stack - 1);
    lkdtm_err!("FAIL: accessed page before stack! (byte: {:x})", byte);
}

/// Reads the byte above the task's stack: unmapped too.
pub fn lkdtm_STACK_GUARD_PAGE_TRAILING() {
    let task = sched::current();
    lkdtm_info!("attempting bad read from page above current stack");
    let byte = read_byte(task.stack_base + task.stack_size);
    lkdtm_err!("FAIL: accessed page after stack! (byte: {:x})", byte);
}

/// A page fault that cannot be delivered: with the stack pointer on a page that was never
/// mapped, pushing the fault's frame faults again, which is a double fault (x86_64's way; the
/// ia32 segment-limit trick of Linux's test has no 64-bit form).
pub fn lkdtm_DOUBLE_FAULT() {
    let hole = vmap::unmapped_page() + 4096;
    irq::disable();
    // SAFETY: deliberately moves the stack pointer onto an unmapped page; the push faults, the
    // fault cannot be delivered on that stack, and the double-fault handler (on its own IST
    // stack) reports it and never returns here.
    unsafe { core::arch::asm!("mov rsp, {hole}", "push rax", hole = in(reg) hole, options(noreturn)) };
}
