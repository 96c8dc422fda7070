//! Guest RAM: anonymous host memory, split around the 32-bit MMIO hole, registered with KVM.

use crashvisor_abi::layout::{MMIO_HOLE_END, MMIO_HOLE_START};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::error::VmmError;

/// The guest-physical RAM ranges `(start, size)` for a VM of `bytes` of memory.
pub fn ram_ranges(bytes: u64) -> Vec<(u64, u64)> {
    if bytes <= MMIO_HOLE_START {
        vec![(0, bytes)]
    } else {
        vec![(0, MMIO_HOLE_START), (MMIO_HOLE_END, bytes - MMIO_HOLE_START)]
    }
}

/// Allocates guest RAM (zero-filled, reserved lazily by the host, in transparent huge pages
/// where the host allows them) and registers it with KVM.
pub fn create(vm: &VmFd, bytes: u64) -> Result<GuestMemoryMmap, VmmError> {
    let ranges: Vec<(GuestAddress, usize)> =
        ram_ranges(bytes).into_iter().map(|(start, size)| (GuestAddress(start), size as usize)).collect();
    let memory =
        GuestMemoryMmap::from_ranges(&ranges).map_err(|source| VmmError::Memory { mib: bytes >> 20, source })?;
    for (slot, region) in memory.iter().enumerate() {
        let host = memory
            .get_host_address(region.start_addr())
            .map_err(|e| VmmError::BootData { what: "the memory map", source: Box::new(e) })?;
        prefer_huge_pages(host, region.len());
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region describes host memory owned by `memory`, which outlives every use of
        // the VM: the VM and its vCPUs are dropped before `memory` in `vm::Machine`.
        unsafe { vm.set_user_memory_region(region) }.map_err(VmmError::kvm("register guest memory"))?;
    }
    Ok(memory)
}

/// Asks the host to back `len` bytes of guest RAM at `host` with transparent huge pages, as
/// QEMU does: the guest's memory accesses take fewer TLB misses, and a host-side dump's `fork()`
/// copies one page-table entry per 2 MiB rather than 512, which keeps the guest's pause short
/// however much of its RAM is populated. Only a hint: without it RAM works the same.
fn prefer_huge_pages(host: *mut u8, len: u64) {
    // SAFETY: MADV_HUGEPAGE changes how the kernel backs this anonymous mapping of guest RAM,
    // never its contents or its validity.
    if unsafe { libc::madvise(host.cast(), len as usize, libc::MADV_HUGEPAGE) } != 0 {
        tracing::debug!("guest RAM stays in 4 KiB pages: madvise(MADV_HUGEPAGE): {}", std::io::Error::last_os_error());
    }
}

/// Maps `size` bytes of host memory at `host_addr` into the guest at `gpa`, read-only, in memory
/// slot `slot` (guest writes there become MMIO exits, which the VMM ignores).
///
/// # Safety
/// `host_addr..host_addr+size` must be a page-aligned mapping that stays valid, readable and
/// unchanged for as long as the VM exists.
pub unsafe fn register_rom(vm: &VmFd, slot: u32, gpa: u64, host_addr: u64, size: u64) -> Result<(), VmmError> {
    let region = kvm_userspace_memory_region {
        slot,
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: host_addr,
        flags: kvm_bindings::KVM_MEM_READONLY,
    };
    // SAFETY: the caller guarantees the host range outlives the VM; KVM only reads it.
    unsafe { vm.set_user_memory_region(region) }.map_err(VmmError::kvm("map the kernel module read-only"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_vms_have_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
    }

    #[test]
    fn large_vms_skip_the_mmio_hole() {
        let ranges = ram_ranges(4 << 30);
        assert_eq!(ranges, vec![(0, MMIO_HOLE_START), (MMIO_HOLE_END, (4 << 30) - MMIO_HOLE_START)]);
        assert_eq!(ranges.iter().map(|r| r.1).sum::<u64>(), 4 << 30);
    }
}
