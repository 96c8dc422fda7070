//! The upload queue: ships every crash committed in the spool to the fleet's store, oldest
//! first, and never loses one.
//!
//! For each crash: SHA-256 of each file (recorded in its journal and its `meta.json`), each file
//! sent (multipart above the part size, resumable from the journal), each object read back and
//! checked against its checksum (one that differs is sent again), then `meta.json` last: the
//! commit marker that makes the crash visible in the store. Then retention on this host's prefix,
//! and the local copy removed unless `keep_local`. A failure is retried with exponential backoff,
//! reported through [`UploadObserver::retrying`]; the spool's size limit is never enforced by
//! dropping a crash that is waiting: it is reported, loudly.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dumpd::store::{select, Candidate, CrashMeta, CrashStore, Retention, FILE_META};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::Notify;

use crate::journal::{FileEntry, FileUpload, Journal, Journals, Stage};
use crate::{checksum, FleetBucket, FleetError};

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
            let look = match self.look().await {
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

    /// The spool's status now.
    pub async fn status(&self) -> Result<SpoolStatus, FleetError> {
        Ok(self.status_of(&self.look().await?))
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

    /// The spool's crashes, oldest first, with whether each is done; drops journals of crashes
    /// no longer there, and removes kept copies (oldest first) while the spool is over its limit.
    async fn look(&self) -> Result<Look, FleetError> {
        let spool = self.spool.clone();
        let journals = self.journals.clone();
        let limit = self.config.spool_limit;
        blocking(move || {
            let entries = spool.list()?;
            for id in journals.ids()? {
                if !entries.iter().any(|e| e.id == id) {
                    journals.remove(&id)?;
                }
            }
            let mut queue = Vec::with_capacity(entries.len());
            for entry in &entries {
                let done = journals.load(&entry.id)?.is_some_and(|j| j.is_done());
                queue.push(Queued {
                    id: entry.id.clone(),
                    vm: entry.vm().unwrap_or("unknown").to_owned(),
                    ready_unix_ms: entry.meta.as_ref().map(ready_unix_ms),
                    bytes: entry.disk_bytes()?,
                    done,
                });
            }
            let in_flight = spool.in_flight_bytes()?;
            if let Some(limit) = limit {
                let mut total = in_flight + queue.iter().map(|q| q.bytes).sum::<u64>();
                let mut evicted = Vec::new();
                for q in queue.iter().filter(|q| q.done) {
                    if total <= limit {
                        break;
                    }
                    spool.delete(&q.id)?;
                    journals.remove(&q.id)?;
                    tracing::info!(
                        id = q.id,
                        "removed the local copy of an uploaded crash: the spool is over its limit"
                    );
                    total -= q.bytes;
                    evicted.push(q.id.clone());
                }
                queue.retain(|q| !evicted.contains(&q.id));
            }
            Ok(Look { queue, in_flight })
        })
        .await
    }

    /// Sends crash `id`'s files to the store without committing it: checksums, journal, every
    /// file not yet sent. What [`Uploader::ship`] does first; a later `ship` resumes from here.
    pub async fn stage(&self, id: &str) -> Result<(Journal, CrashMeta), FleetError> {
        let dir = self.spool.dir().join(id);
        if id.starts_with('.') || id.contains('/') || !dir.is_dir() {
            return Err(FleetError::NotFound(format!("{id} in the spool")));
        }
        let meta_path = dir.join(FILE_META);
        let meta: CrashMeta =
            tokio::fs::read(&meta_path).await.map_err(FleetError::local("read", &meta_path)).and_then(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| FleetError::Meta {
                    what: format!("{} cannot be read", meta_path.display()),
                    detail: e.to_string(),
                })
            })?;
        let journals = self.journals.clone();
        let loaded = {
            let id = id.to_owned();
            blocking(move || journals.load(&id)).await?
        };
        let files = {
            let dir = dir.clone();
            blocking(move || local_files(&dir)).await?
        };
        let mut journal = match loaded {
            Some(journal) if same_files(&journal, &files) => journal,
            _ => self.new_journal(id, &dir, &files).await?,
        };
        let meta = self.record_checksums(&dir, meta, &journal).await?;
        if !journal.is_done() {
            let names: Vec<String> = journal.files.keys().cloned().collect();
            for name in names {
                if journal.files[&name].upload != FileUpload::Sent {
                    self.send_file(&dir, &mut journal, &name).await?;
                }
            }
        }
        Ok((journal, meta))
    }

    /// Ships crash `id`: [`Uploader::stage`], then every object read back and checked (sent
    /// again if it differs), then `meta.json`, then retention in the store, then the local copy
    /// removed unless `keep_local`.
    pub async fn ship(&self, id: &str) -> Result<Uploaded, FleetError> {
        let started = Instant::now();
        let (mut journal, meta) = self.stage(id).await?;
        let dir = self.spool.dir().join(id);
        let host = self.bucket.host().to_owned();
        let mut resent = Vec::new();
        if !journal.is_done() {
            let names: Vec<String> = journal.files.keys().cloned().collect();
            for name in names {
                if let Err(mismatch) = self.verify(&journal, &name).await {
                    tracing::warn!(id, "sending {name} again: {mismatch}");
                    self.send_file(&dir, &mut journal, &name).await?;
                    self.verify(&journal, &name).await?;
                    resent.push(name);
                }
            }
            let mut json = serde_json::to_vec_pretty(&meta)
                .map_err(|e| FleetError::Meta { what: format!("meta.json of {id}"), detail: e.to_string() })?;
            json.push(b'\n');
            self.bucket.put(&self.bucket.key(&host, &journal.remote_id, FILE_META), Bytes::from(json)).await?;
            let url = self.bucket.crash_url(&host, &journal.remote_id);
            journal.stage = Stage::Done { url, uploaded_unix_ms: unix_ms(SystemTime::now()) };
            self.save(&journal).await?;
        }
        let Stage::Done { url, uploaded_unix_ms } = journal.stage.clone() else {
            return Err(FleetError::NotFound(format!("{id}'s upload journal")));
        };
        let pruned = match self.prune_store(&journal.remote_id).await {
            Ok(pruned) => pruned,
            Err(e) => {
                tracing::warn!("retention in the crash store failed (the upload stands): {e}");
                Vec::new()
            }
        };
        if !self.config.keep_local {
            let spool = self.spool.clone();
            let journals = self.journals.clone();
            let id = id.to_owned();
            blocking(move || {
                spool.delete(&id)?;
                journals.remove(&id)
            })
            .await?;
        }
        let meta_bytes = serde_json::to_vec_pretty(&meta).map_or(0, |j| j.len() as u64 + 1);
        Ok(Uploaded {
            id: id.to_owned(),
            remote_id: journal.remote_id.clone(),
            vm: meta.vm.clone(),
            url,
            bytes: journal.files.values().map(|f| f.size).sum::<u64>() + meta_bytes,
            lag: Some(Duration::from_millis(uploaded_unix_ms.saturating_sub(ready_unix_ms(&meta)))),
            took: started.elapsed(),
            resent,
            pruned,
        })
    }

    async fn save(&self, journal: &Journal) -> Result<(), FleetError> {
        let journals = self.journals.clone();
        let journal = journal.clone();
        blocking(move || journals.save(&journal)).await
    }

    /// A journal for crash `id` with its files' checksums and a free id in the store.
    async fn new_journal(&self, id: &str, dir: &Path, files: &[(String, u64)]) -> Result<Journal, FleetError> {
        let mut entries = BTreeMap::new();
        for (name, _) in files {
            let path = dir.join(name);
            let (sha256, size) = blocking(move || checksum::file_sha256(&path)).await?;
            entries.insert(name.clone(), FileEntry { size, sha256, upload: FileUpload::Pending });
        }
        let remote_id = self.free_remote_id(id).await?;
        let journal = Journal { id: id.to_owned(), remote_id, files: entries, stage: Stage::Sending };
        self.save(&journal).await?;
        Ok(journal)
    }

    /// `id`, or `id-N` if the store already holds a committed crash `id` of this host (a crash
    /// of the same VM in the same second, after the first left the spool).
    async fn free_remote_id(&self, id: &str) -> Result<String, FleetError> {
        let host = self.bucket.host();
        for n in 0..=MAX_REMOTE_SUFFIX {
            let candidate = if n == 0 { id.to_owned() } else { format!("{id}-{n}") };
            if self.bucket.len(&self.bucket.key(host, &candidate, FILE_META)).await?.is_none() {
                return Ok(candidate);
            }
        }
        Err(FleetError::Meta { what: format!("crash {id}"), detail: "no free id in the crash store".into() })
    }

    /// `meta` with the journal's checksums, written back to the spool's `meta.json` (replaced
    /// atomically) if it did not have them.
    async fn record_checksums(
        &self,
        dir: &Path,
        mut meta: CrashMeta,
        journal: &Journal,
    ) -> Result<CrashMeta, FleetError> {
        let checksums: BTreeMap<String, String> =
            journal.files.iter().map(|(name, f)| (name.clone(), f.sha256.clone())).collect();
        if meta.checksums.as_ref() == Some(&checksums) {
            return Ok(meta);
        }
        meta.checksums = Some(checksums);
        let mut json = serde_json::to_vec_pretty(&meta)
            .map_err(|e| FleetError::Meta { what: format!("meta.json of {}", journal.id), detail: e.to_string() })?;
        json.push(b'\n');
        let dir = dir.to_path_buf();
        blocking(move || {
            let tmp = dir.join(".meta.json.tmp");
            let path = dir.join(FILE_META);
            std::fs::write(&tmp, &json)
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .map_err(FleetError::local("write", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(FleetError::local("replace", &path))?;
            std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(FleetError::local("sync", &dir))
        })
        .await?;
        Ok(meta)
    }

    /// Sends file `name` of the crash in `dir`: in one request, or in parts resumed from the
    /// journal. Marks it sent in the journal.
    async fn send_file(&self, dir: &Path, journal: &mut Journal, name: &str) -> Result<(), FleetError> {
        let path = dir.join(name);
        let key = self.bucket.key(self.bucket.host(), &journal.remote_id, name);
        let entry =
            journal.files.get(name).cloned().ok_or_else(|| FleetError::NotFound(format!("{name} in the journal")))?;
        if entry.size <= self.config.part_size {
            let bytes = tokio::fs::read(&path).await.map_err(FleetError::local("read", &path))?;
            self.bucket.put(&key, Bytes::from(bytes)).await?;
        } else {
            let (upload_id, part_size, mut parts) = match entry.upload {
                FileUpload::Multipart { upload_id, part_size, parts } => {
                    tracing::info!(key = %key, "resuming multipart upload {upload_id} after part {}", parts.len());
                    (upload_id, part_size, parts)
                }
                FileUpload::Pending | FileUpload::Sent => {
                    let upload_id = self.bucket.create_multipart(&key).await?;
                    (upload_id, self.config.part_size, Vec::new())
                }
            };
            let set = |journal: &mut Journal, upload: FileUpload| {
                if let Some(file) = journal.files.get_mut(name) {
                    file.upload = upload;
                }
            };
            set(journal, FileUpload::Multipart { upload_id: upload_id.clone(), part_size, parts: parts.clone() });
            self.save(journal).await?;
            let count = entry.size.div_ceil(part_size);
            let mut file = tokio::fs::File::open(&path).await.map_err(FleetError::local("open", &path))?;
            let result: Result<(), FleetError> = async {
                for index in parts.len() as u64..count {
                    let start = index * part_size;
                    let len = part_size.min(entry.size - start);
                    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
                    file.seek(std::io::SeekFrom::Start(start)).await.map_err(FleetError::local("seek", &path))?;
                    file.read_exact(&mut buf).await.map_err(FleetError::local("read", &path))?;
                    let part = self.bucket.put_part(&key, &upload_id, index as usize, Bytes::from(buf)).await?;
                    parts.push(part);
                    set(
                        journal,
                        FileUpload::Multipart { upload_id: upload_id.clone(), part_size, parts: parts.clone() },
                    );
                    self.save(journal).await?;
                }
                self.bucket.complete_multipart(&key, &upload_id, &parts).await
            }
            .await;
            if let Err(e) = result {
                if upload_is_gone(&e) {
                    // The store no longer knows this upload: the next attempt starts it over.
                    tracing::warn!(key = %key, "the store forgot multipart upload {upload_id}; starting over: {e}");
                    let _ = self.bucket.abort_multipart(&key, &upload_id).await;
                    set(journal, FileUpload::Pending);
                    self.save(journal).await?;
                }
                return Err(e);
            }
        }
        if let Some(file) = journal.files.get_mut(name) {
            file.upload = FileUpload::Sent;
        }
        self.save(journal).await
    }

    /// Reads file `name`'s object back and compares it with the journal's checksum.
    async fn verify(&self, journal: &Journal, name: &str) -> Result<(), FleetError> {
        let key = self.bucket.key(self.bucket.host(), &journal.remote_id, name);
        let entry = &journal.files[name];
        let (found, found_len) = match self.bucket.sha256(&key).await {
            Ok(found) => found,
            Err(FleetError::Store { source: object_store::Error::NotFound { .. }, .. }) => ("none".into(), 0),
            Err(e) => return Err(e),
        };
        if found == entry.sha256 && found_len == entry.size {
            return Ok(());
        }
        Err(FleetError::Checksum {
            key: key.to_string(),
            expected: entry.sha256.clone(),
            expected_len: entry.size,
            found,
            found_len,
        })
    }

    /// Retention on this host's prefix in the store, never removing `keep`: the ids removed.
    async fn prune_store(&self, keep: &str) -> Result<Vec<String>, FleetError> {
        let retention = &self.config.retention;
        if retention.max_per_vm.is_none() && retention.max_total_bytes.is_none() {
            return Ok(Vec::new());
        }
        let host = self.bucket.host();
        let crashes = self.bucket.list(Some(host)).await?;
        let candidates: Vec<Candidate<'_>> = crashes
            .iter()
            .map(|c| Candidate { id: &c.id, vm: c.meta.as_ref().map(|m| m.vm.as_str()), bytes: c.bytes })
            .collect();
        let doomed = select(&candidates, retention, Some(keep));
        let mut pruned = Vec::new();
        for (crash, _) in crashes.iter().zip(doomed).filter(|(_, d)| *d) {
            self.bucket.delete(host, &crash.id).await?;
            tracing::info!(id = crash.id, "retention removed a crash from the store");
            pruned.push(crash.id.clone());
        }
        Ok(pruned)
    }
}

/// Whether a multipart upload failed because the store no longer knows it (not a passing fault).
fn upload_is_gone(error: &FleetError) -> bool {
    matches!(
        error,
        FleetError::Store {
            source: object_store::Error::NotFound { .. } | object_store::Error::PermissionDenied { .. },
            ..
        }
    )
}

/// The crash directory's files but `meta.json` and hidden ones, with their lengths.
fn local_files(dir: &Path) -> Result<Vec<(String, u64)>, FleetError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(FleetError::local("read", dir))? {
        let entry = entry.map_err(FleetError::local("read", dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        let meta = entry.metadata().map_err(FleetError::local("stat", &entry.path()))?;
        if name == FILE_META || name.starts_with('.') || !meta.is_file() {
            continue;
        }
        files.push((name, meta.len()));
    }
    files.sort();
    Ok(files)
}

/// Whether `journal` describes exactly `files` (names and lengths).
fn same_files(journal: &Journal, files: &[(String, u64)]) -> bool {
    journal.files.len() == files.len()
        && files.iter().all(|(name, len)| journal.files.get(name).is_some_and(|f| f.size == *len))
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
