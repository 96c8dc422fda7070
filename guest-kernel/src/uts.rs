//! The kernel's identity, as `uname` and oops headers show it.

/// `utsname.release`: the Linux release whose messages and formats the guest follows.
pub const RELEASE: &str = "6.18.0-crashvisor";
/// `utsname.version`.
pub const VERSION: &str = "#1 SMP PREEMPT_DYNAMIC";
/// The DMI-style machine description of oops headers.
pub const HARDWARE_NAME: &str = "crashvisor KVM virtual machine, BIOS none";

/// The version up to its first space (`#1`), as oops and hung-task headers print it.
pub fn version_short() -> &'static str {
    VERSION.split(' ').next().unwrap_or(VERSION)
}
