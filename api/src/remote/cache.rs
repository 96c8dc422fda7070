//! The local cache of stored vmcores: analysis (summary, backtraces, tasks) and conversion read
//! files, so a vmcore that lives only in the fleet's store is downloaded once, checked against
//! the SHA-256 its `meta.json` records, and kept under `DIR/HOST/ID.vmcore` while the cache
//! stays within its bound (least recently used first out).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use dumpd::store::FILE_VMCORE;
use fleet::checksum::Hasher;
use fleet::{FleetBucket, FleetError};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

/// Stored vmcores cached as local files.
pub struct StoreCache {
    dir: PathBuf,
    limit: u64,
    /// One download at a time (a second request for the same vmcore then finds it cached).
    downloading: tokio::sync::Mutex<()>,
}

impl StoreCache {
    /// A cache in `dir` of at most `limit` bytes (a single larger vmcore is still cached).
    pub fn new(dir: PathBuf, limit: u64) -> Self {
        Self { dir, limit, downloading: tokio::sync::Mutex::new(()) }
    }

    /// The vmcore of crash `id` of `host` in the store, as a local file.
    pub async fn vmcore(&self, bucket: &FleetBucket, host: &str, id: &str) -> Result<PathBuf, FleetError> {
        let _one = self.downloading.lock().await;
        let dir = self.dir.join(host);
        let path = dir.join(format!("{id}.vmcore"));
        if path.is_file() {
            // Recently used: the last to be evicted.
            let _ = std::fs::File::options().write(true).open(&path).and_then(|f| f.set_modified(SystemTime::now()));
            return Ok(path);
        }
        tokio::fs::create_dir_all(&dir).await.map_err(FleetError::local("create", &dir))?;
        let key = bucket.key(host, id, FILE_VMCORE);
        let len = bucket.len(&key).await?.ok_or_else(|| FleetError::NotFound(format!("vmcore {id} of host {host}")))?;
        let tmp = dir.join(format!(".{id}.vmcore.tmp"));
        let mut file = tokio::fs::File::create(&tmp).await.map_err(FleetError::local("create", &tmp))?;
        let mut hasher = Hasher::default();
        if len > 0 {
            let mut chunks = bucket.get_range(&key, 0..len).await?;
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(FleetError::local("write", &tmp))?;
            }
        }
        file.flush().await.map_err(FleetError::local("write", &tmp))?;
        drop(file);
        let (found, found_len) = hasher.finish();
        let expected = bucket.meta(host, id).await?.and_then(|m| m.checksums.as_ref()?.get(FILE_VMCORE).cloned());
        if let Some(expected) = expected.filter(|e| *e != found) {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(FleetError::Checksum { key: key.to_string(), expected, expected_len: len, found, found_len });
        }
        tokio::fs::rename(&tmp, &path).await.map_err(FleetError::local("rename", &tmp))?;
        tracing::info!("cached {key} ({found_len} bytes) for analysis");
        let (dir, keep, limit) = (self.dir.clone(), path.clone(), self.limit);
        tokio::task::spawn_blocking(move || evict(&dir, &keep, limit)).await.ok();
        Ok(path)
    }

    /// Drops the cached vmcore of crash `id` of `host` (deleted).
    pub fn forget(&self, host: &str, id: &str) {
        let _ = std::fs::remove_file(self.dir.join(host).join(format!("{id}.vmcore")));
    }
}

/// Removes the least recently used vmcores until the cache holds at most `limit` bytes, never
/// `keep`.
fn evict(dir: &Path, keep: &Path, limit: u64) {
    let mut files: Vec<(SystemTime, u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|host| std::fs::read_dir(host.path()).into_iter().flatten().flatten())
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            let name = e.file_name();
            let cached = meta.is_file() && name.to_str().is_some_and(|n| n.ends_with(".vmcore") && !n.starts_with('.'));
            cached.then(|| (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len(), e.path()))
        })
        .collect();
    files.sort();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    for (_, len, path) in files {
        if total <= limit {
            break;
        }
        if path != keep && std::fs::remove_file(&path).is_ok() {
            tracing::info!("evicted {} from the store cache", path.display());
            total -= len;
        }
    }
}
