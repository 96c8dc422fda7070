//! `/v1/vmcores/{id}`: one crash over HTTP, from this host's crash directory (the spool) or the
//! fleet's store. A vmcore's id is its crash directory's name (docs/crash-store.md), `ID@HOST`
//! for another host's crash in the fleet's store; ids are checked so no path can leave the store.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use dumpd::analysis::summary::Summary;
use dumpd::store::{
    CrashMeta, StoreError, FILE_CORE_COLLECTOR_LOG, FILE_KEXEC_DMESG, FILE_META, FILE_VMCORE, FILE_VMCORE_DMESG,
};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::range::{self, ByteRange};
use super::{TEXT_PLAIN, VMCORE_ID};
use crate::analysis;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Path, Query};
use crate::openapi::{Binary, LookupErrors};
use crate::remote::{store_error, Located};
use crate::state::AppState;

/// Read size when streaming a vmcore.
const STREAM_CHUNK: usize = 256 * 1024;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(show, delete))
        .routes(routes!(download))
        .routes(routes!(dmesg))
        .routes(routes!(kexec_dmesg))
        .routes(routes!(core_collector_log))
}

/// Checks `id` (`ID` or `ID@HOST`) and finds the crash: in this host's spool unless it is
/// committed in the fleet's store, else in the store.
pub async fn locate(state: &AppState, id: &str) -> Result<Located, ApiError> {
    let (crash, host) = match id.split_once('@') {
        Some((crash, host)) => (crash, Some(host)),
        None => (id, None),
    };
    let valid = dumpd::store::is_crash_id(crash) && host.is_none_or(|h| ::fleet::validate_host_id(h).is_ok());
    if !valid {
        return Err(ApiError::bad_request(format!(
            "{id:?} is not a vmcore id (a crash directory name like web-1-2024-02-29-12:34:56, with @HOST for \
             another host's); GET /v1/vmcores lists them"
        )));
    }
    let missing = || ApiError::not_found(format!("no vmcore {id:?}; GET /v1/vmcores lists them"));
    let fleet = state.fleet();
    let own = fleet.map(|f| f.host());
    if host.is_none() || host == own {
        let dir = state.store().dir().join(crash);
        if tokio::fs::symlink_metadata(&dir).await.is_ok_and(|m| m.is_dir()) {
            return Ok(match fleet.and_then(|f| Some((f.host(), f.uploaded_as(crash)?))) {
                Some((host, remote)) => Located::Store { host: host.to_owned(), id: remote, local: Some(dir) },
                None => Located::Spool(dir),
            });
        }
    }
    let Some(fleet) = fleet else {
        return Err(if host.is_some() {
            ApiError::not_found(format!("no vmcore {id:?}: this service has no fleet store (--crash-store)"))
        } else {
            missing()
        });
    };
    let host = host.unwrap_or(fleet.host());
    // Committed in the store: its meta.json is there now (another host may have deleted it).
    match fleet.bucket().len(&fleet.bucket().key(host, crash, FILE_META)).await {
        Ok(Some(_)) => Ok(Located::Store { host: host.to_owned(), id: crash.to_owned(), local: None }),
        Ok(None) => Err(missing()),
        Err(e) => Err(store_error(e)),
    }
}

/// The vmcore of a crash as a local file: its own, or a stored one downloaded to the cache.
pub async fn vmcore_file(state: &AppState, located: &Located) -> Result<PathBuf, ApiError> {
    match located {
        Located::Spool(dir) | Located::Store { local: Some(dir), .. } => Ok(dir.join(FILE_VMCORE)),
        Located::Store { host, id, local: None } => {
            let fleet = state.fleet().ok_or_else(|| ApiError::internal("a stored crash without a fleet store"))?;
            fleet.cache().vmcore(fleet.bucket(), host, id).await.map_err(store_error)
        }
    }
}

/// A file of a crash directory.
#[derive(Serialize, ToSchema)]
struct FileSize {
    /// Its apparent size.
    bytes: u64,
    /// The blocks it holds on disk, in bytes.
    on_disk_bytes: u64,
}

/// Where a vmcore's parts are served.
#[derive(Serialize, ToSchema)]
struct VmcoreLinks {
    vmcore: String,
    dmesg: String,
    kexec_dmesg: String,
    backtrace: String,
    tasks: String,
}

