//! The `/sys` files the shell can read (kexec and kdump state, as Linux's `kernel/ksysfs.c`
//! and the CPU devices show them).

use alloc::string::String;

use crate::kexec;

/// The contents of the sysfs file at `path`, if it exists.
pub fn read(path: &str) -> Option<String> {
    let text = match path {
        "/sys/kernel/kexec_crash_size" => alloc::format!("{}\n", kexec::reserve::region().map_or(0, |(s, e)| e - s)),
        _ => return None,
    };
    Some(text)
}
