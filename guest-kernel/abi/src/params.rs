//! Kernel command-line parameters the host writes and the guest reads, with Linux's names
//! where Linux has them. The crashvisor service builds a VM's command line from these; the
//! guest parses the same names.

/// `crashkernel=SIZE[@OFFSET]` (or Linux's range form): memory reserved for a capture kernel.
pub const CRASHKERNEL: &str = "crashkernel";
/// `kdump=1`: start the kdump service at boot (load the capture kernel).
pub const KDUMP: &str = "kdump";
/// `kdump_level=N`: makedumpfile's `-d` level, 0 to `crate::dump::DUMP_LEVEL_ALL`.
pub const KDUMP_LEVEL: &str = "kdump_level";
/// `kdump_final_action=ACTION`: what the capture kernel does after a dump
/// (a `crate::control::KdumpAction` name).
pub const KDUMP_FINAL_ACTION: &str = "kdump_final_action";
/// `kdump_failure_action=ACTION`: the same after a failed dump.
pub const KDUMP_FAILURE_ACTION: &str = "kdump_failure_action";
/// `sysctl.NAME=VALUE` sets sysctl `NAME` at boot (Linux 5.8+).
pub const SYSCTL_PREFIX: &str = "sysctl.";
