//! Linux's `struct page` on x86_64 (6.18), the page flags and page types the guest keeps in it,
//! and the SPARSEMEM_EXTREME + SPARSEMEM_VMEMMAP memory model that locates it.
//!
//! Tools such as makedumpfile find a crashed kernel's `struct page` array through VMCOREINFO
//! (`SYMBOL(mem_section)`, `SYMBOL(vmemmap)`, `SIZE(page)`, `OFFSET(page.*)`, `NUMBER(PG_*)`,
//! `NUMBER(PAGE_*_MAPCOUNT_VALUE)`) and decide from each page's flags, `_mapcount`/`page_type`
//! and `private` whether to dump it. The guest keeps one [`Page`] per frame in that layout and
//! these values, so the unmodified tools read it as they read Linux's.
//!
//! ```
//! use crashvisor_klib::page::{Page, PageUse, PGTY_BUDDY};
//!
//! let head = Page::buddy(3);
//! assert!(head.is_buddy() && head.private == 3 && head.refcount == 0);
//! assert_eq!(head.page_type >> 24, u32::from(PGTY_BUDDY));
//! let table = Page::in_use(PageUse::Table);
//! assert!(!table.is_buddy() && table.refcount == 1);
//! ```

/// Size of `struct page`.
pub const PAGE_STRUCT_SIZE: u64 = 64;

/// Linux's `struct page` (x86_64, `CONFIG_MEMCG`), as far as this kernel uses it.
///
/// The first union holds `lru` (two list pointers) or, for a tail page of a compound page,
/// `compound_head` (the head's address + 1); `_mapcount` and `page_type` share one word.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// `flags`: the `PG_*` bits (zone and node numbers are 0: one node, one zone).
    pub flags: u64,
    /// `lru.next`, or `compound_head` (bit 0 set) on a compound tail page.
    pub lru_next: u64,
    /// `lru.prev`.
    pub lru_prev: u64,
    /// `mapping`: the page cache's `address_space`, or an `anon_vma` with bit 0 set.
    pub mapping: u64,
    /// `index`.
    pub index: u64,
    /// `private`: the order of a free block's first page.
    pub private: u64,
    /// `page_type` (`PGTY_*` in the top byte), or `_mapcount` (-1, i.e. [`PAGE_TYPE_NONE`], for
    /// a page that has no type and is not mapped to user space).
    pub page_type: u32,
    /// `_refcount`.
    pub refcount: u32,
    /// `memcg_data`.
    pub memcg_data: u64,
}

/// `offsetof(struct page, flags)`.
pub const OFFSET_FLAGS: usize = core::mem::offset_of!(Page, flags);
/// `offsetof(struct page, lru)`.
pub const OFFSET_LRU: usize = core::mem::offset_of!(Page, lru_next);
/// `offsetof(struct page, compound_head)` (the same word as `lru.next`).
pub const OFFSET_COMPOUND_HEAD: usize = core::mem::offset_of!(Page, lru_next);
/// `offsetof(struct page, mapping)`.
pub const OFFSET_MAPPING: usize = core::mem::offset_of!(Page, mapping);
/// `offsetof(struct page, private)`.
pub const OFFSET_PRIVATE: usize = core::mem::offset_of!(Page, private);
/// `offsetof(struct page, _mapcount)` (the same word as `page_type`).
pub const OFFSET_MAPCOUNT: usize = core::mem::offset_of!(Page, page_type);
/// `offsetof(struct page, _refcount)`.
pub const OFFSET_REFCOUNT: usize = core::mem::offset_of!(Page, refcount);

const _: () = assert!(core::mem::size_of::<Page>() as u64 == PAGE_STRUCT_SIZE);

/// `PG_lru`: on an LRU list (page cache or anonymous memory).
pub const PG_LRU: u32 = 5;
/// `PG_head`: the first page of a compound page.
pub const PG_HEAD: u32 = 6;
/// `PG_swapcache` (`PG_owner_priv_1`).
pub const PG_SWAPCACHE: u32 = 10;
/// `PG_reserved`: memory the page allocator never manages (kernel image, boot data, holes).
pub const PG_RESERVED: u32 = 13;
/// `PG_private`: `private` holds file-system data.
pub const PG_PRIVATE: u32 = 14;
/// `PG_swapbacked`.
pub const PG_SWAPBACKED: u32 = 17;
/// `PG_hwpoison` (`CONFIG_MEMORY_FAILURE`).
pub const PG_HWPOISON: u32 = 21;
/// `PG_head_mask`.
pub const PG_HEAD_MASK: u64 = 1 << PG_HEAD;

