//! crashvisor's virtual machine monitor.
//!
//! One process runs one KVM virtual machine: guest RAM through `vm-memory`, the kernel loaded
//! with `linux-loader`'s ELF loader and booted through PVH, one thread per vCPU, and a handful
//! of port-I/O devices (COM1, COM2 for the control channel, pvpanic, the crashvisor platform
//! device, reset). A guest reset or triple fault rebuilds the machine in place with the same
//! configuration. With a control socket, operators pause and resume the VM, inject NMIs, and
//! reach the guest's control thread (`control`).
//!
//! ```no_run
//! use vmm::config::{PanicPolicy, VmConfig};
//!
//! let config = VmConfig {
//!     vcpus: 2,
//!     cmdline: "panic=1".into(),
//!     control_socket: Some("/tmp/vm.sock".into()),
//!     name: "web-1".into(),
//!     on_panic: PanicPolicy::DumpAndReboot,
//!     ..VmConfig::default()
//! };
//! let outcome = vmm::run(&config).expect("the VM ran");
//! println!("guest ended: {outcome}");
//! ```
#![deny(missing_docs)]

pub mod arch;
pub mod cli;
pub mod config;
pub mod control;
pub mod crash;
pub mod devices;
pub mod error;
pub mod kernel;
pub mod memory;
pub mod nmi_watchdog;
pub mod ship;
pub mod sigterm;
pub mod snapshot;
pub mod terminal;
pub mod vcpu;
pub mod vm;

pub use error::VmmError;
pub use vm::{run, GuestEnd};
