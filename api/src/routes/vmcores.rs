//! `/v1/vmcores`: the crash store over HTTP. A vmcore's id is its crash directory's name
//! (docs/crash-store.md); ids are checked so no path can leave the store.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use dumpd::analysis::summary::Summary;
use dumpd::store::{
    CrashEntry, CrashMeta, CrashReasonMeta, StoreError, Trigger, FILE_CORE_COLLECTOR_LOG, FILE_KEXEC_DMESG, FILE_META,
    FILE_VMCORE, FILE_VMCORE_DMESG,
};
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
use crate::state::AppState;

/// Longest id: a 64-character VM name, `-YYYY-MM-DD-HH:MM:SS` and a `-N` suffix.
const MAX_ID_LEN: usize = 128;
/// Read size when streaming a vmcore.
const STREAM_CHUNK: usize = 256 * 1024;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(show, delete))
        .routes(routes!(download))
        .routes(routes!(dmesg))
        .routes(routes!(kexec_dmesg))
        .routes(routes!(core_collector_log))
}

/// Checks `id` and returns its directory, which must exist.
pub async fn crash_dir(state: &AppState, id: &str) -> Result<PathBuf, ApiError> {
    let valid = (1..=MAX_ID_LEN).contains(&id.len())
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if !valid {
        return Err(ApiError::bad_request(format!(
            "{id:?} is not a vmcore id (a crash directory name like web-1-2024-02-29-12:34:56); GET /v1/vmcores lists them"
        )));
    }
    let dir = state.store().dir().join(id);
    match tokio::fs::symlink_metadata(&dir).await {
        Ok(meta) if meta.is_dir() => Ok(dir),
        _ => Err(ApiError::not_found(format!("no vmcore {id:?}; GET /v1/vmcores lists them"))),
    }
}

/// A vmcore in the list.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
enum VmcoreSummary {
    /// A crash with its meta.json.
    Described {
        /// Its id.
        id: String,
        /// The VM it is of.
        vm: String,
        /// When it was created, RFC 3339 UTC.
        created: String,
        /// The same in milliseconds since the Unix epoch.
        created_unix_ms: u64,
        /// What captured it.
        #[schema(value_type = String)]
        trigger: Trigger,
        /// The guest's crash reason, when known.
        #[schema(value_type = Option<Object>)]
        reason: Option<CrashReasonMeta>,
        /// The vmcore's apparent size, bytes.
        size: u64,
        /// Its size on disk, bytes.
        on_disk: u64,
    },
    /// A crash whose meta.json is missing or unreadable.
    Undescribed {
        /// Its id.
        id: String,
        /// Always null.
        meta: Option<()>,
    },
}

impl VmcoreSummary {
    fn of(entry: &CrashEntry) -> Self {
        match &entry.meta {
            Some(meta) => Self::Described {
                id: entry.id.clone(),
                vm: meta.vm.clone(),
                created: meta.created.clone(),
                created_unix_ms: meta.created_unix_ms,
                trigger: meta.trigger,
                reason: meta.reason.clone(),
                size: meta.sizes.vmcore_apparent_bytes,
                on_disk: meta.sizes.vmcore_on_disk_bytes,
            },
            None => Self::Undescribed { id: entry.id.clone(), meta: None },
        }
    }
}

/// `GET /v1/vmcores`' answer.
#[derive(Serialize, ToSchema)]
struct VmcoreList {
    /// Oldest first.
    vmcores: Vec<VmcoreSummary>,
}

/// `GET /v1/vmcores`' query.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only this VM's vmcores.
    vm: Option<String>,
}

/// List the crash store's vmcores, oldest first.
#[utoipa::path(get, path = "/v1/vmcores", operation_id = "list_vmcores", params(ListQuery),
    responses((status = 200, description = "OK", body = VmcoreList), LookupErrors))]
async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<VmcoreList>, ApiError> {
    let store = state.store().clone();
    let entries = tokio::task::spawn_blocking(move || store.list())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let vmcores = entries
        .iter()
        .filter(|e| query.vm.as_deref().is_none_or(|vm| e.meta.as_ref().is_some_and(|m| m.vm == vm)))
        .map(VmcoreSummary::of)
        .collect();
    Ok(axum::Json(VmcoreList { vmcores }))
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

/// A vmcore's meta.json, crash summary (dumpd show), files and links.
#[utoipa::path(get, path = "/v1/vmcores/{id}", operation_id = "show_vmcore", params(("id" = String, Path, description = VMCORE_ID)),
    responses((status = 200, description = "OK", body = VmcoreDetail), LookupErrors))]
