//! Building a machine from a configuration, running it, and rebooting it in place.
//!
//! `run` reads like a script: open KVM, start the crash sink and the control channel, then per
//! boot create the VM, its memory, the kernel and boot data, the vCPUs; run until the guest powers
//! off, resets or fails; on reset, tear the machine down and build it again from the same
//! configuration. The machine's lifecycle types live here: [`StopReason`], and [`ResetCause`], a
//! word of the control protocol re-exported from `crashvisor_control`.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::unix::thread::JoinHandleExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::os::fd::FromRawFd;

use kvm_ioctls::{Cap, Kvm, VmFd};

use crate::arch::{cpuid, pvh, regs};
use crate::config::{ConsoleOutput, VmConfig};
use crate::control::{self, ControlConfig, ControlHandle, Inbox};
use crate::crash::policy::CrashPolicy;
use crate::crash::{CrashSink, DumpTarget, SinkThread};
use crate::devices::console::{pump_input, Console};
use crate::devices::control_uart::ControlUart;
use crate::devices::platform::{BootTimes, Platform, PlatformLinks};
use crate::devices::Devices;
use crate::error::VmmError;
use crate::kernel::{self, KernelImage};
use crate::memory;
use crate::nmi_watchdog::NmiWatchdog;
use crate::sigterm;
use crate::vcpu::requests::VcpuRequests;
use crate::vcpu::{self, RunContext};
use crashvisor_abi::layout::{KERNEL_MODULE_GPA, KERNEL_MODULE_MAX_SIZE};
use vm_memory::GuestMemoryBackend;

/// A reset this soon after (re)boot counts towards a reset loop.
const RESET_LOOP_WINDOW: Duration = Duration::from_secs(1);
/// Consecutive quick resets that make a reset loop.
const RESET_LOOP_COUNT: u32 = 3;
/// Address of the TSS KVM needs for real-mode emulation on Intel (3 pages below the BIOS area).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Why a machine stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest powered off.
    PowerOff,
    /// The guest reset the machine.
    Reset(ResetCause),
    /// KVM could not emulate a guest instruction.
    EmulationFailure(String),
    /// KVM or the VMM failed while running the guest.
    Fatal(String),
    /// The operator asked the VMM to quit (console escape).
    Quit,
}

/// How the guest reset the machine: a word of the control protocol (`rebooting` events).
pub use crashvisor_control::ResetCause;

/// How the guest ended, which decides the VMM's exit status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestEnd {
    /// The guest powered off.
    PowerOff,
    /// The guest reset (with `no_reboot`), or kept resetting right after boot.
    ResetLoop,
    /// The guest triple-faulted (with `no_reboot`), or kept triple-faulting right after boot.
    TripleFault,
    /// KVM could not emulate a guest instruction.
    EmulationFailure(String),
    /// The operator quit from the console.
    Quit,
}

impl GuestEnd {
    /// The VMM's exit status for this ending (documented in `vmm --help`).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::PowerOff | Self::Quit => 0,
            Self::ResetLoop => 3,
            Self::TripleFault => 4,
            Self::EmulationFailure(_) => 5,
        }
    }
}

impl fmt::Display for GuestEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PowerOff => f.write_str("the guest powered off"),
            Self::ResetLoop => f.write_str("the guest reset and the VMM did not reboot it"),
            Self::TripleFault => f.write_str("the guest triple-faulted"),
            Self::EmulationFailure(what) => f.write_str(what),
            Self::Quit => f.write_str("stopped from the console"),
        }
    }
}

/// Runs the VM described by `config` until the guest ends.
pub fn run(config: &VmConfig) -> Result<GuestEnd, VmmError> {
    run_with(config, Instant::now(), false)
}

/// What outlives a reboot: the UARTs, the boot clock, the control channel's inbox and the
/// crash sink.
struct Persistent {
    console: Arc<Console>,
    control_uart: Arc<ControlUart>,
    boot_times: Arc<BootTimes>,
    inbox: Inbox,
    sink: CrashSink,
}

impl Persistent {
    /// Puts both UARTs back in their power-on state and restarts the boot clock.
    fn reset(&self) -> Result<(), VmmError> {
        let uart_error = |source| VmmError::Console { path: "console".into(), source };
        self.console.reset().map_err(uart_error)?;
        self.control_uart.reset().map_err(uart_error)?;
        self.boot_times.restart();
        Ok(())
    }
}

