//! The CPUID the guest sees: the host's supported set, with per-vCPU APIC ids, the
//! TSC-deadline timer, and the TSC and APIC-bus frequencies in the hypervisor timing leaf.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

use crate::error::VmmError;

/// Hypervisor vendor leaf; its EAX is the highest hypervisor leaf.
const LEAF_HYPERVISOR: u32 = 0x4000_0000;
/// Timing leaf (the VMware/KVM convention): EAX = TSC kHz, EBX = APIC bus kHz.
pub const LEAF_TIMING: u32 = 0x4000_0010;
/// KVM's in-kernel local APIC counts its timer at 1 GHz (`APIC_BUS_CYCLE_NS` = 1).
pub const APIC_BUS_KHZ: u32 = 1_000_000;
/// CPUID.1:ECX bit of the TSC-deadline timer mode.
const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// CPUID.1:ECX bit saying a hypervisor is present.
const ECX_HYPERVISOR: u32 = 1 << 31;

/// Reads what the host KVM can offer; the result is patched per vCPU with `for_vcpu`.
pub fn supported(kvm: &Kvm) -> Result<CpuId, VmmError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(VmmError::kvm("read the supported CPUID"))
}

/// The CPUID of vCPU `id`, advertising `tsc_khz` as the TSC frequency.
pub fn for_vcpu(base: &CpuId, id: u8, vcpus: u8, tsc_khz: u32, tsc_deadline: bool) -> Result<CpuId, VmmError> {
    let mut entries: Vec<_> = base.as_slice().to_vec();
    for entry in entries.iter_mut() {
        match entry.function {
            1 => {
                // Initial APIC id in EBX[31:24], logical processor count in EBX[23:16].
                entry.ebx = (entry.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(vcpus) << 16);
                entry.ecx |= ECX_HYPERVISOR;
                if tsc_deadline {
                    entry.ecx |= ECX_TSC_DEADLINE;
                }
            }
            // Extended topology: EDX is the x2APIC id.
            0xb | 0x1f => entry.edx = u32::from(id),
            LEAF_HYPERVISOR => entry.eax = entry.eax.max(LEAF_TIMING),
            _ => {}
        }
    }
    entries.retain(|e| e.function != LEAF_TIMING);
    entries.push(kvm_bindings::kvm_cpuid_entry2 {
        function: LEAF_TIMING,
        eax: tsc_khz,
        ebx: APIC_BUS_KHZ,
        ..Default::default()
    });
    CpuId::from_entries(&entries).map_err(|_| VmmError::KvmCapability("room for the CPUID timing leaf"))
}
