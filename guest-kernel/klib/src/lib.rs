//! Pure logic of the crashvisor guest kernel.
//!
//! Everything here is `no_std`, free of `unsafe` and of hardware access, so it builds for the
//! guest (`x86_64-unknown-none`) and is unit-tested on the host with `cargo test`.
//!
//! - [`cmdline`]: the kernel command line, parsed like Linux's `parse_args()`.
//! - [`printk`]: Linux's 3.5–5.9 variable-length record log, byte-exact for `vmcore-dmesg`.
//! - [`symbols`]: the embedded symbol table searched at oops time.
//! - [`memmap`]: the physical memory map, the page-frame bitmap and its buddy blocks.
//! - [`page`]: Linux's `struct page` and the memory model that locates it.
//! - [`bytefmt`]: number formatting into byte buffers without `core::fmt`.
//! - [`elfcore`], [`elfnote`]: ELF headers, program headers and notes, read and written; the
//!   host's vmcore library (`dumpd`) is built on them.
//! - [`le`]: little-endian integers in byte slices, for every format here and on the host.
//!
//! The hot paths (appending to the log, console timestamps, symbol lookup) avoid `core::fmt`
//! and bulk copies, because the guest runs under an instruction emulator.
//!
//! ```
//! use crashvisor_klib::cmdline::Cmdline;
//! use crashvisor_klib::printk::{format_timestamp, LogIndex, TIMESTAMP_MAX_LEN};
//!
//! let cmdline = Cmdline::new("console=ttyS0 crashkernel=64M quiet");
//! assert_eq!(cmdline.get("crashkernel"), Some(Some("64M")));
//!
//! let mut buf = [0u8; 4096];
//! let mut log = LogIndex::new();
//! let seq = log.append(&mut buf, 123_456_789, 0, 6, b"Hello\n");
//! assert_eq!(seq, Some(0));
//! let record = log.records(&buf, 0).next().expect("one record was stored");
//! let mut stamp = [0u8; TIMESTAMP_MAX_LEN];
//! assert_eq!(format_timestamp(record.ts_nsec, &mut stamp), b"[    0.123456] ");
//! assert_eq!(record.text, b"Hello");
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(any(test, feature = "alloc"))]
extern crate alloc;

pub mod bytefmt;
pub mod cmdline;
pub mod cpulist;
pub mod crashkernel;
pub mod elfcore;
pub mod elfnote;
pub mod kexec;
pub mod le;
pub mod memmap;
pub mod page;
pub mod printk;
pub mod symbols;
pub mod vmcore;
pub mod watchdog;
