//! Where things live in the guest's physical and virtual address spaces.
//!
//! The virtual layout follows Linux x86_64 so that tools which know Linux vmcores (gdb,
//! vmcore-dmesg) find familiar addresses: the kernel image is mapped at `KERNEL_MAP` +
//! (physical - `phys_base`), and all RAM is mapped at `PAGE_OFFSET` + physical.

/// Base of the kernel-image mapping (Linux's `__START_KERNEL_map`).
pub const KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// Base of the direct map of all physical memory (Linux's default `PAGE_OFFSET`).
pub const PAGE_OFFSET: u64 = 0xffff_8880_0000_0000;
/// Physical address the kernel is linked to load at (Linux's `CONFIG_PHYSICAL_START`).
/// The kernel runs wherever it is loaded as long as that is aligned to `KERNEL_ALIGN`.
pub const PHYSICAL_START: u64 = 0x100_0000;
/// Alignment a relocated kernel image must keep: the kernel map uses 2 MiB pages.
pub const KERNEL_ALIGN: u64 = 0x20_0000;
/// Page size of the guest.
pub const PAGE_SIZE: u64 = 4096;

/// Guest-physical address of the PVH `hvm_start_info` written by the VMM.
pub const PVH_INFO_GPA: u64 = 0x6000;
/// Guest-physical address of the PVH module list.
pub const PVH_MODLIST_GPA: u64 = 0x6040;
/// Guest-physical address of the PVH memory map.
pub const PVH_MEMMAP_GPA: u64 = 0x7000;
/// Maximum number of memory-map entries the VMM writes.
pub const PVH_MEMMAP_MAX_ENTRIES: u64 = 128;
/// Guest-physical address of the AP start-up trampoline (the SIPI vector is `GPA >> 12`).
pub const AP_TRAMPOLINE_GPA: u64 = 0x8000;
/// Guest-physical address of the boot data a kernel writes for the kernel it kexecs (its
/// `hvm_start_info`, module list, memory map and command line), below `KEXEC_TRAMPOLINE_GPA`.
/// Kernels keep `[0, 0x10000)` out of their allocators, so this never clobbers a crashed
/// kernel's memory.
pub const KEXEC_BOOT_DATA_GPA: u64 = 0x9000;
/// Guest-physical address of the page holding the kexec exec trampoline (long mode → the
/// 32-bit PVH entry), identity-mapped when used.
pub const KEXEC_TRAMPOLINE_GPA: u64 = 0xf000;
/// End of the low area every kernel keeps for boot data and trampolines.
pub const LOW_BOOT_AREA_END: u64 = 0x1_0000;
/// Guest-physical address of the kernel command line.
pub const CMDLINE_GPA: u64 = 0x2_0000;
/// Largest kernel command line, including its NUL terminator (Linux's `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: u64 = 2048;
/// Guest-physical address of the kernel image module (a read-only mapping of the VMM's copy of
/// the kernel file, so kexec has the pristine image as Linux has `/boot/vmlinuz`). It lies in
/// the 32-bit MMIO hole, never in RAM, and the memory map marks it reserved.
pub const KERNEL_MODULE_GPA: u64 = 0xd000_0000;
/// Largest kernel image module: up to the I/O APIC.
pub const KERNEL_MODULE_MAX_SIZE: u64 = IOAPIC_GPA - KERNEL_MODULE_GPA;
/// End of the low RAM range (640 KiB); the legacy hole follows up to 1 MiB.
pub const LOW_RAM_END: u64 = 0xa_0000;
/// Start of RAM above the legacy hole.
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// Guest-physical address of the local APIC (x2APIC mode is used; this is informational).
pub const LAPIC_GPA: u64 = 0xfee0_0000;
/// Guest-physical address of the I/O APIC.
pub const IOAPIC_GPA: u64 = 0xfec0_0000;
/// Start of the 32-bit MMIO hole; guest RAM above this is relocated above 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// Most vCPUs a VM may have.
pub const MAX_VCPUS: usize = 16;
