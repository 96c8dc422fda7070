//! Debian's unmodified makedumpfile on crashvisor's vmcores: it reads the guest's `struct page`
//! array, `mem_section` and page tables through VMCOREINFO as it reads Linux's.
//!
//! - `--dump-dmesg` gives the crashed kernel's log from the capture kernel's ELF vmcores, a
//!   host-side ELF vmcore, a host-side kdump-zlib file and `dumpd convert`'s kdump-zlib and
//!   kdump-zstd files;
//! - each dump level leaves out the pages the capture kernel leaves out, on the same memory:
//!   level 16 the free frames (the capture kernel's own range builder run on the level-0
//!   vmcore gives the page set makedumpfile's is compared with), level 1 the zero pages (the
//!   host's holes), levels 2, 4 and 8 nothing; and on the level-31 vmcore the capture kernel's
//!   count, its holes (every free page is one) and pages planted in free memory (kept at level
//!   0, left out at 31) agree;
//! - its `-c`, `-l`, `-z`, `-E` and `-F` outputs (flattened, read directly and through `-R`),
//!   `--split` parts (reassembled) and `--mem-usage` work, and `dumpd` reads the outputs.
//!
//! One VM crashes twice (dump level 0, then 31) and each vmcore is read by many commands.

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crashvisor_klib::elfcore::{CoreHeader, CoreHeaderBuilder};
use crashvisor_klib::vmcore::{DumpRangeBuilder, VmcoreLayout};
use crashvisor_tests::kdump::{self, Crash};
use crashvisor_tests::{dumpd_binary, TempDir, Vm};
use dumpd::image::{open_vmcore, DumpImage, Vmcore};
use dumpd::kdump::free_pages::FreePages;
use dumpd::kdump::KdumpImage;
use serde_json::json;

/// The panic both crashes end in, as the crashed kernel logs it.
const PANIC_LINE: &str = "Kernel panic - not syncing: crashvisor injected panic";
/// Pages planted with a pattern in free memory before each crash.
const PLANTED_PAGES: u64 = 16;
/// Upper bound for a host-side dump.
const DUMP_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs Debian's makedumpfile.
fn makedumpfile(args: &[&str]) -> Output {
    let tool = kdump::require_tool("makedumpfile");
    Command::new(&tool).args(args).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()))
}

/// Runs makedumpfile and fails the test unless it succeeds; returns its combined output.
#[track_caller]
fn makedumpfile_ok(args: &[&str]) -> String {
    let output = makedumpfile(args);
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "`makedumpfile {}` failed ({}):\n{text}", args.join(" "), output.status);
    text
}

/// Whether this makedumpfile was built with zstd (Debian 12's is not).
fn makedumpfile_has_zstd() -> bool {
    let version = makedumpfile(&["-v"]);
    String::from_utf8_lossy(&version.stdout).lines().any(|l| l.split_whitespace().eq(["zstd", "enabled"]))
}

