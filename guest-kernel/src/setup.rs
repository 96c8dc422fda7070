//! Boot-time setup of memory (Linux's `setup_arch` in miniature): read the PVH boot data,
//! print the memory map, build the direct map, reserve what is in use, start the allocators
//! and the `struct page` array.

use crashvisor_abi::layout::{CMDLINE_GPA, CMDLINE_MAX_SIZE, HIGH_RAM_START, LOW_BOOT_AREA_END, PAGE_SIZE};
use crashvisor_abi::pvh::{MemmapEntry, ModlistEntry, StartInfo, START_INFO_MAGIC};
use crashvisor_klib::memmap::{FrameBitmap, MemoryMap, RangeKind};

use crate::arch::paging;
use crate::mm;
use crate::sync::SpinLock;

/// The memory map after boot reservations (for `/proc/iomem` and kdump).
pub static MEMORY_MAP: SpinLock<Option<MemoryMap>> = SpinLock::new(None);

/// The pristine kernel image the VMM passed as PVH module 0: (physical address, size).
static KERNEL_MODULE: SpinLock<Option<(u64, u64)>> = SpinLock::new(None);
/// The firmware memory map as booted with, for the kernels this one kexecs.
static BOOT_MEMMAP: SpinLock<([MemmapEntry; 128], usize)> = SpinLock::new(([MemmapEntry::ZERO; 128], 0));

fn save_boot_memmap(entries: &[MemmapEntry]) {
    let mut saved = BOOT_MEMMAP.lock_irqsave();
    let n = entries.len().min(saved.0.len());
    saved.0[..n].copy_from_slice(&entries[..n]);
    saved.1 = n;
}

/// The firmware memory map this kernel booted with.
pub fn boot_memmap() -> alloc::vec::Vec<MemmapEntry> {
    let saved = BOOT_MEMMAP.lock_irqsave();
    saved.0[..saved.1].to_vec()
}

/// The pristine kernel image (physical address, size), if the VMM passed one.
pub fn kernel_module() -> Option<(u64, u64)> {
    *KERNEL_MODULE.lock_irqsave()
}

/// The PVH start info, read through the boot identity map of the low 2 MiB.
fn start_info(phys: u64) -> Option<&'static StartInfo> {
    if phys == 0 || phys + core::mem::size_of::<StartInfo>() as u64 > 0x20_0000 {
        return None;
    }
    // SAFETY: the boot page tables identity-map [0, 2 MiB), and the VMM wrote a StartInfo here
    // (its magic is checked before use).
    let info = unsafe { &*(phys as *const StartInfo) };
    (info.magic == START_INFO_MAGIC).then_some(info)
}

/// Copies the command line out of the boot data.
pub fn save_cmdline(start_info_phys: u64) {
    let Some(info) = start_info(start_info_phys) else {
        return;
    };
    if info.cmdline_paddr == 0 || info.cmdline_paddr + CMDLINE_MAX_SIZE > 0x20_0000 {
        return;
    }
    // SAFETY: the command line lies in the identity-mapped low 2 MiB (checked above).
    let raw = unsafe { core::slice::from_raw_parts(info.cmdline_paddr as *const u8, CMDLINE_MAX_SIZE as usize) };
    crate::params::save(raw);
}

fn e820_name(kind: RangeKind) -> &'static str {
    if kind.is_ram_backed() {
        "usable"
    } else {
        "reserved"
    }
}

