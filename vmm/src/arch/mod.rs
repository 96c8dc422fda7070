//! x86_64 machine setup: CPUID, initial registers, local APICs, PVH boot data.
pub mod cpuid;
pub mod pvh;
pub mod regs;
