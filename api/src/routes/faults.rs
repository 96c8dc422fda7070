//! `POST /v1/vms/{id}/faults`: inject a fault into the guest kernel, one of ours or an LKDTM
//! crash type (at a crash point).

use axum::extract::State;
use axum::http::StatusCode;
use crashvisor_abi::control::{FaultKind, LkdtmRequest, MAX_MESSAGE_LEN};
use crashvisor_abi::lkdtm::{CrashPoint, CrashType};
use crashvisor_control::{Injection, Request, WireName};
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

/// A fault to inject: `kind`, or an LKDTM crash type in `lkdtm`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Fault {
    /// A `FaultKind` name (docs/watchdogs.md, "Fault injection"), or give `lkdtm`.
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
    /// How long a lockup, deadlock or hung task lasts (default: until reboot; `kind` only).
    duration_ms: Option<u64>,
    /// The panic message (`panic` only).
    message: Option<String>,
}

/// A fault the guest accepted.
#[derive(Serialize, ToSchema)]
struct FaultAccepted {
    /// The fault (with `kind`).
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    /// The LKDTM crash type (with `lkdtm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    lkdtm: Option<&'static str>,
    /// The LKDTM crash point it is registered at (a crash point other than `DIRECT`).
    #[serde(skip_serializing_if = "Option::is_none")]
    cpoint: Option<Value>,
    /// The hits it fires on (a crash point other than `DIRECT`).
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<Value>,
    /// The CPU it runs on, or whose hits count (none: every CPU's).
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<u32>,
    /// The guest task that runs it, if it has one.
    pid: Option<Value>,
}

/// Inject a fault into the guest kernel: one of ours, or an LKDTM crash type at once
/// (`DIRECT`) or registered at a crash point (docs/lkdtm.md).
#[utoipa::path(post, path = "/v1/vms/{id}/faults", params(("id" = String, Path, description = VM_ID)),
    request_body = Fault,
    responses(
        (status = 202, description = "The guest accepted the fault; it starts now, or at its crash point.",
            body = FaultAccepted),
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
    let injection = match (fault.kind.as_deref(), fault.lkdtm.as_deref()) {
        (Some(kind), None) => fault_injection(kind, &fault)?,
        (None, Some(lkdtm)) => lkdtm_injection(lkdtm, &fault)?,
        (Some(_), Some(_)) => return Err(ApiError::invalid("give either kind or lkdtm, not both")),
        (None, None) => {
            let kinds: Vec<&str> = FaultKind::all().iter().map(|k| k.name()).collect();
            return Err(ApiError::invalid(format!(
                "give a kind ({}) or an LKDTM crash type in lkdtm (GET /v1/lkdtm lists them)",
                kinds.join(", ")
            )));
        }
    };
    let mut accepted = match &injection {
        Injection::Fault { fault, cpu, .. } => FaultAccepted {
            kind: Some(fault.name()),
            lkdtm: None,
            cpoint: None,
            count: None,
            cpu: Some(cpu.unwrap_or(0)),
            pid: None,
        },
        Injection::Lkdtm(LkdtmRequest { kind, point, cpu, .. }) => FaultAccepted {
            kind: None,
            lkdtm: Some(kind.name()),
            cpoint: None,
            count: None,
            cpu: if *point == CrashPoint::Direct { Some(cpu.unwrap_or(0)) } else { *cpu },
            pid: None,
        },
    };
    let result = vm.control(Request::Inject(injection), CONTROL_TIMEOUT).await?;
    accepted.cpoint = result.get("cpoint").cloned();
    accepted.count = result.get("count").cloned();
    accepted.pid = result.get("pid").cloned();
    Ok((StatusCode::ACCEPTED, axum::Json(accepted)))
}

/// One of our faults, with its fields checked.
fn fault_injection(kind: &str, fault: &Fault) -> Result<Injection, ApiError> {
    let kind =
        FaultKind::parse(kind).map_err(|e| ApiError::invalid(format!("{e} (LKDTM's crash types go in lkdtm)")))?;
    if fault.cpoint.is_some() || fault.count.is_some() {
        return Err(ApiError::invalid("cpoint and count go with lkdtm, not kind"));
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
    Ok(Injection::Fault {
        fault: kind,
        cpu: Some(fault.cpu.unwrap_or(0)),
        duration_ms: fault.duration_ms,
        message: fault.message.clone(),
    })
}

/// An LKDTM crash type at its crash point, checked as the guest checks it (an unknown or
/// unsupported type or crash point is refused here, with the reason).
fn lkdtm_injection(lkdtm: &str, fault: &Fault) -> Result<Injection, ApiError> {
    if fault.duration_ms.is_some() || fault.message.is_some() {
        return Err(ApiError::invalid("duration_ms and message go with kind, not lkdtm"));
    }
    let listed = |e: String| ApiError::invalid(format!("{e} (GET /v1/lkdtm lists the crash types and points)"));
    let kind = CrashType::parse(lkdtm).map_err(listed)?;
    let point = fault.cpoint.as_deref().map(CrashPoint::parse).transpose().map_err(listed)?;
    let injection = Injection::lkdtm_at(kind, point.unwrap_or(CrashPoint::Direct), fault.count, fault.cpu);
    injection.check().map_err(|e| listed(e.message))?;
    Ok(injection)
}
