//! What a host-side vmcore holds: a `NT_PRSTATUS` per vCPU, the guest's VMCOREINFO, and
//! `PT_LOAD`s with the capture kernel's conventions — the kernel image at its run-time
//! addresses, every RAM range at its direct-map address, and the vmalloc area (task stacks) at
//! the addresses the guest's page tables give — so the same tools read both kinds of vmcore.

use crashvisor_abi::layout::{KERNEL_MAP, PAGE_OFFSET};
use crashvisor_klib::elfnote::{NoteIter, NT_PRSTATUS, VMCOREINFO_BYTES, VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_SIZE};
use dumpd::elf::build::{LoadSpec, NoteSpec};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::pagewalk::{self, Mapping};
use super::regs::prstatus_desc;
use crate::vcpu::VcpuState;

/// The kernel image's mapping: 1 GiB from `__START_KERNEL_map` (Linux's `KERNEL_IMAGE_SIZE`).
const KERNEL_MAP_SIZE: u64 = 1 << 30;
/// Linux's x86-64 vmalloc area (4-level paging), where the guest's task stacks live.
const VMALLOC_START: u64 = 0xffff_c900_0000_0000;
const VMALLOC_END: u64 = 0xffff_e900_0000_0000;
/// CR0.PG and EFER.LMA: the vCPU runs with 4-level paging.
const CR0_PG: u64 = 1 << 31;
const EFER_LMA: u64 = 1 << 10;

/// The notes and loads of one snapshot, owned.
#[derive(Debug)]
pub struct SnapshotLayout {
    /// One `NT_PRSTATUS` descriptor per vCPU, in vCPU order.
    pub prstatus: Vec<Vec<u8>>,
    /// The VMCOREINFO text, if the guest published one.
    pub vmcoreinfo: Option<Vec<u8>>,
    /// The `PT_LOAD`s.
    pub loads: Vec<LoadSpec>,
}

impl SnapshotLayout {
    /// The notes, borrowed, in file order.
    pub fn notes(&self) -> Vec<NoteSpec<'_>> {
        let mut notes: Vec<NoteSpec<'_>> =
            self.prstatus.iter().map(|desc| NoteSpec { name: b"CORE", n_type: NT_PRSTATUS, desc }).collect();
        if let Some(text) = &self.vmcoreinfo {
            notes.push(NoteSpec { name: VMCOREINFO_NOTE_NAME, n_type: 0, desc: text });
        }
        notes
    }
}

/// Reads the VMCOREINFO note the guest published at `gpa` and returns its text, with
/// `CRASHTIME=` (`crash_unix_secs`) appended when the guest did not write one. `None` if
/// there is no valid note there.
pub fn read_vmcoreinfo(memory: &GuestMemoryMmap, gpa: u64, crash_unix_secs: u64) -> Option<Vec<u8>> {
    let mut bytes = vec![0u8; VMCOREINFO_NOTE_SIZE];
    memory.read_slice(&mut bytes, GuestAddress(gpa)).ok()?;
    let note = NoteIter::new(&bytes).next().filter(|n| n.name == VMCOREINFO_NOTE_NAME && n.n_type == 0)?;
    if note.desc.len() > VMCOREINFO_BYTES || std::str::from_utf8(note.desc).is_err() {
        return None;
    }
    let mut text = note.desc.to_vec();
    if !text.split(|&b| b == b'\n').any(|line| line.starts_with(b"CRASHTIME=")) {
        if !text.is_empty() && !text.ends_with(b"\n") {
            text.push(b'\n');
        }
        text.extend_from_slice(format!("CRASHTIME={crash_unix_secs}\n").as_bytes());
    }
    Some(text)
}

fn load(m: &Mapping) -> LoadSpec {
    LoadSpec { vaddr: m.vaddr, paddr: m.paddr, len: m.len }
}

/// Lays out a snapshot of `memory` with `vcpus`' registers and the VMCOREINFO text.
pub fn layout(memory: &GuestMemoryMmap, vcpus: &[VcpuState], vmcoreinfo: Option<Vec<u8>>) -> SnapshotLayout {
    let prstatus = vcpus.iter().enumerate().map(|(id, state)| prstatus_desc(id, state)).collect();
    // Page tables as the boot CPU sees them (the kernel's half is shared by every CPU).
    let paging = vcpus.first().filter(|s| s.sregs.cr0 & CR0_PG != 0 && s.sregs.efer & EFER_LMA != 0);
    let walk = |start, end| paging.map(|s| pagewalk::walk(memory, s.sregs.cr3, start, end)).unwrap_or_default();
    // Only mappings of RAM: a guest may map anything, and the writer reads what loads name.
    let in_ram = |m: &Mapping| memory.check_range(GuestAddress(m.paddr), m.len as usize);

    let mut loads: Vec<LoadSpec> =
        walk(KERNEL_MAP, KERNEL_MAP + KERNEL_MAP_SIZE).iter().filter(|m| in_ram(m)).map(load).collect();
    loads.extend(memory.iter().map(|region| LoadSpec {
        vaddr: PAGE_OFFSET + region.start_addr().0,
        paddr: region.start_addr().0,
        len: region.len(),
    }));
    loads.extend(walk(VMALLOC_START, VMALLOC_END).iter().filter(|m| in_ram(m)).map(load));
    SnapshotLayout { prstatus, vmcoreinfo, loads }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crashvisor_klib::elfnote::write_vmcoreinfo_note;

    #[test]
    fn vmcoreinfo_is_read_validated_and_given_a_crashtime() {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut note = [0u8; VMCOREINFO_NOTE_SIZE];
        write_vmcoreinfo_note(&mut note, b"OSRELEASE=6.18.0\nPAGESIZE=4096\n");
        memory.write_slice(&note, GuestAddress(0x1000)).unwrap();
        let text = read_vmcoreinfo(&memory, 0x1000, 42).unwrap();
        assert_eq!(text, b"OSRELEASE=6.18.0\nPAGESIZE=4096\nCRASHTIME=42\n");

        write_vmcoreinfo_note(&mut note, b"OSRELEASE=6.18.0\nCRASHTIME=7\n");
        memory.write_slice(&note, GuestAddress(0x1000)).unwrap();
        assert_eq!(read_vmcoreinfo(&memory, 0x1000, 42).unwrap(), b"OSRELEASE=6.18.0\nCRASHTIME=7\n");

        // Not a note, another note's name, out of RAM.
        assert!(read_vmcoreinfo(&memory, 0x8000, 42).is_none());
        memory.write_slice(b"CORE", GuestAddress(0x1000 + 12)).unwrap();
        assert!(read_vmcoreinfo(&memory, 0x1000, 42).is_none());
        assert!(read_vmcoreinfo(&memory, 0xf000, 42).is_none());
    }

    #[test]
    fn without_paging_the_layout_is_ram_at_direct_map_addresses() {
        let memory =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000), (GuestAddress(0x20000), 0x1000)]).unwrap();
        let layout = layout(&memory, &[VcpuState::default(), VcpuState::default()], None);
        assert_eq!(layout.prstatus.len(), 2);
        assert_eq!(
            layout.loads,
            [
                LoadSpec { vaddr: PAGE_OFFSET, paddr: 0, len: 0x10000 },
                LoadSpec { vaddr: PAGE_OFFSET + 0x20000, paddr: 0x20000, len: 0x1000 },
            ]
        );
        assert_eq!(layout.notes().len(), 2);
    }
}
