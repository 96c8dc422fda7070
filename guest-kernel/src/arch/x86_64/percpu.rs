//! Per-CPU data: one block per CPU, reached through the GS base on its own CPU and by index
//! from any CPU (watchdogs and the crash path read other CPUs' blocks).
//!
//! The first fields have fixed offsets read with `gs:`-relative loads on hot paths.

use core::arch::asm;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, Ordering};

use crashvisor_abi::layout::MAX_VCPUS;

use super::cpu;
use crate::sched::task::Task;

/// Most CPUs the kernel supports.
pub const MAX_CPUS: usize = MAX_VCPUS;

const MSR_GS_BASE: u32 = 0xc000_0101;

/// The per-CPU block. Field order of the first five is relied on by the `gs:` accessors.
#[repr(C, align(64))]
pub struct PerCpu {
    self_ptr: AtomicPtr<PerCpu>,
    /// Logical CPU number.
    pub cpu: AtomicU32,
    preempt_count: AtomicI32,
    current: AtomicPtr<Task>,
    need_resched: AtomicBool,
    /// Local APIC id.
    pub apic_id: AtomicU32,
    /// Set once the CPU runs its idle loop.
    pub online: AtomicBool,
    /// Interrupt nesting depth (non-zero while in an interrupt handler).
    pub irq_depth: AtomicU32,
    /// NMI and double-fault nesting depth (Linux's `nmi_enter`).
    pub nmi_depth: AtomicU32,
    /// This CPU's idle task.
    pub idle: AtomicPtr<Task>,
}

impl PerCpu {
    const fn new() -> Self {
        Self {
            self_ptr: AtomicPtr::new(core::ptr::null_mut()),
            cpu: AtomicU32::new(0),
            preempt_count: AtomicI32::new(0),
            current: AtomicPtr::new(core::ptr::null_mut()),
            need_resched: AtomicBool::new(false),
            apic_id: AtomicU32::new(0),
            online: AtomicBool::new(false),
            irq_depth: AtomicU32::new(0),
            nmi_depth: AtomicU32::new(0),
            idle: AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    /// The task running on this CPU.
    pub fn current(&self) -> *mut Task {
        self.current.load(Ordering::Relaxed)
    }

    /// Sets the task running on this CPU (scheduler only).
    pub fn set_current(&self, task: *mut Task) {
        self.current.store(task, Ordering::Relaxed)
    }

    /// Asks this CPU to reschedule at its next preemption point.
    pub fn set_need_resched(&self, value: bool) {
        self.need_resched.store(value, Ordering::Relaxed)
    }
}

static PER_CPU: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];

/// The block of CPU `cpu` (any CPU may read it).
pub fn of(cpu: usize) -> &'static PerCpu {
    &PER_CPU[cpu]
}

/// Points this CPU's GS base at block `cpu`. Called first thing on every CPU.
pub fn init(cpu: usize, apic_id: u32) {
    let block = &PER_CPU[cpu];
    block.self_ptr.store(block as *const PerCpu as *mut PerCpu, Ordering::Relaxed);
    block.cpu.store(cpu as u32, Ordering::Relaxed);
    block.apic_id.store(apic_id, Ordering::Relaxed);
    // SAFETY: GS base points at this CPU's own static block, which lives forever; nothing else
    // uses GS in this kernel.
    unsafe { cpu::wrmsr(MSR_GS_BASE, block as *const PerCpu as u64) };
}

/// This CPU's block.
#[inline(always)]
pub fn this() -> &'static PerCpu {
    let p: *const PerCpu;
    // SAFETY: gs:0 holds this CPU's `self_ptr` once `init` ran, which happens before any other
    // kernel code on the CPU.
    unsafe { asm!("mov {}, gs:[0]", out(reg) p, options(nostack, readonly, preserves_flags)) };
    // SAFETY: `p` points into the static `PER_CPU` array.
    unsafe { &*p }
}

/// This CPU's number.
#[inline(always)]
pub fn cpu_id() -> usize {
    let id: u32;
    // SAFETY: gs:8 is `PerCpu::cpu` of this CPU (repr(C) layout above).
    unsafe { asm!("mov {:e}, gs:[8]", out(reg) id, options(nostack, readonly, preserves_flags)) };
    id as usize
}

/// Adds `delta` to this CPU's preemption count and returns the new value.
#[inline(always)]
pub fn preempt_count_add(delta: i32) -> i32 {
    let old: i32;
    // SAFETY: gs:12 is `PerCpu::preempt_count` of this CPU; `xadd` is atomic with respect to
    // interrupts on this CPU, and only this CPU writes it.
    unsafe {
        asm!("xadd gs:[12], {0:e}", inout(reg) delta => old, options(nostack));
    }
    old + delta
}

/// This CPU's preemption count.
#[inline(always)]
pub fn preempt_count() -> i32 {
    let v: i32;
    // SAFETY: gs:12 is `PerCpu::preempt_count` of this CPU.
    unsafe { asm!("mov {:e}, gs:[12]", out(reg) v, options(nostack, readonly, preserves_flags)) };
    v
}

/// The task running on this CPU.
#[inline(always)]
pub fn current() -> *mut Task {
    let t: *mut Task;
    // SAFETY: gs:16 is `PerCpu::current` of this CPU.
    unsafe { asm!("mov {}, gs:[16]", out(reg) t, options(nostack, readonly, preserves_flags)) };
    t
}

/// Whether this CPU should reschedule.
#[inline(always)]
pub fn need_resched() -> bool {
    let v: u8;
    // SAFETY: gs:24 is `PerCpu::need_resched` of this CPU.
    unsafe { asm!("mov {}, gs:[24]", out(reg_byte) v, options(nostack, readonly, preserves_flags)) };
    v != 0
}

/// Number of CPUs that are online.
pub fn online_count() -> usize {
    PER_CPU.iter().filter(|c| c.online.load(Ordering::Relaxed)).count()
}

/// The VMCOREINFO keys of the per-CPU blocks: the array, a block's size (the array's stride) and
/// where its current task pointer is, so a dump analyser finds each CPU's running task.
pub fn write_vmcoreinfo(w: &mut dyn Write) -> core::fmt::Result {
    writeln!(w, "SYMBOL(crashvisor_per_cpu)={:x}", PER_CPU.as_ptr() as u64)?;
    writeln!(w, "SIZE(per_cpu)={}", core::mem::size_of::<PerCpu>())?;
    writeln!(w, "OFFSET(per_cpu.current)={}", core::mem::offset_of!(PerCpu, current))
}

const _: () = {
    assert!(core::mem::offset_of!(PerCpu, cpu) == 8);
    assert!(core::mem::offset_of!(PerCpu, preempt_count) == 12);
    assert!(core::mem::offset_of!(PerCpu, current) == 16);
    assert!(core::mem::offset_of!(PerCpu, need_resched) == 24);
};
