//! Initial register state: the PVH entry state of the boot vCPU and the local APIC's LINT pins
//! (their wiring, and whether LINT1 lets the host's NMIs in).

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
const APIC_LVT_MASKED: u32 = 1 << 16;

fn lvt(lapic: &kvm_lapic_state, reg: usize) -> u32 {
    let bytes = &lapic.regs[reg..reg + 4];
    u32::from_le_bytes([bytes[0] as u8, bytes[1] as u8, bytes[2] as u8, bytes[3] as u8])
}

fn set_delivery_mode(lapic: &mut kvm_lapic_state, reg: usize, mode: u32) {
    let value = (lvt(lapic, reg) & !0x700) | (mode << 8);
    for (dst, src) in lapic.regs[reg..reg + 4].iter_mut().zip(value.to_le_bytes()) {
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

/// Whether an LVT LINT1 value lets an external NMI in: unmasked, NMI delivery mode.
fn lint1_passes_nmi(lint1: u32) -> bool {
    lint1 & APIC_LVT_MASKED == 0 && (lint1 >> 8) & 0x7 == APIC_MODE_NMI
}

/// Whether the host's NMIs (the operator's and the watchdog's) reach this vCPU now: they are
/// external NMIs on the LINT1 pin, as on a PC and as QEMU's `inject-nmi` delivers them, so a
/// guest that masked LINT1 does not get them. Linux relies on it: `lapic_shutdown` before
/// kexec keeps NMIs out of the jump and of the next kernel's boot until that kernel has an IDT
/// and unmasks LINT1 itself.
pub fn lint1_passes_nmi_now(vcpu: &VcpuFd) -> Result<bool, VmmError> {
    let lapic = vcpu.get_lapic().map_err(VmmError::kvm("read the local APIC"))?;
    Ok(lint1_passes_nmi(lvt(&lapic, APIC_LVT_LINT1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unmasked_nmi_lint1_passes_nmis() {
        assert!(lint1_passes_nmi(APIC_MODE_NMI << 8));
        assert!(!lint1_passes_nmi(APIC_LVT_MASKED | APIC_MODE_NMI << 8), "masked (reset state, lapic_shutdown)");
        assert!(!lint1_passes_nmi(APIC_MODE_EXTINT << 8), "wired as ExtINT");
        assert!(!lint1_passes_nmi(0), "fixed delivery");
    }
}
