//! What the service admits: how many VMs, how large, against the host's CPUs and RAM. The
//! admission check is a pure function of the limits, the live VMs and the request.

use std::fmt;

use crate::error::ApiError;

/// Most VMs the service holds by default (every state: stopped and failed VMs are kept, with
/// their console and reason, until deleted).
pub const DEFAULT_MAX_VMS: usize = 64;
/// Of the host's RAM, the share guest RAM may take in total by default, in percent (the rest
/// is the host's, the VMMs' own few MiB, and page cache for vmcores).
pub const DEFAULT_MEMORY_SHARE_PERCENT: u64 = 80;
/// vCPUs all live VMs may have together, per host CPU, by default. Idle guests are tickless and
/// cost nothing, and crash tests want many small VMs; a guest that spins still gets its share.
pub const DEFAULT_VCPUS_PER_HOST_CPU: usize = 16;
/// The VMM's own limits (`vmm --help`).
pub const VMM_MAX_VCPUS: u32 = 16;
/// The VMM's own limits, MiB.
pub const VMM_MIN_MEMORY_MIB: u64 = vmm::config::MIN_MEMORY_MIB;
/// The VMM's own limits, MiB.
pub const VMM_MAX_MEMORY_MIB: u64 = vmm::config::MAX_MEMORY_MIB;

/// The host's CPUs and RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Host {
    /// CPUs this process may run on.
    pub cpus: usize,
    /// `MemTotal` in MiB.
    pub memory_mib: u64,
}

impl Host {
    /// Reads the host's CPUs (`available_parallelism`) and `MemTotal` from `/proc/meminfo`.
    pub fn detect() -> anyhow::Result<Self> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let meminfo = std::fs::read_to_string("/proc/meminfo")
            .map_err(|e| anyhow::anyhow!("cannot read /proc/meminfo to size the memory limits: {e}"))?;
        let memory_mib = mem_total_mib(&meminfo).ok_or_else(|| anyhow::anyhow!("no MemTotal in /proc/meminfo"))?;
        Ok(Self { cpus, memory_mib })
    }
}

/// `MemTotal:  24683596 kB` → MiB.
fn mem_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// The service's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Limits {
    /// VMs held at once, in any state.
    pub max_vms: usize,
    /// vCPUs of one VM.
    pub max_vcpus_per_vm: u32,
    /// vCPUs of all live VMs together.
    pub max_total_vcpus: usize,
    /// Guest RAM of one VM, MiB.
    pub max_memory_mib_per_vm: u64,
    /// Guest RAM of all live VMs together, MiB.
    pub max_total_memory_mib: u64,
}

impl Limits {
    /// The defaults for `host`: one VM has at most the host's CPUs (and the VMM's 16);
    /// all live VMs together `DEFAULT_VCPUS_PER_HOST_CPU` per host CPU and
    /// `DEFAULT_MEMORY_SHARE_PERCENT` of its RAM.
    pub fn for_host(host: Host) -> Self {
        let total_memory = host.memory_mib * DEFAULT_MEMORY_SHARE_PERCENT / 100;
        Self {
            max_vms: DEFAULT_MAX_VMS,
            max_vcpus_per_vm: u32::try_from(host.cpus).unwrap_or(u32::MAX).clamp(1, VMM_MAX_VCPUS),
            max_total_vcpus: host.cpus.max(1) * DEFAULT_VCPUS_PER_HOST_CPU,
            max_memory_mib_per_vm: total_memory.min(VMM_MAX_MEMORY_MIB),
            max_total_memory_mib: total_memory,
        }
    }

    /// Checks the limits themselves against the host and the VMM.
    pub fn validate(&self, host: Host) -> Result<(), String> {
        if self.max_vms == 0 {
            return Err("--max-vms must be at least 1".into());
        }
        if !(1..=VMM_MAX_VCPUS).contains(&self.max_vcpus_per_vm) {
            return Err(format!("--max-vcpus must be 1 to {VMM_MAX_VCPUS} (the VMM's limit)"));
        }
        if self.max_memory_mib_per_vm < VMM_MIN_MEMORY_MIB || self.max_memory_mib_per_vm > VMM_MAX_MEMORY_MIB {
            return Err(format!("--max-memory-mib must be {VMM_MIN_MEMORY_MIB} to {VMM_MAX_MEMORY_MIB}"));
        }
        if self.max_total_memory_mib > host.memory_mib {
            return Err(format!(
                "--max-total-memory-mib {} exceeds the host's RAM ({} MiB)",
                self.max_total_memory_mib, host.memory_mib
            ));
        }
        Ok(())
    }

