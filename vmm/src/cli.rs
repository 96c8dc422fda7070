//! The `vmm` command line, shared by the `vmm` binary and `crashvisor` (which runs the same VM
//! when given no subcommand).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{CommandFactory, FromArgMatches, Parser};
use dumpd::error_chain;

use crate::config::{
    ConsoleOutput, CrashLoadedPolicy, DumpFormat, KernelSource, PanicPolicy, VmConfig, DEFAULT_MEMORY_MIB,
    DEFAULT_VCPUS,
};
use crate::crash::collector::CoreCollector;

const EXIT_STATUS_HELP: &str = "\
Exit status:
  0    the guest powered off (or Ctrl-A x was typed on the console)
  1    the VMM failed: bad configuration, no usable /dev/kvm, a kernel it cannot load, ...
  2    bad command-line usage
  3    the guest reset and was not rebooted (--no-reboot), or reset in a loop right after boot
  4    the guest triple-faulted and was not rebooted (--no-reboot), or did so in a loop
  5    the guest ran an instruction the host KVM cannot emulate (RIP and bytes are reported)
  101  the VMM itself crashed (a bug: please report it)

Console: COM1 goes to stdout (or --console FILE); stdin feeds its input. When stdin is a
terminal, type Ctrl-A x to quit.";

/// Run one virtual machine on KVM with crashvisor's guest kernel (or another PVH kernel).
#[derive(Parser, Debug)]
#[command(version, after_help = EXIT_STATUS_HELP)]
struct Args {
    /// Read the whole VM configuration from this JSON file instead of the flags (what the
    /// crashvisor service does; docs/vmm.md describes the fields).
    #[arg(long, value_name = "FILE", exclusive = true)]
    config: Option<PathBuf>,
    /// PVH ELF kernel to boot [default: the embedded crashvisor guest kernel].
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Number of vCPUs (1-16).
    #[arg(long, default_value_t = DEFAULT_VCPUS, value_name = "N")]
    vcpus: u8,
    /// Guest memory in MiB (32-65536).
    #[arg(long, default_value_t = DEFAULT_MEMORY_MIB, value_name = "MIB")]
    memory: u64,
    /// Kernel command line.
    #[arg(long, default_value = "", value_name = "\"...\"")]
    cmdline: String,
    /// Write the console to this file instead of stdout.
    #[arg(long, value_name = "PATH")]
    console: Option<PathBuf>,
    /// Exit when the guest resets instead of rebooting it.
    #[arg(long)]
    no_reboot: bool,
    /// The KVM device to use.
    #[arg(long, value_name = "PATH", default_value = crate::config::DEFAULT_KVM_DEVICE)]
    kvm: PathBuf,
    /// Serve the control protocol (JSON lines: pause, resume, NMIs, fault injection, events)
    /// on a unix socket at PATH; see docs/control-protocol.md.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Offer the guest a periodic NMI per vCPU as its hard-lockup detector's clock; with off,
    /// the guest falls back to its buddy detector.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    nmi_watchdog: bool,
    /// Print boot milestones (first guest instruction, all CPUs online, shell prompt) on stderr
    /// as they happen, in ms since the VMM started and as CLOCK_MONOTONIC nanoseconds.
    #[arg(long)]
    timings: bool,
    /// Write vmcores handed over by the guest's capture kernel into this crash store
    /// [default: $XDG_DATA_HOME/crashvisor/crash or ~/.local/share/crashvisor/crash].
    #[arg(long, value_name = "DIR")]
    crash_dir: Option<PathBuf>,
    /// The VM's name in the crash store (1-64 of A-Z a-z 0-9 _ . -).
    #[arg(long, value_name = "NAME", default_value = crate::config::DEFAULT_VM_NAME, value_parser = parse_vm_name)]
    name: String,
    /// What to do when the guest panics without a capture kernel (pvpanic PANICKED): take a
    /// host-side vmcore into the crash store and/or reboot, power off or pause the VM.
    #[arg(long, value_name = "POLICY", value_enum, default_value_t = PanicPolicy::None)]
    on_panic: PanicPolicy,
    /// What to do when a capture kernel starts (pvpanic CRASH_LOADED): report it, or also take
    /// a host-side vmcore of the whole machine.
    #[arg(long, value_name = "POLICY", value_enum, default_value_t = CrashLoadedPolicy::Event)]
    on_crash_loaded: CrashLoadedPolicy,
    /// The format of host-side vmcores: elf (sparse ELF core), kdump-zstd or kdump-zlib
    /// (makedumpfile's compressed format).
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = DumpFormat::Elf)]
    dump_format: DumpFormat,
    /// Write the vmcore a capture kernel hands over with this program, as kdump.conf's
    /// core_collector (e.g. "makedumpfile -l -d 31"): it gets the crashed kernel's /proc/vmcore,
    /// served from guest memory, and the output path after its words. If it fails, the built-in
    /// writer writes the vmcore and meta.json says why.
    #[arg(long, value_name = "COMMAND")]
    core_collector: Option<CoreCollector>,
    /// Keep at most N crashes of each VM in the crash store; the oldest go after each new one.
    #[arg(long, value_name = "N")]
    keep_per_vm: Option<usize>,
    /// Keep the crash store under SIZE on disk (e.g. 20G); the oldest crashes go first, never
    /// the one just written.
    #[arg(long, value_name = "SIZE", value_parser = dumpd::store::parse_bytes)]
    keep_bytes: Option<u64>,
    /// Ship every crash of the crash directory (now its spool) to a fleet's object store,
    /// s3://BUCKET/PREFIX, as `crashvisor serve --crash-store` does (endpoint, region and
    /// credentials from the AWS_* variables). --keep-per-vm and --keep-bytes then apply to this
    /// host's prefix in the store; see docs/crash-store.md.
    #[arg(long, value_name = "URL")]
    crash_store: Option<fleet::StoreUrl>,
    /// This host's name in the fleet's store [default: the host name].
    #[arg(long, value_name = "ID", requires = "crash_store")]
    host_id: Option<String>,
    /// Keep a crash's local copy after it is uploaded.
    #[arg(long, requires = "crash_store")]
    keep_local: bool,
    /// The spool's size limit (e.g. 50G): beyond it the VMM says so in its log and drops nothing.
    #[arg(long, value_name = "SIZE", value_parser = dumpd::store::parse_bytes, requires = "crash_store")]
    spool_bytes: Option<u64>,
    /// When the VM ends, wait at most SECS for the spool's crashes to reach the store.
    #[arg(long, value_name = "SECS", default_value_t = 60, requires = "crash_store")]
    upload_wait: u64,
    /// Write the embedded guest kernel ELF (with symbols, for gdb) to PATH and exit.
    #[arg(long, value_name = "PATH", exclusive = true)]
    extract_kernel: Option<PathBuf>,
}

