//! Everything about vmcores: writing them, storing them, reading and analysing them.
//!
//! The writers, the crash store and the analysis arrive with the kdump and dumpd issues; today
//! the crate only names the store's default location so every tool agrees on it.
#![deny(missing_docs)]

use std::path::PathBuf;

/// The crash store used when none is given: `$XDG_DATA_HOME/crashvisor/crash`, else
/// `~/.local/share/crashvisor/crash`, else `./crash`.
pub fn default_crash_dir() -> PathBuf {
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(data).join("crashvisor/crash");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/crashvisor/crash"),
        None => PathBuf::from("crash"),
    }
}
