//! The crash path's state (Linux's `crash_notes`, `vmcoreinfo_note`, `crash_save_cpu` and the
//! NMI shootdown of `kdump_nmi_shootdown_cpus`).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crashvisor_klib::elfnote::{
    write_prstatus, write_vmcoreinfo_note, UserRegs, CRASH_NOTE_BYTES, VMCOREINFO_NOTE_SIZE,
};

use super::vmcoreinfo::{self, VMCOREINFO_BYTES};
use crate::arch::idt::PtRegs;
use crate::arch::percpu::{self, MAX_CPUS};
use crate::arch::{apic, cpu, gdt};
use crate::{mm, smp, time};

#[repr(C, align(64))]
struct Notes(UnsafeCell<[[u8; CRASH_NOTE_BYTES]; MAX_CPUS]>);
// SAFETY: each CPU writes only its own note, once, while the machine is crashing.
unsafe impl Sync for Notes {}
static CRASH_NOTES: Notes = Notes(UnsafeCell::new([[0; CRASH_NOTE_BYTES]; MAX_CPUS]));

#[repr(C, align(4096))]
struct VmcoreinfoNote(UnsafeCell<[u8; VMCOREINFO_NOTE_SIZE]>);
// SAFETY: written at boot and once more by the crashing CPU, with every other CPU stopped.
unsafe impl Sync for VmcoreinfoNote {}
static VMCOREINFO_NOTE: VmcoreinfoNote = VmcoreinfoNote(UnsafeCell::new([0; VMCOREINFO_NOTE_SIZE]));

/// The crashing CPU while it stops the others (each saves its registers and halts), else
/// `NO_CPU`.
static SHOOTDOWN_BY: AtomicU32 = AtomicU32::new(NO_CPU);
const NO_CPU: u32 = u32::MAX;
/// CPUs whose registers are saved (bit per CPU).
static SAVED: AtomicU64 = AtomicU64::new(0);

/// Physical address of CPU `cpu`'s crash note buffer (`/sys/devices/system/cpu/cpuN/crash_notes`).
pub fn crash_note_phys(cpu: usize) -> u64 {
    // SAFETY: only the address of the static's element is taken.
    mm::kernel_virt_to_phys(unsafe { (*CRASH_NOTES.0.get())[cpu].as_ptr() } as u64)
}

/// Physical address of the VMCOREINFO note (`/sys/kernel/vmcoreinfo`).
pub fn vmcoreinfo_note_phys() -> u64 {
    mm::kernel_virt_to_phys(VMCOREINFO_NOTE.0.get() as u64)
}

/// Builds the VMCOREINFO note (Linux's subsys_initcall). Boot CPU, once the allocators and the
/// frame bitmap exist.
pub fn init() {
    let mut text = [0u8; VMCOREINFO_BYTES];
    let len = vmcoreinfo::write_at_boot(&mut text);
    // SAFETY: boot CPU, before any crash can happen; nothing else accesses the note now.
    write_vmcoreinfo_note(unsafe { &mut *VMCOREINFO_NOTE.0.get() }, &text[..len]);
    // The host copies it into host-side vmcores.
    crate::platform::command(crashvisor_abi::platform::Command::SetVmcoreinfo, vmcoreinfo_note_phys());
}

/// `crash_save_vmcoreinfo`: rebuild the note with `CRASHTIME=` (the crashing CPU, others stopped).
pub fn save_vmcoreinfo() {
    let mut text = [0u8; VMCOREINFO_BYTES];
    let len = vmcoreinfo::write_at_crash(&mut text);
    // SAFETY: only the crashing CPU runs kernel code now.
    write_vmcoreinfo_note(unsafe { &mut *VMCOREINFO_NOTE.0.get() }, &text[..len]);
}

/// `user_regs_struct` from interrupt registers: `pt_regs`, then the live segment bases and
/// selectors.
fn user_regs(regs: &PtRegs) -> UserRegs {
    UserRegs {
        regs: *regs,
        fs_base: cpu::rdmsr(0xc000_0100),
        gs_base: cpu::rdmsr(0xc000_0101),
        ds: u64::from(gdt::KERNEL_DS),
        es: u64::from(gdt::KERNEL_DS),
        fs: 0,
        gs: 0,
    }
}

/// `crash_save_cpu`: this CPU's registers into its crash note. `pr_pid` is the CPU number + 1:
/// distinct and non-zero, so gdb shows one thread per CPU (Linux writes the task's pid, 0 on
/// idle CPUs, and gdb then merges them).
pub fn save_cpu(regs: &PtRegs) {
    let cpu = percpu::cpu_id();
    // SAFETY: each CPU writes only its own note, once, while crashing.
    let note = unsafe { &mut (*CRASH_NOTES.0.get())[cpu] };
    write_prstatus(note, cpu as u32 + 1, &user_regs(regs).to_array());
    SAVED.fetch_or(1 << cpu, Ordering::SeqCst);
}

