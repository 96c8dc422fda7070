//! Kernel virtual to physical addresses, as the crashed kernel mapped them:
//!
//! - the direct map: `PAGE_OFFSET + pa`;
//! - the kernel image: `KERNEL_MAP + pa - phys_base` (`NUMBER(phys_base)`, up to
//!   `NUMBER(KERNEL_IMAGE_SIZE)` when the dump gives it);
//! - anything else (the vmap'd task stacks): a 4-level page-table walk from
//!   `SYMBOL(init_top_pgt)`, with 1 GiB and 2 MiB leaf pages.
//!
//! Every page-table entry comes from the dump and is untrusted: the walk has a fixed depth, so
//! tables that point at themselves cannot loop, and an entry pointing outside the dump is an
//! error naming the level.

use crashvisor_abi::layout::{KERNEL_MAP, PAGE_OFFSET, PAGE_SIZE};

use super::vmcoreinfo::{optional, VmcoreInfo, VmcoreInfoError};
use crate::image::{DumpImage, ReadError};

/// Size of the direct map's virtual range with 4-level paging (Linux's 64 TiB).
const DIRECT_MAP_SIZE: u64 = 64 << 40;
/// Size of the kernel-image mapping when the dump does not say (Linux's 1 GiB
/// `KERNEL_IMAGE_SIZE`).
const KERNEL_MAP_SIZE: u64 = 1 << 30;
/// Page-table entry: present.
const PTE_PRESENT: u64 = 1;
/// Page-table entry: a leaf (in a PUD or PMD entry).
const PTE_PAGE_SIZE: u64 = 1 << 7;
/// Page-table entry: the physical address bits (51..12).
const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// One level of the 4-level walk: its name (as Linux's `dump_pagetable` prints it) and the
/// shift of the address bits that index it.
const LEVELS: [(&str, u32); 4] = [("PGD", 39), ("PUD", 30), ("PMD", 21), ("PTE", 12)];

/// Why a virtual address could not be read.
#[derive(Debug, thiserror::Error)]
pub enum VtopError {
    /// Bits 63..48 are not copies of bit 47.
    #[error("{vaddr:#x} is not a canonical address")]
    NonCanonical {
        /// The address.
        vaddr: u64,
    },
    /// A page-table entry on the way is not present.
    #[error("{vaddr:#x} is not mapped: its {level} entry is {entry:#x}, not present")]
    NotPresent {
        /// The address.
        vaddr: u64,
        /// `PGD`, `PUD`, `PMD` or `PTE`.
        level: &'static str,
        /// The entry.
        entry: u64,
    },
    /// A page-table entry has the page-size bit where the level has no large pages.
    #[error("{vaddr:#x} is not mapped: its {level} entry {entry:#x} has the page-size bit, invalid at that level")]
    BadEntry {
        /// The address.
        vaddr: u64,
        /// `PGD`.
        level: &'static str,
        /// The entry.
        entry: u64,
    },
    /// A page table could not be read from the dump.
    #[error("cannot translate {vaddr:#x}: its {level} entry at physical address {paddr:#x} is unreadable")]
    TableRead {
        /// The address.
        vaddr: u64,
        /// The level whose table was being read.
        level: &'static str,
        /// The entry's physical address.
        paddr: u64,
        /// Why.
        #[source]
        source: ReadError,
    },
    /// The memory itself could not be read.
    #[error("virtual address {vaddr:#x} (physical {paddr:#x}) is unreadable")]
    Read {
        /// The first virtual address of the failed read.
        vaddr: u64,
        /// Its physical address.
        paddr: u64,
        /// Why.
        #[source]
        source: ReadError,
    },
}

/// A translated address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The physical address.
    pub paddr: u64,
    /// Bytes from `paddr` to the end of the mapping's page (or range), at least 1: how far the
    /// translation holds.
    pub contiguous: u64,
}

/// The crashed kernel's address-space layout.
#[derive(Debug, Clone)]
pub struct Translator {
    phys_base: u64,
    kernel_map_size: u64,
    top_table_paddr: u64,
}

