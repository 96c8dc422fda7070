//! Which pages a crashvisor guest had free when its memory was captured: its frame allocator's
//! bitmap, which VMCOREINFO locates (`NUMBER(crashvisor_frame_bitmap)`, its physical address,
//! and `NUMBER(crashvisor_nr_frames)`). The guest's `struct page` array mirrors the same state
//! as Linux's buddy blocks, which is what makedumpfile reads; the capture kernel and this
//! module read the bitmap, one bit a page, and e2e tests check that the two agree.
//!
//! For dump level 16 in kdump-compressed files ([`super::KdumpOptions::excluded`]). A
//! crashvisor kernel has no page cache and no user memory, so this is also every page levels
//! 2, 4 and 8 leave out.

use crashvisor_klib::memmap::frame_in_use;

use crate::analysis::vmcoreinfo::VmcoreInfo;
use crate::writer::MemorySource;

/// Most frames read (a 1 TiB guest; its bitmap is 32 MiB).
const MAX_FRAMES: u64 = 1 << 28;

/// The free pages of a captured crashvisor kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreePages {
    words: Vec<u64>,
}

impl FreePages {
    /// Reads the bitmap of the kernel whose VMCOREINFO text is `vmcoreinfo` from `memory`.
    /// `None` when VMCOREINFO does not locate one (not a crashvisor kernel), it is larger than
    /// a 1 TiB guest's, or `memory` cannot supply it.
    pub fn read(vmcoreinfo: &str, memory: &dyn MemorySource) -> Option<Self> {
        let info = VmcoreInfo::parse(vmcoreinfo);
        let address = u64::try_from(info.number("crashvisor_frame_bitmap").ok()?).ok()?;
        let nr_frames = u64::try_from(info.number("crashvisor_nr_frames").ok()?).ok().filter(|&n| n <= MAX_FRAMES)?;
        let mut bytes = vec![0u8; nr_frames.div_ceil(64) as usize * 8];
        memory.read(address, &mut bytes).ok()?;
        let words = bytes.chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes"))).collect();
        Some(Self { words })
    }

    /// Whether frame `pfn` was free (frames past the bitmap were not).
    pub fn is_free(&self, pfn: u64) -> bool {
        frame_in_use(&self.words, pfn) == Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::tests::Buffer;

    #[test]
    fn reads_the_bitmap_vmcoreinfo_locates() {
        let mut bytes = vec![0xffu8; 0x3000];
        // Frames 3 and 70 free.
        bytes[0x2000] = !(1 << 3);
        bytes[0x2008] = !(1 << 6);
        let memory = Buffer::new(0, bytes);
        let text = "OSRELEASE=6.18.0\nNUMBER(crashvisor_frame_bitmap)=8192\nNUMBER(crashvisor_nr_frames)=100\n";
        let free = FreePages::read(text, &memory).unwrap();
        assert_eq!((0..200).filter(|&p| free.is_free(p)).collect::<Vec<_>>(), [3, 70]);
        assert_eq!(FreePages::read("OSRELEASE=6.18.0\n", &memory), None);
        let outside = "NUMBER(crashvisor_frame_bitmap)=1048576\nNUMBER(crashvisor_nr_frames)=100\n";
        assert_eq!(FreePages::read(outside, &memory), None);
        let huge = "NUMBER(crashvisor_frame_bitmap)=0\nNUMBER(crashvisor_nr_frames)=1099511627776\n";
        assert_eq!(FreePages::read(huge, &memory), None);
    }
}
