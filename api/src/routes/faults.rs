//! `POST /v1/vms/{id}/faults`: inject a fault into the guest kernel, one of ours or an LKDTM
//! crash type (at a crash point).

use axum::extract::State;
use axum::http::StatusCode;
use crashvisor_abi::control::LkdtmRequest;
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
    /// One of `FAULT_KINDS` (or give `lkdtm`).
    kind: Option<String>,
    /// An LKDTM crash type by its Linux name (`GET /v1/lkdtm` lists them), instead of `kind`.
    lkdtm: Option<String>,
    /// With `lkdtm`: the LKDTM crash point it runs at (default `DIRECT`: at once, in a task).
    cpoint: Option<String>,
    /// With `lkdtm` at a crash point: fire on this many hits (default LKDTM's `cpoint_count`).
    count: Option<u32>,
    /// The CPU it runs on (default 0); at an LKDTM crash point, the only CPU whose hits count
    /// (default: every CPU's).
    cpu: Option<u32>,
    /// How long a lockup, deadlock or hung task lasts (default: until reboot).
    duration_ms: Option<u64>,
    /// The panic message (`panic` only).
    message: Option<String>,
}

/// A fault the guest accepted.
#[derive(Serialize, ToSchema)]
struct FaultAccepted {
    /// The fault (with `kind`).
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    /// The LKDTM crash type (with `lkdtm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    lkdtm: Option<String>,
    /// The LKDTM crash point it is registered at (a crash point other than `DIRECT`).
    #[serde(skip_serializing_if = "Option::is_none")]
    cpoint: Option<Value>,
    /// The hits it fires on (a crash point other than `DIRECT`).
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<Value>,
    /// The CPU it runs on, or whose hits count.
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<u32>,
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
    if let Some(cpu) = fault.cpu.filter(|&cpu| cpu >= vm.spec.vcpus) {
        return Err(ApiError::invalid(format!("cpu is {cpu}; VM {id} has vCPUs 0 to {}", vm.spec.vcpus - 1)));
    }
    let request = match (&fault.kind, &fault.lkdtm) {
        (Some(kind), None) => fault_request(kind, &fault)?,
        (None, Some(lkdtm)) => lkdtm_request(lkdtm, &fault)?,
        (Some(_), Some(_)) => return Err(ApiError::invalid("give either kind or lkdtm, not both")),
        (None, None) => {
            return Err(ApiError::invalid(format!(
                "give a kind ({}) or an LKDTM crash type in lkdtm (GET /v1/lkdtm lists them)",
                FAULT_KINDS.join(", ")
            )))
        }
    };
    let result = vm.control(request, CONTROL_TIMEOUT).await?;
    let lkdtm_point = fault.lkdtm.is_some() && fault.cpoint.as_deref().is_some_and(|p| p != "DIRECT");
    let cpu = match (fault.cpu, lkdtm_point) {
        (None, false) => Some(0),
        (cpu, _) => cpu,
    };
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(FaultAccepted {
            kind: fault.kind,
            lkdtm: fault.lkdtm,
            cpoint: result.get("cpoint").cloned(),
            count: result.get("count").cloned(),
            cpu,
            pid: result.get("pid").cloned(),
        }),
    ))
}

/// The control request for one of our faults.
fn fault_request(kind: &str, fault: &Fault) -> Result<Value, ApiError> {
    if !FAULT_KINDS.contains(&kind) {
        return Err(ApiError::invalid(format!(
            "unknown fault {kind:?}; the faults are {} (LKDTM's crash types go in lkdtm)",
            FAULT_KINDS.join(", ")
        )));
    }
    if fault.cpoint.is_some() || fault.count.is_some() {
        return Err(ApiError::invalid("cpoint and count go with lkdtm, not kind"));
    }
    let mut request = json!({"cmd": "inject", "fault": kind, "cpu": fault.cpu.unwrap_or(0)});
    if let Some(ms) = fault.duration_ms {
        if ms == 0 || ms > MAX_DURATION_MS {
            return Err(ApiError::invalid(format!("duration_ms is {ms}; it is 1 to {MAX_DURATION_MS}")));
        }
        request["duration_ms"] = json!(ms);
    }
    if let Some(message) = &fault.message {
        if kind != "panic" {
            return Err(ApiError::invalid("message goes with the panic fault only"));
        }
        if message.len() > MAX_MESSAGE_LEN {
            return Err(ApiError::invalid(format!("message is {} bytes; at most {MAX_MESSAGE_LEN}", message.len())));
        }
        request["message"] = json!(message);
    }
    Ok(request)
}

/// The control request for an LKDTM crash type, checked as the guest checks it (an unknown or
/// unsupported type or crash point is refused here, with the reason).
fn lkdtm_request(lkdtm: &str, fault: &Fault) -> Result<Value, ApiError> {
    if fault.duration_ms.is_some() || fault.message.is_some() {
        return Err(ApiError::invalid("duration_ms and message go with kind, not lkdtm"));
    }
    let checked = LkdtmRequest::new(lkdtm, fault.cpoint.as_deref(), fault.count, fault.cpu)
        .map_err(|e| ApiError::invalid(format!("{e} (GET /v1/lkdtm lists the crash types and points)")))?;
    let mut request = json!({"cmd": "inject", "lkdtm": checked.kind.as_str(), "cpoint": checked.point.as_str()});
    if let Some(count) = checked.count {
        request["count"] = json!(count);
    }
    if let Some(cpu) = checked.cpu {
        request["cpu"] = json!(cpu);
    }
    Ok(request)
}
