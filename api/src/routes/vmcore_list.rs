//! `GET /v1/vmcores`: this host's crashes (its spool, and with `--crash-store` its prefix in the
//! fleet's store), or with `?scope=fleet` every host's crashes in the store; `?host=` and `?vm=`
//! filter. Each entry says where it is and for which host.

use axum::extract::State;
use dumpd::store::{CrashMeta, CrashReasonMeta, Trigger};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::extract::Query;
use crate::openapi::LookupErrors;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// A vmcore in the list.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
enum VmcoreSummary {
    /// A crash with its meta.json.
    Described {
        /// Its id (`ID@HOST` for another host's crash).
        id: String,
        /// Where it is: `local` (no fleet store), `spool` (waiting to be uploaded) or `store`.
        location: &'static str,
        /// The host it is of (with a fleet store).
        #[serde(skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        /// The VM it is of.
        vm: String,
        /// When it was created, RFC 3339 UTC.
        created: String,
        /// The same in milliseconds since the Unix epoch.
        created_unix_ms: u64,
        /// What captured it.
        #[schema(value_type = String)]
        trigger: Trigger,
        /// The guest's crash reason, when known.
        #[schema(value_type = Option<Object>)]
        reason: Option<CrashReasonMeta>,
        /// The vmcore's apparent size, bytes.
        size: u64,
        /// Its size on the capturing host's disk, bytes.
        on_disk: u64,
    },
    /// A crash whose meta.json is missing or unreadable.
    Undescribed {
        /// Its id.
        id: String,
        /// Where it is.
        location: &'static str,
        /// Always null.
        meta: Option<()>,
    },
}

impl VmcoreSummary {
    fn of(id: String, location: &'static str, host: Option<&str>, meta: Option<&CrashMeta>) -> Self {
        match meta {
            Some(meta) => Self::Described {
                id,
                location,
                host: host.map(str::to_owned),
                vm: meta.vm.clone(),
                created: meta.created.clone(),
                created_unix_ms: meta.created_unix_ms,
                trigger: meta.trigger,
                reason: meta.reason.clone(),
                size: meta.sizes.vmcore_apparent_bytes,
                on_disk: meta.sizes.vmcore_on_disk_bytes,
            },
            None => Self::Undescribed { id, location, meta: None },
        }
    }

    fn created(&self) -> u64 {
        match self {
            Self::Described { created_unix_ms, .. } => *created_unix_ms,
            Self::Undescribed { .. } => 0,
        }
    }

    fn vm(&self) -> Option<&str> {
        match self {
            Self::Described { vm, .. } => Some(vm),
            Self::Undescribed { .. } => None,
        }
    }
}

/// `GET /v1/vmcores`' answer.
#[derive(Serialize, ToSchema)]
struct VmcoreList {
    /// Oldest first.
    vmcores: Vec<VmcoreSummary>,
    /// Why the fleet's store could not be listed (the spool's crashes are listed all the same).
    #[serde(skip_serializing_if = "Option::is_none")]
    store_error: Option<String>,
}

/// `GET /v1/vmcores`' query.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only this VM's vmcores.
    vm: Option<String>,
    /// Only this host's vmcores (with a fleet store).
    host: Option<String>,
    /// `host` (the default: this host's, or `host`'s) or `fleet`: every host's in the store.
    scope: Option<String>,
}

/// List vmcores, oldest first: this host's (spool and store), or the fleet's.
#[utoipa::path(get, path = "/v1/vmcores", operation_id = "list_vmcores", params(ListQuery),
    responses((status = 200, description = "OK", body = VmcoreList), LookupErrors))]
async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<VmcoreList>, ApiError> {
    let fleet_scope = match query.scope.as_deref() {
        None | Some("host") => false,
        Some("fleet") => true,
        Some(other) => return Err(ApiError::invalid(format!("scope is host or fleet, not {other:?}"))),
    };
    let fleet = state.fleet();
    if fleet.is_none() && (fleet_scope || query.host.is_some()) {
        return Err(ApiError::invalid(
            "this service has no fleet store (start it with --crash-store s3://BUCKET/PREFIX) so it lists only its own crashes",
        ));
    }
    if let Some(host) = &query.host {
        ::fleet::validate_host_id(host).map_err(ApiError::invalid)?;
    }
    let own = fleet.map(|f| f.host().to_owned());
    let mut vmcores = Vec::new();
    // This host's spool, unless another host is asked for; crashes committed in the store are
    // listed from there.
    if query.host.is_none() || query.host == own {
        let store = state.store().clone();
        let entries = tokio::task::spawn_blocking(move || store.list())
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
        for entry in entries {
            let location = match fleet {
                None => "local",
                Some(f) if f.uploaded_as(&entry.id).is_some() => continue,
                Some(_) => "spool",
            };
            vmcores.push(VmcoreSummary::of(entry.id, location, own.as_deref(), entry.meta.as_ref()));
        }
    }
    let mut store_error = None;
    if let Some(fleet) = fleet {
        let host = match (&query.host, fleet_scope) {
            (Some(host), _) => Some(host.as_str()),
            (None, true) => None,
            (None, false) => Some(fleet.host()),
        };
        match fleet.bucket().list(host).await {
            Ok(crashes) => {
                for crash in crashes {
                    let id = if crash.host == fleet.host() { crash.id } else { format!("{}@{}", crash.id, crash.host) };
                    vmcores.push(VmcoreSummary::of(id, "store", Some(&crash.host), crash.meta.as_ref()));
                }
            }
            Err(e) => {
                tracing::warn!("cannot list the crash store: {e}");
                store_error = Some(e.to_string());
            }
        }
    }
    vmcores.retain(|v| query.vm.as_deref().is_none_or(|vm| v.vm() == Some(vm)));
    vmcores.sort_by_key(VmcoreSummary::created);
    Ok(axum::Json(VmcoreList { vmcores, store_error }))
}
