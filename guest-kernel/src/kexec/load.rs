//! Loading a kernel image for kexec (Linux's `kexec_load`, with the checks of
//! `sanity_check_segment_list`) and starting it.
//!
//! The image is the pristine kernel the VMM passed as PVH module 0 (Linux's `/boot/vmlinuz`).
//! A normal image (`kexec -l`) is copied into free memory at a 2 MiB-aligned base of its own,
//! so the running kernel stays intact until `kexec -e`; a crash image (`kexec -p`) is copied
//! into the `crashkernel=` reservation, with the elfcorehdr at the reservation's end.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crashvisor_abi::layout::{KEXEC_BOOT_DATA_GPA, PAGE_OFFSET, PAGE_SIZE};
use crashvisor_abi::pvh::{
    MemmapEntry, ModlistEntry, StartInfo, MEMMAP_TYPE_RAM, MEMMAP_TYPE_RESERVED, START_INFO_MAGIC,
};
use crashvisor_klib::elfcore::CoreHeaderBuilder;
use crashvisor_klib::elfnote::{CRASH_NOTE_BYTES, VMCOREINFO_NOTE_SIZE};
use crashvisor_klib::kexec::{check_segments, relocate, KernelElf, KexecError, Segment};
use crashvisor_klib::memmap::RangeKind;

use super::{crash, reserve, trampoline};
use crate::arch::{apic, cpu, paging, percpu};
use crate::sync::{irq, SpinLock};
use crate::{mm, setup, smp, time};

/// Which slot an image goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `kexec -l`: started by `kexec -e`.
    Normal,
    /// `kexec -p`: started by a crash.
    Crash,
}

/// Why an image could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// The VMM passed no kernel image.
    NoImage,
    /// The image is not a loadable PVH kernel.
    BadImage(&'static str),
    /// `kexec -p` without a `crashkernel=` reservation, or one too small.
    NoCrashRegion,
    /// No free memory for the image.
    NoMemory,
    /// A segment broke one of Linux's rules.
    Segments(KexecError),
}

impl core::fmt::Display for LoadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoImage => f.write_str("the VMM passed no kernel image to load"),
            Self::BadImage(why) => write!(f, "the kernel image cannot be loaded: {why}"),
            Self::NoCrashRegion => f.write_str(
                "no (or too little) memory reserved for the capture kernel: boot with crashkernel=SIZE, e.g. crashkernel=64M",
            ),
            Self::NoMemory => f.write_str("not enough free memory for the new kernel"),
            Self::Segments(e) => write!(f, "a segment breaks kexec's rules ({}: {:?})", e.errno_name(), e),
        }
    }
}

struct Image {
    entry: u32,
    cmdline: String,
    /// Physical address of the elfcorehdr (crash images).
    elfcorehdr: Option<u64>,
}

static IMAGES: SpinLock<[Option<Image>; 2]> = SpinLock::new([None, None]);

fn slot(kind: Kind) -> usize {
    match kind {
        Kind::Normal => 0,
        Kind::Crash => 1,
    }
}

/// Whether an image of `kind` is loaded (`/sys/kernel/kexec_loaded`, `kexec_crash_loaded`).
pub fn loaded(kind: Kind) -> bool {
    IMAGES.lock_irqsave()[slot(kind)].is_some()
}

/// `kexec -u` (and `-p -u`).
pub fn unload(kind: Kind) {
    IMAGES.lock_irqsave()[slot(kind)] = None;
}

/// Size of the elfcorehdr area at the end of the reservation.
const ELFCOREHDR_SIZE: u64 = 4 * PAGE_SIZE;

