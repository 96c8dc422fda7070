//! The kernel's page tables: the boot code's kernel map, plus the direct map of physical memory
//! at `PAGE_OFFSET`. The direct map uses 1 GiB pages when the CPU has them (a handful of
//! entries), else 2 MiB pages from a static pool of page directories; either way it is cheap to
//! build under an instruction emulator and needs no allocator.

use core::cell::UnsafeCell;

use crashvisor_abi::layout::{IOAPIC_GPA, PAGE_OFFSET};

use super::cpu;
use crate::mm;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;
const GIB: u64 = 1 << 30;
const MIB2: u64 = 1 << 21;

/// Largest physical address the 2 MiB-page direct map covers (the page-directory pool's size):
/// the VMM's largest guest, 64 GiB of RAM, ends at 65 GiB because of the 1 GiB MMIO hole.
pub const DIRECT_MAP_MAX_2M: u64 = 65 * GIB;
const POOL_DIRECTORIES: usize = (DIRECT_MAP_MAX_2M / GIB) as usize;

#[repr(C, align(4096))]
struct Table(UnsafeCell<[u64; 512]>);
// SAFETY: written only by the boot CPU during `init_direct_map`, before other CPUs start.
unsafe impl Sync for Table {}

static DIRECT_MAP_PDPT: Table = Table(UnsafeCell::new([0; 512]));
static DIRECT_MAP_PDS: [Table; POOL_DIRECTORIES] = [const { Table(UnsafeCell::new([0; 512])) }; POOL_DIRECTORIES];

extern "C" {
    /// The top-level page table built by the boot code (Linux's `init_top_pgt`).
    static init_top_pgt: UnsafeCell<[u64; 512]>;
}

/// Whether the CPU supports 1 GiB pages.
fn gib_pages_supported() -> bool {
    cpu::cpuid(0x8000_0001, 0).edx & (1 << 26) != 0
}

/// Maps physical `[0, end)` and the I/O APIC's page at `PAGE_OFFSET`. Returns the end actually
/// mapped (RAM beyond the 2 MiB pool is left out and must not be used).
pub fn init_direct_map(end: u64) -> u64 {
    // SAFETY: boot CPU only, before SMP bring-up; no other reference to the tables exists.
    let pdpt = unsafe { &mut *DIRECT_MAP_PDPT.0.get() };
    let mapped = if gib_pages_supported() {
        let end = end.clamp(4 * GIB, 512 * GIB);
        for (i, entry) in pdpt.iter_mut().enumerate().take(end.div_ceil(GIB) as usize) {
            *entry = (i as u64 * GIB) | HUGE | WRITABLE | PRESENT;
        }
        end
    } else {
        let end = end.min(DIRECT_MAP_MAX_2M);
        let mut map_2m = |pa: u64, flags: u64| {
            let gib = (pa / GIB) as usize;
            // SAFETY: as above, boot CPU only; `gib` < POOL_DIRECTORIES for every caller.
            let pd = unsafe { &mut *DIRECT_MAP_PDS[gib].0.get() };
            pd[((pa / MIB2) % 512) as usize] = pa | HUGE | flags | PRESENT;
            pdpt[gib] = mm::kernel_virt_to_phys(DIRECT_MAP_PDS[gib].0.get() as u64) | WRITABLE | PRESENT;
        };
        for pa in (0..end.div_ceil(MIB2)).map(|i| i * MIB2) {
            map_2m(pa, WRITABLE);
        }
        map_2m(IOAPIC_GPA & !(MIB2 - 1), WRITABLE | WRITE_THROUGH | CACHE_DISABLE);
        end
    };
    let pdpt_phys = mm::kernel_virt_to_phys(DIRECT_MAP_PDPT.0.get() as u64);
    let index = ((PAGE_OFFSET >> 39) & 511) as usize;
    // SAFETY: installs the direct map in an unused top-level slot of the live page table; no
    // existing translation changes, so no TLB flush is needed.
    unsafe { (*init_top_pgt.get())[index] = pdpt_phys | WRITABLE | PRESENT };
    mapped
}

