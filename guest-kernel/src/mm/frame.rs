//! The physical frame allocator: one bit per 4 KiB frame of RAM (set = in use), built from the
//! PVH memory map. The bitmap lives in RAM right after the kernel image; its address is
//! published (VMCOREINFO) so a capture kernel can skip free pages. Every allocation and free
//! is mirrored into the `struct page` array ([`memmap`]).

use core::sync::atomic::{AtomicU64, Ordering};

use crashvisor_klib::memmap::{FrameBitmap, MemoryMap};

use super::{memmap, phys_to_virt};
use crate::sync::SpinLock;

const PAGE: u64 = 4096;

static FRAMES: SpinLock<Option<FrameBitmap<'static>>> = SpinLock::new(None);
/// Where the bitmap is and how many frames it covers (published in VMCOREINFO).
static LOCATION: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Builds the allocator: every RAM page that `map` leaves unreserved becomes free. The bitmap
/// is placed at `bitmap_phys` (page aligned, inside RAM the map already reserves).
pub fn init(map: &MemoryMap, bitmap_phys: u64) {
    let nr_frames = map.ram_end().div_ceil(PAGE);
    let words = FrameBitmap::words_needed(nr_frames);
    // SAFETY: the caller reserved `bitmap_phys .. + words*8` for the bitmap; the direct map
    // covers it and nothing else refers to that memory.
    let bits = unsafe { core::slice::from_raw_parts_mut(phys_to_virt(bitmap_phys) as *mut u64, words) };
    let Ok(mut bitmap) = FrameBitmap::new(bits, nr_frames) else {
        crate::pr_err!("BUG: frame bitmap too small for {} frames", nr_frames);
        return;
    };
    for range in map.ram() {
        if bitmap.free_range(range.start_pfn(), range.end_pfn()).is_err() {
            crate::pr_err!("BUG: RAM range {:#x}-{:#x} outside the frame bitmap", range.start, range.end);
        }
    }
    LOCATION[0].store(bitmap_phys, Ordering::Relaxed);
    LOCATION[1].store(nr_frames, Ordering::Relaxed);
    *FRAMES.lock_irqsave() = Some(bitmap);
}

/// Allocates `count` contiguous pages; returns their direct-map address. Not zeroed.
pub fn alloc_pages(count: usize) -> Option<u64> {
    let mut frames = FRAMES.lock_irqsave();
    let bitmap = frames.as_mut()?;
    let pfn = if count == 1 { bitmap.alloc() } else { bitmap.alloc_contiguous(count as u64, 1) }?;
    memmap::allocated(bitmap, pfn, count as u64);
    Some(phys_to_virt(pfn * PAGE))
}

/// Allocates `count` contiguous pages starting at a multiple of `align_pages` pages; returns
/// their direct-map address. Not zeroed.
pub fn alloc_pages_aligned(count: usize, align_pages: u64) -> Option<u64> {
    let mut frames = FRAMES.lock_irqsave();
    let bitmap = frames.as_mut()?;
    let pfn = bitmap.alloc_contiguous(count as u64, align_pages)?;
    memmap::allocated(bitmap, pfn, count as u64);
    Some(phys_to_virt(pfn * PAGE))
}

/// Frees `count` pages starting at direct-map address `va`.
pub fn free_pages(va: u64, count: usize) {
    let pfn = super::virt_to_phys(va) / PAGE;
    let mut frames = FRAMES.lock_irqsave();
    if let Some(bitmap) = frames.as_mut() {
        for i in 0..count as u64 {
            if bitmap.free(pfn + i).is_err() {
                memmap::freed(bitmap, pfn, i);
                drop(frames);
                crate::pr_err!("BUG: Bad page state: pfn:{:x} freed twice", pfn + i);
                return;
            }
        }
        memmap::freed(bitmap, pfn, count as u64);
    }
}

/// Free frames now.
pub fn free_count() -> u64 {
    FRAMES.lock_irqsave().as_ref().map_or(0, |b| b.free_count())
}

/// Physical address of the frame bitmap and the number of frames it covers.
pub fn bitmap_location() -> (u64, u64) {
    (LOCATION[0].load(Ordering::Relaxed), LOCATION[1].load(Ordering::Relaxed))
}
