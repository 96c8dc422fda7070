//! `POST /v1/vms/{id}/faults`: inject a fault into the guest kernel.

use axum::extract::State;
use axum::http::StatusCode;
use crashvisor_abi::control::{FaultKind, MAX_MESSAGE_LEN};
use crashvisor_control::{Request, WireName};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{CONTROL_TIMEOUT, VM_ID};
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::openapi::{BodyErrors, ControlErrors};
use crate::state::AppState;

/// Longest `duration_ms`: an hour.
const MAX_DURATION_MS: u64 = 3_600_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(inject))
}

/// A fault to inject.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Fault {
    /// A `FaultKind` name (docs/watchdogs.md, "Fault injection").
    kind: String,
    /// The CPU it runs on (default 0).
    cpu: Option<u32>,
    /// How long a lockup, deadlock or hung task lasts (default: until reboot).
    duration_ms: Option<u64>,
    /// The panic message (`panic` only).
    message: Option<String>,
}

/// A fault the guest accepted.
#[derive(Serialize, ToSchema)]
struct FaultAccepted {
    /// The fault.
    kind: String,
    /// The CPU it runs on.
    cpu: u32,
    /// The guest task that runs it, if it has one.
    pid: Option<Value>,
}

/// Inject a fault into the guest kernel.
#[utoipa::path(post, path = "/v1/vms/{id}/faults", params(("id" = String, Path, description = VM_ID)),
    request_body = Fault,
    responses(
        (status = 202, description = "The guest accepted the fault; it starts now.", body = FaultAccepted),
        ControlErrors,
        BodyErrors,
    ))]
async fn inject(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(fault): Json<Fault>,
) -> Result<(StatusCode, axum::Json<FaultAccepted>), ApiError> {
    let vm = state.supervisor().get(&id)?;
    let kind = FaultKind::parse(&fault.kind).map_err(ApiError::invalid)?;
    let cpu = fault.cpu.unwrap_or(0);
    if cpu >= vm.spec.vcpus {
        return Err(ApiError::invalid(format!("cpu is {cpu}; VM {id} has vCPUs 0 to {}", vm.spec.vcpus - 1)));
    }
    if let Some(ms) = fault.duration_ms.filter(|&ms| ms == 0 || ms > MAX_DURATION_MS) {
        return Err(ApiError::invalid(format!("duration_ms is {ms}; it is 1 to {MAX_DURATION_MS}")));
    }
    if let Some(message) = &fault.message {
        if kind != FaultKind::Panic {
            return Err(ApiError::invalid("message goes with the panic fault only"));
        }
        if message.len() > MAX_MESSAGE_LEN {
            return Err(ApiError::invalid(format!("message is {} bytes; at most {MAX_MESSAGE_LEN}", message.len())));
        }
    }
    let request =
        Request::Inject { fault: kind, cpu: Some(cpu), duration_ms: fault.duration_ms, message: fault.message };
    let result = vm.control(request, CONTROL_TIMEOUT).await?;
    let pid = result.get("pid").cloned();
    Ok((StatusCode::ACCEPTED, axum::Json(FaultAccepted { kind: fault.kind, cpu, pid })))
}
