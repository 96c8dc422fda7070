//! `POST /v1/vms` bodies: what a client may ask for, checked, and turned into the VMM's
//! configuration (kdump, watchdog and panic knobs become guest boot parameters).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use clap::ValueEnum;
use crashvisor_abi::control::{is_sysctl_name, KdumpAction, SYSCTL_NAMESPACE};
use crashvisor_abi::dump::DUMP_LEVEL_ALL;
use crashvisor_abi::params::{
    CRASHKERNEL, KDUMP, KDUMP_FAILURE_ACTION, KDUMP_FINAL_ACTION, KDUMP_LEVEL, SYSCTL_PREFIX,
};
use crashvisor_control::WireName;
use dumpd::store::Retention;
use vmm::config::{ConsoleOutput, CrashLoadedPolicy, DumpFormat, KernelSource, PanicPolicy, VmConfig};
use vmm::crash::collector::CoreCollector;

use super::core_collector::check_core_collector;
use crate::error::ApiError;

/// Longest `crashkernel=` value accepted (Linux's forms are short: `64M`, `512M-2G:64M,2G-:128M@16M`).
const MAX_CRASHKERNEL_LEN: usize = 128;
/// Longest sysctl value given at boot.
const MAX_SYSCTL_VALUE_LEN: usize = 64;
/// `crashkernel=` used when kdump is enabled without one: room for the capture kernel.
pub const DEFAULT_CRASHKERNEL: &str = "64M";

/// The body of `POST /v1/vms`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    /// The VM's name and id: 1-64 of `A-Z a-z 0-9 _ . -`, not starting with a dot.
    pub name: Option<String>,
    /// vCPUs (default 1).
    pub vcpus: Option<u32>,
    /// Guest RAM in MiB (default 256).
    pub memory_mib: Option<u64>,
    /// Extra kernel command line, before the parameters the other fields add.
    pub cmdline: Option<String>,
    /// A PVH ELF kernel on the service's host (default: the embedded guest kernel).
    pub kernel: Option<String>,
    /// `crashkernel=` (default 64M when kdump is enabled).
    pub crashkernel: Option<String>,
    /// The guest's kdump service.
    pub kdump: Option<KdumpSpec>,
    /// Lockup detector knobs.
    pub watchdog: Option<WatchdogSpec>,
    /// Panic knobs.
    pub panic: Option<PanicSpec>,
    /// Any other sysctls to set at boot (`kernel.NAME`: value).
    pub sysctls: Option<BTreeMap<String, BootValue>>,
    /// What the host does when the guest panics without a capture kernel: `none` (default),
    /// `dump`, `dump-and-reboot`, `dump-and-poweroff`, `pause`, `reboot`.
    pub on_panic: Option<String>,
    /// What the host does when a capture kernel starts: `event` (default) or `dump` (also a
    /// host-side vmcore of the whole machine).
    pub on_crash_loaded: Option<String>,
    /// The format of host-side vmcores: `elf` (default), `kdump-zstd`, `kdump-zlib`.
    pub dump_format: Option<String>,
}

/// kdump settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KdumpSpec {
    /// Start the kdump service at boot (`kdump=1`; default true).
    pub enabled: Option<bool>,
    /// makedumpfile `-d` level, 0-31 (the guest's default: 31).
    pub dump_level: Option<u32>,
    /// After a dump: `reboot`, `halt` or `poweroff`.
    pub final_action: Option<String>,
    /// After a failed dump: `reboot`, `halt` or `poweroff`.
    pub failure_action: Option<String>,
    /// kdump.conf's `core_collector`: the host writes the vmcore the capture kernel hands over
    /// with this command instead of its built-in writer, e.g. `makedumpfile -l -d 31`
    /// (makedumpfile with `-c -l -z -E -D --non-mmap --non-cyclic`, `-d`, `--message-level`,
    /// `--num-threads`, `--cyclic-buffer`). If it fails, the built-in writer writes the vmcore.
    pub core_collector: Option<String>,
}

/// Lockup detector settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WatchdogSpec {
    /// `kernel.watchdog_thresh`, 0-60 s (soft lockups after twice that).
    pub thresh_secs: Option<u32>,
    /// `kernel.softlockup_panic`.
    pub softlockup_panic: Option<bool>,
    /// `kernel.hardlockup_panic`.
    pub hardlockup_panic: Option<bool>,
    /// `kernel.hung_task_panic`.
    pub hung_task_panic: Option<bool>,
    /// `kernel.hung_task_timeout_secs`.
    pub hung_task_timeout_secs: Option<u32>,
    /// The host's periodic NMI for the hard-lockup detector (`vmm --nmi-watchdog`; default on).
    pub nmi_watchdog: Option<bool>,
}

