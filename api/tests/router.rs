//! The router without a network and without VMs: errors, limits, auth, the crash store over
//! HTTP (list, show, whole and ranged downloads, delete), a VMM that cannot start, and the VMs
//! a killed service left in its state directory (a dead VMM, a crash committed meanwhile).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::events::ServiceEvent;
use api::limits::{Host, Limits};
use api::state::{AppState, ServiceConfig};
use api::supervisor::record::StateDir;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use dumpd::store::{CrashMeta, CrashStore, Trigger, FILE_KEXEC_DMESG, FILE_VMCORE, FILE_VMCORE_DMESG};
use serde_json::{json, Value};
use tower::ServiceExt;

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("api-router-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn app(scratch: &Scratch, token: Option<&str>) -> (Router, AppState) {
    let limits = Limits::for_host(Host { cpus: 2, memory_mib: 4096 });
    let config = ServiceConfig {
        crash_dir: scratch.0.join("crash"),
        run_dir: scratch.0.join("run"),
        exe: "/nonexistent/crashvisor".into(),
        token: token.map(str::to_owned),
        limits,
        retention: Default::default(),
        fleet: None,
    };
    let state = AppState::new(config, StateDir::open(&scratch.0.join("state")).unwrap()).unwrap();
    (api::app(state.clone()), state)
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap().to_owned()
    }
}

async fn call(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap().to_vec();
    Reply { status, headers, body }
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn post_json(uri: &str, body: &str) -> Request<Body> {
    Request::post(uri).header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_owned())).unwrap()
}

