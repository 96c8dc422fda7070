//! x86_64 support: boot, CPU primitives.
pub mod boot;
pub mod cpu;
