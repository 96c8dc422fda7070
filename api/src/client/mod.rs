//! `crashvisor vm|inject|vmcore ...`: the command-line client of a running service. Every
//! command prints a short human summary, or the service's JSON with `--json`.

mod http;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use http_body_util::BodyExt;
use hyper::Method;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Map, Value};

use self::http::ApiClient;

/// The service a client talks to unless told otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";
/// How long `vm create --wait` waits for the guest to boot.
const BOOT_WAIT: Duration = Duration::from_secs(120);
/// How often `--wait` looks.
const POLL: Duration = Duration::from_millis(100);
/// How often the download bar is redrawn, per second.
const PROGRESS_HZ: u8 = 10;
/// The download bar: `[##########....]  45%  120.00 MiB/256.00 MiB  80.00 MiB/s`.
const PROGRESS_TEMPLATE: &str = "[{bar:30}] {percent:>3}%  {binary_bytes}/{binary_total_bytes}  {binary_bytes_per_sec}";

/// Options every client command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientOpts {
    /// The service's URL.
    #[arg(long, env = "CRASHVISOR_SERVER", default_value = DEFAULT_SERVER, value_name = "URL")]
    pub server: String,
    /// Print the service's JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// `crashvisor vm ...`.
#[derive(clap::Subcommand, Debug)]
pub enum VmCommand {
    /// Create and start a VM.
    Create(CreateArgs),
    /// List the VMs.
    List(ClientOpts),
    /// Show one VM.
    Show {
        /// The VM's name.
        name: String,
        /// Where the service is, and the output format.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Stop and delete a VM.
    Rm {
        /// The VM's name.
        name: String,
        /// Where the service is, and the output format.
        #[command(flatten)]
        opts: ClientOpts,
    },
}

/// `crashvisor vm create`'s options (see POST /v1/vms).
#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// The VM's name [default: vm-N].
    #[arg(long)]
    name: Option<String>,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Guest RAM, MiB.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    memory: u64,
    /// Extra kernel command line.
    #[arg(long, value_name = "\"...\"")]
    cmdline: Option<String>,
    /// A PVH kernel on the service's host [default: the embedded guest kernel].
    #[arg(long, value_name = "PATH")]
    kernel: Option<String>,
    /// Start kdump at boot (with crashkernel=64M unless --crashkernel says otherwise).
    #[arg(long)]
    kdump: bool,
    /// crashkernel= value.
    #[arg(long, value_name = "SIZE")]
    crashkernel: Option<String>,
    /// kernel.watchdog_thresh, seconds.
    #[arg(long, value_name = "SECS")]
    watchdog_thresh: Option<u32>,
    /// Set kernel.softlockup_panic.
    #[arg(long)]
    softlockup_panic: bool,
    /// Set kernel.hardlockup_panic.
    #[arg(long)]
    hardlockup_panic: bool,
    /// Set kernel.hung_task_panic.
    #[arg(long)]
    hung_task_panic: bool,
    /// Set kernel.panic_on_oops.
    #[arg(long)]
    panic_on_oops: bool,
    /// Turn the host's NMI watchdog off (the guest uses its buddy detector).
    #[arg(long)]
    no_nmi_watchdog: bool,
    /// Another boot sysctl, kernel.NAME=VALUE (repeatable).
    #[arg(long = "sysctl", value_name = "kernel.NAME=VALUE")]
    sysctls: Vec<String>,
    /// Wait until the guest has booted.
    #[arg(long)]
    wait: bool,
    /// Where the service is, and the output format.
    #[command(flatten)]
    opts: ClientOpts,
}

