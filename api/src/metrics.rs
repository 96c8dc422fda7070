//! The service's Prometheus metrics, kept and written (OpenMetrics text) by `prometheus-client`:
//! VMs by state, lockups and panics by kind, vmcores, their bytes and capture durations, failed
//! dumps, the spool and uploads to the fleet's store, and HTTP request latencies by route.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::state::AppState;
use crate::supervisor::VmState;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Histogram bucket upper bounds, seconds: from a fast API call to a slow capture.
const BUCKETS_SECS: [f64; 15] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// The lockup detectors, shown even before they fire.
const LOCKUP_KINDS: [&str; 3] = ["soft", "hard", "hung_task"];

/// `{state}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// `{kind}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// `{detector}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DetectorLabel {
    detector: String,
}

/// `{route,method}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

/// `{route,method,status}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    #[prometheus(flatten)]
    request: RouteLabels,
    status: u16,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS_SECS)
}

/// The service's metrics.
pub struct Metrics {
    registry: Registry,
    vms: Family<StateLabel, Gauge>,
    lockups: Family<KindLabel, Counter>,
    panics: Family<DetectorLabel, Counter>,
    vmcores: Counter,
    dump_failures: Counter,
    vmcore_bytes: Family<KindLabel, Counter>,
    capture: Histogram,
    vm_failures: Counter,
    spool_bytes: Gauge,
    spool_waiting: Gauge,
    spool_full: Gauge,
    upload_lag: Gauge<f64, std::sync::atomic::AtomicU64>,
    upload_failures: Counter,
    uploads: Counter,
    uploaded_bytes: Counter,
    responses: Family<ResponseLabels, Counter>,
    requests: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Self {
            registry: Registry::default(),
            vms: Family::default(),
            lockups: Family::default(),
            panics: Family::default(),
            vmcores: Counter::default(),
            dump_failures: Counter::default(),
            vmcore_bytes: Family::default(),
            capture: histogram(),
            vm_failures: Counter::default(),
            spool_bytes: Gauge::default(),
            spool_waiting: Gauge::default(),
            spool_full: Gauge::default(),
            upload_lag: Gauge::default(),
            upload_failures: Counter::default(),
            uploads: Counter::default(),
            uploaded_bytes: Counter::default(),
            responses: Family::default(),
            requests: Family::new_with_constructor(histogram),
        };
        // These series are shown at 0 before their first event.
        for kind in LOCKUP_KINDS {
            let _ = metrics.lockups.get_or_create(&KindLabel { kind: kind.into() });
        }
        for kind in ["apparent", "on_disk"] {
            let _ = metrics.vmcore_bytes.get_or_create(&KindLabel { kind: kind.into() });
        }
        metrics.register()
    }
}

