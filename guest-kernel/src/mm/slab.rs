//! Slab caches (Linux's SLUB in miniature): named caches of equal-sized objects carved from
//! pages, the `kmalloc-16` .. `kmalloc-2k` caches behind the kernel heap, and the hardening and
//! debug checks Linux has around them.
//!
//! - Always on (Linux's `CONFIG_SLAB_FREELIST_HARDENED`): freeing the object at the head of its
//!   cache's free list again is a `BUG()` (the naive double-free check), and `kmem_cache_free`
//!   into the wrong cache, or of memory that is no slab, warns (`cache_from_obj`).
//! - With `slab_debug=` (or `slub_debug=`) for a cache (`klib::slab_debug` parses it): `F`
//!   finds a double free on the free list ("Object already free"), `Z` puts a red zone after
//!   each object and checks it, `P` poisons free objects and checks the poison when they are
//!   allocated again. Reports are `slab_debug.rs`'s.
//!
//! Each slab page records its cache in a map from page frame to cache (what Linux keeps in
//! `struct slab`), so a free can tell which cache an object belongs to.

use alloc::boxed::Box;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicUsize, Ordering};

use crashvisor_klib::page::PageUse;
use crashvisor_klib::slab_debug::{DebugFlags, ObjectLayout, RED_ACTIVE};

use super::{frame, memmap, slab_debug, virt_to_phys};
use crate::sync::SpinLock;

const PAGE: usize = 4096;
/// Page frames whose owner one leaf of the owner map records (a page of `u8`s: 16 MiB of RAM).
const LEAF_FRAMES: usize = PAGE;
/// Leaves of the owner map: as far as the direct map reaches.
const LEAVES: usize = (crate::arch::paging::DIRECT_MAP_MAX_2M / (LEAF_FRAMES * PAGE) as u64) as usize;
/// Most caches (cache ids are `u8`, 0 meaning "not a slab page").
const MAX_CACHES: usize = 255;

/// A cache of objects of one size.
pub struct KmemCache {
    name: &'static str,
    object_size: usize,
    /// `DebugFlags` bits, fixed before the first object is handed out.
    flags: AtomicU8,
    /// This cache's index in `CACHES` (0 until registered).
    id: AtomicU8,
    state: SpinLock<CacheState>,
}

struct CacheState {
    /// The first free object, 0 for none; each free object holds the next at its free pointer.
    freelist: usize,
    /// Objects handed out.
    inuse: usize,
    /// Objects in all the cache's slabs (bounds walks of the free list).
    objects: usize,
}

/// What a slab page holds, for a report.
pub(super) struct SlabUsage {
    /// The page's address.
    pub page: usize,
    /// Objects it holds.
    pub objects: usize,
    /// Of which allocated.
    pub used: usize,
    /// The cache's free-list head.
    pub freelist: usize,
}

/// The owner map: per 16 MiB of RAM, a page of cache ids (0 = not a slab page).
static OWNERS: [AtomicPtr<[AtomicU8; LEAF_FRAMES]>; LEAVES] = [const { AtomicPtr::new(null_mut()) }; LEAVES];
/// Every cache, by id (index 0 unused).
static CACHES: [AtomicPtr<KmemCache>; MAX_CACHES + 1] = [const { AtomicPtr::new(null_mut()) }; MAX_CACHES + 1];
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// The caches behind the kernel heap, smallest first (Linux's `kmalloc_caches`).
pub static KMALLOC: [KmemCache; 8] = [
    KmemCache::new("kmalloc-16", 16),
    KmemCache::new("kmalloc-32", 32),
    KmemCache::new("kmalloc-64", 64),
    KmemCache::new("kmalloc-128", 128),
    KmemCache::new("kmalloc-256", 256),
    KmemCache::new("kmalloc-512", 512),
    KmemCache::new("kmalloc-1k", 1024),
    KmemCache::new("kmalloc-2k", 2048),
];

/// The boot parameter that selects debug checks (`slab_debug=`, or its old name `slub_debug=`).
fn debug_param() -> Option<Option<&'static str>> {
    let cmdline = crate::params::cmdline();
    cmdline.get("slab_debug").or_else(|| cmdline.get("slub_debug"))
}

/// Registers the kmalloc caches with their debug checks. Boot CPU, after the command line is
/// saved and before the first allocation.
pub fn init() {
    for cache in &KMALLOC {
        cache.register();
    }
}

impl KmemCache {
    const fn new(name: &'static str, object_size: usize) -> Self {
        Self {
            name,
            object_size,
            flags: AtomicU8::new(0),
            id: AtomicU8::new(0),
            state: SpinLock::new(CacheState { freelist: 0, inuse: 0, objects: 0 }),
        }
    }

