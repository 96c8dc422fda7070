//! `/v1/vms`: create, list, show and delete VMs.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::VM_ID;
use crate::clock;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Path};
use crate::openapi::{BodyErrors, LookupErrors};
use crate::state::AppState;
use crate::supervisor::spec::{policy_name, CreateVm};
use crate::supervisor::{VmHandle, VmState};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list, create)).routes(routes!(show, delete))
}

/// A VM as the API shows it.
#[derive(Serialize, ToSchema)]
#[schema(as = Vm)]
pub struct VmView {
    /// Its id, the name.
    id: String,
    /// Its name.
    name: String,
    /// Its state.
    state: VmState,
    /// The VMM's process id while it runs.
    pid: Option<u32>,
    /// vCPUs.
    vcpus: u32,
    /// Guest RAM, MiB.
    memory_mib: u64,
    /// The whole kernel command line the guest boots with.
    cmdline: String,
    /// The kernel file, or none for the embedded one.
    kernel: Option<String>,
    /// Whether kdump starts at boot.
    kdump: bool,
    /// Whether the host offers the NMI watchdog.
    nmi_watchdog: bool,
    /// The host's policy on a panic without a capture kernel (`vmm --on-panic`).
    on_panic: String,
    /// The host's policy when a capture kernel starts (`vmm --on-crash-loaded`).
    on_crash_loaded: String,
    /// The format of host-side vmcores (`vmm --dump-format`).
    dump_format: String,
    /// When the VM was created, RFC 3339 UTC.
    created: String,
    /// Seconds since the current boot said hello.
    uptime_secs: Option<f64>,
    /// The guest kernel's release.
    release: Option<String>,
    /// Boots so far.
    boots: u64,
    /// Crashes so far.
    crashes: u64,
    /// The ids of its vmcores.
    vmcores: Vec<String>,
    /// The last panic's event.
    last_panic: Option<Value>,
    /// The last lockup's event.
    last_lockup: Option<Value>,
    /// Why the VMM ended unexpectedly.
    failure: Option<String>,
}

/// The JSON view of a VM.
pub fn view(vm: &VmHandle) -> VmView {
    let status = vm.status();
    let spec = &vm.spec;
    VmView {
        id: spec.name.clone(),
        name: spec.name.clone(),
        state: status.state,
        pid: status.pid,
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        cmdline: spec.cmdline.clone(),
        kernel: spec.kernel.as_ref().map(|k| k.display().to_string()),
        kdump: spec.kdump,
        nmi_watchdog: spec.nmi_watchdog,
        on_panic: policy_name(&spec.on_panic),
        on_crash_loaded: policy_name(&spec.on_crash_loaded),
        dump_format: spec.dump_format.name().to_owned(),
        created: clock::rfc3339(vm.created),
        uptime_secs: status.booted_at.map(|t| t.elapsed().as_secs_f64()),
        release: status.release,
        boots: status.boots,
        crashes: status.crashes,
        vmcores: status.vmcores,
        last_panic: status.last_panic,
        last_lockup: status.last_lockup,
        failure: status.failure,
    }
}

/// `GET /v1/vms`' answer.
#[derive(Serialize, ToSchema)]
struct VmList {
    vms: Vec<VmView>,
}

/// Create and start a VM.
#[utoipa::path(post, path = "/v1/vms", operation_id = "create_vm", request_body = CreateVm, responses(
    (status = 201, description = "Created; the VM boots (state booting, then running).", body = VmView),
    (status = 400, description = "The body is not JSON.", body = ErrorBody),
    (status = 409, description = "The name exists (already_exists), or a limit is reached (limit_exceeded).", body = ErrorBody),
    (status = 422, description = "A value is invalid or out of range (invalid_argument).", body = ErrorBody),
    BodyErrors,
))]
async fn create(State(state): State<AppState>, Json(request): Json<CreateVm>) -> Result<Response, ApiError> {
    let vm = state.supervisor().create(request)?;
    let location = format!("/v1/vms/{}", vm.name());
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], axum::Json(view(&vm))).into_response())
}

/// List VMs.
#[utoipa::path(get, path = "/v1/vms", operation_id = "list_vms", responses((status = 200, description = "OK", body = VmList)))]
async fn list(State(state): State<AppState>) -> axum::Json<VmList> {
    axum::Json(VmList { vms: state.supervisor().list().iter().map(view).collect() })
}

/// Show a VM.
#[utoipa::path(get, path = "/v1/vms/{id}", operation_id = "show_vm", params(("id" = String, Path, description = VM_ID)), responses(
    (status = 200, description = "OK", body = VmView),
    LookupErrors,
))]
async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<axum::Json<VmView>, ApiError> {
    Ok(axum::Json(view(&state.supervisor().get(&id)?)))
}

/// Stop and delete a VM.
#[utoipa::path(delete, path = "/v1/vms/{id}", operation_id = "delete_vm", params(("id" = String, Path, description = VM_ID)), responses(
    (status = 204, description = "Deleted."),
    LookupErrors,
))]
async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    state.supervisor().delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
