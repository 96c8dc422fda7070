//! A vCPU's registers as Linux's `NT_PRSTATUS` note (336 bytes, `user_regs_struct` order), the
//! same format the guest's crash path writes, so gdb shows one thread per vCPU.

use crashvisor_klib::elfnote::{write_prstatus, PtRegs, UserRegs, CRASH_NOTE_BYTES, NOTE_HEADER_SIZE, PRSTATUS_SIZE};

use crate::vcpu::VcpuState;

/// `user_regs_struct` from KVM's registers.
pub fn user_regs(state: &VcpuState) -> UserRegs {
    let (r, s) = (&state.regs, &state.sregs);
    let regs = PtRegs {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        rbp: r.rbp,
        rbx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        rax: r.rax,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        orig_rax: u64::MAX, // not in a system call
        rip: r.rip,
        cs: u64::from(s.cs.selector),
        eflags: r.rflags,
        rsp: r.rsp,
        ss: u64::from(s.ss.selector),
    };
    UserRegs {
        regs,
        fs_base: s.fs.base,
        gs_base: s.gs.base,
        ds: u64::from(s.ds.selector),
        es: u64::from(s.es.selector),
        fs: u64::from(s.fs.selector),
        gs: u64::from(s.gs.selector),
    }
}

/// The `NT_PRSTATUS` descriptor of vCPU `id` (`pr_pid` = id + 1: distinct and non-zero, as the
/// guest's crash notes, so gdb keeps one thread per vCPU).
pub fn prstatus_desc(id: usize, state: &VcpuState) -> Vec<u8> {
    let mut note = [0u8; CRASH_NOTE_BYTES];
    write_prstatus(&mut note, id as u32 + 1, &user_regs(state).to_array());
    // The note is header (12) + "CORE\0" padded to 8 + the 336-byte descriptor.
    let desc_start = NOTE_HEADER_SIZE + 8;
    note[desc_start..desc_start + PRSTATUS_SIZE].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crashvisor_klib::elfnote::{prstatus_regs, REG_RIP, REG_RSP};

    #[test]
    fn prstatus_carries_the_pid_and_registers_in_linux_order() {
        let mut state = VcpuState::default();
        state.regs.rip = 0xffff_ffff_8100_1234;
        state.regs.rsp = 0xffff_c900_0000_8000;
        state.regs.r15 = 15;
        state.sregs.cs.selector = 0x10;
        state.sregs.gs.base = 0xffff_ffff_8200_0000;
        let desc = prstatus_desc(1, &state);
        let (pid, regs) = prstatus_regs(&desc).expect("a 336-byte descriptor");
        assert_eq!(pid, 2);
        assert_eq!((regs[REG_RIP], regs[REG_RSP], regs[0]), (state.regs.rip, state.regs.rsp, 15));
        assert_eq!((regs[17], regs[22]), (0x10, 0xffff_ffff_8200_0000));
    }
}
