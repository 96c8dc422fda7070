//! A VM's state as the service reports it, and the pure function that moves it along as the
//! VMM's control events arrive (docs/control-protocol.md) and its process ends. Tested without
//! a VM.

use std::time::{Duration, Instant};

use crashvisor_control::{Event, PanicAbout};
use serde::Serialize;
use serde_json::{json, Value};

use crate::events::NewEvent;

/// The states of a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// The VMM runs; the guest has not said hello yet.
    Booting,
    /// The guest is up.
    Running,
    /// Paused by the API.
    Paused,
    /// A lockup detector fired in this boot (the guest may recover, or panic).
    Lockup,
    /// The guest panicked; no capture kernel has taken over (yet).
    Panicked,
    /// A kdump capture kernel runs, or the host writes its vmcore.
    Capturing,
    /// The guest reset; the VMM rebuilds the machine (or the API restarts the VMM).
    Rebooting,
    /// The VMM exited normally (power off, or stopped by the API).
    Stopped,
    /// The VMM exited unexpectedly; see the VM's `failure`.
    Failed,
}

impl VmState {
    /// Every state, in order.
    pub const ALL: [Self; 9] = [
        Self::Booting,
        Self::Running,
        Self::Paused,
        Self::Lockup,
        Self::Panicked,
        Self::Capturing,
        Self::Rebooting,
        Self::Stopped,
        Self::Failed,
    ];

    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Booting => "booting",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Lockup => "lockup",
            Self::Panicked => "panicked",
            Self::Capturing => "capturing",
            Self::Rebooting => "rebooting",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
        }
    }

    /// Whether a VMM process runs for the VM.
    pub fn is_live(self) -> bool {
        !matches!(self, Self::Stopped | Self::Failed)
    }
}

/// What a state change asks the VM's task to do besides publishing the new status.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Publish this event.
    Publish(NewEvent),
    /// Count a lockup of this kind.
    Lockup(String),
    /// Count a panic from this detector.
    Panic(String),
    /// Count a vmcore.
    Vmcore {
        /// Apparent bytes.
        size: u64,
        /// Bytes on disk.
        on_disk: u64,
        /// From `capture_started`, when seen.
        capture: Option<Duration>,
    },
    /// Count a failed dump.
    DumpFailed,
    /// Count a failed VM.
    Failed,
}

/// How the VMM process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessEnd {
    /// Whether it exited with status 0.
    pub success: bool,
    /// Its exit status in words (`exit status 1`, `killed by signal 9`).
    pub status: String,
    /// What it printed last on stderr and the console, for a failure's reason.
    pub last_output: String,
}

/// The state and counters of one VM, driven by its events.
#[derive(Clone, Debug)]
pub struct Tracker {
    /// The state.
    pub state: VmState,
    before_pause: VmState,
    /// Guest boots so far (a kdump capture kernel is not one; a reboot is).
    pub boots: u64,
    /// When the current boot said hello.
    pub booted_at: Option<Instant>,
    /// The guest kernel's release.
    pub release: Option<String>,
    /// Panics so far.
    pub crashes: u64,
    /// The last panic's fields (detector, cpu, message, ...).
    pub last_panic: Option<Value>,
    /// The last lockup's fields (kind, cpu, arg).
    pub last_lockup: Option<Value>,
    /// Ids of the vmcores this VM produced, oldest first.
    pub vmcores: Vec<String>,
    /// Why the VM failed.
    pub failure: Option<String>,
    /// The VMM's own boot number of the machine running now.
    vmm_boot: u64,
    panicked_this_boot: bool,
    capture_started: Option<Instant>,
    /// What the VMM said when it stopped (`powered_off`, or a `stopped` reason).
    stop_reason: Option<String>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    /// A VM whose VMM was just started.
    pub fn new() -> Self {
        Self {
            state: VmState::Booting,
            before_pause: VmState::Booting,
            boots: 0,
            booted_at: None,
            release: None,
            crashes: 0,
            last_panic: None,
            last_lockup: None,
            vmcores: Vec::new(),
            failure: None,
            vmm_boot: 0,
            panicked_this_boot: false,
            capture_started: None,
            stop_reason: None,
        }
    }

    /// A fresh VMM process for the same VM (a reboot by the API): counters stay.
    pub fn restarted(&mut self) {
        self.state = VmState::Booting;
        self.vmm_boot = 0;
        self.panicked_this_boot = false;
        self.booted_at = None;
        self.stop_reason = None;
    }

