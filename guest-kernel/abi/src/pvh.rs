//! The PVH boot structures (Xen's `arch-x86/hvm/start_info.h`), as the guest reads them.

/// `hvm_start_info.magic`: "xEn3" with the top bit cleared.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// `hvm_memmap_table_entry.type` of usable RAM (E820 numbering).
pub const MEMMAP_TYPE_RAM: u32 = 1;
/// `hvm_memmap_table_entry.type` of reserved memory.
pub const MEMMAP_TYPE_RESERVED: u32 = 2;

/// `struct hvm_start_info` (version 1), 56 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StartInfo {
    /// Must be `START_INFO_MAGIC`.
    pub magic: u32,
    /// Structure version; 1 includes the memory map.
    pub version: u32,
    /// SIF_* flags.
    pub flags: u32,
    /// Number of module-list entries.
    pub nr_modules: u32,
    /// Physical address of the module list.
    pub modlist_paddr: u64,
    /// Physical address of the NUL-terminated command line.
    pub cmdline_paddr: u64,
    /// Physical address of the RSDP, or 0.
    pub rsdp_paddr: u64,
    /// Physical address of the memory map.
    pub memmap_paddr: u64,
    /// Number of memory-map entries.
    pub memmap_entries: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// `struct hvm_modlist_entry`, 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ModlistEntry {
    /// Physical address of the module.
    pub paddr: u64,
    /// Size of the module in bytes.
    pub size: u64,
    /// Physical address of the module's NUL-terminated command line, or 0.
    pub cmdline_paddr: u64,
    /// Reserved, zero.
    pub reserved: u64,
}

/// `struct hvm_memmap_table_entry`, 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MemmapEntry {
    /// Start of the range.
    pub addr: u64,
    /// Length of the range in bytes.
    pub size: u64,
    /// E820 type (`MEMMAP_TYPE_*`).
    pub kind: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

impl MemmapEntry {
    /// An all-zero entry (for fixed-size tables).
    pub const ZERO: Self = Self { addr: 0, size: 0, kind: 0, reserved: 0 };
}

const _: () = assert!(core::mem::size_of::<StartInfo>() == 56);
const _: () = assert!(core::mem::size_of::<ModlistEntry>() == 32);
const _: () = assert!(core::mem::size_of::<MemmapEntry>() == 24);
