//! `POST /v1/vms/{id}/faults`: inject a fault into the guest kernel.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{CONTROL_TIMEOUT, VM_ID};
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::openapi::{BodyErrors, ControlErrors};
use crate::state::AppState;

/// The faults the guest can inject (docs/watchdogs.md, "Fault injection").
pub const FAULT_KINDS: [&str; 9] =
    ["softlockup", "hardlockup", "hung_task", "deadlock", "panic", "oops", "bug", "sysrq_crash", "stack_overflow"];
/// Longest `duration_ms`: an hour.
const MAX_DURATION_MS: u64 = 3_600_000;
/// Longest panic message (the guest's limit).
const MAX_MESSAGE_LEN: usize = 256;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(inject))
}

/// A fault to inject.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Fault {
    /// One of `FAULT_KINDS`.
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
    if !FAULT_KINDS.contains(&fault.kind.as_str()) {
        return Err(ApiError::invalid(format!(
            "unknown fault {:?}; the faults are {}",
            fault.kind,
            FAULT_KINDS.join(", ")
        )));
    }
    let cpu = fault.cpu.unwrap_or(0);
    if cpu >= vm.spec.vcpus {
        return Err(ApiError::invalid(format!("cpu is {cpu}; VM {id} has vCPUs 0 to {}", vm.spec.vcpus - 1)));
    }
    let mut request = json!({"cmd": "inject", "fault": fault.kind, "cpu": cpu});
    if let Some(ms) = fault.duration_ms {
        if ms == 0 || ms > MAX_DURATION_MS {
            return Err(ApiError::invalid(format!("duration_ms is {ms}; it is 1 to {MAX_DURATION_MS}")));
        }
        request["duration_ms"] = json!(ms);
    }
    if let Some(message) = fault.message {
        if fault.kind != "panic" {
            return Err(ApiError::invalid("message goes with the panic fault only"));
        }
        if message.len() > MAX_MESSAGE_LEN {
            return Err(ApiError::invalid(format!("message is {} bytes; at most {MAX_MESSAGE_LEN}", message.len())));
        }
        request["message"] = json!(message);
    }
    let result = vm.control(request, CONTROL_TIMEOUT).await?;
    let pid = result.get("pid").cloned();
    Ok((StatusCode::ACCEPTED, axum::Json(FaultAccepted { kind: fault.kind, cpu, pid })))
}
