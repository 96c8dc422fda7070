//! The service itself: `/v1/healthz`, `/v1/metrics`, `/v1/openapi.json`.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use crate::state::AppState;

/// The OpenAPI description, checked in as `api/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/healthz", get(healthz))
        .route("/v1/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
}

async fn healthz(State(state): State<AppState>) -> axum::Json<Value> {
    let vms = state.supervisor().list().len();
    axum::Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.started().elapsed().as_secs_f64(),
        "vms": vms,
        "crash_dir": state.store().dir().display().to_string(),
        "limits": limits(&state),
    }))
}

fn limits(state: &AppState) -> Value {
    let l = state.supervisor().limits();
    json!({
        "max_vms": l.max_vms,
        "max_vcpus_per_vm": l.max_vcpus_per_vm,
        "max_total_vcpus": l.max_total_vcpus,
        "max_memory_mib_per_vm": l.max_memory_mib_per_vm,
        "max_total_memory_mib": l.max_total_memory_mib,
    })
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let text = state.metrics().render(&state.supervisor().count_by_state());
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text)
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_file_is_json_and_lists_every_route() {
        let doc: Value = serde_json::from_str(OPENAPI_JSON).expect("api/openapi.json is JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        let paths = doc["paths"].as_object().expect("paths");
        for route in [
            "/v1/vms",
            "/v1/vms/{id}",
            "/v1/vms/{id}/actions",
            "/v1/vms/{id}/faults",
            "/v1/vms/{id}/sysctl/{name}",
            "/v1/vms/{id}/kdump",
            "/v1/vms/{id}/console",
            "/v1/vms/{id}/dmesg",
            "/v1/vms/{id}/events",
            "/v1/events",
            "/v1/vmcores",
            "/v1/vmcores/{id}",
            "/v1/vmcores/{id}/vmcore",
            "/v1/vmcores/{id}/dmesg",
            "/v1/vmcores/{id}/kexec-dmesg",
            "/v1/vmcores/{id}/backtrace",
            "/v1/vmcores/{id}/tasks",
            "/v1/healthz",
            "/v1/metrics",
            "/v1/openapi.json",
        ] {
            assert!(paths.contains_key(route), "{route} is not in api/openapi.json");
        }
        assert_eq!(paths.len(), 20, "a route in api/openapi.json that the service does not serve");
    }
}
