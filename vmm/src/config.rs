//! What a VM is made of, as given on the command line or, as JSON, in a configuration file
//! (`vmm --config FILE`, which the crashvisor service writes).

use std::fmt;
use std::path::{Path, PathBuf};

use crashvisor_abi::layout::{CMDLINE_MAX_SIZE, MAX_VCPUS};
use serde::{Deserialize, Serialize};

/// Smallest guest RAM accepted, in MiB.
pub const MIN_MEMORY_MIB: u64 = 32;
/// Largest guest RAM accepted, in MiB (the guest's direct map and bitmaps are sized for it).
pub const MAX_MEMORY_MIB: u64 = 64 * 1024;
/// vCPUs unless the configuration says.
pub const DEFAULT_VCPUS: u8 = 1;
/// Guest RAM unless the configuration says, in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 256;

/// Where the guest kernel comes from (in a file: `"embedded"` or `{"file": PATH}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelSource {
    /// The crashvisor guest kernel built into this binary.
    Embedded,
    /// A PVH ELF kernel file.
    File(PathBuf),
}

/// Where the guest's console (COM1) output goes (in a file: `"stdout"` or `{"file": PATH}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleOutput {
    /// The VMM's standard output.
    Stdout,
    /// A file, created or truncated.
    File(PathBuf),
}

/// What the VMM does when the guest signals pvpanic PANICKED (a panic without a capture
/// kernel, or whose capture kernel failed to start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PanicPolicy {
    /// Nothing: the guest's own `panic=` setting decides (halt, or reboot after N seconds).
    #[default]
    None,
    /// Take a host-side vmcore, then let the guest go on.
    Dump,
    /// Take a host-side vmcore, then reboot the VM.
    DumpAndReboot,
    /// Take a host-side vmcore, then power the VM off.
    DumpAndPoweroff,
    /// Pause the VM (for a debugger, or a later `dump`).
    Pause,
    /// Reboot the VM at once.
    Reboot,
}

/// What the VMM does when a capture (kdump) kernel signals pvpanic CRASH_LOADED.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CrashLoadedPolicy {
    /// Report the `crash_loaded` event only; the capture kernel hands over the vmcore.
    #[default]
    Event,
    /// Also take a host-side vmcore of the whole machine at that moment.
    Dump,
}

/// The file format of host-side vmcores (`elf`, `kdump-zstd` or `kdump-zlib`).
pub use dumpd::image::DumpFormat;

/// The configuration of one VM; it survives guest reboots unchanged. In a file, every field is
/// optional (the defaults are `vmm`'s) and an unknown one is an error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmConfig {
    /// The kernel to boot.
    pub kernel: KernelSource,
    /// Number of vCPUs, 1 to `MAX_VCPUS`.
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// The kernel command line.
    pub cmdline: String,
    /// Where console output goes.
    pub console: ConsoleOutput,
    /// End the VMM when the guest resets instead of rebooting it.
    pub no_reboot: bool,
    /// The KVM device (normally `/dev/kvm`).
    pub kvm_device: PathBuf,
    /// Serve the control protocol (docs/control-protocol.md) on this unix socket.
    pub control_socket: Option<PathBuf>,
    /// Offer the guest the host's periodic NMI (its hard-lockup detector's clock).
    pub nmi_watchdog: bool,
    /// The crash store vmcores are written to (created on the first crash).
    pub crash_dir: PathBuf,
    /// The VM's name in the crash store: `[A-Za-z0-9_.-]{1,64}`, not starting with a dot.
    pub name: String,
    /// What pvpanic PANICKED makes the VMM do.
    pub on_panic: PanicPolicy,
    /// What pvpanic CRASH_LOADED makes the VMM do.
    pub on_crash_loaded: CrashLoadedPolicy,
    /// The format of host-side vmcores.
    pub dump_format: DumpFormat,
    /// What the crash store keeps (older crashes are removed after each new one).
    pub retention: dumpd::store::Retention,
    /// The program that writes a capture kernel's vmcore (kdump.conf's `core_collector`);
    /// the built-in writer when `None`.
    pub core_collector: Option<crate::crash::collector::CoreCollector>,
}

/// The VM name used unless another is given.
pub const DEFAULT_VM_NAME: &str = "vm";

/// The KVM device used unless another is named.
pub const DEFAULT_KVM_DEVICE: &str = "/dev/kvm";

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// vCPU count out of range.
    #[error("{0} vCPUs requested; a VM has 1 to {max} vCPUs", max = MAX_VCPUS)]
    VcpuCount(u8),
    /// Memory size out of range.
    #[error("{0} MiB of memory requested; a VM has {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB} MiB")]
    MemorySize(u64),
    /// Command line too long.
    #[error("the kernel command line is {0} bytes; the limit is {max} bytes", max = CMDLINE_MAX_SIZE - 1)]
    CmdlineTooLong(usize),
    /// Command line with a NUL or non-ASCII byte.
    #[error("the kernel command line must be printable ASCII")]
    CmdlineNotAscii,
    /// A VM name the crash store cannot use.
    #[error("invalid VM name {0:?}: use 1 to 64 characters from A-Z a-z 0-9 _ . - and do not start with a dot")]
    VmName(String),
    /// A configuration file that cannot be read, or is not a configuration.
    #[error("cannot use the configuration file {}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line and column for a JSON error.
        reason: String,
    },
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            kernel: KernelSource::Embedded,
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            cmdline: String::new(),
            console: ConsoleOutput::Stdout,
            no_reboot: false,
            kvm_device: DEFAULT_KVM_DEVICE.into(),
            control_socket: None,
            nmi_watchdog: true,
            crash_dir: dumpd::default_crash_dir(),
            name: DEFAULT_VM_NAME.into(),
            on_panic: PanicPolicy::default(),
            on_crash_loaded: CrashLoadedPolicy::default(),
            dump_format: DumpFormat::default(),
            retention: dumpd::store::Retention::default(),
            core_collector: None,
        }
    }
}

