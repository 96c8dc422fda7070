//! `GET /v1/lkdtm`: LKDTM's crash types and crash points, which ones the guest kernel supports
//! (and why not the others), and each supported type's expected outcome, from the guest's own
//! table (`crashvisor_abi::lkdtm`), for a harness to assert on.

use crashvisor_abi::lkdtm::{Context, CrashPoint, CrashType, Outcome, Support, DEFAULT_CPOINT_COUNT};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// LKDTM as the guest kernel runs it (docs/lkdtm.md).
#[derive(Serialize, ToSchema)]
struct Lkdtm {
    /// Every crash type, in LKDTM's order.
    types: Vec<TypeEntry>,
    /// Every crash point, in LKDTM's order.
    cpoints: Vec<PointEntry>,
    /// The hits a crash point fires on unless `count` says otherwise (LKDTM's `cpoint_count`).
    default_count: i32,
}

/// A crash type.
#[derive(Serialize, ToSchema)]
struct TypeEntry {
    /// Its Linux name (`lkdtm` in `POST /v1/vms/{id}/faults`).
    name: &'static str,
    /// The LKDTM source file it comes from (`bugs`, `heap`, `perms`, ...).
    category: &'static str,
    /// Whether the guest kernel runs it.
    supported: bool,
    /// Why it does not (unsupported types).
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    /// What it leads to, run at `DIRECT` under the default sysctls (supported types).
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<OutcomeEntry>,
}

/// What a supported crash type leads to.
#[derive(Serialize, ToSchema)]
struct OutcomeEntry {
    /// Text a kernel log line holds when it is caught, as Linux prints it.
    message: &'static str,
    /// What catches it: `panic`, `bug`, `warn`, `page_fault`, `stack_guard`, `double_fault`,
    /// `stack_protector`, `ubsan`, `list_debug`, `slab_freelist_hardened`, `slab_debug`,
    /// `softlockup`, `hardlockup`, `hung_task`, or `none`.
    caught_by: &'static str,
    /// When it panics in task context: `always`, `never`, or the sysctl that makes it panic
    /// (`panic_on_oops`, `panic_on_warn`, `softlockup_panic`, `hardlockup_panic`,
    /// `hung_task_panic`).
    panics: &'static str,
    /// The same in a hard interrupt (a crash point such as `INT_HARDWARE_ENTRY`), where every
    /// oops panics.
    panics_in_hardirq: &'static str,
    /// The vmcore's `reason.detector` when it panics.
    detector: Option<&'static str>,
    /// Boot parameters the catch needs (`slab_debug=...`).
    requires: Option<&'static str>,
}

/// A crash point.
#[derive(Serialize, ToSchema)]
struct PointEntry {
    /// Its Linux name (`cpoint` in `POST /v1/vms/{id}/faults`).
    name: &'static str,
    /// The Linux function LKDTM hooks (none for `DIRECT`).
    linux_function: Option<&'static str>,
    /// Whether the guest kernel has a counterpart.
    supported: bool,
    /// What hits it in the guest kernel (supported points).
    #[serde(skip_serializing_if = "Option::is_none")]
    hit_by: Option<&'static str>,
    /// The context a type runs in there: `task`, `hardirq`, or none when it is the caller's.
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<&'static str>,
    /// Why there is no counterpart (unsupported points).
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

fn type_entry(kind: CrashType) -> TypeEntry {
    let (reason, outcome) = match kind.support() {
        Support::Supported(outcome) => (None, Some(outcome_entry(&outcome))),
        Support::Unsupported(why) => (Some(why), None),
    };
    TypeEntry { name: kind.as_str(), category: kind.category().as_str(), supported: outcome.is_some(), reason, outcome }
}

fn outcome_entry(outcome: &Outcome) -> OutcomeEntry {
    OutcomeEntry {
        message: outcome.message,
        caught_by: outcome.caught_by.as_str(),
        panics: outcome.panics.as_str(),
        panics_in_hardirq: outcome.panics_in(Context::Hardirq).as_str(),
        detector: outcome.detector.map(|d| d.as_str()),
        requires: outcome.requires,
    }
}

fn point_entry(point: CrashPoint) -> PointEntry {
    let linux_function = point.linux_function();
    match point.counterpart() {
        Ok(ours) => PointEntry {
            name: point.as_str(),
            linux_function,
            supported: true,
            hit_by: Some(ours.hit_by),
            context: ours.context.map(Context::as_str),
            reason: None,
        },
        Err(why) => PointEntry {
            name: point.as_str(),
            linux_function,
            supported: false,
            hit_by: None,
            context: None,
            reason: Some(why),
        },
    }
}

/// LKDTM's crash types and crash points, with what the guest kernel supports and the outcome
/// of each supported type.
#[utoipa::path(get, path = "/v1/lkdtm", responses((status = 200, description = "OK", body = Lkdtm)))]
async fn list() -> axum::Json<Lkdtm> {
    axum::Json(Lkdtm {
        types: CrashType::ALL.iter().copied().map(type_entry).collect(),
        cpoints: CrashPoint::ALL.iter().copied().map(point_entry).collect(),
        default_count: DEFAULT_CPOINT_COUNT,
    })
}
