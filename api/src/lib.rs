//! crashvisor's REST service: one process that runs many VMs (one `vmm` child process each),
//! injects faults into their kernels, streams their events and serves their vmcores.
//!
//! [`app`] builds the whole HTTP API as an axum `Router`, so tests can drive it without a
//! socket; `crashvisor serve` (the [`serve`] module) binds it and handles signals; the
//! [`client`] module is the command-line client of a running service.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use api::state::{AppState, ServiceConfig};
//! use api::supervisor::record::StateDir;
//!
//! let host = api::limits::Host::detect()?;
//! let config = ServiceConfig {
//!     crash_dir: "/tmp/crash".into(),
//!     run_dir: "/tmp/crashvisor-run".into(),
//!     exe: std::env::current_exe()?,
//!     token: None,
//!     limits: api::limits::Limits::for_host(host),
//!     retention: Default::default(),
//!     fleet: None,
//! };
//! // The VMs a killed service left there are adopted again.
//! let state = AppState::new(config, StateDir::open("/tmp/crashvisor-state".as_ref())?)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, api::app(state)).await?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod analysis;
pub mod auth;
pub mod client;
pub mod clock;
pub mod error;
pub mod events;
pub mod extract;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod remote;
pub mod routes;
pub mod serve;
pub mod state;
pub mod supervisor;

use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

/// Largest request body accepted (JSON bodies are small; 413 beyond).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The whole API.
pub fn app(state: AppState) -> Router {
    Router::from(routes::router())
        // Inside the routes, so the metrics see which route matched.
        .route_layer(from_fn_with_state(state.clone(), metrics::track))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(from_fn_with_state(state.clone(), auth::require_token))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no endpoint {}; GET /v1/openapi.json describes them all", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take {method}; GET /v1/openapi.json describes the endpoints", uri.path()),
    )
}