/// `makedumpfile --dump-dmesg` of `vmcore`, which must hold the crashed kernel's panic line.
#[track_caller]
fn dump_dmesg(vmcore: &Path, dir: &TempDir, name: &str) -> String {
    let out = dir.path().join(name);
    makedumpfile_ok(&["--dump-dmesg", arg(vmcore), arg(&out)]);
    let log = std::fs::read_to_string(&out).expect("makedumpfile wrote the log");
    assert!(log.lines().any(|l| l.contains(PANIC_LINE)), "no panic line in the log from {}:\n{log}", vmcore.display());
    log
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// `dumpd CMD FILE [--kernel ELF]`'s stdout; fails the test unless it succeeds.
#[track_caller]
fn dumpd(args: &[&str]) -> String {
    let output = Command::new(dumpd_binary()).args(args).output().expect("dumpd runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "dumpd {args:?}: {}{stdout}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// `dumpd show`, `bt`, `log` and `ps` of a makedumpfile output name the panic, its backtrace,
/// the panic line and the shell.
#[track_caller]
fn check_dumpd_reads(file: &Path, kernel: &Path) {
    let show = dumpd(&["show", arg(file), "--kernel", arg(kernel)]);
    assert!(show.contains("PANIC: \"crashvisor injected panic\""), "{}:\n{show}", file.display());
    let bt = dumpd(&["bt", arg(file), "--kernel", arg(kernel)]);
    assert!(bt.contains("guest_kernel::panic::panic"), "{}:\n{bt}", file.display());
    let log = dumpd(&["log", arg(file)]);
    assert!(log.contains(PANIC_LINE), "{}:\n{log}", file.display());
    let ps = dumpd(&["ps", arg(file)]);
    assert!(ps.lines().any(|l| l.ends_with(" sh")), "{}:\n{ps}", file.display());
}

/// The pfns of RAM a vmcore holds at direct-map addresses (the kernel text and the task stacks
/// are the same frames again).
fn ram_pfns(vmcore: &Vmcore) -> BTreeSet<u64> {
    vmcore
        .loads()
        .iter()
        .filter(|l| (0xffff_8880_0000_0000..0xffff_c880_0000_0000).contains(&l.vaddr))
        .flat_map(|l| l.paddr / 4096..(l.paddr + l.len) / 4096)
        .collect()
}

/// The frames the crashed kernel's frame allocator had free, within the vmcore's RAM: the pages
/// the capture kernel leaves out at dump level 16.
fn free_pfns(vmcore: &Vmcore) -> BTreeSet<u64> {
    let text = vmcore.image().vmcoreinfo().expect("VMCOREINFO").to_string();
    let source = ImageMemory(vmcore.image());
    let free = FreePages::read(&text, &source).expect("VMCOREINFO locates the frame bitmap");
    ram_pfns(vmcore).into_iter().filter(|&pfn| free.is_free(pfn)).collect()
}

struct ImageMemory<'a>(&'a (dyn DumpImage + Send + Sync));

impl dumpd::writer::MemorySource for ImageMemory<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), dumpd::writer::SourceError> {
        self.0.read_phys(addr, buf).map_err(|e| dumpd::writer::SourceError {
            addr,
            len: buf.len() as u64,
            source: Some(Box::new(e)),
        })
    }
}

/// The pfns of RAM the capture kernel leaves out of `vmcore` at dump level 16: its own range
/// builder (klib's `DumpRangeBuilder`, run as `kexec::capture` runs it) on the crashed kernel's
/// frame bitmap, for the PT_LOADs of `vmcore`'s elfcorehdr.
fn capture_kernel_left_out(vmcore: &Vmcore) -> BTreeSet<u64> {
    let image = vmcore.image();
    let info = image.vmcoreinfo().expect("VMCOREINFO").to_string();
    let number = |key: &str| -> u64 {
        let value = info.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='));
        value.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {key} in VMCOREINFO"))
    };
    let nr_frames = number("NUMBER(crashvisor_nr_frames)");
    let mut bitmap = vec![0u8; nr_frames.div_ceil(64) as usize * 8];
    image.read_phys(number("NUMBER(crashvisor_frame_bitmap)"), &mut bitmap).expect("the frame bitmap is in the vmcore");
    let words: Vec<u64> = bitmap.chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes"))).collect();

    // The elfcorehdr the crashed kernel built: a note, then the PT_LOADs (p_offset = p_paddr).
    let loads = vmcore.loads();
    let mut elfcorehdr = vec![0u8; 64 + 56 * (loads.len() + 1)];
    let mut builder = CoreHeaderBuilder::new(&mut elfcorehdr).expect("room for the ELF header");
    builder.note(0, 4096).expect("room for the note");
    for load in &loads {
        builder.load(load.vaddr, load.paddr, load.len).expect("room for the PT_LOADs");
    }
    let header = CoreHeader::parse(&elfcorehdr).expect("a valid elfcorehdr");
    let layout = VmcoreLayout::new(header, 4096).expect("the vmcore lays out");
    let mut kept = BTreeSet::new();
    DumpRangeBuilder::new(&layout).exclude_free_pages(&words, nr_frames).for_each(|range| {
        kept.extend(range.gpa / 4096..(range.gpa + range.len).div_ceil(4096));
    });
    ram_pfns(vmcore).into_iter().filter(|pfn| !kept.contains(pfn)).collect()
}

