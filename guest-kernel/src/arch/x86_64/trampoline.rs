//! The real-mode start-up code of application processors, copied below 1 MiB at boot.
//!
//! An AP starts at `AP_TRAMPOLINE_GPA` in real mode after INIT-SIPI-SIPI. The trampoline loads
//! a flat GDT, turns on PAE, long mode and paging with the kernel's page table (which keeps the
//! low 2 MiB identity-mapped), and jumps to the kernel's `ap_start` with its stack and CPU
//! number, all read from the data slots the boot CPU fills in before each start.

use core::arch::global_asm;

use crashvisor_abi::layout::AP_TRAMPOLINE_GPA;

global_asm!(
    r#"
    .section .rodata
    .balign 16
    .globl ap_trampoline_start
ap_trampoline_start:
    .code16
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    lgdtl (tr_gdt_desc - ap_trampoline_start)
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl (tr_cr3 - ap_trampoline_start), %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x900, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80010001, %eax
    movl %eax, %cr0
    .byte 0x66, 0xea
    .long {base} + (tr_long - ap_trampoline_start)
    .word 0x10
    .code64
tr_long:
    movl $0x18, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movq ({base} + (tr_stack - ap_trampoline_start)), %rsp
    movq ({base} + (tr_cpu - ap_trampoline_start)), %rdi
    movq ({base} + (tr_entry - ap_trampoline_start)), %rax
    xorl %ebp, %ebp
    jmp *%rax

    .balign 8
tr_gdt:
    .quad 0
    .quad 0x00cf9b000000ffff
    .quad 0x00af9b000000ffff
    .quad 0x00cf93000000ffff
tr_gdt_desc:
    .word 31
    .long {base} + (tr_gdt - ap_trampoline_start)
    .balign 8
    .globl ap_trampoline_cr3
ap_trampoline_cr3:
tr_cr3: .quad 0
tr_stack: .quad 0
tr_cpu: .quad 0
tr_entry: .quad 0
    .globl ap_trampoline_end
ap_trampoline_end:
    .text
"#,
    base = const AP_TRAMPOLINE_GPA,
    options(att_syntax)
);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static ap_trampoline_cr3: u8;
}

/// The trampoline's code and data, to copy to `AP_TRAMPOLINE_GPA`.
pub fn image() -> &'static [u8] {
    // SAFETY: the two symbols bound the trampoline in .rodata.
    unsafe {
        let start = &ap_trampoline_start as *const u8;
        let end = &ap_trampoline_end as *const u8;
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// Offset of the data slots (cr3, stack, cpu, entry: four u64) within the image.
pub fn data_offset() -> usize {
    // SAFETY: only addresses of the symbols are used.
    unsafe { (&ap_trampoline_cr3 as *const u8 as usize) - (&ap_trampoline_start as *const u8 as usize) }
}
