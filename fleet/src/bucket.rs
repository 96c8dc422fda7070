//! The fleet's object store: where each crash's objects are (`PREFIX/HOST/ID/FILE`), and the
//! requests the uploader and the service make of it. Every request goes through `object_store`'s
//! S3 client, configured the way the AWS tools are (the `AWS_*` variables: `AWS_ENDPOINT_URL`,
//! `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, ...).
//!
//! A crash is committed in the store when its `meta.json` is: listings show only crashes that
//! have one, and deleting one removes `meta.json` first, so it disappears at once.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dumpd::store::{CrashMeta, FILE_META};
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use crate::checksum::Hasher;
use crate::{FleetError, StoreUrl};

/// How long one request may retry inside the client before the uploader's own backoff takes
/// over (which says so in `upload_retrying` events).
const CLIENT_RETRY_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests in flight when reading many `meta.json`s for a listing.
const LIST_CONCURRENCY: usize = 16;
/// `meta.json`s remembered between listings (they never change once written).
const META_CACHE_LEN: usize = 65_536;
/// The longest one request may take, body included (the HTTP client's timeout counts the body).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Bytes one GET carries. A vmcore is read in ranges of this size, one request each: in one
/// request a large vmcore could never arrive within [`REQUEST_TIMEOUT`] on a slow link (30 GB
/// at 100 MB/s takes 300 s), and its read-back check or download would fail every time.
pub const READ_CHUNK: u64 = 64 << 20;
/// The most an object read whole may have: `meta.json` and the text logs, never a vmcore. A
/// larger one was not written by crashvisor and is refused rather than held in memory.
pub const MAX_WHOLE_READ: u64 = 16 << 20;

/// A crash committed in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteCrash {
    /// The host that shipped it.
    pub host: String,
    /// Its id under that host.
    pub id: String,
    /// Its `meta.json`, if readable.
    pub meta: Option<CrashMeta>,
    /// Bytes of all its objects.
    pub bytes: u64,
}

/// The fleet's bucket, as this host sees it.
#[derive(Debug)]
pub struct FleetBucket {
    s3: AmazonS3,
    url: StoreUrl,
    host: String,
    metas: Mutex<HashMap<String, Arc<CrashMeta>>>,
}

impl FleetBucket {
    /// The store at `url`, configured from the `AWS_*` environment variables, as host `host`.
    pub fn from_env(url: &StoreUrl, host: &str) -> Result<Self, FleetError> {
        Self::new(url, host, AmazonS3Builder::from_env())
    }

    /// The store at `url` through `builder` (endpoint, region, credentials), as host `host`. An
    /// `http://` endpoint is allowed as given.
    pub fn new(url: &StoreUrl, host: &str, builder: AmazonS3Builder) -> Result<Self, FleetError> {
        crate::validate_host_id(host).map_err(|detail| FleetError::Meta { what: "the host id".into(), detail })?;
        let plain_http = [AmazonS3ConfigKey::Endpoint, AmazonS3ConfigKey::S3Endpoint]
            .iter()
            .any(|key| builder.get_config_value(key).is_some_and(|e| e.starts_with("http://")));
        let retry = RetryConfig { max_retries: 3, retry_timeout: CLIENT_RETRY_TIMEOUT, ..RetryConfig::default() };
        let client = ClientOptions::new()
            .with_allow_http(plain_http)
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(REQUEST_TIMEOUT);
        let s3 = builder
            .with_bucket_name(&url.bucket)
            .with_retry(retry)
            .with_client_options(client)
            .build()
            .map_err(|source| FleetError::Setup { url: url.to_string(), source })?;
        Ok(Self { s3, url: url.clone(), host: host.to_owned(), metas: Mutex::new(HashMap::new()) })
    }

    /// This host's id.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The store's URL.
    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    fn under_prefix(&self, rest: &str) -> String {
        if self.url.prefix.is_empty() {
            rest.to_owned()
        } else {
            format!("{}/{rest}", self.url.prefix)
        }
    }