/// Makes physical `[start, end)` outside RAM (a boot module the VMM maps read-only) reachable
/// through the direct map. With 1 GiB pages the low 4 GiB are already mapped.
pub fn map_outside_ram(start: u64, end: u64) {
    if gib_pages_supported() && end <= 4 * GIB {
        return;
    }
    let end = end.min(DIRECT_MAP_MAX_2M);
    // SAFETY: boot CPU only, before SMP bring-up (as `init_direct_map`).
    let pdpt = unsafe { &mut *DIRECT_MAP_PDPT.0.get() };
    let mut pa = start & !(MIB2 - 1);
    while pa < end {
        let gib = (pa / GIB) as usize;
        // SAFETY: as above; `gib` < POOL_DIRECTORIES because `pa` < DIRECT_MAP_MAX_2M.
        let pd = unsafe { &mut *DIRECT_MAP_PDS[gib].0.get() };
        pd[((pa / MIB2) % 512) as usize] = pa | HUGE | PRESENT;
        pdpt[gib] = mm::kernel_virt_to_phys(DIRECT_MAP_PDS[gib].0.get() as u64) | WRITABLE | PRESENT;
        pa += MIB2;
    }
}

/// Physical address of the top-level page table (what CR3 holds; Linux's `init_top_pgt`).
pub fn top_table_phys() -> u64 {
    cpu::read_cr3() & !0xfff
}

/// Virtual address of the top-level page table (Linux's `init_top_pgt`).
pub fn top_table_virt() -> u64 {
    // SAFETY: only the address of the static is taken.
    unsafe { init_top_pgt.get() as u64 }
}

/// Prints the page-table walk for `address` like Linux's `dump_pagetable` (`PGD 0 P4D 0`...).
pub fn print_walk(address: u64) {
    // SAFETY: reads the live top-level table; entries are plain words.
    let pgd = unsafe { (*init_top_pgt.get())[((address >> 39) & 511) as usize] };
    if pgd & PRESENT == 0 {
        crate::pr_alert!("PGD {:x} P4D {:x} ", pgd, pgd);
        return;
    }
    let pud_table = mm::phys_to_virt(pgd & 0x000f_ffff_ffff_f000) as *const u64;
    // SAFETY: a present entry points at a page-table page, which the direct map covers.
    let pud = unsafe { pud_table.add(((address >> 30) & 511) as usize).read() };
    if pud & PRESENT == 0 || pud & HUGE != 0 {
        crate::pr_alert!("PGD {:x} P4D {:x} PUD {:x} ", pgd, pgd, pud);
        return;
    }
    let pmd_table = mm::phys_to_virt(pud & 0x000f_ffff_ffff_f000) as *const u64;
    // SAFETY: as above.
    let pmd = unsafe { pmd_table.add(((address >> 21) & 511) as usize).read() };
    crate::pr_alert!("PGD {:x} P4D {:x} PUD {:x} PMD {:x} ", pgd, pgd, pud, pmd);
}

/// Base of the kernel stack area (Linux's `VMALLOC_START`): stacks mapped with 4 KiB pages and
/// an unmapped guard page below each, so an overflow faults instead of corrupting memory.
pub const VMALLOC_START: u64 = 0xffff_c900_0000_0000;
/// Virtual space per stack: the guard page, the stack, and unmapped padding.
const STACK_SLOT: u64 = 64 * 1024;
const PAGE: u64 = 4096;
const NO_EXECUTE: u64 = 1 << 63;

static NEXT_STACK_SLOT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static MAP_LOCK: crate::sync::SpinLock<()> = crate::sync::SpinLock::new(());

/// A zeroed page-table page (physical address).
fn new_table() -> Option<u64> {
    let va = mm::frame::alloc_pages(1)?;
    mm::memmap::set_use(va, crashvisor_klib::page::PageUse::Table);
    // SAFETY: a page just allocated for this table; nothing else refers to it.
    unsafe { core::ptr::write_bytes(va as *mut u8, 0, PAGE as usize) };
    Some(mm::virt_to_phys(va))
}

