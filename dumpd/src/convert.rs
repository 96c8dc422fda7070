//! Converting a vmcore between formats: any [`DumpImage`] plus its memory layout (the
//! `PT_LOAD`s, see [`Vmcore::loads`]) to an ELF vmcore or a kdump-compressed file.
//!
//! ```no_run
//! use dumpd::convert::{convert_file, ConvertOptions};
//! use dumpd::image::DumpFormat;
//! use dumpd::kdump::Compression;
//!
//! let options = ConvertOptions { format: DumpFormat::Kdump(Compression::Zstd), dump_level: 1, progress: None };
//! let stats = convert_file("vmcore".as_ref(), "vmcore.kdump".as_ref(), &options)?;
//! println!("{} bytes", stats.file_bytes);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::cell::Cell;
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::atomic::{AtomicFile, AtomicFileError};
use crashvisor_klib::elfcore::ElfError;

use crate::elf::build::{layout, LoadSpec, NoteSpec};
use crate::image::{open_vmcore, DumpFormat, DumpImage, OpenError, Vmcore};
use crate::kdump::free_pages::FreePages;
use crate::kdump::kernel_info::vmcoreinfo_value;
use crate::kdump::{write_kdump, KdumpInput, KdumpOptions, KdumpWriteError, DL_EXCLUDE_FREE, DL_EXCLUDE_ZERO, DL_MAX};
use crate::writer::{write_vmcore, MemorySource, SourceError, WriteError};

/// How to convert.
#[derive(Clone, Copy)]
pub struct ConvertOptions<'a> {
    /// The output format.
    pub format: DumpFormat,
    /// makedumpfile dump level: 0, or 1 to store zero pages once (an ELF vmcore always leaves
    /// them as holes); into a kdump-compressed file, also up to 31 to leave out the pages the
    /// captured kernel had free (a crashvisor kernel has no page cache or user pages).
    pub dump_level: u32,
    /// Called now and then with (bytes of memory processed, bytes to process).
    pub progress: Option<&'a dyn Fn(u64, u64)>,
}