/// `crashvisor inject VM KIND`.
#[derive(clap::Args, Debug)]
pub struct InjectArgs {
    /// The VM's name.
    vm: String,
    /// softlockup, hardlockup, hung_task, deadlock, panic, oops, bug, sysrq_crash,
    /// stack_overflow; or an LKDTM crash type in upper case (PANIC_IN_HARDIRQ, ...: see
    /// GET /v1/lkdtm).
    kind: String,
    /// The CPU it runs on [default: 0; at an LKDTM crash point: every CPU's hits count].
    #[arg(long)]
    cpu: Option<u32>,
    /// How long a lockup lasts [default: until reboot].
    #[arg(long, value_name = "MS")]
    duration_ms: Option<u64>,
    /// The panic message (panic only).
    #[arg(long)]
    message: Option<String>,
    /// The LKDTM crash point the type runs at (INT_HARDWARE_ENTRY, ...) [default: DIRECT].
    #[arg(long, value_name = "NAME")]
    cpoint: Option<String>,
    /// At an LKDTM crash point: fire on this many hits [default: LKDTM's cpoint_count, 10].
    #[arg(long, value_name = "N")]
    count: Option<u32>,
    /// Where the service is, and the output format.
    #[command(flatten)]
    opts: ClientOpts,
}

/// `crashvisor vmcore ...`.
#[derive(clap::Subcommand, Debug)]
pub enum VmcoreCommand {
    /// List the vmcores of the service's host (its spool and its part of the fleet's store).
    List {
        /// Only this VM's.
        #[arg(long)]
        vm: Option<String>,
        /// Every host's vmcores in the fleet's store (a service started with --crash-store).
        #[arg(long)]
        fleet: bool,
        /// Only this host's vmcores in the fleet's store.
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
        /// Where the service is, and the output format.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Download a vmcore, from the spool or the fleet's store (a progress bar on a terminal).
    Get {
        /// The vmcore's id (ID@HOST for another host's).
        id: String,
        /// Where to write it [default: ./<id>.vmcore].
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Where the service is, and the output format.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Show a vmcore's metadata and the end of its kernel log.
    Show {
        /// The vmcore's id.
        id: String,
        /// Where the service is, and the output format.
        #[command(flatten)]
        opts: ClientOpts,
    },
}

fn client(opts: &ClientOpts) -> anyhow::Result<ApiClient> {
    ApiClient::new(&opts.server, std::env::var("CRASHVISOR_TOKEN").ok().filter(|t| !t.is_empty()))
}

fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// Runs `crashvisor vm ...`.
pub async fn vm(command: VmCommand) -> anyhow::Result<()> {
    match command {
        VmCommand::Create(args) => create(args).await,
        VmCommand::List(opts) => {
            let vms = client(&opts)?.json(Method::GET, "/v1/vms", None).await?;
            if opts.json {
                print_json(&vms);
            } else {
                println!("{:<24} {:<10} {:>5} {:>7} {:>7} {:>7}", "NAME", "STATE", "VCPUS", "MIB", "CRASHES", "PID");
                for vm in vms["vms"].as_array().into_iter().flatten() {
                    println!(
                        "{:<24} {:<10} {:>5} {:>7} {:>7} {:>7}",
                        text(&vm["name"]),
                        text(&vm["state"]),
                        text(&vm["vcpus"]),
                        text(&vm["memory_mib"]),
                        text(&vm["crashes"]),
                        text(&vm["pid"])
                    );
                }
            }
            Ok(())
        }
        VmCommand::Show { name, opts } => {
            let vm = client(&opts)?.json(Method::GET, &format!("/v1/vms/{name}"), None).await?;
            if opts.json {
                print_json(&vm);
            } else {
                show_vm(&vm);
            }
            Ok(())
        }
        VmCommand::Rm { name, opts } => {
            client(&opts)?.json(Method::DELETE, &format!("/v1/vms/{name}"), None).await?;
            if opts.json {
                print_json(&json!({"deleted": name}));
            } else {
                println!("deleted {name}");
            }
            Ok(())
        }
    }
}

async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let api = client(&args.opts)?;
    let mut body = Map::new();
    body.insert("vcpus".into(), json!(args.vcpus));
    body.insert("memory_mib".into(), json!(args.memory));
    for (key, value) in
        [("name", &args.name), ("cmdline", &args.cmdline), ("kernel", &args.kernel), ("crashkernel", &args.crashkernel)]
    {
        if let Some(value) = value {
            body.insert(key.into(), json!(value));
        }
    }
    if args.kdump {
        body.insert("kdump".into(), json!({}));
    }
    let mut watchdog = Map::new();
    if let Some(secs) = args.watchdog_thresh {
        watchdog.insert("thresh_secs".into(), json!(secs));
    }
    for (key, on) in [
        ("softlockup_panic", args.softlockup_panic),
        ("hardlockup_panic", args.hardlockup_panic),
        ("hung_task_panic", args.hung_task_panic),
    ] {
        if on {
            watchdog.insert(key.into(), json!(true));
        }
    }
    if args.no_nmi_watchdog {
        watchdog.insert("nmi_watchdog".into(), json!(false));
    }
    if !watchdog.is_empty() {
        body.insert("watchdog".into(), Value::Object(watchdog));
    }
    if args.panic_on_oops {
        body.insert("panic".into(), json!({"on_oops": true}));
    }
    let mut sysctls = Map::new();
    for setting in &args.sysctls {
        let Some((name, value)) = setting.split_once('=') else {
            bail!("--sysctl takes kernel.NAME=VALUE, not {setting:?}");
        };
        sysctls.insert(name.into(), json!(value));
    }
    if !sysctls.is_empty() {
        body.insert("sysctls".into(), Value::Object(sysctls));
    }
    let mut vm = api.json(Method::POST, "/v1/vms", Some(&Value::Object(body))).await?;
    let name = text(&vm["name"]);
    if args.wait {
        let deadline = Instant::now() + BOOT_WAIT;
        while vm["state"] == "booting" {
            if Instant::now() > deadline {
                bail!("VM {name} did not boot within {} s", BOOT_WAIT.as_secs());
            }
            tokio::time::sleep(POLL).await;
            vm = api.json(Method::GET, &format!("/v1/vms/{name}"), None).await?;
        }
        if vm["state"] == "failed" {
            bail!("VM {name} failed: {}", text(&vm["failure"]));
        }
    }
    if args.opts.json {
        print_json(&vm);
    } else {
        println!("{name} {}", text(&vm["state"]));
    }
    Ok(())
}

fn show_vm(vm: &Value) {
    for key in ["name", "state", "pid", "vcpus", "memory_mib", "cmdline", "release", "uptime_secs", "boots", "crashes"]
    {
        println!("{key:<12} {}", text(&vm[key]));
    }
    for key in ["vmcores", "last_lockup", "last_panic", "failure"] {
        if !vm[key].is_null() && vm[key] != json!([]) {
            println!("{key:<12} {}", text(&vm[key]));
        }
    }
}

/// Runs `crashvisor inject`: a kind in upper case is LKDTM's.
pub async fn inject(args: InjectArgs) -> anyhow::Result<()> {
    let lkdtm = args.kind.bytes().any(|b| b.is_ascii_uppercase());
    let mut body = if lkdtm { json!({"lkdtm": args.kind}) } else { json!({"kind": args.kind}) };
    let fields = [
        ("cpu", args.cpu.map(|n| json!(n))),
        ("duration_ms", args.duration_ms.map(|n| json!(n))),
        ("message", args.message.map(|m| json!(m))),
        ("cpoint", args.cpoint.map(|p| json!(p))),
        ("count", args.count.map(|n| json!(n))),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            body[key] = value;
        }
    }
    let path = format!("/v1/vms/{}/faults", args.vm);
    let result = client(&args.opts)?.json(Method::POST, &path, Some(&body)).await?;
    if args.opts.json {
        print_json(&result);
    } else if !result["cpoint"].is_null() {
        let cpus = result["cpu"].as_u64().map_or("every CPU's".to_string(), |cpu| format!("CPU {cpu}'s"));
        println!(
            "registered {} at {} of {}: it runs on hit {} ({cpus} hits count)",
            args.kind,
            text(&result["cpoint"]),
            args.vm,
            text(&result["count"])
        );
    } else {
        let cpu = args.cpu.unwrap_or(0);
        println!("injected {} on CPU {cpu} of {} (pid {})", args.kind, args.vm, text(&result["pid"]));
    }
    Ok(())
}