/// Panic settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PanicSpec {
    /// `kernel.panic`: reboot this many seconds after a panic (0: stay; negative: at once).
    pub timeout_secs: Option<i32>,
    /// `kernel.panic_on_oops`.
    pub on_oops: Option<bool>,
}

/// A boot-time sysctl value: text, a number or a boolean.
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum BootValue {
    /// Text.
    Text(String),
    /// A number.
    Number(i64),
    /// A boolean (1 or 0).
    Bool(bool),
}

impl BootValue {
    fn text(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            Self::Number(n) => n.to_string(),
            Self::Bool(b) => u8::from(*b).to_string(),
        }
    }
}

/// A checked VM configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmSpec {
    /// The name (and id).
    pub name: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest RAM, MiB.
    pub memory_mib: u64,
    /// The whole kernel command line the guest boots with.
    pub cmdline: String,
    /// The kernel file, or none for the embedded one.
    pub kernel: Option<PathBuf>,
    /// Whether the host offers the NMI watchdog.
    pub nmi_watchdog: bool,
    /// Whether kdump starts at boot.
    pub kdump: bool,
    /// The host's policy on a panic without a capture kernel (`vmm --on-panic`).
    pub on_panic: PanicPolicy,
    /// The host's policy when a capture kernel starts (`vmm --on-crash-loaded`).
    pub on_crash_loaded: CrashLoadedPolicy,
    /// The format of host-side vmcores (`vmm --dump-format`).
    pub dump_format: DumpFormat,
    /// The core collector (`vmm --core-collector`), checked.
    pub core_collector: Option<CoreCollector>,
}

impl CreateVm {
    /// Checks the request; `name` is used when it has none.
    pub fn into_spec(self, default_name: String) -> Result<VmSpec, ApiError> {
        let on_panic = policy("on_panic", self.on_panic.as_deref())?;
        let on_crash_loaded = policy("on_crash_loaded", self.on_crash_loaded.as_deref())?;
        let dump_format = policy("dump_format", self.dump_format.as_deref())?;
        let name = self.name.unwrap_or(default_name);
        let kernel = self.kernel.map(|k| check_kernel(Path::new(&k))).transpose()?;
        let mut params: Vec<String> = self.cmdline.iter().filter(|c| !c.trim().is_empty()).cloned().collect();
        let kdump_on = self.kdump.as_ref().is_some_and(|k| k.enabled.unwrap_or(true));
        let kdump = self.kdump.unwrap_or_default();
        let core_collector = kdump.core_collector.as_deref().map(check_core_collector).transpose()?;
        let core_collector =
            core_collector.map(|c| c.parse::<CoreCollector>().map_err(ApiError::invalid)).transpose()?;
        match (&self.crashkernel, kdump_on) {
            (Some(size), _) => params.push(format!("{CRASHKERNEL}={}", check_crashkernel(size)?)),
            (None, true) => params.push(format!("{CRASHKERNEL}={DEFAULT_CRASHKERNEL}")),
            (None, false) => {}
        }
        if kdump_on {
            params.push(format!("{KDUMP}=1"));
        }
        if let Some(level) = kdump.dump_level {
            if level > DUMP_LEVEL_ALL {
                return Err(ApiError::invalid(format!("kdump.dump_level is {level}; it is 0 to {DUMP_LEVEL_ALL}")));
            }
            params.push(format!("{KDUMP_LEVEL}={level}"));
        }
        let actions = [
            ("final_action", KDUMP_FINAL_ACTION, &kdump.final_action),
            ("failure_action", KDUMP_FAILURE_ACTION, &kdump.failure_action),
        ];
        for (field, param, action) in actions {
            if let Some(action) = action {
                let action =
                    KdumpAction::parse(action).map_err(|e| ApiError::invalid(format!("kdump.{field}: {e}")))?;
                params.push(format!("{param}={action}"));
            }
        }
        let mut sysctls: BTreeMap<String, String> = BTreeMap::new();
        let watchdog = self.watchdog.unwrap_or_default();
        if let Some(secs) = watchdog.thresh_secs {
            if secs > 60 {
                return Err(ApiError::invalid(format!("watchdog.thresh_secs is {secs}; it is 0 to 60")));
            }
            sysctls.insert("kernel.watchdog_thresh".into(), secs.to_string());
        }
        let flags = [
            ("kernel.softlockup_panic", watchdog.softlockup_panic),
            ("kernel.hardlockup_panic", watchdog.hardlockup_panic),
            ("kernel.hung_task_panic", watchdog.hung_task_panic),
        ];
        for (name, flag) in flags {
            if let Some(flag) = flag {
                sysctls.insert(name.into(), u8::from(flag).to_string());
            }
        }
        if let Some(secs) = watchdog.hung_task_timeout_secs {
            sysctls.insert("kernel.hung_task_timeout_secs".into(), secs.to_string());
        }
        let panic = self.panic.unwrap_or_default();
        if let Some(secs) = panic.timeout_secs {
            sysctls.insert("kernel.panic".into(), secs.to_string());
        }
        if let Some(on_oops) = panic.on_oops {
            sysctls.insert("kernel.panic_on_oops".into(), u8::from(on_oops).to_string());
        }
        for (name, value) in self.sysctls.unwrap_or_default() {
            check_sysctl_name(&name)?;
            sysctls.insert(name, value.text());
        }
        for (name, value) in &sysctls {
            check_boot_value(name, value)?;
            params.push(format!("{SYSCTL_PREFIX}{name}={value}"));
        }
        let spec = VmSpec {
            name,
            vcpus: self.vcpus.unwrap_or(1),
            memory_mib: self.memory_mib.unwrap_or(vmm::config::DEFAULT_MEMORY_MIB),
            cmdline: params.join(" "),
            kernel,
            nmi_watchdog: watchdog.nmi_watchdog.unwrap_or(true),
            kdump: kdump_on,
            on_panic,
            on_crash_loaded,
            dump_format,
            core_collector,
        };
        if !(1..=crate::limits::VMM_MAX_VCPUS).contains(&spec.vcpus) {
            let max = crate::limits::VMM_MAX_VCPUS;
            return Err(ApiError::invalid(format!("vcpus is {}; a VM has 1 to {max} vCPUs", spec.vcpus)));
        }
        // The VMM's own checks (the name, memory, the command line with the added parameters).
        let config = spec.vmm_config(Path::new(""), Path::new(""), Retention::default());
        config.validate().map_err(|e| ApiError::invalid(e.to_string()))?;
        Ok(spec)
    }
}