/// What a conversion did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvertStats {
    /// Bytes of memory in the dump (the `PT_LOAD`s' physical ranges).
    pub memory_bytes: u64,
    /// The output's length.
    pub file_bytes: u64,
    /// How long it took.
    pub duration: Duration,
}

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The input could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// A dump level conversion cannot apply.
    #[error(
        "dump level {level} cannot be applied here: levels above 1 are for kdump-compressed outputs of a \
         crashvisor kernel's vmcore (its VMCOREINFO locates the free pages, and it has no page cache or user \
         pages); use 0 or 1"
    )]
    DumpLevel {
        /// The level asked for.
        level: u32,
    },
    /// The ELF headers could not be laid out.
    #[error("cannot lay out the ELF vmcore")]
    ElfLayout(#[source] ElfError),
    /// Writing the ELF vmcore failed.
    #[error("cannot write the ELF vmcore")]
    Elf(#[source] WriteError),
    /// Writing the kdump file failed.
    #[error("cannot write the kdump file")]
    Kdump(#[source] KdumpWriteError),
    /// The output file could not be created or committed.
    #[error(transparent)]
    Output(#[from] AtomicFileError),
}

/// Converts `image`, whose memory `loads` describe, into `out` (an empty file).
pub fn convert(
    image: &dyn DumpImage,
    loads: &[LoadSpec],
    out: &File,
    options: &ConvertOptions<'_>,
) -> Result<ConvertStats, ConvertError> {
    let level = options.dump_level;
    if level > DL_MAX || (level & !DL_EXCLUDE_ZERO != 0 && options.format == DumpFormat::Elf) {
        return Err(ConvertError::DumpLevel { level });
    }
    let start = Instant::now();
    let notes: Vec<NoteSpec<'_>> =
        image.notes().iter().map(|n| NoteSpec { name: &n.name, n_type: n.n_type, desc: &n.desc }).collect();
    let memory_bytes = loads.iter().map(|l| l.len).fold(0u64, u64::saturating_add);
    let file_bytes = match options.format {
        DumpFormat::Elf => {
            let core = layout(&notes, loads).map_err(ConvertError::ElfLayout)?;
            let total = core.runs.iter().map(|r| r.len).sum();
            let source = ImageSource { image, done: Cell::new(0), total, progress: options.progress };
            write_vmcore(out, &core.headers, &core.runs, core.file_size, &source).map_err(ConvertError::Elf)?;
            core.file_size
        }
        DumpFormat::Kdump(compression) => {
            let source = ImageSource { image, done: Cell::new(0), total: 0, progress: None };
            let free = match level & !DL_EXCLUDE_ZERO {
                0 => None,
                _ => Some(
                    image
                        .vmcoreinfo()
                        .and_then(|text| FreePages::read(text, &source))
                        .ok_or(ConvertError::DumpLevel { level })?,
                ),
            };
            // Bits 2, 4 and 8 (page cache, user pages) leave out nothing of a crashvisor kernel,
            // which has neither; bit 16 its free pages.
            let is_free = |pfn: u64| level & DL_EXCLUDE_FREE != 0 && free.as_ref().is_some_and(|f| f.is_free(pfn));
            let input = KdumpInput { notes: &notes, loads, memory: &source };
            let kdump_options = KdumpOptions {
                compression,
                dump_level: level,
                excluded: free.is_some().then_some(&is_free as &dyn Fn(u64) -> bool),
                exclude_only_zero: false,
                timestamp: crash_time(image.vmcoreinfo()),
                progress: options.progress,
            };
            write_kdump(out, &input, &kdump_options).map_err(ConvertError::Kdump)?.file_bytes
        }
    };
    Ok(ConvertStats { memory_bytes, file_bytes, duration: start.elapsed() })
}

/// Converts the vmcore at `input` (any format) into a new file at `output`, which appears
/// complete or not at all (see [`AtomicFile`]).
pub fn convert_file(input: &Path, output: &Path, options: &ConvertOptions<'_>) -> Result<ConvertStats, ConvertError> {
    if options.dump_level > DL_MAX {
        return Err(ConvertError::DumpLevel { level: options.dump_level });
    }
    let vmcore: Vmcore = open_vmcore(input)?;
    let loads = vmcore.loads();
    let out = AtomicFile::create(output)?;
    let stats = convert(vmcore.image(), &loads, out.file(), options)?;
    out.commit()?;
    Ok(stats)
}

/// When the dump was taken, for the kdump header: VMCOREINFO's `CRASHTIME=` if present (the
/// crash), else now (the conversion).
fn crash_time(vmcoreinfo: Option<&str>) -> SystemTime {
    vmcoreinfo
        .and_then(|v| vmcoreinfo_value(v, "CRASHTIME"))
        .and_then(|t| t.trim().parse::<u64>().ok())
        .map_or_else(SystemTime::now, |secs| UNIX_EPOCH + Duration::from_secs(secs))
}

/// A dump image as the writers' memory source, counting bytes for progress.
struct ImageSource<'a> {
    image: &'a dyn DumpImage,
    done: Cell<u64>,
    total: u64,
    progress: Option<&'a dyn Fn(u64, u64)>,
}

impl MemorySource for ImageSource<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        self.image.read_phys(addr, buf).map_err(|e| SourceError {
            addr,
            len: buf.len() as u64,
            source: Some(Box::new(e)),
        })?;
        self.done.set(self.done.get() + buf.len() as u64);
        if let Some(progress) = self.progress {
            progress(self.done.get(), self.total);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::build::layout;
    use crate::image::open;
    use crate::kdump::{Compression, KdumpImage};
    use crate::test_dir::TestDir;
    use crate::writer::tests::Buffer;
    use crashvisor_klib::elfnote::{NT_PRSTATUS, PRSTATUS_SIZE};

    /// 4 MiB at 0: zero pages, text, noise; kernel text mapped twice, a hole at 3 MiB.
    fn elf_vmcore(dir: &TestDir) -> (std::path::PathBuf, Buffer) {
        let mut bytes = vec![0u8; 4 << 20];
        let mut x = 88172645463325252u64;
        for (n, page) in bytes.chunks_mut(4096).enumerate() {
            match n % 3 {
                0 if n % 7 == 0 => page.iter_mut().for_each(|b| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }),
                1 => page[..100].copy_from_slice(&[n as u8; 100]),
                _ => {}
            }
        }
        let memory = Buffer::new(0, bytes);
        let prstatus = [9u8; PRSTATUS_SIZE];
        let notes = [
            NoteSpec { name: b"CORE", n_type: NT_PRSTATUS, desc: &prstatus },
            NoteSpec { name: b"VMCOREINFO", n_type: 0, desc: b"OSRELEASE=6.1.0\nCRASHTIME=1700000000\n" },
        ];
        let loads = [
            LoadSpec { vaddr: 0xffff_ffff_8100_0000, paddr: 0x10_0000, len: 0x10_0000 },
            LoadSpec { vaddr: 0xffff_8880_0000_0000, paddr: 0, len: 0x30_0000 },
            LoadSpec { vaddr: 0xffff_8880_0038_0000, paddr: 0x38_0000, len: 0x8_0000 },
        ];
        let core = layout(&notes, &loads).unwrap();
        let path = dir.path().join("vmcore");
        write_vmcore(&File::create(&path).unwrap(), &core.headers, &core.runs, core.file_size, &memory).unwrap();
        (path, memory)
    }

    /// Every page of `a` and `b` up to the larger end reads the same (or is missing in both).
    fn assert_same_memory(a: &dyn DumpImage, b: &dyn DumpImage) {
        let (mut pa, mut pb) = (vec![0u8; 4096], vec![0u8; 4096]);
        let end = a.phys_end().max(b.phys_end());
        let mut pages = 0;
        for addr in (0..end).step_by(4096) {
            match (a.read_phys(addr, &mut pa), b.read_phys(addr, &mut pb)) {
                (Ok(()), Ok(())) => assert!(pa == pb, "page {addr:#x} differs"),
                (Err(_), Err(_)) => {}
                (ra, rb) => panic!("page {addr:#x}: {ra:?} vs {rb:?}"),
            }
            pages += 1;
        }
        assert!(pages > 500);
    }

    fn options(format: DumpFormat, dump_level: u32) -> ConvertOptions<'static> {
        ConvertOptions { format, dump_level, progress: None }
    }

    #[test]
    fn elf_to_kdump_to_elf_keeps_pages_and_notes() {
        let dir = TestDir::new("convert-round-trip");
        let (elf, memory) = elf_vmcore(&dir);
        let original = open(&elf).unwrap();
        for compression in [Compression::Zstd, Compression::Zlib] {
            for level in [0, 1] {
                let kdump = dir.path().join(format!("k-{compression:?}-{level}"));
                let back = dir.path().join(format!("e-{compression:?}-{level}"));
                convert_file(&elf, &kdump, &options(DumpFormat::Kdump(compression), level)).unwrap();
                convert_file(&kdump, &back, &options(DumpFormat::Elf, 0)).unwrap();
                let k = open_vmcore(&kdump).unwrap();
                assert!(matches!(k, Vmcore::Kdump(_)));
                let e = open_vmcore(&back).unwrap();
                assert!(matches!(e, Vmcore::Elf(_)));
                for image in [k.image(), e.image()] {
                    assert_eq!(image.notes(), original.notes());
                    assert_same_memory(original.as_ref(), image);
                }
                // The hole stays a hole; the zero pages read as zeros.
                let mut page = [1u8; 4096];
                assert!(e.image().read_phys(0x30_0000, &mut page).is_err());
                e.image().read_phys(0x2000, &mut page).unwrap();
                assert!(page.iter().all(|&b| b == 0) && memory.bytes[0x2000..0x3000].iter().all(|&b| b == 0));
                if let Vmcore::Kdump(k) = &k {
                    // Zero pages are in the dump at both levels, as makedumpfile keeps them.
                    assert_eq!(k.pages_dumped(), k.pages_present(), "level {level}");
                    assert_eq!(k.header().timestamp_sec, 1_700_000_000, "CRASHTIME");
                }
            }
        }
    }

    #[test]
    fn compresses_and_reports_progress() {
        let dir = TestDir::new("convert-progress");
        let (elf, _) = elf_vmcore(&dir);
        let last = Cell::new((0, 0));
        let record = |done, total| last.set((done, total));
        let opts =
            ConvertOptions { format: DumpFormat::Kdump(Compression::Zstd), dump_level: 1, progress: Some(&record) };
        let stats = convert_file(&elf, &dir.path().join("k"), &opts).unwrap();
        assert!(stats.file_bytes < 1 << 20, "{stats:?}");
        assert_eq!(last.get().0, last.get().1);
        let opts = ConvertOptions { format: DumpFormat::Elf, ..opts };
        convert_file(&elf, &dir.path().join("e"), &opts).unwrap();
        assert_eq!(last.get(), (0x48_0000, 0x48_0000), "ELF: every run's bytes, text twice");
    }

    #[test]
    fn levels_leave_out_the_free_pages_vmcoreinfo_locates_and_nothing_else() {
        let dir = TestDir::new("convert-levels");
        // 1 MiB, every page non-zero; the frame bitmap at 0x1000 marks frames 16 to 47 free.
        let mut bytes = vec![0x5au8; 1 << 20];
        bytes[0x1000..0x1000 + 32].fill(0xff);
        bytes[0x1002..0x1006].fill(0);
        let memory = Buffer::new(0, bytes);
        let info = b"OSRELEASE=6.18.0\nNUMBER(crashvisor_frame_bitmap)=4096\nNUMBER(crashvisor_nr_frames)=256\n";
        let notes = [NoteSpec { name: b"VMCOREINFO", n_type: 0, desc: info }];
        let loads = [LoadSpec { vaddr: 0xffff_8880_0000_0000, paddr: 0, len: 1 << 20 }];
        let core = layout(&notes, &loads).unwrap();
        let elf = dir.path().join("vmcore");
        write_vmcore(&File::create(&elf).unwrap(), &core.headers, &core.runs, core.file_size, &memory).unwrap();
        for (level, excluded) in [(15, vec![]), (16, (16..48).collect::<Vec<u64>>()), (31, (16..48).collect())] {
            let out = dir.path().join(format!("d{level}"));
            convert_file(&elf, &out, &options(DumpFormat::Kdump(Compression::Zstd), level)).unwrap();
            let kdump = KdumpImage::open(File::open(&out).unwrap()).unwrap();
            assert_eq!(kdump.sub_header().dump_level, level);
            assert_eq!(kdump.excluded_pfns().collect::<Vec<_>>(), excluded, "level {level}");
        }
    }

    #[test]
    fn failures_leave_no_output() {
        let dir = TestDir::new("convert-fail");
        let (elf, _) = elf_vmcore(&dir);
        let out = dir.path().join("out");
        let e = convert_file(&elf, &out, &options(DumpFormat::Kdump(Compression::Zstd), 17)).unwrap_err();
        assert!(matches!(e, ConvertError::DumpLevel { level: 17 }));
        // Truncate the input's memory: the conversion fails reading it.
        let len = std::fs::metadata(&elf).unwrap().len();
        let shortened = dir.path().join("short");
        std::fs::copy(&elf, &shortened).unwrap();
        let vmcore = open_vmcore(&shortened).unwrap();
        std::fs::OpenOptions::new().write(true).open(&shortened).unwrap().set_len(len / 2).unwrap();
        let atomic = AtomicFile::create(&out).unwrap();
        let e = convert(vmcore.image(), &vmcore.loads(), atomic.file(), &options(DumpFormat::Elf, 0)).unwrap_err();
        assert!(matches!(e, ConvertError::Elf(WriteError::Source { .. })), "{e:?}");
        drop(atomic);
        assert!(!out.exists());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(matches!(
            convert_file(&dir.path().join("missing"), &out, &options(DumpFormat::Elf, 0)),
            Err(ConvertError::Open(_))
        ));
    }
}
