//! Errors of the VMM. Messages say what went wrong and what to do about it.

use std::path::PathBuf;

use crate::config::ConfigError;

/// Everything that can stop the VMM from running a guest.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// A configuration value is out of range.
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    /// The KVM device does not exist.
    #[error("{} does not exist: this host has no KVM (load the kvm module, or run on a host with virtualization)", .0.display())]
    KvmMissing(PathBuf),
    /// The KVM device exists but cannot be opened.
    #[error("{} cannot be opened ({source}); add this user to the kvm group or fix the device's permissions", device.display())]
    KvmAccess {
        /// The device.
        device: PathBuf,
        /// Why it could not be opened.
        source: std::io::Error,
    },
    /// The file opened is not a KVM device.
    #[error("{} is not a KVM device ({reason})", device.display())]
    NotKvm {
        /// The file.
        device: PathBuf,
        /// What gave it away.
        reason: String,
    },
    /// A KVM ioctl failed.
    #[error("KVM failed to {what}")]
    Kvm {
        /// What the VMM was doing.
        what: &'static str,
        /// The error KVM returned.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The host KVM lacks a capability the VMM needs.
    #[error("the host KVM lacks {0}, which crashvisor needs")]
    KvmCapability(&'static str),
    /// Guest memory could not be set up.
    #[error("cannot allocate {mib} MiB of guest memory")]
    Memory {
        /// Requested size.
        mib: u64,
        /// Cause.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// The kernel file could not be read.
    #[error("cannot read kernel file {path}")]
    KernelRead {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel is not a loadable ELF.
    #[error("{kernel} is not a loadable x86_64 ELF kernel: {reason}")]
    KernelFormat {
        /// Which kernel.
        kernel: String,
        /// What the loader found, in its own words.
        reason: String,
    },
    /// The kernel file is too large to map as the guest's kernel module.
    #[error("{kernel} is {bytes} bytes; kernel images up to {max} bytes are supported", max = crashvisor_abi::layout::KERNEL_MODULE_MAX_SIZE)]
    KernelTooLarge {
        /// Which kernel.
        kernel: String,
        /// Its size, page-rounded.
        bytes: u64,
    },
    /// The kernel ELF has no PVH entry note.
    #[error(
        "{0} has no PVH entry point (ELF note XEN_ELFNOTE_PHYS32_ENTRY); crashvisor boots kernels through PVH only"
    )]
    KernelNotPvh(String),
    /// The kernel and its boot data do not fit in guest memory.
    #[error(
        "{what} needs guest memory up to {needed_mib} MiB but the VM has {memory_mib} MiB; give it more with --memory"
    )]
    MemoryTooSmall {
        /// What does not fit.
        what: &'static str,
        /// Memory needed, in MiB (rounded up).
        needed_mib: u64,
        /// Memory the VM has.
        memory_mib: u64,
    },
    /// Writing boot data into guest memory failed.
    #[error("cannot write {what} into guest memory")]
    BootData {
        /// What was being written.
        what: &'static str,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The console output could not be opened or written.
    #[error("cannot open console output {path}")]
    Console {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The control socket could not be set up.
    #[error("cannot listen on control socket {}", path.display())]
    ControlSocket {
        /// The socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A host thread could not be started.
    #[error("cannot start the {what} thread")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Host-side signal setup failed.
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
}

impl VmmError {
    /// Wraps a KVM ioctl error with what the VMM was doing.
    pub fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Self {
        move |source| Self::Kvm { what, source }
    }
}
