//! What the upload queue reports, as the service's events (`vmcore_uploaded`,
//! `upload_retrying`, `spool_full`) and metrics.

use std::sync::Arc;

use fleet::{Retrying, SpoolStatus, UploadObserver, Uploaded};
use serde_json::json;

use crate::events::{EventBus, NewEvent};
use crate::metrics::Metrics;
use crate::state::AppState;

/// Publishes the queue's news on the bus and in the metrics.
pub struct ServiceObserver {
    bus: Arc<EventBus>,
    metrics: Arc<Metrics>,
    host: String,
}

impl ServiceObserver {
    /// The observer of `state`'s queue.
    pub fn new(state: &AppState) -> Self {
        let host = state.fleet().map(|f| f.host().to_owned()).unwrap_or_default();
        Self { bus: state.bus_arc(), metrics: state.metrics_arc(), host }
    }
}

fn ms(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl UploadObserver for ServiceObserver {
    fn uploaded(&self, u: &Uploaded) {
        self.metrics.uploaded(u.bytes);
        self.bus.publish(
            &u.vm,
            NewEvent::new(
                "vmcore_uploaded",
                json!({
                    "id": u.remote_id,
                    "spool_id": u.id,
                    "host": self.host,
                    "url": u.url,
                    "bytes": u.bytes,
                    "lag_ms": u.lag.map(ms),
                    "took_ms": ms(u.took),
                    "resent": u.resent,
                    "pruned": u.pruned,
                }),
            ),
        );
    }

    fn retrying(&self, r: &Retrying) {
        self.metrics.upload_failed();
        self.bus.publish(
            &r.vm,
            NewEvent::new(
                "upload_retrying",
                json!({"id": r.id, "attempt": r.attempt, "error": r.error, "retry_in_ms": ms(r.retry_in)}),
            ),
        );
    }

    fn spool(&self, status: &SpoolStatus) {
        self.metrics.spool(status);
    }

    fn spool_full(&self, status: &SpoolStatus) {
        self.bus.publish(
            "",
            NewEvent::new(
                "spool_full",
                json!({"bytes": status.bytes, "limit": status.limit, "waiting": status.waiting}),
            ),
        );
    }
}