impl VmSpec {
    /// The VMM's configuration for this VM, serving its control socket at `control` and
    /// writing crashes to `crash_dir`, kept by `retention`.
    pub fn vmm_config(&self, control: &Path, crash_dir: &Path, retention: Retention) -> VmConfig {
        VmConfig {
            kernel: self.kernel.clone().map_or(KernelSource::Embedded, KernelSource::File),
            // into_spec keeps vcpus within the VMM's limit.
            vcpus: u8::try_from(self.vcpus).unwrap_or(u8::MAX),
            memory_mib: self.memory_mib,
            cmdline: self.cmdline.clone(),
            console: ConsoleOutput::Stdout,
            no_reboot: false,
            kvm_device: vmm::config::DEFAULT_KVM_DEVICE.into(),
            control_socket: Some(control.to_path_buf()),
            nmi_watchdog: self.nmi_watchdog,
            crash_dir: crash_dir.to_path_buf(),
            name: self.name.clone(),
            on_panic: self.on_panic,
            on_crash_loaded: self.on_crash_loaded,
            dump_format: self.dump_format,
            retention,
            core_collector: self.core_collector.clone(),
        }
    }
}

/// A value of one of the VMM's choices (`--on-panic`, `--dump-format`, ...), in the VMM's
/// spelling (`dump-and-reboot`; `dump_and_reboot` is accepted too); its default when absent.
fn policy<P: ValueEnum + Default>(field: &str, value: Option<&str>) -> Result<P, ApiError> {
    let Some(value) = value else { return Ok(P::default()) };
    match P::value_variants().iter().find(|p| policy_name(*p) == value.replace('_', "-")) {
        Some(p) => Ok(p.clone()),
        None => {
            let names: Vec<String> = P::value_variants().iter().map(policy_name).collect();
            Err(ApiError::invalid(format!("{field} is {value:?}; it is one of {}", names.join(", "))))
        }
    }
}

/// A choice's name as the VMM spells it (`dump-and-reboot`).
pub fn policy_name<P: ValueEnum>(choice: &P) -> String {
    choice.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()
}

fn check_kernel(path: &Path) -> Result<PathBuf, ApiError> {
    if !path.is_absolute() {
        return Err(ApiError::invalid(format!(
            "kernel {:?} must be an absolute path on the service's host",
            path.display()
        )));
    }
    if !path.is_file() {
        return Err(ApiError::invalid(format!("kernel {:?} is not a file on the service's host", path.display())));
    }
    Ok(path.to_path_buf())
}

fn check_crashkernel(value: &str) -> Result<&str, ApiError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_CRASHKERNEL_LEN
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"@:,-".contains(&b));
    if ok {
        Ok(value)
    } else {
        Err(ApiError::invalid(format!(
            "crashkernel {value:?} is not a crashkernel= value (like 64M, or 512M-2G:64M,2G-:128M)"
        )))
    }
}

