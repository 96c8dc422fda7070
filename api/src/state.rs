//! `AppState`: what every handler can reach — the supervisor, the crash store, the event bus,
//! the metrics and the auth token. Cheap to clone.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use dumpd::store::CrashStore;

use crate::analysis::Symbols;
use crate::events::EventBus;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::remote::{Fleet, FleetConfig};
use crate::supervisor::record::StateDir;
use crate::supervisor::vm::Services;
use crate::supervisor::{Paths, Supervisor};

/// How the service is set up.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// The crash store.
    pub crash_dir: PathBuf,
    /// Where the VMs' control sockets go.
    pub run_dir: PathBuf,
    /// The binary that runs VMMs (`<exe> vmm ...`).
    pub exe: PathBuf,
    /// The bearer token every request must carry, if any.
    pub token: Option<String>,
    /// The limits.
    pub limits: Limits,
    /// What the crash store keeps (`--keep-per-vm`, `--keep-bytes`); every VMM prunes by it.
    /// With a fleet store the VMMs prune nothing (the spool drains by uploads) and the fleet's
    /// own retention applies to this host's prefix in the store.
    pub retention: dumpd::store::Retention,
    /// The fleet's crash store (`--crash-store`), if any: the crash directory is then its spool.
    pub fleet: Option<FleetConfig>,
}

struct Inner {
    supervisor: Supervisor,
    store: CrashStore,
    bus: Arc<EventBus>,
    metrics: Arc<Metrics>,
    token: Option<String>,
    started: Instant,
    symbols: Symbols,
    cache_dir: PathBuf,
    fleet: Option<Fleet>,
}

/// The shared state of the service.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    /// Opens (creates) the crash store (the spool, with a fleet store) and sets up the
    /// supervisor with the VMs of the state directory (their VMMs are adopted again in the
    /// background).
    pub fn new(config: ServiceConfig, state_dir: StateDir) -> Result<Self, fleet::FleetError> {
        let store = CrashStore::open(&config.crash_dir)?;
        let bus = Arc::new(EventBus::resuming(state_dir.event_seq(), Box::new(state_dir.reserve_event_seq())));
        let metrics = Arc::new(Metrics::default());
        let symbols = Symbols::new(config.run_dir.join("guest-kernel.elf"));
        let cache_dir = config.run_dir.join("cache");
        let fleet = match config.fleet {
            Some(fleet) => Some(Fleet::new(fleet, &store, cache_dir.join("store"))?),
            None => None,
        };
        // With a fleet store the spool must drain by uploads only.
        let retention = if fleet.is_some() { dumpd::store::Retention::default() } else { config.retention };
        let paths = Paths { exe: config.exe, run_dir: config.run_dir, crash_dir: config.crash_dir, retention };
        let services = Services { bus: bus.clone(), metrics: metrics.clone(), store: store.clone() };
        let supervisor = Supervisor::open(paths, config.limits, services, state_dir);
        let started = Instant::now();
        Ok(Self(Arc::new(Inner {
            supervisor,
            store,
            bus,
            metrics,
            token: config.token,
            started,
            symbols,
            cache_dir,
            fleet,
        })))
    }

    /// The VMs.
    pub fn supervisor(&self) -> &Supervisor {
        &self.0.supervisor
    }

    /// The crash store.
    pub fn store(&self) -> &CrashStore {
        &self.0.store
    }

    /// The event bus.
    pub fn bus(&self) -> &EventBus {
        &self.0.bus
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// The event bus, shared.
    pub fn bus_arc(&self) -> Arc<EventBus> {
        self.0.bus.clone()
    }

    /// The metrics, shared.
    pub fn metrics_arc(&self) -> Arc<Metrics> {
        self.0.metrics.clone()
    }

    /// The fleet's crash store, if the service ships crashes to one.
    pub fn fleet(&self) -> Option<&Fleet> {
        self.0.fleet.as_ref()
    }

    /// The bearer token, if one is required.
    pub fn token(&self) -> Option<&str> {
        self.0.token.as_deref()
    }

    /// The guest kernel's symbols, for backtraces.
    pub fn symbols(&self) -> &Symbols {
        &self.0.symbols
    }

    /// Where converted vmcores are cached (in the run directory, gone with the service).
    pub fn cache_dir(&self) -> &std::path::Path {
        &self.0.cache_dir
    }

    /// When the service started.
    pub fn started(&self) -> Instant {
        self.0.started
    }
}
