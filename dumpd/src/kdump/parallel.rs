//! Compressing a kdump file's pages on every core while one thread writes them in order.
//!
//! Compression is nearly all of a kdump writer's work (zstd level 1 takes about 5 µs for a page
//! of noise, more than copying it to the disk), and pages are compressed each on its own, so
//! they spread over threads without changing a byte of the file. The writing thread reads
//! pages in batches (lent in place when the source allows it, else copied into the batch),
//! hands each batch to a pool of compressing threads, and takes the results back in batch
//! order. At most [`IN_FLIGHT_PER_THREAD`] batches per thread are out at once, so memory stays
//! a few megabytes whatever the guest's size.

use std::collections::BTreeMap;
use std::io;
use std::sync::mpsc::{channel, Receiver};
use std::sync::Mutex;

use super::compress::{Compression, PageCompressor};
use super::PAGE_SIZE;
use crate::writer::is_zero;

/// Pages per batch (1 MiB of memory).
pub const BATCH_PAGES: usize = 256;
/// Batches handed out per compressing thread before the writer waits for the oldest.
const IN_FLIGHT_PER_THREAD: usize = 2;
/// Compressing threads at most, whatever the host has.
const MAX_THREADS: usize = 8;

/// A batch of pages to compress, in pfn order.
pub struct Batch<'a> {
    /// Each page's pfn.
    pub pfns: Vec<u64>,
    /// Each page's bytes: lent in place, or a range of `copies`.
    pages: Vec<Held<'a>>,
    /// Pages copied out of the source, one after another.
    copies: Vec<u8>,
}

enum Held<'a> {
    Lent(&'a [u8]),
    /// The offset of the page in the batch's copies.
    Copied(usize),
}

impl<'a> Batch<'a> {
    /// An empty batch.
    pub fn new() -> Self {
        Self { pfns: Vec::with_capacity(BATCH_PAGES), pages: Vec::with_capacity(BATCH_PAGES), copies: Vec::new() }
    }

    /// Whether the batch holds [`BATCH_PAGES`] pages.
    pub fn is_full(&self) -> bool {
        self.pfns.len() >= BATCH_PAGES
    }

    /// Adds page `pfn`, held where the source lends it.
    pub fn push_lent(&mut self, pfn: u64, page: &'a [u8]) {
        self.pfns.push(pfn);
        self.pages.push(Held::Lent(page));
    }

    /// Adds page `pfn` to be copied: `fill` writes its bytes into the page-long slice given.
    pub fn push_copied<E>(&mut self, pfn: u64, fill: impl FnOnce(&mut [u8]) -> Result<(), E>) -> Result<(), E> {
        let at = self.copies.len();
        self.copies.resize(at + PAGE_SIZE as usize, 0);
        fill(&mut self.copies[at..])?;
        self.pfns.push(pfn);
        self.pages.push(Held::Copied(at));
        Ok(())
    }

    fn page(&self, index: usize) -> &[u8] {
        match self.pages[index] {
            Held::Lent(page) => page,
            Held::Copied(at) => &self.copies[at..at + PAGE_SIZE as usize],
        }
    }
}

impl Default for Batch<'_> {
    fn default() -> Self {
        Self::new()
    }
}

/// How a page is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// All zero: it points at the file's shared zero page.
    Zero,
    /// Compressed to this many bytes.
    Compressed(u32),
    /// As it is (it did not shrink): a page of bytes.
    Raw,
}

/// A batch compressed: each page's storage, and the bytes of its non-zero pages one after
/// another.
pub struct Compressed {
    /// One per page of the batch, in order.
    stored: Vec<Stored>,
    /// The stored bytes of the pages that are not zero, in order.
    data: Vec<u8>,
}

impl Compressed {
    /// Each page of the batch, in order: how it is stored and its stored bytes (none for a
    /// zero page).
    pub fn pages(&self) -> impl Iterator<Item = (Stored, &[u8])> {
        let mut at = 0;
        self.stored.iter().map(move |&stored| {
            let len = match stored {
                Stored::Zero => 0,
                Stored::Compressed(size) => size as usize,
                Stored::Raw => PAGE_SIZE as usize,
            };
            // `data` holds exactly these lengths, one after another (compress_batch).
            let bytes = &self.data[at..at + len];
            at += len;
            (stored, bytes)
        })
    }
}

