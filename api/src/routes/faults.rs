//! `POST /v1/vms/{id}/faults`: inject a fault into the guest kernel.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::CONTROL_TIMEOUT;
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::state::AppState;

/// The faults the guest can inject (docs/watchdogs.md, "Fault injection").
pub const FAULT_KINDS: [&str; 9] =
    ["softlockup", "hardlockup", "hung_task", "deadlock", "panic", "oops", "bug", "sysrq_crash", "stack_overflow"];
/// Longest `duration_ms`: an hour.
const MAX_DURATION_MS: u64 = 3_600_000;
/// Longest panic message (the guest's limit).
const MAX_MESSAGE_LEN: usize = 256;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/vms/{id}/faults", post(inject))
}

/// A fault to inject.
#[derive(Deserialize)]
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

async fn inject(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(fault): Json<Fault>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
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
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"kind": fault.kind, "cpu": cpu, "pid": result.get("pid")}))))
}
