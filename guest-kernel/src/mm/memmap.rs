//! The `struct page` array (Linux's `mem_map` under SPARSEMEM_VMEMMAP) and the `mem_section`
//! table that locates it, kept true as memory is reserved, allocated and freed, so that
//! makedumpfile reads this kernel's memory as it reads Linux's (see docs/kdump.md).
//!
//! - Every memory section (128 MiB) holding RAM has its 32768 `struct page`s at
//!   `VMEMMAP_START + pfn * 64`, backed by 2 MiB of RAM reserved at boot.
//! - Free memory is Linux's buddy blocks (`PageBuddy`, order in `private`) on the block's first
//!   page, mirrored from the frame allocator's bitmap ([`buddy`]); only first pages are written,
//!   a handful per allocation or free. The other free pages keep what the memory held (zero
//!   after a cold boot), as tools skip them by the first page's order.
//! - Allocated pages have one reference and their type (`PageSlab`, `PageTable`, or none);
//!   reserved memory and holes inside a section have `PG_reserved`. A section's whole 64-page
//!   runs of reserved memory (the crash kernel's reservation, the `struct page` array itself)
//!   all map one shared read-only page of reserved `struct page`s, as Linux's HugeTLB vmemmap
//!   optimisation shares identical pages: writing 16384 `struct page`s for a 64 MiB reservation
//!   would cost ~0.1 s of emulated instructions at every boot.
//!
//! The frame allocator calls [`allocated`] and [`freed`] under its lock; the heap and the page
//! tables say what their pages are with [`set_use`].

use core::cell::UnsafeCell;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crashvisor_abi::layout::PAGE_SIZE;
use crashvisor_klib::memmap::buddy::{self, Change};
use crashvisor_klib::memmap::{FrameBitmap, MemoryMap};
use crashvisor_klib::page::{self as linux, Page, PageUse};

use crate::arch::vmemmap;

/// Bytes of `struct page`s per section: 2 MiB.
const SECTION_MAP_BYTES: u64 = linux::PAGES_PER_SECTION * linux::PAGE_STRUCT_SIZE;
/// `struct page`s in one 4 KiB page of the array.
const PAGES_PER_MAP_PAGE: u64 = PAGE_SIZE / linux::PAGE_STRUCT_SIZE;
/// Sections this kernel can describe: three pages of `struct mem_section` (96 GiB of RAM).
const MAX_SECTIONS: u64 = 3 * linux::SECTIONS_PER_ROOT;
/// A section's reserved runs share the read-only page of reserved `struct page`s when they
/// hold at least this many whole 64-page chunks: remapping a section costs 512 page-table
/// writes, a chunk written one `struct page` at a time ~512 stores.
const SHARE_MIN_CHUNKS: u64 = 4;

/// Whether the array is set up (the frame allocator's hooks do nothing before).
static READY: AtomicBool = AtomicBool::new(false);
/// Present sections, one bit each.
static PRESENT: [AtomicU64; (MAX_SECTIONS / 64) as usize] = [const { AtomicU64::new(0) }; 12];

#[repr(C, align(4096))]
struct SectionRoots(UnsafeCell<[u64; linux::NR_SECTION_ROOTS as usize]>);
#[repr(C, align(4096))]
struct SectionPage(UnsafeCell<[[u64; 2]; linux::SECTIONS_PER_ROOT as usize]>);
// SAFETY: written only by the boot CPU in `init`, before other CPUs start; read afterwards.
unsafe impl Sync for SectionRoots {}
// SAFETY: as above.
unsafe impl Sync for SectionPage {}

/// Linux's `mem_section`: the root array of SPARSEMEM_EXTREME, each entry a page of
/// `struct mem_section { section_mem_map, usage }`.
static MEM_SECTION: SectionRoots = SectionRoots(UnsafeCell::new([0; linux::NR_SECTION_ROOTS as usize]));
static SECTION_PAGES: [SectionPage; 3] =
    [const { SectionPage(UnsafeCell::new([[0; 2]; linux::SECTIONS_PER_ROOT as usize])) }; 3];

/// The page of reserved `struct page`s that whole reserved chunks share (read-only).
#[repr(C, align(4096))]
struct SharedPages([Page; PAGES_PER_MAP_PAGE as usize]);
static RESERVED_PAGES: SharedPages = SharedPages([Page::reserved(); PAGES_PER_MAP_PAGE as usize]);

/// The sections holding RAM, in order (each once).
fn present_sections(map: &MemoryMap) -> impl Iterator<Item = u64> + '_ {
    let mut last = None;
    map.ranges().iter().filter(|r| r.kind.is_ram_backed()).flat_map(move |range| {
        let first = linux::pfn_to_section(range.start_pfn());
        let end = linux::pfn_to_section(range.end_pfn().saturating_sub(1)) + 1;
        let from = last.map_or(first, |l: u64| first.max(l + 1));
        last = Some(end - 1);
        from..end
    })
}

