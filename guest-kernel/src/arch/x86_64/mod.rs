//! x86_64 support: boot, descriptor tables, interrupts, APICs, paging, per-CPU data, context
//! switch, and the AP start-up trampoline.
pub mod apic;
pub mod boot;
pub mod cpu;
pub mod gdt;
pub mod idt;
pub mod paging;
pub mod percpu;
pub mod switch;
pub mod trampoline;
pub mod traps;
pub mod vmemmap;