impl VmConfig {
    /// Reads a configuration written as JSON (fields left out take their defaults); it is
    /// checked when the VM starts ([`VmConfig::validate`]).
    pub fn read_file(path: &Path) -> Result<Self, ConfigError> {
        let error = |reason: String| ConfigError::File { path: path.to_path_buf(), reason };
        let text = std::fs::read(path).map_err(|e| error(e.to_string()))?;
        serde_json::from_slice(&text).map_err(|e| error(e.to_string()))
    }

    /// Checks every value against the limits of the VMM and the guest.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || usize::from(self.vcpus) > MAX_VCPUS {
            return Err(ConfigError::VcpuCount(self.vcpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ConfigError::MemorySize(self.memory_mib));
        }
        if self.cmdline.len() as u64 >= CMDLINE_MAX_SIZE {
            return Err(ConfigError::CmdlineTooLong(self.cmdline.len()));
        }
        if !self.cmdline.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(ConfigError::CmdlineNotAscii);
        }
        if dumpd::store::validate_vm_name(&self.name).is_err() {
            return Err(ConfigError::VmName(self.name.clone()));
        }
        Ok(())
    }

    /// Guest RAM in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }
}

impl fmt::Display for KernelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Embedded => f.write_str("the embedded guest kernel"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            vcpus: 2,
            memory_mib: 128,
            cmdline: "console=ttyS0".into(),
            crash_dir: "/tmp/crash".into(),
            ..VmConfig::default()
        }
    }

    #[test]
    fn accepts_sane_values() {
        assert_eq!(config().validate(), Ok(()));
    }

    #[test]
    fn rejects_out_of_range_values() {
        let mut c = config();
        c.vcpus = 0;
        assert_eq!(c.validate(), Err(ConfigError::VcpuCount(0)));
        c.vcpus = 17;
        assert_eq!(c.validate(), Err(ConfigError::VcpuCount(17)));
        let mut c = config();
        c.memory_mib = 8;
        assert_eq!(c.validate(), Err(ConfigError::MemorySize(8)));
        let mut c = config();
        c.cmdline = "x".repeat(4000);
        assert_eq!(c.validate(), Err(ConfigError::CmdlineTooLong(4000)));
        c.cmdline = "a\nb".into();
        assert_eq!(c.validate(), Err(ConfigError::CmdlineNotAscii));
    }

    #[test]
    fn configuration_files_read_back_and_name_their_mistakes() {
        let dir = std::env::temp_dir().join(format!("vmm-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vm.json");
        let mut c = config();
        c.kernel = KernelSource::File("/boot/kernel".into());
        c.on_panic = PanicPolicy::DumpAndReboot;
        c.dump_format = DumpFormat::Kdump(dumpd::kdump::Compression::Zstd);
        c.retention.max_per_vm = Some(3);
        std::fs::write(&path, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
        assert_eq!(VmConfig::read_file(&path), Ok(c));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"dump-and-reboot\"") && text.contains("\"kdump-zstd\""), "{text}");

        std::fs::write(&path, r#"{"vcpus": 2, "name": "web-1"}"#).unwrap();
        let partial = VmConfig::read_file(&path).unwrap();
        assert_eq!((partial.vcpus, partial.memory_mib, partial.name.as_str()), (2, DEFAULT_MEMORY_MIB, "web-1"));
        std::fs::write(&path, "{\n  \"vcpu\": 2\n}").unwrap();
        let typo = VmConfig::read_file(&path).unwrap_err().to_string();
        assert!(typo.contains("vm.json") && typo.contains("unknown field `vcpu`") && typo.contains("line 2"), "{typo}");
        std::fs::write(&path, r#"{"on_panic": "explode"}"#).unwrap();
        assert!(VmConfig::read_file(&path).unwrap_err().to_string().contains("dump-and-reboot"));
        let missing = VmConfig::read_file(&dir.join("none.json")).unwrap_err().to_string();
        assert!(missing.contains("none.json") && missing.contains("No such file"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn vm_names_must_suit_the_crash_store() {
        let mut c = config();
        for good in ["web-1", "a.b_c", "X"] {
            c.name = good.into();
            assert_eq!(c.validate(), Ok(()), "{good}");
        }
        for bad in ["", "a/b", "..", ".hidden", "sp ace", &"n".repeat(65)] {
            c.name = bad.into();
            assert_eq!(c.validate(), Err(ConfigError::VmName(bad.into())), "{bad:?}");
        }
    }
}
