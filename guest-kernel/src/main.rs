//! The crashvisor guest kernel: a small SMP x86_64 kernel that carries Linux's crash machinery.
//!
//! Boot order (`kernel_main`) follows Linux's `start_kernel` in miniature: per-CPU data and
//! clock, console, command line, memory, traps and interrupt controllers, the scheduler, the
//! other CPUs, then the first task (the shell) while the boot CPU becomes idle.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

mod arch;
mod bug;
mod console;
mod control;
mod dumpstack;
mod hung_task;
mod inject;
mod kallsyms;
mod kexec;
mod kvmclock;
mod list;
mod lkdtm;
mod mm;
mod nmi;
mod oops;
mod panic;
mod params;
mod platform;
mod printk;
mod procfs;
mod reboot;
mod sched;
mod serial;
mod setup;
mod shell;
mod smp;
mod sync;
mod sysctl;
mod sysfs;
mod sysrq;
mod taint;
mod time;
mod ubsan;
mod uts;
mod warn;
mod watchdog;

use arch::boot::BOOT_STACK_SIZE;
use arch::{apic, cpu, gdt, idt, percpu};
use crashvisor_abi::platform::{Progress, PLATFORM_PROGRESS};
use crashvisor_abi::serial::{COM1_IRQ, COM2_IRQ};
use sched::task::Policy;

extern "C" {
    static boot_stack_top: u8;
}

/// The Rust entry point, called by `start64` on the boot stack with the PVH start-info address
/// and the physical load offset.
#[no_mangle]
extern "C" fn kernel_main(start_info: u64, phys_base: u64) -> ! {
    mm::set_phys_base(phys_base);
    percpu::init(0, cpu::cpuid(1, 0).ebx >> 24);
    // Descriptor tables first (static memory only): an NMI can arrive at any moment, for
    // instance in a capture kernel booting while the host still sends them.
    gdt::init_cpu(0);
    idt::init();
    idt::load();
    time::init();
    console::init();
    setup::save_cmdline(start_info);
    params::apply();
    mm::slab::init();
    pr_notice!("Linux version {} (crashvisor guest kernel) {}", uts::RELEASE, uts::VERSION);
    pr_info!("Command line: {}", params::cmdline().as_str());
    if !apic::x2apic_supported() {
        kpanic!("this kernel needs x2APIC (CPUID.1:ECX[21]); the virtual CPU lacks it");
    }
    if !setup::memory(start_info) {
        kpanic!("cannot set up memory from the PVH boot data");
    }
    kallsyms::init();
    pr_info!("tsc: Detected {}.{:03} MHz processor", time::tsc_khz() / 1000, time::tsc_khz() % 1000);

    apic::disable_legacy_pic();
    apic::init_local();
    for irq in [COM1_IRQ, COM2_IRQ] {
        apic::route_isa_irq(irq as u8, arch::idt::vector::ISA_IRQ_BASE + irq as u8, apic::id());
    }
    pr_info!("x2apic enabled");

    // SAFETY: only the address of the boot stack's top is taken.
    let stack_top = unsafe { &boot_stack_top as *const u8 as u64 };
    sched::init_idle(0, stack_top - BOOT_STACK_SIZE as u64, BOOT_STACK_SIZE as u64);
    kvmclock::init_cpu();
    percpu::of(0).online.store(true, core::sync::atomic::Ordering::Release);
    smp::count_cpus(params::cpu_limit());
    smp::boot_secondary_cpus();
    if smp::possible_cpus() == 1 {
        pr_info!("smp: Brought up 1 node, 1 CPU");
    }
    arch::paging::drop_identity_map();
    cpu::outb(PLATFORM_PROGRESS, Progress::AllCpusOnline as u8);
    let total = setup::MEMORY_MAP.lock_irqsave().as_ref().map_or(0, |m| m.total_ram()) / 1024;
    pr_info!("Memory: {}K/{}K available", mm::frame::free_count() * 4, total);

    console::enable_rx_interrupt();
    sched::spawn("sh", Policy::Normal, Some(0), kernel_init, 0);
    sched::spawn("kthreadd", Policy::Normal, Some(0), sched::kthreadd, 0);
    kexec::crash::init();
    watchdog::init();
    hung_task::init();
    control::init();
    sysctl::go_live();
    if kexec::capture::elfcorehdr().is_some() {
        sched::spawn("kdump", Policy::Normal, None, kexec::capture::run, 0);
    } else {
        kexec::kdump::init();
    }
    sched::idle_loop()
}

/// pid 1 (Linux's `kernel_init`): the initcalls that come last, the end of init (read-only
/// data becomes read-only), then the init process — the shell.
fn kernel_init(_: usize) {
    lkdtm::init();
    arch::kernel_map::mark_readonly();
    INIT_DONE.store(true, core::sync::atomic::Ordering::Release);
    INIT_WAITERS.wake_all();
    pr_info!("Run /bin/sh as init process");
    shell::main(0);
}

/// Whether `kernel_init` has reached the end of init, where Linux starts user space.
static INIT_DONE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
static INIT_WAITERS: sched::wait::WaitQueue = sched::wait::WaitQueue::new();

/// Sleeps until the end of init: the control thread says hello (the host's "the guest is up")
/// only then, so nothing the host asks runs before read-only data is read-only.
pub fn wait_for_init() {
    INIT_WAITERS.wait_interruptible(|| INIT_DONE.load(core::sync::atomic::Ordering::Acquire));
}

#[panic_handler]
fn rust_panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if let Some(location) = info.location() {
        pr_emerg!("------------[ cut here ]------------");
        pr_emerg!("kernel BUG at {}:{}!", location.file(), location.line());
    }
    panic::panic(format_args!("{}", info.message()))
}
