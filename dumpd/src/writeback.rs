//! Keeping a vmcore's page cache small while it is written.
//!
//! A vmcore is as large as guest RAM and is read once, later, if ever. Written through the page
//! cache and synced at the end, it takes a fresh page of host memory for every page it holds
//! until the sync, and fresh memory can be the dearest thing a writer touches: on a host that is
//! itself a virtual machine whose free pages are handed back to its hypervisor (free page
//! reporting, ballooning), every one of them faults in the hypervisor on first touch. Measured
//! on such a host, 1 GiB written from memory already resident: 10–13 s through the page cache
//! and one `fsync`, 0.5–0.9 s when each few megabytes are sent to the disk as soon as they are
//! written and dropped from the cache once they are there, so that the next ones reuse the same
//! (warm) pages. The cache then holds at most [`LAG`] plus a step of the vmcore, whatever its
//! size, the final sync has little left to do, and a dump does not evict the host's working set.
//!
//! [`Writeback`] follows one stream of writes at increasing file offsets. It only advises the
//! kernel: the file is as complete without it, and the caller's final sync remains what makes
//! it durable.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use crate::writer::PAGE_SIZE;

/// Written bytes gathered before their writeback is started.
pub const STEP: u64 = 2 << 20;
/// How far behind the newest written byte the stream's older bytes are waited for (on the
/// disk) and dropped from the page cache: the writeback in flight while the writer goes on.
pub const LAG: u64 = 8 << 20;

/// The writeback of one stream of writes at increasing file offsets.
pub struct Writeback<'f> {
    file: &'f File,
    /// The stream's bytes before this offset have had their writeback started.
    started: u64,
    /// The stream's bytes before this offset are on the disk and out of the page cache.
    dropped: u64,
    /// Off once the file has refused `sync_file_range` (a pipe, a file system without it).
    enabled: bool,
}

impl<'f> Writeback<'f> {
    /// A stream of `file` that starts at offset `from`.
    pub fn new(file: &'f File, from: u64) -> Self {
        Self { file, started: from, dropped: from, enabled: true }
    }

    /// The stream's bytes up to `end` are written: starts their writeback once a [`STEP`] has
    /// gathered, and waits for and drops those more than [`LAG`] behind. An I/O error of the
    /// writeback is returned (the final sync would report it too).
    pub fn written_to(&mut self, end: u64) -> io::Result<()> {
        if !self.enabled || end < self.started + STEP {
            return Ok(());
        }
        if !self.sync_range(self.started, end, libc::SYNC_FILE_RANGE_WRITE)? {
            return Ok(());
        }
        self.started = end;
        let settled = end.saturating_sub(LAG) & !(PAGE_SIZE - 1);
        if settled > self.dropped {
            let flags =
                libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            if !self.sync_range(self.dropped, settled, flags)? {
                return Ok(());
            }
            // Advice: a failure leaves the pages cached, nothing more.
            // SAFETY: posix_fadvise takes a descriptor this File owns and plain integers.
            unsafe {
                libc::posix_fadvise(
                    self.file.as_raw_fd(),
                    self.dropped as libc::off_t,
                    (settled - self.dropped) as libc::off_t,
                    libc::POSIX_FADV_DONTNEED,
                )
            };
            self.dropped = settled;
        }
        Ok(())
    }

    /// `sync_file_range` over `from..to`; `false` (and the stream left alone from then on)
    /// when the file does not support it.
    fn sync_range(&mut self, from: u64, to: u64, flags: libc::c_uint) -> io::Result<bool> {
        // SAFETY: sync_file_range takes a descriptor this File owns and plain integers.
        let result = unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), from as libc::off64_t, (to - from) as libc::off64_t, flags)
        };
        if result == 0 {
            return Ok(true);
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EINVAL | libc::ESPIPE | libc::EOPNOTSUPP | libc::ENOSYS) => {
                self.enabled = false;
                Ok(false)
            }
            _ => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TestDir;
    use std::os::unix::fs::FileExt;

    /// Which of the file's pages are in the page cache (`mincore` on a mapping of it).
    fn cached_pages(file: &File, len: usize) -> Vec<bool> {
        // SAFETY: a fresh shared read-only mapping of `len` bytes of a file of at least that
        // length; only mincore looks at it, and it is unmapped before returning.
        unsafe {
            let map = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0);
            assert_ne!(map, libc::MAP_FAILED, "mmap: {}", io::Error::last_os_error());
            let mut resident = vec![0u8; len.div_ceil(PAGE_SIZE as usize)];
            let result = libc::mincore(map, len, resident.as_mut_ptr());
            assert_eq!(result, 0, "mincore: {}", io::Error::last_os_error());
            libc::munmap(map, len);
            resident.iter().map(|&r| r & 1 != 0).collect()
        }
    }

    #[test]
    fn bytes_far_behind_the_stream_leave_the_page_cache() {
        let dir = TestDir::new("writeback");
        let path = dir.path().join("stream");
        let file = File::options().create_new(true).read(true).write(true).open(&path).unwrap();
        let len = (LAG + 6 * STEP) as usize;
        let from = PAGE_SIZE;
        let piece: Vec<u8> = (0..STEP as usize / 2).map(|i| (i % 251) as u8 + 1).collect();
        let mut writeback = Writeback::new(&file, from);
        let mut end = from;
        while end < from + len as u64 {
            file.write_all_at(&piece, end).unwrap();
            end += piece.len() as u64;
            writeback.written_to(end).unwrap();
        }
        let cached = cached_pages(&file, end as usize);
        let page = |offset: u64| (offset / PAGE_SIZE) as usize;
        // Everything more than LAG (and a step) behind the end was dropped; the tail is cached.
        let settled = page(end - LAG - STEP);
        let dropped = cached[page(from)..settled].iter().filter(|&&c| !c).count();
        assert_eq!(dropped, settled - page(from), "pages far behind the end left in the cache");
        assert!(cached[page(end - STEP)..].iter().all(|&c| c), "the newest step was dropped");
        // And the file is whole.
        let mut back = vec![0u8; piece.len()];
        file.read_exact_at(&mut back, from + STEP).unwrap();
        assert_eq!(back, piece);
    }

    #[test]
    fn a_file_without_sync_file_range_is_left_alone() {
        let (read, write) = std::io::pipe().unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(write));
        let mut writeback = Writeback::new(&file, 0);
        writeback.written_to(LAG + 4 * STEP).unwrap();
        assert!(!writeback.enabled);
        drop(read);
    }
}