/// Runs `crashvisor vmcore ...`.
pub async fn vmcore(command: VmcoreCommand) -> anyhow::Result<()> {
    match command {
        VmcoreCommand::List { vm, fleet, host, opts } => {
            let query: Vec<String> = [
                vm.map(|vm| format!("vm={vm}")),
                fleet.then(|| "scope=fleet".to_owned()),
                host.map(|host| format!("host={host}")),
            ]
            .into_iter()
            .flatten()
            .collect();
            let path =
                if query.is_empty() { "/v1/vmcores".to_owned() } else { format!("/v1/vmcores?{}", query.join("&")) };
            let list = client(&opts)?.json(Method::GET, &path, None).await?;
            if opts.json {
                print_json(&list);
            } else {
                println!("{:<56} {:<8} {:<14} {:>12} {:>12}", "ID", "WHERE", "DETECTOR", "SIZE", "ON DISK");
                for core in list["vmcores"].as_array().into_iter().flatten() {
                    println!(
                        "{:<56} {:<8} {:<14} {:>12} {:>12}",
                        text(&core["id"]),
                        text(&core["location"]),
                        text(&core["reason"]["detector"]),
                        text(&core["size"]),
                        text(&core["on_disk"])
                    );
                }
            }
            if let Some(error) = list["store_error"].as_str() {
                eprintln!("crashvisor: the fleet's store could not be listed: {error}");
            }
            Ok(())
        }
        VmcoreCommand::Get { id, output, opts } => download(&id, output, &opts).await,
        VmcoreCommand::Show { id, opts } => {
            let api = client(&opts)?;
            let core = api.json(Method::GET, &format!("/v1/vmcores/{id}"), None).await?;
            if opts.json {
                print_json(&core);
                return Ok(());
            }
            let meta = &core["meta"];
            println!("id           {id}");
            for key in ["vm", "trigger", "created", "dump_level"] {
                println!("{key:<12} {}", text(&meta[key]));
            }
            println!("reason       {}", text(&meta["reason"]));
            println!("sizes        {}", text(&meta["sizes"]));
            let dmesg = api.text(&format!("/v1/vmcores/{id}/dmesg")).await.unwrap_or_default();
            let lines: Vec<&str> = dmesg.lines().collect();
            println!("--- the end of vmcore-dmesg.txt ---");
            for line in &lines[lines.len().saturating_sub(15)..] {
                println!("{line}");
            }
            Ok(())
        }
    }
}

