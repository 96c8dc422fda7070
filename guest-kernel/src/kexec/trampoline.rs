//! The exec trampoline: from this kernel's long mode to the next kernel's 32-bit PVH entry
//! (what Linux's `relocate_kernel` and purgatory do for a bzImage, for our PVH image).
//!
//! It is copied to `KEXEC_TRAMPOLINE_GPA` and run there through the identity map of the low
//! 2 MiB: it loads its own GDT, drops to 32-bit compatibility mode, turns paging and long mode
//! off, and jumps to the entry with `ebx` = the new `hvm_start_info`, exactly the state PVH
//! prescribes.

use core::arch::global_asm;

use crashvisor_abi::layout::KEXEC_TRAMPOLINE_GPA;

global_asm!(
    r#"
    .section .rodata
    .balign 16
    .globl kexec_trampoline_start
kexec_trampoline_start:
    .code64
    /* rdi = 32-bit entry, rsi = hvm_start_info; running at the identity address */
    cli
    leaq kt_gdt(%rip), %rax
    movq %rax, kt_gdt_desc+2(%rip)
    lgdt kt_gdt_desc(%rip)
    leaq 1f(%rip), %rax
    pushq $0x08
    pushq %rax
    lretq
    .code32
1:  movl $0x18, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %eax, %fs
    movl %eax, %gs
    movl %cr0, %eax
    andl $0x7fffffff, %eax        /* paging off: long mode becomes inactive */
    movl %eax, %cr0
    movl $0xc0000080, %ecx
    rdmsr
    andl $0xfffffeff, %eax        /* EFER.LME off */
    wrmsr
    xorl %eax, %eax
    movl %eax, %cr4
    movl %esi, %ebx
    jmp *%edi

    .balign 8
kt_gdt:
    .quad 0
    .quad 0x00cf9b000000ffff      /* 0x08: 32-bit code */
    .quad 0x00af9b000000ffff      /* 0x10: 64-bit code */
    .quad 0x00cf93000000ffff      /* 0x18: data */
kt_gdt_desc:
    .word 31
    .quad 0
    .globl kexec_trampoline_end
kexec_trampoline_end:
    .code64
    .text
"#,
    options(att_syntax)
);

extern "C" {
    static kexec_trampoline_start: u8;
    static kexec_trampoline_end: u8;
}

/// The trampoline's code, to copy to `KEXEC_TRAMPOLINE_GPA`.
pub fn image() -> &'static [u8] {
    // SAFETY: the two symbols bound the trampoline in .rodata.
    unsafe {
        let start = &kexec_trampoline_start as *const u8;
        let end = &kexec_trampoline_end as *const u8;
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// Copies the trampoline into place and jumps to it: never returns. The caller has stopped
/// the other CPUs, disabled interrupts, restored the identity map of the low 2 MiB and written
/// the next kernel's boot data.
///
/// # Safety
/// `entry` must be the 32-bit PVH entry of a kernel image loaded in memory that nothing of
/// this kernel needs any more, and `start_info` the physical address of its boot data.
pub unsafe fn jump(entry: u32, start_info: u32) -> ! {
    let code = image();
    let target = crate::mm::phys_to_virt(KEXEC_TRAMPOLINE_GPA) as *mut u8;
    // SAFETY: the trampoline page lies in the low area every kernel reserves; the copy is
    // smaller than a page.
    unsafe { core::ptr::copy_nonoverlapping(code.as_ptr(), target, code.len()) };
    // SAFETY: the identity map makes KEXEC_TRAMPOLINE_GPA executable at its physical address;
    // the trampoline never returns.
    unsafe {
        core::arch::asm!("jmp {tramp}", tramp = in(reg) KEXEC_TRAMPOLINE_GPA, in("rdi") u64::from(entry),
                         in("rsi") u64::from(start_info), options(noreturn))
    }
}
