//! The local cache of stored vmcores: analysis (summary, backtraces, tasks) and conversion read
//! files, so a vmcore that lives only in the fleet's store is downloaded once, checked against
//! the SHA-256 its `meta.json` records, and kept under `DIR/HOST/ID.vmcore` while the cache
//! stays within its bound (least recently used first out).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
    /// One download per vmcore at a time (a second request for it then finds it cached); other
    /// vmcores, cached or not, are not held up by it.
    downloading: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

impl StoreCache {
    /// A cache in `dir` of at most `limit` bytes (a single larger vmcore is still cached).
    /// Downloads a stopped service left half done are removed.
    pub fn new(dir: PathBuf, limit: u64) -> Self {
        remove_partial_downloads(&dir);
        Self { dir, limit, downloading: Mutex::new(HashMap::new()) }
    }

    /// The vmcore of crash `id` of `host` in the store, as a local file.
    pub async fn vmcore(&self, bucket: &FleetBucket, host: &str, id: &str) -> Result<PathBuf, FleetError> {
        let dir = self.dir.join(host);
        let path = dir.join(format!("{id}.vmcore"));
        if let Some(cached) = cached(&path) {
            return Ok(cached);
        }
        let gate = self.gate(&path);
        let result = async {
            let _one = gate.lock().await;
            if let Some(cached) = cached(&path) {
                return Ok(cached); // downloaded by the request this one waited for
            }
            self.download(bucket, host, id, &path).await
        }
        .await;
        // The gate goes when no other request holds it (they take it under this same lock).
        let mut gates = self.downloading.lock().unwrap_or_else(|e| e.into_inner());
        if gates.get(&path).is_some_and(|g| Arc::ptr_eq(g, &gate) && Arc::strong_count(&gate) == 2) {
            gates.remove(&path);
        }
        result
    }

    fn gate(&self, path: &Path) -> Arc<tokio::sync::Mutex<()>> {
        self.downloading.lock().unwrap_or_else(|e| e.into_inner()).entry(path.to_owned()).or_default().clone()
    }

    async fn download(&self, bucket: &FleetBucket, host: &str, id: &str, path: &Path) -> Result<PathBuf, FleetError> {
        let dir = path.parent().unwrap_or(&self.dir);
        tokio::fs::create_dir_all(dir).await.map_err(FleetError::local("create", dir))?;
        let key = bucket.key(host, id, FILE_VMCORE);
        let len = bucket.len(&key).await?.ok_or_else(|| FleetError::NotFound(format!("vmcore {id} of host {host}")))?;
        // Removed unless renamed into place: on an error, and when the request is dropped.
        let tmp = PartialDownload(dir.join(format!(".{id}{PARTIAL_SUFFIX}")));
        let mut file = tokio::fs::File::create(&tmp.0).await.map_err(FleetError::local("create", &tmp.0))?;
        let mut hasher = Hasher::default();
        let mut chunks = bucket.get_range(&key, 0..len).await?;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(FleetError::local("write", &tmp.0))?;
        }
        file.flush().await.map_err(FleetError::local("write", &tmp.0))?;
        drop(file);
        let (found, found_len) = hasher.finish();
        let expected = bucket.meta(host, id).await?.and_then(|m| m.checksums.as_ref()?.get(FILE_VMCORE).cloned());
        if let Some(expected) = expected.filter(|e| *e != found) {
            return Err(FleetError::Checksum { key: key.to_string(), expected, expected_len: len, found, found_len });
        }
        tokio::fs::rename(&tmp.0, path).await.map_err(FleetError::local("rename", &tmp.0))?;
        tracing::info!("cached {key} ({found_len} bytes) for analysis");
        let (dir, keep, limit) = (self.dir.clone(), path.to_owned(), self.limit);
        tokio::task::spawn_blocking(move || evict(&dir, &keep, limit)).await.ok();
        Ok(path.to_owned())
    }

    /// Drops the cached vmcore of crash `id` of `host` (deleted).
    pub fn forget(&self, host: &str, id: &str) {
        let _ = std::fs::remove_file(self.dir.join(host).join(format!("{id}.vmcore")));
    }
}

/// Ends the name of a download in progress (`.ID.vmcore.part`).
const PARTIAL_SUFFIX: &str = ".vmcore.part";

/// A download's file until it is renamed into place; removed if dropped before that.
struct PartialDownload(PathBuf);

impl Drop for PartialDownload {
    fn drop(&mut self) {
        // After the rename there is nothing at this path, and NotFound is fine.
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `path` if it is cached, marked recently used (the last to be evicted).
fn cached(path: &Path) -> Option<PathBuf> {
    if !path.is_file() {
        return None;
    }
    let _ = std::fs::File::options().write(true).open(path).and_then(|f| f.set_modified(SystemTime::now()));
    Some(path.to_owned())
}

/// Removes the partial downloads under `dir` (a service stopped in the middle of one).
fn remove_partial_downloads(dir: &Path) {
    let hosts = std::fs::read_dir(dir).into_iter().flatten().flatten();
    for entry in hosts.flat_map(|host| std::fs::read_dir(host.path()).into_iter().flatten().flatten()) {
        if entry.file_name().to_str().is_some_and(|n| n.starts_with('.') && n.ends_with(PARTIAL_SUFFIX)) {
            let _ = std::fs::remove_file(entry.path());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_cache_removes_partial_downloads_and_keeps_cached_vmcores() {
        let dir = std::env::temp_dir().join(format!("store-cache-{}", std::process::id()));
        let host = dir.join("host-a");
        std::fs::create_dir_all(&host).unwrap();
        let partial = host.join(format!(".vm-1{PARTIAL_SUFFIX}"));
        let kept = host.join("vm-2.vmcore");
        std::fs::write(&partial, b"half").unwrap();
        std::fs::write(&kept, b"whole").unwrap();
        StoreCache::new(dir.clone(), 1 << 30);
        assert!(!partial.exists(), "a partial download is removed");
        assert!(kept.is_file(), "a cached vmcore stays");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
