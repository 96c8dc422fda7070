//! Events: the lines every client receives as things happen, `{"event":"<name>", ...}`
//! (docs/control-protocol.md, "Events").

use crashvisor_abi::platform::Detector;
use serde::{Deserialize, Serialize};

/// One event line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The guest's control thread said hello: the guest is up.
    Booted {
        /// Boots of this VM so far (1 for the first; a capture kernel repeats its crashed boot's).
        boot: u64,
        /// The kernel release.
        release: String,
        /// CPUs online in the guest.
        cpus: u32,
    },
    /// A lockup detector fired.
    LockupDetected {
        /// Which detector.
        kind: LockupKind,
        /// The locked-up CPU (for hung tasks: the CPU the detector ran on).
        cpu: u8,
        /// The raw argument: seconds stuck (soft), reporting CPU (hard), pid (hung task).
        arg: u16,
    },
    /// The guest printed an oops.
    Oops {
        /// The CPU that oopsed.
        cpu: u8,
        /// The current task's pid.
        pid: u16,
    },
    /// The guest panicked (reported once per boot, or per kernel after a kdump kernel starts).
    Panic {
        /// How the host learned of it.
        source: PanicSource,
        /// The guest's crash reason, or just the CPU.
        #[serde(flatten)]
        about: PanicAbout,
    },
    /// The guest took an NMI it could not explain.
    UnknownNmi {
        /// The CPU.
        cpu: u8,
        /// The port 0x61 reason byte the guest read.
        reason: u16,
    },
    /// A capture (kdump) kernel booted after a panic (pvpanic CRASH_LOADED).
    CrashLoaded,
    /// A capture kernel's dump descriptor was accepted; the host is writing the vmcore.
    CaptureStarted {
        /// The makedumpfile `-d` level the capture kernel applied.
        dump_level: u32,
        /// The vmcore's apparent size in bytes.
        size: u64,
        /// Number of memory ranges to copy.
        ranges: u64,
    },
    /// A host-side dump stopped the vCPUs, read their registers and took a copy-on-write view of
    /// memory; the guest runs again (unless the policy says otherwise) while the vmcore is
    /// written.
    SnapshotTaken {
        /// How long the vCPUs were stopped, in microseconds.
        pause_us: u64,
        /// Bytes of memory to write.
        total: u64,
    },
    /// A host-side dump's progress (a few times per second).
    DumpProgress {
        /// Bytes of memory written.
        done: u64,
        /// Bytes to write in all.
        total: u64,
    },
    /// A crash directory was committed to the crash store.
    VmcoreReady {
        /// The crash's id: its directory's name.
        id: String,
        /// The crash directory.
        path: String,
        /// The vmcore's apparent size in bytes.
        size: u64,
        /// Bytes the vmcore takes on disk (zero pages are holes).
        on_disk: u64,
    },
    /// No vmcore: the capture kernel gave up, its descriptor broke a rule, or writing failed.
    DumpFailed {
        /// Why.
        reason: String,
    },
    /// An operator's NMI was injected.
    NmiInjected {
        /// The vCPUs it went to.
        cpus: Vec<usize>,
    },
    /// The VM was paused.
    Paused,
    /// The VM was resumed.
    Resumed,
    /// The guest reset; the VMM is rebooting it.
    Rebooting {
        /// How it reset.
        cause: ResetCause,
    },
    /// The guest powered off; the VMM ends.
    PoweredOff,
    /// The VM stopped for another reason; the VMM ends.
    Stopped {
        /// Why.
        reason: String,
    },
}

impl Event {
    /// The event line, with its `\n`.
    pub fn to_line(&self) -> String {
        crate::to_line(self)
    }
}

crashvisor_abi::names! {
    /// The kinds of lockup the guest detects.
    LockupKind {
        /// The soft-lockup detector (a CPU did not schedule).
        Soft = "soft",
        /// The hard-lockup detector (a CPU took no timer interrupts).
        Hard = "hard",
        /// The hung-task detector.
        HungTask = "hung_task",
    }
}

crashvisor_abi::names! {
    /// How the guest told the host it panicked.
    PanicSource {
        /// The platform device's event register.
        Event = "event",
        /// pvpanic PANICKED.
        Pvpanic = "pvpanic",
    }
}

/// What a panic event says beyond its source: the guest's crash reason when it gave one (it
/// names the CPU), else the CPU when the host knows it. One `cpu` key either way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PanicAbout {
    /// The crash reason the guest handed over.
    Reason(CrashInfo),
    /// No reason: the panicking CPU, if known.
    Cpu {
        /// The CPU.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cpu: Option<u32>,
    },
}

/// A guest's crash reason (`crashvisor_abi::platform::CrashReason`), validated, as the host
/// reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashInfo {
    /// The detector or path that panicked.
    #[serde(with = "crate::names")]
    pub detector: Detector,
    /// The panicking CPU.
    pub cpu: u32,
    /// The current task's pid.
    pub pid: u32,
    /// The current task's name.
    pub comm: String,
    /// The panic message.
    pub message: String,
}

crashvisor_abi::names! {
    /// How the guest reset the machine (or the VMM reset it).
    ResetCause {
        /// A write to the reset control register (0xcf9).
        ResetControl = "reset_control",
        /// The i8042 keyboard controller's reset pulse.
        KeyboardController = "keyboard_controller",
        /// A triple fault (KVM_EXIT_SHUTDOWN).
        TripleFault = "triple_fault",
        /// The VMM's panic policy (`--on-panic reboot`, `dump-and-reboot`).
        PanicPolicy = "panic_policy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(event: &Event) -> String {
        let line = event.to_line();
        assert_eq!(&serde_json::from_str::<Event>(&line).unwrap(), event, "{line}");
        line
    }

    #[test]
    fn events_have_fixed_shapes_and_read_back() {
        assert_eq!(round_trip(&Event::Paused), "{\"event\":\"paused\"}\n");
        assert_eq!(
            round_trip(&Event::Rebooting { cause: ResetCause::TripleFault }),
            "{\"event\":\"rebooting\",\"cause\":\"triple_fault\"}\n"
        );
        assert_eq!(
            round_trip(&Event::NmiInjected { cpus: vec![0, 1] }),
            "{\"event\":\"nmi_injected\",\"cpus\":[0,1]}\n"
        );
        let reason = CrashInfo {
            detector: Detector::HardLockup,
            cpu: 1,
            pid: 0,
            comm: "swapper/1".into(),
            message: "Hard LOCKUP".into(),
        };
        assert_eq!(
            round_trip(&Event::Panic { source: PanicSource::Event, about: PanicAbout::Reason(reason) }),
            "{\"event\":\"panic\",\"source\":\"event\",\"detector\":\"hardlockup\",\"cpu\":1,\"pid\":0,\
             \"comm\":\"swapper/1\",\"message\":\"Hard LOCKUP\"}\n"
        );
        let cpu_only = Event::Panic { source: PanicSource::Pvpanic, about: PanicAbout::Cpu { cpu: Some(2) } };
        assert_eq!(round_trip(&cpu_only), "{\"event\":\"panic\",\"source\":\"pvpanic\",\"cpu\":2}\n");
        let nothing = Event::Panic { source: PanicSource::Pvpanic, about: PanicAbout::Cpu { cpu: None } };
        assert_eq!(round_trip(&nothing), "{\"event\":\"panic\",\"source\":\"pvpanic\"}\n");
    }
}
