//! Writing a vmcore in one pass, straight from memory, as a sparse file.
//!
//! The caller supplies the header blob (written at offset 0) and the [`Run`]s that say which
//! memory goes to which file offset; [`write_vmcore`] goes through each run a window at a time,
//! checks every 4 KiB page of the file, and writes each stretch of data with one `pwrite`. Long
//! runs of zero pages (from [`HOLE_MIN`] up) stay holes; shorter zero gaps between data are
//! written with it, so memory whose used and unused pages alternate costs one system call per
//! window and leaves a file of few extents, not one per page (whose writeback is bound by I/O
//! operations rather than bytes). A source that holds its memory in place and unchanging (a
//! forked writer's snapshot of guest RAM) lends it: the writer then writes straight from guest
//! memory with no copy, and skips what the source knows was never populated without touching
//! it. Other sources are read through one fixed buffer, so a 64 GiB guest costs a megabyte of
//! host memory to dump. What is written goes on to the disk and out of the page cache a few
//! megabytes behind the writer ([`crate::writeback`]), so the file costs little memory either.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use crate::writeback::Writeback;

/// Bytes copied per read from a source that does not lend its memory.
pub const CHUNK_SIZE: usize = 1 << 20;
/// Bytes written per window from a source that lends its memory (the progress report's step).
pub const LENT_WINDOW: usize = 8 << 20;
/// Granularity of zero detection: a file page that is all zero may be left as a hole.
pub const PAGE_SIZE: u64 = 4096;
/// The shortest run of zero bytes between data that is left as a hole rather than written: a
/// hole splits the write, the file's extent and the disk I/O that writes it back, which costs
/// more than writing a few zero pages.
pub const HOLE_MIN: u64 = 64 << 10;

/// Where the bytes of a vmcore come from (guest RAM, a snapshot, a test buffer).
pub trait MemorySource {
    /// Fills `buf` with the bytes at `addr..addr + buf.len()`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), SourceError>;

    /// The bytes at `addr..addr + len` where they lie, when the source holds them in this
    /// process's memory and nothing changes them while the borrow lasts (a snapshot); `None`
    /// when they must be copied out with [`read`](Self::read). A lent range counts as read.
    fn lend(&self, _addr: u64, _len: usize) -> Option<&[u8]> {
        None
    }

    /// Whether the bytes at `addr..addr + len` are known to be zero without looking at them
    /// (memory the host never populated). `false` when the source does not know.
    fn known_zero(&self, _addr: u64, _len: u64) -> bool {
        false
    }
}

/// A memory source could not supply bytes.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {len} bytes of memory at {addr:#x}")]
pub struct SourceError {
    /// First address asked for.
    pub addr: u64,
    /// Bytes asked for.
    pub len: u64,
    /// Why, when the source knows.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// `len` bytes of memory at `addr` go to the file at `file_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Where in the file the bytes go.
    pub file_offset: u64,
    /// Address of the first byte in the memory source.
    pub addr: u64,
    /// Number of bytes.
    pub len: u64,
}

/// What one write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteStats {
    /// The file's length (holes included).
    pub apparent_bytes: u64,
    /// Bytes actually written (headers, data, and the short zero gaps written with it).
    pub written_bytes: u64,
    /// File pages (or the parts of them a run covers) found all zero and left as holes.
    pub zero_pages_skipped: u64,
    /// Time from the first write to the length being set.
    pub duration: Duration,
}

