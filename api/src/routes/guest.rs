//! What the guest kernel answers itself over the control channel: sysctls, the kdump service
//! and the kernel log.

use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use crashvisor_abi::control::{KdumpAction, KdumpOp};
use crashvisor_control::{Request, SysctlValue, WireName};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{CONTROL_TIMEOUT, TEXT_PLAIN, VM_ID};
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::openapi::{BodyErrors, ControlErrors};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sysctl_get, sysctl_put))
        .routes(routes!(kdump_get, kdump_put))
        .routes(routes!(dmesg))
}

/// A sysctl and its value.
#[derive(Serialize, ToSchema)]
struct Sysctl {
    /// `kernel.NAME`.
    name: String,
    /// Its value, as the guest reads it back.
    value: Value,
}

/// Read a sysctl.
#[utoipa::path(get, path = "/v1/vms/{id}/sysctl/{name}",
    params(("id" = String, Path, description = VM_ID), ("name" = String, Path, description = "kernel.NAME")),
    responses((status = 200, description = "OK", body = Sysctl), ControlErrors))]
async fn sysctl_get(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> Result<axum::Json<Sysctl>, ApiError> {
    let vm = state.supervisor().get(&id)?;
    let result = vm.control(Request::SysctlGet { name: name.clone() }, CONTROL_TIMEOUT).await?;
    Ok(axum::Json(Sysctl { name, value: result["value"].clone() }))
}

/// `PUT .../sysctl/{name}`'s body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SysctlBody {
    /// A string, number or boolean.
    value: Value,
}

/// Write a sysctl.
#[utoipa::path(put, path = "/v1/vms/{id}/sysctl/{name}",
    params(("id" = String, Path, description = VM_ID), ("name" = String, Path, description = "kernel.NAME")),
    request_body = SysctlBody,
    responses((status = 200, description = "The value as read back.", body = Sysctl), ControlErrors, BodyErrors))]
async fn sysctl_put(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    Json(body): Json<SysctlBody>,
) -> Result<axum::Json<Sysctl>, ApiError> {
    let value = serde_json::from_value::<SysctlValue>(body.value)
        .map_err(|_| ApiError::invalid("value must be a string, a number or a boolean"))?;
    let vm = state.supervisor().get(&id)?;
    let result = vm.control(Request::SysctlSet { name: name.clone(), value }, CONTROL_TIMEOUT).await?;
    Ok(axum::Json(Sysctl { name, value: result["value"].clone() }))
}

/// A kdump request that changes no setting.
fn kdump(op: KdumpOp) -> Request {
    Request::Kdump { op, dump_level: None, final_action: None, failure_action: None }
}

/// The kdump service's status.
#[utoipa::path(get, path = "/v1/vms/{id}/kdump", params(("id" = String, Path, description = VM_ID)), responses(
    (status = 200, description = "The guest's kdump status: state, dump_level, final_action, failure_action.", body = Object),
    ControlErrors,
))]
async fn kdump_get(State(state): State<AppState>, Path(id): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    let vm = state.supervisor().get(&id)?;
    Ok(axum::Json(vm.control(kdump(KdumpOp::Status), CONTROL_TIMEOUT).await?))
}

/// `PUT .../kdump`'s body: settings to change, then start or stop the service.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct KdumpChange {
    /// Start (true) or stop (false) the kdump service.
    enabled: Option<bool>,
    /// makedumpfile `-d` level, 0-31.
    dump_level: Option<u32>,
    /// After a dump: `reboot`, `halt`, `poweroff`.
    final_action: Option<String>,
    /// After a failed dump: the same choices.
    failure_action: Option<String>,
}

/// Configure, start or stop kdump.
#[utoipa::path(put, path = "/v1/vms/{id}/kdump", params(("id" = String, Path, description = VM_ID)),
    request_body = KdumpChange,
    responses((status = 200, description = "The status after the change.", body = Object), ControlErrors, BodyErrors))]
async fn kdump_put(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(change): Json<KdumpChange>,
) -> Result<axum::Json<Value>, ApiError> {
    let vm = state.supervisor().get(&id)?;
    let action = |field, action: Option<String>| {
        action.map(|a| KdumpAction::parse(&a).map_err(|e| ApiError::invalid(format!("{field}: {e}")))).transpose()
    };
    let config = Request::Kdump {
        op: KdumpOp::Config,
        dump_level: change.dump_level,
        final_action: action("final_action", change.final_action)?,
        failure_action: action("failure_action", change.failure_action)?,
    };
    if config != kdump(KdumpOp::Config) {
        vm.control(config, CONTROL_TIMEOUT).await?;
    }
    if let Some(enabled) = change.enabled {
        vm.control(kdump(if enabled { KdumpOp::Start } else { KdumpOp::Stop }), CONTROL_TIMEOUT).await?;
    }
    Ok(axum::Json(vm.control(kdump(KdumpOp::Status), CONTROL_TIMEOUT).await?))
}

/// `GET .../dmesg`'s query.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DmesgQuery {
    /// First record sequence number (default 0).
    since: Option<u64>,
}

/// The guest kernel's log, from the guest.
#[utoipa::path(get, path = "/v1/vms/{id}/dmesg", operation_id = "vm_dmesg", params(("id" = String, Path, description = VM_ID), DmesgQuery),
    responses(
        (status = 200, description = "Log lines; header X-Dmesg-Next is the next record's number.",
            content_type = "text/plain", body = String,
            headers(("X-Dmesg-Next" = u64, description = "The next record's sequence number."))),
        ControlErrors,
    ))]
async fn dmesg(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<DmesgQuery>,
) -> Result<Response, ApiError> {
    let vm = state.supervisor().get(&id)?;
    let result = vm.control(Request::Dmesg { since: query.since }, CONTROL_TIMEOUT).await?;
    let mut text = result["text"].as_str().unwrap_or("").to_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let next = result["next"].as_u64().unwrap_or(0);
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN)),
        (HeaderName::from_static("x-dmesg-next"), HeaderValue::from(next)),
    ];
    Ok((headers, text).into_response())
}
