//! LKDTM's `heap.c`: slab and vmalloc overflows, use after free, and frees into the wrong
//! cache, a freed object twice, or memory that is no slab — each caught by the slab
//! allocator's hardening or its `slab_debug=` checks (`mm/slab.rs`), or a vmalloc guard page.

use core::sync::atomic::{AtomicPtr, Ordering};

use super::{lkdtm_err, lkdtm_info};
use crate::arch::vmap::VmArea;
use crate::mm::slab::{self, KmemCache};

static DOUBLE_FREE_CACHE: AtomicPtr<KmemCache> = AtomicPtr::new(core::ptr::null_mut());
static A_CACHE: AtomicPtr<KmemCache> = AtomicPtr::new(core::ptr::null_mut());
static B_CACHE: AtomicPtr<KmemCache> = AtomicPtr::new(core::ptr::null_mut());

/// Linux's `lkdtm_heap_init`: three 64-byte caches.
pub(super) fn init() {
    for (slot, name) in
        [(&DOUBLE_FREE_CACHE, "lkdtm-heap-double_free"), (&A_CACHE, "lkdtm-heap-a"), (&B_CACHE, "lkdtm-heap-b")]
    {
        if let Some(cache) = KmemCache::create(name, 64) {
            slot.store(cache as *const KmemCache as *mut KmemCache, Ordering::Release);
        }
    }
}

fn cache(slot: &AtomicPtr<KmemCache>) -> Option<&'static KmemCache> {
    // SAFETY: the slots hold caches leaked by `KmemCache::create`, which live for ever.
    unsafe { slot.load(Ordering::Acquire).as_ref() }
}

/// An object of `cache` (LKDTM's `name` for it) with `marker` in its first `int`, or `None`
/// after LKDTM's message when there is no memory.
fn alloc_marked(cache: &KmemCache, name: &str, marker: i32) -> Option<*mut u8> {
    let val = cache.alloc();
    if val.is_null() {
        lkdtm_info!("Unable to allocate {name} memory.");
        return None;
    }
    // SAFETY: a live 64-byte object.
    unsafe { int_at(val, 0).write_volatile(marker) };
    Some(val)
}

/// The `int` at `index` of a buffer.
fn int_at(base: *mut u8, index: usize) -> *mut i32 {
    base.cast::<i32>().wrapping_add(index)
}

/// A write one `u32` past a 1020-byte allocation: the next 1 KiB object, or the red zone.
pub fn lkdtm_SLAB_LINEAR_OVERFLOW() {
    const LEN: usize = 1020;
    let data = slab::kmalloc(LEN);
    if data.is_null() {
        return;
    }
    lkdtm_info!("Attempting slab linear overflow ...");
    // SAFETY: deliberately one word past the allocation, inside the kmalloc-1k slab page (the
    // next object, or this object's red zone under slab_debug=Z).
    unsafe { int_at(data, 1024 / 4).write_volatile(0x1234_5678) };
    slab::kfree(data, LEN);
}

/// A write one byte past a one-page vmalloc area: its unmapped guard.
pub fn lkdtm_VMALLOC_LINEAR_OVERFLOW() {
    let (Some(one), Some(_two)) = (VmArea::new(4096), VmArea::new(4096)) else { return };
    lkdtm_info!("Attempting vmalloc linear overflow ...");
    // SAFETY: deliberately writes one byte past the area; the page-fault handler ends this task.
    unsafe { core::ptr::write_bytes(core::hint::black_box(one.as_mut_ptr()), 0xAA, one.len() + 1) };
}

/// A write into the middle of a freed 1 KiB object, then an allocation that gets it back.
pub fn lkdtm_WRITE_AFTER_FREE() {
    const LEN: usize = 1024;
    let offset = (LEN / 4) / 2;
    let base = slab::kmalloc(LEN);
    if base.is_null() {
        return;
    }
    lkdtm_info!("Allocated memory {:016x}-{:016x}", base as u64, int_at(base, offset * 2) as u64);
    lkdtm_info!("Attempting bad write to freed memory at {:016x}", int_at(base, offset) as u64);
    slab::kfree(base, LEN);
    // SAFETY: deliberately writes freed memory (its slab page stays mapped); slab_debug=P
    // finds it when the object is allocated again.
    unsafe { int_at(base, offset).write_volatile(0x0abc_def0) };
    let again = slab::kmalloc(LEN);
    slab::kfree(again, LEN);
    if again != base {
        lkdtm_info!("Hmm, didn't get the same memory range.");
    }
}

/// A read from a freed 1 KiB object: poisoned under slab_debug=P.
pub fn lkdtm_READ_AFTER_FREE() {
    const LEN: usize = 1024;
    let offset = core::mem::size_of::<i32>();
    let base = slab::kmalloc(LEN);
    if base.is_null() {
        return lkdtm_info!("Unable to allocate base memory.");
    }
    let val = slab::kmalloc(LEN);
    if val.is_null() {
        lkdtm_info!("Unable to allocate val memory.");
        return slab::kfree(base, LEN);
    }
    // SAFETY: both are live 1 KiB allocations; the read after free below stays inside the
    // freed object's slab page, which stays mapped.
    unsafe {
        int_at(val, 0).write_volatile(0x1234_5678);
        int_at(base, offset).write_volatile(int_at(val, 0).read_volatile());
        lkdtm_info!("Value in memory before free: {:x}", int_at(base, offset).read_volatile());
        slab::kfree(base, LEN);
        lkdtm_info!("Attempting bad read from freed memory");
        let saw = int_at(base, offset).read_volatile();
        if saw != int_at(val, 0).read_volatile() {
            lkdtm_info!("Memory correctly poisoned ({:x})", saw);
        } else {
            lkdtm_err!("FAIL: Memory was not poisoned!");
            lkdtm_err!(
                "This is probably expected, since this {} was built *without* CONFIG_INIT_ON_FREE_DEFAULT_ON=y (and booted without 'init_on_free' specified)",
                super::KERNEL_INFO
            );
        }
    }
    slab::kfree(val, LEN);
}

/// `kmem_cache_free()` twice.
pub fn lkdtm_SLAB_FREE_DOUBLE() {
    let Some(cache) = cache(&DOUBLE_FREE_CACHE) else { return };
    let Some(val) = alloc_marked(cache, "double_free_cache", 0x1234_5678) else { return };
    lkdtm_info!("Attempting double slab free ...");
    cache.free(val);
    cache.free(val);
    core::hint::black_box(()); // no tail call: the function stays in traces
}

/// `kmem_cache_free()` into another cache than the object's.
pub fn lkdtm_SLAB_FREE_CROSS() {
    let (Some(a), Some(b)) = (cache(&A_CACHE), cache(&B_CACHE)) else { return };
    let Some(val) = alloc_marked(a, "a_cache", 0x1234_5679) else { return };
    lkdtm_info!("Attempting cross-cache slab free ...");
    b.free(val);
    core::hint::black_box(()); // no tail call: the function stays in traces
}

/// `kmem_cache_free()` of a page from the page allocator.
pub fn lkdtm_SLAB_FREE_PAGE() {
    let Some(page) = crate::mm::frame::alloc_pages(1) else { return };
    lkdtm_info!("Attempting non-Slab slab free ...");
    slab::kmem_cache_free(None, page as *mut u8);
    crate::mm::frame::free_pages(page, 1);
}
