//! The guest kernel image: the embedded default or a file, and loading it into guest memory.
//!
//! The image stays mapped in the VMM for the life of the process: its segments are copied into
//! guest RAM at each boot, and the whole file is also mapped into the guest read-only as the
//! PVH kernel module (no copy), for kexec.

use std::fs::File;
use std::io::Cursor;
use std::os::fd::AsRawFd;
use std::path::Path;

use crashvisor_klib::elfcore::{ElfFile, PT_LOAD};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::config::KernelSource;
use crate::error::VmmError;

const PAGE_SIZE: usize = 4096;

#[repr(C, align(4096))]
struct PageAligned<T: ?Sized>(T);

/// `build.rs` pads the image to a page multiple; the wrapper page-aligns it.
static EMBEDDED: &PageAligned<[u8]> = &PageAligned(*include_bytes!(env!("GUEST_KERNEL_PATH")));

/// The crashvisor guest kernel, built by `build.rs` for `x86_64-unknown-none`.
pub static EMBEDDED_KERNEL: &[u8] = &EMBEDDED.0;

/// A read-only private mapping of a whole kernel file, rounded up to a page.
struct FileMapping {
    addr: *mut u8,
    len: usize,
    mapped: usize,
}

// SAFETY: the mapping is read-only and owned by this value; sharing it between threads only
// shares immutable bytes.
unsafe impl Send for FileMapping {}
// SAFETY: as above.
unsafe impl Sync for FileMapping {}

impl FileMapping {
    fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
        if len == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is empty"));
        }
        let mapped = len.next_multiple_of(PAGE_SIZE);
        // SAFETY: a fresh private read-only mapping of an open file; the kernel zero-fills the
        // tail of the last page, and no byte past `mapped` is ever read.
        let addr = unsafe {
            libc::mmap(std::ptr::null_mut(), mapped, libc::PROT_READ, libc::MAP_PRIVATE, file.as_raw_fd(), 0)
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { addr: addr.cast(), len, mapped })
    }
}

impl Drop for FileMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `open`; no slice of it outlives `self`.
        unsafe { libc::munmap(self.addr.cast(), self.mapped) };
    }
}

enum Storage {
    Embedded,
    File(FileMapping),
}

/// A kernel image held in host memory for the lifetime of the VM (reboots reload it).
pub struct KernelImage {
    /// Human-readable origin, for messages.
    pub name: String,
    storage: Storage,
}

impl KernelImage {
    /// Maps the kernel named by the configuration.
    pub fn open(source: &KernelSource) -> Result<Self, VmmError> {
        let storage = match source {
            KernelSource::Embedded => Storage::Embedded,
            KernelSource::File(path) => Storage::File(FileMapping::open(path).map_err(|source| {
                if source.kind() == std::io::ErrorKind::InvalidData {
                    let kernel = path.display().to_string();
                    VmmError::KernelFormat { kernel, reason: source.to_string() }
                } else {
                    VmmError::KernelRead { path: path.clone(), source }
                }
            })?),
        };
        Ok(Self { name: source.to_string(), storage })
    }

    /// The ELF file's bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Embedded => EMBEDDED_KERNEL,
            // SAFETY: `addr..addr+len` is the live read-only mapping owned by `self`.
            Storage::File(m) => unsafe { std::slice::from_raw_parts(m.addr, m.len) },
        }
    }

    /// The page-aligned host memory holding the image, rounded up to whole pages, to map into
    /// the guest read-only: (host address, size).
    pub fn pages(&self) -> (u64, u64) {
        match &self.storage {
            Storage::Embedded => (EMBEDDED_KERNEL.as_ptr() as u64, EMBEDDED_KERNEL.len() as u64),
            Storage::File(m) => (m.addr as u64, m.mapped as u64),
        }
    }
}

/// Where a loaded kernel ended up.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// PVH 32-bit entry point (guest-physical).
    pub entry: GuestAddress,
}

/// Loads the kernel's ELF segments at their physical addresses and finds the PVH entry.
pub fn load(memory: &GuestMemoryMmap, image: &KernelImage, memory_mib: u64) -> Result<LoadedKernel, VmmError> {
    check_fits(image, memory_mib)?;
    let mut reader = Cursor::new(image.bytes());
    let result = Elf::load(memory, None, &mut reader, Some(GuestAddress(crashvisor_abi::layout::HIGH_RAM_START)))
        .map_err(|e| VmmError::KernelFormat { kernel: image.name.clone(), reason: loader_reason(&e) })?;
    match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok(LoadedKernel { entry }),
        _ => Err(VmmError::KernelNotPvh(image.name.clone())),
    }
}

/// The innermost message of a loader error, without the "Kernel Loader: " prefix that each of
/// its layers repeats.
fn loader_reason(error: &linux_loader::loader::Error) -> String {
    let mut innermost: &dyn std::error::Error = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    innermost.to_string().trim_start_matches("Kernel Loader: ").to_string()
}

/// Rejects kernels whose segments lie beyond guest RAM with a message naming the size needed
/// (the loader itself would only say that a write failed). Reads only the ELF and program
/// headers; anything malformed is left for the loader to describe.
fn check_fits(image: &KernelImage, memory_mib: u64) -> Result<(), VmmError> {
    let Ok(elf) = ElfFile::parse(image.bytes()) else {
        return Ok(());
    };
    let loads = elf.program_headers().filter(|ph| ph.p_type == PT_LOAD);
    let end = loads.map(|ph| ph.p_paddr.saturating_add(ph.p_memsz)).max().unwrap_or(0);
    if end > memory_mib << 20 {
        return Err(VmmError::MemoryTooSmall {
            what: "the kernel image",
            needed_mib: end.div_ceil(1 << 20),
            memory_mib,
        });
    }
    Ok(())
}
