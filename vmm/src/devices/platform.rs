//! The crashvisor platform device (argument latch, command register, boot progress, events,
//! NMI reasons) and the pvpanic port. See `crashvisor_abi::platform` for the register contract.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crashvisor_abi::layout::MAX_VCPUS;
use crashvisor_abi::platform::{
    decode_event, Command, EventKind, Progress, PLATFORM_ARG_HI, PLATFORM_ARG_LO, PLATFORM_COMMAND, PLATFORM_EVENT,
    PLATFORM_NMI_REASON, PLATFORM_PROGRESS, PVPANIC_CRASH_LOADED, PVPANIC_PANICKED, STATUS_INVALID_ARGUMENT,
    STATUS_IO_ERROR, STATUS_OK, STATUS_UNKNOWN_COMMAND, STATUS_UNSUPPORTED,
};
use crashvisor_klib::elfnote::VMCOREINFO_NOTE_SIZE;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::crash_reason::{self, CrashInfo};
use super::dump;
use super::IoAction;
use crate::control::events::DeviceEvent;
use crate::control::{ControlInput, Inbox};
use crate::crash::CrashSink;
use crate::nmi_watchdog::{NmiWatchdog, NmiWatchdogError};
use crate::vcpu::requests::VcpuRequests;
use crate::vm::StopReason;

/// When each boot milestone was reached, relative to the start of the boot (the VMM process
/// start for the first boot, the reset for later ones). Shared by the machines of one VMM run.
#[derive(Debug)]
pub struct BootTimes {
    inner: Mutex<(Instant, Vec<(Progress, Duration)>)>,
    /// Print each milestone on stderr as it is reached.
    echo: bool,
}

impl BootTimes {
    /// Starts the clock at `origin` (the VMM process start); `echo` prints milestones on stderr.
    pub fn new(origin: Instant, echo: bool) -> Self {
        Self { inner: Mutex::new((origin, Vec::new())), echo }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Instant, Vec<(Progress, Duration)>)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `progress` unless it was already reached in this boot.
    pub fn record(&self, progress: Progress) {
        let mut inner = self.lock();
        if inner.1.iter().any(|(p, _)| *p == progress) {
            return;
        }
        let elapsed = inner.0.elapsed();
        inner.1.push((progress, elapsed));
        drop(inner);
        if self.echo {
            eprintln!("timing {progress:?} {:.3} ms monotonic_ns {}", elapsed.as_secs_f64() * 1e3, monotonic_ns());
        }
    }

    /// The milestones reached so far, in order.
    pub fn milestones(&self) -> Vec<(Progress, Duration)> {
        self.lock().1.clone()
    }

    /// Forgets the milestones (a new boot starts) and restarts the clock now.
    pub fn restart(&self) {
        *self.lock() = (Instant::now(), Vec::new());
    }
}

/// CLOCK_MONOTONIC in nanoseconds, comparable across processes (benchmarks time from spawn).
pub fn monotonic_ns() -> u128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// What the platform device is connected to.
pub struct PlatformLinks {
    /// Boot milestones, shared by the machines of one VMM run.
    pub boot_times: Arc<BootTimes>,
    /// Guest RAM, for `SetCrashReason`, `Dump` and `DumpFailed`.
    pub memory: GuestMemoryMmap,
    /// The crash sink `Dump` hands crashes to.
    pub sink: CrashSink,
    /// The vCPUs' mailboxes, for `PLATFORM_NMI_REASON`.
    pub vcpus: Arc<VcpuRequests>,
    /// The machine's NMI watchdog, for `SetNmiWatchdog`.
    pub nmi_watchdog: Arc<NmiWatchdog>,
    /// Where events go.
    pub inbox: Inbox,
}

