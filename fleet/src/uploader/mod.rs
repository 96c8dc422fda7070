//! The upload queue: ships every crash committed in the spool to the fleet's store, oldest
//! first, and never loses one.
//!
//! For each crash: SHA-256 of each file (recorded in its journal and its `meta.json`), each file
//! sent (multipart above the part size, resumable from the journal), each object read back and
//! checked against its checksum (one that differs is sent again), then `meta.json` last: the
//! commit marker that makes the crash visible in the store. Then retention on this host's prefix,
//! and the local copy removed unless `keep_local`. A failure is retried with exponential backoff,
//! reported through [`UploadObserver::retrying`]; the spool's size limit is never enforced by
//! dropping a crash that is waiting: it is reported, loudly. This file is the queue; `ship.rs`
//! ships one crash.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dumpd::store::{CrashMeta, CrashStore, Retention};
use tokio::sync::Notify;

use crate::journal::Journals;
use crate::{FleetBucket, FleetError};

mod ship;

/// Most `-N` suffixes tried for a crash id the store already holds.
const MAX_REMOTE_SUFFIX: u32 = 1000;

/// Retry delays: `first`, doubling per failed attempt of the same crash, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// After the first failure.
    pub first: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay after failed attempt `attempt` (from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        self.first.saturating_mul(1 << doublings).min(self.max)
    }
}

/// How the uploader works.
#[derive(Debug, Clone)]
pub struct UploaderConfig {
    /// Keep the local copy of a crash after it is committed in the store (it is then removed
    /// only to bring the spool under `spool_limit`).
    pub keep_local: bool,
    /// The spool's size limit (disk space of its crashes), if any.
    pub spool_limit: Option<u64>,
    /// Retention on this host's prefix in the store.
    pub retention: Retention,
    /// Retry delays.
    pub backoff: Backoff,
    /// How often the spool is looked at without a [`Uploader::kicker`] notification.
    pub poll: Duration,
    /// Files larger than this are sent in parts of this size (at least 5 MiB, S3's minimum).
    pub part_size: u64,
}

impl Default for UploaderConfig {
    fn default() -> Self {
        Self {
            keep_local: false,
            spool_limit: None,
            retention: Retention::default(),
            backoff: Backoff { first: Duration::from_secs(1), max: Duration::from_secs(15) },
            poll: Duration::from_secs(2),
            part_size: 16 << 20,
        }
    }
}

/// A crash committed in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Uploaded {
    /// Its id in the spool.
    pub id: String,
    /// Its id in the store.
    pub remote_id: String,
    /// Its VM.
    pub vm: String,
    /// `s3://BUCKET/PREFIX/HOST/ID/`.
    pub url: String,
    /// Bytes of its files, `meta.json` included.
    pub bytes: u64,
    /// From `vmcore_ready` (its directory committed in the spool) to committed in the store.
    pub lag: Option<Duration>,
    /// This upload's duration, verification included.
    pub took: Duration,
    /// Files found altered in the store and sent again.
    pub resent: Vec<String>,
    /// Crashes of this host that retention removed from the store.
    pub pruned: Vec<String>,
}

/// An upload failed and will be tried again.
#[derive(Debug, Clone, PartialEq)]
pub struct Retrying {
    /// The crash's id in the spool.
    pub id: String,
    /// Its VM.
    pub vm: String,
    /// Failed attempts so far.
    pub attempt: u32,
    /// Why it failed.
    pub error: String,
    /// When the next attempt is.
    pub retry_in: Duration,
}

/// The spool as the queue sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpoolStatus {
    /// Disk space of every crash in it (waiting or kept), and of crashes being written.
    pub bytes: u64,
    /// Crashes waiting to be committed in the store.
    pub waiting: usize,
    /// How long the oldest waiting crash has waited since its `vmcore_ready`.
    pub oldest_waiting: Option<Duration>,
    /// The size limit.
    pub limit: Option<u64>,
    /// Over the limit with only crashes that must not be dropped.
    pub full: bool,
}

/// What the service (events, metrics) learns from the queue. Everything is also logged.
pub trait UploadObserver: Send + Sync {
    /// A crash was committed in the store.
    fn uploaded(&self, _uploaded: &Uploaded) {}
    /// An upload failed and will be retried.
    fn retrying(&self, _retrying: &Retrying) {}
    /// The spool after each look at it.
    fn spool(&self, _status: &SpoolStatus) {}
    /// The spool just went over its limit.
    fn spool_full(&self, _status: &SpoolStatus) {}
}

/// No observer: logs only (a VMM run on its own).
impl UploadObserver for () {}

/// A crash of the spool as one look at it found it.
struct Queued {
    id: String,
    vm: String,
    ready_unix_ms: Option<u64>,
    bytes: u64,
    done: bool,
}

