//! `panic()`, following Linux's `vpanic()` order and messages.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};

use core::cell::UnsafeCell;

use crashvisor_abi::platform::{Command, CrashReason, Detector, EventKind, PVPANIC_PANICKED, PVPANIC_PORT};
use crashvisor_klib::bytefmt::ByteWriter;

use crate::arch::{cpu, percpu};
use crate::kexec::crash;
use crate::printk::KERN_EMERG;
use crate::sync::irq;
use crate::{dumpstack, mm, platform, printk, reboot, sched, smp, taint, time};

const PANIC_CPU_INVALID: u32 = u32::MAX;
static PANIC_CPU: AtomicU32 = AtomicU32::new(PANIC_CPU_INVALID);
/// `kernel.panic`: seconds before rebooting after a panic (0 = never, < 0 = at once).
pub static PANIC_TIMEOUT: AtomicI64 = AtomicI64::new(0);
/// `kernel.panic_on_oops`.
pub static PANIC_ON_OOPS: AtomicBool = AtomicBool::new(false);

/// Sets `kernel.panic`.
pub fn set_panic_timeout(seconds: i64) {
    PANIC_TIMEOUT.store(seconds, Ordering::Relaxed);
}

/// `kernel.panic`.
pub fn panic_timeout() -> i64 {
    PANIC_TIMEOUT.load(Ordering::Relaxed)
}

/// Sets `kernel.panic_on_oops`.
pub fn set_panic_on_oops(on: bool) {
    PANIC_ON_OOPS.store(on, Ordering::Relaxed);
}

/// `kernel.panic_on_oops`.
pub fn panic_on_oops() -> bool {
    PANIC_ON_OOPS.load(Ordering::Relaxed)
}

/// `crash_kexec_post_notifiers`: run the panic notifiers before kdump (boot parameter).
pub static CRASH_KEXEC_POST_NOTIFIERS: AtomicBool = AtomicBool::new(false);
/// What is panicking the kernel, for the host's crash reason (a `Detector` value).
static DETECTOR: AtomicU32 = AtomicU32::new(Detector::None as u32);

static REASON_SENT: AtomicBool = AtomicBool::new(false);

/// `CrashReason::cpu` until a CPU goes down: tells a dump analyser there is no crash reason.
const NO_CRASH_CPU: u32 = u32::MAX;

struct ReasonCell(UnsafeCell<CrashReason>);
// SAFETY: written only by the CPU that wins REASON_SENT, once.
unsafe impl Sync for ReasonCell {}
static REASON: ReasonCell = ReasonCell(UnsafeCell::new(CrashReason::new(Detector::None, NO_CRASH_CPU, 0)));

/// The VMCOREINFO keys of the crash reason (the first crash's CPU, pid and message; `cpu` is
/// `u32::MAX` until then), so a dump analyser shows why the kernel went down.
pub fn write_vmcoreinfo(w: &mut dyn Write) -> fmt::Result {
    use core::mem::{offset_of, size_of};
    writeln!(w, "SYMBOL(crashvisor_crash_reason)={:x}", REASON.0.get() as u64)?;
    writeln!(w, "SIZE(crashvisor_crash_reason)={}", size_of::<CrashReason>())?;
    let fields = [
        ("cpu", offset_of!(CrashReason, cpu)),
        ("pid", offset_of!(CrashReason, pid)),
        ("message_len", offset_of!(CrashReason, message_len)),
        ("message", offset_of!(CrashReason, message)),
    ];
    for (field, offset) in fields {
        writeln!(w, "OFFSET(crashvisor_crash_reason.{field})={offset}")?;
    }
    Ok(())
}

/// Names what is about to panic the kernel (a detector, an oops, sysrq), for the host.
pub fn set_detector(detector: Detector) {
    DETECTOR.store(detector as u32, Ordering::Relaxed);
}

/// `panic()` on behalf of `detector`.
pub fn panic_with(detector: Detector, args: fmt::Arguments<'_>) -> ! {
    set_detector(detector);
    panic(args)
}

