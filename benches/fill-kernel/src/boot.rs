//! Everything that runs at ring 0: the PVH entry, long mode, the identity map of RAM, and the
//! `iretq` to ring 3.
//!
//! The VMM (or QEMU) enters `pvh_start32` in 32-bit protected mode, paging off, `ebx` pointing
//! at `hvm_start_info`. Guest ring-0 code may be emulated one instruction at a time (DESIGN.md
//! "This machine's KVM"), so everything ring 0 needs is built by the assembler and the linker,
//! not by instructions: the page tables, the GDT, the TSS with its I/O permission bitmap and
//! the `iretq` frame are all static data. Ring 0 runs 19 instructions, straight through: long
//! mode on, TR and an empty IDT loaded, `iretq`.
//!
//! Paging: one PML4 entry → one PDPT → page directories of 2 MiB pages, present, writable and
//! user-accessible, identity (virtual = physical) over `[0, IDENTITY_MAP_END_GPA)`, whatever
//! RAM the VM has (ring 3 refuses a memory map that reaches beyond). 1 GiB pages would need no
//! page directories, but this machine's KVM does not offer them (no `pdpe1gb` in its CPUID).
//!
//! Ring 3 runs with IOPL 0; the TSS's I/O bitmap allows COM1's eight ports and nothing else.
//! The IDT is empty (limit 0) and interrupts stay off: any exception in ring 3 shuts the VM
//! down (triple fault), which is how the ring-3 program stops on an error.

use core::arch::global_asm;

use crashvisor_abi::serial::{COM1_PORT, UART_PORT_COUNT};

use crate::layout::{IDENTITY_MAP_END_GPA, LARGE_PAGE_SIZE, PAGE_DIRECTORY_SPAN};

/// Size of the ring-3 stack.
const USER_STACK_SIZE: usize = 64 * 1024;
/// Ring-0 64-bit code (the GDT is in the assembly below; selectors carry their RPL).
const KERNEL_CS: u16 = 0x08;
/// Ring-3 data, the stack segment of ring 3.
const USER_SS: u16 = 0x10 | 3;
/// Ring-3 64-bit code.
const USER_CS: u16 = 0x18 | 3;
/// The TSS.
const TSS_SELECTOR: u16 = 0x20;
/// Page-table entry bits: present, writable, user-accessible.
const PTE_TABLE: u64 = 0x7;
/// Page-directory entry bits of a 2 MiB page: `PTE_TABLE` and page size.
const PTE_LARGE_PAGE: u64 = PTE_TABLE | 0x80;

const _: () = assert!(COM1_PORT.is_multiple_of(8) && UART_PORT_COUNT == 8, "COM1 fills one byte of the I/O bitmap");

global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                     /* namesz: "Xen\0" */
    .long 4                     /* descsz */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start32

    .section .text.boot, "ax"
    .code32
    .globl pvh_start32
    .type pvh_start32, @function
pvh_start32:
    /* PVH enters with CR4 and EFER clear: set only what long mode needs. */
    movl $0x20, %eax            /* CR4.PAE */
    movl %eax, %cr4
    movl $fill_pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx      /* EFER */
    movl $0x100, %eax           /* EFER.LME */
    xorl %edx, %edx
    wrmsr
    movl %cr0, %eax
    orl $0x80000000, %eax       /* CR0.PG */
    movl %eax, %cr0
    lgdt fill_gdt_pointer
    ljmpl ${kernel_cs}, $fill_start64

    .code64
fill_start64:
    movw ${tss_selector}, %ax
    ltr %ax
    lidt fill_idt_pointer
    movl %ebx, %edi             /* fill_main(start_info_gpa) */
    movl $fill_iret_frame, %esp
    iretq
    .size pvh_start32, . - pvh_start32

    .section .data
    .balign 4096
fill_pml4:
    .quad fill_pdpt + {pte_table}
    .fill 511, 8, 0
fill_pdpt:
    .set fill_gib, 0
    .rept {directories}
    .quad fill_pd + fill_gib * 4096 + {pte_table}
    .set fill_gib, fill_gib + 1
    .endr
    .fill 512 - {directories}, 8, 0
fill_pd:
    .set fill_gpa, 0
    .rept {large_pages}
    .quad fill_gpa + {pte_large_page}
    .set fill_gpa, fill_gpa + {large_page_size}
    .endr

    .balign 16
fill_gdt:
    .quad 0
    .quad 0x00af9b000000ffff    /* 0x08: ring-0 64-bit code */
    .quad 0x00cff3000000ffff    /* 0x10: ring-3 data (SS) */
    .quad 0x00affb000000ffff    /* 0x18: ring-3 64-bit code */
    .quad fill_tss_descriptor_low   /* 0x20: the TSS (linker.ld computes the descriptor) */
    .quad fill_tss_descriptor_high
fill_gdt_end:
fill_gdt_pointer:
    .word fill_gdt_end - fill_gdt - 1
    .long fill_gdt

    .balign 16
fill_idt_pointer:
    .word 0                     /* limit 0: every vector faults, a fault shuts the VM down */
    .quad 0

    /* 64-bit TSS: no stacks (nothing enters ring 0), then the I/O permission bitmap. */
    .balign 16
    .globl fill_tss, fill_tss_end
fill_tss:
    .fill 102, 1, 0
    .word fill_io_bitmap - fill_tss
fill_io_bitmap:
    .fill {com1_byte}, 1, 0xff  /* ports below COM1: denied */
    .byte 0                     /* COM1's eight ports: allowed */
    .byte 0xff                  /* the CPU reads bitmap bytes in pairs: a final all-ones byte */
fill_tss_end:

    /* Popped by iretq: ring 3 at fill_main, interrupts off, IOPL 0. The stack is placed as if
     * fill_main had been called (the return-address slot keeps the ABI's alignment). */
    .balign 8
fill_iret_frame:
    .quad fill_main             /* rip */
    .quad {user_cs}             /* cs */
    .quad 0x2                   /* rflags: only the always-one bit */
    .quad fill_user_stack_top - 8   /* rsp */
    .quad {user_ss}             /* ss */

    .section .bss
    .balign 16
fill_user_stack:
    .skip {user_stack_size}
fill_user_stack_top:
"#,
    kernel_cs = const KERNEL_CS,
    user_ss = const USER_SS,
    user_cs = const USER_CS,
    tss_selector = const TSS_SELECTOR,
    pte_table = const PTE_TABLE,
    pte_large_page = const PTE_LARGE_PAGE,
    directories = const IDENTITY_MAP_END_GPA / PAGE_DIRECTORY_SPAN,
    large_pages = const IDENTITY_MAP_END_GPA / LARGE_PAGE_SIZE,
    large_page_size = const LARGE_PAGE_SIZE,
    com1_byte = const COM1_PORT / 8,
    user_stack_size = const USER_STACK_SIZE,
    options(att_syntax)
);
