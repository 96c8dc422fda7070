//! SMP: bringing up the application processors by INIT-SIPI-SIPI, stopping CPUs on panic, and
//! running a function on another CPU.

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crashvisor_abi::layout::AP_TRAMPOLINE_GPA;

use crate::arch::idt::vector;
use crate::arch::percpu::{self, MAX_CPUS};
use crate::arch::{apic, cpu, gdt, idt, paging, trampoline};
use crate::{mm, sched, time};

/// CPUs counted at boot (from CPUID, capped by `nr_cpus=`).
static POSSIBLE_CPUS: AtomicUsize = AtomicUsize::new(1);
/// The panicking CPU once it wants the others stopped, else `NO_CPU`.
static STOPPING_BY: AtomicU32 = AtomicU32::new(NO_CPU);
const NO_CPU: u32 = u32::MAX;
/// How long the boot CPU waits for an AP to check in.
const AP_TIMEOUT_NS: u64 = 2_000_000_000;

/// Number of CPUs the machine has (online or not).
pub fn possible_cpus() -> usize {
    POSSIBLE_CPUS.load(Ordering::Relaxed)
}

/// Logical processors the VMM advertises (CPUID.1:EBX[23:16]), capped at `MAX_CPUS` and `limit`.
pub fn count_cpus(limit: usize) -> usize {
    let advertised = ((cpu::cpuid(1, 0).ebx >> 16) & 0xff) as usize;
    let n = advertised.clamp(1, MAX_CPUS).min(limit.max(1));
    POSSIBLE_CPUS.store(n, Ordering::Relaxed);
    n
}

/// Starts CPUs 1..n; APIC ids equal CPU numbers (the VMM assigns them so).
pub fn boot_secondary_cpus() {
    let n = possible_cpus();
    if n <= 1 {
        return;
    }
    crate::pr_info!("smp: Bringing up secondary CPUs ...");
    let image = trampoline::image();
    let base = mm::phys_to_virt(AP_TRAMPOLINE_GPA) as *mut u8;
    // SAFETY: the page at AP_TRAMPOLINE_GPA is reserved for the trampoline (see boot memory
    // reservations) and mapped by the direct map; the copy stays within one page.
    unsafe { core::ptr::copy_nonoverlapping(image.as_ptr(), base, image.len()) };
    let slots = (base as usize + trampoline::data_offset()) as *mut u64;
    let mut booted = 1;
    #[allow(clippy::needless_range_loop)]
    // cpu_id is also the APIC id and the trampoline's argument
    for cpu_id in 1..n {
        let Some(stack) = mm::frame::alloc_pages(sched::STACK_SIZE / 4096) else {
            crate::pr_err!("smp: no memory for the stack of CPU {}", cpu_id);
            break;
        };
        // SAFETY: the four slots lie inside the copied trampoline; no AP is running it now (each
        // AP is waited for before the next start).
        unsafe {
            slots.write_volatile(paging::top_table_phys());
            slots.add(1).write_volatile(stack + sched::STACK_SIZE as u64);
            slots.add(2).write_volatile(cpu_id as u64);
            slots.add(3).write_volatile(ap_start as *const () as u64);
        }
        AP_STACKS[cpu_id].store(stack as usize, Ordering::Relaxed);
        apic::send_init(cpu_id as u32);
        apic::send_startup(cpu_id as u32, (AP_TRAMPOLINE_GPA >> 12) as u8);
        apic::send_startup(cpu_id as u32, (AP_TRAMPOLINE_GPA >> 12) as u8);
        let deadline = cpu::rdtsc() + time::ns_to_tsc(AP_TIMEOUT_NS);
        while !percpu::of(cpu_id).online.load(Ordering::Acquire) && cpu::rdtsc() < deadline {
            cpu::pause();
        }
        if percpu::of(cpu_id).online.load(Ordering::Acquire) {
            booted += 1;
        } else {
            crate::pr_err!("smpboot: do_boot_cpu failed(-1) to wakeup CPU#{}", cpu_id);
        }
    }
    crate::pr_info!("smp: Brought up 1 node, {} CPU{}", booted, if booted == 1 { "" } else { "s" });
}

static AP_STACKS: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];

/// First Rust code of an AP, on its own stack, in long mode with the kernel page table.
extern "C" fn ap_start(cpu_id: usize) -> ! {
    percpu::init(cpu_id, cpu_id as u32);
    gdt::init_cpu(cpu_id);
    idt::load();
    apic::init_local();
    let stack = AP_STACKS[cpu_id].load(Ordering::Relaxed) as u64;
    sched::init_idle(cpu_id, stack, sched::STACK_SIZE as u64);
    crate::kvmclock::init_cpu();
    percpu::of(cpu_id).online.store(true, Ordering::Release);
    sched::idle_loop()
}

/// Stops every other CPU with an NMI (Linux's `smp_send_stop` on panic).
pub fn stop_other_cpus() {
    if possible_cpus() <= 1 {
        return;
    }
    STOPPING_BY.store(percpu::cpu_id() as u32, Ordering::SeqCst);
    apic::send_nmi_all_but_self();
    let deadline = cpu::rdtsc() + time::ns_to_tsc(1_000_000_000);
    let me = percpu::cpu_id();
    while cpu::rdtsc() < deadline
        && (0..possible_cpus()).any(|c| c != me && percpu::of(c).online.load(Ordering::Relaxed))
    {
        cpu::pause();
    }
}

/// Whether an NMI on this CPU is the panic stop (then the CPU halts for good): another CPU
/// panicked and stops the others. The panicking CPU itself goes on (an operator's NMI on it is
/// just an NMI).
pub fn stop_requested() -> bool {
    let by = STOPPING_BY.load(Ordering::SeqCst);
    by != NO_CPU && by != percpu::cpu_id() as u32
}

/// Marks this CPU offline and halts it forever (NMIs stay blocked: the handler never returns).
pub fn stop_this_cpu() -> ! {
    percpu::this().online.store(false, Ordering::SeqCst);
    loop {
        cpu::hlt();
    }
}

type CallFn = fn(usize);
static CALL_FUNCTION: [crate::sync::SpinLock<Option<(CallFn, usize)>>; MAX_CPUS] =
    [const { crate::sync::SpinLock::new(None) }; MAX_CPUS];

/// Runs `f(arg)` on `cpu` from its call-function interrupt (or here, if `cpu` is this CPU).
pub fn call_on_cpu(cpu: usize, f: CallFn, arg: usize) {
    if cpu == percpu::cpu_id() {
        crate::sync::irq::without_interrupts(|| f(arg));
        return;
    }
    loop {
        let mut slot = CALL_FUNCTION[cpu].lock_irqsave();
        if slot.is_none() {
            *slot = Some((f, arg));
            break;
        }
        drop(slot);
        cpu::pause();
    }
    apic::send_ipi(percpu::of(cpu).apic_id.load(Ordering::Relaxed), vector::CALL_FUNCTION);
}

/// The call-function IPI handler.
pub fn call_function_interrupt() {
    let call = CALL_FUNCTION[percpu::cpu_id()].lock_irqsave().take();
    if let Some((f, arg)) = call {
        f(arg);
    }
}