/// What happens after a machine stopped.
enum Next {
    /// Build a new machine.
    Reboot(ResetCause),
    /// The run is over.
    End(GuestEnd),
    /// The VMM failed.
    Fail(String),
}

/// Like `run`, timing boot milestones from `process_start` and, with `echo_timings`, printing
/// each on stderr as it is reached.
pub fn run_with(config: &VmConfig, process_start: Instant, echo_timings: bool) -> Result<GuestEnd, VmmError> {
    config.validate()?;
    // Before any thread starts: they all inherit the mask.
    sigterm::block();
    let kvm = open_kvm(&config.kvm_device)?;
    let image = KernelImage::open(&config.kernel)?;
    let (inbox, inputs) = Inbox::channel();
    let target = DumpTarget {
        crash_dir: config.crash_dir.clone(),
        vm_name: config.name.clone(),
        retention: config.retention,
        core_collector: config.core_collector.clone(),
    };
    let sink_thread = SinkThread::start(target, inbox.clone())?;
    sigterm::start(inbox.clone())?;
    let uart_error = |source| VmmError::Console { path: "console".into(), source };
    let shared = Persistent {
        console: Arc::new(Console::new(console_output(&config.console)?).map_err(uart_error)?),
        control_uart: Arc::new(ControlUart::new(inbox.clone()).map_err(uart_error)?),
        boot_times: Arc::new(BootTimes::new(process_start, echo_timings)),
        inbox,
        sink: sink_thread.sink(),
    };
    let crash = CrashPolicy::new(config.on_panic, config.on_crash_loaded, config.dump_format, shared.sink.clone());
    let control = control::start(
        &ControlConfig { socket: config.control_socket.clone(), vcpus: usize::from(config.vcpus) },
        shared.inbox.clone(),
        inputs,
        shared.control_uart.clone(),
        crash,
    )?;
    let ended = run_boots(&kvm, config, &image, &shared, &control);
    // Dumps in flight finish first, so clients hear how they ended before the channel closes.
    drop(sink_thread);
    drop(control);
    ended
}

/// Boots the machine, and boots it again after each reset, until the guest ends.
fn run_boots(
    kvm: &Kvm,
    config: &VmConfig,
    image: &KernelImage,
    shared: &Persistent,
    control: &ControlHandle,
) -> Result<GuestEnd, VmmError> {
    vcpu::install_kick_handler()?;
    let quit_requests = Arc::new(std::sync::Mutex::new(None::<Arc<RunContext>>));
    let mut input_started = false;

    let mut quick_resets = 0;
    loop {
        let boot_start = Instant::now();
        let machine = Machine::build(kvm, config, image, shared)?;
        *quit_requests.lock().unwrap_or_else(|e| e.into_inner()) = Some(machine.ctx.clone());
        control.machine_started(machine.ctx.clone());
        // Console input starts once the first boot runs: it is not on the way to the guest.
        let reason = machine.run(|| {
            if !std::mem::replace(&mut input_started, true) {
                if let Err(e) = start_input_thread(&shared.console, &quit_requests) {
                    tracing::error!("console input is unavailable: {e}");
                }
            }
        })?;
        let quick = boot_start.elapsed() < RESET_LOOP_WINDOW;
        quick_resets = if quick { quick_resets + 1 } else { 0 };
        let next = after_stop(&reason, config.no_reboot, quick_resets);
        control.machine_stopped(reason, matches!(next, Next::Reboot(_)));
        match next {
            Next::End(end) => return Ok(end),
            Next::Fail(what) => return Err(VmmError::BootData { what: "the guest", source: what.into() }),
            Next::Reboot(cause) => tracing::info!(?cause, "guest reset; rebooting"),
        }
        shared.reset()?;
    }
}

/// Marks the vCPU's `kvm_run` mapping `MADV_DONTFORK`: a host-side dump's forked writer
/// (`crash::fork`) must not hold the vCPU, and through it the VM, alive after the parent
/// let the machine go (a reboot then builds a new VM while the old one still exists).
fn keep_out_of_forks(vcpu: &mut kvm_ioctls::VcpuFd, kvm: &Kvm) -> Result<(), VmmError> {
    let size = kvm.get_vcpu_mmap_size().map_err(VmmError::kvm("read the vCPU mapping size"))?;
    let run: *mut kvm_bindings::kvm_run = vcpu.get_kvm_run();
    // SAFETY: `run` is the start of the vCPU's `size`-byte mapping made by kvm-ioctls, which
    // lives as long as the `VcpuFd`; the advice changes only what a fork inherits.
    if unsafe { libc::madvise(run.cast(), size, libc::MADV_DONTFORK) } != 0 {
        return Err(VmmError::kvm("mark the vCPU mapping")(kvm_ioctls::Error::last()));
    }
    Ok(())
}

