//! kexec and kdump: the crash-kernel reservation, loading kernel images, and the crash path.

pub mod capture;
pub mod crash;
pub mod kdump;
pub mod load;
pub mod reserve;
pub mod trampoline;
pub mod vmcoreinfo;