/// Loads the pristine kernel image as `kind` with `cmdline`. For a crash image, `cmdline`
/// gets `elfcorehdr=` appended.
pub fn load(kind: Kind, cmdline: &str) -> Result<(), LoadError> {
    let (module_pa, module_len) = setup::kernel_module().ok_or(LoadError::NoImage)?;
    // SAFETY: the module is mapped read-only by the direct map for the kernel's lifetime
    // (setup maps it at boot) and nothing writes it.
    let bytes = unsafe { core::slice::from_raw_parts(mm::phys_to_virt(module_pa) as *const u8, module_len as usize) };
    let image = KernelElf::parse(bytes).map_err(|_| LoadError::BadImage("not a PVH ELF kernel"))?;
    let link_base = image.phys_start();
    let span = (image.phys_end() - link_base).next_multiple_of(PAGE_SIZE);
    let crash_region = reserve::region();
    let base = match kind {
        Kind::Crash => {
            let (start, end) = crash_region.ok_or(LoadError::NoCrashRegion)?;
            if start + span + ELFCOREHDR_SIZE > end {
                return Err(LoadError::NoCrashRegion);
            }
            start
        }
        Kind::Normal => {
            let va = mm::frame::alloc_pages_aligned((span / PAGE_SIZE) as usize, 512).ok_or(LoadError::NoMemory)?;
            mm::virt_to_phys(va)
        }
    };
    let mut segments = Vec::new();
    for segment in image.segments() {
        let mem = relocate(segment.p_paddr, link_base, base).ok_or(LoadError::BadImage("segment not relocatable"))?;
        segments.push(Segment { bufsz: segment.p_filesz, mem, memsz: segment.p_memsz.next_multiple_of(PAGE_SIZE) });
    }
    let ram_pages = setup::MEMORY_MAP.lock_irqsave().as_ref().map_or(0, |m| m.total_ram() / PAGE_SIZE);
    let checked_region = if kind == Kind::Crash { crash_region } else { None };
    check_segments(&segments, ram_pages, checked_region).map_err(LoadError::Segments)?;
    for (segment, dest) in image.segments().zip(&segments) {
        let data = image.segment_data(&segment).ok_or(LoadError::BadImage("segment outside the file"))?;
        let target = mm::phys_to_virt(dest.mem) as *mut u8;
        // SAFETY: the destination is memory this kernel owns and nothing else uses: frames just
        // allocated for the image, or the crash reservation, which the allocator never hands
        // out. Segments do not overlap (checked above).
        unsafe {
            core::ptr::copy_nonoverlapping(data.as_ptr(), target, data.len());
            core::ptr::write_bytes(target.add(data.len()), 0, (dest.memsz - data.len() as u64) as usize);
        }
    }
    let entry = relocate(image.pvh_entry(), link_base, base).ok_or(LoadError::BadImage("entry not relocatable"))?;
    let mut cmdline = String::from(cmdline);
    let elfcorehdr = match kind {
        Kind::Crash => {
            let (_, end) = crash_region.ok_or(LoadError::NoCrashRegion)?;
            let header = end - ELFCOREHDR_SIZE;
            build_elfcorehdr(header)?;
            cmdline.push_str(&alloc::format!(" elfcorehdr={}K", header >> 10));
            Some(header)
        }
        Kind::Normal => None,
    };
    IMAGES.lock_irqsave()[slot(kind)] = Some(Image { entry: entry as u32, cmdline, elfcorehdr });
    Ok(())
}

/// The elfcorehdr (kexec_file style): one PT_NOTE per CPU, the VMCOREINFO note, the kernel
/// text, and every System RAM range outside the reservation at its direct-map address.
fn build_elfcorehdr(at: u64) -> Result<(), LoadError> {
    extern "C" {
        static _text: u8;
        static _end: u8;
    }
    // SAFETY: the last pages of the reservation belong to the crash image being loaded.
    let out = unsafe { core::slice::from_raw_parts_mut(mm::phys_to_virt(at) as *mut u8, ELFCOREHDR_SIZE as usize) };
    let mut builder = CoreHeaderBuilder::new(out).map_err(|_| LoadError::NoMemory)?;
    let full = |_| LoadError::NoMemory;
    for cpu in 0..smp::possible_cpus() {
        builder.note(crash::crash_note_phys(cpu), CRASH_NOTE_BYTES as u64).map_err(full)?;
    }
    builder.note(crash::vmcoreinfo_note_phys(), VMCOREINFO_NOTE_SIZE as u64).map_err(full)?;
    // SAFETY: only the addresses of the linker symbols are taken.
    let (text, end) = unsafe { (&_text as *const u8 as u64, &_end as *const u8 as u64) };
    builder.load(text, mm::kernel_virt_to_phys(text), (end - text).next_multiple_of(PAGE_SIZE)).map_err(full)?;
    let guard = setup::MEMORY_MAP.try_lock_irqsave().ok_or(LoadError::NoMemory)?;
    let map = guard.as_ref().ok_or(LoadError::NoMemory)?;
    let mut run: Option<(u64, u64)> = None;
    let flush = |builder: &mut CoreHeaderBuilder<'_>, (start, end): (u64, u64)| {
        builder.load(PAGE_OFFSET + start, start, end - start).map_err(full)
    };
    for range in map.ranges().iter().filter(|r| r.kind.is_ram_backed() && r.kind != RangeKind::CrashKernel) {
        run = match run {
            Some((s, e)) if e == range.start => Some((s, range.end)),
            Some(done) => {
                flush(&mut builder, done)?;
                Some((range.start, range.end))
            }
            None => Some((range.start, range.end)),
        };
    }
    if let Some(done) = run {
        flush(&mut builder, done)?;
    }
    drop(guard);
    // Task stacks live outside the direct map: give each its own PT_LOAD at its virtual
    // address, so tools can walk the crashed tasks' frames.
    let tasks = crate::sched::task::list();
    for task in tasks.iter().filter(|task| task.stack_phys != 0) {
        builder.load(task.stack_base, task.stack_phys, task.stack_size).map_err(full)?;
    }
    builder.finish();
    Ok(())
}

