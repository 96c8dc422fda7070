//! Writing a vmcore in one pass, straight from memory, as a sparse file.
//!
//! The caller supplies the header blob (written at offset 0) and the [`Run`]s that say which
//! memory goes to which file offset; [`write_vmcore`] copies each run through one fixed buffer,
//! checks every 4 KiB page of the file, writes only pages that hold a non-zero byte and leaves
//! the others as holes, then sets the file's length. Nothing is buffered beyond one chunk, so a
//! 64 GiB guest costs one megabyte of host memory to dump.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// Bytes copied per read from the memory source.
pub const CHUNK_SIZE: usize = 1 << 20;
/// Granularity of zero detection: a file page that is all zero is left as a hole.
pub const PAGE_SIZE: u64 = 4096;

/// Where the bytes of a vmcore come from (guest RAM, a snapshot, a test buffer).
pub trait MemorySource {
    /// Fills `buf` with the bytes at `addr..addr + buf.len()`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), SourceError>;
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
    /// Bytes actually written (headers and non-zero pages).
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
/// read from `memory`, all-zero pages left as holes, and finally the length set to
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
    let largest = runs.iter().map(|r| r.len).max().unwrap_or(0);
    let mut buf = vec![0u8; usize::try_from(largest).unwrap_or(CHUNK_SIZE).min(CHUNK_SIZE)];
    for (index, run) in runs.iter().enumerate() {
        let mut done = 0u64;
        while done < run.len {
            // At most CHUNK_SIZE, so it fits in usize.
            let n = (run.len - done).min(buf.len() as u64) as usize;
            let chunk = &mut buf[..n];
            memory.read(run.addr + done, chunk).map_err(|source| WriteError::Source { index, source })?;
            write_sparse(file, run.file_offset + done, chunk, &mut stats)?;
            done += n as u64;
        }
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

/// Writes `data` at `offset`, skipping the pieces of each file page that are all zero. Adjacent
/// non-zero pieces go out in one write.
fn write_sparse(file: &File, offset: u64, data: &[u8], stats: &mut WriteStats) -> std::io::Result<()> {
    let mut pending: Option<(u64, usize)> = None; // (file offset, start in data) of unwritten data
    let mut at = 0usize;
    while at < data.len() {
        let file_at = offset + at as u64;
        // Up to the next page boundary of the file: under PAGE_SIZE, fits in usize.
        let to_boundary = (PAGE_SIZE - file_at % PAGE_SIZE) as usize;
        let piece = &data[at..data.len().min(at + to_boundary)];
        if is_zero(piece) {
            stats.zero_pages_skipped += 1;
            if let Some((where_, from)) = pending.take() {
                flush(file, where_, &data[from..at], stats)?;
            }
        } else if pending.is_none() {
            pending = Some((file_at, at));
        }
        at += piece.len();
    }
    if let Some((where_, from)) = pending {
        flush(file, where_, &data[from..], stats)?;
    }
    Ok(())
}

fn flush(file: &File, offset: u64, bytes: &[u8], stats: &mut WriteStats) -> std::io::Result<()> {
    file.write_all_at(bytes, offset)?;
    stats.written_bytes += bytes.len() as u64;
    Ok(())
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

    /// Memory at `base..base + bytes.len()`.
    pub(crate) struct Buffer {
        pub base: u64,
        pub bytes: Vec<u8>,
    }

    impl MemorySource for Buffer {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), SourceError> {
            let error = || SourceError { addr, len: buf.len() as u64, source: None };
            let start = addr.checked_sub(self.base).ok_or_else(error)? as usize;
            let src = self.bytes.get(start..start + buf.len()).ok_or_else(error)?;
            buf.copy_from_slice(src);
            Ok(())
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
        Buffer { base: 1 << 20, bytes }
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
    fn a_file_of_holes_and_a_trailing_gap() {
        let dir = TestDir::new("writer-holes");
        let memory = Buffer { base: 0, bytes: vec![0; 1 << 20] };
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
        let memory = Buffer { base: 0, bytes: vec![1; 4096] };
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
