//! Initial register state: the PVH entry state of the boot vCPU and the local APIC's LINT pins.

use kvm_bindings::{kvm_lapic_state, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;

use crate::error::VmmError;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;

fn flat_segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 }, // execute/read accessed, or read/write accessed
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        ..Default::default()
    }
}

/// Puts the boot vCPU in the state PVH prescribes: 32-bit protected mode, flat segments,
/// paging off, `ebx` = the `hvm_start_info` address, at the kernel's PVH entry.
pub fn setup_pvh_entry(vcpu: &VcpuFd, entry: u64, start_info: u64) -> Result<(), VmmError> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(VmmError::kvm("read the boot vCPU's segment registers"))?;
    sregs.cs = flat_segment(0x08, true);
    let data = flat_segment(0x10, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.cr0 = CR0_PE | CR0_ET;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs).map_err(VmmError::kvm("set the boot vCPU's segment registers"))?;
    let regs = kvm_regs { rip: entry, rbx: start_info, rflags: 0x2, ..Default::default() };
    vcpu.set_regs(&regs).map_err(VmmError::kvm("set the boot vCPU's registers"))
}

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_delivery_mode(lapic: &mut kvm_lapic_state, reg: usize, mode: u32) {
    let bytes = &mut lapic.regs[reg..reg + 4];
    let raw = u32::from_le_bytes([bytes[0] as u8, bytes[1] as u8, bytes[2] as u8, bytes[3] as u8]);
    let value = (raw & !0x700) | (mode << 8);
    for (dst, src) in bytes.iter_mut().zip(value.to_le_bytes()) {
        *dst = src as _;
    }
}

/// Wires LINT0 as ExtINT and LINT1 as NMI, as firmware does on a PC.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), VmmError> {
    let mut lapic = vcpu.get_lapic().map_err(VmmError::kvm("read the local APIC"))?;
    set_delivery_mode(&mut lapic, APIC_LVT_LINT0, APIC_MODE_EXTINT);
    set_delivery_mode(&mut lapic, APIC_LVT_LINT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(VmmError::kvm("set up the local APIC"))
}