/// Why a vmcore could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The runs do not describe a file: unsorted, overlapping, over the headers or past its end.
    #[error("run {index} ({run:x?}) {problem}")]
    Layout {
        /// Index of the offending run.
        index: usize,
        /// The run.
        run: Run,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The headers alone are longer than the file.
    #[error("the headers ({headers_len} bytes) are longer than the file ({file_size} bytes)")]
    HeadersPastEnd {
        /// Length of the headers.
        headers_len: u64,
        /// The file's length.
        file_size: u64,
    },
    /// The memory source failed.
    #[error("cannot read the memory of run {index}")]
    Source {
        /// Index of the run.
        index: usize,
        /// The source's error.
        #[source]
        source: SourceError,
    },
    /// Writing the file failed.
    #[error("cannot write the vmcore")]
    Io(#[from] std::io::Error),
}

/// Writes a vmcore into `file` (which should be empty): `headers` at offset 0, then each run
/// read from `memory`, long zero runs left as holes, and finally the length set to
/// `file_size`. `runs` must be sorted by file offset, must not overlap each other or the headers
/// and must end by `file_size`; anything else is a [`WriteError::Layout`] before any byte is
/// written.
pub fn write_vmcore(
    file: &File,
    headers: &[u8],
    runs: &[Run],
    file_size: u64,
    memory: &dyn MemorySource,
) -> Result<WriteStats, WriteError> {
    check_layout(headers.len() as u64, runs, file_size)?;
    let start = Instant::now();
    let mut stats = WriteStats { apparent_bytes: file_size, ..WriteStats::default() };
    file.write_all_at(headers, 0)?;
    stats.written_bytes += headers.len() as u64;
    let mut out = Stretches { file, writeback: Writeback::new(file, 0), after_data: None, stats: &mut stats };
    let mut buf = Vec::new();
    for (index, run) in runs.iter().enumerate() {
        let mut done = 0u64;
        while done < run.len {
            let (addr, file_offset) = (run.addr + done, run.file_offset + done);
            // At most LENT_WINDOW, so it fits in usize.
            let lent_len = (run.len - done).min(LENT_WINDOW as u64) as usize;
            let n = match memory.lend(addr, lent_len) {
                Some(bytes) => {
                    let known_zero = |at: usize, len: usize| memory.known_zero(addr + at as u64, len as u64);
                    out.window(file_offset, bytes, &known_zero)?;
                    lent_len
                }
                None => {
                    let n = lent_len.min(CHUNK_SIZE);
                    buf.resize(buf.len().max(n), 0);
                    let chunk = &mut buf[..n];
                    memory.read(addr, chunk).map_err(|source| WriteError::Source { index, source })?;
                    out.window(file_offset, chunk, &|_, _| false)?;
                    n
                }
            };
            done += n as u64;
        }
        out.end_run();
    }
    file.set_len(file_size)?;
    stats.duration = start.elapsed();
    Ok(stats)
}

fn check_layout(headers_len: u64, runs: &[Run], file_size: u64) -> Result<(), WriteError> {
    if headers_len > file_size {
        return Err(WriteError::HeadersPastEnd { headers_len, file_size });
    }
    let mut previous_end = headers_len;
    for (index, run) in runs.iter().enumerate() {
        let problem = |problem| WriteError::Layout { index, run: *run, problem };
        if run.file_offset < previous_end {
            return Err(problem("starts before the end of the headers or of the run before it"));
        }
        let end = run.file_offset.checked_add(run.len).ok_or(problem("overflows"))?;
        if end > file_size {
            return Err(problem("ends past the end of the file"));
        }
        run.addr.checked_add(run.len).ok_or(problem("wraps around the address space"))?;
        previous_end = end;
    }
    Ok(())
}

/// Writes memory a window at a time: each stretch from a non-zero file page to the last
/// non-zero page before a zero run of [`HOLE_MIN`] bytes or more goes out in one write; the zero
/// runs around stretches stay holes. Windows do not show in the file: a short zero gap across
/// the edge of two windows of a run is written as one inside a window is.
struct Stretches<'a> {
    file: &'a File,
    writeback: Writeback<'a>,
    /// Where the run's data written so far ends in the file, and the zero pieces seen since
    /// (holes, unless data follows within `HOLE_MIN`).
    after_data: Option<(u64, u64)>,
    stats: &'a mut WriteStats,
}

/// Zeros to write a short gap with.
static ZEROS: [u8; HOLE_MIN as usize] = [0; HOLE_MIN as usize];

