//! `GET /v1/vms/{id}/console`: the VM's console output (COM1), kept or followed.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{TEXT_PLAIN, VM_ID};
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::openapi::LookupErrors;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(console))
}

/// The query.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ConsoleQuery {
    /// `1` (or `true`) keeps the response open and streams new output until the VM ends; `0`
    /// (or `false`, the default) does not.
    follow: Option<String>,
}

/// The console (COM1) output: the last 256 KiB.
#[utoipa::path(get, path = "/v1/vms/{id}/console", params(("id" = String, Path, description = VM_ID), ConsoleQuery),
    responses((status = 200, description = "Console bytes.", content_type = "text/plain", body = String), LookupErrors))]
async fn console(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<ConsoleQuery>,
) -> Result<Response, ApiError> {
    let vm = state.supervisor().get(&id)?;
    let follow = match query.follow.as_deref() {
        None | Some("0" | "false") => false,
        Some("1" | "true" | "") => true,
        Some(other) => return Err(ApiError::bad_request(format!("follow is 1 or 0, not {other:?}"))),
    };
    let headers = [(header::CONTENT_TYPE, TEXT_PLAIN), (header::CACHE_CONTROL, "no-store")];
    if !follow {
        return Ok((headers, vm.console.snapshot()).into_response());
    }
    let follow = vm.console.follow();
    let backlog = stream::once(async move { Ok::<Bytes, Infallible>(follow.backlog) });
    let live = stream::unfold(follow.live, |live| async move {
        let mut live = live?;
        match live.recv().await {
            Ok(chunk) if chunk.is_empty() => None,
            Ok(chunk) => Some((Ok(chunk), Some(live))),
            Err(RecvError::Lagged(skipped)) => {
                let note = format!("\n[crashvisor: {skipped} console chunks skipped: this client read too slowly]\n");
                Some((Ok(Bytes::from(note)), Some(live)))
            }
            Err(RecvError::Closed) => None,
        }
    });
    Ok((headers, Body::from_stream(backlog.chain(live))).into_response())
}
