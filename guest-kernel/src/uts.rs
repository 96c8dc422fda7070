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

/// Length of each `new_utsname` field (`__NEW_UTS_LEN + 1`).
const UTS_FIELD: usize = 65;

const fn field(text: &str) -> [u8; UTS_FIELD] {
    let mut out = [0u8; UTS_FIELD];
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() && i < UTS_FIELD - 1 {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// Linux's `init_uts_ns`, reduced to its `name` (a `struct new_utsname`: sysname, nodename,
/// release, version, machine, domainname), so tools read the crashed kernel's identity from a
/// vmcore through `SYMBOL(init_uts_ns)` and `OFFSET(uts_namespace.name)`.
#[repr(C)]
pub struct UtsNamespace {
    name: [[u8; UTS_FIELD]; 6],
}

/// The kernel's utsname.
pub static INIT_UTS_NS: UtsNamespace = UtsNamespace {
    name: [field("Linux"), field("crashvisor"), field(RELEASE), field(VERSION), field("x86_64"), field("(none)")],
};
