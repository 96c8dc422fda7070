//! `POST /v1/vms/{id}/actions`: pause, resume, reboot, poweroff, nmi, dump, kexec.

use axum::extract::State;
use crashvisor_abi::control::{KexecKind, KexecOp};
use crashvisor_control::Request;
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
use crate::supervisor::VmState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(act))
}

/// An action and its arguments.
#[derive(Deserialize, ToSchema)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
enum Action {
    /// Stop the vCPUs (the guest's clocks account for it).
    Pause,
    /// Run them again.
    Resume,
    /// Restart the VM's VMM with the same configuration (a cold reset).
    Reboot,
    /// Stop the VM: the VMM exits; the VM stays listed as stopped.
    Poweroff,
    /// Inject an NMI into one vCPU or all.
    Nmi {
        cpu: Option<u32>,
        /// Take a host-side vmcore once the guest has handled the NMI.
        capture: Option<bool>,
    },
    /// A host-side vmcore of the running VM (`vmcore_ready` follows).
    Dump {},
    /// Boot the kernel image again through kexec (`kexec -l` then `kexec -e`).
    Kexec { cmdline: Option<String> },
}

/// The VM after an action.
#[derive(Serialize, ToSchema)]
struct ActionDone {
    /// The VM's state after the action.
    state: Option<VmState>,
    /// What the VMM answered.
    result: Value,
}

/// pause, resume, reboot (restart the VMM), poweroff (stop the VMM), nmi, dump, kexec.
#[utoipa::path(post, path = "/v1/vms/{id}/actions", params(("id" = String, Path, description = VM_ID)),
    request_body = Action,
    responses((status = 200, description = "Done.", body = ActionDone), ControlErrors, BodyErrors))]
async fn act(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(action): Json<Action>,
) -> Result<axum::Json<ActionDone>, ApiError> {
    let vm = state.supervisor().get(&id)?;
    let result = match action {
        Action::Pause => vm.control(Request::Pause {}, CONTROL_TIMEOUT).await?,
        Action::Resume => vm.control(Request::Resume {}, CONTROL_TIMEOUT).await?,
        Action::Reboot => {
            vm.reboot().await?;
            json!({})
        }
        Action::Poweroff => {
            vm.stop().await;
            json!({})
        }
        Action::Nmi { cpu, capture } => {
            if let Some(cpu) = cpu.filter(|&c| c >= vm.spec.vcpus) {
                return Err(ApiError::invalid(format!("cpu is {cpu}; VM {id} has vCPUs 0 to {}", vm.spec.vcpus - 1)));
            }
            let request = Request::Nmi { cpu: cpu.map(|c| c as usize), capture: capture.unwrap_or(false) };
            vm.control(request, CONTROL_TIMEOUT).await?
        }
        Action::Dump {} => vm.control(Request::Dump {}, CONTROL_TIMEOUT).await?,
        Action::Kexec { cmdline } => {
            let kexec = |op, kind, cmdline| Request::Kexec { op, kind, cmdline };
            vm.control(kexec(KexecOp::Load, Some(KexecKind::Normal), cmdline), CONTROL_TIMEOUT).await?;
            vm.control(kexec(KexecOp::Exec, None, None), CONTROL_TIMEOUT).await?
        }
    };
    Ok(axum::Json(ActionDone { state: state.supervisor().get(&id).ok().map(|vm| vm.state()), result }))
}