    /// Applies one control event seen at `now`.
    pub fn on_control_event(&mut self, event: &Event, now: Instant) -> Vec<Effect> {
        // The service's event carries the VMM's fields; most keep the VMM's name too.
        let Ok(Value::Object(mut fields)) = serde_json::to_value(event) else { return Vec::new() };
        let Some(Value::String(name)) = fields.remove("event") else { return Vec::new() };
        let mut effects = Vec::new();
        let api_name = match event {
            Event::Booted { boot, release, .. } => {
                if self.panicked_this_boot && *boot == self.vmm_boot {
                    // The capture kernel's hello: same machine, same boot number.
                    self.state = VmState::Capturing;
                    "capture_kernel_booted"
                } else {
                    self.vmm_boot = *boot;
                    self.boots += 1;
                    self.booted_at = Some(now);
                    self.panicked_this_boot = false;
                    self.release = Some(release.clone());
                    self.state = VmState::Running;
                    fields.insert("boot".into(), json!(self.boots));
                    "booted"
                }
            }
            Event::LockupDetected { kind, .. } => {
                if matches!(self.state, VmState::Running | VmState::Booting) {
                    self.state = VmState::Lockup;
                }
                self.last_lockup = Some(Value::Object(fields.clone()));
                effects.push(Effect::Lockup(kind.as_str().to_owned()));
                "lockup_detected"
            }
            Event::Panic { about, .. } => {
                if self.state == VmState::Capturing {
                    // The capture kernel itself panicked: not a crash of the VM's kernel.
                    fields.insert("capture_kernel".into(), json!(true));
                } else {
                    self.state = VmState::Panicked;
                    self.panicked_this_boot = true;
                    self.crashes += 1;
                    self.last_panic = Some(Value::Object(fields.clone()));
                    let detector = match about {
                        PanicAbout::Reason(reason) => reason.detector.as_str(),
                        PanicAbout::Cpu { .. } => "unknown",
                    };
                    effects.push(Effect::Panic(detector.to_owned()));
                }
                "panicked"
            }
            Event::CrashLoaded => {
                self.state = VmState::Capturing;
                "crash_loaded"
            }
            Event::CaptureStarted { .. } => {
                self.state = VmState::Capturing;
                self.capture_started = Some(now);
                "capture_started"
            }
            Event::VmcoreReady { id, size, on_disk, .. } => {
                self.vmcores.push(id.clone());
                let capture = self.capture_started.take().map(|t| now.saturating_duration_since(t));
                effects.push(Effect::Vmcore { size: *size, on_disk: *on_disk, capture });
                "vmcore_ready"
            }
            Event::DumpFailed { .. } => {
                self.capture_started = None;
                effects.push(Effect::DumpFailed);
                "dump_failed"
            }
            Event::Paused => {
                if self.state != VmState::Paused {
                    self.before_pause = self.state;
                }
                self.state = VmState::Paused;
                "paused"
            }
            Event::Resumed => {
                if self.state == VmState::Paused {
                    self.state = self.before_pause;
                }
                "resumed"
            }
            Event::Rebooting { .. } => {
                self.state = VmState::Rebooting;
                self.booted_at = None;
                "rebooted"
            }
            Event::PoweredOff => {
                self.stop_reason = Some("the guest powered off".into());
                return effects;
            }
            Event::Stopped { reason } => {
                self.stop_reason = Some(format!("the VMM stopped the VM: {reason}"));
                return effects;
            }
            Event::Oops { .. }
            | Event::UnknownNmi { .. }
            | Event::NmiInjected { .. }
            | Event::SnapshotTaken { .. }
            | Event::DumpProgress { .. } => &name,
        };
        effects.insert(0, Effect::Publish(NewEvent { event: api_name.to_owned(), fields }));
        effects
    }

    /// The VMM could not be started at all.
    pub fn on_spawn_failure(&mut self, reason: String) -> Vec<Effect> {
        self.state = VmState::Failed;
        self.booted_at = None;
        self.failure = Some(reason.clone());
        vec![Effect::Publish(NewEvent::new("failed", json!({ "reason": reason }))), Effect::Failed]
    }

