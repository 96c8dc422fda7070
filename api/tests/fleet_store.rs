//! The service with a fleet store (`--crash-store`) against a real S3 server (s3s-fs on
//! loopback), without VMs: crashes committed to each host's spool as a VMM commits them are
//! shipped; two services with different host ids list each other's crashes (`?scope=fleet`,
//! `?host=`), download them with `Range` (ranged GETs), read their logs and delete them; the
//! store down gives `upload_retrying` and the crash arrives when it is back.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::events::ServiceEvent;
use api::limits::{Host, Limits};
use api::remote::FleetConfig;
use api::state::{AppState, ServiceConfig};
use api::supervisor::record::StateDir;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use dumpd::store::{CrashMeta, CrashStore, Retention, Trigger, FILE_VMCORE, FILE_VMCORE_DMESG};
use fleet::test_server::S3Server;
use serde_json::Value;
use tower::ServiceExt;

struct Service {
    app: Router,
    state: AppState,
    spool: CrashStore,
    dir: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn service(server: &S3Server, host: &str, name: &str) -> Service {
    let dir = std::env::temp_dir().join(format!("api-fleet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let fleet = FleetConfig {
        bucket: Arc::new(server.bucket("fleet", host)),
        keep_local: false,
        spool_limit: None,
        retention: Retention::default(),
        cache_bytes: 1 << 30,
    };
    let config = ServiceConfig {
        crash_dir: dir.join("crash"),
        run_dir: dir.join("run"),
        exe: "/nonexistent/crashvisor".into(),
        token: None,
        limits: Limits::for_host(Host { cpus: 2, memory_mib: 4096 }),
        retention: Default::default(),
        fleet: Some(fleet),
    };
    let state = AppState::new(config, StateDir::open(&dir.join("state")).unwrap()).unwrap();
    api::remote::start(&state).unwrap();
    let spool = CrashStore::open(dir.join("crash")).unwrap();
    Service { app: api::app(state.clone()), state, spool, dir }
}

/// Commits a crash as a VMM does, and says so on the bus as the supervisor does.
fn crash(service: &Service, vm: &str, vmcore: &[u8]) -> String {
    let pending = service.spool.begin(vm).unwrap();
    pending.write_file(FILE_VMCORE, vmcore).unwrap();
    pending.write_file(FILE_VMCORE_DMESG, format!("Kernel panic - not syncing: {vm}\n").as_bytes()).unwrap();
    let mut meta = CrashMeta::new(Trigger::Kdump, vm, pending.created());
    meta.sizes.vmcore_apparent_bytes = vmcore.len() as u64;
    pending.write_meta(&meta).unwrap();
    let id = pending.commit().unwrap().id;
    service.state.bus().publish(vm, api::events::NewEvent::new("vmcore_ready", serde_json::json!({"id": id})));
    id
}

async fn call(app: &Router, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let response = app.clone().oneshot(request).await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap().to_vec();
    (status, headers, body)
}

async fn json(app: &Router, uri: &str) -> Value {
    let (status, _, body) = call(app, Request::get(uri).body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{uri}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// Waits for event `name` about `vm` on the service's bus (any since the start).
async fn event(service: &Service, name: &str, vm: &str, timeout: Duration) -> ServiceEvent {
    let deadline = Instant::now() + timeout;
    loop {
        let sub = service.state.bus().subscribe(Some(0));
        if let Some(e) = sub.backlog.iter().find(|e| e.event == name && e.vm == vm) {
            return (**e).clone();
        }
        assert!(Instant::now() < deadline, "no {name} event for {vm} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_share_the_fleet_view() {
    let server = S3Server::start("api-fleet");
    let a = service(&server, "host-a", "a");
    let b = service(&server, "host-b", "b");
    let vmcore_b = data(3 << 20, 7);
    let id_a = crash(&a, "web", &data(1 << 20, 1));
    let id_b = crash(&b, "db", &vmcore_b);

    let uploaded = event(&b, "vmcore_uploaded", "db", Duration::from_secs(60)).await;
    assert_eq!(uploaded.fields["url"], format!("s3://crashes/fleet/host-b/{id_b}/"));
    assert_eq!(uploaded.fields["host"], "host-b");
    assert!(uploaded.fields["lag_ms"].as_u64().is_some(), "{uploaded:?}");
    event(&a, "vmcore_uploaded", "web", Duration::from_secs(60)).await;

    // Each host's own view: its crash, in the store, under its bare id.
    let own = json(&a.app, "/v1/vmcores").await;
    let own = own["vmcores"].as_array().unwrap();
    assert_eq!(own.len(), 1, "{own:?}");
    assert_eq!((own[0]["id"].as_str(), own[0]["location"].as_str()), (Some(id_a.as_str()), Some("store")));
    // The fleet: both hosts' crashes; the other's as ID@HOST.
    let fleet = json(&a.app, "/v1/vmcores?scope=fleet").await;
    let ids: Vec<&str> = fleet["vmcores"].as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap()).collect();
    let remote = format!("{id_b}@host-b");
    assert!(ids.contains(&id_a.as_str()) && ids.contains(&remote.as_str()), "{ids:?}");
    let only_b = json(&a.app, "/v1/vmcores?host=host-b").await;
    assert_eq!(only_b["vmcores"].as_array().unwrap().len(), 1);
    assert_eq!(only_b["vmcores"][0]["host"], "host-b");

    // Host a reads host b's crash: details, a range of the vmcore, the log.
    let shown = json(&a.app, &format!("/v1/vmcores/{remote}")).await;
    assert_eq!((shown["location"].as_str(), shown["host"].as_str()), (Some("store"), Some("host-b")));
    assert_eq!(shown["files"][FILE_VMCORE]["bytes"], vmcore_b.len());
    assert!(shown["meta"]["checksums"][FILE_VMCORE].is_string(), "{shown}");
    let ranged = Request::get(format!("/v1/vmcores/{remote}/vmcore"))
        .header(header::RANGE, "bytes=1000000-1999999")
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = call(&a.app, ranged).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(headers[header::CONTENT_RANGE], format!("bytes 1000000-1999999/{}", vmcore_b.len()));
    assert!(body == vmcore_b[1_000_000..2_000_000], "the range is byte-exact");
    let (status, _, whole) =
        call(&a.app, Request::get(format!("/v1/vmcores/{remote}/vmcore")).body(Body::empty()).unwrap()).await;
    assert!(status == StatusCode::OK && whole == vmcore_b, "the whole vmcore is byte-exact");
    let (status, _, log) =
        call(&a.app, Request::get(format!("/v1/vmcores/{remote}/dmesg")).body(Body::empty()).unwrap()).await;
    assert_eq!((status, String::from_utf8_lossy(&log).as_ref()), (StatusCode::OK, "Kernel panic - not syncing: db\n"));

    // Deleting it from host a removes it from the fleet.
    let (status, _, _) =
        call(&a.app, Request::delete(format!("/v1/vmcores/{remote}")).body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = call(&b.app, Request::get(format!("/v1/vmcores/{id_b}")).body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let fleet = json(&b.app, "/v1/vmcores?scope=fleet").await;
    assert_eq!(fleet["vmcores"].as_array().unwrap().len(), 1);

    let metrics = call(&a.app, Request::get("/v1/metrics").body(Body::empty()).unwrap()).await.2;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(metrics.lines().any(|l| l == "crashvisor_vmcores_uploaded_total 1"), "{metrics}");
    assert!(metrics.lines().any(|l| l == "crashvisor_spool_crashes_waiting 0"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_down_gives_retries_and_the_crash_arrives_when_it_is_back() {
    let mut server = S3Server::start("api-down");
    let a = service(&server, "host-a", "down");
    server.stop();
    let id = crash(&a, "web", &data(1 << 20, 3));
    let retrying = event(&a, "upload_retrying", "web", Duration::from_secs(60)).await;
    assert_eq!(retrying.fields["id"], id.as_str());
    assert!(retrying.fields["error"].as_str().is_some_and(|e| !e.is_empty()), "{retrying:?}");
    // Meanwhile the crash is served from the spool, and the listing says the store is away.
    let listed = json(&a.app, "/v1/vmcores").await;
    assert_eq!(listed["vmcores"][0]["location"], "spool");
    assert!(listed["store_error"].is_string(), "{listed}");
    let (status, _, log) =
        call(&a.app, Request::get(format!("/v1/vmcores/{id}/dmesg")).body(Body::empty()).unwrap()).await;
    assert_eq!((status, log.is_empty()), (StatusCode::OK, false));

    server.resume();
    let uploaded = event(&a, "vmcore_uploaded", "web", Duration::from_secs(60)).await;
    assert_eq!(uploaded.fields["id"], id.as_str());
    assert!(a.spool.list().unwrap().is_empty(), "the spool drained");
    let listed = json(&a.app, "/v1/vmcores").await;
    assert_eq!(listed["vmcores"][0]["location"], "store");
}
