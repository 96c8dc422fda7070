//! REST API benchmark: latencies a test harness sees through `crashvisor serve` (create →
//! booted, inject → lockup event, panic → vmcore_ready, plain GETs) and the service's memory
//! with 1, 8 and 32 small VMs running.
//!
//!     cargo build --release --workspace && cargo bench -p crashvisor-benches --bench api
//!
//! Everything goes over HTTP to the real service (release build) on an ephemeral port; events
//! are read from `GET /v1/events` (SSE) and stamped on arrival. Small VMs: 1 vCPU, 64 MiB
//! (kdump runs: 2 vCPUs, 256 MiB with `crashkernel=64M`). The guest's ring-0 code is emulated
//! on this machine, so boot and detection times are the guest's, not the API's.

use std::time::{Duration, Instant};

use crashvisor_benches::{median, release_binary};
use crashvisor_tests::api::Service;
use serde_json::json;

const RUNS: usize = 5;
const TIMEOUT: Duration = Duration::from_secs(120);
const VM_COUNTS: [usize; 3] = [1, 8, 32];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn stats(label: &str, mut values: Vec<f64>) {
    let (min, max) = values.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    println!("{label:<34} {min:>10.1} {:>10.1} {max:>10.1}", median(&mut values));
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: 0 kB");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn create(service: &Service, body: serde_json::Value) {
    let reply = service.post("/v1/vms", &body);
    assert_eq!(reply.status, 201, "POST /v1/vms {body}: {}", reply.text());
}

fn main() {
    release_binary("crashvisor"); // exits with instructions if it has not been built
    let service = Service::start(&["--max-vms", "40"]);
    let mut events = service.events("/v1/events");
    println!("{:<34} {:>10} {:>10} {:>10}", "milliseconds", "min", "median", "max");

    let mut boot = Vec::new();
    for i in 0..RUNS {
        let name = format!("boot-{i}");
        let asked = Instant::now();
        create(&service, json!({"name": name, "vcpus": 1, "memory_mib": 64}));
        boot.push(ms(events.wait(&name, "booted", TIMEOUT).at - asked));
        assert_eq!(service.delete(&format!("/v1/vms/{name}")).status, 204);
    }
    stats("POST /vms → booted", boot);

    let mut get = Vec::new();
    create(&service, json!({"name": "get", "vcpus": 1, "memory_mib": 64}));
    events.wait("get", "booted", TIMEOUT);
    for _ in 0..200 {
        let asked = Instant::now();
        assert_eq!(service.get("/v1/vms/get").status, 200);
        get.push(ms(asked.elapsed()));
    }
    stats("GET /vms/{id}", get);
    assert_eq!(service.delete("/v1/vms/get").status, 204);

    let mut lockup = Vec::new();
    for i in 0..3 {
        let name = format!("lockup-{i}");
        create(&service, json!({"name": name, "vcpus": 2, "memory_mib": 64, "watchdog": {"thresh_secs": 2}}));
        events.wait(&name, "booted", TIMEOUT);
        let asked = Instant::now();
        let reply = service.post(&format!("/v1/vms/{name}/faults"), &json!({"kind": "softlockup", "cpu": 1}));
        assert!(reply.status < 300, "inject: {}", reply.text());
        lockup.push(ms(events.wait(&name, "lockup_detected", TIMEOUT).at - asked));
        assert_eq!(service.delete(&format!("/v1/vms/{name}")).status, 204);
    }
    stats("inject softlockup → lockup event", lockup);
    println!("{:<34} (the detector reports after 2 x watchdog_thresh = 4 s by design)", "");

    let mut vmcore = Vec::new();
    let kdump = json!({"vcpus": 2, "memory_mib": 256, "kdump": {"enabled": true}, "watchdog": {"nmi_watchdog": false}});
    for i in 0..3 {
        let name = format!("kdump-{i}");
        let mut body = kdump.clone();
        body["name"] = json!(name);
        create(&service, body);
        events.wait(&name, "booted", TIMEOUT);
        std::thread::sleep(Duration::from_secs(1)); // kdump=1 loads the capture kernel after boot
        let asked = Instant::now();
        let reply = service.post(&format!("/v1/vms/{name}/faults"), &json!({"kind": "panic", "cpu": 1}));
        assert!(reply.status < 300, "inject: {}", reply.text());
        vmcore.push(ms(events.wait(&name, "vmcore_ready", TIMEOUT).at - asked));
        assert_eq!(service.delete(&format!("/v1/vms/{name}")).status, 204);
    }
    stats("inject panic → vmcore_ready", vmcore);

    println!();
    println!("{:>4} VMs | {:>16} | {:>18}", "", "service RSS MiB", "mean VMM RSS MiB");
    let mut running = 0;
    for count in VM_COUNTS {
        while running < count {
            let name = format!("idle-{running}");
            create(&service, json!({"name": name, "vcpus": 1, "memory_mib": 64}));
            events.wait(&name, "booted", TIMEOUT);
            running += 1;
        }
        std::thread::sleep(Duration::from_secs(1));
        let vms = service.get("/v1/vms").json();
        let pids: Vec<u32> = vms
            .as_array()
            .or_else(|| vms["vms"].as_array())
            .map(|list| list.iter().filter_map(|vm| vm["pid"].as_u64()).map(|p| p as u32).collect())
            .unwrap_or_default();
        let vmm_mean = pids.iter().map(|&p| rss_kib(p)).sum::<u64>() as f64 / pids.len().max(1) as f64 / 1024.0;
        println!("{count:>8} | {:>16.1} | {vmm_mean:>18.1}", rss_kib(service.pid()) as f64 / 1024.0);
    }
    drop(events);
}