/// The next-level table of `entry`, creating it if absent.
fn next_table(entry: &mut u64) -> Option<&'static mut [u64; 512]> {
    if *entry & PRESENT == 0 {
        *entry = new_table()? | WRITABLE | PRESENT;
    }
    let va = mm::phys_to_virt(*entry & 0x000f_ffff_ffff_f000);
    // SAFETY: a present non-huge entry of the kernel's tables points at a page-table page, which
    // the direct map covers; MAP_LOCK serialises every writer.
    Some(unsafe { &mut *(va as *mut [u64; 512]) })
}

/// Maps the 4 KiB page at `va` to `pa` (writable, not executable) in the kernel page table.
fn map_4k(va: u64, pa: u64) -> Option<()> {
    let _guard = MAP_LOCK.lock_irqsave();
    // SAFETY: the live top-level table; MAP_LOCK serialises writers, and filling an empty slot
    // changes no existing translation.
    let pml4 = unsafe { &mut *init_top_pgt.get() };
    let pdpt = next_table(&mut pml4[((va >> 39) & 511) as usize])?;
    let pd = next_table(&mut pdpt[((va >> 30) & 511) as usize])?;
    let pt = next_table(&mut pd[((va >> 21) & 511) as usize])?;
    pt[((va >> 12) & 511) as usize] = pa | NO_EXECUTE | WRITABLE | PRESENT;
    Some(())
}

/// Allocates a kernel stack of `size` bytes (a multiple of 4 KiB, at most 60 KiB) with a
/// guard page below it; returns its lowest virtual address and the physical address of its
/// (contiguous) memory, which a vmcore maps back to the virtual one. Not zeroed.
pub fn alloc_stack(size: u64) -> Option<(u64, u64)> {
    let size = size.min(STACK_SLOT - PAGE);
    let slot = NEXT_STACK_SLOT.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    let base = VMALLOC_START + slot * STACK_SLOT + PAGE;
    let phys = mm::virt_to_phys(mm::frame::alloc_pages((size / PAGE) as usize)?);
    for offset in (0..size).step_by(PAGE as usize) {
        map_4k(base + offset, phys + offset)?;
    }
    Some((base, phys))
}

/// Whether `address` is in the guard page below the stack that starts at `stack_base`.
pub fn is_guard_page(address: u64, stack_base: u64) -> bool {
    stack_base >= VMALLOC_START && address < stack_base && address >= stack_base - PAGE
}

/// Removes the boot identity map of low memory once every AP is up (nothing runs there any
/// more), so a NULL dereference faults as on Linux. Each CPU flushes its TLB.
pub fn drop_identity_map() {
    // SAFETY: boot CPU, after SMP bring-up: no CPU executes or reads through the identity
    // mapping any more; the flush below removes cached translations everywhere.
    unsafe { (*init_top_pgt.get())[0] = 0 };
    for cpu in 0..crate::smp::possible_cpus() {
        if crate::arch::percpu::of(cpu).online.load(core::sync::atomic::Ordering::Relaxed) {
            crate::smp::call_on_cpu(cpu, flush_tlb, 0);
        }
    }
}

/// Puts back the boot identity map of the low 2 MiB on this CPU (to run the kexec trampoline
/// at its physical address). The caller has stopped the other CPUs.
pub fn restore_identity_map() {
    extern "C" {
        static boot_pdpt_ident: u8;
    }
    // SAFETY: only the address of the boot code's identity PDPT is taken; it still maps the
    // low 2 MiB (its page directory is untouched since boot).
    let pdpt = unsafe { &boot_pdpt_ident as *const u8 as u64 };
    // SAFETY: re-installs the top-level slot the boot code used; no other CPU runs kernel code
    // any more, and the flush below drops stale translations here.
    unsafe { (*init_top_pgt.get())[0] = mm::kernel_virt_to_phys(pdpt) | WRITABLE | PRESENT };
    flush_tlb(0);
}

/// Flushes this CPU's TLB (non-global entries) by reloading CR3.
fn flush_tlb(_: usize) {
    // SAFETY: reloading CR3 with its current value only drops cached translations.
    unsafe { core::arch::asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack, preserves_flags)) };
}
