//! The vmalloc area (Linux's `VMALLOC_START`): kernel stacks and `vmalloc` memory mapped with
//! 4 KiB pages, writable and never executable, each in its own 64 KiB slot with an unmapped
//! guard page below it and unmapped padding above it, so running off either end faults instead
//! of corrupting memory.
//!
//! Slots are handed out in increasing order and never reused: freeing unmaps the pages and
//! returns their frames, and a stale translation another CPU may cache for a dead slot cannot
//! be reached because nothing maps that address again.

use core::sync::atomic::{AtomicU64, Ordering};

use super::paging::{next_table, top_table, ADDRESS_MASK, MAP_LOCK, NO_EXECUTE, PRESENT, WRITABLE};
use crate::mm;

/// Base of the area (Linux's `VMALLOC_START`, in VMCOREINFO).
pub const VMALLOC_START: u64 = 0xffff_c900_0000_0000;
/// Virtual space per slot: the guard page, the mapping, and unmapped padding.
const SLOT: u64 = 64 * 1024;
const PAGE: u64 = 4096;
/// The largest mapping a slot holds.
pub const MAX_BYTES: u64 = SLOT - 2 * PAGE;

static NEXT_SLOT: AtomicU64 = AtomicU64::new(0);

/// The first mapped address of a new slot.
fn new_slot() -> u64 {
    VMALLOC_START + NEXT_SLOT.fetch_add(1, Ordering::Relaxed) * SLOT + PAGE
}

/// The page-table entry slot of `va`, creating the tables above it. Hold `MAP_LOCK`.
fn pte(va: u64) -> Option<&'static mut u64> {
    let pml4 = top_table();
    let top = &mut pml4[((va >> 39) & 511) as usize];
    let pdpt = next_table(top)?;
    // Nothing in the vmalloc area is ever executable.
    *top |= NO_EXECUTE;
    let pd = next_table(&mut pdpt[((va >> 30) & 511) as usize])?;
    let pt = next_table(&mut pd[((va >> 21) & 511) as usize])?;
    Some(&mut pt[((va >> 12) & 511) as usize])
}

/// Maps the 4 KiB page at `va` to `pa`, writable, not executable.
fn map_4k(va: u64, pa: u64) -> Option<()> {
    let _guard = MAP_LOCK.lock_irqsave();
    // Filling an empty slot changes no existing translation: no flush needed.
    *pte(va)? = pa | NO_EXECUTE | WRITABLE | PRESENT;
    Some(())
}

/// Unmaps the 4 KiB page at `va` on this CPU and returns what it mapped.
fn unmap_4k(va: u64) -> Option<u64> {
    let _guard = MAP_LOCK.lock_irqsave();
    let entry = pte(va)?;
    let old = core::mem::replace(entry, 0);
    // SAFETY: drops this CPU's cached translation of a page nothing uses any more.
    unsafe { core::arch::asm!("invlpg [{}]", in(reg) va, options(nostack, preserves_flags)) };
    (old & PRESENT != 0).then_some(old & ADDRESS_MASK)
}

/// Allocates a kernel stack of `size` bytes (a multiple of 4 KiB, at most [`MAX_BYTES`]);
/// returns its lowest virtual address and the physical address of its (contiguous) memory,
/// which a vmcore maps back to the virtual one. Not zeroed.
pub fn alloc_stack(size: u64) -> Option<(u64, u64)> {
    let size = size.min(MAX_BYTES);
    let base = new_slot();
    let va = mm::frame::alloc_pages((size / PAGE) as usize)?;
    let phys = mm::virt_to_phys(va);
    for offset in (0..size).step_by(PAGE as usize) {
        if map_4k(base + offset, phys + offset).is_none() {
            free_stack(base, phys, offset);
            mm::frame::free_pages(va + offset, ((size - offset) / PAGE) as usize);
            return None;
        }
    }
    Some((base, phys))
}

/// Unmaps and frees a stack from [`alloc_stack`] (its task is dead and off it).
pub fn free_stack(base: u64, phys: u64, size: u64) {
    for offset in (0..size).step_by(PAGE as usize) {
        unmap_4k(base + offset);
    }
    mm::frame::free_pages(mm::phys_to_virt(phys), (size / PAGE) as usize);
}

/// Whether `address` is in the guard page below the stack that starts at `stack_base`.
pub fn is_guard_page(address: u64, stack_base: u64) -> bool {
    stack_base >= VMALLOC_START && address < stack_base && address >= stack_base - PAGE
}

/// The address of a page nothing maps, ever: a fresh slot's first page (for provoking faults).
pub fn unmapped_page() -> u64 {
    new_slot()
}

/// A `vmalloc` area: pages mapped contiguously in the vmalloc area, freed on drop (`vfree`).
pub struct VmArea {
    base: u64,
    pages: u64,
}

impl VmArea {
    /// Linux's `vmalloc`: `size` bytes (rounded up to pages, at most [`MAX_BYTES`]), not zeroed.
    pub fn new(size: u64) -> Option<Self> {
        let pages = size.div_ceil(PAGE).clamp(1, MAX_BYTES / PAGE);
        let mut area = Self { base: new_slot(), pages: 0 };
        while area.pages < pages {
            let frame = mm::frame::alloc_pages(1)?;
            if map_4k(area.base + area.pages * PAGE, mm::virt_to_phys(frame)).is_none() {
                mm::frame::free_pages(frame, 1);
                return None;
            }
            area.pages += 1;
        }
        Some(area)
    }

    /// The first byte.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.base as *mut u8
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        (self.pages * PAGE) as usize
    }
}

impl Drop for VmArea {
    fn drop(&mut self) {
        for page in 0..self.pages {
            if let Some(pa) = unmap_4k(self.base + page * PAGE) {
                mm::frame::free_pages(mm::phys_to_virt(pa), 1);
            }
        }
    }
}
