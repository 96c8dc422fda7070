//! Run-time knobs with Linux's names (`kernel.watchdog_thresh`, ...), readable and writable
//! from the shell (`sysctl`, `/proc/sys/kernel/...`), the control channel, and the boot
//! command line (`sysctl.kernel.watchdog_thresh=5`).

use alloc::string::{String, ToString};
use core::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};

use crashvisor_klib::cmdline::{parse_i64, Cmdline};
use crashvisor_klib::cpulist;
use crashvisor_klib::watchdog::MAX_WATCHDOG_THRESH;

use crate::{hung_task, nmi, panic, smp, warn, watchdog};

/// Why a sysctl access failed (Linux's errno).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysctlError {
    /// No such sysctl (ENOENT).
    Unknown,
    /// The value is malformed or out of range (EINVAL).
    Invalid,
}

enum Knob {
    Bool(&'static AtomicBool),
    U32(&'static AtomicU32, u64, u64),
    U64(&'static AtomicU64, u64, u64),
    I64(&'static AtomicI64, i64, i64),
    CpuMask(&'static AtomicU64),
}

struct Sysctl {
    name: &'static str,
    knob: Knob,
    /// Runs after a successful write (restart the detectors, wake khungtaskd).
    after_write: Option<fn()>,
}

const fn knob(name: &'static str, knob: Knob, after_write: Option<fn()>) -> Sysctl {
    Sysctl { name, knob, after_write }
}

static TABLE: &[Sysctl] = &[
    knob("kernel.watchdog", Knob::Bool(&watchdog::WATCHDOG_ENABLED), Some(reconfigure)),
    knob("kernel.soft_watchdog", Knob::Bool(&watchdog::SOFT_WATCHDOG_ENABLED), Some(reconfigure)),
    knob("kernel.nmi_watchdog", Knob::Bool(&watchdog::NMI_WATCHDOG_ENABLED), Some(reconfigure)),
    knob(
        "kernel.watchdog_thresh",
        Knob::U32(&watchdog::WATCHDOG_THRESH, 0, MAX_WATCHDOG_THRESH as u64),
        Some(reconfigure),
    ),
    knob("kernel.watchdog_cpumask", Knob::CpuMask(&watchdog::WATCHDOG_CPUMASK), Some(reconfigure)),
    knob("kernel.softlockup_panic", Knob::U32(&watchdog::SOFTLOCKUP_PANIC, 0, i32::MAX as u64), None),
    knob("kernel.hardlockup_panic", Knob::Bool(&watchdog::HARDLOCKUP_PANIC), None),
    knob("kernel.softlockup_all_cpu_backtrace", Knob::Bool(&watchdog::SOFTLOCKUP_ALL_CPU_BACKTRACE), None),
    knob("kernel.hardlockup_all_cpu_backtrace", Knob::Bool(&watchdog::HARDLOCKUP_ALL_CPU_BACKTRACE), None),
    knob(
        "kernel.hung_task_timeout_secs",
        Knob::U64(&hung_task::TIMEOUT_SECS, 0, i64::MAX as u64 / 1_000_000_000),
        Some(hung_task::kick),
    ),
    knob(
        "kernel.hung_task_check_interval_secs",
        Knob::U64(&hung_task::CHECK_INTERVAL_SECS, 0, i64::MAX as u64 / 1_000_000_000),
        Some(hung_task::kick),
    ),
    knob("kernel.hung_task_warnings", Knob::I64(&hung_task::WARNINGS, -1, i32::MAX as i64), None),
    knob("kernel.hung_task_panic", Knob::U32(&hung_task::PANIC_COUNT, 0, i32::MAX as u64), None),
    knob("kernel.hung_task_check_count", Knob::U64(&hung_task::CHECK_COUNT, 0, 4_194_304), None),
    knob("kernel.hung_task_all_cpu_backtrace", Knob::Bool(&hung_task::ALL_CPU_BACKTRACE), None),
    knob("kernel.panic", Knob::I64(&panic::PANIC_TIMEOUT, i32::MIN as i64, i32::MAX as i64), None),
    knob("kernel.panic_on_oops", Knob::Bool(&panic::PANIC_ON_OOPS), None),
    knob("kernel.panic_on_warn", Knob::Bool(&warn::PANIC_ON_WARN), None),
    knob("kernel.unknown_nmi_panic", Knob::Bool(&nmi::UNKNOWN_NMI_PANIC), None),
    knob("kernel.panic_on_unrecovered_nmi", Knob::Bool(&nmi::PANIC_ON_UNRECOVERED_NMI), None),
    knob("kernel.panic_on_io_nmi", Knob::Bool(&nmi::PANIC_ON_IO_NMI), None),
];

/// Set once the detectors run: earlier writes (boot parameters) need no restart.
static LIVE: AtomicBool = AtomicBool::new(false);

fn reconfigure() {
    if LIVE.load(Ordering::Acquire) {
        watchdog::reconfigure();
    }
}

/// Marks the knobs live: from now on writes restart what they configure.
pub fn go_live() {
    LIVE.store(true, Ordering::Release);
}

/// The sysctl named `kernel.x` or at `/proc/sys/kernel/x` (no allocation: boot parameters are
/// applied before the heap exists).
fn find(name: &str) -> Option<&'static Sysctl> {
    let matches = |s: &Sysctl| match name.strip_prefix("/proc/sys/") {
        Some(path) => {
            path.len() == s.name.len()
                && path.bytes().zip(s.name.bytes()).all(|(p, n)| p == n || (p == b'/' && n == b'.'))
        }
        None => s.name == name,
    };
    TABLE.iter().find(|s| matches(s))
}

/// The names of every sysctl.
pub fn names() -> impl Iterator<Item = &'static str> {
    TABLE.iter().map(|s| s.name)
}

/// Reads a sysctl (by `kernel.x` name or `/proc/sys/kernel/x` path) as Linux prints it.
pub fn get(name: &str) -> Result<String, SysctlError> {
    let sysctl = find(name).ok_or(SysctlError::Unknown)?;
    Ok(match &sysctl.knob {
        Knob::Bool(v) => u8::from(v.load(Ordering::Relaxed)).to_string(),
        Knob::U32(v, ..) => v.load(Ordering::Relaxed).to_string(),
        Knob::U64(v, ..) => v.load(Ordering::Relaxed).to_string(),
        Knob::I64(v, ..) => v.load(Ordering::Relaxed).to_string(),
        Knob::CpuMask(v) => {
            let mut buf = [0u8; 128];
            let text = cpulist::format(v.load(Ordering::Relaxed), smp::possible_cpus(), &mut buf);
            String::from_utf8_lossy(text).into_owned()
        }
    })
}

/// Writes a sysctl; the value is parsed as Linux's proc handlers do.
pub fn set(name: &str, value: &str) -> Result<(), SysctlError> {
    let sysctl = find(name).ok_or(SysctlError::Unknown)?;
    let value = value.trim();
    let int = || parse_i64(value).ok_or(SysctlError::Invalid);
    match &sysctl.knob {
        Knob::Bool(v) => match int()? {
            0 => v.store(false, Ordering::Relaxed),
            1 => v.store(true, Ordering::Relaxed),
            _ => return Err(SysctlError::Invalid),
        },
        Knob::U32(v, min, max) => {
            let n = int()?;
            if n < *min as i64 || n as u64 > *max {
                return Err(SysctlError::Invalid);
            }
            v.store(n as u32, Ordering::Relaxed);
        }
        Knob::U64(v, min, max) => {
            let n = int()?;
            if n < *min as i64 || n as u64 > *max {
                return Err(SysctlError::Invalid);
            }
            v.store(n as u64, Ordering::Relaxed);
        }
        Knob::I64(v, min, max) => {
            let n = int()?;
            if n < *min || n > *max {
                return Err(SysctlError::Invalid);
            }
            v.store(n, Ordering::Relaxed);
        }
        Knob::CpuMask(v) => {
            let mask = cpulist::parse(value, smp::possible_cpus()).ok_or(SysctlError::Invalid)?;
            v.store(mask, Ordering::Relaxed);
        }
    }
    if let Some(after) = sysctl.after_write {
        after();
    }
    Ok(())
}

/// Applies `sysctl.kernel.x=v` boot parameters (Linux 5.8+).
pub fn apply_boot_params(cmdline: &Cmdline<'_>) {
    for param in cmdline.iter() {
        if let (Some(name), Some(value)) = (param.key.strip_prefix(crashvisor_abi::params::SYSCTL_PREFIX), param.value)
        {
            if set(name, value).is_err() {
                crate::pr_warn!("Failed to set sysctl parameter '{}={}': invalid value or name", name, value);
            }
        }
    }
}
