//! LKDTM, Linux's kernel dump test module (`drivers/misc/lkdtm/core.c`): the crash types of
//! `crashvisor_abi::lkdtm` this kernel supports, run directly (`DIRECT`) or when a crash point
//! is hit for the `cpoint_count`th time, in the context that hits it.
//!
//! Interfaces, as in Linux: the files of `/sys/kernel/debug/provoke-crash/` (the shell's
//! `echo TYPE > .../DIRECT`, `cat` lists the types), the module parameters as boot parameters
//! (`lkdtm.cpoint_name= lkdtm.cpoint_type= lkdtm.cpoint_count= lkdtm.recur_count=`) and under
//! `/sys/module/lkdtm/parameters/`; and the control channel's `inject lkdtm=`.

#![allow(non_snake_case)] // the crash types' functions carry LKDTM's names, as in Linux traces

mod bugs;
mod heap;
mod perms;
mod stack;

use alloc::string::String;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};

use crashvisor_abi::lkdtm::{CrashPoint, CrashType, Support, DEFAULT_CPOINT_COUNT};
use crashvisor_klib::lkdtm::{BootParams, CrashCount};

use crate::arch::percpu::{self, MAX_CPUS};
use crate::sync::SpinLock;

/// `pr_info!` with LKDTM's `pr_fmt` (`lkdtm: `).
macro_rules! lkdtm_info {
    ($($arg:tt)*) => { $crate::pr_info!("lkdtm: {}", format_args!($($arg)*)) };
}
/// `pr_err!` with LKDTM's `pr_fmt`.
macro_rules! lkdtm_err {
    ($($arg:tt)*) => { $crate::pr_err!("lkdtm: {}", format_args!($($arg)*)) };
}
/// `pr_warn!` with LKDTM's `pr_fmt`.
macro_rules! lkdtm_warn {
    ($($arg:tt)*) => { $crate::pr_warn!("lkdtm: {}", format_args!($($arg)*)) };
}
pub(crate) use {lkdtm_err, lkdtm_info};

/// `lkdtm_kernel_info`: how LKDTM names this kernel in its "expected config" lines.
const KERNEL_INFO: &str = "kernel (6.18.0-crashvisor x86_64)";

/// Linux's `pr_expected_config(kconfig)` for an option this kernel is built without.
fn expected_without(kconfig: &str) {
    lkdtm_warn!("This is probably expected, since this {} was built *without* {}=y", KERNEL_INFO, kconfig);
}

