//! Per-CPU GDT and TSS, with separate IST stacks for the double fault, NMI and machine check
//! (Linux's `IST_INDEX_DF`, `IST_INDEX_NMI`, `IST_INDEX_MCE`), so a broken kernel stack or an
//! NMI landing anywhere still runs its handler on a good stack.

use core::arch::asm;
use core::cell::UnsafeCell;

use super::percpu::MAX_CPUS;

/// `__KERNEL_CS`, as in Linux (so oopses read `RIP: 0010:`).
pub const KERNEL_CS: u16 = 0x10;
/// `__KERNEL_DS`, as in Linux.
pub const KERNEL_DS: u16 = 0x18;
/// The TSS selector (Linux's `GDT_ENTRY_TSS` = 8).
const TSS_SELECTOR: u16 = 8 * 8;

/// IST slot (1-based, as the IDT encodes it) of the double-fault stack.
pub const IST_DOUBLE_FAULT: u8 = 1;
/// IST slot of the NMI stack.
pub const IST_NMI: u8 = 2;
/// IST slot of the machine-check stack.
pub const IST_MCE: u8 = 3;

const DF_STACK_SIZE: usize = 8 * 1024;
const NMI_STACK_SIZE: usize = 16 * 1024;
const MCE_STACK_SIZE: usize = 4 * 1024;

#[repr(C, packed)]
#[derive(Clone, Copy)]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

const GDT_ENTRIES: usize = 10;

#[repr(C, align(16))]
struct CpuTables {
    gdt: [u64; GDT_ENTRIES],
    tss: Tss,
}

#[repr(C, align(16))]
struct IstStacks {
    double_fault: [u8; DF_STACK_SIZE],
    nmi: [u8; NMI_STACK_SIZE],
    mce: [u8; MCE_STACK_SIZE],
}

struct PerCpuTables(UnsafeCell<[CpuTables; MAX_CPUS]>);
// SAFETY: each CPU writes only its own entry, once, in `init_cpu` before loading it.
unsafe impl Sync for PerCpuTables {}
struct PerCpuStacks(UnsafeCell<[IstStacks; MAX_CPUS]>);
// SAFETY: the stacks are used only by the CPU (hardware) whose TSS names them.
unsafe impl Sync for PerCpuStacks {}

const EMPTY_TSS: Tss =
    Tss { reserved0: 0, rsp: [0; 3], reserved1: 0, ist: [0; 7], reserved2: 0, reserved3: 0, iomap_base: 104 };

static TABLES: PerCpuTables =
    PerCpuTables(UnsafeCell::new([const { CpuTables { gdt: [0; GDT_ENTRIES], tss: EMPTY_TSS } }; MAX_CPUS]));
// Zero-initialised: lives in .bss, costs nothing to load.
static STACKS: PerCpuStacks = PerCpuStacks(UnsafeCell::new(
    [const { IstStacks { double_fault: [0; DF_STACK_SIZE], nmi: [0; NMI_STACK_SIZE], mce: [0; MCE_STACK_SIZE] } };
        MAX_CPUS],
));

/// CPU `cpu`'s NMI stack, `[low, high)` (for recognising NMI context in backtraces).
pub fn nmi_stack_range(cpu: usize) -> (u64, u64) {
    // SAFETY: only the address is taken; `cpu` indexes within the array (callers pass < MAX_CPUS).
    let base = unsafe { (*STACKS.0.get())[cpu].nmi.as_ptr() as u64 };
    (base, base + NMI_STACK_SIZE as u64)
}

/// CPU `cpu`'s double-fault stack, `[low, high)`.
pub fn double_fault_stack_range(cpu: usize) -> (u64, u64) {
    // SAFETY: only the address is taken; `cpu` indexes within the array (callers pass < MAX_CPUS).
    let base = unsafe { (*STACKS.0.get())[cpu].double_fault.as_ptr() as u64 };
    (base, base + DF_STACK_SIZE as u64)
}

/// Builds and loads CPU `cpu`'s GDT and TSS and reloads the segment registers.
pub fn init_cpu(cpu: usize) {
    // SAFETY: this CPU is the only writer of entry `cpu`, and nothing reads it before lgdt below.
    let tables = unsafe { &mut (*TABLES.0.get())[cpu] };
    // SAFETY: as above for the stacks; only their addresses are taken here.
    let stacks = unsafe { &mut (*STACKS.0.get())[cpu] };
    let top = |s: &mut [u8]| (s.as_mut_ptr() as u64 + s.len() as u64) & !0xf;
    tables.tss.ist[usize::from(IST_DOUBLE_FAULT) - 1] = top(&mut stacks.double_fault);
    tables.tss.ist[usize::from(IST_NMI) - 1] = top(&mut stacks.nmi);
    tables.tss.ist[usize::from(IST_MCE) - 1] = top(&mut stacks.mce);

    tables.gdt[1] = 0x00cf_9b00_0000_ffff; // 0x08: 32-bit code
    tables.gdt[2] = 0x00af_9b00_0000_ffff; // 0x10: 64-bit code
    tables.gdt[3] = 0x00cf_9300_0000_ffff; // 0x18: data
    let tss = &tables.tss as *const Tss as u64;
    let limit = (core::mem::size_of::<Tss>() - 1) as u64;
    tables.gdt[8] = limit
        | ((tss & 0xff_ffff) << 16)
        | (0x89 << 40) // present, 64-bit TSS (available)
        | (((tss >> 24) & 0xff) << 56);
    tables.gdt[9] = tss >> 32;

    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let pointer = Pointer { limit: (GDT_ENTRIES * 8 - 1) as u16, base: tables.gdt.as_ptr() as u64 };
    // SAFETY: the GDT lives in a static and holds the same code/data selectors the kernel already
    // uses, so reloading CS/DS/SS keeps every segment valid; the TSS descriptor is well formed.
    unsafe {
        asm!(
            "lgdt [{ptr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            "ltr {tss:x}",
            ptr = in(reg) &pointer,
            cs = const KERNEL_CS as u64,
            ds = in(reg) KERNEL_DS as u64,
            tss = in(reg) TSS_SELECTOR as u64,
            tmp = out(reg) _,
        );
    }
}