/// Builds the memory map, direct map and frame allocator. Returns false if the boot data is
/// unusable (the kernel cannot go on).
pub fn memory(start_info_phys: u64) -> bool {
    let Some(info) = start_info(start_info_phys) else {
        crate::pr_emerg!("PVH: no valid hvm_start_info at {:#x}", start_info_phys);
        return false;
    };
    let entries = info.memmap_entries as usize;
    if info.memmap_paddr == 0 || info.memmap_paddr + (entries * core::mem::size_of::<MemmapEntry>()) as u64 > 0x20_0000
    {
        crate::pr_emerg!("PVH: memory map missing or out of reach");
        return false;
    }
    // SAFETY: the memory map lies in the identity-mapped low 2 MiB (checked above).
    let raw = unsafe { core::slice::from_raw_parts(info.memmap_paddr as *const MemmapEntry, entries) };
    save_boot_memmap(raw);
    let Ok(mut map) = MemoryMap::from_pvh(raw) else {
        crate::pr_emerg!("PVH: unusable memory map");
        return false;
    };
    crate::pr_info!("BIOS-provided physical RAM map:");
    for range in map.ranges() {
        crate::pr_info!("BIOS-e820: [mem {:#018x}-{:#018x}] {}", range.start, range.end - 1, e820_name(range.kind));
    }
    let mapped = paging::init_direct_map(map.ram_end());
    if mapped < map.ram_end() {
        crate::pr_warn!("mm: RAM above {:#x} is not mapped and will not be used", mapped);
        let _ = map.reserve(mapped, map.ram_end(), RangeKind::Reserved);
    }

    // What is in use before the allocator exists: real-mode data and boot structures, the AP
    // trampoline, the command line, the kernel image, the kernel module.
    let _ = map.reserve(0, LOW_BOOT_AREA_END, RangeKind::BootData);
    let _ = map.reserve(CMDLINE_GPA, CMDLINE_GPA + 2 * CMDLINE_MAX_SIZE, RangeKind::BootData);
    let (kernel_start, kernel_end) = mm::kernel_image_phys();
    let kernel_end = kernel_end.next_multiple_of(PAGE_SIZE);
    let _ = map.reserve(kernel_start, kernel_end, RangeKind::Kernel);
    if info.nr_modules > 0 && info.modlist_paddr != 0 && info.modlist_paddr < 0x20_0000 {
        // SAFETY: the module list lies in the identity-mapped low 2 MiB (checked above).
        let module = unsafe { *(info.modlist_paddr as *const ModlistEntry) };
        let start = module.paddr & !(PAGE_SIZE - 1);
        let end = module.paddr.checked_add(module.size).map(|e| e.next_multiple_of(PAGE_SIZE));
        let in_ram = map.find(module.paddr).is_some_and(|r| r.kind.is_ram_backed());
        let usable = match end {
            // The VMM maps the module read-only outside RAM: make it reachable.
            Some(end) if !in_ram => {
                paging::map_outside_ram(start, end);
                true
            }
            // A loader that put it in RAM: keep the allocator off it.
            Some(end) => map.reserve(start, end, RangeKind::Module).is_ok(),
            None => false,
        };
        if usable {
            *KERNEL_MODULE.lock_irqsave() = Some((module.paddr, module.size));
        } else {
            crate::pr_warn!("PVH: ignoring the kernel module at {:#x}: it overlaps used memory", module.paddr);
        }
    }
    let nr_frames = map.ram_end().div_ceil(PAGE_SIZE);
    let bitmap_bytes = (FrameBitmap::words_needed(nr_frames) * 8) as u64;
    let bitmap_phys = kernel_end;
    if map.reserve(bitmap_phys, bitmap_phys + bitmap_bytes.next_multiple_of(PAGE_SIZE), RangeKind::Kernel).is_err() {
        crate::pr_emerg!(
            "mm: no room for the frame bitmap at {:#x}-{:#x}, after the kernel at {:#x}-{:#x}",
            bitmap_phys,
            bitmap_phys + bitmap_bytes,
            kernel_start,
            kernel_end
        );
        return false;
    }
    let Some(memmap_phys) = reserve_memmap(&mut map, bitmap_phys + bitmap_bytes) else {
        crate::pr_emerg!("mm: no room for the struct page array ({} MiB)", mm::memmap::backing_bytes(&map) >> 20);
        return false;
    };
    if crate::kexec::capture::elfcorehdr().is_some() {
        // A capture kernel reads all of the crashed kernel's memory, which its map marks reserved.
        for range in map.ranges().iter().filter(|r| !r.kind.is_ram_backed() && r.start >= HIGH_RAM_START) {
            paging::map_outside_ram(range.start, range.end);
        }
    } else {
        crate::kexec::reserve::reserve(&mut map);
    }
    mm::frame::init(&map, bitmap_phys);
    mm::memmap::init(&map, memmap_phys);
    *MEMORY_MAP.lock_irqsave() = Some(map);
    true
}

/// Reserves the RAM behind the `struct page` array: 2 MiB-aligned, right after `after` if that
/// is free, else the highest place that is (as Linux's memblock allocates top-down).
fn reserve_memmap(map: &mut MemoryMap, after: u64) -> Option<u64> {
    const ALIGN: u64 = 2 << 20;
    let bytes = mm::memmap::backing_bytes(map);
    let next = after.next_multiple_of(ALIGN);
    if map.reserve(next, next + bytes, RangeKind::BootData).is_ok() {
        return Some(next);
    }
    let start = map.find_free_top_down(bytes, ALIGN, u64::MAX)?;
    map.reserve(start, start + bytes, RangeKind::BootData).ok().map(|()| start)
}