/// One vmcore.
#[derive(Serialize, ToSchema)]
struct VmcoreDetail {
    /// Its id.
    id: String,
    /// Where it is: `local` (no fleet store), `spool` (waiting to be uploaded) or `store`.
    location: &'static str,
    /// Its host (with a fleet store).
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    /// Its place in the fleet's store, `s3://BUCKET/PREFIX/HOST/ID/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    /// meta.json (docs/crash-store.md), if it is readable.
    #[schema(value_type = Option<Object>)]
    meta: Option<CrashMeta>,
    /// `dumpd show --json`: release, cpus, crash time, uptime, panic (cpu, pid, message), task,
    /// problems.
    #[schema(value_type = Option<Object>)]
    summary: Option<Summary>,
    /// Why there is no summary.
    summary_error: Option<String>,
    /// The crash directory's files by name.
    files: BTreeMap<String, FileSize>,
    /// Where its parts are served.
    links: VmcoreLinks,
}

/// The meta.json and files of a crash directory.
async fn local_detail(dir: &std::path::Path) -> (Option<CrashMeta>, BTreeMap<String, FileSize>) {
    let meta = tokio::fs::read(dir.join(FILE_META)).await.ok().and_then(|b| serde_json::from_slice(&b).ok());
    let mut files = BTreeMap::new();
    for name in [FILE_VMCORE, FILE_VMCORE_DMESG, FILE_KEXEC_DMESG, FILE_CORE_COLLECTOR_LOG, FILE_META] {
        if let Ok(m) = tokio::fs::metadata(dir.join(name)).await {
            use std::os::unix::fs::MetadataExt;
            files.insert(name.into(), FileSize { bytes: m.len(), on_disk_bytes: m.blocks() * 512 });
        }
    }
    (meta, files)
}

/// A vmcore's meta.json, crash summary (dumpd show), files and links.
#[utoipa::path(get, path = "/v1/vmcores/{id}", operation_id = "show_vmcore", params(("id" = String, Path, description = VMCORE_ID)),
    responses((status = 200, description = "OK", body = VmcoreDetail), LookupErrors))]
async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<axum::Json<VmcoreDetail>, ApiError> {
    let located = locate(&state, &id).await?;
    let own = state.fleet().map(|f| f.host().to_owned());
    let (location, host, url, (meta, files)) = match &located {
        Located::Spool(dir) => (if own.is_some() { "spool" } else { "local" }, own, None, local_detail(dir).await),
        Located::Store { host, id: stored, local } => {
            let fleet = state.fleet().ok_or_else(|| ApiError::internal("a stored crash without a fleet store"))?;
            let url = Some(fleet.bucket().crash_url(host, stored));
            let detail = match local {
                Some(dir) => local_detail(dir).await,
                None => {
                    let meta = fleet.bucket().meta(host, stored).await.map_err(store_error)?.map(|m| (*m).clone());
                    let files = fleet.bucket().files(host, stored).await.map_err(store_error)?;
                    let files = files.into_iter().map(|(n, len)| (n, FileSize { bytes: len, on_disk_bytes: len }));
                    (meta, files.collect())
                }
            };
            ("store", Some(host.clone()), url, detail)
        }
    };
    let (summary, summary_error) = match vmcore_file(&state, &located).await {
        Ok(vmcore) => {
            let name = id.clone();
            let summary = tokio::task::spawn_blocking(move || analysis::summary(&vmcore, &name))
                .await
                .map_err(ApiError::internal)?;
            match summary {
                Ok(summary) => (Some(summary), None),
                Err(e) => (None, Some(e.message)),
            }
        }
        Err(e) => (None, Some(e.message)),
    };
    let base = format!("/v1/vmcores/{id}");
    let links = VmcoreLinks {
        vmcore: format!("{base}/vmcore"),
        dmesg: format!("{base}/dmesg"),
        kexec_dmesg: format!("{base}/kexec-dmesg"),
        backtrace: format!("{base}/backtrace"),
        tasks: format!("{base}/tasks"),
    };
    Ok(axum::Json(VmcoreDetail { id, location, host, url, meta, summary, summary_error, files, links }))
}

/// `GET .../vmcore`'s query.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DownloadQuery {
    /// `elf` (the default) or `kdump-zstd`: converted to kdump-compressed (zstd) on first request
    /// and cached while the service runs.
    format: Option<String>,
}

/// Download the vmcore (streamed; holes read as zeros).
#[utoipa::path(get, path = "/v1/vmcores/{id}/vmcore",
    params(
        ("id" = String, Path, description = VMCORE_ID),
        DownloadQuery,
        ("Range" = Option<String>, Header, description = "One byte range: bytes=START-END, bytes=START-, bytes=-SUFFIX."),
    ),
    responses(
        (status = 200, description = "The whole vmcore.", content_type = "application/octet-stream", body = Binary),
        (status = 206, description = "The requested range, with Content-Range.", content_type = "application/octet-stream", body = Binary),
        (status = 416, description = "The range is malformed, not single, or beyond the file (Content-Range: bytes */LEN).", body = ErrorBody),
        (status = 422, description = "An unknown format, or a vmcore that cannot be converted (unconvertible).", body = ErrorBody),
        LookupErrors,
    ))]