/// One look at the spool.
struct Look {
    /// Its committed crashes, oldest first.
    queue: Vec<Queued>,
    /// Disk space of crashes being written (space used, not yet waiting).
    in_flight: u64,
}

/// The upload queue of one spool.
pub struct Uploader {
    bucket: Arc<FleetBucket>,
    spool: CrashStore,
    journals: Journals,
    config: UploaderConfig,
    observer: Arc<dyn UploadObserver>,
    kick: Arc<Notify>,
}

fn unix_ms(time: SystemTime) -> u64 {
    u64::try_from(time.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

/// When a crash was ready in the spool: its capture's start plus the host's write time.
fn ready_unix_ms(meta: &CrashMeta) -> u64 {
    meta.created_unix_ms.saturating_add(meta.timings.host_write_ms)
}

/// Removes the spool's copy of uploaded crash `id` and its journal (blocking). One already
/// gone is fine: another look at the spool may have removed it.
fn remove_local(spool: &CrashStore, journals: &Journals, id: &str) -> Result<(), FleetError> {
    match spool.delete(id) {
        Ok(()) | Err(dumpd::store::StoreError::NoSuchCrash(_)) => {}
        Err(e) => return Err(e.into()),
    }
    journals.remove(id)
}

/// Runs blocking `f` on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FleetError> + Send + 'static,
) -> Result<T, FleetError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(FleetError::Local {
            action: "run",
            path: "a blocking task".into(),
            source: std::io::Error::other(e.to_string()),
        })
    })
}

impl Uploader {
    /// The queue of `spool`, shipping to `bucket`.
    pub fn new(
        bucket: Arc<FleetBucket>,
        spool: CrashStore,
        config: UploaderConfig,
        observer: Arc<dyn UploadObserver>,
    ) -> Result<Self, FleetError> {
        let journals = Journals::open(spool.dir())?;
        let config = UploaderConfig { part_size: config.part_size.max(5 << 20), ..config };
        Ok(Self { bucket, spool, journals, config, observer, kick: Arc::new(Notify::new()) })
    }

    /// Notifying this makes the queue look at the spool now (a new crash is ready).
    pub fn kicker(&self) -> Arc<Notify> {
        self.kick.clone()
    }

    /// Ships crashes for ever. Waits first while another uploader ships this spool.
    pub async fn run(&self) {
        let journals = self.journals.clone();
        let _lock = loop {
            let journals = journals.clone();
            match blocking(move || journals.lock()).await {
                Ok(lock) => break lock,
                Err(e) => {
                    tracing::error!("cannot take the spool's upload lock, retrying: {e}");
                    tokio::time::sleep(self.config.poll).await;
                }
            }
        };
        tracing::info!(
            "shipping crashes from {} to {} as host {}",
            self.spool.dir().display(),
            self.bucket.url(),
            self.bucket.host()
        );
        let mut attempts: HashMap<String, (u32, Instant)> = HashMap::new();
        let mut was_full = false;
        loop {
            let look = match self.look(Tidy::Yes).await {
                Ok(look) => look,
                Err(e) => {
                    tracing::error!("cannot read the spool {}: {e}", self.spool.dir().display());
                    self.wait(self.config.poll).await;
                    continue;
                }
            };
            let status = self.status_of(&look);
            self.observer.spool(&status);
            if status.full && !was_full {
                tracing::error!(
                    "the spool {} is full: {} bytes of crashes waiting for the store, over its limit of {} bytes; \
                     no crash is dropped, but the disk fills: bring the store back or raise --spool-bytes",
                    self.spool.dir().display(),
                    status.bytes,
                    status.limit.unwrap_or(0)
                );
                self.observer.spool_full(&status);
            }
            was_full = status.full;
            let waiting: Vec<&Queued> = look.queue.iter().filter(|q| !q.done).collect();
            attempts.retain(|id, _| waiting.iter().any(|q| &q.id == id));
            let now = Instant::now();
            let due = waiting.iter().find(|q| attempts.get(&q.id).is_none_or(|(_, at)| *at <= now));
            let Some(crash) = due else {
                let next = attempts.values().map(|(_, at)| at.saturating_duration_since(now)).min();
                self.wait(next.unwrap_or(self.config.poll).min(self.config.poll)).await;
                continue;
            };
            match self.ship(&crash.id).await {
                Ok(uploaded) => {
                    attempts.remove(&crash.id);
                    tracing::info!(
                        id = uploaded.id,
                        "vmcore uploaded to {} ({} bytes in {:?}, {:?} after vmcore_ready)",
                        uploaded.url,
                        uploaded.bytes,
                        uploaded.took,
                        uploaded.lag.unwrap_or_default()
                    );
                    self.observer.uploaded(&uploaded);
                }
                Err(_) if !self.spool.dir().join(&crash.id).is_dir() => {
                    tracing::info!(id = crash.id, "crash deleted from the spool before it was uploaded");
                }
                Err(e) => {
                    let attempt = attempts.get(&crash.id).map_or(0, |(n, _)| *n) + 1;
                    let retry_in = self.config.backoff.delay(attempt);
                    attempts.insert(crash.id.clone(), (attempt, Instant::now() + retry_in));
                    tracing::warn!(id = crash.id, attempt, "upload failed, retrying in {retry_in:?}: {e}");
                    self.observer.retrying(&Retrying {
                        id: crash.id.clone(),
                        vm: crash.vm.clone(),
                        attempt,
                        error: e.to_string(),
                        retry_in,
                    });
                }
            }
        }
    }