    /// The key of `file` of crash `id` of `host`.
    pub fn key(&self, host: &str, id: &str, file: &str) -> Path {
        Path::from(self.under_prefix(&format!("{host}/{id}/{file}")))
    }

    /// `s3://BUCKET/PREFIX/HOST/ID/`: where crash `id` of `host` lives.
    pub fn crash_url(&self, host: &str, id: &str) -> String {
        format!("s3://{}/{}/", self.url.bucket, self.under_prefix(&format!("{host}/{id}")))
    }

    /// Stores `bytes` at `key` in one request.
    pub async fn put(&self, key: &Path, bytes: Bytes) -> Result<(), FleetError> {
        self.s3.put(key, PutPayload::from_bytes(bytes)).await.map_err(FleetError::store("write", key))?;
        Ok(())
    }

    /// Starts a multipart upload to `key`.
    pub async fn create_multipart(&self, key: &Path) -> Result<String, FleetError> {
        self.s3.create_multipart(key).await.map_err(FleetError::store("start a multipart upload of", key))
    }

    /// Sends part `index` (from 0) of multipart upload `upload_id`; returns the part's id.
    pub async fn put_part(
        &self,
        key: &Path,
        upload_id: &str,
        index: usize,
        bytes: Bytes,
    ) -> Result<String, FleetError> {
        let part = self
            .s3
            .put_part(key, &upload_id.to_owned(), index, PutPayload::from_bytes(bytes))
            .await
            .map_err(FleetError::store("send a part of", key))?;
        Ok(part.content_id)
    }

    /// Completes multipart upload `upload_id` from `parts` (in order).
    pub async fn complete_multipart(&self, key: &Path, upload_id: &str, parts: &[String]) -> Result<(), FleetError> {
        let parts = parts.iter().map(|id| PartId { content_id: id.clone() }).collect();
        self.s3
            .complete_multipart(key, &upload_id.to_owned(), parts)
            .await
            .map_err(FleetError::store("complete the multipart upload of", key))?;
        Ok(())
    }

    /// Abandons multipart upload `upload_id` (its parts are freed).
    pub async fn abort_multipart(&self, key: &Path, upload_id: &str) -> Result<(), FleetError> {
        self.s3
            .abort_multipart(key, &upload_id.to_owned())
            .await
            .map_err(FleetError::store("abort the multipart upload of", key))
    }

    /// The SHA-256 and length of the object at `key`, read back in [`READ_CHUNK`] ranges.
    pub async fn sha256(&self, key: &Path) -> Result<(String, u64), FleetError> {
        let len = self.s3.head(key).await.map_err(FleetError::store("look up", key))?.size;
        let mut chunks = self.get_range(key, 0..len).await?;
        let mut hasher = Hasher::default();
        while let Some(chunk) = chunks.next().await {
            hasher.update(&chunk?);
        }
        Ok(hasher.finish())
    }

    /// The length of the object at `key`, or `None` if there is none.
    pub async fn len(&self, key: &Path) -> Result<Option<u64>, FleetError> {
        match self.s3.head(key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(FleetError::store("look up", key)(e)),
        }
    }