/// A boot parameter cannot answer `unknown_sysctl`, so names outside the guest's namespace are
/// refused here.
fn check_sysctl_name(name: &str) -> Result<(), ApiError> {
    if is_sysctl_name(name) && name.starts_with(SYSCTL_NAMESPACE) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!("{name:?} is not a sysctl name (like kernel.panic_on_oops)")))
    }
}

fn check_boot_value(name: &str, value: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty() && value.len() <= MAX_SYSCTL_VALUE_LEN && value.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "the boot value of {name} must be 1 to {MAX_SYSCTL_VALUE_LEN} printable characters without spaces"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use serde_json::json;

    fn spec(body: serde_json::Value) -> Result<VmSpec, ApiError> {
        serde_json::from_value::<CreateVm>(body).unwrap().into_spec("vm-1".into())
    }

    #[test]
    fn fields_become_boot_parameters() {
        let s = spec(json!({
            "name": "web-1", "vcpus": 2, "cmdline": "quiet",
            "kdump": {"dump_level": 16, "final_action": "poweroff"},
            "watchdog": {"thresh_secs": 2, "softlockup_panic": true, "nmi_watchdog": false},
            "panic": {"on_oops": true},
            "sysctls": {"kernel.unknown_nmi_panic": 1}
        }))
        .unwrap();
        assert_eq!(
            s.cmdline,
            "quiet crashkernel=64M kdump=1 kdump_level=16 kdump_final_action=poweroff \
             sysctl.kernel.panic_on_oops=1 sysctl.kernel.softlockup_panic=1 \
             sysctl.kernel.unknown_nmi_panic=1 sysctl.kernel.watchdog_thresh=2"
        );
        assert!(s.kdump && !s.nmi_watchdog);
        let config = s.vmm_config(Path::new("/run/web-1.sock"), Path::new("/crash"), Retention::default());
        assert_eq!((config.name.as_str(), config.vcpus, config.nmi_watchdog), ("web-1", 2, false));
        assert_eq!(config.control_socket.as_deref(), Some(Path::new("/run/web-1.sock")));
        assert_eq!((config.on_panic, config.dump_format), (PanicPolicy::None, DumpFormat::Elf));
        assert_eq!(config.validate(), Ok(()));
        let s = spec(json!({"on_panic": "dump_and_reboot", "on_crash_loaded": "dump"})).unwrap();
        assert_eq!((s.on_panic, s.on_crash_loaded), (PanicPolicy::DumpAndReboot, CrashLoadedPolicy::Dump));
        assert_eq!(
            spec(json!({"dump_format": "kdump-zstd"})).unwrap().dump_format,
            DumpFormat::Kdump(dumpd::kdump::Compression::Zstd)
        );
        assert_eq!(serde_json::to_value(&s).unwrap()["on_panic"], "dump-and-reboot", "as the VMM spells it");
        let collected = spec(json!({"kdump": {"core_collector": "makedumpfile  -l -d 31"}})).unwrap();
        let collected = collected.vmm_config(Path::new("/s"), Path::new("/c"), Retention::default());
        assert_eq!(collected.core_collector.map(|c| c.to_string()).as_deref(), Some("makedumpfile -l -d 31"));
    }

    #[test]
    fn defaults_are_small_and_plain() {
        let s = spec(json!({})).unwrap();
        assert_eq!((s.name.as_str(), s.vcpus, s.memory_mib, s.cmdline.as_str()), ("vm-1", 1, 256, ""));
        assert!(!s.kdump);
        assert_eq!(
            spec(json!({"kdump": {"enabled": false}, "crashkernel": "128M"})).unwrap().cmdline,
            "crashkernel=128M"
        );
    }

    #[test]
    fn bad_values_are_422_and_missing_backends_501() {
        let status = |body| spec(body).unwrap_err().status;
        for bad in [
            json!({"name": "../etc"}),
            json!({"name": ".hidden"}),
            json!({"cmdline": "a\nb"}),
            json!({"crashkernel": "64M kdump=0"}),
            json!({"kdump": {"dump_level": 32}}),
            json!({"kdump": {"final_action": "explode"}}),
            json!({"kdump": {"core_collector": "sh -c reboot"}}),
            json!({"watchdog": {"thresh_secs": 61}}),
            json!({"sysctls": {"vm.x": 1}}),
            json!({"sysctls": {"kernel.panic": "1 2"}}),
            json!({"kernel": "relative/path"}),
            json!({"kernel": "/nonexistent/kernel"}),
            json!({"cmdline": "x".repeat(3000)}),
        ] {
            assert_eq!(status(bad.clone()), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        }
        assert_eq!(status(json!({"on_panic": "explode"})), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status(json!({"on_crash_loaded": "reboot"})), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status(json!({"dump_format": "tar"})), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(serde_json::from_value::<CreateVm>(json!({"vcpu": 2})).is_err(), "unknown fields are refused");
    }
}