/// `PGTY_buddy`: the first page of a free block; `private` is the block's order.
pub const PGTY_BUDDY: u8 = 0xf0;
/// `PGTY_offline`: logically offline memory.
pub const PGTY_OFFLINE: u8 = 0xf1;
/// `PGTY_table`: a page table.
pub const PGTY_TABLE: u8 = 0xf2;
/// `PGTY_hugetlb`.
pub const PGTY_HUGETLB: u8 = 0xf4;
/// `PGTY_slab`: a page of the slab allocator (here: the kernel heap's small-object pages).
pub const PGTY_SLAB: u8 = 0xf5;
/// `page_type` of a page without a type (`_mapcount` = -1).
pub const PAGE_TYPE_NONE: u32 = u32::MAX;

/// `page_type` for type `pgty`: the type in the top byte, the rest zero.
pub const fn page_type(pgty: u8) -> u32 {
    (pgty as u32) << 24
}

/// The value VMCOREINFO's `NUMBER(PAGE_*_MAPCOUNT_VALUE)` prints for type `pgty`: Linux
/// computes `PGTY_x << 24` as an `int` and prints it as a `long`, so it is negative.
pub const fn mapcount_value(pgty: u8) -> i64 {
    page_type(pgty) as i32 as i64
}

/// `MAX_PAGE_ORDER`: the largest free block is 2^10 pages (4 MiB).
pub const MAX_PAGE_ORDER: u32 = 10;

/// What an allocated page is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageUse {
    /// Kernel memory without a page type (stacks, buffers, large heap blocks).
    Kernel,
    /// The kernel heap's small-object pages (`PGTY_slab`).
    Slab,
    /// A page table (`PGTY_table`).
    Table,
}

impl Page {
    /// A reserved page: `PG_reserved`, one reference, no type.
    pub const fn reserved() -> Self {
        Self { flags: 1 << PG_RESERVED, page_type: PAGE_TYPE_NONE, refcount: 1, ..Self::ZERO }
    }

    /// An allocated page: one reference, the type of its use.
    pub const fn in_use(usage: PageUse) -> Self {
        let page_type = match usage {
            PageUse::Kernel => PAGE_TYPE_NONE,
            PageUse::Slab => page_type(PGTY_SLAB),
            PageUse::Table => page_type(PGTY_TABLE),
        };
        Self { page_type, refcount: 1, ..Self::ZERO }
    }

    /// The first page of a free block of 2^`order` pages.
    pub const fn buddy(order: u32) -> Self {
        Self { page_type: page_type(PGTY_BUDDY), private: order as u64, ..Self::ZERO }
    }

    /// A free page that is not the first of its block.
    pub const fn free() -> Self {
        Self { page_type: PAGE_TYPE_NONE, ..Self::ZERO }
    }

    /// Whether this is the first page of a free block.
    pub const fn is_buddy(&self) -> bool {
        self.page_type == page_type(PGTY_BUDDY)
    }

    const ZERO: Self = Self {
        flags: 0,
        lru_next: 0,
        lru_prev: 0,
        mapping: 0,
        index: 0,
        private: 0,
        page_type: 0,
        refcount: 0,
        memcg_data: 0,
    };
}

