//! Synchronisation: interrupt masking, preemption control and spinlocks.
pub mod irq;
pub mod owner;
pub mod preempt;
pub mod spin;

pub use spin::SpinLock;
