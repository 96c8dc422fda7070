//! Walks the guest's x86-64 4-level page tables (from a vCPU's CR3) over a virtual range and
//! returns where its mapped pages are, merged into runs contiguous in both address spaces.
//! The tables are guest memory: every read is bounds-checked, and the walk is bounded however
//! the tables are built (loops, tables pointing outside RAM, absurd sizes).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Present bit of a page-table entry.
const PRESENT: u64 = 1;
/// Page-size bit (a 1 GiB or 2 MiB leaf) of a PDPT or PD entry.
const HUGE: u64 = 1 << 7;
/// Physical address bits of an entry (bits 12..51).
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Most leaf entries one walk visits; beyond that the rest of the range is left out.
const MAX_LEAVES: usize = 1 << 20;
/// Most mappings one walk returns (each becomes a `PT_LOAD`).
pub const MAX_MAPPINGS: usize = 8192;

/// `len` bytes mapped at virtual `vaddr` onto physical `paddr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First virtual address.
    pub vaddr: u64,
    /// Its physical address.
    pub paddr: u64,
    /// Bytes.
    pub len: u64,
}

/// Sign-extends a 48-bit virtual address.
fn canonical(va: u64) -> u64 {
    ((va << 16) as i64 >> 16) as u64
}

struct Walk<'a> {
    memory: &'a GuestMemoryMmap,
    start: u64,
    end: u64,
    leaves: usize,
    out: Vec<Mapping>,
}

impl Walk<'_> {
    fn entry(&self, table: u64, index: u64) -> Option<u64> {
        self.memory.read_obj::<u64>(GuestAddress(table + index * 8)).ok()
    }

    fn leaf(&mut self, vaddr: u64, paddr: u64, size: u64) {
        self.leaves += 1;
        // Clip to the range asked for.
        let (lo, hi) = (vaddr.max(self.start), (vaddr + (size - 1)).min(self.end - 1));
        if lo > hi {
            return;
        }
        let (vaddr, paddr, len) = (lo, paddr + (lo - vaddr), hi - lo + 1);
        if let Some(last) = self.out.last_mut() {
            if last.vaddr + last.len == vaddr && last.paddr + last.len == paddr {
                last.len += len;
                return;
            }
        }
        self.out.push(Mapping { vaddr, paddr, len });
    }

    /// Visits the entries of the table at `table` (level 4 = PML4 .. 1 = PT) that overlap the
    /// range; `base` is the virtual address the table starts at.
    fn table(&mut self, table: u64, level: u32, base: u64) {
        let shift = 12 + 9 * (level - 1);
        let span = 1u64 << shift;
        for index in 0..512u64 {
            if self.leaves >= MAX_LEAVES || self.out.len() >= MAX_MAPPINGS {
                return;
            }
            let vaddr = canonical(base.wrapping_add(index << shift));
            if vaddr.wrapping_add(span - 1) < self.start || vaddr >= self.end {
                continue;
            }
            let Some(entry) = self.entry(table, index) else { return };
            if entry & PRESENT == 0 {
                continue;
            }
            let next = entry & ADDR_MASK;
            match level {
                1 => self.leaf(vaddr, next, span),
                2 | 3 if entry & HUGE != 0 => self.leaf(vaddr, next & !(span - 1), span),
                _ => self.table(next, level - 1, vaddr),
            }
        }
    }
}

/// The mappings of `[start, end)` in the page tables rooted at `cr3`, in virtual order.
pub fn walk(memory: &GuestMemoryMmap, cr3: u64, start: u64, end: u64) -> Vec<Mapping> {
    let mut walk = Walk { memory, start, end, leaves: 0, out: Vec::new() };
    if start < end {
        walk.table(cr3 & ADDR_MASK, 4, 0);
    }
    walk.out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNEL: u64 = 0xffff_ffff_8000_0000;

    fn ram() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    fn set(memory: &GuestMemoryMmap, table: u64, index: u64, entry: u64) {
        memory.write_obj(entry, GuestAddress(table + index * 8)).unwrap();
    }

    fn index(va: u64, level: u32) -> u64 {
        (va >> (12 + 9 * (level - 1))) & 511
    }

    #[test]
    fn finds_4k_and_2m_pages_and_merges_contiguous_ones() {
        let m = ram();
        let (pml4, pdpt, pd, pt) = (0x1000, 0x2000, 0x3000, 0x4000);
        set(&m, pml4, index(KERNEL, 4), pdpt | 3);
        set(&m, pdpt, index(KERNEL, 3), pd | 3);
        // 0xffffffff80000000: a 2 MiB page at 0x200000; the next 2 MiB: 4 KiB pages, the first
        // two contiguous with it physically, then a gap, then an unrelated page.
        set(&m, pd, 0, 0x20_0000 | HUGE | 3);
        set(&m, pd, 1, pt | 3);
        set(&m, pt, 0, 0x40_0000 | 3);
        set(&m, pt, 1, 0x40_1000 | 3);
        set(&m, pt, 5, 0x9000 | 3);
        let found = walk(&m, pml4, KERNEL, KERNEL + 0x40_0000);
        assert_eq!(
            found,
            [
                Mapping { vaddr: KERNEL, paddr: 0x20_0000, len: 0x20_2000 },
                Mapping { vaddr: KERNEL + 0x20_5000, paddr: 0x9000, len: 0x1000 },
            ]
        );
        // Clipped to the range asked for.
        assert_eq!(
            walk(&m, pml4, KERNEL + 0x1000, KERNEL + 0x3000),
            [Mapping { vaddr: KERNEL + 0x1000, paddr: 0x20_1000, len: 0x2000 }]
        );
    }

    #[test]
    fn hostile_tables_end_the_walk_without_harm() {
        let m = ram();
        // Every PML4 entry points back at the PML4 itself, every entry present.
        for i in 0..512 {
            set(&m, 0x1000, i, 0x1000 | 3);
        }
        let found = walk(&m, 0x1000, 0, u64::MAX);
        assert!(found.len() <= MAX_MAPPINGS);
        // A table outside RAM.
        set(&m, 0x5000, 0, 0xdead_0000_0000 | 3);
        assert!(walk(&m, 0x5000, 0, 1 << 39).is_empty());
        // CR3 outside RAM, and an empty range.
        assert!(walk(&m, 0x7fff_0000_0000, 0, u64::MAX).is_empty());
        assert!(walk(&m, 0x1000, 5, 5).is_empty());
    }
}
