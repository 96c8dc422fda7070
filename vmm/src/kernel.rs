//! The guest kernel image: the embedded default or a file, and loading it into guest memory.

use std::io::Cursor;

use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::config::KernelSource;
use crate::error::VmmError;

/// The crashvisor guest kernel, built by `build.rs` for `x86_64-unknown-none`.
pub static EMBEDDED_KERNEL: &[u8] = include_bytes!(env!("GUEST_KERNEL_PATH"));

/// A kernel image held in host memory for the lifetime of the VM (reboots reload it).
pub struct KernelImage {
    /// Human-readable origin, for messages.
    pub name: String,
    /// The ELF bytes.
    pub bytes: std::borrow::Cow<'static, [u8]>,
}

impl KernelImage {
    /// Reads the kernel named by the configuration.
    pub fn open(source: &KernelSource) -> Result<Self, VmmError> {
        match source {
            KernelSource::Embedded => Ok(Self {
                name: source.to_string(),
                bytes: EMBEDDED_KERNEL.into(),
            }),
            KernelSource::File(path) => {
                let bytes = std::fs::read(path).map_err(|source| VmmError::KernelRead {
                    path: path.clone(),
                    source,
                })?;
                Ok(Self {
                    name: source.to_string(),
                    bytes: bytes.into(),
                })
            }
        }
    }
}

/// Where a loaded kernel ended up.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// PVH 32-bit entry point (guest-physical).
    pub entry: GuestAddress,
    /// First guest-physical byte past the loaded image.
    pub end: u64,
}

/// Loads the kernel's ELF segments at their physical addresses and finds the PVH entry.
pub fn load(
    memory: &GuestMemoryMmap,
    image: &KernelImage,
    memory_mib: u64,
) -> Result<LoadedKernel, VmmError> {
    check_fits(image, memory_mib)?;
    let mut reader = Cursor::new(image.bytes.as_ref());
    let result = Elf::load(
        memory,
        None,
        &mut reader,
        Some(GuestAddress(crashvisor_abi::layout::HIGH_RAM_START)),
    )
    .map_err(|e| VmmError::KernelFormat {
        kernel: image.name.clone(),
        reason: loader_reason(&e),
    })?;
    match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok(LoadedKernel {
            entry,
            end: result.kernel_end,
        }),
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
    let text = innermost.to_string();
    text.trim_start_matches("Kernel Loader: ").to_string()
}

/// Rejects kernels whose segments lie beyond guest RAM with a message naming the size needed
/// (the loader itself would only say that a write failed).
fn check_fits(image: &KernelImage, memory_mib: u64) -> Result<(), VmmError> {
    let Ok(elf) = goblin::elf::Elf::parse(&image.bytes) else {
        return Ok(()); // not an ELF: the loader reports the precise problem
    };
    let end = elf
        .program_headers
        .iter()
        .filter(|ph| ph.p_type == goblin::elf::program_header::PT_LOAD)
        .map(|ph| ph.p_paddr.saturating_add(ph.p_memsz))
        .max()
        .unwrap_or(0);
    if end > memory_mib << 20 {
        return Err(VmmError::MemoryTooSmall {
            what: "the kernel image",
            needed_mib: end.div_ceil(1 << 20),
            memory_mib,
        });
    }
    Ok(())
}
