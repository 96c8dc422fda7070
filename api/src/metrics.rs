//! Prometheus metrics in the text exposition format, written by hand: VMs by state, lockups and
//! panics by kind, vmcores, their bytes and capture durations, failed dumps, and HTTP request
//! latencies by route.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::state::AppState;
use crate::supervisor::VmState;

/// Histogram bucket upper bounds, seconds: from a fast API call to a slow capture.
const BUCKETS_SECS: [f64; 15] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// A cumulative histogram.
#[derive(Clone, Debug, Default)]
struct Histogram {
    /// Observations at or below each bound of `BUCKETS_SECS`.
    counts: [u64; BUCKETS_SECS.len()],
    count: u64,
    sum_secs: f64,
}

impl Histogram {
    fn observe(&mut self, value: Duration) {
        let secs = value.as_secs_f64();
        for (count, bound) in self.counts.iter_mut().zip(BUCKETS_SECS) {
            if secs <= bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum_secs += secs;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (count, bound) in self.counts.iter().zip(BUCKETS_SECS) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum_secs);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Default)]
struct Data {
    lockups: BTreeMap<String, u64>,
    panics: BTreeMap<String, u64>,
    vmcores: u64,
    dump_failures: u64,
    vmcore_apparent_bytes: u64,
    vmcore_on_disk_bytes: u64,
    capture: Histogram,
    vm_failures: u64,
    /// (route, method) → latency histogram.
    requests: BTreeMap<(String, String), Histogram>,
    /// (route, method, status) → count.
    responses: BTreeMap<(String, String, u16), u64>,
}

/// The service's counters.
#[derive(Default)]
pub struct Metrics {
    data: Mutex<Data>,
}

impl Metrics {
    fn lock(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A lockup detector fired (`soft`, `hard`, `hung_task`).
    pub fn lockup(&self, kind: &str) {
        *self.lock().lockups.entry(kind.to_owned()).or_default() += 1;
    }

    /// A guest panicked; `detector` as in its crash reason (`unknown` without one).
    pub fn panic(&self, detector: &str) {
        *self.lock().panics.entry(detector.to_owned()).or_default() += 1;
    }

    /// A vmcore was committed: its sizes, and the time from `capture_started` when known.
    pub fn vmcore(&self, apparent_bytes: u64, on_disk_bytes: u64, capture: Option<Duration>) {
        let mut data = self.lock();
        data.vmcores += 1;
        data.vmcore_apparent_bytes += apparent_bytes;
        data.vmcore_on_disk_bytes += on_disk_bytes;
        if let Some(duration) = capture {
            data.capture.observe(duration);
        }
    }

    /// A capture produced no vmcore.
    pub fn dump_failed(&self) {
        self.lock().dump_failures += 1;
    }

    /// A VM's VMM ended unexpectedly.
    pub fn vm_failed(&self) {
        self.lock().vm_failures += 1;
    }

    /// An HTTP request to `route` took `latency`.
    pub fn request(&self, route: &str, method: &str, status: u16, latency: Duration) {
        let mut data = self.lock();
        data.requests.entry((route.to_owned(), method.to_owned())).or_default().observe(latency);
        *data.responses.entry((route.to_owned(), method.to_owned(), status)).or_default() += 1;
    }

    /// The text exposition, with `vms` counted by state.
    pub fn render(&self, vms: &BTreeMap<VmState, usize>) -> String {
        let data = self.lock();
        let mut out = String::new();
        header(&mut out, "crashvisor_vms", "gauge", "VMs the service holds, by state.");
        for state in VmState::ALL {
            let n = vms.get(&state).copied().unwrap_or(0);
            let _ = writeln!(out, "crashvisor_vms{{state=\"{}\"}} {n}", state.as_str());
        }
        header(&mut out, "crashvisor_lockups_total", "counter", "Lockups the guests' detectors reported, by kind.");
        for kind in ["soft", "hard", "hung_task"] {
            let n = data.lockups.get(kind).copied().unwrap_or(0);
            let _ = writeln!(out, "crashvisor_lockups_total{{kind=\"{kind}\"}} {n}");
        }
        header(&mut out, "crashvisor_panics_total", "counter", "Guest kernel panics, by detector.");
        for (detector, n) in &data.panics {
            let _ = writeln!(out, "crashvisor_panics_total{{detector=\"{}\"}} {n}", escape(detector));
        }
        counter(&mut out, "crashvisor_vmcores_total", "Vmcores committed to the crash store.", data.vmcores);
        counter(&mut out, "crashvisor_dump_failures_total", "Captures that produced no vmcore.", data.dump_failures);
        header(&mut out, "crashvisor_vmcore_bytes_total", "counter", "Bytes of the vmcores committed.");
        let _ = writeln!(out, "crashvisor_vmcore_bytes_total{{kind=\"apparent\"}} {}", data.vmcore_apparent_bytes);
        let _ = writeln!(out, "crashvisor_vmcore_bytes_total{{kind=\"on_disk\"}} {}", data.vmcore_on_disk_bytes);
        header(
            &mut out,
            "crashvisor_capture_duration_seconds",
            "histogram",
            "From capture_started to vmcore_ready: the host writing a vmcore.",
        );
        data.capture.write(&mut out, "crashvisor_capture_duration_seconds", "");
        counter(&mut out, "crashvisor_vm_failures_total", "VMMs that ended unexpectedly.", data.vm_failures);
        header(&mut out, "crashvisor_http_requests_total", "counter", "HTTP requests answered, by route and status.");
        for ((route, method, status), n) in &data.responses {
            let _ = writeln!(
                out,
                "crashvisor_http_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        header(
            &mut out,
            "crashvisor_http_request_duration_seconds",
            "histogram",
            "Time to the response's head, by route (streamed bodies continue after it).",
        );
        for ((route, method), histogram) in &data.requests {
            let labels = format!("route=\"{}\",method=\"{method}\"", escape(route));
            histogram.write(&mut out, "crashvisor_http_request_duration_seconds", &labels);
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
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
        metrics.vmcore(1000, 100, Some(Duration::from_millis(30)));
        metrics.request("/v1/vms/{id}", "GET", 200, Duration::from_micros(300));
        let vms = BTreeMap::from([(VmState::Running, 2)]);
        let text = metrics.render(&vms);
        for line in [
            "crashvisor_vms{state=\"running\"} 2",
            "crashvisor_vms{state=\"failed\"} 0",
            "crashvisor_lockups_total{kind=\"soft\"} 1",
            "crashvisor_lockups_total{kind=\"hard\"} 0",
            "crashvisor_panics_total{detector=\"softlockup\"} 1",
            "crashvisor_vmcores_total 1",
            "crashvisor_vmcore_bytes_total{kind=\"on_disk\"} 100",
            "crashvisor_capture_duration_seconds_bucket{le=\"0.025\"} 0",
            "crashvisor_capture_duration_seconds_bucket{le=\"0.05\"} 1",
            "crashvisor_capture_duration_seconds_count 1",
            "crashvisor_http_requests_total{route=\"/v1/vms/{id}\",method=\"GET\",status=\"200\"} 1",
            "crashvisor_http_request_duration_seconds_bucket{route=\"/v1/vms/{id}\",method=\"GET\",le=\"0.001\"} 1",
            "crashvisor_http_request_duration_seconds_bucket{route=\"/v1/vms/{id}\",method=\"GET\",le=\"+Inf\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