    /// Linux's `kmem_cache_create`: a new cache of `object_size`-byte objects (at most 2 KiB).
    pub fn create(name: &'static str, object_size: usize) -> Option<&'static Self> {
        if object_size == 0 || object_size > KMALLOC[KMALLOC.len() - 1].object_size {
            return None;
        }
        let cache: &'static Self = Box::leak(Box::new(Self::new(name, object_size)));
        cache.register().then_some(cache)
    }

    fn register(&'static self) -> bool {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        if id > MAX_CACHES {
            return false;
        }
        self.flags.store(DebugFlags::for_cache(debug_param(), self.name).bits(), Ordering::Relaxed);
        self.id.store(id as u8, Ordering::Relaxed);
        CACHES[id].store(self as *const Self as *mut Self, Ordering::Release);
        true
    }

    /// The cache's name (`kmalloc-1k`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The size of its objects.
    pub fn object_size(&self) -> usize {
        self.object_size
    }

    /// Its debug checks.
    pub(super) fn debug(&self) -> DebugFlags {
        DebugFlags::from_bits(self.flags.load(Ordering::Relaxed))
    }

    pub(super) fn layout(&self) -> ObjectLayout {
        ObjectLayout::new(self.object_size, self.debug())
    }

    /// Linux's `kmem_cache_alloc`: an object, or null without memory. Not zeroed.
    pub fn alloc(&self) -> *mut u8 {
        self.alloc_sized(self.object_size)
    }

    /// An object of which the caller asked for `size` bytes (`kmalloc`: the rest is the
    /// kmalloc red zone under `Z`).
    pub(super) fn alloc_sized(&self, size: usize) -> *mut u8 {
        let layout = self.layout();
        let object = {
            let mut state = self.state.lock_irqsave();
            if state.freelist == 0 && !self.grow(&mut state, &layout) {
                return null_mut();
            }
            let object = state.freelist;
            state.freelist = read_word(object + layout.free_pointer);
            state.inuse += 1;
            object
        };
        let debug = self.debug();
        if !debug.is_empty() {
            slab_debug::check_free_object(self, object, &layout);
            if debug.contains(DebugFlags::RED_ZONE) {
                fill(object + layout.red_zone.start, layout.red_zone.len(), RED_ACTIVE);
                fill(object + size, self.object_size.saturating_sub(size), RED_ACTIVE);
            }
        }
        object as *mut u8
    }

    /// Linux's `kmem_cache_free` (see [`kmem_cache_free`]).
    pub fn free(&'static self, object: *mut u8) {
        kmem_cache_free(Some(self), object);
    }

    /// Frees an object of which `size` bytes were asked for.
    pub(super) fn free_sized(&self, object: *mut u8, size: usize) {
        let object = object as usize;
        let layout = self.layout();
        let debug = self.debug();
        if debug.contains(DebugFlags::CONSISTENCY) && self.on_freelist(object, &layout) {
            slab_debug::object_already_free(self, object, &layout);
            return;
        }
        if !debug.is_empty() {
            slab_debug::check_allocated_object(self, object, size, &layout);
            slab_debug::prepare_free_object(object, &layout, debug);
        }
        let mut state = self.state.lock_irqsave();
        if state.freelist == object {
            // Linux's set_freepointer: `BUG_ON(object == fp)`, naive detection of a double free.
            drop(state);
            crate::bug!();
        }
        write_word(object + layout.free_pointer, state.freelist);
        state.freelist = object;
        state.inuse = state.inuse.saturating_sub(1);
    }

    /// The free list's objects (walked at most as far as the cache has objects, so a corrupted
    /// list cannot loop forever). Holds the cache's lock.
    fn free_objects<'a>(state: &'a CacheState, layout: &'a ObjectLayout) -> impl Iterator<Item = usize> + 'a {
        core::iter::successors(Some(state.freelist).filter(|&f| f != 0), move |&f| {
            Some(read_word(f + layout.free_pointer)).filter(|&n| n != 0)
        })
        .take(state.objects)
    }

    /// Whether `object` is on the free list.
    fn on_freelist(&self, object: usize, layout: &ObjectLayout) -> bool {
        let state = self.state.lock_irqsave();
        let found = Self::free_objects(&state, layout).any(|free| free == object);
        found
    }

    /// What the slab page holding `object` holds.
    pub(super) fn usage(&self, object: usize, layout: &ObjectLayout) -> SlabUsage {
        let page = object & !(PAGE - 1);
        let state = self.state.lock_irqsave();
        let free = Self::free_objects(&state, layout).filter(|f| f & !(PAGE - 1) == page).count();
        let objects = layout.objects_in(PAGE);
        SlabUsage { page, objects, used: objects.saturating_sub(free), freelist: state.freelist }
    }

