//! `GET /v1/vmcores/{id}/backtrace` and `/tasks`: crash analysis of a stored vmcore, as JSON
//! (`dumpd bt --json`, `dumpd ps --json`) or, with `?format=text`, as crash prints it.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::vmcores::{locate, vmcore_file};
use super::{TEXT_PLAIN, VMCORE_ID};
use crate::analysis::{self, Backtraces, Which};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Path, Query};
use crate::openapi::LookupErrors;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(backtrace)).routes(routes!(tasks))
}

/// The 422 of both endpoints.
const UNANALYSABLE: &str = "A bad selector or format, or a vmcore that cannot be analysed (unanalysable).";

/// `json` (the default) or `text`.
fn text_wanted(format: Option<&str>) -> Result<bool, ApiError> {
    match format {
        None | Some("json") => Ok(false),
        Some("text") => Ok(true),
        Some(other) => Err(ApiError::invalid(format!("format is json or text, not {other:?}"))),
    }
}

/// `GET .../backtrace`'s query: one of `cpu`, `pid`, `all=1`; none gives the panicking CPU's.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct BacktraceQuery {
    /// One CPU's.
    cpu: Option<u32>,
    /// One task's.
    pid: Option<u32>,
    /// `1`: every CPU's.
    all: Option<String>,
    /// `json` (the default) or `text`.
    format: Option<String>,
}

/// Backtraces by frame pointers (dumpd bt).
///
/// The panicking CPU's by default, or one cpu's, one pid's, or all=1; symbolised from the
/// embedded guest kernel.
#[utoipa::path(get, path = "/v1/vmcores/{id}/backtrace",
    params(("id" = String, Path, description = VMCORE_ID), BacktraceQuery),
    responses((status = 200, description = "JSON, or text with format=text.",
        content((Backtraces = "application/json"), (String = "text/plain"))),
        (status = 422, description = UNANALYSABLE, body = ErrorBody), LookupErrors))]
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
    let vmcore = vmcore_file(&state, &locate(&state, &id).await?).await?;
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
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct TasksQuery {
    /// `json` (the default) or `text`.
    format: Option<String>,
}

/// The task list (dumpd ps).
#[utoipa::path(get, path = "/v1/vmcores/{id}/tasks",
    params(("id" = String, Path, description = VMCORE_ID), TasksQuery),
    responses((status = 200, description = "JSON (`dumpd ps --json`), or text with format=text.",
        content((Object = "application/json"), (String = "text/plain"))),
        (status = 422, description = UNANALYSABLE, body = ErrorBody), LookupErrors))]
async fn tasks(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<TasksQuery>,
) -> Result<Response, ApiError> {
    let text = text_wanted(query.format.as_deref())?;
    let vmcore = vmcore_file(&state, &locate(&state, &id).await?).await?;
    let tasks = tokio::task::spawn_blocking(move || analysis::tasks(&vmcore)).await.map_err(ApiError::internal)??;
    if text {
        return Ok(([(header::CONTENT_TYPE, TEXT_PLAIN)], tasks.to_string()).into_response());
    }
    Ok(axum::Json(tasks).into_response())
}
