//! The PVH entry: 32-bit protected mode → long mode → the high-half kernel.
//!
//! The VMM (or QEMU) enters `pvh_start32` in 32-bit protected mode with paging off and `ebx`
//! pointing at `hvm_start_info`. The code is position independent: it finds where it was loaded
//! (`phys_base`, as in Linux), maps the kernel image at `KERNEL_MAP + (phys - phys_base)` with
//! 2 MiB pages, identity-maps the first 2 MiB (boot structures, AP trampoline) and the 2 MiB
//! holding this code, enables long mode and jumps to `start64` at its link address, which calls
//! `kernel_main(start_info_phys, phys_base)`.
//!
//! Every instruction here may be emulated (see DESIGN.md), so the path is short: no stack
//! zeroing, no copying, only the page-table entries that are needed.

use core::arch::global_asm;

use crashvisor_abi::platform::{Progress, PLATFORM_PROGRESS};

/// Size of the boot CPU's initial stack (later the stack of its idle task).
pub const BOOT_STACK_SIZE: usize = 16 * 1024;

global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4            /* namesz: "Xen\0" */
    .long 4            /* descsz */
    .long 18           /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start32 - 0xffffffff80000000

    .section .head.text, "ax"
    .code32
    .globl pvh_start32
    .type pvh_start32, @function
pvh_start32:
    cli
    cld
    movb ${progress}, %al
    movw ${progress_port}, %dx
    outb %al, %dx

    /* No stack yet: borrow start_info.magic as a one-word stack to learn our address. */
    movl (%ebx), %eax
    leal 4(%ebx), %esp
    call 1f
1:  popl %ebp
    movl %eax, (%ebx)
    subl $(1b - 0xffffffff80000000), %ebp      /* ebp = phys_base */
    testl $0x1fffff, %ebp
    jnz .Lbad_alignment

    leal (boot_stack_top - 0xffffffff80000000)(%ebp), %esp
    movl %ebp, (boot_phys_base - 0xffffffff80000000)(%ebp)

    /* PML4[0] -> identity PDPT; PML4[511] -> kernel PDPT. */
    leal (init_top_pgt - 0xffffffff80000000)(%ebp), %edi
    leal (boot_pdpt_ident - 0xffffffff80000000 + 3)(%ebp), %eax
    movl %eax, (%edi)
    leal (boot_pdpt_kernel - 0xffffffff80000000 + 3)(%ebp), %eax
    movl %eax, 511*8(%edi)

    /* Kernel PDPT[510] (KERNEL_MAP) -> kernel PD, mapping phys_base.. with 2 MiB pages. */
    leal (boot_pdpt_kernel - 0xffffffff80000000)(%ebp), %edi
    leal (boot_pd_kernel - 0xffffffff80000000 + 3)(%ebp), %eax
    movl %eax, 510*8(%edi)
    leal (boot_pd_kernel - 0xffffffff80000000)(%ebp), %edi
    leal 0x83(%ebp), %eax
    movl $__kernel_map_pages, %ecx
2:  movl %eax, (%edi)
    addl $0x200000, %eax
    addl $8, %edi
    loop 2b

    /* Identity: PDPT[0] -> low PD with [0, 2 MiB); the 2 MiB page of this code likewise. */
    leal (boot_pdpt_ident - 0xffffffff80000000)(%ebp), %edi
    leal (boot_pd_ident_low - 0xffffffff80000000 + 3)(%ebp), %eax
    movl %eax, (%edi)
    leal (boot_pd_ident_low - 0xffffffff80000000)(%ebp), %esi
    movl $0x83, (%esi)
    leal (_text - 0xffffffff80000000)(%ebp), %eax
    movl %eax, %ecx
    shrl $30, %ecx
    jz 3f
    leal (boot_pd_ident_high - 0xffffffff80000000)(%ebp), %esi
    leal 3(%esi), %edx
    movl %edx, (%edi,%ecx,8)
3:  movl %eax, %ecx
    shrl $21, %ecx
    andl $511, %ecx
    orl $0x83, %eax
    movl %eax, (%esi,%ecx,8)

    /* Long mode: PAE, page tables, EFER.LME|NXE, paging + write protect. */
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    leal (init_top_pgt - 0xffffffff80000000)(%ebp), %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x900, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80010001, %eax
    movl %eax, %cr0

    leal (boot_gdt - 0xffffffff80000000)(%ebp), %eax
    movl %eax, (boot_gdt_desc - 0xffffffff80000000 + 2)(%ebp)
    lgdt (boot_gdt_desc - 0xffffffff80000000)(%ebp)
    leal (start64_ident - 0xffffffff80000000)(%ebp), %eax
    pushl $0x10                 /* __KERNEL_CS, as in Linux */
    pushl %eax
    lret

.Lbad_alignment:
    hlt
    jmp .Lbad_alignment

    .code64
start64_ident:
    movl $0x18, %eax            /* __KERNEL_DS */
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    xorl %eax, %eax
    movl %eax, %fs
    movl %eax, %gs
    movabsq $start64, %rax
    jmp *%rax

    .text
    .type start64, @function
start64:
    movabsq $boot_stack_top, %rsp
    xorl %ebp, %ebp             /* a zero frame pointer ends backtraces */
    movl %ebx, %edi             /* start_info, zero-extended */
    movslq boot_phys_base(%rip), %rsi  /* phys_base may be negative: loaded below the link address */
    call kernel_main
4:  hlt
    jmp 4b
    .size start64, . - start64

    .section .data
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00cf9b000000ffff    /* 0x08: 32-bit kernel code */
    .quad 0x00af9b000000ffff    /* 0x10: 64-bit kernel code (__KERNEL_CS) */
    .quad 0x00cf93000000ffff    /* 0x18: kernel data (__KERNEL_DS) */
boot_gdt_end:
boot_gdt_desc:
    .word boot_gdt_end - boot_gdt - 1
    .long 0
    .balign 8
    .globl boot_phys_base
boot_phys_base:
    .quad 0

    .section .bss
    .balign 4096
    .globl init_top_pgt
init_top_pgt: .skip 4096
    .globl boot_pdpt_ident
boot_pdpt_ident: .skip 4096
boot_pd_ident_low: .skip 4096
boot_pd_ident_high: .skip 4096
    .globl boot_pdpt_kernel
boot_pdpt_kernel: .skip 4096
boot_pd_kernel: .skip 4096
    .balign 16
boot_stack: .skip {stack_size}
    .globl boot_stack_top
boot_stack_top:
"#,
    progress = const Progress::FirstInstruction as u8,
    progress_port = const PLATFORM_PROGRESS,
    stack_size = const BOOT_STACK_SIZE,
    options(att_syntax)
);
