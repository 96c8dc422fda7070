//! `crashvisor serve`: the REST service's command line, start-up checks (the state directory
//! is taken, its VMs found again), and an orderly shutdown on SIGTERM or SIGINT (stop
//! accepting, stop every VM, then close what is open).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::limits::{Host, Limits};
use crate::remote::FleetConfig;
use crate::state::{AppState, ServiceConfig};
use crate::supervisor::record::StateDir;

/// The address `crashvisor` listens on by default.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";
/// How long open connections (event streams, console follows) may stay after the VMs stopped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Longest control-socket directory: a socket path (`<dir>/<64-char name>.sock`) must fit in
/// `sun_path`'s 108 bytes.
const MAX_RUN_DIR_LEN: usize = 107 - 1 - 64 - 5;

/// `crashvisor serve`'s options; each also comes from the environment.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on. Beyond loopback a --token is required.
    #[arg(long, env = "CRASHVISOR_ADDR", default_value = DEFAULT_ADDR, value_name = "IP:PORT")]
    pub addr: SocketAddr,
    /// The crash store vmcores are written to and served from
    /// [default: $XDG_DATA_HOME/crashvisor/crash or ~/.local/share/crashvisor/crash].
    #[arg(long, env = "CRASHVISOR_CRASH_DIR", value_name = "DIR")]
    pub crash_dir: Option<PathBuf>,
    /// Directory for the VMs' control sockets [default: the last service's, else a new
    /// $TMPDIR/crashvisor-<pid>].
    #[arg(long, env = "CRASHVISOR_RUN_DIR", value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Where the service keeps what it needs to find its VMs again after a restart: their
    /// configuration, VMM process and control socket, console (one service per directory)
    /// [default: $XDG_STATE_HOME/crashvisor or ~/.local/state/crashvisor].
    #[arg(long, env = "CRASHVISOR_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Require `Authorization: Bearer <TOKEN>` on every request (but /v1/healthz).
    #[arg(long, env = "CRASHVISOR_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Most VMs held at once, in any state [default: 64].
    #[arg(long, env = "CRASHVISOR_MAX_VMS", value_name = "N")]
    pub max_vms: Option<usize>,
    /// Most vCPUs of one VM [default: the host's CPUs, at most 16].
    #[arg(long, env = "CRASHVISOR_MAX_VCPUS", value_name = "N")]
    pub max_vcpus: Option<u32>,
    /// Most vCPUs of all live VMs together [default: 16 per host CPU].
    #[arg(long, env = "CRASHVISOR_MAX_TOTAL_VCPUS", value_name = "N")]
    pub max_total_vcpus: Option<usize>,
    /// Most guest RAM of one VM, MiB [default: the total limit, at most 65536].
    #[arg(long, env = "CRASHVISOR_MAX_MEMORY_MIB", value_name = "MIB")]
    pub max_memory_mib: Option<u64>,
    /// Most guest RAM of all live VMs together, MiB [default: 80% of the host's RAM].
    #[arg(long, env = "CRASHVISOR_MAX_TOTAL_MEMORY_MIB", value_name = "MIB")]
    pub max_total_memory_mib: Option<u64>,
    /// Keep at most N crashes of each VM in the crash store (each VMM prunes after a crash).
    #[arg(long, env = "CRASHVISOR_KEEP_PER_VM", value_name = "N")]
    pub keep_per_vm: Option<usize>,
    /// Keep the crash store under SIZE on disk (e.g. 20G); the oldest crashes go first.
    #[arg(long, env = "CRASHVISOR_KEEP_BYTES", value_name = "SIZE", value_parser = dumpd::store::parse_bytes)]
    pub keep_bytes: Option<u64>,
    /// Ship every crash to a fleet's object store, s3://BUCKET/PREFIX (endpoint, region and
    /// credentials from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, ... as the AWS tools read
    /// them). The crash directory becomes the spool; --keep-per-vm and --keep-bytes then apply to
    /// this host's prefix in the store.
    #[arg(long, env = "CRASHVISOR_CRASH_STORE", value_name = "URL")]
    pub crash_store: Option<fleet::StoreUrl>,
    /// This host's name in the fleet's store (PREFIX/HOST/...) [default: the host name].
    #[arg(long, env = "CRASHVISOR_HOST_ID", value_name = "ID", requires = "crash_store")]
    pub host_id: Option<String>,
    /// Keep a crash's local copy after it is uploaded (removed then only to keep the spool within
    /// --spool-bytes).
    #[arg(long, env = "CRASHVISOR_KEEP_LOCAL", requires = "crash_store")]
    pub keep_local: bool,
    /// The spool's size limit (e.g. 50G): beyond it, waiting crashes are kept all the same and the
    /// service says so (event spool_full, metric crashvisor_spool_full, an error in its log).
    #[arg(long, env = "CRASHVISOR_SPOOL_BYTES", value_name = "SIZE", value_parser = dumpd::store::parse_bytes, requires = "crash_store")]
    pub spool_bytes: Option<u64>,
    /// Most disk space of stored vmcores downloaded for analysis [default: 4G].
    #[arg(long, env = "CRASHVISOR_STORE_CACHE_BYTES", value_name = "SIZE", value_parser = dumpd::store::parse_bytes, requires = "crash_store")]
    pub store_cache_bytes: Option<u64>,
    /// On SIGTERM or SIGINT, leave the VMs running for the next service on the same state
    /// directory to adopt (an upgrade), instead of stopping them.
    #[arg(long, env = "CRASHVISOR_DETACH_ON_EXIT", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub detach_on_exit: bool,
}