impl Stretches<'_> {
    /// Ends the run being written: the zero pieces after its last data are holes.
    fn end_run(&mut self) {
        if let Some((_, zeros)) = self.after_data.take() {
            self.stats.zero_pages_skipped += zeros;
        }
    }

    /// Writes `data`, the next window of the run, at `offset`. `known_zero(at, len)` says that
    /// `data[at..at + len]` is zero without its bytes being read.
    fn window(&mut self, offset: u64, data: &[u8], known_zero: &dyn Fn(usize, usize) -> bool) -> std::io::Result<()> {
        // The stretch being gathered: from its first to the end of its last non-zero piece.
        let mut stretch: Option<(usize, usize)> = None;
        // Zero pieces since the last non-zero one.
        let mut zero_pieces = 0u64;
        let mut at = 0usize;
        while at < data.len() {
            // Up to the next page boundary of the file: under PAGE_SIZE, fits in usize.
            let to_boundary = (PAGE_SIZE - (offset + at as u64) % PAGE_SIZE) as usize;
            let end = data.len().min(at + to_boundary);
            if known_zero(at, end - at) || is_zero(&data[at..end]) {
                zero_pieces += 1;
            } else {
                stretch = match stretch {
                    Some((from, to)) if ((at - to) as u64) < HOLE_MIN => Some((from, end)),
                    Some((from, to)) => {
                        self.write(offset + from as u64, &data[from..to])?;
                        self.stats.zero_pages_skipped += zero_pieces;
                        Some((at, end))
                    }
                    None => {
                        self.continue_run(offset + at as u64, zero_pieces)?;
                        Some((at, end))
                    }
                };
                zero_pieces = 0;
            }
            at = end;
        }
        match (stretch, &mut self.after_data) {
            (Some((from, to)), _) => {
                self.write(offset + from as u64, &data[from..to])?;
                self.after_data = Some((offset + to as u64, zero_pieces));
            }
            (None, Some((_, zeros))) => *zeros += zero_pieces,
            (None, None) => self.stats.zero_pages_skipped += zero_pieces,
        }
        Ok(())
    }

    /// Before the first data of a window, at file offset `here`, after `leading` zero pieces of
    /// it: the gap since the run's last data is written if it is short, else left a hole.
    fn continue_run(&mut self, here: u64, leading: u64) -> std::io::Result<()> {
        match self.after_data.take() {
            Some((end, _)) if here - end < HOLE_MIN => self.write(end, &ZEROS[..(here - end) as usize]),
            Some((_, zeros)) => {
                self.stats.zero_pages_skipped += zeros + leading;
                Ok(())
            }
            None => {
                self.stats.zero_pages_skipped += leading;
                Ok(())
            }
        }
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        if !bytes.is_empty() {
            self.file.write_all_at(bytes, offset)?;
            self.stats.written_bytes += bytes.len() as u64;
            self.writeback.written_to(offset + bytes.len() as u64)?;
        }
        Ok(())
    }
}