/// The pfns of RAM whose page in `vmcore` is all zero.
fn zero_pfns(vmcore: &Vmcore) -> BTreeSet<u64> {
    ram_pfns(vmcore).into_iter().filter(|&pfn| page(vmcore, pfn).iter().all(|&b| b == 0)).collect()
}

/// The direct map's `PT_LOAD`s of the ELF vmcore at `path` as pfn ranges with their file
/// offsets, and the open file.
fn ram_loads(path: &Path) -> (std::fs::File, Vec<(std::ops::Range<u64>, u64)>) {
    let file = std::fs::File::open(path).expect("the vmcore opens");
    let len = file.metadata().expect("metadata").len();
    let headers = dumpd::elf::image::read_headers(&file, len).expect("ELF headers");
    let core = dumpd::elf::Core::parse(&headers).expect("an ELF vmcore");
    let loads = core
        .loads()
        .filter(|l| (0xffff_8880_0000_0000..0xffff_c880_0000_0000).contains(&l.p_vaddr))
        .map(|l| (l.p_paddr / 4096..(l.p_paddr + l.p_filesz) / 4096, l.p_offset))
        .collect();
    (file, loads)
}

/// The pfns of RAM whose page is a hole in the ELF vmcore at `path` (`SEEK_DATA` skips it).
fn hole_pfns(path: &Path) -> BTreeSet<u64> {
    let (file, loads) = ram_loads(path);
    let is_data = |offset: u64| {
        // SAFETY: lseek on a descriptor this function owns; no memory is passed.
        let found = unsafe { libc::lseek(file.as_raw_fd(), offset as i64, libc::SEEK_DATA) };
        found == offset as i64
    };
    let mut holes = BTreeSet::new();
    for (pfns, offset) in loads {
        holes.extend(pfns.clone().filter(|pfn| !is_data(offset + (pfn - pfns.start) * 4096)));
    }
    holes
}

/// The zero pages the writer leaves as holes in the ELF vmcore at `path`: those of runs of zero
/// pages at either end of a `PT_LOAD` or of `HOLE_MIN` bytes and more (it writes shorter gaps
/// between data with the data).
fn zero_runs_left_as_holes(path: &Path, zero: &BTreeSet<u64>) -> BTreeSet<u64> {
    let min_pages = dumpd::writer::HOLE_MIN / 4096;
    let mut holes = BTreeSet::new();
    for (pfns, _) in ram_loads(path).1 {
        let mut pfn = pfns.start;
        while pfn < pfns.end {
            let run_end = (pfn..pfns.end).find(|p| !zero.contains(p)).unwrap_or(pfns.end);
            let at_an_end = pfn == pfns.start || run_end == pfns.end;
            if run_end > pfn && (at_an_end || run_end - pfn >= min_pages) {
                holes.extend(pfn..run_end);
            }
            pfn = run_end.max(pfn + 1);
        }
    }
    holes
}

/// What makedumpfile's report (`--message-level 31`) says it left out, in pages (it prints
/// them in hexadecimal).
#[derive(Debug)]
struct ExclusionReport {
    /// `Pages filled with zero`.
    zero: u64,
    /// `Non-private cache pages` and `Private cache pages`.
    cache: u64,
    /// `User process data pages`.
    user: u64,
    /// `Free pages`.
    free: u64,
}

