//! Hostile input: truncated, bit-flipped and overwritten ELF and kdump vmcores go through
//! `image::open` and `read_phys` over every page. They must fail with errors, never panic, and
//! never allocate more than their size and the documented limits allow.
//!
//! The mutations are deterministic (xorshift from fixed seeds), so a failure names a seed that
//! reproduces it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crashvisor_klib::elfnote::{NT_PRSTATUS, PRSTATUS_SIZE};
use dumpd::elf::build::{layout, LoadSpec, NoteSpec};
use dumpd::image::open;
use dumpd::kdump::{write_kdump, Compression, KdumpInput, KdumpOptions};
use dumpd::writer::{write_vmcore, MemorySource, SourceError};

/// Mutated files per fixture.
const ITERATIONS: u64 = 700;
/// The largest single allocation any open or read may make for these small files: far below
/// the 64 MiB header limit, above the decompressors' contexts and the bitmaps' block tables.
const MAX_ALLOCATION: usize = 8 << 20;

/// The system allocator, remembering the largest allocation.
struct Measured;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to `System` with the caller's layout and pointer unchanged, so
// `System`'s guarantees hold; the only addition is an atomic counter.
unsafe impl GlobalAlloc for Measured {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Measured = Measured;

/// 128 KiB of memory: zero, text and noise pages.
struct Ram(Vec<u8>);

impl MemorySource for Ram {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        let at = usize::try_from(addr).ok().filter(|&a| a + buf.len() <= self.0.len());
        let at = at.ok_or(SourceError { addr, len: buf.len() as u64, source: None })?;
        buf.copy_from_slice(&self.0[at..at + buf.len()]);
        Ok(())
    }
}

/// xorshift64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn ram() -> Ram {
    let mut rng = Rng(0x1234_5678);
    let mut bytes = vec![0u8; 128 << 10];
    for (n, page) in bytes.chunks_mut(4096).enumerate() {
        match n % 3 {
            1 => page.iter_mut().enumerate().for_each(|(i, b)| *b = (i % 13) as u8),
            2 if n % 2 == 0 => page.iter_mut().for_each(|b| *b = rng.next() as u8),
            _ => {}
        }
    }
    Ram(bytes)
}

/// The fixtures: an ELF vmcore and kdump files in each compression, as bytes.
fn fixtures(dir: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let ram = ram();
    let prstatus = [4u8; PRSTATUS_SIZE];
    let notes = [
        NoteSpec { name: b"CORE", n_type: NT_PRSTATUS, desc: &prstatus },
        NoteSpec { name: b"VMCOREINFO", n_type: 0, desc: b"OSRELEASE=6.1.0\nPAGESIZE=4096\n" },
    ];
    let loads = [
        LoadSpec { vaddr: 0xffff_ffff_8100_0000, paddr: 0x4000, len: 0x4000 },
        LoadSpec { vaddr: 0xffff_8880_0000_0000, paddr: 0, len: 0x1_8000 },
        LoadSpec { vaddr: 0xffff_8880_0001_a000, paddr: 0x1_a000, len: 0x6000 },
    ];
    let core = layout(&notes, &loads).unwrap();
    let path = dir.join("fixture");
    write_vmcore(&File::create(&path).unwrap(), &core.headers, &core.runs, core.file_size, &ram).unwrap();
    let mut out = vec![("elf", std::fs::read(&path).unwrap())];
    for (name, compression, dump_level) in [
        ("kdump-zstd", Compression::Zstd, 1),
        ("kdump-zlib", Compression::Zlib, 0),
        ("kdump-raw", Compression::None, 1),
    ] {
        let input = KdumpInput { notes: &notes, loads: &loads, memory: &ram };
        let options = KdumpOptions {
            compression,
            dump_level,
            excluded: None,
            exclude_only_zero: false,
            timestamp: std::time::UNIX_EPOCH,
            progress: None,
        };
        write_kdump(&File::create(&path).unwrap(), &input, &options).unwrap();
        out.push((name, std::fs::read(&path).unwrap()));
    }
    out
}