/// A page the compressor failed on.
#[derive(Debug)]
pub struct CompressFailure {
    /// The page's pfn.
    pub pfn: u64,
    /// The compressor's error.
    pub source: io::Error,
}

/// Why [`compress_in_order`] stopped.
pub enum Stop<E> {
    /// Reading a batch or writing one failed.
    Caller(E),
    /// A page could not be compressed.
    Compress(CompressFailure),
}

/// Compresses the batches `next_batch` gives (until `Ok(None)`) on a pool of threads, and calls
/// `write` with each batch and its result, in the order the batches were given. Stops at the
/// first error, from either closure or a compressor.
pub fn compress_in_order<'a, E>(
    compression: Compression,
    mut next_batch: impl FnMut() -> Result<Option<Batch<'a>>, E>,
    mut write: impl FnMut(&Batch<'a>, &Compressed) -> Result<(), E>,
) -> Result<(), Stop<E>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS);
    // Check the compressor can be built before any thread starts.
    PageCompressor::new(compression).map_err(|source| Stop::Compress(CompressFailure { pfn: 0, source }))?;
    let (jobs, job_queue) = channel::<(u64, Batch<'a>)>();
    let job_queue = Mutex::new(job_queue);
    std::thread::scope(|scope| {
        // Dropped when the scope's closure returns: the threads then see the queue closed.
        let jobs = jobs;
        let (results, done) = channel();
        for _ in 0..threads {
            let (job_queue, results) = (&job_queue, results.clone());
            std::thread::Builder::new()
                .name("kdump-compress".into())
                .spawn_scoped(scope, move || compress_batches(compression, job_queue, &results))
                .map_err(|source| Stop::Compress(CompressFailure { pfn: 0, source }))?;
        }
        drop(results);
        let mut next_seq = 0u64;
        let mut to_write = 0u64;
        let mut waiting = BTreeMap::new();
        let mut input_done = false;
        loop {
            while !input_done && next_seq - to_write < (threads * IN_FLIGHT_PER_THREAD) as u64 {
                match next_batch().map_err(Stop::Caller)? {
                    Some(batch) => {
                        // The receivers live until the scope ends.
                        let _ = jobs.send((next_seq, batch));
                        next_seq += 1;
                    }
                    None => input_done = true,
                }
            }
            if to_write == next_seq {
                return Ok(());
            }
            let (batch, result) = loop {
                if let Some(next) = waiting.remove(&to_write) {
                    break next;
                }
                // A thread is compressing batch `to_write`; it sends before it ends.
                let Ok((seq, batch, result)) = done.recv() else {
                    return Err(Stop::Compress(CompressFailure {
                        pfn: 0,
                        source: io::Error::other("a compressing thread ended early"),
                    }));
                };
                waiting.insert(seq, (batch, result));
            };
            let compressed: Compressed = result.map_err(Stop::Compress)?;
            write(&batch, &compressed).map_err(Stop::Caller)?;
            to_write += 1;
        }
    })
}

/// A batch back from a compressing thread, with its place in the order.
type Outcome<'a> = (u64, Batch<'a>, Result<Compressed, CompressFailure>);

/// One compressing thread: takes batches until the queue closes.
fn compress_batches<'a>(
    compression: Compression,
    job_queue: &Mutex<Receiver<(u64, Batch<'a>)>>,
    results: &std::sync::mpsc::Sender<Outcome<'a>>,
) {
    let mut compressor = match PageCompressor::new(compression) {
        Ok(compressor) => compressor,
        // Checked by the caller before the threads start; a thread without one takes no work.
        Err(_) => return,
    };
    loop {
        // A poisoned lock means another compressing thread panicked: stop taking work.
        let job = match job_queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        let Ok((seq, batch)) = job else { return };
        let result = compress_batch(&mut compressor, &batch);
        if results.send((seq, batch, result)).is_err() {
            return;
        }
    }
}