impl Translator {
    /// Reads `NUMBER(phys_base)`, `SYMBOL(init_top_pgt)` and, if there, `NUMBER(KERNEL_IMAGE_SIZE)`.
    pub fn new(info: &VmcoreInfo) -> Result<Self, VmcoreInfoError> {
        // Two's complement: negative when the kernel runs below its link address.
        let phys_base = info.number("phys_base")? as u64;
        let kernel_map_size = optional(info.number("KERNEL_IMAGE_SIZE"))?
            .map_or(KERNEL_MAP_SIZE, |size| (size as u64).clamp(PAGE_SIZE, KERNEL_MAP_SIZE));
        let mut translator = Self { phys_base, kernel_map_size, top_table_paddr: 0 };
        let top = info.symbol("init_top_pgt")?;
        translator.top_table_paddr =
            translator.linear(top).map(|t| t.paddr).ok_or_else(|| VmcoreInfoError::Invalid {
                key: "SYMBOL(init_top_pgt)".into(),
                value: format!("{top:x}"),
                expected: "an address in the kernel image or the direct map",
            })?;
        Ok(translator)
    }

    /// The direct map and the kernel map: no page tables needed.
    fn linear(&self, vaddr: u64) -> Option<Translation> {
        if let Some(offset) = vaddr.checked_sub(KERNEL_MAP).filter(|&o| o < self.kernel_map_size) {
            let contiguous = self.kernel_map_size - offset;
            return Some(Translation { paddr: offset.wrapping_add(self.phys_base), contiguous });
        }
        let offset = vaddr.checked_sub(PAGE_OFFSET).filter(|&o| o < DIRECT_MAP_SIZE)?;
        Some(Translation { paddr: offset, contiguous: DIRECT_MAP_SIZE - offset })
    }

    /// Translates `vaddr`.
    pub fn translate(&self, image: &dyn DumpImage, vaddr: u64) -> Result<Translation, VtopError> {
        if let Some(t) = self.linear(vaddr) {
            return Ok(t);
        }
        self.walk(image, vaddr)
    }

    /// The 4-level page-table walk from `init_top_pgt`.
    pub fn walk(&self, image: &dyn DumpImage, vaddr: u64) -> Result<Translation, VtopError> {
        let canonical = ((vaddr as i64) << 16 >> 16) as u64;
        if canonical != vaddr {
            return Err(VtopError::NonCanonical { vaddr });
        }
        let [pgd_level, pud_level, pmd_level, pte_level] = LEVELS;
        let pgd = entry(image, vaddr, self.top_table_paddr, pgd_level)?;
        if pgd & PTE_PAGE_SIZE != 0 {
            return Err(VtopError::BadEntry { vaddr, level: pgd_level.0, entry: pgd });
        }
        let pud = entry(image, vaddr, pgd & PTE_ADDR_MASK, pud_level)?;
        if pud & PTE_PAGE_SIZE != 0 {
            return Ok(leaf(vaddr, pud, pud_level.1));
        }
        let pmd = entry(image, vaddr, pud & PTE_ADDR_MASK, pmd_level)?;
        if pmd & PTE_PAGE_SIZE != 0 {
            return Ok(leaf(vaddr, pmd, pmd_level.1));
        }
        let pte = entry(image, vaddr, pmd & PTE_ADDR_MASK, pte_level)?;
        Ok(leaf(vaddr, pte, pte_level.1))
    }

    /// Fills `buf` from virtual memory at `vaddr`, translating as it goes.
    pub fn read(&self, image: &dyn DumpImage, vaddr: u64, buf: &mut [u8]) -> Result<(), VtopError> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = vaddr.wrapping_add(done as u64);
            let t = self.translate(image, at)?;
            let n = (buf.len() - done).min(usize::try_from(t.contiguous).unwrap_or(usize::MAX));
            image.read_phys(t.paddr, &mut buf[done..done + n]).map_err(|source| VtopError::Read {
                vaddr: at,
                paddr: t.paddr,
                source,
            })?;
            done += n;
        }
        Ok(())
    }
}

