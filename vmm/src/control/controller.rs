//! The controller: the VM side of the control channel. One thread owns the clients
//! ([`ClientHub`]), the guest channel ([`GuestChannel`]: request ids, deadlines, health) and the
//! handle of the running machine (its lifecycle, pause, NMIs, shutdown), and acts on one
//! [`ControlInput`] at a time.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crashvisor_abi::platform::NMI_REASON_OPERATOR;
use crashvisor_control::{
    ClientRequest, ControlError, ControlErrorCode, Event, MachineState, NmiWatchdogStatus, Request, Response, Status,
};
use serde_json::{json, Value};

use super::channel::{GuestChannel, Received};
use super::clients::ClientHub;
use super::events::{self, BootEvents, DeviceEvent, RateLimit};
use super::guest::GuestRequest;
use super::memory;
use super::{ClientId, ControlConfig, ControlInput};
use crate::crash::policy::{CrashPolicy, DumpRefused, PanicAction};
use crate::devices::control_uart::ControlUart;
use crate::vcpu::requests::Pauser;
use crate::vcpu::RunContext;
use crate::vm::StopReason;

/// How long `pause` waits for every vCPU to park.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Guest events that may reach clients at once, and per second after that.
const EVENT_BURST: u32 = 100;
const EVENTS_PER_SEC: u32 = 20;

/// Whom to answer when a guest response arrives.
struct Waiter {
    client: ClientId,
    id: Value,
    timeout: Duration,
}

/// The controller's state.
pub struct Controller {
    inputs: Receiver<ControlInput>,
    vcpus: usize,
    clients: ClientHub,
    machine: Option<Arc<RunContext>>,
    boots: u64,
    /// The guest's end of the control channel.
    channel: GuestChannel<Waiter>,
    boot_events: BootEvents,
    rate_limit: RateLimit,
    /// The final state once the VM stopped for good.
    ended: Option<MachineState>,
    /// What panics and operators' dump requests make the VMM do.
    crash: CrashPolicy,
    /// Why the VMM was asked to end (a client's `shutdown`, SIGTERM): every machine is
    /// stopped, the VMM ends once the dumps in flight are done.
    shutdown: Option<&'static str>,
}

impl Controller {
    /// A controller reading `inputs`, writing guest requests to `control_uart`.
    pub fn new(
        inputs: Receiver<ControlInput>,
        control_uart: Arc<ControlUart>,
        config: &ControlConfig,
        crash: CrashPolicy,
    ) -> Self {
        Self {
            inputs,
            vcpus: config.vcpus,
            clients: ClientHub::default(),
            machine: None,
            boots: 0,
            channel: GuestChannel::new(control_uart),
            boot_events: BootEvents::default(),
            rate_limit: RateLimit::new(EVENT_BURST, EVENTS_PER_SEC, Instant::now()),
            ended: None,
            crash,
            shutdown: None,
        }
    }