    /// The VMM process ended; `requested` when the API stopped it.
    pub fn on_process_end(&mut self, end: &ProcessEnd, requested: bool) -> Vec<Effect> {
        self.booted_at = None;
        if requested || (end.success && self.stop_reason.is_some()) {
            self.state = VmState::Stopped;
            let reason = match (requested, &self.stop_reason) {
                (true, _) => "stopped through the API".to_owned(),
                (false, Some(reason)) => reason.clone(),
                (false, None) => end.status.clone(),
            };
            return vec![Effect::Publish(NewEvent::new("stopped", json!({ "reason": reason })))];
        }
        self.state = VmState::Failed;
        let mut reason = match &self.stop_reason {
            Some(stop) => format!("{stop}; the VMM exited with {}", end.status),
            None => format!("the VMM exited unexpectedly with {}", end.status),
        };
        if !end.last_output.is_empty() {
            reason.push_str("; last output:\n");
            reason.push_str(&end.last_output);
        }
        self.failure = Some(reason.clone());
        vec![Effect::Publish(NewEvent::new("failed", json!({ "reason": reason, "exit": end.status }))), Effect::Failed]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds the tracker an event line as the VMM writes it.
    fn event(t: &mut Tracker, line: Value, now: Instant) -> Vec<Effect> {
        t.on_control_event(&serde_json::from_value(line).expect("an event line"), now)
    }

    fn published(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Publish(event) => Some(event.event.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_kdump_crash_goes_through_capture_and_reboot() {
        let mut t = Tracker::new();
        let t0 = Instant::now();
        let mut feed = |line: Value| event(&mut t, line, t0);
        assert_eq!(published(&feed(json!({"event":"booted","boot":1,"release":"6.18","cpus":2}))), ["booted"]);
        let lockup = feed(json!({"event":"lockup_detected","kind":"soft","cpu":1,"arg":4}));
        assert_eq!(lockup[1], Effect::Lockup("soft".into()));
        let panic = feed(json!({"event":"panic","source":"event","detector":"softlockup","cpu":1,"pid":7,
                                "comm":"softlockup/1","message":"softlockup: hung tasks"}));
        assert_eq!(panic[1], Effect::Panic("softlockup".into()));
        assert_eq!(published(&feed(json!({"event":"crash_loaded"}))), ["crash_loaded"]);
        let hello = feed(json!({"event":"booted","boot":1,"release":"6.18","cpus":1}));
        assert_eq!(published(&hello), ["capture_kernel_booted"]);
        feed(json!({"event":"capture_started","dump_level":31,"size":10,"ranges":1}));
        let ready = feed(json!({"event":"vmcore_ready","id":"vm-x","path":"/c/vm-x","size":10,"on_disk":4}));
        assert!(matches!(ready[1], Effect::Vmcore { size: 10, on_disk: 4, capture: Some(_) }));
        assert_eq!(published(&feed(json!({"event":"rebooting","cause":"reset_control"}))), ["rebooted"]);
        assert_eq!(t.state, VmState::Rebooting);
        event(&mut t, json!({"event":"booted","boot":2,"release":"6.18","cpus":2}), t0);
        assert_eq!((t.state, t.boots, t.crashes), (VmState::Running, 2, 1));
        assert_eq!(t.vmcores, ["vm-x"]);
        assert_eq!(t.last_panic.as_ref().unwrap()["detector"], "softlockup");
    }

    #[test]
    fn pause_returns_to_the_state_before() {
        let mut t = Tracker::new();
        let now = Instant::now();
        event(&mut t, json!({"event":"booted","boot":1,"release":"6.18","cpus":1}), now);
        event(&mut t, json!({"event":"lockup_detected","kind":"hard","cpu":0,"arg":1}), now);
        event(&mut t, json!({"event":"paused"}), now);
        assert_eq!(t.state, VmState::Paused);
        event(&mut t, json!({"event":"resumed"}), now);
        assert_eq!(t.state, VmState::Lockup);
    }

    #[test]
    fn a_capture_kernel_panic_is_not_a_second_crash() {
        let mut t = Tracker::new();
        let now = Instant::now();
        event(&mut t, json!({"event":"booted","boot":1,"release":"6.18","cpus":1}), now);
        event(&mut t, json!({"event":"panic","source":"pvpanic"}), now);
        event(&mut t, json!({"event":"crash_loaded"}), now);
        let effects = event(&mut t, json!({"event":"panic","source":"pvpanic"}), now);
        assert_eq!(effects.len(), 1, "published, not counted");
        assert_eq!(t.crashes, 1);
    }

    #[test]
    fn other_events_pass_through_under_their_names() {
        let mut t = Tracker::new();
        let now = Instant::now();
        assert_eq!(published(&event(&mut t, json!({"event":"oops","cpu":0,"pid":3}), now)), ["oops"]);
        let effects = event(&mut t, json!({"event":"nmi_injected","cpus":[0,1]}), now);
        let [Effect::Publish(nmi)] = effects.as_slice() else { panic!("{effects:?}") };
        assert_eq!((nmi.event.as_str(), Value::Object(nmi.fields.clone())), ("nmi_injected", json!({"cpus": [0, 1]})));
    }

    #[test]
    fn process_ends_are_stopped_or_failed() {
        let killed = ProcessEnd { success: false, status: "killed by signal 9".into(), last_output: "x".into() };
        let mut t = Tracker::new();
        let effects = t.on_process_end(&killed, false);
        assert_eq!(t.state, VmState::Failed);
        assert!(t.failure.as_ref().unwrap().contains("killed by signal 9"));
        assert_eq!(effects.last(), Some(&Effect::Failed));

        let mut t = Tracker::new();
        event(&mut t, json!({"event":"powered_off"}), Instant::now());
        let clean = ProcessEnd { success: true, status: "exit status 0".into(), last_output: String::new() };
        assert_eq!(published(&t.on_process_end(&clean, false)), ["stopped"]);
        assert_eq!(t.state, VmState::Stopped);

        let mut t = Tracker::new();
        t.on_process_end(&killed, true);
        assert_eq!(t.state, VmState::Stopped, "the API asked for it");

        let mut t = Tracker::new();
        event(&mut t, json!({"event":"stopped","reason":"RIP 0x10: cannot emulate"}), Instant::now());
        let five = ProcessEnd { success: false, status: "exit status 5".into(), last_output: String::new() };
        t.on_process_end(&five, false);
        assert_eq!(t.state, VmState::Failed);
        assert!(t.failure.as_ref().unwrap().contains("cannot emulate"));
    }
}
