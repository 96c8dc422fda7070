//! The service itself: `/v1/healthz`, `/v1/metrics`, `/v1/openapi.json`.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::limits::Limits;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(metrics)).routes(routes!(openapi))
}

/// The service's health.
#[derive(Serialize, ToSchema)]
struct Health {
    /// Always `ok`.
    status: &'static str,
    /// The service's version.
    version: &'static str,
    /// Seconds since it started.
    uptime_secs: f64,
    /// VMs it holds.
    vms: usize,
    /// Its crash store (the spool, with a fleet store).
    crash_dir: String,
    /// The fleet's store it ships crashes to, `s3://BUCKET/PREFIX`.
    #[serde(skip_serializing_if = "Option::is_none")]
    crash_store: Option<String>,
    /// Its host id in the fleet's store.
    #[serde(skip_serializing_if = "Option::is_none")]
    host_id: Option<String>,
    /// Its limits.
    limits: Limits,
}

/// Liveness, version, limits (never needs the token).
#[utoipa::path(get, path = "/v1/healthz", security(()), responses((status = 200, description = "OK", body = Health)))]
async fn healthz(State(state): State<AppState>) -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: state.started().elapsed().as_secs_f64(),
        vms: state.supervisor().list().len(),
        crash_dir: state.store().dir().display().to_string(),
        crash_store: state.fleet().map(|f| f.bucket().url().to_string()),
        host_id: state.fleet().map(|f| f.host().to_owned()),
        limits: state.supervisor().limits(),
    })
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/v1/metrics", responses(
    (status = 200, description = "OpenMetrics text 1.0.0.", content_type = "application/openmetrics-text", body = String),
))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let text = state.metrics().render(&state.supervisor().count_by_state());
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text)
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", responses((status = 200, description = "OpenAPI 3.1.", body = Object)))]
async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], crate::openapi::json())
}
