//! The IDT, the interrupt entry stubs and the saved-register frame.
//!
//! Every vector enters through a tiny stub that pushes a dummy error code when the CPU did not
//! push one, then the registers in Linux's `struct pt_regs` order, so a `PtRegs` is both what
//! handlers see and, unchanged, the `pr_reg` of an ELF `NT_PRSTATUS` note.

use core::arch::global_asm;
use core::cell::UnsafeCell;

use super::gdt::{IST_DOUBLE_FAULT, IST_MCE, IST_NMI, KERNEL_CS};

/// Linux's `struct pt_regs` on x86_64, defined with the `NT_PRSTATUS` note format it is part of.
pub use crashvisor_klib::elfnote::PtRegs;

/// Vector numbers, as Linux assigns them.
pub mod vector {
    /// Non-maskable interrupt.
    pub const NMI: u8 = 2;
    /// First external (I/O APIC) vector for ISA IRQ 0 (Linux's `ISA_IRQ_VECTOR(0)`).
    pub const ISA_IRQ_BASE: u8 = 0x30;
    /// Local APIC timer (Linux's `LOCAL_TIMER_VECTOR`).
    pub const LOCAL_TIMER: u8 = 0xec;
    /// Call-function IPI.
    pub const CALL_FUNCTION: u8 = 0xfc;
    /// Reschedule IPI.
    pub const RESCHEDULE: u8 = 0xfd;
    /// Local APIC error.
    pub const ERROR_APIC: u8 = 0xfe;
    /// Spurious interrupt.
    pub const SPURIOUS: u8 = 0xff;
}

global_asm!(
    r#"
    .macro STUB_NOERR n
    .balign 16
    .type interrupt_stub_\n, @function
interrupt_stub_\n:
    push -1
    push rdi
    mov edi, \n
    jmp interrupt_common
    .size interrupt_stub_\n, . - interrupt_stub_\n
    .endm

    .macro STUB_ERR n
    .balign 16
    .type interrupt_stub_\n, @function
interrupt_stub_\n:
    push rdi
    mov edi, \n
    jmp interrupt_common
    .size interrupt_stub_\n, . - interrupt_stub_\n
    .endm

    .text
    .irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31,51,52,236,252,253,254,255
    STUB_NOERR \n
    .endr
    .irp n, 8,10,11,12,13,14,17,21,29,30
    STUB_ERR \n
    .endr

    /* rdi is already saved and holds the vector; save the rest in pt_regs order. */
    .type interrupt_common, @function
interrupt_common:
    cld
    push rsi
    push rdx
    push rcx
    push rax
    push r8
    push r9
    push r10
    push r11
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov rsi, rsp
    push rdi                    /* the vector: for unwinders, and 16-byte alignment */
    call interrupt_dispatch
1:  add rsp, 8
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    pop r11
    pop r10
    pop r9
    pop r8
    pop rax
    pop rcx
    pop rdx
    pop rsi
    pop rdi
    add rsp, 8                  /* orig_rax */
    iretq
    .size interrupt_common, . - interrupt_common

    .section .rodata
    .balign 8
    .globl interrupt_return_address
interrupt_return_address:
    .quad 1b
    .globl interrupt_stub_table
interrupt_stub_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,51,52,236,252,253,254,255
    .quad \n
    .quad interrupt_stub_\n
    .endr
    .globl interrupt_stub_table_end
interrupt_stub_table_end:
"#
);

extern "C" {
    static interrupt_stub_table: [u64; 0];
    static interrupt_stub_table_end: [u64; 0];
    static interrupt_return_address: u64;
}

/// Where an interrupt frame sits relative to the frame pointer of `interrupt_dispatch`: a frame
/// whose return address is [`interrupt_return`] is `interrupt_dispatch`'s, and above its saved
/// `rbp` and that return address lie the vector and then the interrupted registers.
pub mod frame {
    /// Offset from `interrupt_dispatch`'s `rbp` of the vector `interrupt_common` pushed.
    pub const VECTOR: u64 = 16;
    /// Offset from `interrupt_dispatch`'s `rbp` of the interrupted `PtRegs`.
    pub const REGS: u64 = 24;
}

/// The return address of `interrupt_common`'s call into `interrupt_dispatch`: an unwinder that
/// finds it knows the frame below is an interrupt's (see [`frame`]).
pub fn interrupt_return() -> u64 {
    // SAFETY: a constant quad the assembly above stores in .rodata.
    unsafe { interrupt_return_address }
}

#[repr(C, align(16))]
struct Idt(UnsafeCell<[u64; 512]>);
// SAFETY: written once by the boot CPU in `init` before any CPU loads it; read-only afterwards.
unsafe impl Sync for Idt {}
static IDT: Idt = Idt(UnsafeCell::new([0; 512]));

fn ist_for(vector: u64) -> u8 {
    match vector {
        8 => IST_DOUBLE_FAULT,
        2 => IST_NMI,
        18 => IST_MCE,
        _ => 0,
    }
}

/// Fills the IDT from the stub table. Boot CPU, once, before interrupts are enabled.
pub fn init() {
    // SAFETY: the linker places the table between these two symbols; it holds (vector, address)
    // pairs written above.
    let table = unsafe {
        let start = interrupt_stub_table.as_ptr();
        let end = interrupt_stub_table_end.as_ptr();
        core::slice::from_raw_parts(start, (end as usize - start as usize) / 8)
    };
    // SAFETY: no CPU has loaded the IDT yet, so this is the only access.
    let idt = unsafe { &mut *IDT.0.get() };
    for pair in table.chunks_exact(2) {
        let (vector, handler) = (pair[0] as usize, pair[1]);
        let low = (handler & 0xffff)
            | (u64::from(KERNEL_CS) << 16)
            | (u64::from(ist_for(pair[0])) << 32)
            | (0x8e << 40) // present, DPL 0, 64-bit interrupt gate
            | ((handler >> 16) & 0xffff) << 48;
        idt[vector * 2] = low;
        idt[vector * 2 + 1] = handler >> 32;
    }
}

/// Loads the IDT on this CPU.
pub fn load() {
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let pointer = Pointer { limit: (512 * 8 - 1) as u16, base: IDT.0.get() as u64 };
    // SAFETY: the IDT is a static filled by `init`; every present gate points at a stub above.
    unsafe { core::arch::asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags)) };
}
