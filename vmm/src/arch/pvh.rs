//! The PVH boot data: `hvm_start_info`, the memory map, the command line and the kernel module.
//!
//! Guest-physical placement is fixed by `crashvisor_abi::layout`. The kernel image itself is
//! module 0 (kexec loads it later, as Linux loads `/boot/vmlinuz`): a read-only memory slot at
//! `KERNEL_MODULE_GPA` backed by the VMM's own mapping of the file, so nothing is copied.

use crashvisor_abi::layout::{
    CMDLINE_GPA, CMDLINE_MAX_SIZE, HIGH_RAM_START, KERNEL_MODULE_GPA, LOW_RAM_END, PVH_INFO_GPA, PVH_MEMMAP_GPA,
    PVH_MODLIST_GPA,
};
use crashvisor_abi::pvh::{MEMMAP_TYPE_RAM, MEMMAP_TYPE_RESERVED, START_INFO_MAGIC};
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::error::VmmError;
use crate::memory::ram_ranges;

/// Name given to the kernel module on its PVH module command line.
pub const KERNEL_MODULE_NAME: &str = "crashvisor-kernel";

/// The guest-physical memory map of a VM with `bytes` of RAM and a kernel module of
/// `module_pages` bytes (page-rounded) at `KERNEL_MODULE_GPA`.
pub fn memory_map(bytes: u64, module_pages: u64) -> Vec<hvm_memmap_table_entry> {
    let entry = |addr: u64, size: u64, type_: u32| hvm_memmap_table_entry { addr, size, type_, reserved: 0 };
    let mut map = vec![
        entry(0, LOW_RAM_END, MEMMAP_TYPE_RAM),
        entry(LOW_RAM_END, HIGH_RAM_START - LOW_RAM_END, MEMMAP_TYPE_RESERVED),
    ];
    let ranges = ram_ranges(bytes);
    let (_, low_size) = ranges[0];
    map.push(entry(HIGH_RAM_START, low_size - HIGH_RAM_START, MEMMAP_TYPE_RAM));
    map.push(entry(KERNEL_MODULE_GPA, module_pages, MEMMAP_TYPE_RESERVED));
    map.extend(ranges.iter().skip(1).map(|&(start, size)| entry(start, size, MEMMAP_TYPE_RAM)));
    map
}

/// Writes the command line, the memory map, the module list and `hvm_start_info`. The kernel
/// module itself is mapped by the caller (`memory::register_rom`).
pub fn write_boot_data(
    memory: &GuestMemoryMmap,
    bytes: u64,
    cmdline: &str,
    module_size: u64,
    module_pages: u64,
) -> Result<(), VmmError> {
    let boot_err =
        |what: &'static str| move |e: vm_memory::GuestMemoryError| VmmError::BootData { what, source: Box::new(e) };

    let mut cmdline_bytes = cmdline.as_bytes().to_vec();
    cmdline_bytes.push(0);
    memory.write_slice(&cmdline_bytes, GuestAddress(CMDLINE_GPA)).map_err(boot_err("the kernel command line"))?;
    let module_name_gpa = CMDLINE_GPA + CMDLINE_MAX_SIZE;
    let mut name = KERNEL_MODULE_NAME.as_bytes().to_vec();
    name.push(0);
    memory.write_slice(&name, GuestAddress(module_name_gpa)).map_err(boot_err("the kernel module name"))?;

    let map = memory_map(bytes, module_pages);
    let start_info = hvm_start_info {
        magic: START_INFO_MAGIC,
        version: 1,
        nr_modules: 1,
        modlist_paddr: PVH_MODLIST_GPA,
        cmdline_paddr: CMDLINE_GPA,
        memmap_paddr: PVH_MEMMAP_GPA,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let module =
        hvm_modlist_entry { paddr: KERNEL_MODULE_GPA, size: module_size, cmdline_paddr: module_name_gpa, reserved: 0 };
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_GPA));
    params.set_sections(&map, GuestAddress(PVH_MEMMAP_GPA));
    params.set_modules(&[module], GuestAddress(PVH_MODLIST_GPA));
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, memory)
        .map_err(|e| VmmError::BootData { what: "the PVH start info", source: Box::new(e) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_map_covers_ram_and_the_legacy_hole() {
        let map = memory_map(64 << 20, 1 << 20);
        let ram: u64 = map.iter().filter(|e| e.type_ == MEMMAP_TYPE_RAM).map(|e| e.size).sum();
        assert_eq!(ram, (64 << 20) - (HIGH_RAM_START - LOW_RAM_END));
        assert_eq!(map[2].addr, HIGH_RAM_START);
        assert_eq!(map[2].addr + map[2].size, 64 << 20);
    }

    #[test]
    fn memory_map_of_large_vm_resumes_above_4g() {
        let map = memory_map(5 << 30, 1 << 20);
        let last = map.last().expect("non-empty");
        assert_eq!(last.addr, 1 << 32);
        assert_eq!(last.addr + last.size, (1 << 32) + (5 << 30) - crashvisor_abi::layout::MMIO_HOLE_START);
    }
}
