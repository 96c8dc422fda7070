//! fill-kernel: a tiny PVH test kernel that fills its RAM with noise, the workload of the
//! host-dump benchmark (issue 12): a guest that uses its memory, unlike an idle one whose RAM
//! is mostly untouched zero pages.
//!
//! # What it does
//! Ring 0 (boot.rs, assembly) enters long mode with static page tables that identity-map the
//! first 65 GiB user-accessible (2 MiB pages), and `iretq`s to ring 3, where everything else
//! runs natively even where guest ring-0 code is emulated (DESIGN.md "This machine's KVM"). Ring 3 (`fill_main`) reads the
//! PVH memory map and command line, prints
//!
//! ```text
//! fill: start ram=<RAM bytes in the memory map> mode=<half|full> seed=<seed> from=<first filled address, hex>
//! ```
//!
//! on COM1, fills RAM, prints
//!
//! ```text
//! fill: done mode=<half|full> bytes=<bytes written> pages=<pages written> seed=<seed>
//! ```
//!
//! and spins (`pause`) for ever, so the host can dump the running guest. On an error it prints
//! `fill: error: ...` and shuts the VM down (a triple fault: `--no-reboot` VMMs exit).
//!
//! Command line: `fill=half` (the default) or `fill=full`, `seed=N` (decimal or `0x` hex,
//! default 0).
//!
//! # What RAM holds afterwards
//! The fill covers every whole 4 KiB page of every RAM entry (type 1) of the PVH memory map at
//! or above `from`, the page-aligned end of the kernel image (linker symbol `fill_image_end`;
//! the image, its page tables and its stack lie below, from 1 MiB). With `fill=half` a page
//! gets noise when its page frame number (physical address / 4096) is even; odd pages keep
//! what the VMM gave them (zeros). With `fill=full` every page gets noise.
//!
//! A filled page's contents depend only on the seed and the page's physical address `p`:
//! 512 little-endian `u64` words `w[0..512]` where, with wrapping 64-bit arithmetic,
//!
//! ```text
//! splitmix64(z):  z += 0x9e3779b97f4a7c15
//!                 z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
//!                 z = (z ^ (z >> 27)) * 0x94d049bb133111eb
//!                 return z ^ (z >> 31)
//!
//! x = splitmix64(seed ^ p) | 1
//! for i in 0..512:                       (xorshift64*)
//!     x ^= x >> 12;  x ^= x << 25;  x ^= x >> 27
//!     w[i] = x * 0x2545f4914f6cdd1d
//! ```
//!
//! For example seed 0, page 0x200000: `w[0] = 0xb702bdd7bb97c8c5`, `w[511] =
//! 0x68cf0a7b343c8e2a` (noise.rs tests these values).
//!
//! # Building and booting
//! ```text
//! cd benches/fill-kernel && cargo build --release       # target/x86_64-unknown-none/release/fill-kernel
//! cargo test --target x86_64-unknown-linux-gnu          # the unit tests run on the host
//! vmm --kernel fill-kernel --memory 256 --cmdline "fill=half" --no-reboot
//! qemu-system-x86_64 -M microvm -accel kvm -cpu host,-arch-capabilities -m 256M \
//!     -kernel fill-kernel -append "fill=half" -nodefaults -no-user-config -serial stdio -display none
//! ```
//! The kernel is linked and loaded at 1 MiB (`XEN_ELFNOTE_PHYS32_ENTRY` note in a PT_NOTE
//! segment); RAM must end at or below 65 GiB.
#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(test), no_main)]
// The unit tests run on the host without the ring-0 and ring-3 glue that uses the rest.
#![cfg_attr(test, allow(dead_code))]

#[cfg(not(test))]
mod boot;
mod cmdline;
#[cfg(not(test))]
mod entry;
mod fill;
mod layout;
mod noise;
mod pvh;
#[cfg(not(test))]
mod serial;
