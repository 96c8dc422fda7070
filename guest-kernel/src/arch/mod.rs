//! The one architecture the kernel supports.
pub mod x86_64;
pub use self::x86_64::*;