impl ExclusionReport {
    fn parse(report: &str) -> Self {
        let count = |label: &str| -> u64 {
            let line = report.lines().find(|l| l.trim_start().starts_with(label));
            let line = line.unwrap_or_else(|| panic!("no {label:?} in makedumpfile's report:\n{report}"));
            let value = line.rsplit(':').next().and_then(|v| v.trim().strip_prefix("0x"));
            value.and_then(|v| u64::from_str_radix(v, 16).ok()).unwrap_or_else(|| panic!("{line:?}"))
        };
        Self {
            zero: count("Pages filled with zero"),
            cache: count("Non-private cache pages") + count("Private cache pages"),
            user: count("User process data pages"),
            free: count("Free pages"),
        }
    }
}

/// The pfns a kdump-compressed file leaves out.
fn excluded_pfns(path: &Path) -> BTreeSet<u64> {
    let file = std::fs::File::open(path).expect("the kdump file opens");
    KdumpImage::open(file).unwrap_or_else(|e| panic!("{}: {e}", path.display())).excluded_pfns().collect()
}

/// A 2-vCPU 256 MiB guest booted with kdump loaded at dump level 0 (everything handed over),
/// crashes going to `store`, started with `extra` VMM arguments too.
fn kdump_vm(store: &TempDir, extra: &[&str]) -> Vm {
    let mut args = vec!["--vcpus", "2", "--memory", "256", "--nmi-watchdog", "off", "--crash-dir", store.arg()];
    args.extend(["--cmdline", "crashkernel=64M kdump=1 kdump_level=0"]);
    args.extend(extra);
    let mut vm = Vm::start_controlled(&args);
    // The capture kernel is loaded before or after the shell's first prompt.
    let boot_log = vm.boot();
    if !boot_log.iter().any(|l| l.ends_with(kdump::KDUMP_LOADED)) {
        vm.expect_kdump_loaded();
    }
    assert_eq!(vm.wait_booted(), 1);
    vm
}