    /// Sleeps `at_most`, or until kicked.
    async fn wait(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.kick.notified()).await;
    }

    /// The spool's status now. Only reads: the queue's own loop (which holds the spool's upload
    /// lock) is the one that removes anything.
    pub async fn status(&self) -> Result<SpoolStatus, FleetError> {
        Ok(self.status_of(&self.look(Tidy::No).await?))
    }

    fn status_of(&self, look: &Look) -> SpoolStatus {
        let now = unix_ms(SystemTime::now());
        let waiting: Vec<&Queued> = look.queue.iter().filter(|q| !q.done).collect();
        let bytes = look.in_flight + look.queue.iter().map(|q| q.bytes).sum::<u64>();
        let oldest = waiting.iter().filter_map(|q| q.ready_unix_ms).min();
        SpoolStatus {
            bytes,
            waiting: waiting.len(),
            oldest_waiting: oldest.map(|at| Duration::from_millis(now.saturating_sub(at))),
            limit: self.config.spool_limit,
            full: self.config.spool_limit.is_some_and(|limit| bytes > limit),
        }
    }

    /// The spool's crashes, oldest first, with whether each is done. With [`Tidy::Yes`] it also
    /// drops journals of crashes no longer there, and removes local copies of uploaded crashes
    /// (kept ones oldest first, while the spool is over its limit). A crash that cannot be looked
    /// at (its journal or directory unreadable) is left out with a warning: the others go on.
    async fn look(&self, tidy: Tidy) -> Result<Look, FleetError> {
        let spool = self.spool.clone();
        let journals = self.journals.clone();
        let (limit, keep_local) = (self.config.spool_limit, self.config.keep_local);
        blocking(move || {
            let entries = spool.list()?;
            if tidy == Tidy::Yes {
                for id in journals.ids()? {
                    if !entries.iter().any(|e| e.id == id) {
                        journals.remove(&id)?;
                    }
                }
            }
            let mut queue = Vec::with_capacity(entries.len());
            for entry in &entries {
                let looked = journals.load(&entry.id).and_then(|journal| Ok((journal, entry.disk_bytes()?)));
                let (journal, bytes) = match looked {
                    Ok(looked) => looked,
                    // Deleted since the listing: nothing to ship.
                    Err(_) if !spool.dir().join(&entry.id).is_dir() => continue,
                    Err(e) => {
                        tracing::warn!(id = entry.id, "skipping a crash of the spool this time: {e}");
                        continue;
                    }
                };
                queue.push(Queued {
                    id: entry.id.clone(),
                    vm: entry.vm().unwrap_or("unknown").to_owned(),
                    ready_unix_ms: entry.meta.as_ref().map(ready_unix_ms),
                    bytes,
                    done: journal.is_some_and(|j| j.is_done()),
                });
            }
            let in_flight = spool.in_flight_bytes()?;
            if tidy == Tidy::No {
                return Ok(Look { queue, in_flight });
            }
            // Local copies of uploaded crashes go: all of them unless kept (an uploader that
            // ended between the commit in the store and the removal left them), and kept ones,
            // oldest first, while the spool is over its limit.
            let mut total = in_flight + queue.iter().map(|q| q.bytes).sum::<u64>();
            let mut removed = Vec::new();
            for q in queue.iter().filter(|q| q.done) {
                let over = limit.is_some_and(|limit| total > limit);
                if keep_local && !over {
                    continue;
                }
                if let Err(e) = remove_local(&spool, &journals, &q.id) {
                    tracing::warn!(id = q.id, "cannot remove the local copy of an uploaded crash: {e}");
                    continue;
                }
                tracing::info!(id = q.id, "removed the local copy of an uploaded crash");
                total -= q.bytes;
                removed.push(q.id.clone());
            }
            queue.retain(|q| !removed.contains(&q.id));
            Ok(Look { queue, in_flight })
        })
        .await
    }
}

/// Whether a look at the spool may change it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tidy {
    Yes,
    No,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_limit() {
        let b = Backoff { first: Duration::from_millis(500), max: Duration::from_secs(5) };
        let delays: Vec<u64> = (1..=6).map(|n| b.delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 5000, 5000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(5));
    }
}