fn compress_batch(compressor: &mut PageCompressor, batch: &Batch<'_>) -> Result<Compressed, CompressFailure> {
    let mut compressed = Compressed { stored: Vec::with_capacity(batch.pfns.len()), data: Vec::new() };
    for (index, &pfn) in batch.pfns.iter().enumerate() {
        let page = batch.page(index);
        let stored = if is_zero(page) {
            Stored::Zero
        } else {
            match compressor.compress(page).map_err(|source| CompressFailure { pfn, source })? {
                Some(bytes) => {
                    compressed.data.extend_from_slice(bytes);
                    // Smaller than a page.
                    Stored::Compressed(bytes.len() as u32)
                }
                None => {
                    compressed.data.extend_from_slice(page);
                    Stored::Raw
                }
            }
        };
        compressed.stored.push(stored);
    }
    Ok(compressed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kdump::compress::tests::{noise, text_page};

    #[test]
    fn results_come_back_in_order_and_match_one_compressor() {
        // Zero, compressible and incompressible pages over many batches, some lent, some copied.
        let pages: Vec<Vec<u8>> = (0..BATCH_PAGES * 9 + 17)
            .map(|i| match (i % 5, i % 3) {
                (0, _) => vec![0; 4096],
                (_, 0) => text_page(),
                _ => noise(i as u64),
            })
            .collect();
        let mut pfns = 0..pages.len() as u64;
        let mut written = Vec::new();
        let result = compress_in_order::<io::Error>(
            Compression::Zstd,
            || {
                let mut batch = Batch::new();
                for pfn in pfns.by_ref() {
                    let bytes = &pages[pfn as usize];
                    match pfn % 2 {
                        0 => batch.push_lent(pfn, bytes),
                        _ => batch.push_copied(pfn, |into: &mut [u8]| {
                            into.copy_from_slice(bytes);
                            Ok::<(), io::Error>(())
                        })?,
                    }
                    if batch.is_full() {
                        break;
                    }
                }
                Ok((!batch.pfns.is_empty()).then_some(batch))
            },
            |batch, compressed| {
                written.push((batch.pfns.clone(), compressed.stored.clone(), compressed.data.clone()));
                Ok(())
            },
        );
        assert!(result.is_ok());
        let mut one = PageCompressor::new(Compression::Zstd).unwrap();
        let mut data = Vec::new();
        let mut stored = Vec::new();
        for bytes in &pages {
            stored.push(match (is_zero(bytes), one.compress(bytes).unwrap()) {
                (true, _) => Stored::Zero,
                (false, Some(c)) => {
                    data.extend_from_slice(c);
                    Stored::Compressed(c.len() as u32)
                }
                (false, None) => {
                    data.extend_from_slice(bytes);
                    Stored::Raw
                }
            });
        }
        let pfns: Vec<u64> = written.iter().flat_map(|w| w.0.clone()).collect();
        assert_eq!(pfns, (0..pages.len() as u64).collect::<Vec<_>>(), "batches out of order");
        assert_eq!(written.iter().flat_map(|w| w.1.clone()).collect::<Vec<_>>(), stored);
        assert_eq!(written.iter().flat_map(|w| w.2.clone()).collect::<Vec<_>>(), data);
        assert!(stored.contains(&Stored::Raw) && stored.contains(&Stored::Zero));
    }

    #[test]
    fn an_error_from_either_side_stops_the_pass() {
        let noise = noise(1);
        let mut given = 0;
        let reading: Result<(), Stop<&str>> = compress_in_order(
            Compression::Zlib,
            || {
                given += 1;
                match given {
                    1..=3 => {
                        let mut batch = Batch::new();
                        batch.push_lent(given, &noise);
                        Ok(Some(batch))
                    }
                    _ => Err("cannot read"),
                }
            },
            |_, _| Ok(()),
        );
        assert!(matches!(reading, Err(Stop::Caller("cannot read"))));
        let mut writes = 0;
        let writing: Result<(), Stop<&str>> = compress_in_order(
            Compression::Zlib,
            || {
                let mut batch = Batch::new();
                batch.push_lent(0, &noise);
                Ok(Some(batch))
            },
            |_, _| {
                writes += 1;
                if writes == 5 {
                    Err("disk full")
                } else {
                    Ok(())
                }
            },
        );
        assert!(matches!(writing, Err(Stop::Caller("disk full"))));
    }
}
