//! `/v1/vms`: create, list, show and delete VMs.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use crate::clock;
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::state::AppState;
use crate::supervisor::spec::CreateVm;
use crate::supervisor::VmHandle;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/vms", get(list).post(create)).route("/v1/vms/{id}", get(show).delete(delete))
}

/// The JSON view of a VM.
pub fn view(vm: &VmHandle) -> Value {
    let status = vm.status();
    let spec = &vm.spec;
    json!({
        "id": spec.name,
        "name": spec.name,
        "state": status.state,
        "pid": status.pid,
        "vcpus": spec.vcpus,
        "memory_mib": spec.memory_mib,
        "cmdline": spec.cmdline,
        "kernel": spec.kernel.as_ref().map(|k| k.display().to_string()),
        "kdump": spec.kdump,
        "nmi_watchdog": spec.nmi_watchdog,
        "on_panic": spec.on_panic,
        "on_crash_loaded": spec.on_crash_loaded,
        "dump_format": spec.dump_format,
        "created": clock::rfc3339(vm.created),
        "uptime_secs": status.booted_at.map(|t| t.elapsed().as_secs_f64()),
        "release": status.release,
        "boots": status.boots,
        "crashes": status.crashes,
        "vmcores": status.vmcores,
        "last_panic": status.last_panic,
        "last_lockup": status.last_lockup,
        "failure": status.failure,
    })
}

async fn create(State(state): State<AppState>, Json(request): Json<CreateVm>) -> Result<Response, ApiError> {
    let vm = state.supervisor().create(request)?;
    let location = format!("/v1/vms/{}", vm.name());
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], axum::Json(view(&vm))).into_response())
}

async fn list(State(state): State<AppState>) -> axum::Json<Value> {
    let vms: Vec<Value> = state.supervisor().list().iter().map(view).collect();
    axum::Json(json!({ "vms": vms }))
}

async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(view(&state.supervisor().get(&id)?)))
}

async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    state.supervisor().delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