/// Whether another CPU is crashing and stopping this one (checked first thing in the NMI
/// handler). An NMI on the crashing CPU itself — an operator's, say — is not the shootdown
/// (Linux's `crash_nmi_callback` returns at once there): it must not halt the CPU that is
/// about to start the capture kernel.
pub fn in_shootdown() -> bool {
    let by = SHOOTDOWN_BY.load(Ordering::SeqCst);
    by != NO_CPU && by != percpu::cpu_id() as u32
}

/// NMI handler side of the shootdown: save this CPU's registers, then halt for good.
pub fn shootdown_this_cpu(regs: &PtRegs) -> ! {
    save_cpu(regs);
    percpu::this().online.store(false, Ordering::SeqCst);
    loop {
        cpu::hlt();
    }
}

/// `kdump_nmi_shootdown_cpus`: NMI every other CPU and wait up to 1 s for their registers.
pub fn shootdown_others() {
    let me = percpu::cpu_id();
    let others: u64 = (0..smp::possible_cpus())
        .filter(|&c| c != me && percpu::of(c).online.load(Ordering::Relaxed))
        .fold(0, |mask, c| mask | 1 << c);
    if others == 0 {
        return;
    }
    SHOOTDOWN_BY.store(me as u32, Ordering::SeqCst);
    apic::send_nmi_all_but_self();
    let deadline = cpu::rdtsc() + time::ns_to_tsc(1_000_000_000);
    while SAVED.load(Ordering::SeqCst) & others != others && cpu::rdtsc() < deadline {
        cpu::pause();
    }
}

/// The registers of the caller, for a crash without an exception frame (Linux's
/// `crash_setup_regs` with no regs given).
#[inline(always)]
pub fn current_regs() -> PtRegs {
    let (rbx, rbp, rsp, r12, r13, r14, r15, rip, rflags): (u64, u64, u64, u64, u64, u64, u64, u64, u64);
    // SAFETY: reads registers and the current instruction address; writes nothing.
    unsafe {
        core::arch::asm!(
            "mov {rbx}, rbx", "mov {rbp}, rbp", "mov {rsp}, rsp", "mov {r12}, r12", "mov {r13}, r13",
            "mov {r14}, r14", "mov {r15}, r15", "lea {rip}, [rip]", "pushfq", "pop {fl}",
            rbx = out(reg) rbx, rbp = out(reg) rbp, rsp = out(reg) rsp, r12 = out(reg) r12,
            r13 = out(reg) r13, r14 = out(reg) r14, r15 = out(reg) r15, rip = out(reg) rip, fl = out(reg) rflags,
        )
    };
    PtRegs {
        rbx,
        rbp,
        rsp,
        r12,
        r13,
        r14,
        r15,
        rip,
        eflags: rflags,
        cs: u64::from(gdt::KERNEL_CS),
        ss: u64::from(gdt::KERNEL_DS),
        orig_rax: u64::MAX,
        ..PtRegs::default()
    }
}

/// Per CPU: registers a detector or oops wants the crash note to show (the interrupted code
/// rather than the panic path), set just before it panics.
static CRASH_REGS: crate::sync::SpinLock<[Option<PtRegs>; MAX_CPUS]> = crate::sync::SpinLock::new([None; MAX_CPUS]);
/// Only one CPU enters the crash kernel (Linux's `kexec_trylock`).
static CRASHING: AtomicBool = AtomicBool::new(false);

/// Records the registers this CPU's crash note should carry if it panics now.
pub fn set_regs(regs: &PtRegs) {
    if let Some(mut slot) = CRASH_REGS.try_lock_irqsave() {
        slot[percpu::cpu_id()] = Some(*regs);
    }
}

/// Whether a crash kernel is loaded (Linux's `kexec_crash_image`).
pub fn crash_kernel_loaded() -> bool {
    super::load::loaded(super::load::Kind::Crash)
}

/// Linux's `__crash_kexec`: save VMCOREINFO and every CPU's registers, stop the other CPUs,
/// and enter the capture kernel. Returns only when no crash kernel is loaded.
pub fn crash_kexec(regs: Option<&PtRegs>) {
    if !crash_kernel_loaded() || CRASHING.swap(true, Ordering::SeqCst) {
        return;
    }
    crate::sync::irq::disable();
    let recorded = CRASH_REGS.try_lock_irqsave().and_then(|slot| slot[percpu::cpu_id()]);
    let regs = regs.copied().or(recorded).unwrap_or_else(current_regs);
    save_vmcoreinfo();
    shootdown_others();
    save_cpu(&regs);
    super::load::update_elfcorehdr();
    super::load::exec_crash();
    CRASHING.store(false, Ordering::SeqCst);
}