    /// A new slab page for the free list. Holds the cache's lock.
    fn grow(&self, state: &mut CacheState, layout: &ObjectLayout) -> bool {
        let Some(page) = frame::alloc_pages(1) else { return false };
        if !set_owner(page as usize, self.id.load(Ordering::Relaxed)) {
            frame::free_pages(page, 1);
            return false;
        }
        memmap::set_use(page, PageUse::Slab);
        let debug = self.debug();
        let mut next = state.freelist;
        for index in (0..layout.objects_in(PAGE)).rev() {
            let object = page as usize + index * layout.size;
            if !debug.is_empty() {
                slab_debug::prepare_free_object(object, layout, debug);
            }
            write_word(object + layout.free_pointer, next);
            next = object;
        }
        state.freelist = next;
        state.objects += layout.objects_in(PAGE);
        true
    }
}

/// Linux's `kmem_cache_free` with `cache_from_obj`: an object of another cache than `cache` is
/// freed into its own after a warning; memory that is no slab is left alone after one.
pub fn kmem_cache_free(cache: Option<&'static KmemCache>, object: *mut u8) {
    let Some(owner) = cache_of(object as usize) else {
        crate::warn_once!(true, "virt_to_cache: Object is not a Slab page!");
        return;
    };
    if let Some(cache) = cache.filter(|c| !core::ptr::eq(*c, owner)) {
        crate::warn!(true, "cache_from_obj: Wrong slab cache. {} but object is from {}", cache.name, owner.name);
    }
    owner.free_sized(object, owner.object_size);
}

/// The cache whose slab holds `address` (Linux's `virt_to_cache`), if any.
pub fn cache_of(address: usize) -> Option<&'static KmemCache> {
    let pfn = (virt_to_phys(address as u64) / PAGE as u64) as usize;
    let leaf = OWNERS.get(pfn / LEAF_FRAMES)?.load(Ordering::Acquire);
    // SAFETY: leaves are pages allocated once by `set_owner` and never freed.
    let id = unsafe { leaf.as_ref()? }[pfn % LEAF_FRAMES].load(Ordering::Relaxed);
    // SAFETY: registered caches live for ever (statics or leaked boxes).
    unsafe { CACHES[usize::from(id)].load(Ordering::Acquire).as_ref() }
}

/// Records that the page at direct-map address `page` is a slab of cache `id`.
fn set_owner(page: usize, id: u8) -> bool {
    let pfn = (virt_to_phys(page as u64) / PAGE as u64) as usize;
    let Some(slot) = OWNERS.get(pfn / LEAF_FRAMES) else { return false };
    let mut leaf = slot.load(Ordering::Acquire);
    if leaf.is_null() {
        let Some(fresh) = frame::alloc_pages(1) else { return false };
        // SAFETY: a page just allocated for this leaf; nothing else refers to it.
        unsafe { core::ptr::write_bytes(fresh as *mut u8, 0, PAGE) };
        let fresh = fresh as *mut [AtomicU8; LEAF_FRAMES];
        leaf = match slot.compare_exchange(null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => fresh,
            Err(theirs) => {
                frame::free_pages(fresh as u64, 1);
                theirs
            }
        };
    }
    // SAFETY: a leaf page, never freed.
    let leaf = unsafe { &*leaf };
    leaf[pfn % LEAF_FRAMES].store(id, Ordering::Relaxed);
    true
}

/// Reads the word at `address` (a free pointer inside a slab object).
pub(super) fn read_word(address: usize) -> usize {
    // SAFETY: callers pass the free-pointer slot of an object of a slab page they own.
    unsafe { (address as *const usize).read() }
}

fn write_word(address: usize, value: usize) {
    // SAFETY: as `read_word`.
    unsafe { (address as *mut usize).write(value) }
}

/// Fills `len` bytes at `address` (part of a slab object) with `value`.
pub(super) fn fill(address: usize, len: usize, value: u8) {
    // SAFETY: callers pass a range inside a slab object they own.
    unsafe { core::ptr::write_bytes(address as *mut u8, value, len) };
}

/// Linux's `kmalloc`: `size` bytes from the smallest kmalloc cache that fits (at most 2 KiB).
pub fn kmalloc(size: usize) -> *mut u8 {
    KMALLOC.iter().find(|c| c.object_size >= size).map_or(null_mut(), |c| c.alloc_sized(size))
}

/// Linux's `kfree` of a `kmalloc(size)` object.
pub fn kfree(object: *mut u8, size: usize) {
    if let Some(cache) = KMALLOC.iter().find(|c| c.object_size >= size) {
        cache.free_sized(object, size);
    }
}
