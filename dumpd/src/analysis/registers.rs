//! Each CPU's registers at the crash, from its `NT_PRSTATUS` note (x86_64's 336-byte
//! `struct elf_prstatus`: `pr_pid` at 32, `pr_reg` at 112 in Linux's 27-register order).
//!
//! Which CPU a note belongs to: crashvisor's kernel writes `pr_pid` = CPU + 1 (so gdb shows one
//! thread per CPU), which survives a capture kernel dropping the notes of CPUs that never saved
//! their registers. When the pids do not follow that rule (distinct, from 1 to `MAX_VCPUS`; a
//! Linux dump has the tasks' pids, 0 on idle CPUs), notes are numbered in file order, as `crash`
//! does.

use crashvisor_abi::layout::MAX_VCPUS;
use serde::Serialize;

use super::u64_at;
use crate::elf::PRSTATUS_SIZE;
use crate::image::OwnedNote;

/// `elf_prstatus.pr_pid`.
const PR_PID_OFFSET: usize = 32;
/// `elf_prstatus.pr_reg`.
const PR_REG_OFFSET: usize = 112;
/// Registers in `pr_reg` (`ELF_NGREG`).
const NGREG: usize = 27;

/// `user_regs_struct`: the registers of one CPU, in Linux's order. Serialised as a map of
/// `0x` hexadecimal strings (JSON numbers lose precision above 2^53).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)] // the registers' own names
pub struct Registers {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

impl Registers {
    /// Parses `pr_reg` (27 little-endian u64s).
    fn parse(regs: &[u64; NGREG]) -> Self {
        let [r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax, rip, cs, eflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs] =
            *regs;
        Self {
            r15,
            r14,
            r13,
            r12,
            rbp,
            rbx,
            r11,
            r10,
            r9,
            r8,
            rax,
            rcx,
            rdx,
            rsi,
            rdi,
            orig_rax,
            rip,
            cs,
            eflags,
            rsp,
            ss,
            fs_base,
            gs_base,
            ds,
            es,
            fs,
            gs,
        }
    }

    /// Each register's name and value, in Linux's order.
    pub fn named(&self) -> [(&'static str, u64); NGREG] {
        let r = self;
        [
            ("r15", r.r15),
            ("r14", r.r14),
            ("r13", r.r13),
            ("r12", r.r12),
            ("rbp", r.rbp),
            ("rbx", r.rbx),
            ("r11", r.r11),
            ("r10", r.r10),
            ("r9", r.r9),
            ("r8", r.r8),
            ("rax", r.rax),
            ("rcx", r.rcx),
            ("rdx", r.rdx),
            ("rsi", r.rsi),
            ("rdi", r.rdi),
            ("orig_rax", r.orig_rax),
            ("rip", r.rip),
            ("cs", r.cs),
            ("eflags", r.eflags),
            ("rsp", r.rsp),
            ("ss", r.ss),
            ("fs_base", r.fs_base),
            ("gs_base", r.gs_base),
            ("ds", r.ds),
            ("es", r.es),
            ("fs", r.fs),
            ("gs", r.gs),
        ]
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
        let mut map = serializer.serialize_map(Some(NGREG))?;
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
        .filter(|n| n.is_prstatus() && n.desc.len() == PRSTATUS_SIZE)
        .map(|n| {
            let pid = u64_at(&n.desc, PR_PID_OFFSET).map_or(0, |v| v as u32);
            let regs: [u64; NGREG] =
                std::array::from_fn(|i| u64_at(&n.desc, PR_REG_OFFSET + 8 * i).unwrap_or_default());
            (pid, Registers::parse(&regs))
        })
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

    /// A 336-byte `NT_PRSTATUS` note with `pr_pid` and a few registers set.
    pub(crate) fn prstatus(pr_pid: u32, rip: u64, rsp: u64, rbp: u64) -> OwnedNote {
        let mut desc = vec![0u8; PRSTATUS_SIZE];
        desc[PR_PID_OFFSET..PR_PID_OFFSET + 4].copy_from_slice(&pr_pid.to_le_bytes());
        for (index, value) in [(4, rbp), (16, rip), (19, rsp)] {
            let at = PR_REG_OFFSET + 8 * index;
            desc[at..at + 8].copy_from_slice(&u64::to_le_bytes(value));
        }
        OwnedNote { name: b"CORE".to_vec(), n_type: 1, desc }
    }

    #[test]
    fn cpus_come_from_pr_pid_when_it_is_cpu_plus_one() {
        // CPU 0's note is missing (it never answered); CPU 2's comes first.
        let notes = [prstatus(3, 0x30, 0x31, 0x32), prstatus(2, 0x20, 0x21, 0x22)];
        let cpus = from_notes(&notes);
        assert_eq!(cpus.iter().map(|c| c.cpu).collect::<Vec<_>>(), [1, 2]);
        assert_eq!((cpus[0].regs.rip, cpus[0].regs.rsp, cpus[0].regs.rbp), (0x20, 0x21, 0x22));
    }

    #[test]
    fn linux_pids_number_cpus_in_file_order() {
        let mut short = prstatus(1, 0, 0, 0);
        short.desc.truncate(296);
        let notes = [prstatus(0, 1, 0, 0), short, prstatus(0, 2, 0, 0), prstatus(4242, 3, 0, 0)];
        let cpus = from_notes(&notes);
        assert_eq!(cpus.iter().map(|c| (c.cpu, c.regs.rip)).collect::<Vec<_>>(), [(0, 1), (1, 2), (2, 3)]);
        assert!(!cpus[0].regs.is_empty() && Registers::default().is_empty());
        let json = serde_json::to_value(cpus[0].regs).unwrap();
        assert_eq!(
            (json.as_object().unwrap().len(), &json["rip"], &json["rsp"]),
            (NGREG, &"0x1".into(), &"0x0".into())
        );
    }
}