async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<axum::Json<VmcoreDetail>, ApiError> {
    let dir = crash_dir(&state, &id).await?;
    let meta: Option<CrashMeta> =
        tokio::fs::read(dir.join(FILE_META)).await.ok().and_then(|b| serde_json::from_slice(&b).ok());
    let mut files = BTreeMap::new();
    for name in [FILE_VMCORE, FILE_VMCORE_DMESG, FILE_KEXEC_DMESG, FILE_CORE_COLLECTOR_LOG, FILE_META] {
        if let Ok(m) = tokio::fs::metadata(dir.join(name)).await {
            use std::os::unix::fs::MetadataExt;
            files.insert(name.into(), FileSize { bytes: m.len(), on_disk_bytes: m.blocks() * 512 });
        }
    }
    let vmcore = dir.join(FILE_VMCORE);
    let name = id.clone();
    let summary =
        tokio::task::spawn_blocking(move || analysis::summary(&vmcore, &name)).await.map_err(ApiError::internal)?;
    let (summary, summary_error) = match summary {
        Ok(summary) => (Some(summary), None),
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
    Ok(axum::Json(VmcoreDetail { id, meta, summary, summary_error, files, links }))
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
    let dir = crash_dir(&state, &id).await?;
    let vmcore = dir.join(FILE_VMCORE);
    let (path, filename) = match query.format.as_deref() {
        None | Some("elf") => (vmcore, format!("{id}.vmcore")),
        Some("kdump-zstd") => {
            let cached = kdump_cache(&state, &id);
            tokio::fs::create_dir_all(state.cache_dir()).await.map_err(ApiError::internal)?;
            let target = cached.clone();
            tokio::task::spawn_blocking(move || analysis::kdump_zstd(&vmcore, &target))
                .await
                .map_err(ApiError::internal)??;
            (cached, format!("{id}.kdump"))
        }
        Some(other) => return Err(ApiError::invalid(format!("format is elf or kdump-zstd, not {other:?}"))),
    };
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| ApiError::not_found(format!("vmcore {id:?} has no vmcore file")))?;
    let len = file.metadata().await.map_err(ApiError::internal)?.len();
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
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start)).await.map_err(ApiError::internal)?;
    }
    let body = Body::from_stream(ReaderStream::with_capacity(file.take(count), STREAM_CHUNK));
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

/// Where the kdump-zstd conversion of vmcore `id` is cached.
fn kdump_cache(state: &AppState, id: &str) -> PathBuf {
    state.cache_dir().join(format!("{id}.kdump-zstd"))
}

async fn text_file(state: &AppState, id: &str, name: &str) -> Result<Response, ApiError> {
    let dir = crash_dir(state, id).await?;
    match tokio::fs::read(dir.join(name)).await {
        Ok(bytes) => Ok(([(header::CONTENT_TYPE, TEXT_PLAIN)], bytes).into_response()),
        Err(_) => Err(ApiError::not_found(format!("vmcore {id:?} has no {name}"))),
    }
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

/// Delete a vmcore and its crash directory.
#[utoipa::path(delete, path = "/v1/vmcores/{id}", operation_id = "delete_vmcore", params(("id" = String, Path, description = VMCORE_ID)),
    responses((status = 204, description = "Deleted."), LookupErrors))]
async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let dir = crash_dir(&state, &id).await?;
    let store = state.store().clone();
    let deleted = tokio::task::spawn_blocking({
        let id = id.clone();
        move || store.delete(&id)
    })
    .await
    .map_err(|e| ApiError::internal(format!("the delete task failed: {e}")))?;
    deleted.map_err(|e| match e {
        StoreError::NoSuchCrash(_) => ApiError::not_found(format!("no vmcore {id:?}")),
        e => ApiError::internal(format!("cannot delete {}: {e}", dir.display())),
    })?;
    // A conversion cached for it goes too.
    let _ = tokio::fs::remove_file(kdump_cache(&state, &id)).await;
    tracing::info!("deleted vmcore {id}");
    Ok(StatusCode::NO_CONTENT)
}