/// Per-machine state of the platform device.
pub struct Platform {
    args: [AtomicU64; MAX_VCPUS],
    /// Shared with the crash sink, which sets the status of a `Dump` it finished.
    status: Arc<[AtomicU32; MAX_VCPUS]>,
    pvpanic: AtomicU8,
    crash_reason: Mutex<Option<CrashInfo>>,
    /// Where the guest's VMCOREINFO note is (0: not published).
    vmcoreinfo_gpa: AtomicU64,
    /// Event-register writes that did not decode.
    bad_events: AtomicU64,
    links: PlatformLinks,
}

impl Platform {
    /// pvpanic events this device supports (read from the pvpanic port).
    pub const PVPANIC_FEATURES: u8 = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;

    /// A fresh device for a new boot.
    pub fn new(links: PlatformLinks) -> Self {
        Self {
            args: std::array::from_fn(|_| AtomicU64::new(0)),
            status: Arc::new(std::array::from_fn(|_| AtomicU32::new(STATUS_OK))),
            pvpanic: AtomicU8::new(0),
            crash_reason: Mutex::new(None),
            vmcoreinfo_gpa: AtomicU64::new(0),
            bad_events: AtomicU64::new(0),
            links,
        }
    }

    /// Boot milestones of this boot.
    pub fn boot_times(&self) -> &BootTimes {
        &self.links.boot_times
    }

    /// The machine's NMI watchdog.
    pub fn nmi_watchdog(&self) -> &NmiWatchdog {
        &self.links.nmi_watchdog
    }

    /// pvpanic events the guest has signalled in this boot.
    pub fn pvpanic_events(&self) -> u8 {
        self.pvpanic.load(Ordering::Relaxed)
    }

