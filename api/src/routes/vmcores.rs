//! `/v1/vmcores`: the crash store over HTTP. A vmcore's id is its crash directory's name
//! (docs/crash-store.md); ids are checked so no path can leave the store.

use std::path::PathBuf;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use dumpd::store::{CrashEntry, CrashMeta, FILE_KEXEC_DMESG, FILE_META, FILE_VMCORE, FILE_VMCORE_DMESG};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::range::{self, ByteRange};
use super::TEXT_PLAIN;
use crate::analysis;
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::state::AppState;

/// Longest id: a 64-character VM name, `-YYYY-MM-DD-HH:MM:SS` and a `-N` suffix.
const MAX_ID_LEN: usize = 128;
/// Read size when streaming a vmcore.
const STREAM_CHUNK: usize = 256 * 1024;
/// Prefix of a crash directory being deleted (hidden, never listed).
const DELETING_PREFIX: &str = ".deleting-";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/vmcores", get(list))
        .route("/v1/vmcores/{id}", get(show).delete(delete))
        .route("/v1/vmcores/{id}/vmcore", get(download))
        .route("/v1/vmcores/{id}/dmesg", get(dmesg))
        .route("/v1/vmcores/{id}/kexec-dmesg", get(kexec_dmesg))
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

/// The list view of a crash.
fn summary(entry: &CrashEntry) -> Value {
    match &entry.meta {
        Some(meta) => json!({
            "id": entry.id,
            "vm": meta.vm,
            "created": meta.created,
            "created_unix_ms": meta.created_unix_ms,
            "trigger": meta.trigger,
            "reason": meta.reason,
            "size": meta.sizes.vmcore_apparent_bytes,
            "on_disk": meta.sizes.vmcore_on_disk_bytes,
        }),
        None => json!({ "id": entry.id, "meta": null }),
    }
}

/// `GET /v1/vmcores`' query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only this VM's vmcores.
    vm: Option<String>,
}

async fn list(State(state): State<AppState>, Query(query): Query<ListQuery>) -> Result<axum::Json<Value>, ApiError> {
    let store = state.store().clone();
    let entries = tokio::task::spawn_blocking(move || store.list())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let vmcores: Vec<Value> = entries
        .iter()
        .filter(|e| query.vm.as_deref().is_none_or(|vm| e.meta.as_ref().is_some_and(|m| m.vm == vm)))
        .map(summary)
        .collect();
    Ok(axum::Json(json!({ "vmcores": vmcores })))
}

async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    let dir = crash_dir(&state, &id).await?;
    let meta: Option<CrashMeta> =
        tokio::fs::read(dir.join(FILE_META)).await.ok().and_then(|b| serde_json::from_slice(&b).ok());
    let mut files = serde_json::Map::new();
    for name in [FILE_VMCORE, FILE_VMCORE_DMESG, FILE_KEXEC_DMESG, FILE_META] {
        if let Ok(m) = tokio::fs::metadata(dir.join(name)).await {
            use std::os::unix::fs::MetadataExt;
            files.insert(name.into(), json!({ "bytes": m.len(), "on_disk_bytes": m.blocks() * 512 }));
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
    Ok(axum::Json(json!({
        "id": id,
        "meta": meta,
        "summary": summary,
        "summary_error": summary_error,
        "files": files,
        "links": {
            "vmcore": format!("{base}/vmcore"),
            "dmesg": format!("{base}/dmesg"),
            "kexec_dmesg": format!("{base}/kexec-dmesg"),
            "backtrace": format!("{base}/backtrace"),
            "tasks": format!("{base}/tasks"),
        },
    })))
}

/// `GET .../vmcore`'s query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DownloadQuery {
    /// `elf` (the default) or `kdump-zstd`.
    format: Option<String>,
}

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

async fn dmesg(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    text_file(&state, &id, FILE_VMCORE_DMESG).await
}

async fn kexec_dmesg(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    text_file(&state, &id, FILE_KEXEC_DMESG).await
}

async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let dir = crash_dir(&state, &id).await?;
    // Renamed first, so it disappears from listings at once; downloads already open go on.
    let hidden = state.store().dir().join(format!("{DELETING_PREFIX}{id}-{}", std::process::id()));
    tokio::fs::rename(&dir, &hidden).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ApiError::not_found(format!("no vmcore {id:?}")),
        _ => ApiError::internal(format!("cannot delete {}: {e}", dir.display())),
    })?;
    tokio::fs::remove_dir_all(&hidden)
        .await
        .map_err(|e| ApiError::internal(format!("cannot remove {}: {e}", hidden.display())))?;
    // A conversion cached for it goes too.
    let _ = tokio::fs::remove_file(kdump_cache(&state, &id)).await;
    tracing::info!("deleted vmcore {id}");
    Ok(StatusCode::NO_CONTENT)
}
