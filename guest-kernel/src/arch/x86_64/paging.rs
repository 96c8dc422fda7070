//! The kernel's page tables: the boot code's kernel map, plus the direct map of physical memory
//! at `PAGE_OFFSET`, built with 1 GiB pages (a handful of entries: cheap to build under an
//! instruction emulator, and no page-table pages to allocate).

use core::cell::UnsafeCell;

use crashvisor_abi::layout::PAGE_OFFSET;

use super::cpu;
use crate::mm;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const HUGE: u64 = 1 << 7;
const GIB: u64 = 1 << 30;

/// Largest physical address space the direct map covers (one PDPT of 1 GiB pages).
pub const DIRECT_MAP_MAX: u64 = 512 * GIB;

#[repr(C, align(4096))]
struct Table(UnsafeCell<[u64; 512]>);
// SAFETY: written only by the boot CPU during `init_direct_map`, before other CPUs start.
unsafe impl Sync for Table {}

static DIRECT_MAP_PDPT: Table = Table(UnsafeCell::new([0; 512]));

extern "C" {
    /// The top-level page table built by the boot code (Linux's `init_top_pgt`).
    static init_top_pgt: UnsafeCell<[u64; 512]>;
}

/// Whether the CPU supports 1 GiB pages.
pub fn gib_pages_supported() -> bool {
    cpu::cpuid(0x8000_0001, 0).edx & (1 << 26) != 0
}

/// Maps physical `[0, end)` (rounded up to 1 GiB, and at least the low 4 GiB so the APIC MMIO
/// pages are reachable) at `PAGE_OFFSET`.
pub fn init_direct_map(end: u64) {
    let end = end.max(4 * GIB).min(DIRECT_MAP_MAX);
    // SAFETY: boot CPU only, before SMP bring-up; no other reference to the table exists.
    let pdpt = unsafe { &mut *DIRECT_MAP_PDPT.0.get() };
    for (i, entry) in pdpt.iter_mut().enumerate().take(end.div_ceil(GIB) as usize) {
        *entry = (i as u64 * GIB) | HUGE | WRITABLE | PRESENT;
    }
    let pdpt_phys = mm::kernel_virt_to_phys(DIRECT_MAP_PDPT.0.get() as u64);
    let index = ((PAGE_OFFSET >> 39) & 511) as usize;
    // SAFETY: installs the direct map in an unused top-level slot of the live page table; no
    // existing translation changes, so no TLB flush is needed.
    unsafe { (*init_top_pgt.get())[index] = pdpt_phys | WRITABLE | PRESENT };
}

/// Physical address of the top-level page table (what CR3 holds; Linux's `init_top_pgt`).
pub fn top_table_phys() -> u64 {
    cpu::read_cr3() & !0xfff
}

/// Virtual address of the top-level page table.
pub fn top_table_virt() -> u64 {
    // SAFETY: only the address of the static is taken.
    unsafe { init_top_pgt.get() as u64 }
}
