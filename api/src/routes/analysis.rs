//! `GET /v1/vmcores/{id}/backtrace` and `/tasks`: crash analysis of a stored vmcore, as JSON
//! (`dumpd bt --json`, `dumpd ps --json`) or, with `?format=text`, as crash prints it.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use dumpd::store::FILE_VMCORE;
use serde::Deserialize;

use super::vmcores::crash_dir;
use super::TEXT_PLAIN;
use crate::analysis::{self, Which};
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/vmcores/{id}/backtrace", get(backtrace)).route("/v1/vmcores/{id}/tasks", get(tasks))
}

/// `json` (the default) or `text`.
fn text_wanted(format: Option<&str>) -> Result<bool, ApiError> {
    match format {
        None | Some("json") => Ok(false),
        Some("text") => Ok(true),
        Some(other) => Err(ApiError::invalid(format!("format is json or text, not {other:?}"))),
    }
}

/// `GET .../backtrace`'s query: one of `cpu`, `pid`, `all=1`; none gives the panicking CPU's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BacktraceQuery {
    cpu: Option<u32>,
    pid: Option<u32>,
    all: Option<String>,
    format: Option<String>,
}

async fn backtrace(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<BacktraceQuery>,
) -> Result<Response, ApiError> {
    let text = text_wanted(query.format.as_deref())?;
    let all = match query.all.as_deref() {
        None | Some("0" | "false") => false,
        Some("1" | "true" | "") => true,
        Some(other) => return Err(ApiError::bad_request(format!("all is 1 or 0, not {other:?}"))),
    };
    let which = match (all, query.cpu, query.pid) {
        (false, None, None) => Which::PanicCpu,
        (true, None, None) => Which::All,
        (false, Some(cpu), None) => Which::Cpu(cpu),
        (false, None, Some(pid)) => Which::Pid(pid),
        _ => return Err(ApiError::invalid("give at most one of cpu, pid and all")),
    };
    let vmcore = crash_dir(&state, &id).await?.join(FILE_VMCORE);
    let blocking = state.clone();
    let traces = tokio::task::spawn_blocking(move || analysis::backtraces(&vmcore, blocking.symbols(), which))
        .await
        .map_err(ApiError::internal)??;
    if text {
        let text: Vec<String> = traces.backtraces.iter().map(ToString::to_string).collect();
        return Ok(([(header::CONTENT_TYPE, TEXT_PLAIN)], text.join("\n")).into_response());
    }
    Ok(axum::Json(traces).into_response())
}

/// `GET .../tasks`' query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TasksQuery {
    format: Option<String>,
}

async fn tasks(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<TasksQuery>,
) -> Result<Response, ApiError> {
    let text = text_wanted(query.format.as_deref())?;
    let vmcore = crash_dir(&state, &id).await?.join(FILE_VMCORE);
    let tasks = tokio::task::spawn_blocking(move || analysis::tasks(&vmcore)).await.map_err(ApiError::internal)??;
    if text {
        return Ok(([(header::CONTENT_TYPE, TEXT_PLAIN)], tasks.to_string()).into_response());
    }
    Ok(axum::Json(tasks).into_response())
}
