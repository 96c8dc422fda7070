//! A VM's state as the service reports it, and the pure function that moves it along as the
//! VMM's control events arrive (docs/control-protocol.md), as its process ends, and when a
//! restarted service adopts its VMM again. Tested without a VM. The state directory keeps it
//! whole (it is serde), so a restarted service goes on from where the last one was.

use std::time::{Duration, Instant};

use crashvisor_control::{Event, MachineState, PanicAbout, Status};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::events::NewEvent;

/// The states of a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Whether it exited with status 0 (`None`: not known, it was not this service's child).
    pub success: Option<bool>,
    /// Its exit status in words (`exit status 1`, `killed by signal 9`).
    pub status: String,
    /// What it printed last on stderr and the console, for a failure's reason.
    pub last_output: String,
}

/// The state and counters of one VM, driven by its events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tracker {
    /// The state.
    pub state: VmState,
    before_pause: VmState,
    /// Guest boots so far (a kdump capture kernel is not one; a reboot is).
    pub boots: u64,
    /// When the current boot said hello (kept as wall-clock time across a restart).
    #[serde(with = "instant_as_unix_ms")]
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
    /// Failed captures recorded after a VMM of this VM ended, announced already (see
    /// [`super::adopt::failure_key`]).
    #[serde(default)]
    pub failures_announced: Vec<String>,
    /// Why the VM failed.
    pub failure: Option<String>,
    /// The VMM's own boot number of the machine running now.
    vmm_boot: u64,
    panicked_this_boot: bool,
    /// Not kept across a restart: a capture that spans one is not timed.
    #[serde(skip)]
    capture_started: Option<Instant>,
    /// What the VMM said when it stopped (`powered_off`, or a `stopped` reason).
    stop_reason: Option<String>,
    /// A dump is being written (from `capture_started` or `snapshot_taken` to `vmcore_ready`
    /// or `dump_failed`); not kept across a restart.
    #[serde(skip)]
    dumping: bool,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    /// Whether a dump is being written (a stop waits longer for it).
    pub fn is_dumping(&self) -> bool {
        self.dumping
    }

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
            failures_announced: Vec::new(),
            failure: None,
            vmm_boot: 0,
            panicked_this_boot: false,
            capture_started: None,
            stop_reason: None,
            dumping: false,
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
                self.dumping = true;
                "capture_started"
            }
            Event::VmcoreReady { id, size, on_disk, .. } => {
                if self.vmcores.contains(id) {
                    // Announced already: found in the crash store after a restart, and then
                    // reported by the VMM as well.
                    return effects;
                }
                self.vmcores.push(id.clone());
                self.dumping = false;
                let capture = self.capture_started.take().map(|t| now.saturating_duration_since(t));
                effects.push(Effect::Vmcore { size: *size, on_disk: *on_disk, capture });
                "vmcore_ready"
            }
            Event::DumpFailed { .. } => {
                self.capture_started = None;
                self.dumping = false;
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
            Event::Oops { .. } | Event::UnknownNmi { .. } | Event::NmiInjected { .. } | Event::DumpProgress { .. } => {
                &name
            }
            Event::SnapshotTaken { .. } => {
                self.dumping = true;
                &name
            }
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

    /// A restarted service could not adopt the VM's VMM: it ended while no service ran, or it
    /// could not be served (`reason` says which). Failed, unless the VMM had said it stops.
    pub fn on_lost(&mut self, reason: &str, last_output: &str) -> Vec<Effect> {
        let end = ProcessEnd { success: None, status: "an unknown status".into(), last_output: String::new() };
        if self.stop_reason.is_some() {
            return self.on_process_end(&end, false);
        }
        self.booted_at = None;
        let mut failure = format!("{reason}; the VM was {} when the service last heard of it", self.state.as_str());
        self.state = VmState::Failed;
        if !last_output.is_empty() {
            failure.push_str("; last output:\n");
            failure.push_str(last_output);
        }
        self.failure = Some(failure.clone());
        vec![Effect::Publish(NewEvent::new("failed", json!({ "reason": failure, "exit": "unknown" }))), Effect::Failed]
    }

    /// The VMM process ended; `requested` when the API stopped it. An end of unknown status
    /// after the VMM said why it stops is a stop.
    pub fn on_process_end(&mut self, end: &ProcessEnd, requested: bool) -> Vec<Effect> {
        self.booted_at = None;
        if requested || (end.success != Some(false) && self.stop_reason.is_some()) {
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

    /// A restarted service found the VM's VMM `pid` running again and asked its `status`:
    /// the state follows what happened while no service listened (a pause, a reset, a boot);
    /// events missed meanwhile are not replayed (a vmcore is announced from the crash store).
    pub fn on_adopted(&mut self, status: &Status, pid: u32) -> Vec<Effect> {
        let rebuilt = (self.vmm_boot != 0 && status.boots != self.vmm_boot) || self.state == VmState::Rebooting;
        match status.state {
            MachineState::Paused => {
                if self.state != VmState::Paused {
                    self.before_pause = self.state;
                }
                self.state = VmState::Paused;
            }
            MachineState::Rebooting => {
                self.state = VmState::Rebooting;
                self.booted_at = None;
            }
            MachineState::Running => {
                if self.state == VmState::Paused {
                    self.state = self.before_pause;
                }
                if rebuilt || (self.state == VmState::Booting && status.guest_control) {
                    // Machines built while away; each said hello if this one did.
                    let hellos = status.boots.saturating_sub(self.vmm_boot);
                    self.boots += if status.guest_control { hellos } else { hellos.saturating_sub(1) };
                    self.vmm_boot = status.boots;
                    self.panicked_this_boot = false;
                    self.booted_at = None;
                    self.release = status.release.clone().or(self.release.take());
                    self.state = if status.guest_control { VmState::Running } else { VmState::Booting };
                }
            }
            // It is ending: its process's end says how.
            MachineState::PoweredOff | MachineState::Stopped => {}
        }
        let fields = json!({"pid": pid, "state": self.state.as_str(), "vmm_boots": status.boots});
        vec![Effect::Publish(NewEvent::new("adopted", fields))]
    }
}

/// `Option<Instant>` as milliseconds since the Unix epoch, so a time survives a restart of the
/// service (an `Instant` means nothing to another process).
mod instant_as_unix_ms {
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    fn now_unix_ms() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn serialize<S: Serializer>(at: &Option<Instant>, serializer: S) -> Result<S::Ok, S::Error> {
        let ms = at.map(|at| {
            let ago = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
            now_unix_ms().saturating_sub(ago)
        });
        ms.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Instant>, D::Error> {
        let ms = Option::<u64>::deserialize(deserializer)?;
        // A time in the future (the clock was set back) is taken as now.
        Ok(ms.and_then(|ms| Instant::now().checked_sub(Duration::from_millis(now_unix_ms().saturating_sub(ms)))))
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
        let killed = ProcessEnd { success: Some(false), status: "killed by signal 9".into(), last_output: "x".into() };
        let mut t = Tracker::new();
        let effects = t.on_process_end(&killed, false);
        assert_eq!(t.state, VmState::Failed);
        assert!(t.failure.as_ref().unwrap().contains("killed by signal 9"));
        assert_eq!(effects.last(), Some(&Effect::Failed));

        let mut t = Tracker::new();
        event(&mut t, json!({"event":"powered_off"}), Instant::now());
        let clean = ProcessEnd { success: Some(true), status: "exit status 0".into(), last_output: String::new() };
        assert_eq!(published(&t.on_process_end(&clean, false)), ["stopped"]);
        assert_eq!(t.state, VmState::Stopped);

        let mut t = Tracker::new();
        t.on_process_end(&killed, true);
        assert_eq!(t.state, VmState::Stopped, "the API asked for it");

        let mut t = Tracker::new();
        event(&mut t, json!({"event":"stopped","reason":"RIP 0x10: cannot emulate"}), Instant::now());
        let five = ProcessEnd { success: Some(false), status: "exit status 5".into(), last_output: String::new() };
        t.on_process_end(&five, false);
        assert_eq!(t.state, VmState::Failed);
        assert!(t.failure.as_ref().unwrap().contains("cannot emulate"));
    }

    fn status(state: &str, boots: u64, guest_control: bool) -> Status {
        serde_json::from_value(json!({"state": state, "vcpus": 1, "boots": boots, "guest_control": guest_control,
                                      "release": "6.18", "guest_cpus": 1}))
        .unwrap()
    }

    fn running(boot: u64) -> Tracker {
        let mut t = Tracker::new();
        event(&mut t, json!({"event":"booted","boot":boot,"release":"6.18","cpus":1}), Instant::now());
        t
    }

    #[test]
    fn an_adopted_vm_takes_the_state_its_vmm_reports() {
        let mut t = running(1);
        let effects = t.on_adopted(&status("running", 1, true), 42);
        assert_eq!((t.state, t.boots), (VmState::Running, 1), "nothing happened while away");
        let [Effect::Publish(adopted)] = effects.as_slice() else { panic!("{effects:?}") };
        assert_eq!((adopted.event.as_str(), &adopted.fields["pid"]), ("adopted", &json!(42)));

        let mut t = running(1);
        t.on_adopted(&status("paused", 1, false), 42);
        assert_eq!(t.state, VmState::Paused);
        t.on_adopted(&status("running", 1, true), 42);
        assert_eq!(t.state, VmState::Running, "resumed while away: back to the state before the pause");

        let mut t = running(1);
        event(&mut t, json!({"event":"panic","source":"pvpanic"}), Instant::now());
        t.on_adopted(&status("running", 1, false), 42);
        assert_eq!(t.state, VmState::Panicked, "the same machine, still panicked");
        t.on_adopted(&status("running", 3, true), 42);
        assert_eq!((t.state, t.boots), (VmState::Running, 3), "two resets and hellos while away");

        let mut t = running(1);
        t.on_adopted(&status("running", 2, false), 42);
        assert_eq!((t.state, t.boots), (VmState::Booting, 1), "reset, no hello yet");
        event(&mut t, json!({"event":"booted","boot":2,"release":"6.18","cpus":1}), Instant::now());
        assert_eq!((t.state, t.boots), (VmState::Running, 2), "its hello counts once");

        let mut t = Tracker::new();
        t.on_adopted(&status("running", 1, true), 42);
        assert_eq!((t.state, t.boots), (VmState::Running, 1), "the first hello came while away");
        t.on_adopted(&status("rebooting", 1, false), 42);
        assert_eq!(t.state, VmState::Rebooting);
    }

    #[test]
    fn a_saved_tracker_goes_on_where_it_was() {
        let mut t = running(1);
        event(&mut t, json!({"event":"panic","source":"pvpanic"}), Instant::now());
        event(&mut t, json!({"event":"crash_loaded"}), Instant::now());
        let saved = serde_json::to_value(&t).unwrap();
        let mut back: Tracker = serde_json::from_value(saved).unwrap();
        assert_eq!((back.state, back.boots, back.crashes), (VmState::Capturing, 1, 1));
        let uptime = back.booted_at.expect("a boot time").elapsed();
        assert!(uptime < Duration::from_secs(5), "{uptime:?}");
        // The capture kernel's hello after the restart is still known for what it is.
        let hello = event(&mut back, json!({"event":"booted","boot":1,"release":"6.18","cpus":1}), Instant::now());
        assert_eq!(published(&hello), ["capture_kernel_booted"]);
    }

    #[test]
    fn a_vmcore_is_announced_once() {
        let mut t = running(1);
        let ready = json!({"event":"vmcore_ready","id":"vm-x","path":"/c/vm-x","size":10,"on_disk":4});
        assert_eq!(published(&event(&mut t, ready.clone(), Instant::now())), ["vmcore_ready"]);
        assert!(event(&mut t, ready, Instant::now()).is_empty(), "found in the store, then reported live");
        assert_eq!(t.vmcores, ["vm-x"]);
    }

    #[test]
    fn an_end_of_unknown_status_is_a_stop_only_when_the_vmm_said_so() {
        let unknown = ProcessEnd { success: None, status: "an unknown status".into(), last_output: String::new() };
        let mut t = running(1);
        t.on_process_end(&unknown, false);
        assert_eq!(t.state, VmState::Failed);
        let mut t = running(1);
        event(&mut t, json!({"event":"powered_off"}), Instant::now());
        t.on_process_end(&unknown, false);
        assert_eq!(t.state, VmState::Stopped);

        let mut t = running(1);
        let effects = t.on_lost("the VMM (pid 7) ended while no service ran", "last words");
        assert_eq!(t.state, VmState::Failed);
        let failure = t.failure.clone().unwrap();
        assert!(failure.contains("pid 7") && failure.contains("was running") && failure.contains("last words"));
        let [Effect::Publish(failed), Effect::Failed] = effects.as_slice() else { panic!("{effects:?}") };
        assert_eq!(failed.fields["exit"], "unknown");
        let mut t = running(1);
        event(&mut t, json!({"event":"stopped","reason":"shutdown requested"}), Instant::now());
        t.on_lost("ended", "");
        assert_eq!(t.state, VmState::Stopped, "it said it stops, then the service died");
    }
}