/// Writes a pattern into `PLANTED_PAGES` pages of free memory 1 MiB below the crash kernel's
/// reservation (the frame allocator hands out low memory first); returns their first pfn.
fn plant_free_pages(vm: &mut Vm, crash_start: u64) -> u64 {
    let gpa = crash_start - (1 << 20);
    let page: String =
        (0..4096u32).map(|i| format!("{:02x}", (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 1)).collect();
    for n in 0..PLANTED_PAGES {
        vm.request_ok(json!({"cmd": "write_memory", "gpa": gpa + n * 4096, "data_hex": page}));
    }
    gpa / 4096
}

/// The `Crash kernel` line's range in the guest's `/proc/iomem`.
fn crash_kernel_start(iomem: &[String]) -> u64 {
    let line = iomem.iter().find(|l| l.ends_with(" : Crash kernel"));
    let line = line.unwrap_or_else(|| panic!("no Crash kernel in /proc/iomem:\n{}", iomem.join("\n")));
    let start = line.trim_start().split('-').next().expect("a range");
    u64::from_str_radix(start, 16).expect("a hexadecimal start")
}

/// Reads the first page of `pfn` from `vmcore`.
fn page(vmcore: &Vmcore, pfn: u64) -> Vec<u8> {
    let mut page = vec![0u8; 4096];
    vmcore.image().read_phys(pfn * 4096, &mut page).expect("the page is in the vmcore");
    page
}

/// `makedumpfile --mem-usage` reads the running system's `/proc/iomem` for the crash kernel
/// (it is meant for `/proc/kcore`): run it in a mount namespace whose `/proc/iomem` is the
/// crashed guest's. Returns its FREE count.
fn mem_usage_free_pages(vmcore: &Path, iomem: &[String], dir: &TempDir) -> u64 {
    let fake = dir.path().join("iomem");
    std::fs::write(&fake, iomem.join("\n") + "\n").expect("write the guest's iomem");
    let tool = kdump::require_tool("makedumpfile");
    let script =
        format!("mount --bind {} /proc/iomem && exec {} --mem-usage {}", arg(&fake), tool.display(), arg(vmcore));
    let output = Command::new("unshare").args(["--mount", "sh", "-c", &script]).output().expect("unshare runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "makedumpfile --mem-usage in a mount namespace:\n{text}");
    let free = text.lines().find(|l| l.starts_with("FREE")).unwrap_or_else(|| panic!("no FREE line:\n{text}"));
    free.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{free}"))
}

#[test]
fn makedumpfile_reads_and_filters_kdump_vmcores_like_the_capture_kernel() {
    let store = TempDir::new("crash-store");
    let work = TempDir::new("makedumpfile");
    let kernel = kdump::extract_guest_kernel();
    let mut vm = kdump_vm(&store, &[]);
    let iomem = vm.run("cat /proc/iomem");
    let crash_start = crash_kernel_start(&iomem);

    // Crash 1, dump level 0: everything is in the vmcore.
    let planted = plant_free_pages(&mut vm, crash_start);
    vm.inject("panic", 1, None);
    let level0 = vm.expect_vmcore(kdump::CAPTURE_TIMEOUT);
    assert_eq!(level0.meta["dump_level"], 0, "{}", level0.meta);

    // Crash 2, dump level 31.
    vm.expect_reboot_after_dump(2);
    vm.expect_kdump_loaded();
    vm.request_ok(json!({"cmd": "kdump", "op": "stop"}));
    vm.request_ok(json!({"cmd": "kdump", "op": "config", "dump_level": 31}));
    vm.request_ok(json!({"cmd": "kdump", "op": "start"}));
    assert_eq!(plant_free_pages(&mut vm, crash_start), planted);
    vm.inject("panic", 1, None);
    let level31 = vm.expect_vmcore(kdump::CAPTURE_TIMEOUT);
    assert_eq!(level31.meta["dump_level"], 31, "{}", level31.meta);
    drop(vm);

    check_level0(&level0, planted, &iomem, &work, kernel.path());
    check_level31(&level31, planted, &work);
}

fn check_level0(crash: &Crash, planted: u64, iomem: &[String], work: &TempDir, kernel: &Path) {
    let path = crash.vmcore();
    assert_eq!(dump_dmesg(&path, work, "dmesg-0"), crash.vmcore_dmesg(), "makedumpfile and the capture kernel agree");
    let vmcore = open_vmcore(&path).expect("the vmcore opens");
    let free = free_pfns(&vmcore);
    assert!(free.len() > 30_000, "an idle 256 MiB guest has most pages free: {}", free.len());
    assert!((planted..planted + PLANTED_PAGES).all(|p| free.contains(&p) && page(&vmcore, p) != [0; 4096]));

    // Each dump level leaves out the same pages in the capture kernel (and the host, which
    // leaves zero pages out of its files as holes) and in makedumpfile, on the same memory.
    let capture_free = capture_kernel_left_out(&vmcore);
    assert_eq!(capture_free, free, "the capture kernel's level 16 leaves out the free frames");
    let level = |d: &str| {
        let out = work.path().join(format!("d{d}"));
        let report = makedumpfile_ok(&["--message-level", "31", "-d", d, "-c", arg(&path), arg(&out)]);
        (excluded_pfns(&out), ExclusionReport::parse(&report))
    };
    let zero = zero_pfns(&vmcore);
    let holes = hole_pfns(&path);
    assert_eq!(holes, zero_runs_left_as_holes(&path, &zero), "the host leaves zero runs of the ELF vmcore as holes");
    assert!(holes.len() > 30_000, "most of an idle guest's RAM is holes: {}", holes.len());
    let (excluded, report) = level("1");
    assert!(excluded.is_empty(), "zero pages are kept behind one shared page");
    assert_eq!(report.zero, zero.len() as u64, "level 1: the zero pages:\n{report:?}");
    let (excluded, report) = level("14");
    assert_eq!((excluded.len(), report.cache + report.user), (0, 0), "levels 2, 4, 8: no page cache, no user pages");
    let (excluded, report) = level("17");
    assert_eq!(excluded, capture_free, "level 16: the free pages the capture kernel leaves out");
    assert_eq!(report.free, capture_free.len() as u64);
    assert_eq!(report.zero, zero.difference(&capture_free).count() as u64, "level 1 counts the zero pages left");

    // -d 31: the free pages and the zero pages are left out, nothing else.
    let compressed = work.path().join("d31.c");
    makedumpfile_ok(&["-d", "31", "-c", arg(&path), arg(&compressed)]);
    let excluded = excluded_pfns(&compressed);
    assert_eq!(excluded, free, "makedumpfile -d 31 leaves out exactly the free pages");
    let ram = ram_pfns(&vmcore).len() as u64;
    let size = std::fs::metadata(&compressed).expect("the output exists").len();
    assert!(size < (ram - excluded.len() as u64) * 4096 / 4, "{size} bytes for {ram} pages");
    check_dumpd_reads(&compressed, kernel);

    // The other compressions and formats read back the same pages.
    let lzo = work.path().join("d31.l");
    makedumpfile_ok(&["-d", "31", "-l", arg(&path), arg(&lzo)]);
    let zstd = work.path().join("d31.z");
    makedumpfile_ok(&["-d", "31", "-z", arg(&path), arg(&zstd)]);
    let elf = work.path().join("d31.e");
    makedumpfile_ok(&["-d", "31", "-E", arg(&path), arg(&elf)]);
    let reference = open_vmcore(&compressed).expect("opens");
    let kept: Vec<u64> = ram_pfns(&vmcore).into_iter().filter(|p| !free.contains(p)).step_by(97).collect();
    for file in [&lzo, &zstd, &elf] {
        check_dumpd_reads(file, kernel);
        let other = open_vmcore(file).expect("opens");
        for &pfn in &kept {
            assert_eq!(page(&other, pfn), page(&reference, pfn), "{} pfn {pfn:#x}", file.display());
        }
    }
    assert_eq!(excluded_pfns(&lzo), free);
    assert_eq!(excluded_pfns(&zstd), free);

    // -F into a pipe, rebuilt with -R: the same file; dumpd also reads the flattened one.
    let flattened = work.path().join("d31.f");
    let output = Command::new(kdump::require_tool("makedumpfile"))
        .args(["-F", "-d", "31", "-c", arg(&path)])
        .output()
        .expect("makedumpfile -F runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    std::fs::write(&flattened, &output.stdout).expect("write the flattened dump");
    let rebuilt = work.path().join("d31.r");
    let status = Command::new(kdump::require_tool("makedumpfile"))
        .args(["-R", arg(&rebuilt)])
        .stdin(std::fs::File::open(&flattened).expect("open"))
        .output()
        .expect("makedumpfile -R runs");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(std::fs::read(&rebuilt).unwrap() == std::fs::read(&compressed).unwrap(), "-F | -R gives the same file");
    check_dumpd_reads(&flattened, kernel);

    // --split into two files, reassembled: the same file again.
    let (part1, part2, whole) = (work.path().join("s1"), work.path().join("s2"), work.path().join("s"));
    makedumpfile_ok(&["--split", "-d", "31", "-c", arg(&path), arg(&part1), arg(&part2)]);
    makedumpfile_ok(&["--reassemble", arg(&part1), arg(&part2), arg(&whole)]);
    assert!(std::fs::read(&whole).unwrap() == std::fs::read(&compressed).unwrap(), "--split parts reassemble");

    assert_eq!(mem_usage_free_pages(&path, iomem, work), free.len() as u64, "--mem-usage counts the free pages");
}

fn check_level31(crash: &Crash, planted: u64, work: &TempDir) {
    let path = crash.vmcore();
    assert_eq!(dump_dmesg(&path, work, "dmesg-31"), crash.vmcore_dmesg());
    let vmcore = open_vmcore(&path).expect("the vmcore opens");
    let free = free_pfns(&vmcore);
    // The capture kernel left the free pages out: the planted ones read as zeros now.
    assert!((planted..planted + PLANTED_PAGES).all(|p| free.contains(&p) && page(&vmcore, p) == [0; 4096]));
    let said = crash
        .kexec_dmesg()
        .lines()
        .find_map(|l| l.split("kdump: dump level 31 leaves out ").nth(1)?.strip_suffix(" free pages")?.parse().ok());
    assert_eq!(said, Some(free.len() as u64), "the capture kernel's count:\n{}", crash.kexec_dmesg());
    let holes = hole_pfns(&path);
    let handed_over: Vec<u64> = free.difference(&holes).copied().collect();
    assert!(handed_over.is_empty(), "free pages the capture kernel handed over at level 31: {handed_over:x?}");
    // makedumpfile, reading the struct pages the vmcore kept, leaves out the same pages.
    let compressed = work.path().join("again.c");
    makedumpfile_ok(&["-d", "31", "-c", arg(&path), arg(&compressed)]);
    assert_eq!(excluded_pfns(&compressed), free);
}

/// A guest that panics without a capture kernel: the VMM's host-side vmcore (ELF or
/// kdump-zlib, as `--dump-format` says) and `dumpd convert`'s kdump files of it.
fn host_side_dump(format: &str, store: &TempDir) -> PathBuf {
    let mut vm = Vm::start_controlled(&[
        "--vcpus",
        "2",
        "--memory",
        "256",
        "--crash-dir",
        store.arg(),
        "--on-panic",
        "dump-and-poweroff",
        "--dump-format",
        format,
    ]);
    assert_eq!(vm.wait_booted(), 1);
    vm.inject("panic", 1, None);
    let ready = vm.wait_event(|e| e.is("vmcore_ready") || e.is("dump_failed"), "vmcore_ready", DUMP_TIMEOUT);
    assert!(ready.is("vmcore_ready"), "{}", ready.body);
    PathBuf::from(ready.str("path").expect("a path")).join("vmcore")
}

#[test]
fn makedumpfile_reads_host_side_and_converted_vmcores() {
    let (elf_store, zlib_store, work) =
        (TempDir::new("host-elf"), TempDir::new("host-zlib"), TempDir::new("host-makedumpfile"));
    let elf = host_side_dump("elf", &elf_store);
    let log = dump_dmesg(&elf, &work, "dmesg-elf");
    let zlib = host_side_dump("kdump-zlib", &zlib_store);
    dump_dmesg(&zlib, &work, "dmesg-zlib");
    let host = open_vmcore(&zlib).expect("opens");
    let Vmcore::Kdump(kdump) = &host else { panic!("a kdump-compressed host-side vmcore") };
    assert_eq!(kdump.sub_header().dump_level, 17, "host-side kdump files leave out free pages that are zero");
    let left_out = excluded_pfns(&zlib);
    let free = free_pfns(&host);
    assert!(left_out.is_subset(&free) && left_out.len() > free.len() / 2, "{} of {} free", left_out.len(), free.len());

    // dumpd convert's kdump files of the ELF one, at the default level (zero pages kept behind
    // one shared page, as makedumpfile keeps them).
    for format in ["kdump-zlib", "kdump-zstd"] {
        let out = work.path().join(format);
        dumpd(&["convert", arg(&elf), arg(&out), "--format", format]);
        if format == "kdump-zlib" || makedumpfile_has_zstd() {
            assert_eq!(dump_dmesg(&out, &work, &format!("dmesg-{format}")), log);
        } else {
            // Debian 12's makedumpfile is built without zstd: it reads our headers and
            // VMCOREINFO, then cannot decompress a page.
            let dmesg = work.path().join("dmesg-zstd");
            let failed = makedumpfile(&["--message-level", "31", "--dump-dmesg", arg(&out), arg(&dmesg)]);
            let (stdout, stderr) = (String::from_utf8_lossy(&failed.stdout), String::from_utf8_lossy(&failed.stderr));
            assert!(!failed.status.success() && stderr.contains("zstd compression unsupported"), "{stderr}");
            assert!(stdout.contains("OSRELEASE=6.18.0-crashvisor"), "VMCOREINFO was read:\n{stdout}");
        }
    }
}

/// A VM whose capture kernel hands over all of memory (dump level 0) and whose host writes the
/// vmcore with `collector` (`vmm --core-collector`); it panics once. Returns the crash and the
/// last `dump_progress` event's bytes done and in all.
fn crash_with_collector(collector: &str, store: &TempDir) -> (Crash, Option<(u64, u64)>) {
    let mut vm = kdump_vm(store, &["--core-collector", collector]);
    vm.inject("panic", 1, None);
    let crash = vm.expect_vmcore(kdump::CAPTURE_TIMEOUT);
    let history = vm.control().history();
    let progress = history.iter().rev().find(|e| e.is("dump_progress")).map(|e| (e.u64("done"), e.u64("total")));
    (crash, progress.and_then(|(done, total)| done.zip(total)))
}

#[test]
fn makedumpfile_as_the_hosts_core_collector_and_a_failing_one() {
    kdump::require_fuse();
    let (store, work) = (TempDir::new("collector"), TempDir::new("collector-work"));
    let kernel = kdump::extract_guest_kernel();
    let command = "makedumpfile -l --message-level 7 -d 31";
    let (crash, progress) = crash_with_collector(command, &store);
    let (done, total) = progress.expect("dump_progress events while the collector ran");
    assert!(done > 0 && done <= total, "the collector read {done} of {total} bytes of guest memory");
    assert_eq!(crash.meta["core_collector"], json!({"command": command, "collected": true}), "{}", crash.meta);
    assert_eq!(crash.meta["vmcore_format"], "kdump");
    assert_eq!(crash.meta["files"]["core_collector_log"], "core-collector.log");
    let log = std::fs::read_to_string(crash.dir.join("core-collector.log")).expect("the collector's log");
    assert!(log.starts_with(&format!("core_collector: {command} /")), "{log}");
    assert!(log.contains("The dumpfile is saved to"), "makedumpfile's messages:\n{log}");

    // makedumpfile's kdump-compressed file, LZO, the free pages left out, read by everyone.
    let path = crash.vmcore();
    let vmcore = open_vmcore(&path).expect("the collector's vmcore opens");
    let Vmcore::Kdump(collected) = &vmcore else { panic!("makedumpfile -l writes kdump-compressed files") };
    assert_eq!(collected.sub_header().dump_level, 31);
    assert_ne!(collected.header().status & dumpd::kdump::DUMP_DH_COMPRESSED_LZO, 0, "LZO pages");
    let free = free_pfns(&vmcore);
    assert!(free.len() > 30_000, "{} free pages", free.len());
    assert_eq!(excluded_pfns(&path), free, "the free pages are left out");
    assert_eq!(crash.event.u64("size"), Some(std::fs::metadata(&path).expect("metadata").len()));
    assert_eq!(dump_dmesg(&path, &work, "dmesg-collected"), crash.vmcore_dmesg());
    check_dumpd_reads(&path, kernel.path());

    // A collector that fails: the built-in writer writes the ELF vmcore, and meta.json says why.
    let failing_store = TempDir::new("collector-failing");
    let (crash, _) = crash_with_collector("makedumpfile -d 32", &failing_store);
    let collector = &crash.meta["core_collector"];
    assert_eq!((&collector["command"], &collector["collected"]), (&json!("makedumpfile -d 32"), &json!(false)));
    let error = collector["error"].as_str().expect("an error");
    assert!(error.contains("Dump_level(32) is invalid"), "{error}");
    assert_eq!(crash.meta["vmcore_format"], serde_json::Value::Null);
    assert!(matches!(open_vmcore(&crash.vmcore()).expect("opens"), Vmcore::Elf(_)));
    assert_eq!(dump_dmesg(&crash.vmcore(), &work, "dmesg-fallback"), crash.vmcore_dmesg());
}
