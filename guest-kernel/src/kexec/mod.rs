//! kexec and kdump: the crash-kernel reservation, loading kernel images, and the crash path.

pub mod reserve;
