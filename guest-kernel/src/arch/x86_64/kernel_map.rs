//! The kernel image's page permissions (Linux's `mark_rodata_ro` and `CONFIG_DEBUG_WX`). The
//! boot code maps the image with writable, executable 2 MiB pages; once init is over, each
//! 2 MiB page holding the image becomes 512 4 KiB pages — text read-only and executable,
//! read-only data and `__ro_after_init` data read-only and never executable, data and bss
//! writable and never executable — and the kernel map's pages outside the image stop being
//! executable. A walk of every page table then checks that no page is both writable and
//! executable.

use crashvisor_abi::layout::KERNEL_MAP;

use super::paging::{flush_tlb, top_table, ADDRESS_MASK, HUGE, MAP_LOCK, NO_EXECUTE, PRESENT, WRITABLE};
use crate::{mm, smp};

const PAGE: u64 = 4096;
const MIB2: u64 = 1 << 21;
/// The physical-address bits of a 2 MiB page's entry.
const HUGE_ADDRESS_MASK: u64 = ADDRESS_MASK & !(MIB2 - 1);

extern "C" {
    static _text: u8;
    static _etext: u8;
    static __end_rodata: u8;
    static __start_ro_after_init: u8;
    static __end_ro_after_init: u8;
    static _end: u8;
}

/// The image's boundaries, as virtual addresses.
struct Sections {
    text: u64,
    text_end: u64,
    rodata_end: u64,
    ro_after_init: (u64, u64),
    end: u64,
}

fn sections() -> Sections {
    let addr = |p: *const u8| p as u64;
    // SAFETY: only the addresses of the linker symbols are taken.
    unsafe {
        Sections {
            text: addr(&_text),
            text_end: addr(&_etext).next_multiple_of(PAGE),
            rodata_end: addr(&__end_rodata),
            ro_after_init: (addr(&__start_ro_after_init), addr(&__end_ro_after_init)),
            end: addr(&_end).next_multiple_of(PAGE),
        }
    }
}

impl Sections {
    /// The flags of the 4 KiB page at `va` once init is over.
    fn flags(&self, va: u64) -> u64 {
        if va >= self.text && va < self.text_end {
            PRESENT
        } else if (va >= self.text_end && va < self.rodata_end)
            || (va >= self.ro_after_init.0 && va < self.ro_after_init.1)
        {
            NO_EXECUTE | PRESENT
        } else {
            NO_EXECUTE | WRITABLE | PRESENT
        }
    }
}

/// The kernel map's page directory (the boot code's `boot_pd_kernel`).
fn kernel_pd() -> Option<&'static mut [u64; 512]> {
    let pdpt_entry = top_table()[((KERNEL_MAP >> 39) & 511) as usize];
    let pdpt = mm::phys_to_virt(pdpt_entry & ADDRESS_MASK) as *mut [u64; 512];
    // SAFETY: the boot code installed the kernel PDPT and PD; the direct map covers them.
    let pd_entry = unsafe { (*pdpt)[((KERNEL_MAP >> 30) & 511) as usize] };
    if pdpt_entry & PRESENT == 0 || pd_entry & PRESENT == 0 {
        return None;
    }
    // SAFETY: as above; MAP_LOCK (held by the caller) serialises writers.
    Some(unsafe { &mut *(mm::phys_to_virt(pd_entry & ADDRESS_MASK) as *mut [u64; 512]) })
}

/// Linux's `mark_rodata_ro`: applies the image's permissions (once, at the end of init).
pub fn mark_readonly() {
    let sections = sections();
    let guard = MAP_LOCK.lock_irqsave();
    let Some(pd) = kernel_pd() else {
        drop(guard);
        crate::pr_err!("BUG: the kernel map is not where the boot code puts it");
        return;
    };
    for (i, entry) in pd.iter_mut().enumerate() {
        if *entry & PRESENT == 0 || *entry & HUGE == 0 {
            continue;
        }
        let va = KERNEL_MAP + i as u64 * MIB2;
        if va + MIB2 <= sections.text || va >= sections.end {
            *entry |= NO_EXECUTE;
            continue;
        }
        let Some(table_va) = mm::frame::alloc_pages(1) else {
            crate::pr_err!("BUG: no memory to write-protect the kernel");
            break;
        };
        mm::memmap::set_use(table_va, crashvisor_klib::page::PageUse::Table);
        let phys = *entry & HUGE_ADDRESS_MASK;
        // SAFETY: a page just allocated for this table; nothing else refers to it.
        let table = unsafe { &mut *(table_va as *mut [u64; 512]) };
        for (j, pte) in table.iter_mut().enumerate() {
            let offset = j as u64 * PAGE;
            *pte = (phys + offset) | sections.flags(va + offset);
        }
        *entry = mm::virt_to_phys(table_va) | WRITABLE | PRESENT;
    }
    drop(guard);
    for cpu in 0..smp::possible_cpus() {
        if crate::arch::percpu::of(cpu).online.load(core::sync::atomic::Ordering::Relaxed) {
            smp::call_on_cpu(cpu, flush_tlb, 0);
        }
    }
    crate::pr_info!("Write protecting the kernel read-only data: {}k", (sections.rodata_end - sections.text) >> 10);
    check_wx();
}

/// Whether a present entry leaves its pages writable and executable (NX and a clear
/// writable bit anywhere on the way down win).
fn writable_executable(entry: u64) -> bool {
    entry & (PRESENT | WRITABLE | NO_EXECUTE) == PRESENT | WRITABLE
}

/// The table a non-leaf entry points at.
fn table_of(entry: u64) -> &'static [u64; 512] {
    // SAFETY: a present non-leaf entry points at a page-table page, which the direct map covers.
    unsafe { &*(mm::phys_to_virt(entry & ADDRESS_MASK) as *const [u64; 512]) }
}

/// Counts the 4 KiB pages both writable and executable in the table an entry at `level`
/// (4 = top) points at; subtrees an upper entry makes read-only or NX are skipped whole.
fn count_wx(table: &[u64; 512], level: u32) -> u64 {
    let mut found = 0;
    for &entry in table.iter().filter(|&&e| writable_executable(e)) {
        let leaf = level == 1 || (level <= 3 && entry & HUGE != 0);
        found += if leaf { 1 << (9 * (level - 1)) } else { count_wx(table_of(entry), level - 1) };
    }
    found
}

/// Linux's `ptdump_check_wx`: no page may be both writable and executable.
fn check_wx() {
    let found: u64 = {
        let _guard = MAP_LOCK.lock_irqsave();
        count_wx(top_table(), 4)
    };
    if found == 0 {
        crate::pr_info!("x86/mm: Checked W+X mappings: passed, no W+X pages found.");
    } else {
        crate::pr_warn!("x86/mm: Checked W+X mappings: FAILED, {} W+X pages found.", found);
    }
}
