//! What the guest kernel answers itself over the control channel: sysctls, the kdump service
//! and the kernel log.

use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use crashvisor_abi::control::{KdumpAction, KdumpOp};
use crashvisor_control::{Request, SysctlValue, WireName};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{CONTROL_TIMEOUT, TEXT_PLAIN};
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/vms/{id}/sysctl/{name}", get(sysctl_get).put(sysctl_put))
        .route("/v1/vms/{id}/kdump", get(kdump_get).put(kdump_put))
        .route("/v1/vms/{id}/dmesg", get(dmesg))
}

async fn sysctl_get(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    let vm = state.supervisor().get(&id)?;
    let result = vm.control(Request::SysctlGet { name: name.clone() }, CONTROL_TIMEOUT).await?;
    Ok(axum::Json(json!({"name": name, "value": result["value"]})))
}

/// `PUT .../sysctl/{name}`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SysctlBody {
    /// A string, number or boolean.
    value: Value,
}

async fn sysctl_put(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    Json(body): Json<SysctlBody>,
) -> Result<axum::Json<Value>, ApiError> {
    let value = serde_json::from_value::<SysctlValue>(body.value)
        .map_err(|_| ApiError::invalid("value must be a string, a number or a boolean"))?;
    let vm = state.supervisor().get(&id)?;
    let result = vm.control(Request::SysctlSet { name: name.clone(), value }, CONTROL_TIMEOUT).await?;
    Ok(axum::Json(json!({"name": name, "value": result["value"]})))
}

fn kdump(op: KdumpOp) -> Request {
    Request::Kdump { op, dump_level: None, final_action: None, failure_action: None }
}

async fn kdump_get(State(state): State<AppState>, Path(id): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    let vm = state.supervisor().get(&id)?;
    Ok(axum::Json(vm.control(kdump(KdumpOp::Status), CONTROL_TIMEOUT).await?))
}

/// `PUT .../kdump`'s body: settings to change, then start or stop the service.
#[derive(Deserialize)]
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
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DmesgQuery {
    /// First record sequence number (default 0).
    since: Option<u64>,
}

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
