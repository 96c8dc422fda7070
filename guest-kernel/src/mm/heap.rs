//! The kernel heap: power-of-two size classes from 16 to 2048 bytes carved out of pages, and
//! whole pages from the frame allocator for anything larger.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::null_mut;

use crashvisor_klib::page::PageUse;

use super::{frame, memmap};
use crate::sync::SpinLock;

const PAGE: usize = 4096;
const MIN_CLASS_SHIFT: usize = 4;
const CLASSES: usize = 8; // 16 .. 2048

struct FreeLists {
    heads: [usize; CLASSES],
}

/// The global allocator.
pub struct KernelHeap {
    lists: SpinLock<FreeLists>,
}

fn class_of(layout: &Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(1 << MIN_CLASS_SHIFT);
    let class = size.next_power_of_two().trailing_zeros() as usize - MIN_CLASS_SHIFT;
    (class < CLASSES).then_some(class)
}

// SAFETY: blocks handed out are disjoint (each free-list entry or page run is owned by exactly
// one user), aligned to their power-of-two size (which covers the layout's alignment), and the
// lists are only touched under the lock with interrupts off.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(&layout) else {
            return frame::alloc_pages(layout.size().div_ceil(PAGE)).map_or(null_mut(), |va| va as *mut u8);
        };
        let mut lists = self.lists.lock_irqsave();
        if lists.heads[class] == 0 {
            let Some(page) = frame::alloc_pages(1) else {
                return null_mut();
            };
            memmap::set_use(page, PageUse::Slab);
            let size = 1usize << (class + MIN_CLASS_SHIFT);
            // Thread the new page's blocks onto the free list.
            let mut next = 0usize;
            for offset in (0..PAGE).step_by(size).rev() {
                let block = page as usize + offset;
                // SAFETY: `block` lies inside the page just allocated for this list.
                unsafe { (block as *mut usize).write(next) };
                next = block;
            }
            lists.heads[class] = next;
        }
        let block = lists.heads[class];
        // SAFETY: free-list entries are blocks of this heap whose first word links the list.
        lists.heads[class] = unsafe { (block as *const usize).read() };
        block as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(class) = class_of(&layout) else {
            frame::free_pages(ptr as u64, layout.size().div_ceil(PAGE));
            return;
        };
        let mut lists = self.lists.lock_irqsave();
        // SAFETY: `ptr` was returned by `alloc` for the same class; the block is now unused.
        unsafe { (ptr as *mut usize).write(lists.heads[class]) };
        lists.heads[class] = ptr as usize;
    }
}

#[global_allocator]
static HEAP: KernelHeap = KernelHeap { lists: SpinLock::new(FreeLists { heads: [0; CLASSES] }) };