/// Interesting values to write over a field.
const WORDS: [u64; 8] = [0, 1, 0xfff, 0x1000, 0x7fff_ffff, 0xffff_ffff, 1 << 40, u64::MAX];

/// One mutation of `bytes`, mostly in the first 20 KiB (headers, notes, bitmaps, descriptors).
fn mutate(bytes: &[u8], rng: &mut Rng) -> (Vec<u8>, String) {
    let mut b = bytes.to_vec();
    let (len, hot) = (b.len() as u64, b.len().min(20 << 10) as u64);
    let at = |rng: &mut Rng| if rng.below(4) == 0 { rng.below(len) } else { rng.below(hot) } as usize;
    match rng.below(4) {
        0 => {
            let len = rng.below(b.len() as u64) as usize;
            b.truncate(len);
            (b, format!("truncated to {len}"))
        }
        1 => {
            let flips = 1 + rng.below(8);
            let mut what = String::from("flipped bits at");
            for _ in 0..flips {
                let i = at(rng);
                b[i] ^= 1 << rng.below(8);
                what += &format!(" {i}");
            }
            (b, what)
        }
        2 => {
            let i = at(rng).min(b.len().saturating_sub(8)) & !3;
            let word = WORDS[rng.below(WORDS.len() as u64) as usize];
            let len = if rng.below(2) == 0 { 4 } else { 8 };
            b[i..i + len].copy_from_slice(&word.to_le_bytes()[..len]);
            (b, format!("{len} bytes at {i} set to {word:#x}"))
        }
        _ => {
            let i = at(rng);
            let len = (1 + rng.below(64) as usize).min(b.len() - i);
            let fill = rng.next() as u8;
            b[i..i + len].fill(fill);
            (b, format!("{len} bytes at {i} set to {fill:#x}"))
        }
    }
}

/// Opens `path` and reads every page below `end`, then a few stray addresses; returns whether
/// it opened and how many pages read.
fn exercise(path: &Path, end: u64, rng: &mut Rng) -> (bool, u64) {
    let Ok(image) = open(path) else { return (false, 0) };
    let mut page = vec![0u8; 4096];
    let mut read = 0;
    for addr in (0..end).step_by(4096) {
        read += u64::from(image.read_phys(addr, &mut page).is_ok());
    }
    let phys_end = image.phys_end();
    for addr in [phys_end.wrapping_sub(4096), phys_end.wrapping_sub(1), phys_end, rng.next(), u64::MAX - 10] {
        let _ = image.read_phys(addr, &mut page);
    }
    let _ = image.read_phys(rng.below(end), &mut vec![0u8; 3 * 4096 + 5]);
    let _ = image.vmcoreinfo();
    (true, read)
}

struct TestDir(PathBuf);

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn hostile_vmcores_are_errors_not_panics() {
    let dir = TestDir(std::env::temp_dir().join(format!("dumpd-fuzz-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let fixtures = fixtures(&dir.0);
    let path = dir.0.join("mutant");
    LARGEST.store(0, Ordering::Relaxed);
    for (name, bytes) in &fixtures {
        std::fs::write(&path, bytes).unwrap();
        let (opened, pages) = exercise(&path, 0x2_0000, &mut Rng(1));
        assert!(opened && pages == 0x1e, "{name}: the unmutated fixture reads ({pages} pages)");
        let (mut opened, mut failed) = (0, 0);
        for seed in 1..=ITERATIONS {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let (mutant, what) = mutate(bytes, &mut rng);
            std::fs::write(&path, &mutant).unwrap();
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| exercise(&path, 0x2_0000, &mut rng)));
            match outcome {
                Ok((true, _)) => opened += 1,
                Ok((false, _)) => failed += 1,
                Err(_) => panic!("{name}, seed {seed}: panicked after {what}"),
            }
        }
        // Both outcomes happen: the mutations reach the checks and the data.
        assert!(opened > 0 && failed > 0, "{name}: {opened} opened, {failed} refused");
    }
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(largest <= MAX_ALLOCATION, "an allocation of {largest} bytes");
}