    /// Whether one more VM of `vcpus` and `memory_mib` fits next to `held` VMs, of which the
    /// live ones use `live`.
    pub fn admit(&self, held: usize, live: Usage, vcpus: u32, memory_mib: u64) -> Result<(), ApiError> {
        if vcpus == 0 || vcpus > self.max_vcpus_per_vm {
            return Err(ApiError::invalid(format!(
                "vcpus is {vcpus}; a VM has 1 to {} vCPUs on this host",
                self.max_vcpus_per_vm
            )));
        }
        if memory_mib < VMM_MIN_MEMORY_MIB || memory_mib > self.max_memory_mib_per_vm {
            return Err(ApiError::invalid(format!(
                "memory_mib is {memory_mib}; a VM has {VMM_MIN_MEMORY_MIB} to {} MiB on this host",
                self.max_memory_mib_per_vm
            )));
        }
        if held >= self.max_vms {
            return Err(ApiError::conflict(
                "limit_exceeded",
                format!("the service holds its limit of {} VMs; delete stopped or unused VMs first", self.max_vms),
            ));
        }
        if live.vcpus + vcpus as usize > self.max_total_vcpus {
            return Err(ApiError::conflict(
                "limit_exceeded",
                format!(
                    "live VMs have {} vCPUs; {vcpus} more would exceed the limit of {}",
                    live.vcpus, self.max_total_vcpus
                ),
            ));
        }
        if live.memory_mib + memory_mib > self.max_total_memory_mib {
            return Err(ApiError::conflict(
                "limit_exceeded",
                format!(
                    "live VMs have {} MiB; {memory_mib} MiB more would exceed the limit of {} MiB",
                    live.memory_mib, self.max_total_memory_mib
                ),
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} VMs, {} vCPUs and {} MiB per VM, {} vCPUs and {} MiB in total",
            self.max_vms,
            self.max_vcpus_per_vm,
            self.max_memory_mib_per_vm,
            self.max_total_vcpus,
            self.max_total_memory_mib
        )
    }
}

/// What live VMs use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Their vCPUs.
    pub vcpus: usize,
    /// Their guest RAM, MiB.
    pub memory_mib: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    const HOST: Host = Host { cpus: 2, memory_mib: 24_000 };

    #[test]
    fn defaults_follow_the_host() {
        let limits = Limits::for_host(HOST);
        assert_eq!(limits.max_vcpus_per_vm, 2);
        assert_eq!(limits.max_total_vcpus, 32);
        assert_eq!(limits.max_total_memory_mib, 19_200);
        assert_eq!(limits.max_memory_mib_per_vm, 19_200);
        assert_eq!(limits.validate(HOST), Ok(()));
        let big = Limits::for_host(Host { cpus: 64, memory_mib: 1 << 20 });
        assert_eq!((big.max_vcpus_per_vm, big.max_memory_mib_per_vm), (16, 65_536));
    }

    #[test]
    fn admission_checks_each_limit() {
        let limits = Limits::for_host(HOST);
        let none = Usage::default();
        assert_eq!(limits.admit(0, none, 2, 256), Ok(()));
        let status = |r: Result<(), ApiError>| r.unwrap_err().status;
        assert_eq!(status(limits.admit(0, none, 3, 256)), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status(limits.admit(0, none, 0, 256)), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status(limits.admit(0, none, 1, 16)), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status(limits.admit(0, none, 1, 20_000)), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status(limits.admit(64, none, 1, 128)), StatusCode::CONFLICT);
        let busy = Usage { vcpus: 31, memory_mib: 19_000 };
        assert_eq!(status(limits.admit(1, busy, 2, 128)), StatusCode::CONFLICT);
        assert_eq!(status(limits.admit(1, busy, 1, 256)), StatusCode::CONFLICT);
        assert_eq!(limits.admit(1, busy, 1, 200), Ok(()));
    }

    #[test]
    fn limits_are_checked_against_the_host() {
        let mut limits = Limits::for_host(HOST);
        limits.max_total_memory_mib = 30_000;
        assert!(limits.validate(HOST).unwrap_err().contains("exceeds the host's RAM"));
        assert_eq!(mem_total_mib("MemFree: 1 kB\nMemTotal:       24683596 kB\n"), Some(24_105));
    }
}