    /// The object at `key` whole, or `None` if there is none; at most [`MAX_WHOLE_READ`] bytes.
    pub async fn get(&self, key: &Path) -> Result<Option<Bytes>, FleetError> {
        let result = match self.s3.get(key).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(FleetError::store("read", key)(e)),
        };
        if result.meta.size > MAX_WHOLE_READ {
            return Err(FleetError::TooLarge { key: key.to_string(), size: result.meta.size, limit: MAX_WHOLE_READ });
        }
        Ok(Some(result.bytes().await.map_err(FleetError::store("read", key))?))
    }

    /// Bytes `range` of the object at `key`, streamed: one ranged GET per [`READ_CHUNK`], each
    /// sent when the one before has been read.
    pub async fn get_range(
        &self,
        key: &Path,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, Result<Bytes, FleetError>>, FleetError> {
        let mut chunks = chunk_ranges(range);
        // The first request is sent now, so that a missing object or a store that is down is an
        // error here rather than in the middle of the stream.
        let Some(first) = chunks.next() else { return Ok(futures_util::stream::empty().boxed()) };
        let first = ranged_get(self.s3.clone(), key.clone(), first).await?;
        let (s3, key) = (self.s3.clone(), key.clone());
        let rest = futures_util::stream::iter(chunks)
            .then(move |chunk| ranged_get(s3.clone(), key.clone(), chunk))
            .try_flatten();
        Ok(first.chain(rest).boxed())
    }

    /// The `meta.json` of crash `id` of `host`, if it is committed (cached: it never changes).
    pub async fn meta(&self, host: &str, id: &str) -> Result<Option<Arc<CrashMeta>>, FleetError> {
        let key = self.key(host, id, FILE_META);
        if let Some(meta) = self.cached_meta(&key) {
            return Ok(Some(meta));
        }
        let Some(bytes) = self.get(&key).await? else { return Ok(None) };
        let meta: CrashMeta = serde_json::from_slice(&bytes)
            .map_err(|e| FleetError::Meta { what: format!("{key} in the crash store"), detail: e.to_string() })?;
        let meta = Arc::new(meta);
        self.remember_meta(&key, &meta);
        Ok(Some(meta))
    }

    fn cached_meta(&self, key: &Path) -> Option<Arc<CrashMeta>> {
        self.metas.lock().unwrap_or_else(|e| e.into_inner()).get(key.as_ref()).cloned()
    }

    fn remember_meta(&self, key: &Path, meta: &Arc<CrashMeta>) {
        let mut metas = self.metas.lock().unwrap_or_else(|e| e.into_inner());
        if metas.len() >= META_CACHE_LEN {
            metas.clear();
        }
        metas.insert(key.to_string(), meta.clone());
    }

    fn forget_meta(&self, key: &Path) {
        self.metas.lock().unwrap_or_else(|e| e.into_inner()).remove(key.as_ref());
    }

    /// The committed crashes of `host` (every host's with `None`), oldest first.
    pub async fn list(&self, host: Option<&str>) -> Result<Vec<RemoteCrash>, FleetError> {
        let base = self.under_prefix(host.unwrap_or(""));
        let base = base.trim_end_matches('/');
        let prefix = (!base.is_empty()).then(|| Path::from(base));
        let depth = prefix.as_ref().map_or(0, |p| p.parts().count()) + if host.is_some() { 0 } else { 1 };
        let objects: Vec<_> = self
            .s3
            .list(prefix.as_ref())
            .try_collect()
            .await
            .map_err(FleetError::store("list", prefix.as_ref().map_or_else(|| "/".into(), Path::to_string)))?;
        // (host, id) -> (committed, bytes)
        let mut crashes: BTreeMap<(String, String), (bool, u64)> = BTreeMap::new();
        for object in &objects {
            let parts: Vec<String> = object.location.parts().map(|p| p.as_ref().to_owned()).collect();
            // PREFIX.. [HOST] ID FILE: exactly two levels below the listed prefix.
            if parts.len() != depth + 2 {
                continue;
            }
            let crash_host = host.map_or_else(|| parts[depth - 1].clone(), str::to_owned);
            let entry = crashes.entry((crash_host, parts[depth].clone())).or_default();
            entry.0 |= parts[depth + 1] == FILE_META;
            entry.1 = entry.1.saturating_add(object.size);
        }
        let committed: Vec<_> = crashes.into_iter().filter(|(_, (committed, _))| *committed).collect();
        let mut listed: Vec<RemoteCrash> = futures_util::stream::iter(committed)
            .map(|((host, id), (_, bytes))| async move {
                let meta = match self.meta(&host, &id).await {
                    Ok(meta) => meta.map(|m| (*m).clone()),
                    Err(FleetError::Meta { what, detail }) => {
                        tracing::warn!("{what}: {detail}");
                        None
                    }
                    Err(e) => return Err(e),
                };
                Ok(RemoteCrash { host, id, meta, bytes })
            })
            .buffer_unordered(LIST_CONCURRENCY)
            .try_collect()
            .await?;
        listed.sort_by(|a, b| {
            let at = |c: &RemoteCrash| c.meta.as_ref().map_or(0, |m| m.created_unix_ms);
            at(a).cmp(&at(b)).then_with(|| (&a.host, &a.id).cmp(&(&b.host, &b.id)))
        });
        Ok(listed)
    }

    /// The objects of crash `id` of `host`: file name and length.
    pub async fn files(&self, host: &str, id: &str) -> Result<Vec<(String, u64)>, FleetError> {
        let dir = Path::from(self.under_prefix(&format!("{host}/{id}")));
        let objects: Vec<_> = self.s3.list(Some(&dir)).try_collect().await.map_err(FleetError::store("list", &dir))?;
        Ok(objects.into_iter().filter_map(|o| Some((o.location.filename()?.to_owned(), o.size))).collect())
    }

    /// Deletes crash `id` of `host`: `meta.json` first (it leaves listings at once), then every
    /// other object under it. `NotFound` if it is not committed.
    pub async fn delete(&self, host: &str, id: &str) -> Result<(), FleetError> {
        let meta = self.key(host, id, FILE_META);
        if self.len(&meta).await?.is_none() {
            return Err(FleetError::NotFound(format!("{id} of host {host}")));
        }
        self.s3.delete(&meta).await.map_err(FleetError::store("delete", &meta))?;
        self.forget_meta(&meta);
        self.delete_objects(host, id).await
    }

    /// Deletes every object under crash `id` of `host` (what an interrupted upload or delete
    /// left behind).
    pub async fn delete_objects(&self, host: &str, id: &str) -> Result<(), FleetError> {
        let dir = Path::from(self.under_prefix(&format!("{host}/{id}")));
        let objects: Vec<_> = self.s3.list(Some(&dir)).try_collect().await.map_err(FleetError::store("list", &dir))?;
        for object in objects {
            self.s3.delete(&object.location).await.map_err(FleetError::store("delete", &object.location))?;
        }
        Ok(())
    }
}

