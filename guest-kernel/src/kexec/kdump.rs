//! The kdump service, like `kdumpctl`: load the capture kernel with the right command line,
//! unload it, report the state. `kdump=1` on the command line starts it at boot.
//!
//! The capture kernel's command line is this kernel's, without `crashkernel=`, with one CPU
//! (`nr_cpus=1`), `elfcorehdr=` (added by the loader) and the dump configuration:
//! `kdump_level=N` (makedumpfile's `-d`, default 31), `kdump_final_action=` and
//! `kdump_failure_action=` (`reboot`, `halt` or `poweroff`; default `reboot`).

use alloc::string::String;

use crashvisor_klib::cmdline::remove_param;

use super::load::{self, Kind, LoadError};
use crate::params;

/// The dump configuration (`kdump.conf`'s core settings).
#[derive(Clone, Debug)]
pub struct Config {
    /// makedumpfile `-d` level.
    pub dump_level: u32,
    /// `reboot`, `halt` or `poweroff` after a dump.
    pub final_action: &'static str,
    /// The same when the dump fails.
    pub failure_action: &'static str,
}

static CONFIG: crate::sync::SpinLock<Config> =
    crate::sync::SpinLock::new(Config { dump_level: 31, final_action: "reboot", failure_action: "reboot" });

fn action(name: &str) -> Option<&'static str> {
    ["reboot", "halt", "poweroff"].into_iter().find(|a| *a == name)
}

/// Sets `key=value` in the configuration (`dump_level`, `final_action`, `failure_action`).
pub fn configure(key: &str, value: &str) -> Result<(), &'static str> {
    let mut config = CONFIG.lock_irqsave();
    match key {
        "dump_level" => config.dump_level = value.parse().ok().filter(|l| *l <= 31).ok_or("dump_level is 0 to 31")?,
        "final_action" => config.final_action = action(value).ok_or("actions: reboot, halt, poweroff")?,
        "failure_action" => config.failure_action = action(value).ok_or("actions: reboot, halt, poweroff")?,
        _ => return Err("keys: dump_level, final_action, failure_action"),
    }
    Ok(())
}

/// `kdump start`: load the capture kernel into the reservation.
pub fn start() -> Result<(), LoadError> {
    let mut buf = [0u8; 2048];
    let base = remove_param(params::cmdline().as_str(), "crashkernel", &mut buf).unwrap_or("");
    let config = CONFIG.lock_irqsave().clone();
    let cmdline = alloc::format!(
        "{base} nr_cpus=1 kdump_level={} kdump_final_action={} kdump_failure_action={}",
        config.dump_level,
        config.final_action,
        config.failure_action
    );
    load::load(Kind::Crash, cmdline.trim())
}

/// `kdump stop`: unload the capture kernel.
pub fn stop() {
    load::unload(Kind::Crash);
}

/// `kdump status`, as text.
pub fn status() -> String {
    let config = CONFIG.lock_irqsave().clone();
    let state = if load::loaded(Kind::Crash) { "operational" } else { "not operational" };
    alloc::format!(
        "Kdump is {state}\ndump_level {}\nfinal_action {}\nfailure_action {}\n",
        config.dump_level,
        config.final_action,
        config.failure_action
    )
}

/// Starts the service at boot when the command line asks (`kdump=1`).
pub fn init() {
    let cmdline = params::cmdline();
    if !matches!(cmdline.get("kdump"), Some(Some("1" | "on" | "y")) | Some(None)) {
        return;
    }
    match start() {
        Ok(()) => crate::pr_info!("kdump: capture kernel loaded"),
        Err(e) => crate::pr_warn!("kdump: cannot load the capture kernel: {}", e),
    }
}
