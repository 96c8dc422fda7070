//! Memory management: address translation, the physical frame allocator, the `struct page`
//! array that describes every frame, and the kernel heap.

pub mod frame;
pub mod heap;
pub mod memmap;

use core::sync::atomic::{AtomicU64, Ordering};

use crashvisor_abi::layout::{KERNEL_MAP, PAGE_OFFSET};

/// Where the kernel was loaded, relative to its link address (Linux's `phys_base`).
static PHYS_BASE: AtomicU64 = AtomicU64::new(0);

/// Records `phys_base` (boot CPU, first thing).
pub fn set_phys_base(phys_base: u64) {
    PHYS_BASE.store(phys_base, Ordering::Relaxed);
}

/// Linux's `phys_base`.
pub fn phys_base() -> u64 {
    PHYS_BASE.load(Ordering::Relaxed)
}

/// Physical address of a kernel-image virtual address.
pub fn kernel_virt_to_phys(va: u64) -> u64 {
    // `phys_base` is negative (two's complement) when the kernel runs below its link address.
    va.wrapping_sub(KERNEL_MAP).wrapping_add(phys_base())
}

/// Physical address of a direct-map or kernel-image virtual address.
pub fn virt_to_phys(va: u64) -> u64 {
    if va >= KERNEL_MAP {
        kernel_virt_to_phys(va)
    } else {
        va - PAGE_OFFSET
    }
}

/// Direct-map virtual address of physical address `pa`.
pub fn phys_to_virt(pa: u64) -> u64 {
    PAGE_OFFSET + pa
}

extern "C" {
    static _text: u8;
    static _etext: u8;
    static _edata: u8;
    static __bss_start: u8;
    static __bss_stop: u8;
    static _end: u8;
}

/// Physical boundaries of the kernel image's parts (for `/proc/iomem`).
pub struct KernelSections {
    /// End of code.
    pub text_end: u64,
    /// End of initialised data.
    pub data_end: u64,
    /// Start of bss.
    pub bss_start: u64,
    /// End of bss.
    pub bss_end: u64,
}

/// Where the kernel's code, data and bss are.
pub fn kernel_sections() -> KernelSections {
    let phys = |p: *const u8| kernel_virt_to_phys(p as u64);
    // SAFETY: only the addresses of the linker symbols are taken.
    unsafe {
        KernelSections {
            text_end: phys(&_etext),
            data_end: phys(&_edata),
            bss_start: phys(&__bss_start),
            bss_end: phys(&__bss_stop),
        }
    }
}

/// Physical extent `[start, end)` of the loaded kernel image.
pub fn kernel_image_phys() -> (u64, u64) {
    // SAFETY: only the addresses of the linker symbols are taken.
    let (start, end) = unsafe { (&_text as *const u8 as u64, &_end as *const u8 as u64) };
    (kernel_virt_to_phys(start), kernel_virt_to_phys(end))
}
