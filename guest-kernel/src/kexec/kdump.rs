//! The kdump service, like `kdumpctl`: load the capture kernel with the right command line,
//! unload it, report the state. `kdump=1` on the command line starts it at boot.
//!
//! The capture kernel's command line is this kernel's, without `crashkernel=` and the kdump
//! settings, with one CPU (`nr_cpus=1`), `elfcorehdr=` (added by the loader) and the dump
//! configuration: `kdump_level=N` (makedumpfile's `-d`, default 31), `kdump_final_action=` and
//! `kdump_failure_action=` (`reboot`, `halt` or `poweroff`; default `reboot`). The same three
//! parameters on this kernel's command line set the configuration it starts with.

use alloc::string::String;

use crashvisor_abi::control::KdumpAction;
use crashvisor_abi::dump::DUMP_LEVEL_ALL;
use crashvisor_abi::params::{CRASHKERNEL, KDUMP, KDUMP_FAILURE_ACTION, KDUMP_FINAL_ACTION, KDUMP_LEVEL};
use crashvisor_klib::cmdline::remove_param;

use super::load::{self, Kind, LoadError};
use crate::params;

/// The default dump level: zero pages and every filterable kind of page excluded.
const DEFAULT_DUMP_LEVEL: u32 = DUMP_LEVEL_ALL;

/// The dump configuration (`kdump.conf`'s core settings).
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// makedumpfile `-d` level.
    pub dump_level: u32,
    /// What to do after a dump.
    pub final_action: KdumpAction,
    /// The same when the dump fails.
    pub failure_action: KdumpAction,
}

static CONFIG: crate::sync::SpinLock<Config> = crate::sync::SpinLock::new(Config {
    dump_level: DEFAULT_DUMP_LEVEL,
    final_action: KdumpAction::Reboot,
    failure_action: KdumpAction::Reboot,
});

const BAD_LEVEL: &str = "dump_level is 0 to 31";
const BAD_ACTION: &str = "actions: reboot, halt, poweroff";

fn parse_level(value: &str) -> Result<u32, &'static str> {
    value.parse().ok().filter(|l| *l <= DUMP_LEVEL_ALL).ok_or(BAD_LEVEL)
}

impl Config {
    /// Sets `key=value` (`dump_level`, `final_action`, `failure_action`).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), &'static str> {
        match key {
            "dump_level" => self.dump_level = parse_level(value)?,
            "final_action" => self.final_action = KdumpAction::from_name(value).ok_or(BAD_ACTION)?,
            "failure_action" => self.failure_action = KdumpAction::from_name(value).ok_or(BAD_ACTION)?,
            _ => return Err("keys: dump_level, final_action, failure_action"),
        }
        Ok(())
    }
}

/// Sets `key=value` in the configuration (see [`Config::set`]).
pub fn configure(key: &str, value: &str) -> Result<(), &'static str> {
    CONFIG.lock_irqsave().set(key, value)
}

/// Replaces the configuration.
pub fn set_config(config: Config) {
    *CONFIG.lock_irqsave() = config;
}

/// The current configuration.
pub fn config() -> Config {
    *CONFIG.lock_irqsave()
}

/// The dump configuration a command line gives (defaults for what it leaves out or gets wrong).
pub fn config_from_cmdline() -> Config {
    let cmdline = params::cmdline();
    let action = |key| cmdline.get(key).flatten().and_then(KdumpAction::from_name).unwrap_or(KdumpAction::Reboot);
    Config {
        dump_level: cmdline.get(KDUMP_LEVEL).flatten().and_then(|v| parse_level(v).ok()).unwrap_or(DEFAULT_DUMP_LEVEL),
        final_action: action(KDUMP_FINAL_ACTION),
        failure_action: action(KDUMP_FAILURE_ACTION),
    }
}

/// `kdump start`: load the capture kernel into the reservation.
pub fn start() -> Result<(), LoadError> {
    let mut base = String::from(params::cmdline().as_str());
    for param in [CRASHKERNEL, KDUMP_LEVEL, KDUMP_FINAL_ACTION, KDUMP_FAILURE_ACTION] {
        let mut buf = [0u8; 2048];
        base = String::from(remove_param(&base, param, &mut buf).unwrap_or(""));
    }
    let config = config();
    let cmdline = alloc::format!(
        "{base} nr_cpus=1 {KDUMP_LEVEL}={} {KDUMP_FINAL_ACTION}={} {KDUMP_FAILURE_ACTION}={}",
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

/// Whether the capture kernel is loaded.
pub fn operational() -> bool {
    load::loaded(Kind::Crash)
}

/// `kdump status`, as text.
pub fn status() -> String {
    let config = config();
    let state = if operational() { "operational" } else { "not operational" };
    alloc::format!(
        "Kdump is {state}\ndump_level {}\nfinal_action {}\nfailure_action {}\n",
        config.dump_level,
        config.final_action,
        config.failure_action
    )
}

/// Takes the configuration from the command line and starts the service when it asks
/// (`kdump=1`).
pub fn init() {
    set_config(config_from_cmdline());
    let cmdline = params::cmdline();
    if !matches!(cmdline.get(KDUMP), Some(Some("1" | "on" | "y")) | Some(None)) {
        return;
    }
    match start() {
        Ok(()) => crate::pr_info!("kdump: capture kernel loaded"),
        Err(e) => crate::pr_warn!("kdump: cannot load the capture kernel: {}", e),
    }
}
