//! Where the kernel lives in guest-physical memory, which it runs identity-mapped.

/// One past the last byte boot.rs maps. The page tables are static data made by the assembler
/// (no ring-0 instructions, 4 KiB of tables per GiB), so they cover a fixed range: 65 GiB, the
/// end of RAM of the largest VM our VMM runs (64 GiB, relocated above the 1 GiB MMIO hole
/// below 4 GiB).
pub const IDENTITY_MAP_END_GPA: u64 = 65 << 30;

/// Bytes one 2 MiB page maps.
pub const LARGE_PAGE_SIZE: u64 = 2 << 20;

/// Bytes one page directory (512 entries of 2 MiB) maps.
pub const PAGE_DIRECTORY_SPAN: u64 = 1 << 30;

const _: () = assert!(IDENTITY_MAP_END_GPA.is_multiple_of(PAGE_DIRECTORY_SPAN) && IDENTITY_MAP_END_GPA <= 512 << 30);
