//! The page tables of the `struct page` array at `VMEMMAP_START` (Linux's vmemmap): one 2 MiB
//! page per memory section (its 32768 `struct page`s), or, for a section whose array is mostly
//! identical pages, a page table of 4 KiB pages some of which share one read-only page (as
//! Linux's HugeTLB vmemmap optimisation shares them). Built by the boot CPU before the other
//! CPUs start; the tables themselves are static, the 4 KiB page tables come from the caller.

use core::cell::UnsafeCell;

use crashvisor_klib::page::VMEMMAP_START;

use crate::mm;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const HUGE: u64 = 1 << 7;
const NO_EXECUTE: u64 = 1 << 63;
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;
const MIB2: u64 = 1 << 21;
const PAGE: u64 = 4096;

/// Sections the static tables can map: two page directories of 512 sections (128 GiB of RAM).
pub const MAX_SECTIONS: u64 = 2 * 512;

#[repr(C, align(4096))]
struct Table(UnsafeCell<[u64; 512]>);
// SAFETY: written only by the boot CPU during memory set-up, before other CPUs start.
unsafe impl Sync for Table {}

static VMEMMAP_PUD: Table = Table(UnsafeCell::new([0; 512]));
static VMEMMAP_PMDS: [Table; 2] = [const { Table(UnsafeCell::new([0; 512])) }; 2];

extern "C" {
    /// The kernel's top-level page table.
    static init_top_pgt: UnsafeCell<[u64; 512]>;
}

fn table_phys(table: &Table) -> u64 {
    mm::kernel_virt_to_phys(table.0.get() as u64)
}

/// The page-directory entry of `section`'s 2 MiB of `struct page`s.
fn pmd_entry(section: u64) -> &'static mut u64 {
    let (pud, pmd) = ((section / 512) as usize, (section % 512) as usize);
    // SAFETY: boot CPU only, before SMP bring-up (see `Table`); `section` < MAX_SECTIONS
    // (callers check), so both indexes are in range.
    unsafe {
        let pud_table = &mut *VMEMMAP_PUD.0.get();
        if pud_table[pud] & PRESENT == 0 {
            pud_table[pud] = table_phys(&VMEMMAP_PMDS[pud]) | WRITABLE | PRESENT;
        }
        &mut (*VMEMMAP_PMDS[pud].0.get())[pmd]
    }
}

/// Maps `section`'s `struct page`s to the 2 MiB at physical `backing` (2 MiB aligned).
pub fn map_section(section: u64, backing: u64) {
    if section >= MAX_SECTIONS {
        return;
    }
    *pmd_entry(section) = backing | HUGE | NO_EXECUTE | WRITABLE | PRESENT;
    let index = ((VMEMMAP_START >> 39) & 511) as usize;
    // SAFETY: fills the vmemmap's slot of the live top-level table (unused before); no existing
    // translation changes.
    unsafe { (*init_top_pgt.get())[index] = table_phys(&VMEMMAP_PUD) | WRITABLE | PRESENT };
}

/// Remaps a section mapped by [`map_section`] with the 4 KiB page table at physical `table`
/// (a page the caller owns), to the same memory; does nothing if it already is.
pub fn split_section(section: u64, table: u64) {
    if section >= MAX_SECTIONS {
        return;
    }
    let entry = pmd_entry(section);
    if *entry & (PRESENT | HUGE) != PRESENT | HUGE {
        return;
    }
    let backing = *entry & ADDRESS;
    // SAFETY: `table` is a page the caller allocated for this; the direct map covers it.
    let ptes = unsafe { &mut *(mm::phys_to_virt(table) as *mut [u64; 512]) };
    for (i, pte) in ptes.iter_mut().enumerate() {
        *pte = (backing + i as u64 * PAGE) | NO_EXECUTE | WRITABLE | PRESENT;
    }
    *entry = table | WRITABLE | PRESENT;
    // SAFETY: reloading CR3 with its current value drops this CPU's cached translations (the
    // 2 MiB one just replaced); the other CPUs have not started.
    unsafe { core::arch::asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack, preserves_flags)) };
}

/// Points the 4 KiB of `struct page`s at vmemmap address `va` (in a section split by
/// [`split_section`]) at the read-only page at physical `page`.
pub fn share_page(va: u64, page: u64) {
    let section = (va - VMEMMAP_START) / MIB2;
    if section >= MAX_SECTIONS {
        return;
    }
    let entry = *pmd_entry(section);
    if entry & (PRESENT | HUGE) != PRESENT {
        return;
    }
    // SAFETY: a present non-huge directory entry of the vmemmap points at a page table the
    // direct map covers; boot CPU only.
    let ptes = unsafe { &mut *(mm::phys_to_virt(entry & ADDRESS) as *mut [u64; 512]) };
    ptes[((va / PAGE) % 512) as usize] = page | NO_EXECUTE | PRESENT;
    // SAFETY: invalidates one translation of this CPU; the others have not started.
    unsafe { core::arch::asm!("invlpg [{0}]", in(reg) va, options(nostack, preserves_flags)) };
}