/// `range` cut into [`READ_CHUNK`]-sized ranges, in order.
fn chunk_ranges(range: Range<u64>) -> impl Iterator<Item = Range<u64>> {
    let end = range.end;
    (range.start..end).step_by(READ_CHUNK as usize).map(move |start| start..end.min(start.saturating_add(READ_CHUNK)))
}

/// One ranged GET of `range` of `key`, as a stream of its body.
async fn ranged_get(
    s3: AmazonS3,
    key: Path,
    range: Range<u64>,
) -> Result<BoxStream<'static, Result<Bytes, FleetError>>, FleetError> {
    let options = GetOptions { range: Some(GetRange::Bounded(range)), ..GetOptions::default() };
    let result = s3.get_opts(&key, options).await.map_err(FleetError::store("read", &key))?;
    let key = key.to_string();
    Ok(result.into_stream().map_err(move |e| FleetError::store("read", &key)(e)).boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_cut_into_chunks_that_cover_the_range_exactly() {
        let chunks: Vec<_> = chunk_ranges(10..2 * READ_CHUNK + 20).collect();
        assert_eq!(
            chunks,
            [10..READ_CHUNK + 10, READ_CHUNK + 10..2 * READ_CHUNK + 10, 2 * READ_CHUNK + 10..2 * READ_CHUNK + 20]
        );
        assert_eq!(chunk_ranges(5..5).count(), 0);
        assert_eq!(chunk_ranges(0..1).collect::<Vec<_>>(), vec![0..1]);
        assert_eq!(chunk_ranges(u64::MAX - 1..u64::MAX).collect::<Vec<_>>(), vec![u64::MAX - 1..u64::MAX]);
    }
}
