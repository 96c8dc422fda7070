//! makedumpfile's kdump-compressed format (`diskdump_mod.h`, header version 6), as `crash`,
//! `makedumpfile` and `libkdumpfile` read it: a writer ([`write::write_kdump`]) and a reader
//! ([`read::KdumpImage`]).
//!
//! ```text
//! block 0                      disk_dump_header (464 bytes)
//! block 1                      kdump_sub_header (104 bytes), then the ELF notes, verbatim
//! block 1 + sub_hdr_size       1st bitmap: 1 = the pfn exists (not a hole)
//!                              2nd bitmap: 1 = the page is in the file
//! block 1 + sub_hdr_size       page_desc_t (24 bytes) per dumped pfn, in pfn order
//!       + bitmap_blocks
//! then                         page data, each page compressed alone (or raw when that
//!                              does not shrink it), not block aligned
//! ```
//!
//! A block is a 4 KiB page; both bitmaps have one bit per pfn up to `max_mapnr`, LSB first.

pub mod bitmap;
pub mod compress;
pub mod flattened;
pub mod free_pages;
pub mod header;
pub mod kernel_info;
pub mod parallel;
pub mod read;
pub mod write;

pub use compress::Compression;
pub use header::{DiskDumpHeader, KdumpSubHeader, PageDesc, UtsName};
pub use read::{KdumpError, KdumpImage};
pub use write::{write_kdump, KdumpInput, KdumpOptions, KdumpStats, KdumpWriteError};

/// `disk_dump_header.signature` of a kdump-compressed file.
pub const KDUMP_SIGNATURE: [u8; 8] = *b"KDUMP   ";
/// The header version written (makedumpfile's since 1.5.6: 64-bit pfns in the sub-header).
pub const HEADER_VERSION: u32 = 6;
/// Block size: the x86_64 page size, the only one this crate reads or writes.
pub const BLOCK_SIZE: u64 = 4096;
/// Page size (the same as [`BLOCK_SIZE`], named for what it measures).
pub const PAGE_SIZE: u64 = 4096;
/// Size of `struct disk_dump_header` on x86_64.
pub const DISK_DUMP_HEADER_SIZE: usize = 464;
/// Size of `struct kdump_sub_header` on x86_64.
pub const KDUMP_SUB_HEADER_SIZE: usize = 104;
/// Size of `page_desc_t`.
pub const PAGE_DESC_SIZE: u64 = 24;

/// `status` and page flag: the data is zlib-compressed.
pub const DUMP_DH_COMPRESSED_ZLIB: u32 = 0x1;
/// `status` and page flag: LZO (makedumpfile `-l`).
pub const DUMP_DH_COMPRESSED_LZO: u32 = 0x2;
/// `status` and page flag: snappy (read by other tools, not by this crate).
pub const DUMP_DH_COMPRESSED_SNAPPY: u32 = 0x4;
/// `status`: the dump was cut short (makedumpfile ran out of space).
pub const DUMP_DH_COMPRESSED_INCOMPLETE: u32 = 0x8;
/// `status`: vmemmap pages were excluded.
pub const DUMP_DH_EXCLUDED_VMEMMAP: u32 = 0x10;
/// `status` and page flag: the data is zstd-compressed.
pub const DUMP_DH_COMPRESSED_ZSTD: u32 = 0x20;

/// Dump level bit: pages that are all zero are not stored (makedumpfile `-d 1`): each one's
/// descriptor points at one shared zero page.
pub const DL_EXCLUDE_ZERO: u32 = 1;
/// Dump level bit: free pages are left out (makedumpfile `-d 16`).
pub const DL_EXCLUDE_FREE: u32 = 16;
/// The highest dump level: every bit (zero, page cache twice, user data, free pages).
pub const DL_MAX: u32 = 31;

/// Highest `max_mapnr` accepted: 2^34 pfns, 64 TiB of physical memory (x86_64's limit with
/// 4-level paging). It bounds the bitmaps both ways (2 GiB each at most, and kept sparse).
pub const MAX_MAPNR: u64 = 1 << 34;
/// Largest ELF note area read or written (as for ELF vmcores).
pub const MAX_NOTES_LEN: u64 = crate::elf::image::MAX_HEADERS_LEN;
/// Base of Linux's x86_64 kernel text mapping (`__START_KERNEL_map`).
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// Base of Linux's x86_64 direct map (`PAGE_OFFSET` without KASLR), the virtual addresses of
/// the `PT_LOAD`s rebuilt from a kdump file.
pub const DIRECT_MAP_BASE: u64 = 0xffff_8880_0000_0000;