/// Bytes of RAM the array needs (2 MiB per section holding RAM), to reserve at boot.
pub fn backing_bytes(map: &MemoryMap) -> u64 {
    present_sections(map).filter(|&s| s < MAX_SECTIONS).count() as u64 * SECTION_MAP_BYTES
}

fn is_present(section: u64) -> bool {
    PRESENT.get((section / 64) as usize).is_some_and(|w| w.load(Ordering::Relaxed) >> (section % 64) & 1 != 0)
}

/// Writes frame `pfn`'s `struct page`.
fn write(pfn: u64, page: Page) {
    if !is_present(linux::pfn_to_section(pfn)) {
        return;
    }
    // SAFETY: every present section's `struct page`s are mapped writable at `pfn_to_page`,
    // except the shared read-only chunks, which hold reserved memory that is never allocated,
    // freed or retyped. Frames are written by their owner or, for free blocks, under the frame
    // allocator's lock.
    unsafe { (linux::pfn_to_page(pfn) as *mut Page).write_volatile(page) };
}

/// Builds the array for the memory map the frame allocator was just built from: maps every
/// section holding RAM to its part of `backing` (2 MiB aligned, [`backing_bytes`] long), fills
/// `mem_section`, marks the free blocks and the reserved memory.
pub fn init(map: &MemoryMap, backing: u64) {
    for (index, section) in present_sections(map).enumerate() {
        if section >= MAX_SECTIONS.min(vmemmap::MAX_SECTIONS) {
            crate::pr_err!("mm: no struct pages for memory above {:#x}", section << linux::SECTION_SIZE_BITS);
            break;
        }
        vmemmap::map_section(section, backing + index as u64 * SECTION_MAP_BYTES);
        let (root, slot) =
            ((section / linux::SECTIONS_PER_ROOT) as usize, (section % linux::SECTIONS_PER_ROOT) as usize);
        // SAFETY: boot CPU only, before other CPUs start (see `SectionRoots`); `root` < 3.
        unsafe {
            (*SECTION_PAGES[root].0.get())[slot][0] = linux::section_mem_map();
            (*MEM_SECTION.0.get())[root] = SECTION_PAGES[root].0.get() as u64;
        }
        PRESENT[(section / 64) as usize].fetch_or(1 << (section % 64), Ordering::Relaxed);
    }
    for range in map.ram() {
        buddy::blocks(range.start_pfn(), range.end_pfn()).for_each(|block| apply(Change::Head(block)));
    }
    READY.store(true, Ordering::Release);
    for section in present_sections(map).filter(|&s| is_present(s)) {
        let mut chunks = 0;
        for_each_reserved_run(map, section, |start, end| chunks += whole_chunks(start, end).count() as u64);
        let share = chunks >= SHARE_MIN_CHUNKS && split(section);
        for_each_reserved_run(map, section, |start, end| mark_reserved(start, end, share));
    }
}

/// Calls `f(start, end)` for each run of frames of `section` that is not free RAM: memory
/// reserved at boot, holes, and frames past the end of RAM.
fn for_each_reserved_run(map: &MemoryMap, section: u64, mut f: impl FnMut(u64, u64)) {
    let (start, end) = (section * linux::PAGES_PER_SECTION, (section + 1) * linux::PAGES_PER_SECTION);
    let mut cursor = start;
    for range in map.ram().filter(|r| r.end_pfn() > start && r.start_pfn() < end) {
        if range.start_pfn() > cursor {
            f(cursor, range.start_pfn());
        }
        cursor = range.end_pfn().min(end);
    }
    if cursor < end {
        f(cursor, end);
    }
}

/// The whole 64-page chunks inside `[start, end)`, as first frames.
fn whole_chunks(start: u64, end: u64) -> impl Iterator<Item = u64> {
    let first = start.next_multiple_of(PAGES_PER_MAP_PAGE);
    let last = end - end % PAGES_PER_MAP_PAGE;
    (first..last.max(first)).step_by(PAGES_PER_MAP_PAGE as usize)
}

/// Remaps `section`'s `struct page`s with 4 KiB pages so chunks can be shared; false if no page
/// table could be had.
fn split(section: u64) -> bool {
    let Some(table) = super::frame::alloc_pages(1) else {
        return false;
    };
    set_use(table, PageUse::Table);
    vmemmap::split_section(section, super::virt_to_phys(table));
    true
}