    /// Serves inputs until `Shutdown`.
    pub fn run(mut self) {
        let _span = tracing::info_span!("control").entered();
        loop {
            let input = match self.channel.next_deadline() {
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    match self.inputs.recv_timeout(wait) {
                        Ok(input) => Some(input),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match self.inputs.recv() {
                    Ok(input) => Some(input),
                    Err(_) => break,
                },
            };
            if let Some(input) = input {
                if !self.handle(input) {
                    break;
                }
            }
            self.expire(Instant::now());
        }
        self.fail_pending(ControlErrorCode::VmUnavailable, "the VMM is exiting");
        // Dropping the outboxes lets each writer send what is queued and close.
        self.clients.clear();
    }

    /// Acts on one input; false ends the controller.
    fn handle(&mut self, input: ControlInput) -> bool {
        match input {
            ControlInput::ClientConnected { client, outbox } => self.clients.connect(client, outbox),
            ControlInput::ClientRequest { client, request } => match request {
                Ok(request) => self.execute(client, request),
                Err(rejected) => self.respond(client, rejected.id, Err(rejected.error)),
            },
            ControlInput::ClientClosed(client) => {
                self.clients.closing(client);
                self.drop_if_done(client);
            }
            ControlInput::GuestLine(line) => self.guest_line(&line, Instant::now()),
            ControlInput::Device(event) => {
                let pvpanic = match &event {
                    DeviceEvent::Pvpanic { bits, crash } => Some((*bits, crash.clone())),
                    _ => None,
                };
                for event in events::translate(event, &mut self.boot_events) {
                    self.guest_event(event);
                }
                let action = pvpanic.map(|(bits, crash)| self.crash.on_pvpanic(self.machine.as_ref(), bits, crash));
                if action == Some(PanicAction::Pause) {
                    if let Err(e) = self.pause() {
                        tracing::error!("the panic policy could not be carried out: {}", e.message);
                    }
                }
            }
            ControlInput::Event(event) => self.broadcast(&event),
            ControlInput::MachineStarted(ctx) => {
                if self.shutdown.is_some() {
                    ctx.request_stop(StopReason::Quit);
                }
                self.boots += 1;
                self.machine = Some(ctx);
                self.fail_pending(ControlErrorCode::GuestUnavailable, "a new machine started");
                self.boot_events = BootEvents::default();
            }
            ControlInput::MachineStopped { reason, rebooting } => self.machine_stopped(reason, rebooting),
            ControlInput::Terminate => {
                tracing::info!("SIGTERM: stopping the VM; dumps in flight finish first");
                self.shutdown("SIGTERM");
            }
            ControlInput::Shutdown => return false,
        }
        true
    }

    fn machine_stopped(&mut self, reason: StopReason, rebooting: bool) {
        self.machine = None;
        let message = if rebooting { "the guest rebooted" } else { "the VM stopped" };
        self.fail_pending(ControlErrorCode::GuestUnavailable, message);
        let event = match (reason, rebooting) {
            (StopReason::Reset(cause), true) => Event::Rebooting { cause },
            (StopReason::PowerOff, _) => {
                self.ended = Some(MachineState::PoweredOff);
                Event::PoweredOff
            }
            (StopReason::Quit, _) if self.shutdown.is_some() => {
                self.ended = Some(MachineState::Stopped);
                Event::Stopped { reason: self.shutdown.unwrap_or_default().into() }
            }
            (reason, _) => {
                self.ended = Some(MachineState::Stopped);
                Event::Stopped { reason: stop_reason_text(&reason) }
            }
        };
        self.broadcast(&event);
    }

    fn execute(&mut self, client: ClientId, request: ClientRequest) {
        let timeout = request.guest_timeout();
        let ClientRequest { id, request, .. } = request;
        let result = match &request {
            Request::Status {} => serde_json::to_value(self.status())
                .map_err(|e| ControlError::new(ControlErrorCode::Internal, format!("cannot encode the status: {e}"))),
            Request::Nmi { cpu, capture } => self.nmi(*cpu).and_then(|result| {
                if *capture {
                    self.host_dump(true)?;
                }
                Ok(result)
            }),
            Request::Dump {} => self.host_dump(false).map(|()| json!({ "state": "dumping" })),
            Request::Pause {} => self.pause(),
            Request::Resume {} => self.resume(),
            Request::Shutdown {} => Ok(self.shutdown("shutdown requested over the control socket")),
            Request::ReadMemory { gpa, len } => {
                self.running_machine().and_then(|m| memory::read(&m.memory, *gpa, *len))
            }
            Request::WriteMemory { gpa, data_hex } => {
                self.running_machine().and_then(|m| memory::write(&m.memory, *gpa, data_hex))
            }
            // Every other command is the guest's: answered when it responds or the deadline passes.
            guest => match self.forward(client, &id, guest, timeout) {
                Ok(()) => return,
                Err(error) => Err(error),
            },
        };
        self.respond(client, id, result);
    }

    fn running_machine(&self) -> Result<Arc<RunContext>, ControlError> {
        self.machine.clone().ok_or_else(|| {
            ControlError::new(
                ControlErrorCode::VmUnavailable,
                "no machine is running (the VM is rebooting or has stopped)",
            )
        })
    }

    fn forward(
        &mut self,
        client: ClientId,
        id: &Value,
        request: &Request,
        timeout: Duration,
    ) -> Result<(), ControlError> {
        let Some(request) = GuestRequest::from_request(request, timeout) else {
            return Err(ControlError::new(
                ControlErrorCode::Internal,
                format!("{} is not a guest command", request.name()),
            ));
        };
        let unavailable = |why: &str| ControlError::new(ControlErrorCode::GuestUnavailable, why);
        if self.machine.is_none() {
            return Err(unavailable("no machine is running (the VM is rebooting or has stopped)"));
        }
        if self.machine.as_ref().is_some_and(|m| m.is_paused()) {
            return Err(unavailable("the VM is paused; resume it first"));
        }
        self.channel.send(Waiter { client, id: id.clone(), timeout: request.timeout }, &request)
    }

    /// Broadcasts an event the guest reported. Panics always pass (the guest's control thread
    /// is gone with them), and so do the once-per-crash kinds; the frequent kinds pass the rate
    /// limit.
    fn guest_event(&mut self, event: Event) {
        if matches!(event, Event::Panic { .. }) {
            self.fail_pending(ControlErrorCode::GuestUnavailable, "the guest panicked");
        } else if !events::is_rare(&event) && !self.rate_limit.allow(Instant::now()) {
            if self.rate_limit.dropped.is_power_of_two() {
                tracing::warn!("the guest reports events too fast; {} dropped", self.rate_limit.dropped);
            }
            return;
        }
        self.broadcast(&event);
    }

    fn guest_line(&mut self, text: &str, now: Instant) {
        match self.channel.receive(text, now) {
            Received::Hello(hello) => {
                let event = Event::Booted { boot: self.boots, release: hello.release, cpus: hello.cpus };
                self.broadcast(&event);
            }
            Received::Answer(waiter, result) => {
                self.respond(waiter.client, waiter.id, result);
                self.drop_if_done(waiter.client);
            }
            Received::Nothing => {}
        }
    }

    fn expire(&mut self, now: Instant) {
        for waiter in self.channel.expire(now) {
            let error = ControlError::new(
                ControlErrorCode::GuestTimeout,
                format!("the guest did not answer within {} ms", waiter.timeout.as_millis()),
            );
            self.respond(waiter.client, waiter.id, Err(error));
            self.drop_if_done(waiter.client);
        }
    }

    fn fail_pending(&mut self, code: ControlErrorCode, message: &str) {
        for waiter in self.channel.down() {
            self.respond(waiter.client, waiter.id, Err(ControlError::new(code, message)));
            self.drop_if_done(waiter.client);
        }
    }

    fn status(&self) -> Status {
        let paused = self.machine.as_ref().is_some_and(|m| m.is_paused());
        let state = match (&self.machine, paused, self.ended) {
            (_, _, Some(ended)) => ended,
            (Some(_), true, _) => MachineState::Paused,
            (Some(_), false, _) => MachineState::Running,
            (None, _, _) => MachineState::Rebooting,
        };
        let watchdog = self.machine.as_ref().map(|m| m.devices.platform.nmi_watchdog());
        Status {
            state,
            vcpus: self.vcpus,
            boots: self.boots,
            guest_control: self.channel.is_answering(),
            release: self.channel.hello().map(|g| g.release.clone()),
            guest_cpus: self.channel.hello().map(|g| g.cpus),
            nmi_watchdog: NmiWatchdogStatus {
                enabled: watchdog.is_some_and(|w| w.enabled()),
                period_ms: watchdog.map_or(0, |w| w.period_ms()),
            },
        }
    }

    fn nmi(&mut self, cpu: Option<usize>) -> Result<Value, ControlError> {
        let machine = self.running_machine()?;
        let cpus: Vec<usize> = match cpu {
            Some(cpu) if cpu >= self.vcpus => {
                return Err(ControlError::bad_argument(format!("the VM has vCPUs 0 to {}", self.vcpus - 1)))
            }
            Some(cpu) => vec![cpu],
            None => (0..self.vcpus).collect(),
        };
        for &cpu in &cpus {
            machine.vcpus.inject_nmi(cpu, NMI_REASON_OPERATOR);
        }
        self.broadcast(&Event::NmiInjected { cpus: cpus.clone() });
        Ok(json!({ "cpus": cpus }))
    }

    /// An operator's host-side dump, after the guest handled an NMI or at once; the crash
    /// policy starts it and its events follow.
    fn host_dump(&self, after_nmi: bool) -> Result<(), ControlError> {
        self.crash.operator_dump(self.machine.as_ref(), after_nmi).map_err(|e| {
            let code = match e {
                DumpRefused::NoMachine => ControlErrorCode::VmUnavailable,
                DumpRefused::Busy => ControlErrorCode::Busy,
                DumpRefused::SinkStopped => ControlErrorCode::Internal,
            };
            ControlError::new(code, e.to_string())
        })
    }

    fn pause(&mut self) -> Result<Value, ControlError> {
        let machine = self.running_machine()?;
        if !machine.is_paused() {
            if !machine.pause(Pauser::Operator, PAUSE_TIMEOUT) {
                tracing::warn!("not every vCPU parked within {PAUSE_TIMEOUT:?} of the pause");
            }
            self.broadcast(&Event::Paused);
        }
        Ok(json!({ "state": "paused" }))
    }

    fn resume(&mut self) -> Result<Value, ControlError> {
        let machine = self.running_machine()?;
        if machine.is_paused() {
            machine.resume(Pauser::Operator);
            self.broadcast(&Event::Resumed);
        }
        Ok(json!({ "state": "running" }))
    }

    /// Stops the machine (and any machine a reboot builds meanwhile); the VMM then ends, once
    /// a dump being written is done.
    fn shutdown(&mut self, why: &'static str) -> Value {
        self.shutdown.get_or_insert(why);
        if let Some(machine) = &self.machine {
            machine.request_stop(StopReason::Quit);
        }
        json!({ "state": "stopping" })
    }

    /// Answers `client`'s request `id`.
    fn respond(&mut self, client: ClientId, id: Value, outcome: Result<Value, ControlError>) {
        self.send(client, Response { id, outcome }.to_line());
    }

    /// Queues `line` for `client`; a client that is gone or too slow is dropped.
    fn send(&mut self, client: ClientId, line: String) {
        if !self.clients.send(client, line) {
            self.channel.retain(|w| w.client != client);
        }
    }

    fn broadcast(&mut self, event: &Event) {
        let line = event.to_line();
        // Events are rare state changes (info); a dump's progress is not.
        if matches!(event, Event::DumpProgress { .. }) {
            tracing::debug!("event {}", line.trim_end());
        } else {
            tracing::info!("event {}", line.trim_end());
        }
        for gone in self.clients.broadcast(&line) {
            self.channel.retain(|w| w.client != gone);
        }
    }

    /// Drops a closing client once nothing it asked for is outstanding.
    fn drop_if_done(&mut self, client: ClientId) {
        if self.clients.is_closing(client) && !self.channel.any_waiting(|w| w.client == client) {
            self.clients.remove(client);
        }
    }
}

fn stop_reason_text(reason: &StopReason) -> String {
    match reason {
        StopReason::PowerOff => "power_off".into(),
        StopReason::Reset(cause) => format!("reset ({}) without reboot", cause.as_str()),
        StopReason::EmulationFailure(what) => what.clone(),
        StopReason::Fatal(what) => what.clone(),
        StopReason::Quit => "quit from the console".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CrashLoadedPolicy, DumpFormat, PanicPolicy};
    use crate::control::events::DeviceEvent;
    use crate::control::Inbox;
    use crate::crash::{CrashSink, DumpTarget, SinkThread};
    use crate::devices::console::Console;
    use crate::devices::platform::{BootTimes, Platform, PlatformLinks};
    use crate::devices::Devices;
    use crate::nmi_watchdog::NmiWatchdog;
    use crate::vcpu::requests::VcpuRequests;
    use crate::vm::ResetCause;
    use crashvisor_abi::platform::{EventKind, PVPANIC_PANICKED};
    use std::sync::mpsc::{sync_channel, Receiver};
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    const VCPUS: usize = 2;
    const CLIENT: ClientId = ClientId(1);

    /// A crash sink that has stopped (these tests take no dumps).
    fn sink() -> CrashSink {
        let target = DumpTarget {
            crash_dir: "/nonexistent/crash".into(),
            vm_name: "vm".into(),
            retention: dumpd::store::Retention::default(),
            core_collector: None,
        };
        SinkThread::start(target, Inbox::channel().0).unwrap().sink()
    }

    /// A machine without KVM: devices, memory and vCPU mailboxes.
    fn machine() -> Arc<RunContext> {
        let (inbox, _) = Inbox::channel();
        let requests = Arc::new(VcpuRequests::new(VCPUS));
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let devices = Devices {
            console: Arc::new(Console::new(Box::new(std::io::sink())).unwrap()),
            control_uart: Arc::new(ControlUart::new(inbox.clone()).unwrap()),
            platform: Platform::new(PlatformLinks {
                boot_times: Arc::new(BootTimes::new(Instant::now(), false)),
                memory: memory.clone(),
                sink: sink(),
                vcpus: requests.clone(),
                nmi_watchdog: Arc::new(NmiWatchdog::new(true, requests.clone())),
                inbox,
            }),
            unknown_accesses: Default::default(),
        };
        Arc::new(RunContext::new(devices, memory, requests))
    }

    /// A controller with one connected client and a running machine.
    fn controller() -> (Controller, Receiver<String>, Arc<RunContext>) {
        let (_, inputs) = Inbox::channel();
        let ctx = machine();
        let config = ControlConfig { socket: None, vcpus: VCPUS };
        let crash = CrashPolicy::new(PanicPolicy::None, CrashLoadedPolicy::Event, DumpFormat::Elf, sink());
        let mut c = Controller::new(inputs, ctx.devices.control_uart.clone(), &config, crash);
        let (outbox, lines) = sync_channel(256);
        assert!(c.handle(ControlInput::ClientConnected { client: CLIENT, outbox }));
        c.handle(ControlInput::MachineStarted(ctx.clone()));
        (c, lines, ctx)
    }

    fn request(c: &mut Controller, id: u64, request: Request) {
        let request = ClientRequest { id: json!(id), timeout_ms: None, request };
        c.handle(ControlInput::ClientRequest { client: CLIENT, request: Ok(request) });
    }

    const UPTIME: Request = Request::Uptime {};
    const PS: Request = Request::Ps {};

    fn next(lines: &Receiver<String>) -> Value {
        serde_json::from_str(&lines.try_recv().expect("a line for the client")).unwrap()
    }

    #[test]
    fn guest_requests_wait_for_hello_then_round_trip() {
        let (mut c, lines, ctx) = controller();
        request(&mut c, 1, UPTIME);
        let r = next(&lines);
        assert_eq!((r["id"].clone(), r["error"]["code"].clone()), (json!(1), json!("guest_unavailable")));

        c.handle(ControlInput::GuestLine("0 hello version=1 release=6.18.0-crashvisor cpus=2".into()));
        assert_eq!(next(&lines), json!({"event": "booted", "boot": 1, "release": "6.18.0-crashvisor", "cpus": 2}));
        request(&mut c, 2, UPTIME);
        assert_eq!(ctx.devices.control_uart.guest_reads(), "1 uptime\n");
        c.handle(ControlInput::GuestLine("99 ok ns=5".into()));
        assert!(lines.try_recv().is_err(), "an answer nobody waits for is ignored");
        c.handle(ControlInput::GuestLine("1 ok ns=123".into()));
        assert_eq!(next(&lines), json!({"id": 2, "ok": true, "result": {"ns": 123}}));
        assert!(c.status().guest_control);
    }

    #[test]
    fn unanswered_requests_time_out() {
        let (mut c, lines, _ctx) = controller();
        c.handle(ControlInput::GuestLine("0 hello version=1 cpus=2".into()));
        next(&lines);
        request(&mut c, 7, PS);
        c.expire(Instant::now());
        assert!(lines.try_recv().is_err(), "not yet");
        c.expire(Instant::now() + Duration::from_secs(11));
        assert_eq!(next(&lines)["error"]["code"], json!("guest_timeout"));
    }

    #[test]
    fn a_reboot_fails_waiting_requests_and_takes_the_channel_down() {
        let (mut c, lines, ctx) = controller();
        c.handle(ControlInput::GuestLine("0 hello version=1 cpus=2".into()));
        next(&lines);
        request(&mut c, 3, Request::Dmesg { since: None });
        c.handle(ControlInput::MachineStopped { reason: StopReason::Reset(ResetCause::TripleFault), rebooting: true });
        assert_eq!(next(&lines)["error"]["code"], json!("guest_unavailable"));
        assert_eq!(next(&lines), json!({"event": "rebooting", "cause": "triple_fault"}));
        assert_eq!(c.status().state, MachineState::Rebooting);
        request(&mut c, 4, Request::Nmi { cpu: None, capture: false });
        assert_eq!(next(&lines)["error"]["code"], json!("vm_unavailable"));
        c.handle(ControlInput::MachineStarted(ctx));
        assert_eq!(c.status().boots, 2);
        assert!(!c.status().guest_control);
        c.handle(ControlInput::MachineStopped { reason: StopReason::PowerOff, rebooting: false });
        assert_eq!(next(&lines), json!({"event": "powered_off"}));
        assert_eq!(c.status().state, MachineState::PoweredOff);
    }

    #[test]
    fn a_panic_takes_the_guest_channel_down() {
        let (mut c, lines, _ctx) = controller();
        c.handle(ControlInput::GuestLine("0 hello version=1 cpus=2".into()));
        next(&lines);
        request(&mut c, 5, UPTIME);
        c.handle(ControlInput::Device(DeviceEvent::Pvpanic { bits: PVPANIC_PANICKED, crash: None }));
        assert_eq!(next(&lines)["error"]["code"], json!("guest_unavailable"));
        assert_eq!(next(&lines), json!({"event": "panic", "source": "pvpanic"}));
        assert!(!c.status().guest_control);
    }

    #[test]
    fn nmis_go_to_the_named_vcpus() {
        let (mut c, lines, ctx) = controller();
        request(&mut c, 1, Request::Nmi { cpu: Some(1), capture: false });
        assert_eq!(next(&lines), json!({"event": "nmi_injected", "cpus": [1]}));
        assert_eq!(next(&lines), json!({"id": 1, "ok": true, "result": {"cpus": [1]}}));
        assert!(!ctx.vcpus.take_nmi_request(0));
        assert!(ctx.vcpus.take_nmi_request(1));
        assert_eq!(ctx.vcpus.take_nmi_reason(1), NMI_REASON_OPERATOR);
        request(&mut c, 2, Request::Nmi { cpu: Some(VCPUS), capture: false });
        assert_eq!(next(&lines)["error"]["code"], json!("bad_argument"));
        request(&mut c, 3, Request::Nmi { cpu: None, capture: false });
        next(&lines);
        assert!(ctx.vcpus.take_nmi_request(0) && ctx.vcpus.take_nmi_request(1));
    }

    #[test]
    fn pause_and_resume_park_the_vcpus_and_tell_everyone() {
        let (mut c, lines, ctx) = controller();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let fake_vcpus: Vec<_> = (0..VCPUS)
            .map(|id| {
                let (ctx, stop) = (ctx.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        ctx.vcpus.park(id, &|| false, || {});
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        request(&mut c, 1, Request::Pause {});
        assert_eq!(next(&lines), json!({"event": "paused"}));
        assert_eq!(next(&lines)["result"]["state"], json!("paused"));
        assert_eq!(c.status().state, MachineState::Paused);
        request(&mut c, 2, PS);
        assert_eq!(next(&lines)["error"]["code"], json!("guest_unavailable"));
        request(&mut c, 3, Request::Resume {});
        assert_eq!(next(&lines), json!({"event": "resumed"}));
        assert_eq!(next(&lines)["result"]["state"], json!("running"));
        request(&mut c, 4, Request::Resume {});
        assert!(lines.try_recv().unwrap().contains("running"), "resume is idempotent, no event");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in fake_vcpus {
            t.join().unwrap();
        }
    }

    #[test]
    fn guest_events_are_broadcast_and_rate_limited() {
        let (mut c, lines, _ctx) = controller();
        let lockup = || DeviceEvent::Platform { kind: EventKind::SoftLockup, cpu: 0, arg: 21, crash: None };
        for _ in 0..EVENT_BURST + 50 {
            c.handle(ControlInput::Device(lockup()));
        }
        let received = lines.try_iter().count();
        assert!(received <= EVENT_BURST as usize + 1, "{received} events passed");
        // Panics are never limited.
        c.handle(ControlInput::Device(DeviceEvent::Platform { kind: EventKind::Panic, cpu: 0, arg: 0, crash: None }));
        assert_eq!(next(&lines)["event"], json!("panic"));
    }

    #[test]
    fn closing_clients_get_their_answers_first() {
        let (mut c, lines, _ctx) = controller();
        c.handle(ControlInput::GuestLine("0 hello version=1 cpus=2".into()));
        next(&lines);
        request(&mut c, 1, UPTIME);
        c.handle(ControlInput::ClientClosed(CLIENT));
        assert!(c.clients.contains(CLIENT), "kept until answered");
        c.handle(ControlInput::GuestLine("1 ok ns=1".into()));
        assert_eq!(next(&lines)["result"]["ns"], json!(1));
        assert!(!c.clients.contains(CLIENT));
    }

    #[test]
    fn shutdown_stops_every_machine_and_says_why() {
        let (mut c, lines, ctx) = controller();
        request(&mut c, 1, Request::Shutdown {});
        assert_eq!(next(&lines), json!({"id": 1, "ok": true, "result": {"state": "stopping"}}));
        assert!(ctx.is_stopping());
        c.handle(ControlInput::MachineStopped { reason: StopReason::Quit, rebooting: false });
        let stopped = next(&lines);
        assert_eq!((stopped["event"].clone(), c.status().state), (json!("stopped"), MachineState::Stopped));
        assert!(stopped["reason"].as_str().unwrap().contains("shutdown"), "{stopped}");
        // A machine a reboot built meanwhile is stopped as it starts.
        let next_machine = machine();
        c.handle(ControlInput::MachineStarted(next_machine.clone()));
        assert!(next_machine.is_stopping());
    }
}
