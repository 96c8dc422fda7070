//! The guest↔host contract of crashvisor.
//!
//! Both the guest kernel (`no_std`, `x86_64-unknown-none`) and the host crates compile against
//! this crate, so every port number, register layout, boot structure and control-channel message
//! exists exactly once.
//! It holds no code that needs `unsafe` and no allocation.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(test)]
extern crate std;

pub mod control;
pub mod dump;
pub mod layout;
pub mod lkdtm;
pub mod platform;
pub mod pvh;
pub mod serial;