async fn download(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<DownloadQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let located = locate(&state, &id).await?;
    let (source, filename) = match query.format.as_deref() {
        None | Some("elf") => {
            let source = match (&located, state.fleet()) {
                (Located::Store { host, id: stored, local: None }, Some(fleet)) => {
                    Source::Object(fleet.bucket().key(host, stored, FILE_VMCORE))
                }
                _ => Source::File(vmcore_file(&state, &located).await?),
            };
            (source, format!("{id}.vmcore"))
        }
        Some("kdump-zstd") => {
            let vmcore = vmcore_file(&state, &located).await?;
            let cached = kdump_cache(&state, &id);
            tokio::fs::create_dir_all(state.cache_dir()).await.map_err(ApiError::internal)?;
            let target = cached.clone();
            tokio::task::spawn_blocking(move || analysis::kdump_zstd(&vmcore, &target))
                .await
                .map_err(ApiError::internal)??;
            (Source::File(cached), format!("{id}.kdump"))
        }
        Some(other) => return Err(ApiError::invalid(format!("format is elf or kdump-zstd, not {other:?}"))),
    };
    let no_file = || ApiError::not_found(format!("vmcore {id:?} has no vmcore file"));
    let len = match &source {
        Source::File(path) => tokio::fs::metadata(path).await.map_err(|_| no_file())?.len(),
        Source::Object(key) => {
            let bucket = state.fleet().map(|f| f.bucket()).ok_or_else(no_file)?;
            bucket.len(key).await.map_err(store_error)?.ok_or_else(no_file)?
        }
    };
    let requested = headers.get(header::RANGE).map(|v| v.to_str().unwrap_or("invalid"));
    let range = match range::parse(requested, len) {
        Ok(range) => range,
        Err(range::RangeError(message)) => {
            let mut response =
                ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable", message).into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{len}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return Ok(response);
        }
    };
    let (status, start, count) = match range {
        ByteRange::Full => (StatusCode::OK, 0, len),
        ByteRange::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
    };
    let body = match source {
        Source::File(path) => {
            let mut file = tokio::fs::File::open(&path).await.map_err(|_| no_file())?;
            if start > 0 {
                file.seek(std::io::SeekFrom::Start(start)).await.map_err(ApiError::internal)?;
            }
            Body::from_stream(ReaderStream::with_capacity(file.take(count), STREAM_CHUNK))
        }
        Source::Object(_) if count == 0 => Body::empty(),
        // One ranged GET of exactly the bytes asked for.
        Source::Object(key) => {
            let bucket = state.fleet().map(|f| f.bucket()).ok_or_else(no_file)?;
            let chunks = bucket.get_range(&key, start..start + count).await.map_err(store_error)?;
            Body::from_stream(chunks.map_err(std::io::Error::other))
        }
    };
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        h.insert(header::CONTENT_DISPOSITION, value);
    }
    if let ByteRange::Partial { start, end } = range {
        if let Ok(value) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
            h.insert(header::CONTENT_RANGE, value);
        }
    }
    Ok(response)
}

/// Deletes vmcore `id` from the store, where it went while a DELETE of its local copy ran.
async fn delete_stored(state: &AppState, id: &str) -> Result<StatusCode, ApiError> {
    let (Located::Store { host, id: stored, local: None }, Some(fleet)) = (locate(state, id).await?, state.fleet())
    else {
        return Err(ApiError::not_found(format!("no vmcore {id:?}")));
    };
    fleet.bucket().delete(&host, &stored).await.map_err(store_error)?;
    fleet.cache().forget(&host, &stored);
    tracing::info!("deleted vmcore {id} from the store (its upload finished during the DELETE)");
    Ok(StatusCode::NO_CONTENT)
}

/// Where a download's bytes come from.
enum Source {
    /// A local file: the spool's, or a conversion.
    File(PathBuf),
    /// An object of the fleet's store.
    Object(object_store::path::Path),
}

/// Where the kdump-zstd conversion of vmcore `id` is cached.
fn kdump_cache(state: &AppState, id: &str) -> PathBuf {
    state.cache_dir().join(format!("{id}.kdump-zstd"))
}

