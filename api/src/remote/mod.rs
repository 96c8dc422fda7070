//! The service's side of the fleet's crash store (`--crash-store`): the upload queue running in
//! the service with its events and metrics, where a vmcore id points (the spool or the store),
//! and the local cache of stored vmcores that analysis reads.
//!
//! Ids: a crash of this host is named by its id alone (`web-1-2024-02-29-12:34:56`), another
//! host's by `ID@HOST`; `ID@THIS-HOST` works too.

mod cache;
mod observer;

use std::path::PathBuf;
use std::sync::Arc;

use dumpd::store::{CrashStore, Retention};
use fleet::journal::{Journals, Stage};
use fleet::{FleetBucket, FleetError, Uploader, UploaderConfig};
use tokio::sync::Notify;

pub use cache::StoreCache;

use crate::error::ApiError;
use crate::state::AppState;

/// The default bound of the cache of stored vmcores.
pub const DEFAULT_CACHE_BYTES: u64 = 4 << 30;

/// How the service ships and reads crashes in the fleet's store.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// The store, as this host.
    pub bucket: Arc<FleetBucket>,
    /// Keep local copies of uploaded crashes.
    pub keep_local: bool,
    /// The spool's size limit.
    pub spool_limit: Option<u64>,
    /// Retention on this host's prefix in the store.
    pub retention: Retention,
    /// The bound of the local cache of stored vmcores.
    pub cache_bytes: u64,
}

/// The fleet's store as the service holds it.
pub struct Fleet {
    config: FleetConfig,
    journals: Journals,
    cache: StoreCache,
    kick: Arc<Notify>,
}

/// Where a vmcore id points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located {
    /// A crash directory of this host's spool (or crash store, without `--crash-store`) not
    /// committed in the fleet's store.
    Spool(PathBuf),
    /// A crash committed in the fleet's store, and its local copy if this host kept one.
    Store {
        /// Its host.
        host: String,
        /// Its id there.
        id: String,
        /// The local copy.
        local: Option<PathBuf>,
    },
}

impl Fleet {
    /// The store set up for the spool `spool`, its cache in `cache_dir`.
    pub fn new(config: FleetConfig, spool: &CrashStore, cache_dir: PathBuf) -> Result<Self, FleetError> {
        let journals = Journals::open(spool.dir())?;
        let cache = StoreCache::new(cache_dir, config.cache_bytes);
        Ok(Self { config, journals, cache, kick: Arc::new(Notify::new()) })
    }

    /// The bucket.
    pub fn bucket(&self) -> &FleetBucket {
        &self.config.bucket
    }

    /// This host's id.
    pub fn host(&self) -> &str {
        self.config.bucket.host()
    }

    /// The cache of stored vmcores.
    pub fn cache(&self) -> &StoreCache {
        &self.cache
    }

    /// The id of a crash of this host's spool in the store, if it is committed there.
    pub fn uploaded_as(&self, id: &str) -> Option<String> {
        match self.journals.load(id) {
            Ok(Some(journal)) if matches!(journal.stage, Stage::Done { .. }) => Some(journal.remote_id),
            _ => None,
        }
    }

    /// Forgets the upload journal of spool crash `id` (deleted).
    pub fn forget(&self, id: &str) -> Result<(), FleetError> {
        self.journals.remove(id)
    }

    /// Makes the upload queue look at the spool now.
    pub fn kick(&self) {
        self.kick.notify_one();
    }
}

/// Starts the upload queue of `state`'s spool, if it has a fleet store: it runs until the
/// service ends, and every `vmcore_ready` makes it look at the spool at once.
pub fn start(state: &AppState) -> Result<(), FleetError> {
    let Some(fleet) = state.fleet() else { return Ok(()) };
    let config = UploaderConfig {
        keep_local: fleet.config.keep_local,
        spool_limit: fleet.config.spool_limit,
        retention: fleet.config.retention,
        ..UploaderConfig::default()
    };
    let observer = Arc::new(observer::ServiceObserver::new(state));
    let uploader = Uploader::new(fleet.config.bucket.clone(), state.store().clone(), config, observer)?;
    let queue_kick = uploader.kicker();
    tokio::spawn(async move { uploader.run().await });
    let own_kick = fleet.kick.clone();
    tokio::spawn({
        let queue_kick = queue_kick.clone();
        async move {
            loop {
                own_kick.notified().await;
                queue_kick.notify_one();
            }
        }
    });
    let mut events = state.bus().subscribe(None).live;
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) if event.event == "vmcore_ready" => queue_kick.notify_one(),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    Ok(())
}

/// A store failure as an API error: 404 for a missing object, 503 when the store cannot be
/// reached or answers wrongly.
pub fn store_error(error: FleetError) -> ApiError {
    match error {
        FleetError::NotFound(what) => ApiError::not_found(format!("no {what}; GET /v1/vmcores lists them")),
        FleetError::Store { source: object_store::Error::NotFound { .. }, key, .. } => {
            ApiError::not_found(format!("{key} is not in the crash store"))
        }
        FleetError::Local { .. } | FleetError::Spool(_) => ApiError::internal(error),
        other => ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("{other}; crashes still in this host's spool are served meanwhile"),
        ),
    }
}