/// Decides what follows a machine's stop; `quick_resets` counts consecutive stops soon after
/// boot (including this one).
fn after_stop(reason: &StopReason, no_reboot: bool, quick_resets: u32) -> Next {
    let cause = match reason {
        StopReason::PowerOff => return Next::End(GuestEnd::PowerOff),
        StopReason::Quit => return Next::End(GuestEnd::Quit),
        StopReason::EmulationFailure(what) => return Next::End(GuestEnd::EmulationFailure(what.clone())),
        StopReason::Fatal(what) => return Next::Fail(what.clone()),
        StopReason::Reset(cause) => *cause,
    };
    let ending = if cause == ResetCause::TripleFault { GuestEnd::TripleFault } else { GuestEnd::ResetLoop };
    if no_reboot {
        return Next::End(ending);
    }
    if quick_resets >= RESET_LOOP_COUNT {
        let how = if cause == ResetCause::TripleFault { "triple-faulted" } else { "reset" };
        tracing::error!("the guest {how} {quick_resets} times within {RESET_LOOP_WINDOW:?} of booting; giving up");
        return Next::End(ending);
    }
    Next::Reboot(cause)
}

fn open_kvm(device: &std::path::Path) -> Result<Kvm, VmmError> {
    use std::os::fd::IntoRawFd;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(device).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            VmmError::KvmMissing(device.to_path_buf())
        } else {
            VmmError::KvmAccess { device: device.to_path_buf(), source: e }
        }
    })?;
    // SAFETY: the descriptor was just opened and its ownership passes to `Kvm`.
    let kvm = unsafe { Kvm::from_raw_fd(file.into_raw_fd()) };
    match kvm.get_api_version() {
        12 => Ok(kvm),
        v if v < 0 => Err(VmmError::NotKvm {
            device: device.to_path_buf(),
            reason: format!("KVM_GET_API_VERSION failed: {}", std::io::Error::last_os_error()),
        }),
        v => {
            Err(VmmError::NotKvm { device: device.to_path_buf(), reason: format!("KVM API version {v}, expected 12") })
        }
    }
}

fn console_output(output: &ConsoleOutput) -> Result<Box<dyn Write + Send>, VmmError> {
    match output {
        ConsoleOutput::Stdout => Ok(Box::new(std::io::stdout())),
        ConsoleOutput::File(path) => File::create(path)
            .map(|f| Box::new(f) as Box<dyn Write + Send>)
            .map_err(|source| VmmError::Console { path: path.clone(), source }),
    }
}

/// Feeds stdin to the console for as long as the process runs; Ctrl-A x quits.
fn start_input_thread(
    console: &Arc<Console>,
    current: &Arc<std::sync::Mutex<Option<Arc<RunContext>>>>,
) -> Result<(), VmmError> {
    let console = console.clone();
    let current = current.clone();
    std::thread::Builder::new()
        .name("console-input".into())
        .spawn(move || {
            pump_input(&console, std::io::stdin().lock(), || {
                if let Some(ctx) = current.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    ctx.request_stop(StopReason::Quit);
                }
            })
        })
        .map(drop)
        .map_err(|source| VmmError::Thread { what: "console input", source })
}

/// One boot of the VM: KVM objects, memory and vCPUs, ready to run.
struct Machine {
    // Field order is drop order: vCPU fds go before the VM fd, the VM before its memory (held
    // by `ctx`), as the memory registration requires.
    vcpus: Vec<kvm_ioctls::VcpuFd>,
    _vm: VmFd,
    ctx: Arc<RunContext>,
}