/// Marks frames `[start, end)` reserved, sharing the read-only page for whole chunks if `share`.
fn mark_reserved(start: u64, end: u64, share: bool) {
    let shared = share.then(|| super::kernel_virt_to_phys(RESERVED_PAGES.0.as_ptr() as u64));
    let mut pfn = start;
    while pfn < end {
        match shared {
            Some(page) if pfn.is_multiple_of(PAGES_PER_MAP_PAGE) && pfn + PAGES_PER_MAP_PAGE <= end => {
                vmemmap::share_page(linux::pfn_to_page(pfn), page);
                pfn += PAGES_PER_MAP_PAGE;
            }
            _ => {
                write(pfn, Page::reserved());
                pfn += 1;
            }
        }
    }
}

fn apply(change: Change) {
    match change {
        Change::Head(block) => write(block.pfn, Page::buddy(block.order)),
        Change::NotHead(pfn) => write(pfn, Page::free()),
    }
}

/// Frames `[pfn, pfn + count)` were just allocated from `frames` (frame allocator lock held).
pub fn allocated(frames: &FrameBitmap, pfn: u64, count: u64) {
    if !READY.load(Ordering::Acquire) {
        return;
    }
    (pfn..pfn + count).for_each(|p| write(p, Page::in_use(PageUse::Kernel)));
    buddy::after_alloc(pfn, pfn + count, |s, e| frames.is_free_range(s, e), apply);
}

/// Frames `[pfn, pfn + count)` were just freed into `frames` (frame allocator lock held).
pub fn freed(frames: &FrameBitmap, pfn: u64, count: u64) {
    if !READY.load(Ordering::Acquire) {
        return;
    }
    (pfn..pfn + count).for_each(|p| write(p, Page::free()));
    buddy::after_free(pfn, pfn + count, |s, e| frames.is_free_range(s, e), apply);
}

/// Records what the allocated page at direct-map address `va` is used for.
pub fn set_use(va: u64, usage: PageUse) {
    if READY.load(Ordering::Acquire) {
        write(super::virt_to_phys(va) / PAGE_SIZE, Page::in_use(usage));
    }
}

/// The VMCOREINFO lines of the memory model and of `struct page` (Linux's names and values).
pub fn write_vmcoreinfo(w: &mut dyn Write) -> fmt::Result {
    writeln!(w, "SYMBOL(mem_section)={:x}", MEM_SECTION.0.get() as u64)?;
    writeln!(w, "LENGTH(mem_section)={}", linux::NR_SECTION_ROOTS)?;
    writeln!(w, "SIZE(mem_section)={}", linux::MEM_SECTION_SIZE)?;
    writeln!(w, "OFFSET(mem_section.section_mem_map)=0")?;
    writeln!(w, "NUMBER(SECTION_SIZE_BITS)={}", linux::SECTION_SIZE_BITS)?;
    writeln!(w, "NUMBER(MAX_PHYSMEM_BITS)={}", linux::MAX_PHYSMEM_BITS)?;
    writeln!(w, "SYMBOL(vmemmap)={:x}", linux::VMEMMAP_START)?;
    writeln!(w, "SIZE(page)={}", linux::PAGE_STRUCT_SIZE)?;
    for (field, offset) in [
        ("flags", linux::OFFSET_FLAGS),
        ("_refcount", linux::OFFSET_REFCOUNT),
        ("mapping", linux::OFFSET_MAPPING),
        ("lru", linux::OFFSET_LRU),
        ("_mapcount", linux::OFFSET_MAPCOUNT),
        ("private", linux::OFFSET_PRIVATE),
        ("compound_head", linux::OFFSET_COMPOUND_HEAD),
    ] {
        writeln!(w, "OFFSET(page.{field})={offset}")?;
    }
    for (name, bit) in [
        ("PG_lru", linux::PG_LRU),
        ("PG_private", linux::PG_PRIVATE),
        ("PG_swapcache", linux::PG_SWAPCACHE),
        ("PG_swapbacked", linux::PG_SWAPBACKED),
        ("PG_hwpoison", linux::PG_HWPOISON),
    ] {
        writeln!(w, "NUMBER({name})={bit}")?;
    }
    writeln!(w, "NUMBER(PG_head_mask)={}", linux::PG_HEAD_MASK)?;
    for (name, pgty) in [
        ("PAGE_SLAB_MAPCOUNT_VALUE", linux::PGTY_SLAB),
        ("PAGE_BUDDY_MAPCOUNT_VALUE", linux::PGTY_BUDDY),
        ("PAGE_HUGETLB_MAPCOUNT_VALUE", linux::PGTY_HUGETLB),
        ("PAGE_OFFLINE_MAPCOUNT_VALUE", linux::PGTY_OFFLINE),
    ] {
        writeln!(w, "NUMBER({name})={}", linux::mapcount_value(pgty))?;
    }
    Ok(())
}