/// Rebuilds the loaded crash image's elfcorehdr at crash time, so it covers the tasks created
/// since `kexec -p` (Linux updates it on hotplug with `KEXEC_UPDATE_ELFCOREHDR`).
pub fn update_elfcorehdr() {
    let header = IMAGES.try_lock_irqsave().and_then(|images| images[1].as_ref().and_then(|i| i.elfcorehdr));
    if let Some(header) = header {
        let _ = build_elfcorehdr(header);
    }
}

/// Writes the next kernel's PVH boot data at `KEXEC_BOOT_DATA_GPA`: start info, the module
/// list (the same pristine image), `memmap`, and `cmdline`.
fn write_boot_data(memmap: &[MemmapEntry], cmdline: &str) -> u32 {
    const MODLIST: u64 = KEXEC_BOOT_DATA_GPA + 0x40;
    const MEMMAP: u64 = KEXEC_BOOT_DATA_GPA + 0x1000;
    const CMDLINE: u64 = KEXEC_BOOT_DATA_GPA + 0x3000;
    const CMDLINE_MAX: usize = 2048;
    let (module_pa, module_len) = setup::kernel_module().unwrap_or((0, 0));
    let entries = memmap.len().min(128);
    let info = StartInfo {
        magic: START_INFO_MAGIC,
        version: 1,
        nr_modules: u32::from(module_len != 0),
        modlist_paddr: MODLIST,
        cmdline_paddr: CMDLINE,
        memmap_paddr: MEMMAP,
        memmap_entries: entries as u32,
        ..StartInfo::default()
    };
    let module = ModlistEntry { paddr: module_pa, size: module_len, ..ModlistEntry::default() };
    let text = cmdline.as_bytes();
    let n = text.len().min(CMDLINE_MAX - 1);
    // SAFETY: the boot-data area lies in the low 64 KiB every kernel reserves for this; the
    // writes stay inside it (start info 56 bytes, one module, ≤ 128 × 24-byte entries, 2 KiB).
    unsafe {
        (mm::phys_to_virt(KEXEC_BOOT_DATA_GPA) as *mut StartInfo).write(info);
        (mm::phys_to_virt(MODLIST) as *mut ModlistEntry).write(module);
        core::ptr::copy_nonoverlapping(memmap.as_ptr(), mm::phys_to_virt(MEMMAP) as *mut MemmapEntry, entries);
        let dst = mm::phys_to_virt(CMDLINE) as *mut u8;
        core::ptr::copy_nonoverlapping(text.as_ptr(), dst, n);
        dst.add(n).write(0);
    }
    KEXEC_BOOT_DATA_GPA as u32
}