impl Metrics {
    /// Registers every metric under its name (counters get `_total` from the crate) and help
    /// (the crate ends it with a full stop).
    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register("crashvisor_vms", "VMs the service holds, by state", self.vms.clone());
        r.register("crashvisor_lockups", "Lockups the guests' detectors reported, by kind", self.lockups.clone());
        r.register("crashvisor_panics", "Guest kernel panics, by detector", self.panics.clone());
        r.register("crashvisor_vmcores", "Vmcores committed to the crash store", self.vmcores.clone());
        r.register("crashvisor_dump_failures", "Captures that produced no vmcore", self.dump_failures.clone());
        r.register("crashvisor_vmcore_bytes", "Bytes of the vmcores committed", self.vmcore_bytes.clone());
        r.register(
            "crashvisor_capture_duration_seconds",
            "From capture_started to vmcore_ready: the host writing a vmcore",
            self.capture.clone(),
        );
        r.register("crashvisor_vm_failures", "VMMs that ended unexpectedly", self.vm_failures.clone());
        r.register("crashvisor_spool_bytes", "Disk space of the crashes in the spool", self.spool_bytes.clone());
        r.register(
            "crashvisor_spool_crashes_waiting",
            "Crashes in the spool waiting to be committed in the fleet's store",
            self.spool_waiting.clone(),
        );
        r.register(
            "crashvisor_spool_full",
            "1 while the spool is over its --spool-bytes limit with crashes that must not be dropped",
            self.spool_full.clone(),
        );
        r.register(
            "crashvisor_upload_lag_seconds",
            "How long the oldest crash waiting in the spool has waited since vmcore_ready",
            self.upload_lag.clone(),
        );
        r.register(
            "crashvisor_upload_failures",
            "Failed upload attempts (each is retried)",
            self.upload_failures.clone(),
        );
        r.register("crashvisor_vmcores_uploaded", "Crashes committed in the fleet's store", self.uploads.clone());
        r.register(
            "crashvisor_uploaded_bytes",
            "Bytes of the crashes committed in the store",
            self.uploaded_bytes.clone(),
        );
        r.register("crashvisor_http_requests", "HTTP requests answered, by route and status", self.responses.clone());
        r.register(
            "crashvisor_http_request_duration_seconds",
            "Time to the response's head, by route (streamed bodies continue after it)",
            self.requests.clone(),
        );
        self
    }

    /// A lockup detector fired (`soft`, `hard`, `hung_task`).
    pub fn lockup(&self, kind: &str) {
        self.lockups.get_or_create(&KindLabel { kind: kind.to_owned() }).inc();
    }

    /// A guest panicked; `detector` as in its crash reason (`unknown` without one).
    pub fn panic(&self, detector: &str) {
        self.panics.get_or_create(&DetectorLabel { detector: detector.to_owned() }).inc();
    }

    /// A vmcore was committed: its sizes, and the time from `capture_started` when known.
    pub fn vmcore(&self, apparent_bytes: u64, on_disk_bytes: u64, capture: Option<Duration>) {
        self.vmcores.inc();
        self.vmcore_bytes.get_or_create(&KindLabel { kind: "apparent".into() }).inc_by(apparent_bytes);
        self.vmcore_bytes.get_or_create(&KindLabel { kind: "on_disk".into() }).inc_by(on_disk_bytes);
        if let Some(duration) = capture {
            self.capture.observe(duration.as_secs_f64());
        }
    }

    /// A capture produced no vmcore.
    pub fn dump_failed(&self) {
        self.dump_failures.inc();
    }

    /// A VM's VMM ended unexpectedly.
    pub fn vm_failed(&self) {
        self.vm_failures.inc();
    }

    /// The spool as the upload queue last saw it.
    pub fn spool(&self, status: &fleet::SpoolStatus) {
        self.spool_bytes.set(i64::try_from(status.bytes).unwrap_or(i64::MAX));
        self.spool_waiting.set(i64::try_from(status.waiting).unwrap_or(i64::MAX));
        self.spool_full.set(i64::from(status.full));
        self.upload_lag.set(status.oldest_waiting.unwrap_or_default().as_secs_f64());
    }

    /// An upload attempt failed.
    pub fn upload_failed(&self) {
        self.upload_failures.inc();
    }

    /// A crash of `bytes` was committed in the store.
    pub fn uploaded(&self, bytes: u64) {
        self.uploads.inc();
        self.uploaded_bytes.inc_by(bytes);
    }

    /// An HTTP request to `route` took `latency`.
    pub fn request(&self, route: &str, method: &str, status: u16, latency: Duration) {
        let request = RouteLabels { route: route.to_owned(), method: method.to_owned() };
        self.requests.get_or_create(&request).observe(latency.as_secs_f64());
        self.responses.get_or_create(&ResponseLabels { request, status }).inc();
    }

    /// The OpenMetrics text, with `vms` counted by state.
    pub fn render(&self, vms: &BTreeMap<VmState, usize>) -> String {
        for state in VmState::ALL {
            let n = vms.get(&state).copied().unwrap_or(0);
            self.vms.get_or_create(&StateLabel { state: state.as_str() }).set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Middleware: times every request by its route template (`/v1/vms/{id}`, never the raw path,
/// so the label set stays small).
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let method = request.method().as_str().to_owned();
    let start = std::time::Instant::now();
    let response = next.run(request).await;
    state.metrics().request(&route, &method, response.status().as_u16(), start.elapsed());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let metrics = Metrics::default();
        metrics.lockup("soft");
        metrics.panic("softlockup");
        metrics.panic("a \"quoted\"\nname");
        metrics.vmcore(1000, 100, Some(Duration::from_millis(30)));
        metrics.spool(&fleet::SpoolStatus {
            bytes: 4096,
            waiting: 2,
            oldest_waiting: Some(Duration::from_millis(1500)),
            limit: Some(1024),
            full: true,
        });
        metrics.upload_failed();
        metrics.uploaded(777);
        metrics.request("/v1/vms/{id}", "GET", 200, Duration::from_micros(300));
        let vms = BTreeMap::from([(VmState::Running, 2)]);
        let text = metrics.render(&vms);
        for line in [
            "crashvisor_vms{state=\"running\"} 2",
            "crashvisor_vms{state=\"failed\"} 0",
            "crashvisor_lockups_total{kind=\"soft\"} 1",
            "crashvisor_lockups_total{kind=\"hard\"} 0",
            "crashvisor_panics_total{detector=\"softlockup\"} 1",
            r#"crashvisor_panics_total{detector="a \"quoted\"\nname"} 1"#,
            "crashvisor_vmcores_total 1",
            "crashvisor_vmcore_bytes_total{kind=\"on_disk\"} 100",
            "crashvisor_spool_bytes 4096",
            "crashvisor_spool_crashes_waiting 2",
            "crashvisor_spool_full 1",
            "crashvisor_upload_lag_seconds 1.5",
            "crashvisor_upload_failures_total 1",
            "crashvisor_vmcores_uploaded_total 1",
            "crashvisor_uploaded_bytes_total 777",
            "crashvisor_capture_duration_seconds_bucket{le=\"0.025\"} 0",
            "crashvisor_capture_duration_seconds_bucket{le=\"0.05\"} 1",
            "crashvisor_capture_duration_seconds_count 1",
            "crashvisor_http_requests_total{route=\"/v1/vms/{id}\",method=\"GET\",status=\"200\"} 1",
            // The crate writes `le` first.
            "crashvisor_http_request_duration_seconds_bucket{le=\"0.001\",route=\"/v1/vms/{id}\",method=\"GET\"} 1",
            "crashvisor_http_request_duration_seconds_bucket{le=\"+Inf\",route=\"/v1/vms/{id}\",method=\"GET\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
