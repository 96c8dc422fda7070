//! What the kdump header says about the crashed kernel, found the way makedumpfile finds it:
//! `phys_base` and `utsname` from VMCOREINFO, reading memory through the `PT_LOAD`s'
//! virtual addresses.

use super::header::{UtsName, UTSNAME_LEN};
use super::START_KERNEL_MAP;
use crate::elf::build::LoadSpec;
use crate::writer::MemorySource;

/// The value of `KEY=` in VMCOREINFO text (`key` without the `=`).
pub fn vmcoreinfo_value<'a>(vmcoreinfo: &'a str, key: &str) -> Option<&'a str> {
    vmcoreinfo.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

/// `phys_base`: `NUMBER(phys_base)` (decimal, may be negative), else derived from a `PT_LOAD` of
/// the kernel text mapping (`p_paddr - (p_vaddr - __START_KERNEL_map)`), else 0.
pub fn phys_base(vmcoreinfo: Option<&str>, loads: &[LoadSpec]) -> u64 {
    let number = vmcoreinfo.and_then(|v| vmcoreinfo_value(v, "NUMBER(phys_base)"));
    if let Some(value) = number.and_then(|n| n.trim().parse::<i64>().ok()) {
        return value as u64; // two's complement, as the C field holds it
    }
    loads
        .iter()
        .find(|l| l.vaddr >= START_KERNEL_MAP && l.len > 0)
        .map_or(0, |l| l.paddr.wrapping_sub(l.vaddr - START_KERNEL_MAP))
}

/// The crashed kernel's `utsname`: read from memory at `SYMBOL(init_uts_ns)` +
/// `OFFSET(uts_namespace.name)` when the loads map that address; otherwise only `release`, from
/// `OSRELEASE`; otherwise empty.
pub fn utsname(vmcoreinfo: Option<&str>, loads: &[LoadSpec], memory: &dyn MemorySource) -> UtsName {
    let Some(info) = vmcoreinfo else { return UtsName::default() };
    let hex = |key| vmcoreinfo_value(info, key).and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    let offset = vmcoreinfo_value(info, "OFFSET(uts_namespace.name)").and_then(|v| v.trim().parse::<u64>().ok());
    let from_memory = hex("SYMBOL(init_uts_ns)")
        .zip(offset)
        .and_then(|(symbol, offset)| symbol.checked_add(offset))
        .and_then(|va| virt_to_phys(loads, va, UTSNAME_LEN as u64))
        .and_then(|pa| {
            let mut bytes = [0u8; UTSNAME_LEN];
            memory.read(pa, &mut bytes).ok().map(|()| UtsName::decode(&bytes))
        });
    from_memory.unwrap_or_else(|| UtsName {
        release: vmcoreinfo_value(info, "OSRELEASE").unwrap_or_default().to_owned(),
        ..UtsName::default()
    })
}

/// The physical address of `va`, if one load maps all of `va..va + len`.
fn virt_to_phys(loads: &[LoadSpec], va: u64, len: u64) -> Option<u64> {
    loads.iter().find_map(|l| {
        let offset = va.checked_sub(l.vaddr)?;
        (offset.checked_add(len)? <= l.len).then(|| l.paddr.checked_add(offset)).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::tests::Buffer;

    #[test]
    fn finds_values_and_phys_base() {
        let info = "OSRELEASE=6.1.0-cv\nNUMBER(phys_base)=-2097152\nSYMBOL(x)=ff\n";
        assert_eq!(vmcoreinfo_value(info, "OSRELEASE"), Some("6.1.0-cv"));
        assert_eq!(vmcoreinfo_value(info, "SYMBOL(x)"), Some("ff"));
        assert_eq!(vmcoreinfo_value(info, "SYMBOL"), None);
        assert_eq!(phys_base(Some(info), &[]), (-2_097_152i64) as u64);
        let text = LoadSpec { vaddr: START_KERNEL_MAP + 0x100_0000, paddr: 0x300_0000, len: 0x1000 };
        let direct = LoadSpec { vaddr: 0xffff_8880_0000_0000, paddr: 0, len: 0x1000 };
        assert_eq!(phys_base(None, &[direct, text]), 0x200_0000);
        assert_eq!(phys_base(Some("PAGESIZE=4096\n"), &[direct]), 0);
    }

    #[test]
    fn reads_utsname_through_the_loads() {
        let mut bytes = vec![0u8; 0x2000];
        let uts = UtsName {
            sysname: "Linux".into(),
            nodename: "crashvisor".into(),
            release: "6.1.0".into(),
            version: "#1".into(),
            machine: "x86_64".into(),
            domainname: "(none)".into(),
        };
        bytes[0x1010..0x1010 + UTSNAME_LEN].copy_from_slice(&uts.encode());
        let memory = Buffer::new(0, bytes);
        let loads = [LoadSpec { vaddr: START_KERNEL_MAP + 0x1000, paddr: 0x1000, len: 0x1000 }];
        let info = format!(
            "OSRELEASE=9.9\nSYMBOL(init_uts_ns)={:x}\nOFFSET(uts_namespace.name)=16\n",
            START_KERNEL_MAP + 0x1000
        );
        assert_eq!(utsname(Some(&info), &loads, &memory), uts);
        // Not mapped (the name would run past the load): only the release.
        let info = format!(
            "OSRELEASE=9.9\nSYMBOL(init_uts_ns)={:x}\nOFFSET(uts_namespace.name)=3900\n",
            START_KERNEL_MAP + 0x1000
        );
        assert_eq!(utsname(Some(&info), &loads, &memory), UtsName { release: "9.9".into(), ..UtsName::default() });
        assert_eq!(utsname(None, &loads, &memory), UtsName::default());
    }
}