impl ServeArgs {
    /// The limits: the host's defaults with the options applied.
    pub fn limits(&self, host: Host) -> anyhow::Result<Limits> {
        let mut limits = Limits::for_host(host);
        if let Some(total) = self.max_total_memory_mib {
            limits.max_total_memory_mib = total;
            limits.max_memory_mib_per_vm = limits.max_memory_mib_per_vm.min(total);
        }
        limits.max_vms = self.max_vms.unwrap_or(limits.max_vms);
        limits.max_vcpus_per_vm = self.max_vcpus.unwrap_or(limits.max_vcpus_per_vm);
        limits.max_total_vcpus = self.max_total_vcpus.unwrap_or(limits.max_total_vcpus);
        limits.max_memory_mib_per_vm = self.max_memory_mib.unwrap_or(limits.max_memory_mib_per_vm);
        limits.validate(host).map_err(anyhow::Error::msg)?;
        Ok(limits)
    }

    /// The retention options, as every VMM takes them.
    pub fn retention(&self) -> dumpd::store::Retention {
        dumpd::store::Retention { max_per_vm: self.keep_per_vm, max_total_bytes: self.keep_bytes }
    }

    /// The fleet's store, if `--crash-store` is given: configured from the environment.
    pub fn fleet(&self) -> anyhow::Result<Option<FleetConfig>> {
        let Some(url) = &self.crash_store else { return Ok(None) };
        let host = match &self.host_id {
            Some(host) => {
                fleet::validate_host_id(host).map_err(anyhow::Error::msg)?;
                host.clone()
            }
            None => fleet::default_host_id().map_err(anyhow::Error::msg)?,
        };
        let bucket = fleet::FleetBucket::from_env(url, &host)?;
        Ok(Some(FleetConfig {
            bucket: Arc::new(bucket),
            keep_local: self.keep_local,
            spool_limit: self.spool_bytes,
            retention: self.retention(),
            cache_bytes: self.store_cache_bytes.unwrap_or(crate::remote::DEFAULT_CACHE_BYTES),
        }))
    }

