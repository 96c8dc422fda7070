//! `GET /v1/events` and `GET /v1/vms/{id}/events`: the service's events as Server-Sent Events.
//! Each message has the event's sequence number as its `id`, its name as its `event`, and the
//! event as JSON `data`. `?since=N` (or a reconnecting client's `Last-Event-ID`) first replays
//! the retained events after N; `?since=0` replays all of them.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::VM_ID;
use crate::error::{ApiError, ErrorBody};
use crate::events::ServiceEvent;
use crate::extract::{Path, Query};
use crate::openapi::LookupErrors;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(all)).routes(routes!(of_vm))
}

/// The query of both endpoints.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Replay retained events after this sequence number first (0: all retained).
    /// `Last-Event-ID` does the same.
    since: Option<u64>,
    /// Only this VM's events (`/v1/events` only).
    vm: Option<String>,
}

/// Every VM's events (SSE).
#[utoipa::path(get, path = "/v1/events", params(EventsQuery), responses(
    (status = 200, description = "A Server-Sent Events stream; each message's data is an Event.",
        content_type = "text/event-stream", body = ServiceEvent),
    (status = 400, description = "A bad query or Last-Event-ID.", body = ErrorBody),
))]
async fn all(
    State(state): State<AppState>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let since = since(&query, &headers)?;
    Ok(sse(&state, since, query.vm, false).into_response())
}

/// One VM's events (SSE); the stream ends when the VM is deleted.
#[utoipa::path(get, path = "/v1/vms/{id}/events", params(("id" = String, Path, description = VM_ID), EventsQuery),
    responses(
        (status = 200, description = "A Server-Sent Events stream; each message's data is an Event.",
            content_type = "text/event-stream", body = ServiceEvent),
        LookupErrors,
    ))]
async fn of_vm(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if query.vm.is_some() {
        return Err(ApiError::bad_request("the VM is in the path; drop ?vm="));
    }
    state.supervisor().get(&id)?;
    let since = since(&query, &headers)?;
    Ok(sse(&state, since, Some(id), true).into_response())
}

/// `?since=`, else `Last-Event-ID`, else none (live events only).
fn since(query: &EventsQuery, headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    if query.since.is_some() {
        return Ok(query.since);
    }
    match headers.get("last-event-id") {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be an event's sequence number")),
    }
}

/// The stream of events after `since` (of VM `vm`, if given); it ends with the VM's deletion
/// when `ends_with_deletion`.
fn sse(
    state: &AppState,
    since: Option<u64>,
    vm: Option<String>,
    ends_with_deletion: bool,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let subscription = state.bus().subscribe(since);
    let wanted = move |e: &ServiceEvent| vm.as_deref().is_none_or(|vm| e.vm == vm);
    let filter = wanted.clone();
    let backlog = stream::iter(subscription.backlog).filter(move |e| std::future::ready(filter(e)));
    let backlog = backlog.map(|event| message(&event));
    // A VM's own stream ends with its deletion.
    let live = stream::unfold(Some(subscription.live), move |live| {
        let wanted = wanted.clone();
        async move {
            let mut live = live?;
            loop {
                match live.recv().await {
                    Ok(event) if wanted(&event) => {
                        let last = ends_with_deletion && event.event == "deleted";
                        return Some((message(&event), (!last).then_some(live)));
                    }
                    Ok(_) => continue,
                    Err(RecvError::Lagged(skipped)) => {
                        // Say so: the client can catch up with ?since= from the last id it saw.
                        let lagged = Event::default().event("lagged").data(format!("{{\"skipped\":{skipped}}}"));
                        return Some((lagged, Some(live)));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    });
    Sse::new(backlog.chain(live).map(Ok)).keep_alive(KeepAlive::default())
}

fn message(event: &Arc<ServiceEvent>) -> Event {
    let data = serde_json::to_string(&**event).unwrap_or_else(|_| "{}".into());
    Event::default().id(event.seq.to_string()).event(event.event.clone()).data(data)
}