/// The present entry of `table` (physical) that translates `vaddr` at `level`.
fn entry(image: &dyn DumpImage, vaddr: u64, table: u64, level: (&'static str, u32)) -> Result<u64, VtopError> {
    let (name, shift) = level;
    let paddr = table.wrapping_add(((vaddr >> shift) & 511) * 8);
    let mut raw = [0u8; 8];
    image.read_phys(paddr, &mut raw).map_err(|source| VtopError::TableRead { vaddr, level: name, paddr, source })?;
    let entry = u64::from_le_bytes(raw);
    if entry & PTE_PRESENT == 0 {
        return Err(VtopError::NotPresent { vaddr, level: name, entry });
    }
    Ok(entry)
}

/// The translation of `vaddr` by a leaf entry mapping a page of `1 << shift` bytes.
fn leaf(vaddr: u64, entry: u64, shift: u32) -> Translation {
    let page_size = 1u64 << shift;
    // In large-page entries bit 12 is PAT: the frame is aligned to the page size.
    let frame = entry & PTE_ADDR_MASK & !(page_size - 1);
    let offset = vaddr & (page_size - 1);
    Translation { paddr: frame | offset, contiguous: page_size - offset }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::test_image::TestImage;

    const TOP: u64 = 0x1000; // physical address of init_top_pgt
    const STACKS: u64 = 0xffff_c900_0000_0000;

    /// 1 MiB of memory, the kernel at phys_base 0 with init_top_pgt at physical 0x1000.
    fn image() -> TestImage {
        let info = format!("NUMBER(phys_base)=0\nSYMBOL(init_top_pgt)={:x}\n", KERNEL_MAP + TOP);
        TestImage::new(1 << 20, &info)
    }

    fn translator(image: &TestImage) -> Translator {
        Translator::new(&VmcoreInfo::parse(std::str::from_utf8(&image.notes[0].desc).unwrap())).unwrap()
    }

    fn index(vaddr: u64, shift: u32) -> u64 {
        (vaddr >> shift) & 511
    }

    #[test]
    fn linear_maps_need_no_tables() {
        let info = VmcoreInfo::parse("NUMBER(phys_base)=-16777216\nSYMBOL(init_top_pgt)=ffffffff81001000\n");
        let t = Translator::new(&info).unwrap();
        let image = TestImage::new(0, "");
        assert_eq!(t.translate(&image, 0xffff_ffff_8100_2000).unwrap().paddr, 0x2000);
        assert_eq!(t.top_table_paddr, 0x1000);
        assert_eq!(t.translate(&image, PAGE_OFFSET + 0x1234).unwrap().paddr, 0x1234);
        let bad = VmcoreInfo::parse("NUMBER(phys_base)=0\nSYMBOL(init_top_pgt)=ffffc90000000000\n");
        assert!(matches!(Translator::new(&bad), Err(VmcoreInfoError::Invalid { .. })));
    }

    #[test]
    fn four_kib_two_mib_and_one_gib_pages() {
        let mut image = image();
        // PGD -> PUD at 0x2000 -> PMD at 0x3000 -> PT at 0x4000 -> page 0x5000.
        image.write_u64(TOP + index(STACKS, 39) * 8, 0x2000 | 3);
        image.write_u64(0x2000 + index(STACKS, 30) * 8, 0x3000 | 3);
        image.write_u64(0x3000 + index(STACKS, 21) * 8, 0x4000 | 3);
        image.write_u64(0x4000 + index(STACKS, 12) * 8, 0x8000_0000_0000_5000 | 3); // NX set
        image.write(0x5008, b"stack!");
        let t = translator(&image);
        assert_eq!(t.translate(&image, STACKS + 8).unwrap(), Translation { paddr: 0x5008, contiguous: 0xff8 });
        let mut buf = [0u8; 6];
        t.read(&image, STACKS + 8, &mut buf).unwrap();
        assert_eq!(&buf, b"stack!");

        // A 2 MiB page (with PAT bit 12 set) in the next PMD slot, and a 1 GiB page.
        let two_mib = STACKS + (2 << 20);
        image.write_u64(0x3000 + index(two_mib, 21) * 8, 0x20_0000 | 1 << 12 | PTE_PAGE_SIZE | 1);
        assert_eq!(t.translate(&image, two_mib + 0x1234).unwrap().paddr, 0x20_1234);
        let one_gib = STACKS + (1 << 30);
        image.write_u64(0x2000 + index(one_gib, 30) * 8, 0x4000_0000 | PTE_PAGE_SIZE | 1);
        let got = t.translate(&image, one_gib + 0x10_0000).unwrap();
        assert_eq!(got, Translation { paddr: 0x4010_0000, contiguous: (1 << 30) - 0x10_0000 });
    }

    #[test]
    fn reads_across_pages_translate_each_page() {
        let mut image = image();
        image.write_u64(TOP + index(STACKS, 39) * 8, 0x2000 | 3);
        image.write_u64(0x2000 + index(STACKS, 30) * 8, 0x3000 | 3);
        image.write_u64(0x3000 + index(STACKS, 21) * 8, 0x4000 | 3);
        // Two virtually contiguous pages backed by physically distant frames.
        image.write_u64(0x4000, 0x9000 | 3);
        image.write_u64(0x4008, 0x6000 | 3);
        image.write(0x9ffc, b"ab");
        image.write(0x6000, b"cd");
        let t = translator(&image);
        let mut buf = [0u8; 6];
        t.read(&image, STACKS + 0xffc, &mut buf).unwrap();
        assert_eq!(&buf, b"ab\0\0cd");
        // The third page is not mapped: the read fails, naming the level.
        let err = t.read(&image, STACKS + 0x1ffc, &mut [0u8; 8]).unwrap_err();
        assert!(matches!(err, VtopError::NotPresent { level: "PTE", vaddr, .. } if vaddr == STACKS + 0x2000), "{err}");
    }

    #[test]
    fn hostile_tables_end_in_errors() {
        let mut image = image();
        let t = translator(&image);
        assert!(matches!(t.translate(&image, 0x0000_9000_0000_0000), Err(VtopError::NonCanonical { .. })));
        assert!(matches!(t.translate(&image, STACKS), Err(VtopError::NotPresent { level: "PGD", .. })));

        // A table that points at itself at every level: four steps, then a "page" of the table.
        let vaddr = 0xffff_ff7f_bfdf_e000u64; // index 510 at every level
        image.write_u64(TOP + 510 * 8, TOP | 3);
        assert_eq!(t.translate(&image, vaddr).unwrap().paddr, TOP);

        // A page-size bit in the PGD is invalid; a PUD pointing far outside the dump.
        image.write_u64(TOP + index(STACKS, 39) * 8, 0x2000 | PTE_PAGE_SIZE | 1);
        assert!(matches!(t.translate(&image, STACKS), Err(VtopError::BadEntry { level: "PGD", .. })));
        image.write_u64(TOP + index(STACKS, 39) * 8, 0x000f_ffff_ffff_f000 | 3);
        let err = t.translate(&image, STACKS).unwrap_err();
        assert!(matches!(err, VtopError::TableRead { level: "PUD", .. }), "{err}");
        assert!(err.to_string().contains("PUD entry at physical address 0xffffffffff"), "{err}");

        // A read through a mapping whose frame is outside the dump.
        image.write_u64(TOP + index(STACKS, 39) * 8, 0x2000 | 3);
        image.write_u64(0x2000 + index(STACKS, 30) * 8, 0x7_0000_0000 | PTE_PAGE_SIZE | 1);
        assert!(matches!(t.read(&image, STACKS, &mut [0u8; 8]), Err(VtopError::Read { .. })));
    }

    #[test]
    fn random_tables_never_panic() {
        let mut image = image();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // Random entries in the first 64 KiB, pointing mostly inside the dump.
        for at in (0..0x1_0000).step_by(8) {
            let r = next();
            let entry = if r & 3 == 0 { r } else { (r & 0xf_f000) | (r & 0x83) };
            image.write_u64(at, entry);
        }
        let t = translator(&image);
        for _ in 0..20_000 {
            let vaddr = next() | 0xffff_8000_0000_0000;
            if let Ok(tr) = t.walk(&image, vaddr) {
                assert!(tr.contiguous >= 1);
            }
            let _ = t.read(&image, vaddr, &mut [0u8; 16]);
        }
    }
}