/// Why a request to LKDTM is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LkdtmError {
    /// No crash type has this name (Linux: `-EINVAL`).
    UnknownType,
    /// A crash type this kernel does not run, and why.
    UnsupportedType(&'static str),
    /// No crash point has this name.
    UnknownPoint,
    /// A crash point this kernel has no counterpart for, and why.
    UnsupportedPoint(&'static str),
}

/// The crash type named `name`, if this kernel runs it; an unsupported one says why on the
/// console.
pub fn find_crashtype(name: &str) -> Result<CrashType, LkdtmError> {
    let kind = CrashType::from_name(name).ok_or(LkdtmError::UnknownType)?;
    match kind.support() {
        Support::Supported(_) => Ok(kind),
        Support::Unsupported(reason) => {
            lkdtm_err!("{} is not supported by this kernel: {}", kind, reason);
            Err(LkdtmError::UnsupportedType(reason))
        }
    }
}

/// The function that runs `kind`, for the supported types.
fn action(kind: CrashType) -> Option<fn()> {
    use CrashType::*;
    let f: fn() = match kind {
        PANIC => bugs::lkdtm_PANIC,
        PANIC_STOP_IRQOFF => bugs::lkdtm_PANIC_STOP_IRQOFF,
        PANIC_IN_HARDIRQ => bugs::lkdtm_PANIC_IN_HARDIRQ,
        BUG => bugs::lkdtm_BUG,
        BUG_IN_HARDIRQ => bugs::lkdtm_BUG_IN_HARDIRQ,
        WARNING => bugs::lkdtm_WARNING,
        WARNING_MESSAGE => bugs::lkdtm_WARNING_MESSAGE,
        EXCEPTION => bugs::lkdtm_EXCEPTION,
        LOOP => bugs::lkdtm_LOOP,
        EXHAUST_STACK => stack::lkdtm_EXHAUST_STACK,
        CORRUPT_STACK => stack::lkdtm_CORRUPT_STACK,
        CORRUPT_STACK_STRONG => stack::lkdtm_CORRUPT_STACK_STRONG,
        REPORT_STACK => stack::lkdtm_REPORT_STACK,
        UNALIGNED_LOAD_STORE_WRITE => bugs::lkdtm_UNALIGNED_LOAD_STORE_WRITE,
        SOFTLOCKUP => bugs::lkdtm_SOFTLOCKUP,
        HARDLOCKUP => bugs::lkdtm_HARDLOCKUP,
        SMP_CALL_LOCKUP => bugs::lkdtm_SMP_CALL_LOCKUP,
        SPINLOCKUP => bugs::lkdtm_SPINLOCKUP,
        HUNG_TASK => bugs::lkdtm_HUNG_TASK,
        OVERFLOW_SIGNED => bugs::lkdtm_OVERFLOW_SIGNED,
        OVERFLOW_UNSIGNED => bugs::lkdtm_OVERFLOW_UNSIGNED,
        ARRAY_BOUNDS => bugs::lkdtm_ARRAY_BOUNDS,
        CORRUPT_LIST_ADD => bugs::lkdtm_CORRUPT_LIST_ADD,
        CORRUPT_LIST_DEL => bugs::lkdtm_CORRUPT_LIST_DEL,
        STACK_GUARD_PAGE_LEADING => stack::lkdtm_STACK_GUARD_PAGE_LEADING,
        STACK_GUARD_PAGE_TRAILING => stack::lkdtm_STACK_GUARD_PAGE_TRAILING,
        DOUBLE_FAULT => stack::lkdtm_DOUBLE_FAULT,
        SLAB_LINEAR_OVERFLOW => heap::lkdtm_SLAB_LINEAR_OVERFLOW,
        VMALLOC_LINEAR_OVERFLOW => heap::lkdtm_VMALLOC_LINEAR_OVERFLOW,
        WRITE_AFTER_FREE => heap::lkdtm_WRITE_AFTER_FREE,
        READ_AFTER_FREE => heap::lkdtm_READ_AFTER_FREE,
        SLAB_FREE_DOUBLE => heap::lkdtm_SLAB_FREE_DOUBLE,
        SLAB_FREE_CROSS => heap::lkdtm_SLAB_FREE_CROSS,
        SLAB_FREE_PAGE => heap::lkdtm_SLAB_FREE_PAGE,
        WRITE_RO => perms::lkdtm_WRITE_RO,
        WRITE_RO_AFTER_INIT => perms::lkdtm_WRITE_RO_AFTER_INIT,
        WRITE_KERN => perms::lkdtm_WRITE_KERN,
        WRITE_OPD => perms::lkdtm_WRITE_OPD,
        EXEC_DATA => perms::lkdtm_EXEC_DATA,
        EXEC_STACK => perms::lkdtm_EXEC_STACK,
        EXEC_KMALLOC => perms::lkdtm_EXEC_KMALLOC,
        EXEC_VMALLOC => perms::lkdtm_EXEC_VMALLOC,
        EXEC_RODATA => perms::lkdtm_EXEC_RODATA,
        EXEC_NULL => perms::lkdtm_EXEC_NULL,
        ACCESS_NULL => perms::lkdtm_ACCESS_NULL,
        _ => return None,
    };
    Some(f)
}

/// Linux's `lkdtm_do_action`: kept out of line, with a result, so it shows in every trace.
#[inline(never)]
fn lkdtm_do_action(kind: CrashType) -> i32 {
    let Some(run) = action(kind) else {
        crate::warn_on!(true);
        return -22; // -EINVAL
    };
    run();
    core::hint::black_box(0)
}

/// Linux's `direct_entry`: what a write of `kind` to `DIRECT` does, in the writer's context.
#[inline(never)]
pub fn direct_entry(kind: CrashType) -> i32 {
    lkdtm_info!("Performing direct entry {}", kind);
    core::hint::black_box(lkdtm_do_action(kind))
}

/// The crash type registered at a crash point, and its countdown.
struct Registration {
    point: CrashPoint,
    kind: CrashType,
    /// Only hits on this CPU count (the control channel's `cpu=`; LKDTM counts every CPU).
    cpu: Option<usize>,
    count: CrashCount,
}

static REGISTERED: SpinLock<Option<Registration>> = SpinLock::new(None);
/// 1 + the index in `CrashPoint::ALL` of the registered point, 0 for none: the cheap test every
/// hit makes.
static ARMED: AtomicUsize = AtomicUsize::new(0);
/// `cpoint_count` (module parameter, 0644).
static CPOINT_COUNT: AtomicI32 = AtomicI32::new(DEFAULT_CPOINT_COUNT);
/// Per CPU: running a registered type (a hit from inside it is ignored, as a kprobe recursion).
static IN_ACTION: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// `cpoint_name` and `cpoint_type` as given at boot (module parameters, 0444).
static BOOT_PARAMS: SpinLock<Option<(CrashPoint, CrashType)>> = SpinLock::new(None);

fn index_of(point: CrashPoint) -> usize {
    CrashPoint::ALL.iter().position(|&p| p == point).unwrap_or(0)
}

/// A hit of crash point `point` (LKDTM's kprobe handler): counts down, and runs the registered
/// type here on the hit that reaches zero. Costs one load when `point` is not armed.
#[inline(always)]
pub fn hit(point: CrashPoint) {
    if ARMED.load(Ordering::Relaxed) == index_of(point) + 1 {
        hit_armed(point);
    }
}

#[inline(never)]
fn hit_armed(point: CrashPoint) {
    let cpu = percpu::cpu_id();
    if IN_ACTION[cpu].swap(true, Ordering::Acquire) {
        return;
    }
    // As Linux's `lkdtm_handler`, the countdown is printed under its lock, so the lines of
    // hits on several CPUs come in countdown order.
    let fire = {
        let mut registered = REGISTERED.lock_irqsave();
        match registered.as_mut() {
            Some(r) if r.point == point && r.cpu.is_none_or(|c| c == cpu) => {
                let (left, fire) = r.count.hit();
                lkdtm_info!("Crash point {} of type {} hit, trigger in {} rounds", point, r.kind, left);
                fire.then_some(r.kind)
            }
            _ => None,
        }
    };
    if let Some(kind) = fire {
        core::hint::black_box(lkdtm_do_action(kind));
    }
    IN_ACTION[cpu].store(false, Ordering::Release);
}

/// Linux's `lkdtm_register_cpoint`: `DIRECT` runs `kind` at once; another point gets `kind`
/// registered (replacing what was). `count` restarts the countdown (the control channel's
/// `count=`, which also sets `cpoint_count`); without it the countdown goes on.
pub fn register(point: CrashPoint, kind: CrashType, count: Option<i32>, cpu: Option<usize>) -> Result<(), LkdtmError> {
    if let Err(reason) = point.counterpart() {
        lkdtm_err!("Crash point {} is not supported by this kernel: {}", point, reason);
        return Err(LkdtmError::UnsupportedPoint(reason));
    }
    if let Some(count) = count {
        CPOINT_COUNT.store(count, Ordering::Relaxed);
    }
    if point == CrashPoint::Direct {
        core::hint::black_box(lkdtm_do_action(kind));
        return Ok(());
    }
    let mut registered = REGISTERED.lock_irqsave();
    let countdown = match (count, registered.as_ref()) {
        (None, Some(r)) => r.count,
        _ => CrashCount::new(CPOINT_COUNT.load(Ordering::Relaxed)),
    };
    *registered = Some(Registration { point, kind, cpu, count: countdown });
    ARMED.store(index_of(point) + 1, Ordering::Release);
    Ok(())
}

/// Module init (`lkdtm_module_init`), at the end of kernel init: the boot parameters, the
/// categories' own init, and the crash point they ask for.
pub fn init() {
    stack::init();
    perms::init();
    heap::init();
    let cmdline = crate::params::cmdline();
    let params = match BootParams::parse(&cmdline) {
        Ok(params) => params,
        Err(e) => return lkdtm_err!("{}", e),
    };
    CPOINT_COUNT.store(params.cpoint_count, Ordering::Relaxed);
    if let Some(depth) = params.recur_count {
        stack::set_recur_count(depth);
    }
    let Some((point, kind)) = params.crash_point else {
        return lkdtm_info!("No crash points registered, enable through debugfs");
    };
    *BOOT_PARAMS.lock_irqsave() = Some((point, kind));
    if find_crashtype(kind.as_str()).is_err() {
        return;
    }
    match register(point, kind, None, None) {
        Ok(()) => lkdtm_info!("Crash point {} of type {} registered", point, kind),
        Err(_) => lkdtm_info!("Invalid crashpoint {}", point),
    }
}

/// A write of `text` to the crash-point file `file` (Linux's `direct_entry` and
/// `lkdtm_debugfs_entry`): registers the type at a crash point, or, for `DIRECT`, returns it
/// for the caller to run in the writer's task ([`direct_entry`]).
pub fn debugfs_write(file: &str, text: &str) -> Result<Option<CrashType>, LkdtmError> {
    let point = CrashPoint::from_name(file).ok_or(LkdtmError::UnknownPoint)?;
    let kind = find_crashtype(text.trim())?;
    if point == CrashPoint::Direct {
        return Ok(Some(kind));
    }
    register(point, kind, None, None).map(|()| None)
}

/// What `cat` of a crash-point file shows (`lkdtm_debugfs_read`).
pub fn available_types() -> String {
    let mut text = String::from("Available crash types:\n");
    for kind in CrashType::supported() {
        let _ = writeln!(text, "{kind}");
    }
    text
}

/// `cpoint_count`.
pub fn cpoint_count() -> i32 {
    CPOINT_COUNT.load(Ordering::Relaxed)
}

/// A module parameter's value (`/sys/module/lkdtm/parameters/<name>`).
pub fn param(name: &str) -> Option<String> {
    let boot = *BOOT_PARAMS.lock_irqsave();
    Some(match name {
        "cpoint_name" => boot.map_or(String::from("(null)"), |(p, _)| String::from(p.as_str())),
        "cpoint_type" => boot.map_or(String::from("(null)"), |(_, t)| String::from(t.as_str())),
        "cpoint_count" => alloc::format!("{}", CPOINT_COUNT.load(Ordering::Relaxed)),
        "recur_count" => alloc::format!("{}", stack::recur_count()),
        _ => return None,
    })
}

/// Writes a writable module parameter (`cpoint_count`, `recur_count`, mode 0644). Returns
/// false for a read-only or unknown parameter or a bad value.
pub fn set_param(name: &str, value: &str) -> bool {
    let Some(value) = crashvisor_klib::cmdline::parse_i64(value.trim()).and_then(|v| i32::try_from(v).ok()) else {
        return false;
    };
    match name {
        "cpoint_count" => {
            CPOINT_COUNT.store(value, Ordering::Relaxed);
            if let Some(r) = REGISTERED.lock_irqsave().as_mut() {
                r.count.set_reload(value);
            }
            true
        }
        "recur_count" => {
            stack::set_recur_count(value);
            true
        }
        _ => false,
    }
}
