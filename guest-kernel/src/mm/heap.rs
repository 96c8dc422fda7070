//! The kernel heap (Rust's global allocator): Linux's `kmalloc` — the `kmalloc-16` ..
//! `kmalloc-2k` slab caches (`slab.rs`) for small allocations, whole pages from the frame
//! allocator for anything larger.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::null_mut;

use super::frame;
use super::slab::{KmemCache, KMALLOC};

const PAGE: usize = 4096;
/// Alignment every slab object has (objects start 16-byte aligned in their page).
const SLAB_ALIGN: usize = 16;

/// The global allocator.
pub struct KernelHeap;

/// The kmalloc cache for `layout`: the smallest that holds it, if its objects are aligned
/// enough (a debug cache's objects are only 16-byte aligned; larger alignments take pages).
fn cache_for(layout: &Layout) -> Option<&'static KmemCache> {
    let cache = KMALLOC.iter().find(|c| c.object_size() >= layout.size().max(layout.align()))?;
    let aligned = layout.align() <= SLAB_ALIGN || cache.layout().size.is_multiple_of(layout.align());
    aligned.then_some(cache)
}

// SAFETY: slab objects and page runs handed out are disjoint (each owned by one user until
// freed), aligned as the layout asks (`cache_for`, or page alignment), and the caches and the
// frame allocator serialise their state under their locks.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match cache_for(&layout) {
            Some(cache) => cache.alloc_sized(layout.size()),
            None => frame::alloc_pages(layout.size().div_ceil(PAGE)).map_or(null_mut(), |va| va as *mut u8),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match cache_for(&layout) {
            Some(cache) => cache.free_sized(ptr, layout.size()),
            None => frame::free_pages(ptr as u64, layout.size().div_ceil(PAGE)),
        }
    }
}

#[global_allocator]
static HEAP: KernelHeap = KernelHeap;