/// Parses the process arguments as `name` and runs the VM they describe.
pub fn main(name: &'static str) -> ExitCode {
    main_from(name, std::env::args_os())
}

/// Parses `args` (the first one is the program's name, as in `std::env::args_os`) as `name` and
/// runs the VM they describe: `crashvisor vmm ARGS...` runs the VMM this way.
pub fn main_from(name: &'static str, args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let process_start = Instant::now();
    let args = match Args::command().name(name).try_get_matches_from(args) {
        Ok(matches) => Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()),
        Err(e) => e.exit(),
    };
    let logs = tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    // A filter from VMM_LOG when given; otherwise a plain level, which costs nothing to set up.
    match std::env::var("VMM_LOG") {
        Ok(filter) => logs.with_env_filter(tracing_subscriber::EnvFilter::new(filter)).init(),
        Err(_) => logs.with_max_level(tracing::Level::WARN).init(),
    }

    if let Some(path) = &args.extract_kernel {
        return match std::fs::write(path, crate::kernel::EMBEDDED_KERNEL) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{name}: cannot write {}: {e}", path.display());
                ExitCode::from(1)
            }
        };
    }

    let timings = args.timings;
    let retention = dumpd::store::Retention { max_per_vm: args.keep_per_vm, max_total_bytes: args.keep_bytes };
    let upload_wait = std::time::Duration::from_secs(args.upload_wait);
    let ship = args.crash_store.clone().map(|url| crate::ship::ShipOptions {
        url,
        host_id: args.host_id.clone(),
        keep_local: args.keep_local,
        spool_limit: args.spool_bytes,
        retention,
    });
    let config = match args.config {
        Some(path) => VmConfig::read_file(&path),
        None => Ok(config_from_flags(args)),
    };
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(1);
        }
    };
    // With a fleet store the spool drains by uploads only: retention applies in the store.
    let config = if ship.is_some() { VmConfig { retention: Default::default(), ..config } } else { config };
    let shipper = match ship.map(|options| crate::ship::start(&config.crash_dir, options)).transpose() {
        Ok(shipper) => shipper,
        Err(e) => {
            eprintln!("{name}: cannot ship crashes to the fleet's store: {e:#}");
            return ExitCode::from(1);
        }
    };
    let raw_mode = crate::terminal::RawMode::enable_if_tty();
    let result = crate::vm::run_with(&config, process_start, timings);
    drop(raw_mode);
    if let Some(shipper) = shipper {
        shipper.finish(upload_wait);
    }
    match result {
        Ok(end) => {
            if end.exit_code() != 0 {
                eprintln!("{name}: {end}");
            }
            ExitCode::from(end.exit_code())
        }
        Err(e) => {
            eprintln!("{name}: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}

/// The VM the flags describe.
fn config_from_flags(args: Args) -> VmConfig {
    VmConfig {
        kernel: args.kernel.map_or(KernelSource::Embedded, KernelSource::File),
        vcpus: args.vcpus,
        memory_mib: args.memory,
        cmdline: args.cmdline,
        console: args.console.map_or(ConsoleOutput::Stdout, ConsoleOutput::File),
        no_reboot: args.no_reboot,
        kvm_device: args.kvm,
        control_socket: args.control,
        nmi_watchdog: args.nmi_watchdog,
        crash_dir: args.crash_dir.unwrap_or_else(dumpd::default_crash_dir),
        name: args.name,
        on_panic: args.on_panic,
        on_crash_loaded: args.on_crash_loaded,
        dump_format: args.dump_format,
        retention: dumpd::store::Retention { max_per_vm: args.keep_per_vm, max_total_bytes: args.keep_bytes },
        core_collector: args.core_collector,
    }
}

/// `on` or `off`.
fn parse_on_off(value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("expected on or off, not {other:?}")),
    }
}

/// A VM name the crash store accepts.
fn parse_vm_name(value: &str) -> Result<String, String> {
    dumpd::store::validate_vm_name(value).map(|()| value.to_owned()).map_err(|e| e.to_string())
}
