//! Each CPU's registers at the crash, from its `NT_PRSTATUS` note (x86_64's 336-byte
//! `struct elf_prstatus`: `pr_pid` at 32, `pr_reg` at 112 in Linux's 27-register order).
//!
//! Which CPU a note belongs to: crashvisor's kernel writes `pr_pid` = CPU + 1 (so gdb shows one
//! thread per CPU), which survives a capture kernel dropping the notes of CPUs that never saved
//! their registers. When the pids do not follow that rule (distinct, from 1 to `MAX_VCPUS`; a
//! Linux dump has the tasks' pids, 0 on idle CPUs), notes are numbered in file order, as `crash`
//! does.

use crashvisor_abi::layout::MAX_VCPUS;
use crashvisor_klib::elfnote::{prstatus_regs, ELF_NGREG, REG_RBP, REG_RIP, REG_RSP, USER_REGS_NAMES};
use serde::Serialize;

use crate::image::OwnedNote;

/// `user_regs_struct`: the registers of one CPU, in Linux's order. Serialised as a map of
/// `0x` hexadecimal strings (JSON numbers lose precision above 2^53).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Registers(pub [u64; ELF_NGREG]);

impl Registers {
    /// The instruction pointer.
    pub fn rip(&self) -> u64 {
        self.0[REG_RIP]
    }

    /// The stack pointer.
    pub fn rsp(&self) -> u64 {
        self.0[REG_RSP]
    }

    /// The frame pointer.
    pub fn rbp(&self) -> u64 {
        self.0[REG_RBP]
    }

    /// Each register's name and value, in Linux's order.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        USER_REGS_NAMES.into_iter().zip(self.0)
    }

    /// Whether the registers were never saved (an all-zero note: a CPU that did not answer the
    /// crash NMI).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Serialize for Registers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(ELF_NGREG))?;
        for (name, value) in self.named() {
            map.serialize_entry(name, &format_args!("{value:#x}"))?;
        }
        map.end()
    }
}

/// One CPU's crash note.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CpuRegisters {
    /// The CPU number.
    pub cpu: u32,
    /// `pr_pid` as written.
    pub pr_pid: u32,
    /// The registers.
    pub regs: Registers,
}

/// The CPUs' registers from the dump's `CORE`/`NT_PRSTATUS` notes, by CPU number. Notes of
/// another size than 336 bytes are skipped (gdb ignores them too).
pub fn from_notes(notes: &[OwnedNote]) -> Vec<CpuRegisters> {
    let parsed: Vec<(u32, Registers)> = notes
        .iter()
        .filter(|n| n.is_prstatus())
        .filter_map(|n| prstatus_regs(&n.desc).map(|(pid, regs)| (pid, Registers(regs))))
        .collect();
    let mut pids: Vec<u32> = parsed.iter().map(|(pid, _)| *pid).collect();
    pids.sort_unstable();
    pids.dedup();
    let cpu_plus_one = pids.len() == parsed.len() && pids.iter().all(|&pid| (1..=MAX_VCPUS as u32).contains(&pid));
    let mut cpus: Vec<CpuRegisters> = parsed
        .into_iter()
        .enumerate()
        .map(|(index, (pr_pid, regs))| {
            let cpu = if cpu_plus_one { pr_pid - 1 } else { index as u32 };
            CpuRegisters { cpu, pr_pid, regs }
        })
        .collect();
    cpus.sort_by_key(|c| c.cpu);
    cpus
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crashvisor_klib::elfnote::{PRSTATUS_PID_OFFSET, PRSTATUS_REG_OFFSET, PRSTATUS_SIZE};
    use crashvisor_klib::le::{put_u32, put_u64};

    /// A 336-byte `NT_PRSTATUS` note with `pr_pid` and a few registers set.
    pub(crate) fn prstatus(pr_pid: u32, rip: u64, rsp: u64, rbp: u64) -> OwnedNote {
        let mut desc = vec![0u8; PRSTATUS_SIZE];
        put_u32(&mut desc, PRSTATUS_PID_OFFSET, pr_pid);
        for (index, value) in [(4, rbp), (16, rip), (19, rsp)] {
            put_u64(&mut desc, PRSTATUS_REG_OFFSET + 8 * index, value);
        }
        OwnedNote { name: b"CORE".to_vec(), n_type: 1, desc }
    }

    #[test]
    fn cpus_come_from_pr_pid_when_it_is_cpu_plus_one() {
        // CPU 0's note is missing (it never answered); CPU 2's comes first.
        let notes = [prstatus(3, 0x30, 0x31, 0x32), prstatus(2, 0x20, 0x21, 0x22)];
        let cpus = from_notes(&notes);
        assert_eq!(cpus.iter().map(|c| c.cpu).collect::<Vec<_>>(), [1, 2]);
        assert_eq!((cpus[0].regs.rip(), cpus[0].regs.rsp(), cpus[0].regs.rbp()), (0x20, 0x21, 0x22));
    }

    #[test]
    fn linux_pids_number_cpus_in_file_order() {
        let mut short = prstatus(1, 0, 0, 0);
        short.desc.truncate(296);
        let notes = [prstatus(0, 1, 0, 0), short, prstatus(0, 2, 0, 0), prstatus(4242, 3, 0, 0)];
        let cpus = from_notes(&notes);
        assert_eq!(cpus.iter().map(|c| (c.cpu, c.regs.rip())).collect::<Vec<_>>(), [(0, 1), (1, 2), (2, 3)]);
        assert!(!cpus[0].regs.is_empty() && Registers::default().is_empty());
        let json = serde_json::to_value(cpus[0].regs).unwrap();
        assert_eq!(
            (json.as_object().unwrap().len(), &json["rip"], &json["rsp"]),
            (ELF_NGREG, &"0x1".into(), &"0x0".into())
        );
    }
}