/// Base of the `struct page` array (Linux's `VMEMMAP_START` with 4-level paging):
/// `pfn`'s page is at `VMEMMAP_START + pfn * 64`.
pub const VMEMMAP_START: u64 = 0xffff_ea00_0000_0000;
/// `SECTION_SIZE_BITS` on x86_64: a memory section is 128 MiB.
pub const SECTION_SIZE_BITS: u32 = 27;
/// `MAX_PHYSMEM_BITS` with 4-level paging.
pub const MAX_PHYSMEM_BITS: u32 = 46;
/// Frames per memory section.
pub const PAGES_PER_SECTION: u64 = 1 << (SECTION_SIZE_BITS - 12);
/// Size of `struct mem_section` (`section_mem_map` and `usage`).
pub const MEM_SECTION_SIZE: u64 = 16;
/// `SECTIONS_PER_ROOT` with SPARSEMEM_EXTREME: one page of `struct mem_section`s per root.
pub const SECTIONS_PER_ROOT: u64 = 4096 / MEM_SECTION_SIZE;
/// `NR_SECTION_ROOTS`: the length of the `mem_section` root array.
pub const NR_SECTION_ROOTS: u64 = (1 << (MAX_PHYSMEM_BITS - SECTION_SIZE_BITS)) / SECTIONS_PER_ROOT;
/// `SECTION_MARKED_PRESENT`.
pub const SECTION_MARKED_PRESENT: u64 = 1 << 0;
/// `SECTION_HAS_MEM_MAP`.
pub const SECTION_HAS_MEM_MAP: u64 = 1 << 1;
/// `SECTION_IS_ONLINE`.
pub const SECTION_IS_ONLINE: u64 = 1 << 2;
/// `SECTION_IS_EARLY`: present since boot.
pub const SECTION_IS_EARLY: u64 = 1 << 3;
/// `SECTION_MAP_LAST_BIT`: `section_mem_map` bits below it are flags.
pub const SECTION_MAP_LAST_BIT: u64 = 1 << 5;

/// The section holding frame `pfn`.
pub const fn pfn_to_section(pfn: u64) -> u64 {
    pfn / PAGES_PER_SECTION
}

/// `section_mem_map` of a present section with a vmemmap: the encoded `mem_map` (Linux stores
/// `&mem_map[first pfn] - first pfn`, which for a vmemmap is the vmemmap's base) and the flags.
pub const fn section_mem_map() -> u64 {
    VMEMMAP_START | SECTION_MARKED_PRESENT | SECTION_HAS_MEM_MAP | SECTION_IS_ONLINE | SECTION_IS_EARLY
}

/// Virtual address of frame `pfn`'s `struct page`.
pub const fn pfn_to_page(pfn: u64) -> u64 {
    VMEMMAP_START + pfn * PAGE_STRUCT_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_linux_x86_64() {
        assert_eq!(
            [OFFSET_FLAGS, OFFSET_LRU, OFFSET_MAPPING, OFFSET_PRIVATE, OFFSET_MAPCOUNT, OFFSET_REFCOUNT],
            [0, 8, 24, 40, 48, 52]
        );
        assert_eq!(OFFSET_COMPOUND_HEAD, OFFSET_LRU);
    }

    #[test]
    fn vmcoreinfo_values_match_linux() {
        // What a 6.18 x86_64 kernel prints.
        assert_eq!(mapcount_value(PGTY_BUDDY), -268_435_456);
        assert_eq!(mapcount_value(PGTY_SLAB), -184_549_376);
        assert_eq!(mapcount_value(PGTY_OFFLINE), -251_658_240);
        assert_eq!(mapcount_value(PGTY_HUGETLB), -201_326_592);
        assert_eq!(PG_HEAD_MASK, 64);
        assert_eq!(NR_SECTION_ROOTS, 2048);
        assert_eq!(PAGES_PER_SECTION, 32768);
        assert_eq!(section_mem_map(), 0xffff_ea00_0000_000f);
        assert_eq!(pfn_to_page(2), 0xffff_ea00_0000_0080);
        assert_eq!(pfn_to_section(PAGES_PER_SECTION * 3 + 5), 3);
    }

    #[test]
    fn page_states() {
        let reserved = Page::reserved();
        assert_eq!((reserved.flags, reserved.refcount, reserved.page_type), (1 << 13, 1, u32::MAX));
        assert_eq!(Page::in_use(PageUse::Slab).page_type, 0xf500_0000);
        assert_eq!(Page::in_use(PageUse::Kernel).page_type, u32::MAX);
        assert_eq!(Page::free(), Page { page_type: u32::MAX, ..Page::default() });
        assert!(Page::buddy(10).is_buddy() && !Page::free().is_buddy() && !Page::reserved().is_buddy());
    }
}