impl Machine {
    fn build(kvm: &Kvm, config: &VmConfig, image: &KernelImage, shared: &Persistent) -> Result<Self, VmmError> {
        let vm = kvm.create_vm().map_err(VmmError::kvm("create a VM"))?;
        // Memory before the irqchip: once the irqchip exists, a memory-slot change waits for
        // an SRCU grace period, which costs milliseconds.
        let memory = memory::create(&vm, config.memory_bytes())?;
        let (rom_addr, rom_size) = image.pages();
        if rom_size > KERNEL_MODULE_MAX_SIZE {
            return Err(VmmError::KernelTooLarge { kernel: image.name.clone(), bytes: rom_size });
        }
        // SAFETY: the image's pages are the embedded static or a mapping owned by `image`, which
        // `run_with` keeps alive (and unchanged) across every machine it builds.
        unsafe { memory::register_rom(&vm, memory.num_regions() as u32, KERNEL_MODULE_GPA, rom_addr, rom_size)? };
        vm.set_tss_address(KVM_TSS_ADDRESS).map_err(VmmError::kvm("set the TSS address"))?;
        vm.create_irq_chip().map_err(VmmError::kvm("create the in-kernel interrupt controllers"))?;
        vm.register_irqfd(shared.console.irq(), crashvisor_abi::serial::COM1_IRQ)
            .map_err(VmmError::kvm("connect the COM1 interrupt"))?;
        vm.register_irqfd(shared.control_uart.irq(), crashvisor_abi::serial::COM2_IRQ)
            .map_err(VmmError::kvm("connect the COM2 interrupt"))?;

        let loaded = kernel::load(&memory, image, config.memory_mib)?;
        pvh::write_boot_data(&memory, config.memory_bytes(), &config.cmdline, image.bytes().len() as u64, rom_size)?;

        let base_cpuid = cpuid::supported(kvm)?;
        let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
        let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
        for id in 0..config.vcpus {
            let mut vcpu = vm.create_vcpu(u64::from(id)).map_err(VmmError::kvm("create a vCPU"))?;
            keep_out_of_forks(&mut vcpu, kvm)?;
            let tsc_khz = vcpu.get_tsc_khz().map_err(VmmError::kvm("read the TSC frequency"))?;
            vcpu.set_cpuid2(&cpuid::for_vcpu(&base_cpuid, id, config.vcpus, tsc_khz, tsc_deadline)?)
                .map_err(VmmError::kvm("set the vCPU's CPUID"))?;
            regs::setup_lint(&vcpu)?;
            if id == 0 {
                regs::setup_pvh_entry(&vcpu, loaded.entry.0, crashvisor_abi::layout::PVH_INFO_GPA)?;
            }
            vcpus.push(vcpu);
        }

        let requests = Arc::new(VcpuRequests::new(vcpus.len()));
        let devices = Devices {
            console: shared.console.clone(),
            control_uart: shared.control_uart.clone(),
            platform: Platform::new(PlatformLinks {
                boot_times: shared.boot_times.clone(),
                memory: memory.clone(),
                sink: shared.sink.clone(),
                vcpus: requests.clone(),
                nmi_watchdog: Arc::new(NmiWatchdog::new(config.nmi_watchdog, requests.clone())),
                inbox: shared.inbox.clone(),
            }),
            unknown_accesses: Default::default(),
        };
        Ok(Self { vcpus, _vm: vm, ctx: Arc::new(RunContext::new(devices, memory, requests)) })
    }

    /// Runs every vCPU on its own thread until the machine stops, then joins them. `started`
    /// runs once the vCPU threads are going.
    fn run(mut self, started: impl FnOnce()) -> Result<StopReason, VmmError> {
        let mut threads = Vec::with_capacity(self.vcpus.len());
        for (id, vcpu) in self.vcpus.drain(..).enumerate() {
            let ctx = self.ctx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || vcpu::run(vcpu, id, ctx))
                .map_err(|source| VmmError::Thread { what: "vCPU", source });
            match thread {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.ctx.request_stop(StopReason::Fatal(e.to_string()));
                    stop_threads(&threads);
                    return Err(e);
                }
            }
        }
        started();
        let reason = self.ctx.wait_for_stop();
        self.ctx.devices.platform.nmi_watchdog().shutdown();
        stop_threads(&threads);
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("a vCPU thread panicked");
            }
        }
        Ok(reason)
    }
}

/// Kicks every vCPU thread out of `KVM_RUN`; they see the stop flag and return.
fn stop_threads(threads: &[std::thread::JoinHandle<()>]) {
    for thread in threads {
        // SAFETY: pthread_kill with a valid, joinable thread handle and a signal whose handler is
        // installed; the thread has not been joined yet, so the handle is alive.
        unsafe { libc::pthread_kill(thread.as_pthread_t(), vcpu::kick_signal()) };
    }
}