/// Linux's `nmi_panic()`: panic if no CPU is panicking yet; if another CPU is, stop here; if
/// this CPU already is (the panic came through here before), return.
pub fn nmi_panic(detector: Detector, args: fmt::Arguments<'_>) {
    match PANIC_CPU.load(Ordering::SeqCst) {
        PANIC_CPU_INVALID => panic_with(detector, args),
        owner if owner == percpu::cpu_id() as u32 => {}
        _ => self_stop(),
    }
}

/// Tells the host why the kernel is going down (beyond pvpanic's bit), and sends the panic event.
pub fn send_crash_reason(message: &str) {
    // Once per boot: the first CPU going down (a panic, or an oops entering kdump) owns it.
    if REASON_SENT.swap(true, Ordering::SeqCst) {
        return;
    }
    let task = sched::current();
    let cpu = percpu::cpu_id();
    let detector = Detector::from_raw(DETECTOR.load(Ordering::Relaxed)).unwrap_or(Detector::None);
    // SAFETY: REASON_SENT lets exactly one CPU, once per boot, past this point.
    let reason = unsafe { &mut *REASON.0.get() };
    *reason = CrashReason::new(detector, cpu as u32, task.pid);
    reason.set_comm(task.comm().as_bytes());
    reason.push_message(message.as_bytes());
    platform::command(Command::SetCrashReason, mm::kernel_virt_to_phys(REASON.0.get() as u64));
    platform::event(EventKind::Panic, cpu, 0);
}

/// Whether some CPU is panicking.
pub fn in_progress() -> bool {
    PANIC_CPU.load(Ordering::Relaxed) != PANIC_CPU_INVALID
}

/// Halts this CPU for good (another CPU owns the panic).
fn self_stop() -> ! {
    irq::disable();
    loop {
        cpu::hlt();
    }
}

/// Linux's `panic()`.
pub fn panic(args: fmt::Arguments<'_>) -> ! {
    irq::disable();
    crate::sync::preempt::disable();
    let me = percpu::cpu_id() as u32;
    if let Err(owner) = PANIC_CPU.compare_exchange(PANIC_CPU_INVALID, me, Ordering::SeqCst, Ordering::SeqCst) {
        if owner != me {
            self_stop();
        }
    }
    printk::console_verbose();
    printk::bust_lock();

    // Linux formats into a 1024-byte buffer.
    let mut buf = [0u8; 1024];
    let mut message = ByteWriter::new(&mut buf);
    let _ = message.write_fmt(args);
    let mut text = message.into_bytes();
    if let Some(stripped) = text.strip_suffix(b"\n") {
        text = stripped;
    }
    let text = core::str::from_utf8(text).unwrap_or("(invalid UTF-8)");
    crate::pr_emerg!("Kernel panic - not syncing: {}", text);
    if !taint::test(taint::TAINT_DIE) {
        dumpstack::dump_stack(KERN_EMERG);
    }
    send_crash_reason(text);
    let post_notifiers = CRASH_KEXEC_POST_NOTIFIERS.load(Ordering::Relaxed);
    if !post_notifiers {
        crash::crash_kexec(None);
    }
    if post_notifiers && crash::crash_kernel_loaded() {
        crash::shootdown_others(); // crash_smp_send_stop: the stopped CPUs' registers are kept
    } else {
        smp::stop_other_cpus();
    }
    cpu::outb(PVPANIC_PORT, PVPANIC_PANICKED);
    crate::pr_emerg!("Kernel Offset: disabled");
    if post_notifiers {
        crash::crash_kexec(None);
    }

    let timeout = panic_timeout();
    if timeout > 0 {
        crate::pr_emerg!("Rebooting in {} seconds..", timeout);
        time::delay_ns(timeout as u64 * 1_000_000_000);
    }
    if timeout != 0 {
        reboot::emergency_restart();
    }
    crate::pr_emerg!("---[ end Kernel panic - not syncing: {} ]---", text);
    loop {
        time::delay_ns(100_000_000);
    }
}

/// `panic!`-style macro for the kernel's `panic()`.
#[macro_export]
macro_rules! kpanic {
    ($($arg:tt)*) => { $crate::panic::panic(format_args!($($arg)*)) };
}