    /// Refuses a configuration that would expose VMs to the network without a token.
    pub fn check_exposure(&self) -> anyhow::Result<()> {
        if self.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            bail!("the token is empty; give a real one with --token or CRASHVISOR_TOKEN");
        }
        if !self.addr.ip().is_loopback() && self.token.is_none() {
            bail!(
                "refusing to listen on {} without a token: anyone who can reach it could start VMs and read \
                 their memory. Set --token (or CRASHVISOR_TOKEN), or listen on 127.0.0.1",
                self.addr
            );
        }
        Ok(())
    }
}

/// Runs the service until SIGTERM or SIGINT.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // First: a SIGTERM that comes while the service starts stops it in order once it runs,
    // rather than killing it with the signal's default action.
    let mut signals = ShutdownSignals::install();
    args.check_exposure()?;
    let host = Host::detect()?;
    let limits = args.limits(host)?;
    let crash_dir = args.crash_dir.clone().unwrap_or_else(dumpd::default_crash_dir);
    let state_path = args.state_dir.clone().unwrap_or_else(default_state_dir);
    let state_dir = StateDir::open(&state_path)?;
    let (run_dir, own_run_dir) = match &args.run_dir {
        Some(dir) => (dir.clone(), false),
        // The last service's own run directory still holds the sockets of the VMs it left.
        None => match state_dir.run_dir().filter(|dir| dir.is_dir()) {
            Some(dir) => (dir, true),
            None => (std::env::temp_dir().join(format!("crashvisor-{}", std::process::id())), true),
        },
    };
    if run_dir.as_os_str().len() > MAX_RUN_DIR_LEN {
        bail!("the run directory {} is too long for unix socket paths; use a shorter --run-dir", run_dir.display());
    }
    create_private_dir(&run_dir)?;
    state_dir.set_run_dir(own_run_dir.then_some(run_dir.as_path()))?;
    let exe = std::env::current_exe().context("cannot find this binary to run VMMs with")?;
    let fleet = args.fleet()?;
    let config = ServiceConfig {
        crash_dir: crash_dir.clone(),
        run_dir: run_dir.clone(),
        exe,
        token: args.token.clone(),
        limits,
        retention: args.retention(),
        fleet,
    };
    // Listening first: a service that cannot serve does not touch the VMs it would adopt.
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {} (is another crashvisor running? use --addr)", args.addr))?;
    let state = AppState::new(config, state_dir)
        .with_context(|| format!("cannot open the crash store {}", crash_dir.display()))?;
    // The upload queue resumes with the spool as a killed service left it (its journals say
    // how far each crash got), alongside the adoption of the VMs, whose new crashes it ships too.
    crate::remote::start(&state).context("cannot start the upload queue")?;
    if let Some(fleet) = state.fleet() {
        tracing::info!("crashes are shipped to {} as host {}", fleet.bucket().url(), fleet.host());
    }
    let vmcores = state.store().list().map(|l| l.len()).unwrap_or(0);
    let addr = listener.local_addr().unwrap_or(args.addr);
    tracing::info!("limits: {limits}");
    tracing::info!("crash store {} holds {vmcores} vmcores", crash_dir.display());
    // On stdout, for people and for scripts that started it on port 0.
    println!("crashvisor listening on http://{addr}");

    let (stop_accepting, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, crate::app(state.clone())).with_graceful_shutdown(async {
        let _ = stopped.await;
    });
    let mut server = tokio::spawn(async move { server.await });
    tokio::select! {
        result = &mut server => {
            result.context("the server task failed")?.context("the server failed")?;
        }
        signal = signals.recv() => {
            tracing::info!("{signal}: shutting down");
            let _ = stop_accepting.send(());
            if args.detach_on_exit {
                let running = state.supervisor().list().len();
                tracing::info!("leaving {running} VMs to the next service on {}", state_path.display());
            } else {
                state.supervisor().shutdown().await;
            }
            if tokio::time::timeout(CLOSE_GRACE, &mut server).await.is_err() {
                tracing::info!("closing the connections still open");
                server.abort();
            }
        }
    }
    // A detached service's VMs keep their control sockets there; the next service uses it.
    if own_run_dir && !args.detach_on_exit {
        let _ = std::fs::remove_dir_all(&run_dir);
        state.supervisor().state_dir().set_run_dir(None)?;
    }
    Ok(())
}