#[tokio::test]
async fn bad_requests_get_documented_errors() {
    let scratch = Scratch::new("errors");
    let (app, _) = app(&scratch, None);
    let r = call(&app, get("/v1/vms/nope")).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::NOT_FOUND, "not_found"));
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("nope"));
    let cases = [
        ("{", StatusCode::BAD_REQUEST, "bad_request"),
        (r#"{"vcpu": 2}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument"),
        (r#"{"vcpus": 3}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument"),
        (r#"{"memory_mib": 8}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument"),
        (r#"{"memory_mib": 4000}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument"),
        (r#"{"name": "../x"}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument"),
        (r#"{"on_panic": "explode"}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument"),
        (r#"{"dump_format": "tar"}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument"),
    ];
    for (body, status, code) in cases {
        let r = call(&app, post_json("/v1/vms", body)).await;
        assert_eq!((r.status, r.error_code().as_str()), (status, code), "{body}: {}", r.json());
    }
    let huge = format!(r#"{{"cmdline": "{}"}}"#, "x".repeat(100_000));
    let r = call(&app, post_json("/v1/vms", &huge)).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));
    let r = call(&app, Request::post("/v1/vms").body(Body::from("{}")).unwrap()).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = call(&app, Request::put("/v1/vms").body(Body::empty()).unwrap()).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
    let r = call(&app, get("/v2/nothing")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    for id in ["..", ".hidden", "a%2Fb", "a%00b"] {
        let r = call(&app, get(&format!("/v1/vmcores/{id}/vmcore"))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{id}");
    }
    let r = call(&app, get("/v1/vmcores/vm-2024-01-01-00:00:00")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_token_guards_everything_but_healthz() {
    let scratch = Scratch::new("auth");
    let (app, _) = app(&scratch, Some("s3cret"));
    assert_eq!(call(&app, get("/v1/healthz")).await.status, StatusCode::OK);
    let r = call(&app, get("/v1/vms")).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"));
    assert_eq!(r.headers[header::WWW_AUTHENTICATE], "Bearer");
    let wrong = Request::get("/v1/vms").header(header::AUTHORIZATION, "Bearer nope").body(Body::empty()).unwrap();
    assert_eq!(call(&app, wrong).await.status, StatusCode::UNAUTHORIZED);
    let right = Request::get("/v1/vms").header(header::AUTHORIZATION, "Bearer s3cret").body(Body::empty()).unwrap();
    assert_eq!(call(&app, right).await.json(), json!({"vms": []}));
}

/// A committed crash of `vm` with a 3-page "vmcore" whose bytes are their offsets mod 251.
fn commit_crash(store: &CrashStore, vm: &str) -> (String, Vec<u8>) {
    let vmcore: Vec<u8> = (0..3 * 4096u32).map(|i| (i % 251) as u8).collect();
    let pending = store.begin(vm).unwrap();
    pending.write_file(FILE_VMCORE, &vmcore).unwrap();
    pending.write_file(FILE_VMCORE_DMESG, b"[    1.000000] Kernel panic - not syncing: test\n").unwrap();
    pending.write_file(FILE_KEXEC_DMESG, b"[    0.000000] capture kernel\n").unwrap();
    let mut meta = CrashMeta::new(Trigger::Kdump, vm, pending.created());
    meta.sizes.vmcore_apparent_bytes = vmcore.len() as u64;
    pending.write_meta(&meta).unwrap();
    (pending.commit().unwrap().id, vmcore)
}

#[tokio::test]
async fn vmcores_are_listed_downloaded_by_range_and_deleted() {
    let scratch = Scratch::new("vmcores");
    let (app, state) = app(&scratch, None);
    let (id, vmcore) = commit_crash(state.store(), "web-1");
    commit_crash(state.store(), "db-1");

    let list = call(&app, get("/v1/vmcores")).await.json();
    assert_eq!(list["vmcores"].as_array().unwrap().len(), 2);
    let list = call(&app, get("/v1/vmcores?vm=web-1")).await.json();
    assert_eq!(list["vmcores"][0]["id"], id.as_str());
    assert_eq!(list["vmcores"][0]["location"], "local", "no fleet store: the crash directory is local");
    // Without a fleet store there is no fleet to list, and no other host's crash.
    for query in ["scope=fleet", "host=host-b"] {
        let r = call(&app, get(&format!("/v1/vmcores?{query}"))).await;
        assert_eq!((r.status, r.error_code().as_str()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument"));
        assert!(r.json()["error"]["message"].as_str().unwrap().contains("--crash-store"), "{query}");
    }
    assert_eq!(call(&app, get("/v1/vmcores?scope=all")).await.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(call(&app, get(&format!("/v1/vmcores/{id}@host-b"))).await.status, StatusCode::NOT_FOUND);
    assert_eq!(call(&app, get(&format!("/v1/vmcores/{id}@a%2Fb"))).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(list["vmcores"][0]["size"], vmcore.len());
    assert_eq!(list["vmcores"].as_array().unwrap().len(), 1);

    let show = call(&app, get(&format!("/v1/vmcores/{id}"))).await.json();
    assert_eq!(show["meta"]["vm"], "web-1");
    assert_eq!(show["files"]["vmcore"]["bytes"], vmcore.len());

    let whole = call(&app, get(&format!("/v1/vmcores/{id}/vmcore"))).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(whole.headers[header::CONTENT_LENGTH], vmcore.len().to_string().as_str());
    assert_eq!(whole.headers[header::ACCEPT_RANGES], "bytes");
    assert_eq!(whole.body, vmcore);

    let ranged = |range: &str| {
        Request::get(format!("/v1/vmcores/{id}/vmcore")).header(header::RANGE, range).body(Body::empty()).unwrap()
    };
    let part = call(&app, ranged("bytes=4000-4199")).await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers[header::CONTENT_RANGE], format!("bytes 4000-4199/{}", vmcore.len()).as_str());
    assert_eq!(part.body, &vmcore[4000..4200]);
    let tail = call(&app, ranged("bytes=-10")).await;
    assert_eq!(tail.body, &vmcore[vmcore.len() - 10..]);
    let bad = call(&app, ranged("bytes=99999-")).await;
    assert_eq!((bad.status, bad.error_code().as_str()), (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable"));
    assert_eq!(bad.headers[header::CONTENT_RANGE], format!("bytes */{}", vmcore.len()).as_str());
    assert_eq!(call(&app, ranged("bytes=0-1,4-5")).await.status, StatusCode::RANGE_NOT_SATISFIABLE);

    let dmesg = call(&app, get(&format!("/v1/vmcores/{id}/dmesg"))).await;
    assert!(String::from_utf8(dmesg.body).unwrap().contains("Kernel panic - not syncing: test"));
    let kexec = call(&app, get(&format!("/v1/vmcores/{id}/kexec-dmesg"))).await;
    assert!(String::from_utf8(kexec.body).unwrap().contains("capture kernel"));
    // No core collector ran for it.
    let collector = call(&app, get(&format!("/v1/vmcores/{id}/core-collector-log"))).await;
    assert_eq!(collector.status, StatusCode::NOT_FOUND);
    // The fake vmcore is no ELF core: analysis and conversion say so.
    let converted = call(&app, get(&format!("/v1/vmcores/{id}/vmcore?format=kdump-zstd"))).await;
    assert_eq!(
        (converted.status, converted.error_code().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "unconvertible")
    );
    let backtrace = call(&app, get(&format!("/v1/vmcores/{id}/backtrace"))).await;
    assert_eq!((backtrace.status, backtrace.error_code().as_str()), (StatusCode::UNPROCESSABLE_ENTITY, "unanalysable"));
    assert_eq!(
        call(&app, get(&format!("/v1/vmcores/{id}/backtrace?cpu=1&pid=2"))).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert!(show["summary"].is_null() && show["summary_error"].is_string(), "{show}");
    assert_eq!(
        call(&app, get(&format!("/v1/vmcores/{id}/vmcore?format=zip"))).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    let delete = Request::delete(format!("/v1/vmcores/{id}")).body(Body::empty()).unwrap();
    assert_eq!(call(&app, delete).await.status, StatusCode::NO_CONTENT);
    assert_eq!(call(&app, get(&format!("/v1/vmcores/{id}"))).await.status, StatusCode::NOT_FOUND);
    assert_eq!(call(&app, get("/v1/vmcores")).await.json()["vmcores"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_vmm_that_cannot_start_fails_the_vm_with_its_reason() {
    let scratch = Scratch::new("spawn");
    let (app, _) = app(&scratch, None);
    let r = call(&app, post_json("/v1/vms", r#"{"name": "web-1"}"#)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json());
    assert_eq!(r.headers[header::LOCATION], "/v1/vms/web-1");
    let again = call(&app, post_json("/v1/vms", r#"{"name": "web-1"}"#)).await;
    assert_eq!((again.status, again.error_code().as_str()), (StatusCode::CONFLICT, "already_exists"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let vm = loop {
        let vm = call(&app, get("/v1/vms/web-1")).await.json();
        if vm["state"] == "failed" || Instant::now() > deadline {
            break vm;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(vm["state"], "failed", "{vm}");
    assert!(vm["failure"].as_str().unwrap().contains("cannot start the VMM"), "{vm}");
    let inject = call(&app, post_json("/v1/vms/web-1/faults", r#"{"kind": "panic"}"#)).await;
    assert_eq!((inject.status, inject.error_code().as_str()), (StatusCode::CONFLICT, "vm_not_running"));
    let bad_kind = call(&app, post_json("/v1/vms/web-1/faults", r#"{"kind": "meltdown"}"#)).await;
    assert_eq!(bad_kind.status, StatusCode::UNPROCESSABLE_ENTITY);
    let lkdtm = call(&app, post_json("/v1/vms/web-1/faults", r#"{"lkdtm": "PANIC", "cpoint": "TIMERADD"}"#)).await;
    assert_eq!((lkdtm.status, lkdtm.error_code().as_str()), (StatusCode::CONFLICT, "vm_not_running"));
    for (body, why) in [
        (r#"{"lkdtm": "USERCOPY_KERNEL"}"#, "USERCOPY_KERNEL is not supported by this kernel: there is no user space"),
        (r#"{"lkdtm": "PANIC", "cpoint": "SCSI_QUEUE_RQ"}"#, "crash point SCSI_QUEUE_RQ is not supported"),
        (
            r#"{"lkdtm": "PANIC", "cpoint": "NOWHERE"}"#,
            "unknown LKDTM crash point \"NOWHERE\"; the choices are DIRECT,",
        ),
        (r#"{"lkdtm": "PANIC", "cpoint": "TIMERADD", "count": 0}"#, "count is not a number from 1"),
        (r#"{"lkdtm": "PANIC", "kind": "panic"}"#, "either kind or lkdtm"),
        (r#"{"lkdtm": "SOFTLOCKUP", "duration_ms": 100}"#, "duration_ms and message go with kind"),
        (r#"{"kind": "panic", "cpoint": "TIMERADD"}"#, "cpoint and count go with lkdtm"),
        (r#"{"lkdtm": "PANIC", "cpu": 5}"#, "cpu is 5"),
        (r#"{}"#, "give a kind"),
    ] {
        let r = call(&app, post_json("/v1/vms/web-1/faults", body)).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let message = r.json()["error"]["message"].as_str().unwrap_or_default().to_owned();
        assert!(message.contains(why), "{body}: {message}");
    }
    let metrics = String::from_utf8(call(&app, get("/v1/metrics")).await.body).unwrap();
    assert!(metrics.lines().any(|l| l == "crashvisor_vms{state=\"failed\"} 1"), "{metrics}");
    assert!(metrics.lines().any(|l| l == "crashvisor_vm_failures_total 1"), "{metrics}");
    let delete = Request::delete("/v1/vms/web-1").body(Body::empty()).unwrap();
    assert_eq!(call(&app, delete).await.status, StatusCode::NO_CONTENT);
    assert_eq!(call(&app, get("/v1/vms")).await.json(), json!({"vms": []}));
}

#[tokio::test]
async fn the_service_describes_itself() {
    let scratch = Scratch::new("self");
    let (app, _) = app(&scratch, None);
    let health = call(&app, get("/v1/healthz")).await.json();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["limits"]["max_vcpus_per_vm"], 2);
    let openapi = call(&app, get("/v1/openapi.json")).await;
    assert_eq!(openapi.headers[header::CONTENT_TYPE], "application/json");
    let lkdtm = call(&app, get("/v1/lkdtm")).await.json();
    let panic = &lkdtm["types"][0];
    assert_eq!(panic["name"], "PANIC");
    let outcome = json!({"message": "Kernel panic - not syncing: dumptest", "caught_by": "panic", "panics": "always",
        "panics_in_hardirq": "always", "detector": "panic", "requires": null});
    assert_eq!(panic["outcome"], outcome, "{panic}");
    let named = |list: &str, name: &str| {
        let entries = lkdtm[list].as_array().unwrap();
        entries.iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("no {name} in {list}")).clone()
    };
    assert_eq!(named("types", "BUG")["outcome"]["panics_in_hardirq"], "always");
    assert_eq!(named("types", "BUG")["outcome"]["panics"], "panic_on_oops");
    let usercopy = named("types", "USERCOPY_KERNEL");
    assert_eq!(usercopy["supported"], false);
    assert!(usercopy["reason"].as_str().unwrap().contains("no user space"), "{usercopy}");
    assert_eq!(named("cpoints", "INT_HARDWARE_ENTRY")["context"], "hardirq");
    assert_eq!(named("cpoints", "FS_SUBMIT_BH")["supported"], false);
    assert_eq!(lkdtm["default_count"], 10);
    assert_eq!(openapi.json()["openapi"], "3.1.0");
}

/// The generated document against the router itself: each documented operation is routed, by
/// the same template (the metrics count requests by the route the router matched), and no
/// documented path takes a method the document does not list.
#[tokio::test]
async fn the_openapi_document_describes_every_route_the_router_serves() {
    let scratch = Scratch::new("openapi");
    let (app, _) = app(&scratch, None);
    let doc = call(&app, get("/v1/openapi.json")).await.json();
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented = Vec::new();
    for (path, item) in paths {
        let uri = path.replace("{id}", "x").replace("{name}", "kernel.panic");
        for method in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
            let request = Request::builder().method(method).uri(&uri).body(Body::empty()).unwrap();
            // The status only: an event stream's body never ends.
            let status = app.clone().oneshot(request).await.unwrap().status();
            let listed = item.get(method.to_lowercase()).is_some();
            assert_eq!(status != StatusCode::METHOD_NOT_ALLOWED, listed, "{method} {path}: {status}");
            if listed {
                documented.push(format!("route=\"{path}\",method=\"{method}\""));
            }
        }
    }
    let metrics = String::from_utf8(call(&app, get("/v1/metrics")).await.body).unwrap();
    for labels in documented {
        assert!(metrics.contains(&format!("crashvisor_http_requests_total{{{labels}")), "{labels} was not routed");
    }
}

#[tokio::test]
async fn the_vms_of_a_state_directory_are_found_again() {
    use api::supervisor::record::{VmRecord, VmmIdentity, RECORD_FORMAT};
    use api::supervisor::spec::CreateVm;
    use api::supervisor::state::Tracker;

    let scratch = Scratch::new("restore");
    // What a killed service left: a stopped VM, and a running one whose VMM has died since
    // and committed a crash before it did.
    let created_unix_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = VmmIdentity::of(child.id()).unwrap();
    child.wait().unwrap();
    let state_dir = StateDir::open(&scratch.0.join("state")).unwrap();
    state_dir.reserve_event_seq()(4097);
    let record = |name: &str, state: &str| {
        let spec = CreateVm { name: Some(name.into()), ..Default::default() }.into_spec(name.into()).unwrap();
        let mut tracker = Tracker::new();
        let booted = serde_json::from_value(json!({"event": "booted", "boot": 1, "release": "6.18", "cpus": 1}));
        tracker.on_control_event(&booted.unwrap(), Instant::now());
        let mut status = serde_json::to_value(&tracker).unwrap();
        status["state"] = json!(state);
        VmRecord {
            format: RECORD_FORMAT,
            spec,
            created_unix_ms: created_unix_ms as u64 - 1000,
            control_socket: scratch.0.join(format!("run/{name}.sock")),
            vmm: (state == "running").then_some(dead),
            status: serde_json::from_value(status).unwrap(),
        }
    };
    for (name, state) in [("calm", "stopped"), ("lost", "running")] {
        let vm = state_dir.vm(name);
        vm.create().unwrap();
        vm.write(&record(name, state)).unwrap();
        std::fs::write(vm.console(), format!("{name}'s console\n")).unwrap();
    }
    drop(state_dir);
    let (id, _) = commit_crash(&CrashStore::open(scratch.0.join("crash")).unwrap(), "lost");

    let (app, state) = app(&scratch, None);
    let mut events = state.bus().subscribe(Some(0));
    let deadline = Instant::now() + Duration::from_secs(10);
    let lost = loop {
        let vm = call(&app, get("/v1/vms/lost")).await.json();
        if vm["state"] == "failed" && vm["vmcores"] == json!([id]) || Instant::now() > deadline {
            break vm;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(lost["state"], "failed", "{lost}");
    let failure = lost["failure"].as_str().unwrap();
    assert!(failure.contains(&format!("pid {}", dead.pid)) && failure.contains("ended while no service ran"), "{lost}");
    assert_eq!(lost["vmcores"], json!([id]), "the crash committed while no service ran is the VM's");
    let calm = call(&app, get("/v1/vms/calm")).await.json();
    assert_eq!((calm["state"].as_str(), calm["boots"].as_u64()), (Some("stopped"), Some(1)), "{calm}");
    assert_eq!(call(&app, get("/v1/vms/calm/console")).await.body, b"calm's console\n");

    // An event is published once the record holding it is on disk, so it can come after the
    // state a GET shows: wait for it.
    let mut seen = std::mem::take(&mut events.backlog);
    let deadline = Instant::now() + Duration::from_secs(10);
    let has = |seen: &[Arc<ServiceEvent>], event: &str| seen.iter().any(|e| e.vm == "lost" && e.event == event);
    while !(has(&seen, "failed") && has(&seen, "vmcore_ready")) && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(100), events.live.recv()).await {
            Ok(Ok(event)) => seen.push(event),
            Ok(Err(e)) => panic!("the event stream ended: {e}"),
            Err(_) => {}
        }
    }
    let names: Vec<(&str, &str)> = seen.iter().map(|e| (e.vm.as_str(), e.event.as_str())).collect();
    assert!(has(&seen, "failed") && has(&seen, "vmcore_ready"), "{names:?}");
    let ready = seen.iter().find(|e| e.event == "vmcore_ready").unwrap();
    assert_eq!(ready.fields["found_at_restart"], json!(true));
    assert!(seen.iter().all(|e| e.seq >= 4097), "event numbers go on above the last service's");

    let delete = Request::delete("/v1/vms/lost").body(Body::empty()).unwrap();
    assert_eq!(call(&app, delete).await.status, StatusCode::NO_CONTENT);
    assert!(!scratch.0.join("state/vms/lost").exists(), "a deleted VM leaves the state directory");
    assert!(scratch.0.join("state/vms/calm/vm.json").exists());
}
