//! Guest RAM as the source of a vmcore, read without faulting in pages the guest never used,
//! and lent in place to the writer where nothing can change it (a forked writer's snapshot).

use std::cell::RefCell;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};

use dumpd::writer::{MemorySource, SourceError};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// `/proc/self/pagemap` entry bits: the page is in RAM, or in swap.
const PAGEMAP_PRESENT: u64 = 1 << 63;
const PAGEMAP_SWAPPED: u64 = 1 << 62;
const PAGE: u64 = 4096;

/// Guest RAM as a vmcore's memory source. A page the host never populated (private anonymous
/// memory neither present nor swapped, per `/proc/self/pagemap`) is zero: it is filled in
/// without touching it, where reading it would fault in the zero page once per 4 KiB — most of
/// a small guest's RAM, which would otherwise dominate a dump's time.
pub struct GuestRam<'a> {
    memory: &'a GuestMemoryMmap,
    pagemap: Option<File>,
    /// A window of pagemap entries: its first page number and the entries (the kdump writer
    /// reads page by page; one `pread` per window, not per page).
    window: RefCell<(u64, Vec<u64>)>,
    /// Bytes read so far, for progress reports.
    done: Option<&'a AtomicU64>,
    /// Whether nothing changes `memory` while this source lives, so it may lend it in place.
    frozen: bool,
}

/// Pagemap entries read at once: 16 MiB of guest memory.
const PAGEMAP_WINDOW: u64 = 4096;

impl<'a> GuestRam<'a> {
    /// Reads `memory` (without `/proc/self/pagemap`, every page is read).
    pub fn new(memory: &'a GuestMemoryMmap) -> Self {
        Self {
            memory,
            pagemap: File::open("/proc/self/pagemap").ok(),
            window: RefCell::default(),
            done: None,
            frozen: false,
        }
    }

    /// The same, adding the bytes read to `done`.
    pub fn counting(memory: &'a GuestMemoryMmap, done: &'a AtomicU64) -> Self {
        Self { done: Some(done), ..Self::new(memory) }
    }

    /// The same, lending `memory` in place (a vmcore is then written straight from it).
    ///
    /// # Safety
    /// Nothing may write `memory` while the returned source lives: borrows of it are handed out
    /// as `&[u8]`. True in a forked dump writer, a single-threaded process whose private copy of
    /// guest RAM no vCPU and no other process can reach.
    pub unsafe fn frozen(memory: &'a GuestMemoryMmap, done: &'a AtomicU64) -> Self {
        Self { frozen: true, ..Self::counting(memory, done) }
    }