/// `$XDG_STATE_HOME/crashvisor`, else `~/.local/state/crashvisor`, else `./crashvisor-state`.
fn default_state_dir() -> PathBuf {
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(state).join("crashvisor");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/crashvisor"),
        None => PathBuf::from("crashvisor-state"),
    }
}

fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the run directory {}", dir.display()))
}

/// SIGTERM and SIGINT, caught from the moment they are installed (a signal that comes before
/// anyone waits for it is kept).
struct ShutdownSignals(Option<(Signal, Signal)>);

impl ShutdownSignals {
    fn install() -> Self {
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(term), Ok(int)) => Self(Some((term, int))),
            _ => {
                tracing::error!("cannot install signal handlers; stop the service with SIGKILL");
                Self(None)
            }
        }
    }

    /// Waits for SIGTERM or SIGINT and names it.
    async fn recv(&mut self) -> &'static str {
        let Some((term, int)) = &mut self.0 else { return std::future::pending().await };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn args(argv: &[&str]) -> ServeArgs {
        Cli::parse_from(std::iter::once("serve").chain(argv.iter().copied())).serve
    }

    #[test]
    fn beyond_loopback_needs_a_token() {
        assert!(args(&[]).check_exposure().is_ok());
        assert!(args(&["--addr", "[::1]:80"]).check_exposure().is_ok());
        let open = args(&["--addr", "0.0.0.0:8080"]).check_exposure().unwrap_err().to_string();
        assert!(open.contains("without a token"), "{open}");
        assert!(args(&["--addr", "0.0.0.0:8080", "--token", "s3cret"]).check_exposure().is_ok());
        assert!(args(&["--token", " "]).check_exposure().is_err());
    }

    #[test]
    fn limit_options_apply() {
        let host = Host { cpus: 4, memory_mib: 8192 };
        let limits = args(&["--max-vms", "3", "--max-total-memory-mib", "1024"]).limits(host).unwrap();
        assert_eq!((limits.max_vms, limits.max_total_memory_mib, limits.max_memory_mib_per_vm), (3, 1024, 1024));
        assert!(args(&["--max-vcpus", "17"]).limits(host).is_err());
        let retention = args(&["--keep-per-vm", "3", "--keep-bytes", "1G"]).retention();
        assert_eq!((retention.max_per_vm, retention.max_total_bytes), (Some(3), Some(1 << 30)));
        assert!(args(&["--max-total-memory-mib", "9000"]).limits(host).is_err());
    }

    #[test]
    fn crash_store_options() {
        assert!(args(&[]).fleet().unwrap().is_none());
        let url = "s3://crashes/fleet";
        let fleet = args(&["--crash-store", url, "--host-id", "h1", "--keep-local", "--spool-bytes", "2G"])
            .fleet()
            .unwrap()
            .unwrap();
        assert_eq!((fleet.bucket.host(), fleet.bucket.url().to_string().as_str()), ("h1", url));
        assert_eq!((fleet.keep_local, fleet.spool_limit), (true, Some(2 << 30)));
        let e = args(&["--crash-store", url, "--host-id", "a/b"]).fleet().unwrap_err().to_string();
        assert!(e.contains("invalid host id"), "{e}");
        // The store's options need the store; a bad URL says what a good one is.
        assert!(Cli::try_parse_from(["serve", "--keep-local"]).is_err());
        let e = Cli::try_parse_from(["serve", "--crash-store", "/tmp/x"]).err().unwrap().to_string();
        assert!(e.contains("s3://BUCKET/PREFIX"), "{e}");
    }
}