async fn text_file(state: &AppState, id: &str, name: &str) -> Result<Response, ApiError> {
    let missing = || ApiError::not_found(format!("vmcore {id:?} has no {name}"));
    let bytes = match locate(state, id).await? {
        Located::Spool(dir) | Located::Store { local: Some(dir), .. } => {
            tokio::fs::read(dir.join(name)).await.map_err(|_| missing())?
        }
        Located::Store { host, id: stored, local: None } => {
            let bucket = state.fleet().map(|f| f.bucket()).ok_or_else(missing)?;
            bucket.get(&bucket.key(&host, &stored, name)).await.map_err(store_error)?.ok_or_else(missing)?.to_vec()
        }
    };
    Ok(([(header::CONTENT_TYPE, TEXT_PLAIN)], bytes).into_response())
}

/// `vmcore-dmesg.txt`: the crashed kernel's log.
#[utoipa::path(get, path = "/v1/vmcores/{id}/dmesg", operation_id = "vmcore_dmesg", params(("id" = String, Path, description = VMCORE_ID)),
    responses((status = 200, description = "The log.", content_type = "text/plain", body = String), LookupErrors))]
async fn dmesg(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    text_file(&state, &id, FILE_VMCORE_DMESG).await
}

/// `kexec-dmesg.log`: the capture kernel's log.
#[utoipa::path(get, path = "/v1/vmcores/{id}/kexec-dmesg", params(("id" = String, Path, description = VMCORE_ID)),
    responses((status = 200, description = "The log.", content_type = "text/plain", body = String), LookupErrors))]
async fn kexec_dmesg(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    text_file(&state, &id, FILE_KEXEC_DMESG).await
}

/// `core-collector.log`: what the host's core collector printed (crashes of VMs with
/// `kdump.core_collector` only).
#[utoipa::path(get, path = "/v1/vmcores/{id}/core-collector-log", params(("id" = String, Path, description = VMCORE_ID)),
    responses((status = 200, description = "The log.", content_type = "text/plain", body = String), LookupErrors))]
async fn core_collector_log(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    text_file(&state, &id, FILE_CORE_COLLECTOR_LOG).await
}

/// Delete a vmcore: its crash directory in the spool, and its objects in the fleet's store.
#[utoipa::path(delete, path = "/v1/vmcores/{id}", operation_id = "delete_vmcore", params(("id" = String, Path, description = VMCORE_ID)),
    responses((status = 204, description = "Deleted."), LookupErrors))]
async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let located = locate(&state, &id).await?;
    let local = match &located {
        Located::Spool(dir) | Located::Store { local: Some(dir), .. } => Some(dir.clone()),
        Located::Store { local: None, .. } => None,
    };
    // The store first: a crash whose local copy went first would be listed from the store.
    if let (Located::Store { host, id: stored, .. }, Some(fleet)) = (&located, state.fleet()) {
        fleet.bucket().delete(host, stored).await.map_err(store_error)?;
        fleet.cache().forget(host, stored);
    }
    if let Some(dir) = local {
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let store = state.store().clone();
        let deleted = tokio::task::spawn_blocking({
            let name = name.clone();
            move || store.delete(&name)
        })
        .await
        .map_err(|e| ApiError::internal(format!("the delete task failed: {e}")))?;
        match deleted {
            Ok(()) => {}
            // Its upload finished meanwhile and took the local copy: it is in the store now.
            Err(StoreError::NoSuchCrash(_)) if state.fleet().is_some() => return delete_stored(&state, &id).await,
            Err(StoreError::NoSuchCrash(_)) => return Err(ApiError::not_found(format!("no vmcore {id:?}"))),
            Err(e) => return Err(ApiError::internal(format!("cannot delete {}: {e}", dir.display()))),
        }
        if let (Located::Spool(_), Some(fleet)) = (&located, state.fleet()) {
            // Committed in the store while this DELETE ran: the store's copy goes too. (The
            // uploader looks the other way round, see `Uploader::ship`: whichever comes second
            // sees the other, so a deleted crash never stays in the store.)
            if let Some(remote) = fleet.uploaded_as(&name) {
                match fleet.bucket().delete(fleet.host(), &remote).await {
                    Ok(()) => fleet.cache().forget(fleet.host(), &remote),
                    Err(::fleet::FleetError::NotFound(_)) => {}
                    Err(e) => return Err(store_error(e)),
                }
            }
        }
        if let Some(fleet) = state.fleet() {
            fleet.forget(&name).map_err(ApiError::internal)?;
        }
    }
    // A conversion cached for it goes too.
    let _ = tokio::fs::remove_file(kdump_cache(&state, &id)).await;
    tracing::info!("deleted vmcore {id}");
    Ok(StatusCode::NO_CONTENT)
}