    fn count(&self, bytes: usize) {
        if let Some(done) = self.done {
            done.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    fn read_all(&self, addr: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        self.memory.read_slice(buf, GuestAddress(addr)).map_err(|e| SourceError {
            addr,
            len: buf.len() as u64,
            source: Some(Box::new(e)),
        })
    }

    /// Loads pagemap entries so the window covers host pages `first..=last`; false if the
    /// entries cannot be read (then nothing is known).
    fn cover(&self, first: u64, last: u64) -> bool {
        let Some(pagemap) = self.pagemap.as_ref() else { return false };
        let mut window = self.window.borrow_mut();
        let covered = |w: &(u64, Vec<u64>)| first >= w.0 && last < w.0 + w.1.len() as u64;
        if covered(&window) {
            return true;
        }
        let count = (last - first + 1).max(PAGEMAP_WINDOW);
        let Ok(count) = usize::try_from(count * 8) else { return false };
        let mut bytes = vec![0u8; count];
        // A short read at the end of the address space still covers what was asked.
        let Ok(got) = std::os::unix::fs::FileExt::read_at(pagemap, &mut bytes, first * 8) else { return false };
        let entries = bytes[..got - got % 8].chunks_exact(8).map(|e| crashvisor_klib::le::u64_at(e, 0));
        *window = (first, entries.collect());
        covered(&window)
    }

    /// Whether the host pages of `hva..hva + len` (`len` > 0) are known never to have been
    /// populated.
    fn unpopulated(&self, hva: u64, len: u64) -> bool {
        let (first, last) = (hva / PAGE, (hva + len - 1) / PAGE);
        self.cover(first, last) && (first..=last).all(|page| !self.populated(page))
    }

    /// Whether host page `page` (inside the window) holds data: present or swapped.
    fn populated(&self, page: u64) -> bool {
        let window = self.window.borrow();
        let entry = window.1.get((page - window.0) as usize).copied().unwrap_or(PAGEMAP_PRESENT);
        entry & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED) != 0
    }

    /// The host address of guest `addr..addr + len` if it is one contiguous piece of RAM.
    fn host_range(&self, addr: u64, len: usize) -> Option<u64> {
        let start = self.memory.get_host_address(GuestAddress(addr)).ok()? as u64;
        let end = self.memory.get_host_address(GuestAddress(addr.checked_add(len as u64 - 1)?)).ok()? as u64;
        (end - start == len as u64 - 1).then_some(start)
    }
}

impl MemorySource for GuestRam<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        let hva = if buf.is_empty() { None } else { self.host_range(addr, buf.len()) };
        let known = hva.filter(|&hva| self.cover(hva / PAGE, (hva + buf.len() as u64 - 1) / PAGE));
        match known {
            None => self.read_all(addr, buf)?,
            // Runs of populated pages are read in one go; runs of untouched ones are zeroed.
            Some(hva) => {
                let mut at = 0usize;
                while at < buf.len() {
                    let populated = self.populated((hva + at as u64) / PAGE);
                    let mut end = at;
                    while end < buf.len() && self.populated((hva + end as u64) / PAGE) == populated {
                        end = buf.len().min(end + (PAGE - (hva + end as u64) % PAGE) as usize);
                    }
                    if populated {
                        self.read_all(addr + at as u64, &mut buf[at..end])?;
                    } else {
                        buf[at..end].fill(0);
                    }
                    at = end;
                }
            }
        }
        self.count(buf.len());
        Ok(())
    }

    fn lend(&self, addr: u64, len: usize) -> Option<&[u8]> {
        if !self.frozen || len == 0 {
            return None;
        }
        let hva = self.host_range(addr, len)?;
        self.count(len);
        // SAFETY: `hva..hva + len` is one contiguous piece of guest RAM, mapped for as long as
        // `self.memory` lives (which outlives the borrow of `self`), and nothing writes it while
        // this source lives (the contract of `frozen`).
        Some(unsafe { std::slice::from_raw_parts(hva as *const u8, len) })
    }

    fn known_zero(&self, addr: u64, len: u64) -> bool {
        let Ok(len_usize) = usize::try_from(len) else { return false };
        len > 0 && self.host_range(addr, len_usize).is_some_and(|hva| self.unpopulated(hva, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untouched_pages_read_as_zero_and_written_ones_as_written() {
        let memory =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000), (GuestAddress(0x20_0000), 0x1000)]).unwrap();
        memory.write_slice(&[0xab; 10], GuestAddress(0x3ffb)).unwrap();
        let done = AtomicU64::new(0);
        let ram = GuestRam::counting(&memory, &done);
        let mut buf = vec![0xffu8; 0x2000];
        ram.read(0x3000, &mut buf).unwrap();
        assert!(buf[..0xffb].iter().all(|&b| b == 0));
        assert_eq!(&buf[0xffb..0x1005], &[0xab; 10]);
        assert!(buf[0x1005..].iter().all(|&b| b == 0));
        // Across the gap between the regions: an error, as vm-memory says.
        assert!(ram.read(0xf_f000, &mut buf).is_err());
        let mut page = [0u8; 0x1000];
        ram.read(0x20_0000, &mut page).unwrap();
        assert_eq!(done.load(Ordering::Relaxed), 0x3000);
    }

    #[test]
    fn a_frozen_source_lends_memory_and_knows_what_was_never_touched() {
        let memory =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000), (GuestAddress(0x20_0000), 0x1000)]).unwrap();
        memory.write_slice(&[0xcd; 3], GuestAddress(0x5000)).unwrap();
        let done = AtomicU64::new(0);
        // SAFETY: nothing writes `memory` while `frozen` lives.
        let frozen = unsafe { GuestRam::frozen(&memory, &done) };
        let lent = frozen.lend(0x4000, 0x2000).unwrap();
        assert_eq!(&lent[0x1000..0x1004], &[0xcd, 0xcd, 0xcd, 0]);
        assert_eq!(done.load(Ordering::Relaxed), 0x2000, "a loan counts as read");
        assert!(frozen.lend(0xf_f000, 0x2000).is_none(), "not one piece of RAM");
        assert!(frozen.known_zero(0x1000, 0x4000));
        assert!(!frozen.known_zero(0x4000, 0x2000), "page 0x5000 was written");
        assert!(!frozen.known_zero(0xf_f000, 0x2000));
        assert!(GuestRam::new(&memory).lend(0x4000, 0x1000).is_none(), "live memory is only copied");
    }
}