/// Whether every byte is zero (in 64-byte blocks the compiler vectorises).
pub fn is_zero(bytes: &[u8]) -> bool {
    let mut blocks = bytes.chunks_exact(64);
    let whole = blocks.all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0);
    whole && blocks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::test_dir::TestDir;
    use std::os::unix::fs::MetadataExt;

    /// Memory at `base..base + bytes.len()`; with `lends`, lent in place. `known_zero` is a
    /// range the source knows to be zero whatever its bytes (it reads as zeros), as guest RAM
    /// knows the pages it never populated.
    pub(crate) struct Buffer {
        pub base: u64,
        pub bytes: Vec<u8>,
        pub lends: bool,
        pub known_zero: std::ops::Range<u64>,
    }

    impl Buffer {
        pub(crate) fn new(base: u64, bytes: Vec<u8>) -> Self {
            Self { base, bytes, lends: false, known_zero: 0..0 }
        }

        fn slice(&self, addr: u64, len: usize) -> Option<&[u8]> {
            let start = usize::try_from(addr.checked_sub(self.base)?).ok()?;
            self.bytes.get(start..start.checked_add(len)?)
        }
    }

    impl MemorySource for Buffer {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), SourceError> {
            let src = self.slice(addr, buf.len()).ok_or(SourceError { addr, len: buf.len() as u64, source: None })?;
            buf.copy_from_slice(src);
            // What the source knows to be zero reads as zero, whatever the bytes say.
            for (at, b) in (addr..).zip(buf.iter_mut()) {
                if self.known_zero.contains(&at) {
                    *b = 0;
                }
            }
            Ok(())
        }

        fn lend(&self, addr: u64, len: usize) -> Option<&[u8]> {
            self.lends.then(|| self.slice(addr, len)).flatten()
        }

        fn known_zero(&self, addr: u64, len: u64) -> bool {
            self.known_zero.start <= addr && addr + len <= self.known_zero.end
        }
    }

    /// The `(start, end)` of each stretch of data in `file`, holes left out.
    fn data_extents(file: &File) -> Vec<(u64, u64)> {
        use std::os::fd::AsRawFd;
        let (mut extents, mut at) = (Vec::new(), 0i64);
        loop {
            // SAFETY: lseek on a descriptor this function borrows; no memory is involved.
            let data = unsafe { libc::lseek(file.as_raw_fd(), at, libc::SEEK_DATA) };
            if data < 0 {
                return extents;
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(file.as_raw_fd(), data, libc::SEEK_HOLE) };
            extents.push((data as u64, hole as u64));
            at = hole;
        }
    }

    /// 8 MiB of memory at 1 MiB: zero except for a few marked pages and a non-zero tail.
    fn memory() -> Buffer {
        let mut bytes = vec![0u8; 8 << 20];
        for page in [0usize, 3, 300, 1025, 2047] {
            bytes[page * 4096 + 17] = page as u8 | 1;
        }
        for (i, b) in bytes[(6 << 20)..(6 << 20) + 70_000].iter_mut().enumerate() {
            *b = (i % 251) as u8 | 1;
        }
        Buffer::new(1 << 20, bytes)
    }

    /// The file a writer must produce, built byte by byte.
    fn expected(headers: &[u8], runs: &[Run], file_size: u64, memory: &Buffer) -> Vec<u8> {
        let mut file = vec![0u8; file_size as usize];
        file[..headers.len()].copy_from_slice(headers);
        for r in runs {
            let from = (r.addr - memory.base) as usize;
            file[r.file_offset as usize..(r.file_offset + r.len) as usize]
                .copy_from_slice(&memory.bytes[from..from + r.len as usize]);
        }
        file
    }

    #[test]
    fn writes_a_byte_exact_sparse_file() {
        let dir = TestDir::new("writer");
        let memory = memory();
        let headers = vec![0x5au8; 8192];
        let runs = [
            Run { file_offset: 8192, addr: 1 << 20, len: 4 << 20 },
            // Unaligned in the file and in memory, crossing page and chunk boundaries.
            Run { file_offset: (4 << 20) + 8192 + 100, addr: (5 << 20) + 7, len: (3 << 20) - 7 },
        ];
        let file_size = (7 << 20) + 8192 + 100 + (1 << 20);
        let path = dir.path().join("vmcore");
        let file = File::create(&path).unwrap();
        let stats = write_vmcore(&file, &headers, &runs, file_size, &memory).unwrap();
        drop(file);

        let written = std::fs::read(&path).unwrap();
        assert_eq!(written.len() as u64, file_size);
        assert!(written == expected(&headers, &runs, file_size, &memory), "content differs");
        assert_eq!(stats.apparent_bytes, file_size);
        assert!(stats.written_bytes < 200_000, "{stats:?}");
        assert!(stats.zero_pages_skipped > 1500, "{stats:?}");
        // Holes: the file occupies far less than its length (blocks are 512-byte units).
        let on_disk = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(on_disk < 1 << 20, "{on_disk} bytes on disk for {file_size}");
    }

    #[test]
    fn lent_memory_gives_the_same_file() {
        let dir = TestDir::new("writer-lent");
        let headers = vec![0x5au8; 8192];
        let runs = [
            Run { file_offset: 8192, addr: 1 << 20, len: 4 << 20 },
            Run { file_offset: (4 << 20) + 8192 + 100, addr: (5 << 20) + 7, len: (3 << 20) - 7 },
        ];
        let file_size = (7 << 20) + 8192 + 100 + (1 << 20);
        let copied = memory();
        let lent = Buffer { lends: true, ..memory() };
        let write = |name: &str, memory: &Buffer| {
            let path = dir.path().join(name);
            let stats = write_vmcore(&File::create(&path).unwrap(), &headers, &runs, file_size, memory).unwrap();
            (std::fs::read(&path).unwrap(), stats)
        };
        let (from_copies, copied_stats) = write("copied", &copied);
        let (from_loans, lent_stats) = write("lent", &lent);
        assert!(from_copies == expected(&headers, &runs, file_size, &copied), "copied: content differs");
        assert!(from_loans == from_copies, "lent: content differs");
        // (Their zero-page counts differ by the pieces a window's edge splits in two.)
        assert_eq!(lent_stats.written_bytes, copied_stats.written_bytes);
    }

    #[test]
    fn alternating_pages_make_one_extent_and_long_zero_runs_holes() {
        let dir = TestDir::new("writer-extents");
        // Every even page of the first 2 MiB data; then a lone data page 60 KiB after the last
        // even page (the gap is written), another 64 KiB after that one (the gap is a hole),
        // then zeros to the end (a hole).
        let mut bytes = vec![0u8; 4 << 20];
        for page in (0..512).step_by(2) {
            bytes[page * 4096..(page + 1) * 4096].fill(0xa5);
        }
        let first_lone = 511 * 4096 + (60 << 10);
        let second_lone = first_lone + 4096 + (64 << 10);
        for at in [first_lone, second_lone] {
            bytes[at..at + 4096].fill(0x3c);
        }
        let path = dir.path().join("vmcore");
        let file = File::create(&path).unwrap();
        let runs = [Run { file_offset: 4096, addr: 0, len: 4 << 20 }];
        for lends in [false, true] {
            let memory = Buffer { lends, ..Buffer::new(0, bytes.clone()) };
            file.set_len(0).unwrap();
            let stats = write_vmcore(&file, b"hdr", &runs, 4096 + (4 << 20), &memory).unwrap();
            // In the file, memory starts at 4096; the header's block and the first stretch touch.
            let first_end = 4096 + first_lone as u64 + 4096;
            let second = 4096 + second_lone as u64;
            assert_eq!(data_extents(&file), vec![(0, first_end), (second, second + 4096)], "lends {lends}: {stats:?}");
            assert_eq!(stats.written_bytes, 3 + (first_end - 4096) + 4096, "lends {lends}");
            assert_eq!(stats.zero_pages_skipped, 1024 - (first_end - 4096) / 4096 - 1, "lends {lends}");
            assert!(std::fs::read(&path).unwrap()[4096..] == bytes[..], "lends {lends}: content differs");
        }
    }

    #[test]
    fn a_gap_across_two_windows_is_judged_whole() {
        let dir = TestDir::new("writer-window-gap");
        // Read through 1 MiB windows: data up to 8 pages before the first window's end, then a
        // 12-page gap across it (48 KiB: written); data up to 10 pages before the second
        // window's end, then a 20-page gap across it (80 KiB: a hole); data to the end.
        let mut bytes = vec![0x11u8; 3 << 20];
        let page = |n: usize| n * 4096;
        bytes[page(248)..page(260)].fill(0);
        bytes[page(502)..page(522)].fill(0);
        let memory = Buffer::new(0, bytes.clone());
        let path = dir.path().join("vmcore");
        let file = File::create(&path).unwrap();
        let runs = [Run { file_offset: 4096, addr: 0, len: 3 << 20 }];
        let stats = write_vmcore(&file, &[1; 4096], &runs, 4096 + (3 << 20), &memory).unwrap();
        let in_file = |n: usize| 4096 + n as u64 * 4096;
        assert_eq!(data_extents(&file), vec![(0, in_file(502)), (in_file(522), in_file(768))], "{stats:?}");
        assert_eq!(stats.zero_pages_skipped, 20);
        assert!(std::fs::read(&path).unwrap()[4096..] == bytes[..], "content differs");
    }

    #[test]
    fn known_zero_memory_is_never_read() {
        let dir = TestDir::new("writer-known-zero");
        // The source says its second MiB is zero; its bytes (0xff) must not reach the file.
        let memory = Buffer { lends: true, known_zero: (1 << 20)..(2 << 20), ..Buffer::new(0, vec![0xff; 3 << 20]) };
        let path = dir.path().join("vmcore");
        let file = File::create(&path).unwrap();
        let runs = [Run { file_offset: 4096, addr: 0, len: 3 << 20 }];
        let stats = write_vmcore(&file, &[1; 4096], &runs, 4096 + (3 << 20), &memory).unwrap();
        assert_eq!(stats.zero_pages_skipped, 256);
        let content = std::fs::read(&path).unwrap();
        let memory_in_file = &content[4096..];
        assert!(memory_in_file[..1 << 20].iter().all(|&b| b == 0xff));
        assert!(is_zero(&memory_in_file[1 << 20..2 << 20]));
        assert!(memory_in_file[2 << 20..].iter().all(|&b| b == 0xff));
        assert_eq!(data_extents(&file), vec![(0, 4096 + (1 << 20)), (4096 + (2 << 20), 4096 + (3 << 20))]);
    }

    #[test]
    fn a_file_of_holes_and_a_trailing_gap() {
        let dir = TestDir::new("writer-holes");
        let memory = Buffer::new(0, vec![0; 1 << 20]);
        let path = dir.path().join("vmcore");
        let file = File::create(&path).unwrap();
        let runs = [Run { file_offset: 4096, addr: 0, len: 1 << 20 }];
        let stats = write_vmcore(&file, b"hdr", &runs, 16 << 20, &memory).unwrap();
        assert_eq!((stats.written_bytes, stats.zero_pages_skipped), (3, 256));
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 16 << 20);
        assert!(meta.blocks() * 512 <= 64 << 10, "{} bytes on disk", meta.blocks() * 512);
        let content = std::fs::read(&path).unwrap();
        assert_eq!(&content[..3], b"hdr");
        assert!(is_zero(&content[3..]));
    }

    #[test]
    fn refuses_bad_layouts_before_writing() {
        let dir = TestDir::new("writer-layout");
        let memory = memory();
        let file = File::create(dir.path().join("vmcore")).unwrap();
        let run = |file_offset, len| Run { file_offset, addr: 1 << 20, len };
        let problem = |runs: &[Run], file_size| match write_vmcore(&file, &[0; 4096], runs, file_size, &memory) {
            Err(WriteError::Layout { index, problem, .. }) => (index, problem),
            other => panic!("{other:?}"),
        };
        assert_eq!(problem(&[run(100, 10)], 1 << 20).0, 0, "over the headers");
        assert_eq!(problem(&[run(8192, 4096), run(8192 + 4095, 1)], 1 << 20).0, 1, "overlap");
        assert_eq!(problem(&[run(8192, 4096), run(4096, 1)], 1 << 20).0, 1, "unsorted");
        assert_eq!(problem(&[run(8192, 4096)], 8192).1, "ends past the end of the file");
        assert_eq!(problem(&[run(u64::MAX, 2)], u64::MAX).1, "overflows");
        let long = write_vmcore(&file, &[0; 4096], &[], 100, &memory);
        assert!(matches!(long, Err(WriteError::HeadersPastEnd { headers_len: 4096, file_size: 100 })));
        assert_eq!(std::fs::metadata(dir.path().join("vmcore")).unwrap().len(), 0, "nothing written");
    }

    #[test]
    fn reports_source_failures() {
        let dir = TestDir::new("writer-source");
        let file = File::create(dir.path().join("vmcore")).unwrap();
        let memory = Buffer::new(0, vec![1; 4096]);
        let runs = [Run { file_offset: 4096, addr: 0, len: 4096 }, Run { file_offset: 8192, addr: 4096, len: 1 }];
        let err = write_vmcore(&file, &[], &runs, 8193, &memory).unwrap_err();
        assert!(matches!(err, WriteError::Source { index: 1, .. }), "{err:?}");
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 4096]));
        for at in [0, 63, 64, 4000, 4095] {
            let mut page = [0u8; 4096];
            page[at] = 1;
            assert!(!is_zero(&page), "{at}");
        }
        assert!(!is_zero(&[0, 0, 0, 9]));
    }
}
