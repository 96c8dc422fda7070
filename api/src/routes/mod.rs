//! The `/v1` endpoints, one module per resource, each with its own `router()`.

mod actions;
mod analysis;
mod console;
mod events;
mod faults;
mod guest;
mod lkdtm;
pub mod range;
mod service;
mod vmcore_list;
mod vmcores;
mod vms;

use std::time::Duration;

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

/// How long a handler waits for a VMM's answer: longer than the VMM's own wait for the guest
/// (10 s by default), so the VMM's `guest_timeout` is what clients normally see.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(15);
/// The content type of logs and consoles.
pub const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// The path parameter of a VM's endpoints.
const VM_ID: &str = "The VM's name.";
/// The path parameter of a vmcore's endpoints.
const VMCORE_ID: &str =
    "The vmcore's id: its crash directory's name, e.g. web-1-2024-02-29-12:34:56; ID@HOST for another host's crash in the fleet's store.";

/// Every endpoint, with its OpenAPI description.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(vms::router())
        .merge(actions::router())
        .merge(faults::router())
        .merge(lkdtm::router())
        .merge(guest::router())
        .merge(console::router())
        .merge(events::router())
        .merge(vmcore_list::router())
        .merge(vmcores::router())
        .merge(analysis::router())
        .merge(service::router())
}
