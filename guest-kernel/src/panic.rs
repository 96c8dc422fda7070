//! `panic()`, following Linux's `vpanic()` order and messages.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};

use crashvisor_abi::platform::{PVPANIC_PANICKED, PVPANIC_PORT};

use crate::arch::{cpu, percpu};
use crate::printk::KERN_EMERG;
use crate::sync::irq;
use crate::{dumpstack, printk, reboot, smp, taint, time};

const PANIC_CPU_INVALID: u32 = u32::MAX;
static PANIC_CPU: AtomicU32 = AtomicU32::new(PANIC_CPU_INVALID);
/// `kernel.panic`: seconds before rebooting after a panic (0 = never, < 0 = at once).
static PANIC_TIMEOUT: AtomicI64 = AtomicI64::new(0);
/// `kernel.panic_on_oops`.
static PANIC_ON_OOPS: AtomicBool = AtomicBool::new(false);

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

/// Whether some CPU is panicking.
pub fn in_progress() -> bool {
    PANIC_CPU.load(Ordering::Relaxed) != PANIC_CPU_INVALID
}

/// Panic message buffer (Linux formats into a 1024-byte buffer).
struct Message {
    buf: [u8; 1024],
    len: usize,
}

impl Write for Message {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
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
    if let Err(owner) =
        PANIC_CPU.compare_exchange(PANIC_CPU_INVALID, me, Ordering::SeqCst, Ordering::SeqCst)
    {
        if owner != me {
            self_stop();
        }
    }
    printk::console_verbose();
    printk::bust_lock();

    let mut message = Message {
        buf: [0; 1024],
        len: 0,
    };
    let _ = message.write_fmt(args);
    let mut text = &message.buf[..message.len];
    if let Some(stripped) = text.strip_suffix(b"\n") {
        text = stripped;
    }
    let text = core::str::from_utf8(text).unwrap_or("(invalid UTF-8)");
    crate::pr_emerg!("Kernel panic - not syncing: {}", text);
    if !taint::test(taint::TAINT_DIE) {
        dumpstack::dump_stack(KERN_EMERG);
    }
    smp::stop_other_cpus();
    cpu::outb(PVPANIC_PORT, PVPANIC_PANICKED);
    crate::pr_emerg!("Kernel Offset: disabled");

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