/// The capture kernel's memory map: the reservation (minus the elfcorehdr) is its RAM; all
/// other RAM of the crashed kernel is reserved (it is the dump); firmware ranges unchanged.
fn crash_memmap(elfcorehdr: u64) -> Vec<MemmapEntry> {
    let (start, _) = reserve::region().unwrap_or((0, 0));
    let mut map = Vec::new();
    for entry in setup::boot_memmap() {
        if entry.kind != MEMMAP_TYPE_RAM {
            map.push(entry);
            continue;
        }
        let (s, e) = (entry.addr, entry.addr + entry.size);
        let pieces = [
            (s, e.min(start), MEMMAP_TYPE_RESERVED),
            (s.max(start), e.min(elfcorehdr), MEMMAP_TYPE_RAM),
            (s.max(elfcorehdr), e, MEMMAP_TYPE_RESERVED),
        ];
        for (addr, end, kind) in pieces {
            if addr < end {
                map.push(MemmapEntry { addr, size: end - addr, kind, reserved: 0 });
            }
        }
    }
    map
}

/// Stops the host's periodic NMIs before another kernel takes over: it installs its handlers
/// only after booting (Linux quiesces the NMI sources with `lapic_shutdown`).
fn quiesce_nmis() {
    crate::platform::command(crashvisor_abi::platform::Command::SetNmiWatchdog, 0);
}

/// The CPU `kexec -e` jumps from: the new kernel starts on it and brings the others up as its
/// APs 1..n (Linux's `reboot_cpu`).
const REBOOT_CPU: usize = 0;
/// How long `kexec -e` waits for the reboot CPU to take over.
const REBOOT_CPU_TIMEOUT_NS: u64 = 5_000_000_000;

/// Why `kexec -e` did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecError {
    /// No image is loaded.
    NotLoaded,
    /// CPU 0 did not take the jump over (it is locked up).
    RebootCpuUnresponsive,
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotLoaded => "no kernel loaded (kexec -l first)",
            Self::RebootCpuUnresponsive => "CPU 0 does not respond; cannot start the new kernel from it",
        })
    }
}

/// `kexec -e`: stop the other CPUs and start the loaded image, from CPU 0 (like Linux's
/// `kernel_kexec`, which first migrates to the reboot CPU). Returns only on failure.
pub fn exec_normal() -> ExecError {
    if !loaded(Kind::Normal) {
        return ExecError::NotLoaded;
    }
    if percpu::cpu_id() == REBOOT_CPU {
        exec_normal_here();
        return ExecError::NotLoaded;
    }
    smp::call_on_cpu(REBOOT_CPU, |_| exec_normal_here(), 0);
    // CPU 0 stops this one by NMI once it has taken over.
    let deadline = time::now_ns() + REBOOT_CPU_TIMEOUT_NS;
    while time::now_ns() < deadline {
        cpu::pause();
    }
    ExecError::RebootCpuUnresponsive
}

fn exec_normal_here() {
    let Some((entry, cmdline)) = IMAGES.lock_irqsave()[0].as_ref().map(|i| (i.entry, i.cmdline.clone())) else {
        return;
    };
    crate::pr_info!("kexec_core: Starting new kernel");
    irq::disable();
    smp::stop_other_cpus();
    quiesce_nmis();
    apic::shutdown_local(); // machine_shutdown's lapic_shutdown: no NMI during the jump
    let start_info = write_boot_data(&setup::boot_memmap(), &cmdline);
    paging::restore_identity_map();
    // SAFETY: the image was loaded (and checked) by `load`; the other CPUs are stopped and
    // interrupts are off, so nothing of this kernel runs after the jump.
    unsafe { trampoline::jump(entry, start_info) }
}

/// The crash path's final step (Linux's `machine_kexec` for a crash image): other CPUs are
/// stopped, their registers saved. Returns only if no crash image is loaded.
pub fn exec_crash() {
    let Some((entry, cmdline, header)) =
        IMAGES.try_lock_irqsave().and_then(|g| g[1].as_ref().map(|i| (i.entry, i.cmdline.clone(), i.elfcorehdr)))
    else {
        return;
    };
    quiesce_nmis();
    let start_info = write_boot_data(&crash_memmap(header.unwrap_or(0)), &cmdline);
    paging::restore_identity_map();
    // SAFETY: as for `exec_normal`; the crash image lives in the reservation, untouched by the
    // crashed kernel.
    unsafe { trampoline::jump(entry, start_info) }
}