async fn download(id: &str, output: Option<PathBuf>, opts: &ClientOpts) -> anyhow::Result<()> {
    let api = client(opts)?;
    let path = format!("/v1/vmcores/{id}/vmcore");
    let response = api.send(Method::GET, &path, None, &[]).await?;
    let status = response.status();
    if !status.is_success() {
        let body = http::read_body(response).await?;
        return Err(http::error_of(status, &body, &Method::GET, &path));
    }
    let total = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let output = output.unwrap_or_else(|| PathBuf::from(format!("{id}.vmcore")));
    let mut file = std::fs::File::create(&output).with_context(|| format!("cannot create {}", output.display()))?;
    let progress = progress_bar(total, opts.json);
    let mut body = response.into_body();
    let mut written = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the download broke off")?;
        if let Some(data) = frame.data_ref() {
            file.write_all(data).with_context(|| format!("cannot write {}", output.display()))?;
            written += data.len() as u64;
            progress.inc(data.len() as u64);
        }
    }
    progress.finish();
    if written != total {
        bail!("the download ended after {written} of {total} bytes");
    }
    if opts.json {
        print_json(&json!({"id": id, "path": output.display().to_string(), "bytes": written}));
    } else {
        println!("{} ({written} bytes)", output.display());
    }
    Ok(())
}

/// A bar on stderr for a download of `total` bytes; indicatif hides it when stderr is not a
/// terminal, and `quiet` (`--json`) hides it always.
fn progress_bar(total: u64, quiet: bool) -> ProgressBar {
    let target = if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr_with_hz(PROGRESS_HZ) };
    let style = ProgressStyle::with_template(PROGRESS_TEMPLATE)
        .map_or_else(|_| ProgressStyle::default_bar(), |s| s.progress_chars("#."));
    ProgressBar::with_draw_target(Some(total), target).with_style(style)
}

/// A JSON value as plain text: strings without quotes, null as `-`.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
