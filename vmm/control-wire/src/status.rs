//! The result of `status` (docs/control-protocol.md, "Commands"): what the VMM says of its
//! machine. A client reads it to learn where a VM is without having seen its events (the
//! crashvisor service does so when it adopts a running VMM again after a restart).

use serde::{Deserialize, Serialize};

crashvisor_abi::names! {
    /// The VMM's machine, as `status.state` names it.
    MachineState {
        /// A machine runs.
        Running = "running",
        /// A machine exists; its vCPUs are paused.
        Paused = "paused",
        /// Between a reset and the next machine.
        Rebooting = "rebooting",
        /// The guest powered off; the VMM exits.
        PoweredOff = "powered_off",
        /// The VM ended otherwise (`shutdown`, a reset loop, ...); the VMM exits.
        Stopped = "stopped",
    }
}

/// The host's periodic NMI, as the guest has set it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NmiWatchdogStatus {
    /// Whether it ticks.
    pub enabled: bool,
    /// Its period.
    pub period_ms: u64,
}

/// `status`'s result. Fields a newer VMM adds are ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The machine's state.
    pub state: MachineState,
    /// vCPUs.
    pub vcpus: usize,
    /// Machines built so far (1 for the first boot; each reset builds the next).
    pub boots: u64,
    /// Whether the guest's control thread is up and answering.
    pub guest_control: bool,
    /// The guest kernel's release, once its control thread said hello in this machine.
    pub release: Option<String>,
    /// The CPUs the guest brought up, once it said hello.
    pub guest_cpus: Option<u32>,
    /// The NMI watchdog.
    #[serde(default)]
    pub nmi_watchdog: NmiWatchdogStatus,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_documented_result_reads() {
        let result = json!({"state": "paused", "vcpus": 2, "boots": 3, "guest_control": false, "release": "6.18.0",
                            "guest_cpus": 2, "nmi_watchdog": {"enabled": true, "period_ms": 1000}, "later": 1});
        let status: Status = serde_json::from_value(result).unwrap();
        assert_eq!((status.state, status.boots, status.guest_control), (MachineState::Paused, 3, false));
        assert_eq!(status.nmi_watchdog, NmiWatchdogStatus { enabled: true, period_ms: 1000 });
        let rebooting = json!({"state": "rebooting", "vcpus": 1, "boots": 1, "guest_control": false,
                               "release": null, "guest_cpus": null});
        assert_eq!(serde_json::from_value::<Status>(rebooting).unwrap().state, MachineState::Rebooting);
        assert!(serde_json::from_value::<Status>(json!({"state": "melting", "vcpus": 1, "boots": 1,
            "guest_control": false, "release": null, "guest_cpus": null}))
        .is_err());
    }
}
