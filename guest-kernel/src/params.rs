//! Kernel command-line parameters that configure the core kernel.

use crashvisor_klib::cmdline::{parse_bool, parse_i64, Cmdline};

use crate::{panic, printk};

/// The command line, copied out of the boot data (Linux's `boot_command_line`).
static mut BOOT_COMMAND_LINE: [u8; 2048] = [0; 2048];
static mut BOOT_COMMAND_LINE_LEN: usize = 0;

/// Copies the command line out of the boot data. Boot CPU, once.
pub fn save(raw: &[u8]) {
    let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len()).min(2047);
    // SAFETY: written once by the boot CPU before any reader exists.
    unsafe {
        let buf = &mut *core::ptr::addr_of_mut!(BOOT_COMMAND_LINE);
        buf[..len].copy_from_slice(&raw[..len]);
        BOOT_COMMAND_LINE_LEN = len;
    }
}

/// The kernel command line.
pub fn cmdline() -> Cmdline<'static> {
    // SAFETY: only written by `save` before other CPUs start; read-only afterwards.
    let bytes = unsafe {
        let buf = &*core::ptr::addr_of!(BOOT_COMMAND_LINE);
        &buf[..BOOT_COMMAND_LINE_LEN]
    };
    Cmdline::from_bytes(bytes)
}

/// Applies the parameters of the core kernel: console level, panic behaviour.
pub fn apply() {
    let cmdline = cmdline();
    if cmdline.has_flag("quiet") {
        printk::set_console_loglevel(4);
    }
    if let Some(Some(level)) = cmdline.get("loglevel") {
        if let Some(level) = parse_i64(level) {
            printk::set_console_loglevel(level.clamp(0, 15) as u8);
        }
    }
    if let Some(Some(seconds)) = cmdline.get("panic") {
        if let Some(seconds) = parse_i64(seconds) {
            panic::set_panic_timeout(seconds);
        }
    }
    if let Some(Some(value)) = cmdline.get("oops") {
        if value == "panic" {
            panic::set_panic_on_oops(true);
        }
    }
    if let Some(Some(value)) = cmdline.get("panic_on_oops") {
        if let Some(on) = parse_bool(value) {
            panic::set_panic_on_oops(on);
        }
    }
    if let Some(Some(value)) = cmdline.get("panic_on_warn") {
        if let Some(on) = parse_bool(value) {
            crate::warn::PANIC_ON_WARN.store(on, core::sync::atomic::Ordering::Relaxed);
        }
    }
    if cmdline.has_flag("crash_kexec_post_notifiers") {
        panic::CRASH_KEXEC_POST_NOTIFIERS.store(true, core::sync::atomic::Ordering::Relaxed);
    }
    if let Some(Some(value)) = cmdline.get("hung_task_panic") {
        if let Some(n) = parse_i64(value) {
            crate::hung_task::PANIC_COUNT
                .store(n.clamp(0, i64::from(i32::MAX)) as u32, core::sync::atomic::Ordering::Relaxed);
        }
    }
    crate::watchdog::parse_boot_params(&cmdline);
    crate::sysctl::apply_boot_params(&cmdline);
    if cmdline.has_flag("unknown_nmi_panic") {
        crate::nmi::UNKNOWN_NMI_PANIC.store(true, core::sync::atomic::Ordering::Relaxed);
    }
}

/// `nr_cpus=` / `maxcpus=`, if given.
pub fn cpu_limit() -> usize {
    let cmdline = cmdline();
    ["nr_cpus", "maxcpus"]
        .iter()
        .filter_map(|k| cmdline.get(k).flatten().and_then(parse_i64))
        .map(|n| n.max(1) as usize)
        .min()
        .unwrap_or(usize::MAX)
}