    /// The crash reason the guest set, if any.
    pub fn crash_reason(&self) -> Option<CrashInfo> {
        self.crash_reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records a pvpanic event byte.
    pub fn pvpanic_event(&self, value: u8) {
        let bits = value & Self::PVPANIC_FEATURES;
        self.pvpanic.fetch_or(bits, Ordering::Relaxed);
        if bits & PVPANIC_PANICKED != 0 {
            tracing::warn!("guest signalled a panic through pvpanic");
        }
        if bits & PVPANIC_CRASH_LOADED != 0 {
            tracing::info!("guest booted a crash kernel (pvpanic crash-loaded)");
        }
        if bits != 0 {
            let crash = self.crash_reason();
            self.post(DeviceEvent::Pvpanic { bits, crash });
        }
    }

    fn post(&self, event: DeviceEvent) {
        self.links.inbox.try_post(ControlInput::Device(event));
    }

    /// A guest write to a platform port. `vcpu` is below `MAX_VCPUS` (the VMM creates no more).
    pub fn write(&self, vcpu: usize, port: u16, data: &[u8]) -> IoAction {
        let vcpu = vcpu.min(MAX_VCPUS - 1);
        let value = port_value(data);
        match port {
            PLATFORM_ARG_LO => {
                let arg = &self.args[vcpu];
                arg.store((arg.load(Ordering::Relaxed) & !0xffff_ffff) | u64::from(value), Ordering::Relaxed);
            }
            PLATFORM_ARG_HI => {
                let arg = &self.args[vcpu];
                arg.store((arg.load(Ordering::Relaxed) & 0xffff_ffff) | (u64::from(value) << 32), Ordering::Relaxed);
            }
            PLATFORM_COMMAND => return self.command(vcpu, value),
            PLATFORM_PROGRESS => {
                if let Some(progress) = Progress::from_raw(value as u8) {
                    self.links.boot_times.record(progress);
                }
            }
            PLATFORM_EVENT => self.event(value),
            _ => {}
        }
        IoAction::Continue
    }

    /// A guest read from a platform port.
    pub fn read(&self, vcpu: usize, port: u16, data: &mut [u8]) {
        let vcpu = vcpu.min(MAX_VCPUS - 1);
        let value = match port {
            PLATFORM_COMMAND => self.status[vcpu].load(Ordering::Relaxed),
            PLATFORM_NMI_REASON => self.links.vcpus.take_nmi_reason(vcpu),
            _ => 0,
        };
        data.fill(0);
        for (dst, src) in data.iter_mut().zip(value.to_le_bytes()) {
            *dst = src;
        }
    }

    fn event(&self, raw: u32) {
        let Some((kind, cpu, arg)) = decode_event(raw) else {
            self.bad_events.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let crash = (kind == EventKind::Panic).then(|| self.crash_reason()).flatten();
        self.post(DeviceEvent::Platform { kind, cpu, arg, crash });
    }

    fn command(&self, vcpu: usize, raw: u32) -> IoAction {
        let arg = self.args[vcpu].load(Ordering::Relaxed);
        let (status, action) = match Command::from_raw(raw) {
            None => (STATUS_UNKNOWN_COMMAND, IoAction::Continue),
            Some(Command::PowerOff) => (STATUS_OK, IoAction::Stop(StopReason::PowerOff)),
            Some(Command::SetNmiWatchdog) => (self.set_nmi_watchdog(arg), IoAction::Continue),
            Some(Command::SetCrashReason) => (self.set_crash_reason(arg), IoAction::Continue),
            Some(Command::Dump) => {
                self.dump(vcpu, arg);
                return IoAction::Continue;
            }
            Some(Command::SetVmcoreinfo) => (self.set_vmcoreinfo(arg), IoAction::Continue),
            Some(Command::DumpFailed) => {
                (dump::dump_failed(&self.links.memory, &self.links.sink, arg), IoAction::Continue)
            }
        };
        self.status[vcpu].store(status, Ordering::Relaxed);
        action
    }

    /// `Command::Dump`: the crash sink writes the crash while the vCPU stays out of the guest
    /// (its thread parks until the sink answers); until then its status is an I/O error.
    fn dump(&self, vcpu: usize, gpa: u64) {
        self.status[vcpu].store(STATUS_IO_ERROR, Ordering::Relaxed);
        let (status, call) = (self.status.clone(), self.links.vcpus.begin_host_call(vcpu));
        let reply = Box::new(move |answer| {
            status[vcpu].store(answer, Ordering::Relaxed);
            drop(call);
        });
        let post = &mut |event| {
            self.links.inbox.try_post(ControlInput::Event(event));
        };
        let refused = dump::dump(&self.links.memory, &self.links.sink, gpa, self.crash_reason(), reply, post);
        if let Some(status) = refused {
            self.status[vcpu].store(status, Ordering::Relaxed);
        }
    }

    fn set_nmi_watchdog(&self, period_ms: u64) -> u32 {
        match self.links.nmi_watchdog.set_period_ms(period_ms) {
            Ok(()) => {
                tracing::info!("guest set the NMI watchdog period to {period_ms} ms");
                STATUS_OK
            }
            Err(NmiWatchdogError::Disabled) => STATUS_UNSUPPORTED,
            Err(e @ NmiWatchdogError::Period(_)) => {
                tracing::debug!("guest asked for {e}");
                STATUS_INVALID_ARGUMENT
            }
            Err(e @ NmiWatchdogError::Thread(_)) => {
                tracing::error!("{e}");
                STATUS_UNSUPPORTED
            }
        }
    }

    fn set_vmcoreinfo(&self, gpa: u64) -> u32 {
        let in_ram = gpa == 0 || self.links.memory.check_range(GuestAddress(gpa), VMCOREINFO_NOTE_SIZE);
        if !in_ram {
            return STATUS_INVALID_ARGUMENT;
        }
        self.vmcoreinfo_gpa.store(gpa, Ordering::Relaxed);
        STATUS_OK
    }

    /// Where the guest published its VMCOREINFO note, if it did.
    pub fn vmcoreinfo_gpa(&self) -> Option<u64> {
        Some(self.vmcoreinfo_gpa.load(Ordering::Relaxed)).filter(|&gpa| gpa != 0)
    }

    fn set_crash_reason(&self, gpa: u64) -> u32 {
        let mut slot = self.crash_reason.lock().unwrap_or_else(|e| e.into_inner());
        if gpa == 0 {
            *slot = None;
            return STATUS_OK;
        }
        match crash_reason::read(&self.links.memory, gpa) {
            Ok(reason) => {
                *slot = Some(reason);
                STATUS_OK
            }
            Err(e) => {
                tracing::debug!("guest handed over a bad crash reason: {e}");
                STATUS_INVALID_ARGUMENT
            }
        }
    }
}

/// The value of a port write of up to 4 bytes (little-endian; shorter writes are zero-extended).
fn port_value(data: &[u8]) -> u32 {
    let mut bytes = [0u8; 4];
    for (dst, src) in bytes.iter_mut().zip(data) {
        *dst = *src;
    }
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crash::{DumpTarget, SinkThread};
    use crashvisor_abi::platform::{encode_event, CrashReason, Detector, NMI_REASON_OPERATOR, NMI_REASON_WATCHDOG};
    use crashvisor_control::Event;
    use std::sync::mpsc::Receiver;
    use vm_memory::{Bytes, GuestAddress};

    fn platform_with(nmi_watchdog: bool) -> (Platform, Receiver<ControlInput>) {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let dump = DumpTarget {
            crash_dir: "/nonexistent/crash".into(),
            vm_name: "vm".into(),
            retention: dumpd::store::Retention::default(),
            core_collector: None,
        };
        let (platform, inputs, _sink) = platform_on(memory, dump, nmi_watchdog);
        (platform, inputs)
    }

    /// A platform device whose crash sink (running while the returned thread lives) writes
    /// into `dump`.
    fn platform_on(
        memory: GuestMemoryMmap,
        dump: DumpTarget,
        nmi_watchdog: bool,
    ) -> (Platform, Receiver<ControlInput>, SinkThread) {
        let (inbox, inputs) = Inbox::channel();
        let sink = SinkThread::start(dump, inbox.clone()).unwrap();
        let vcpus = Arc::new(VcpuRequests::new(2));
        let links = PlatformLinks {
            boot_times: Arc::new(BootTimes::new(Instant::now(), false)),
            memory,
            sink: sink.sink(),
            nmi_watchdog: Arc::new(NmiWatchdog::new(nmi_watchdog, vcpus.clone())),
            vcpus,
            inbox,
        };
        (Platform::new(links), inputs, sink)
    }

    fn platform() -> Platform {
        platform_with(true).0
    }

    fn command(p: &Platform, vcpu: usize, command: Command, arg: u64) -> (IoAction, u32) {
        p.write(vcpu, PLATFORM_ARG_LO, &(arg as u32).to_le_bytes());
        p.write(vcpu, PLATFORM_ARG_HI, &((arg >> 32) as u32).to_le_bytes());
        let action = p.write(vcpu, PLATFORM_COMMAND, &(command as u32).to_le_bytes());
        // Like the vCPU thread, which parks until a command the crash sink finishes is done.
        p.links.vcpus.park(vcpu, &|| false, || {});
        let mut status = [0u8; 4];
        p.read(vcpu, PLATFORM_COMMAND, &mut status);
        (action, u32::from_le_bytes(status))
    }

    fn device_event(inputs: &Receiver<ControlInput>) -> DeviceEvent {
        match inputs.try_recv() {
            Ok(ControlInput::Device(event)) => event,
            _ => panic!("no device event"),
        }
    }

    #[test]
    fn power_off_command_stops_the_machine() {
        let p = platform();
        assert_eq!(command(&p, 0, Command::PowerOff, 0), (IoAction::Stop(StopReason::PowerOff), STATUS_OK));
    }

    #[test]
    fn unknown_command_sets_status_and_continues() {
        let p = platform();
        assert_eq!(p.write(1, PLATFORM_COMMAND, &0xdead_u32.to_le_bytes()), IoAction::Continue);
        let mut status = [0u8; 4];
        p.read(1, PLATFORM_COMMAND, &mut status);
        assert_eq!(u32::from_le_bytes(status), STATUS_UNKNOWN_COMMAND);
        p.read(0, PLATFORM_COMMAND, &mut status);
        assert_eq!(u32::from_le_bytes(status), STATUS_OK, "status is per vCPU");
    }

    #[test]
    fn hostile_sizes_and_vcpu_ids_are_harmless() {
        let p = platform();
        assert_eq!(p.write(999, PLATFORM_ARG_LO, &[]), IoAction::Continue);
        assert_eq!(p.write(0, PLATFORM_ARG_HI, &[1, 2, 3, 4, 5, 6, 7, 8]), IoAction::Continue);
        let mut big = [0xaau8; 16];
        p.read(999, PLATFORM_COMMAND, &mut big);
        assert_eq!(&big[4..], &[0; 12]);
        p.write(0, PLATFORM_PROGRESS, &[0xff]);
        p.write(0, PLATFORM_EVENT, &[0xff, 0xff]);
        p.write(999, PLATFORM_EVENT, &[]);
        assert!(p.boot_times().milestones().is_empty());
    }

    #[test]
    fn milestones_are_recorded_once() {
        let p = platform();
        p.write(0, PLATFORM_PROGRESS, &[Progress::FirstInstruction as u8]);
        p.write(1, PLATFORM_PROGRESS, &[Progress::FirstInstruction as u8]);
        assert_eq!(p.boot_times().milestones().len(), 1);
    }

    #[test]
    fn pvpanic_records_known_bits_only() {
        let (p, inputs) = platform_with(true);
        p.pvpanic_event(0xff);
        assert_eq!(p.pvpanic_events(), Platform::PVPANIC_FEATURES);
        assert_eq!(device_event(&inputs), DeviceEvent::Pvpanic { bits: Platform::PVPANIC_FEATURES, crash: None });
        p.pvpanic_event(0xfc);
        assert!(inputs.try_recv().is_err(), "no known bits, no event");
    }

    #[test]
    fn events_are_decoded_and_posted() {
        let (p, inputs) = platform_with(true);
        let raw = encode_event(EventKind::SoftLockup, 1, 22);
        p.write(0, PLATFORM_EVENT, &raw.to_le_bytes());
        assert_eq!(
            device_event(&inputs),
            DeviceEvent::Platform { kind: EventKind::SoftLockup, cpu: 1, arg: 22, crash: None }
        );
        p.write(0, PLATFORM_EVENT, &0x99_u32.to_le_bytes());
        assert!(inputs.try_recv().is_err(), "unknown kinds are dropped");
    }

    #[test]
    fn nmi_reasons_are_per_vcpu_and_read_to_clear() {
        let p = platform();
        p.links.vcpus.inject_nmi(1, NMI_REASON_OPERATOR);
        p.links.vcpus.inject_nmi(1, NMI_REASON_WATCHDOG);
        let mut reason = [0u8; 4];
        p.read(0, PLATFORM_NMI_REASON, &mut reason);
        assert_eq!(u32::from_le_bytes(reason), 0);
        p.read(1, PLATFORM_NMI_REASON, &mut reason);
        assert_eq!(u32::from_le_bytes(reason), 3);
        p.read(1, PLATFORM_NMI_REASON, &mut reason);
        assert_eq!(u32::from_le_bytes(reason), 0);
    }

    #[test]
    fn the_nmi_watchdog_command_reports_support_and_bad_periods() {
        let p = platform();
        assert_eq!(command(&p, 0, Command::SetNmiWatchdog, 1).1, STATUS_INVALID_ARGUMENT);
        assert_eq!(command(&p, 0, Command::SetNmiWatchdog, 10_000).1, STATUS_OK);
        assert_eq!(p.nmi_watchdog().period_ms(), 10_000);
        assert_eq!(command(&p, 0, Command::SetNmiWatchdog, 0).1, STATUS_OK);
        p.nmi_watchdog().shutdown();
        let (off, _) = platform_with(false);
        assert_eq!(command(&off, 0, Command::SetNmiWatchdog, 10_000).1, STATUS_UNSUPPORTED);
    }

    /// A crash reason as the guest's bytes: every field is a little-endian u32 or a byte array.
    fn reason_bytes(reason: &CrashReason) -> Vec<u8> {
        let mut bytes = Vec::new();
        for v in [reason.magic, reason.version, reason.detector, reason.cpu, reason.pid, 0] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes.extend_from_slice(&reason.comm);
        bytes.extend_from_slice(&reason.message_len.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&reason.message);
        assert_eq!(bytes.len(), CrashReason::SIZE);
        bytes
    }

    #[test]
    fn a_crash_reason_is_validated_and_reported_with_the_panic() {
        let (p, inputs) = platform_with(true);
        let mut reason = CrashReason::new(Detector::Sysrq, 1, 7);
        reason.set_comm(b"sh");
        reason.push_message(b"sysrq triggered crash");
        p.links.memory.write_slice(&reason_bytes(&reason), GuestAddress(0x1000)).unwrap();

        assert_eq!(command(&p, 0, Command::SetCrashReason, 0xffff_0000).1, STATUS_INVALID_ARGUMENT);
        assert_eq!(command(&p, 0, Command::SetCrashReason, 0x2000).1, STATUS_INVALID_ARGUMENT, "zeroes: bad magic");
        assert_eq!(command(&p, 0, Command::SetCrashReason, 0x1000).1, STATUS_OK);
        p.write(1, PLATFORM_EVENT, &encode_event(EventKind::Panic, 1, 0).to_le_bytes());
        let DeviceEvent::Platform { crash: Some(crash), .. } = device_event(&inputs) else {
            panic!("no crash reason with the panic")
        };
        assert_eq!((crash.detector, crash.pid, crash.comm.as_str()), (Detector::Sysrq, 7, "sh"));
        assert_eq!(crash.message, "sysrq triggered crash");
        assert_eq!(command(&p, 0, Command::SetCrashReason, 0).1, STATUS_OK);
        assert!(p.crash_reason().is_none());
    }

    #[test]
    fn a_dump_command_writes_the_crash_with_the_reason_set_before() {
        use super::super::dump::tests::{assert_crash_matches, guest, TestDir, DESCRIPTOR_GPA};
        let store = TestDir::new("platform-dump");
        let g = guest();
        g.install();
        let (p, inputs, _sink) = platform_on(g.memory.clone(), store.target(), true);
        let event = || match inputs.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(ControlInput::Event(event)) => event,
            _ => panic!("no event"),
        };
        let mut reason = CrashReason::new(Detector::HungTask, 0, 57);
        reason.set_comm(b"khungtaskd");
        p.links.memory.write_slice(&reason_bytes(&reason), GuestAddress(0xa0_0000)).unwrap();
        assert_eq!(command(&p, 0, Command::SetCrashReason, 0xa0_0000).1, STATUS_OK);

        assert_eq!(command(&p, 1, Command::Dump, DESCRIPTOR_GPA), (IoAction::Continue, STATUS_OK));
        assert!(matches!(event(), Event::CaptureStarted { ranges: 3, .. }));
        let Event::VmcoreReady { id, path, .. } = event() else { panic!("no vmcore_ready") };
        let path = std::path::PathBuf::from(path);
        assert_eq!(path.file_name().and_then(|n| n.to_str()), Some(id.as_str()));
        assert_crash_matches(&path, &g);
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(path.join("meta.json")).unwrap()).unwrap();
        assert_eq!(meta["reason"]["detector"], "hung_task");
        assert_eq!(meta["reason"]["comm"], "khungtaskd");

        // A descriptor address outside RAM is an invalid argument, and a failure event.
        assert_eq!(command(&p, 1, Command::Dump, 1 << 40).1, STATUS_INVALID_ARGUMENT);
        assert!(matches!(event(), Event::DumpFailed { .. }));
        assert_eq!(command(&p, 0, Command::DumpFailed, 1 << 40).1, STATUS_INVALID_ARGUMENT);
        assert!(matches!(event(), Event::DumpFailed { .. }));
    }
}
