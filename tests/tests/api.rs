//! The REST service end to end: the real `crashvisor serve` on an ephemeral port with its own
//! crash store, driven only over HTTP as a test harness would. VMs crash by injected faults
//! (kdump catches them), events arrive over SSE, vmcores are downloaded whole and by ranges and
//! read with dumpd's ELF reader, analysed (summary, backtraces, tasks) and converted to
//! kdump-compressed on the fly; LKDTM's crash types are listed and run (at a crash point, and
//! by the command-line client); a VM with makedumpfile as its core collector gets
//! makedumpfile's vmcore; a killed VMM fails its VM only; bad requests get the documented
//! errors; a stopped service stops its VMs and a restarted one serves the same crash store.
//!
//! Run one test at a time on small hosts: `cargo test -p crashvisor-tests --test api --
//! --test-threads=1` (after `cargo build -p vmm -p api`).

use std::time::{Duration, Instant};

use crashvisor_abi::lkdtm::CrashType;
use crashvisor_tests::api::{one_at_a_time, signal, EventStream, HttpResponse, Service};
use crashvisor_tests::kdump::{self, CAPTURE_TIMEOUT};
use crashvisor_tests::BOOT_TIMEOUT;
use dumpd::elf::Core;
use serde_json::{json, Value};

/// A VM whose soft lockups and oopses panic into kdump, with fast detectors.
fn crashing_vm(name: &str, vcpus: u32, memory_mib: u64) -> Value {
    json!({
        "name": name,
        "vcpus": vcpus,
        "memory_mib": memory_mib,
        "kdump": {},
        "watchdog": {
            "thresh_secs": 2,
            "softlockup_panic": true,
            "hardlockup_panic": true,
            "hung_task_panic": true,
            "hung_task_timeout_secs": 2,
        },
        "panic": {"on_oops": true},
    })
}

#[track_caller]
fn expect_status(response: &HttpResponse, status: u16, what: &str) {
    assert_eq!(response.status, status, "{what}: {}", response.text());
}

#[track_caller]
fn expect_error(response: &HttpResponse, status: u16, code: &str, what: &str) {
    assert_eq!((response.status, response.error_code().as_str()), (status, code), "{what}: {}", response.text());
    let message = response.json()["error"]["message"].as_str().unwrap_or("").to_owned();
    assert!(!message.is_empty(), "{what}: an error without a message");
}

/// Creates a VM and waits for its `booted` event.
#[track_caller]
fn create_booted(service: &Service, events: &mut EventStream, body: &Value) -> String {
    let created = service.post("/v1/vms", body);
    expect_status(&created, 201, "POST /v1/vms");
    let name = created.json()["name"].as_str().expect("a name").to_owned();
    assert_eq!(created.header("location"), Some(format!("/v1/vms/{name}").as_str()));
    events.wait(&name, "booted", BOOT_TIMEOUT);
    name
}

/// Injects `kind` on `cpu` and waits for the vmcore; returns its id.
#[track_caller]
fn crash(service: &Service, events: &mut EventStream, vm: &str, fault: Value) -> String {
    let injected = service.post(&format!("/v1/vms/{vm}/faults"), &fault);
    expect_status(&injected, 202, &format!("inject {fault}"));
    let ready = events.wait(vm, "vmcore_ready", CAPTURE_TIMEOUT);
    ready.data["id"].as_str().expect("vmcore_ready has an id").to_owned()
}

/// Checks vmcore `id` over HTTP: metadata, the whole file as an ELF core with one
/// `NT_PRSTATUS` per vCPU, ranges against the whole, and its logs.
#[track_caller]
fn check_vmcore(service: &Service, id: &str, vm: &str, vcpus: usize, dmesg_line: &str) {
    let show = service.get(&format!("/v1/vmcores/{id}"));
    expect_status(&show, 200, "GET /v1/vmcores/{id}");
    let meta = show.json()["meta"].clone();
    assert_eq!(meta["vm"], vm, "{meta}");
    let size = meta["sizes"]["vmcore_apparent_bytes"].as_u64().expect("sizes in meta.json") as usize;

    let whole = service.get(&format!("/v1/vmcores/{id}/vmcore"));
    expect_status(&whole, 200, "the whole vmcore");
    assert_eq!(whole.header("content-length"), Some(size.to_string().as_str()));
    assert_eq!(whole.body.len(), size);
    let headers_len = Core::required_len(&whole.body).expect("an ELF64 x86_64 core header") as usize;
    let core = Core::parse(&whole.body[..headers_len]).expect("the vmcore's headers and notes parse");
    core.check_file_len(size as u64).expect("every segment lies inside the file");
    assert_eq!(core.notes().iter().filter(|n| n.is_prstatus()).count(), vcpus, "one NT_PRSTATUS per vCPU");
    assert!(core.notes().iter().any(|n| n.name == b"VMCOREINFO"), "a VMCOREINFO note");
    assert!(core.loads().count() > 0, "PT_LOADs");

    let middle = size / 2;
    for (range, start, end) in [
        ("bytes=0-4095".to_owned(), 0, 4096),
        (format!("bytes={middle}-{}", middle + 65_535), middle, middle + 65_536),
        ("bytes=-4096".to_owned(), size - 4096, size),
    ] {
        let part = service.request("GET", &format!("/v1/vmcores/{id}/vmcore"), &[("range", &range)], None);
        expect_status(&part, 206, &range);
        assert_eq!(part.header("content-range"), Some(format!("bytes {start}-{}/{size}", end - 1).as_str()));
        assert!(part.body == whole.body[start..end], "{range}: the bytes differ from the whole download's");
    }
    let beyond =
        service.request("GET", &format!("/v1/vmcores/{id}/vmcore"), &[("range", &format!("bytes={size}-"))], None);
    expect_error(&beyond, 416, "range_not_satisfiable", "a range past the end");

    let dmesg = service.get(&format!("/v1/vmcores/{id}/dmesg")).text();
    assert!(dmesg.contains(dmesg_line), "no {dmesg_line:?} in vmcore-dmesg.txt:\n{dmesg}");
    let kexec = service.get(&format!("/v1/vmcores/{id}/kexec-dmesg")).text();
    assert!(kexec.contains("elfcorehdr="), "kexec-dmesg.log is the capture kernel's log:\n{kexec}");
}

/// The soft lockup's analysis: the summary names the panic, CPU 1's backtrace is symbolised and
/// runs through the injected spin, and the task list holds the fault's task.
#[track_caller]
fn check_analysis(service: &Service, id: &str) {
    let show = service.get(&format!("/v1/vmcores/{id}")).json();
    let summary = &show["summary"];
    assert_eq!(summary["panic"]["cpu"], 1, "{show}");
    assert!(summary["panic"]["message"].as_str().unwrap_or("").contains("softlockup"), "{show}");
    let bt = service.get(&format!("/v1/vmcores/{id}/backtrace"));
    expect_status(&bt, 200, "the backtrace");
    let bt = bt.json();
    assert_eq!(bt["symbolised"], true, "{bt}");
    assert_eq!(bt["backtraces"][0]["cpu"], 1, "{bt}");
    let functions: Vec<&str> =
        bt["backtraces"][0]["frames"].as_array().unwrap().iter().filter_map(|f| f["function"].as_str()).collect();
    assert!(functions.iter().any(|f| f.contains("softlockup")), "CPU 1 was in the injected spin: {functions:?}");
    let all = service.get(&format!("/v1/vmcores/{id}/backtrace?all=1")).json();
    assert_eq!(all["backtraces"].as_array().unwrap().len(), 2, "{all}");
    let text = service.get(&format!("/v1/vmcores/{id}/backtrace?format=text")).text();
    assert!(text.contains("softlockup"), "{text}");
    let tasks = service.get(&format!("/v1/vmcores/{id}/tasks")).json();
    assert!(tasks["tasks"].as_array().unwrap().iter().any(|t| t["comm"] == "softlockup/1"), "{tasks}");
    expect_error(&service.get(&format!("/v1/vmcores/{id}/backtrace?cpu=7")), 404, "not_found", "a CPU the dump lacks");
}

/// The vmcore converted to kdump-compressed (zstd) on the fly: a kdump file, served with ranges.
#[track_caller]
fn check_kdump_zstd(service: &Service, id: &str) {
    let path = format!("/v1/vmcores/{id}/vmcore?format=kdump-zstd");
    let kdump = service.get(&path);
    expect_status(&kdump, 200, "the kdump-zstd conversion");
    assert!(kdump.body.starts_with(b"KDUMP   "), "a kdump signature: {:?}", &kdump.body[..16.min(kdump.body.len())]);
    let size =
        service.get(&format!("/v1/vmcores/{id}")).json()["meta"]["sizes"]["vmcore_apparent_bytes"].as_u64().unwrap();
    assert!((kdump.body.len() as u64) < size / 4, "compressed: {} of {size} bytes", kdump.body.len());
    let part = service.request("GET", &path, &[("range", "bytes=0-7")], None);
    expect_status(&part, 206, "a range of the conversion");
    assert_eq!(part.body, b"KDUMP   ");
}

#[test]
fn two_vms_crash_and_their_vmcores_are_served() {
    let _serial = one_at_a_time();
    let service = Service::start(&[]);
    let mut events = service.events("/v1/events?since=0");
    let web = create_booted(&service, &mut events, &crashing_vm("web-1", 2, 256));
    let db = create_booted(&service, &mut events, &crashing_vm("db-1", 1, 192));
    service.wait_kdump(&web);
    service.wait_kdump(&db);

    // A soft lockup on CPU 1 of web-1, found by the detector, panics into kdump.
    let softlockup = crash(&service, &mut events, &web, json!({"kind": "softlockup", "cpu": 1}));
    let lockup = events.wait(&web, "lockup_detected", Duration::ZERO);
    assert_eq!((lockup.data["kind"].as_str(), lockup.data["cpu"].as_u64()), (Some("soft"), Some(1)), "{}", lockup.data);
    let panicked = events.wait(&web, "panicked", Duration::ZERO);
    assert_eq!(panicked.data["detector"], "softlockup", "{}", panicked.data);
    events.wait(&web, "capture_started", Duration::ZERO);
    check_vmcore(&service, &softlockup, &web, 2, "watchdog: BUG: soft lockup - CPU#1 stuck for ");

    // A panic on db-1 meanwhile.
    let panic = crash(&service, &mut events, &db, json!({"kind": "panic", "message": "api test panic"}));
    check_vmcore(&service, &panic, &db, 1, "Kernel panic - not syncing: api test panic");

    // web-1 rebooted after its dump and reloaded kdump; now an oops (panic_on_oops).
    events.wait_for(
        |e| e.name == "booted" && e.data["vm"] == web && e.data["boot"] == 2,
        "web-1's second boot",
        BOOT_TIMEOUT,
    );
    service.wait_kdump(&web);
    let oops = crash(&service, &mut events, &web, json!({"kind": "oops", "cpu": 1}));
    check_vmcore(&service, &oops, &web, 2, "BUG: kernel NULL pointer dereference");

    let vm = service.get(&format!("/v1/vms/{web}")).json();
    assert_eq!(vm["crashes"], 2, "{vm}");
    assert_eq!(vm["vmcores"], json!([softlockup, oops]), "{vm}");
    let listed = service.get(&format!("/v1/vmcores?vm={web}")).json();
    let ids: Vec<&str> = listed["vmcores"].as_array().unwrap().iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids, [softlockup.as_str(), oops.as_str()]);
    assert_eq!(listed["vmcores"][0]["reason"]["detector"], "softlockup");
    assert_eq!(service.get("/v1/vmcores").json()["vmcores"].as_array().unwrap().len(), 3);

    check_analysis(&service, &softlockup);
    check_kdump_zstd(&service, &oops);

    expect_status(&service.delete(&format!("/v1/vmcores/{softlockup}")), 204, "DELETE the vmcore");
    expect_error(&service.get(&format!("/v1/vmcores/{softlockup}")), 404, "not_found", "a deleted vmcore");
    expect_status(&service.delete(&format!("/v1/vms/{db}")), 204, "DELETE db-1");
    events.wait(&db, "deleted", Duration::from_secs(10));
    expect_error(&service.get(&format!("/v1/vms/{db}")), 404, "not_found", "a deleted VM");

    let metrics = service.get("/v1/metrics").text();
    for line in [
        "crashvisor_lockups_total{kind=\"soft\"} 1",
        "crashvisor_vmcores_total 3",
        "crashvisor_panics_total{detector=\"oops\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in\n{metrics}");
    }
}

/// kdump.core_collector: the host writes the vmcore with makedumpfile, which the service serves
/// and analyses like any other; a collector other than makedumpfile is refused.
#[test]
fn a_vm_with_makedumpfile_as_its_core_collector() {
    let _serial = one_at_a_time();
    kdump::require_fuse();
    kdump::require_tool("makedumpfile");
    let service = Service::start(&[]);
    let mut body = crashing_vm("collected", 1, 256);
    body["kdump"] = json!({"core_collector": "rm -rf /"});
    expect_error(&service.post("/v1/vms", &body), 422, "invalid_argument", "a collector other than makedumpfile");
    body["kdump"] = json!({"dump_level": 0, "core_collector": "makedumpfile -l -d 31"});
    let mut events = service.events("/v1/events?since=0");
    let vm = create_booted(&service, &mut events, &body);
    service.wait_kdump(&vm);
    let id = crash(&service, &mut events, &vm, json!({"kind": "panic", "message": "collected panic"}));

    let show = service.get(&format!("/v1/vmcores/{id}")).json();
    let meta = &show["meta"];
    assert_eq!(meta["core_collector"], json!({"command": "makedumpfile -l -d 31", "collected": true}), "{meta}");
    assert_eq!(meta["vmcore_format"], "kdump", "{meta}");
    assert!(show["files"]["core-collector.log"]["bytes"].as_u64() > Some(0), "{show}");
    assert_eq!(show["summary"]["panic"]["message"], "collected panic", "{show}");
    let vmcore = service.get(&format!("/v1/vmcores/{id}/vmcore"));
    expect_status(&vmcore, 200, "the collector's vmcore");
    assert!(vmcore.body.starts_with(b"KDUMP   "), "makedumpfile's kdump-compressed file");
    let log = service.get(&format!("/v1/vmcores/{id}/core-collector-log")).text();
    assert!(log.contains("The dumpfile is saved to"), "makedumpfile's messages:\n{log}");
}

#[test]
fn every_other_fault_kind_is_caught_over_http() {
    let _serial = one_at_a_time();
    let service = Service::start(&[]);
    let mut events = service.events("/v1/events?since=0");
    let vm = create_booted(&service, &mut events, &crashing_vm("faults", 2, 256));
    // (fault, the line the crashed kernel's log must hold)
    let faults = [
        ("hardlockup", "Watchdog detected hard LOCKUP on cpu 1"),
        ("hung_task", "INFO: task hung_task/1:"),
        ("deadlock", "watchdog: BUG: soft lockup - CPU#"),
        ("bug", "kernel BUG at "),
        ("sysrq_crash", "Kernel panic - not syncing: sysrq triggered crash"),
        ("stack_overflow", "BUG: TASK stack guard page was hit at "),
    ];
    for (boot, (kind, line)) in faults.iter().enumerate() {
        let boot = boot as u64 + 1;
        if boot > 1 {
            events.wait_for(
                |e| e.name == "booted" && e.data["vm"] == vm && e.data["boot"] == boot,
                "the next boot",
                BOOT_TIMEOUT,
            );
        }
        service.wait_kdump(&vm);
        let started = Instant::now();
        let id = crash(&service, &mut events, &vm, json!({"kind": kind, "cpu": 1}));
        eprintln!("{kind}: vmcore {id} {:?} after the injection", started.elapsed());
        let dmesg = service.get(&format!("/v1/vmcores/{id}/dmesg")).text();
        assert!(dmesg.contains(line), "{kind}: no {line:?} in vmcore-dmesg.txt:\n{dmesg}");
    }
}

/// LKDTM over HTTP: the table the service serves is the guest's, and crash types run at a crash
/// point (in the interrupt context that hits it) and directly (in a task), each into a vmcore.
#[test]
fn lkdtm_types_are_listed_and_run_at_crash_points_over_http() {
    let _serial = one_at_a_time();
    let service = Service::start(&[]);
    let listed = service.get("/v1/lkdtm");
    expect_status(&listed, 200, "GET /v1/lkdtm");
    let listed = listed.json();
    let supported: Vec<&str> = listed["types"]
        .as_array()
        .expect("types")
        .iter()
        .filter(|t| t["supported"] == true)
        .filter_map(|t| t["name"].as_str())
        .collect();
    let wanted: Vec<&str> = CrashType::supported().map(CrashType::as_str).collect();
    assert_eq!(supported, wanted);
    assert_eq!(listed["types"].as_array().map(Vec::len), Some(CrashType::ALL.len()));

    let mut events = service.events("/v1/events?since=0");
    let vm = create_booted(&service, &mut events, &crashing_vm("lkdtm", 2, 256));
    service.wait_kdump(&vm);
    let at_point = json!({"lkdtm": "PANIC", "cpoint": "INT_HARDWARE_ENTRY", "count": 3, "cpu": 1});
    let injected = service.post(&format!("/v1/vms/{vm}/faults"), &at_point);
    expect_status(&injected, 202, "PANIC at INT_HARDWARE_ENTRY");
    let mut registered = at_point.clone();
    registered["pid"] = Value::Null; // no task carries it
    assert_eq!(injected.json(), registered, "the registration, as the guest answered it");
    let id = events.wait(&vm, "vmcore_ready", CAPTURE_TIMEOUT).data["id"].as_str().expect("an id").to_owned();
    let show = service.get(&format!("/v1/vmcores/{id}")).json();
    assert_eq!(show["summary"]["panic"]["cpu"], 1, "only CPU 1's hits counted: {show}");
    let dmesg = service.get(&format!("/v1/vmcores/{id}/dmesg")).text();
    for line in [
        "lkdtm: Crash point INT_HARDWARE_ENTRY of type PANIC hit, trigger in 0 rounds",
        "Kernel panic - not syncing: dumptest",
        " <IRQ>",
    ] {
        assert!(dmesg.contains(line), "no {line:?} in vmcore-dmesg.txt:\n{dmesg}");
    }

    events.wait_for(|e| e.name == "booted" && e.data["vm"] == vm && e.data["boot"] == 2, "the next boot", BOOT_TIMEOUT);
    service.wait_kdump(&vm);
    // The command-line client: an upper-case kind is LKDTM's.
    let direct = service.client(&["inject", &vm, "EXCEPTION", "--cpu", "1"]);
    assert!(direct.starts_with(&format!("injected EXCEPTION on CPU 1 of {vm} (pid ")), "{direct}");
    let id = events.wait(&vm, "vmcore_ready", CAPTURE_TIMEOUT).data["id"].as_str().expect("an id").to_owned();
    let show = service.get(&format!("/v1/vmcores/{id}")).json();
    assert_eq!(show["meta"]["reason"]["comm"], "lkdtm/1", "{show}");
    let dmesg = service.get(&format!("/v1/vmcores/{id}/dmesg")).text();
    let line = "BUG: kernel NULL pointer dereference, address: 0000000000000000";
    assert!(dmesg.contains(line), "no {line:?} in vmcore-dmesg.txt:\n{dmesg}");
}

#[test]
fn a_killed_vmm_fails_its_vm_while_the_other_keeps_running() {
    let _serial = one_at_a_time();
    let service = Service::start(&[]);
    let mut events = service.events("/v1/events?since=0");
    let small = json!({"memory_mib": 128});
    let doomed = create_booted(&service, &mut events, &small);
    let survivor = create_booted(&service, &mut events, &small);

    let console = service.get(&format!("/v1/vms/{doomed}/console")).text();
    assert!(console.contains("smp: Brought up 1 node, 1 CPU"), "the console holds the boot log:\n{console}");
    // A follower's response ends when the VM does.
    let addr = service.addr.clone();
    let path = format!("/v1/vms/{doomed}/console?follow=1");
    let follower = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        std::io::Write::write_all(
            &mut stream,
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut stream, &mut all).unwrap();
        String::from_utf8_lossy(&all).into_owned()
    });

    let pid = service.get(&format!("/v1/vms/{doomed}")).json()["pid"].as_u64().expect("a running VM has a pid");
    signal(pid as u32, "KILL");
    let failed = events.wait(&doomed, "failed", Duration::from_secs(30));
    let reason = failed.data["reason"].as_str().unwrap_or("");
    assert!(reason.contains("SIGKILL"), "{reason}");
    let vm = service.get(&format!("/v1/vms/{doomed}")).json();
    assert_eq!((vm["state"].as_str(), vm["pid"].is_null()), (Some("failed"), true), "{vm}");
    assert!(vm["failure"].as_str().unwrap_or("").contains("killed by signal 9"), "{vm}");
    let followed = follower.join().expect("the follower");
    assert!(followed.contains("smp: Brought up"), "{followed}");
    expect_error(
        &service.post(&format!("/v1/vms/{doomed}/faults"), &json!({"kind": "panic"})),
        409,
        "vm_not_running",
        "a fault for a failed VM",
    );

    // The other VM is untouched and its guest answers.
    let other = service.get(&format!("/v1/vms/{survivor}")).json();
    assert_eq!(other["state"], "running", "{other}");
    let dmesg = service.get(&format!("/v1/vms/{survivor}/dmesg"));
    expect_status(&dmesg, 200, "the survivor's dmesg");
    assert!(dmesg.text().contains("Run /bin/sh as init process"), "{}", dmesg.text());
    let set = service.put(&format!("/v1/vms/{survivor}/sysctl/kernel.panic"), &json!({"value": 7}));
    assert_eq!(set.json(), json!({"name": "kernel.panic", "value": "7"}));
    let paused = service.post(&format!("/v1/vms/{survivor}/actions"), &json!({"action": "pause"}));
    assert_eq!(paused.json()["state"], "paused", "{}", paused.text());
    let resumed = service.post(&format!("/v1/vms/{survivor}/actions"), &json!({"action": "resume"}));
    assert_eq!(resumed.json()["state"], "running", "{}", resumed.text());

    let metrics = service.get("/v1/metrics").text();
    for line in
        ["crashvisor_vms{state=\"failed\"} 1", "crashvisor_vms{state=\"running\"} 1", "crashvisor_vm_failures_total 1"]
    {
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in\n{metrics}");
    }
}

#[test]
fn bad_requests_get_the_documented_errors() {
    let _serial = one_at_a_time();
    let service = Service::start(&["--max-vms", "1"]);
    let mut events = service.events("/v1/events?since=0");
    let vm = create_booted(&service, &mut events, &json!({"name": "only", "memory_mib": 128}));

    // A host-side dump gives a vmcore to send bad ranges for.
    let dumped = service.post(&format!("/v1/vms/{vm}/actions"), &json!({"action": "dump"}));
    expect_status(&dumped, 200, "the dump action");
    let id = events.wait(&vm, "vmcore_ready", CAPTURE_TIMEOUT).data["id"].as_str().unwrap().to_owned();

    let json_post = |path: &str, body: &str| {
        service.request("POST", path, &[("content-type", "application/json")], Some(body.as_bytes()))
    };
    let faults = format!("/v1/vms/{vm}/faults");
    let cases: Vec<(HttpResponse, u16, &str, &str)> = vec![
        (json_post("/v1/vms", "{"), 400, "bad_request", "JSON that does not parse"),
        (service.get("/v1/vmcores/..%2F..%2Fetc"), 400, "bad_request", "a vmcore id with slashes"),
        (service.get(&format!("/v1/vms/{vm}/console?follow=maybe")), 400, "bad_request", "a bad query value"),
        (
            service.request("GET", "/v1/events", &[("last-event-id", "x")], None),
            400,
            "bad_request",
            "a bad Last-Event-ID",
        ),
        (service.get("/v1/vms/nope"), 404, "not_found", "an unknown VM"),
        (service.get("/v1/vmcores/nope-2024-01-01-00:00:00"), 404, "not_found", "an unknown vmcore"),
        (service.get(&format!("/v1/vms/{vm}/sysctl/kernel.nope")), 404, "unknown_sysctl", "an unknown sysctl"),
        (service.get("/v2/vms"), 404, "not_found", "an unknown endpoint"),
        (service.request("PUT", "/v1/vms", &[], None), 405, "method_not_allowed", "a method the endpoint lacks"),
        (service.post("/v1/vms", &json!({"name": "only"})), 409, "already_exists", "a taken name"),
        (service.post("/v1/vms", &json!({"name": "second"})), 409, "limit_exceeded", "one VM too many"),
        (
            json_post("/v1/vms", &format!(r#"{{"cmdline":"{}"}}"#, "x".repeat(70_000))),
            413,
            "payload_too_large",
            "a huge body",
        ),
        (service.request("POST", "/v1/vms", &[], Some(b"{}")), 415, "unsupported_media_type", "no content type"),
        (service.post("/v1/vms", &json!({"vcpus": 99})), 422, "invalid_argument", "too many vCPUs"),
        (service.post("/v1/vms", &json!({"memory_mib": 1 << 30})), 422, "invalid_argument", "too much memory"),
        (service.post("/v1/vms", &json!({"vcpu": 1})), 422, "invalid_argument", "a misspelt field"),
        (service.post(&faults, &json!({"kind": "meltdown"})), 422, "invalid_argument", "an unknown fault"),
        (
            service.post(&faults, &json!({"lkdtm": "USERCOPY_KERNEL"})),
            422,
            "invalid_argument",
            "an LKDTM type the kernel does not support",
        ),
        (
            service.post(&faults, &json!({"kind": "softlockup", "cpu": 3})),
            422,
            "invalid_argument",
            "a CPU the VM lacks",
        ),
        (
            service.post(&format!("/v1/vms/{vm}/actions"), &json!({"action": "explode"})),
            422,
            "invalid_argument",
            "an unknown action",
        ),
        (
            service.request("GET", &format!("/v1/vmcores/{id}/vmcore"), &[("range", "bytes=5-1")], None),
            416,
            "range_not_satisfiable",
            "a backwards range",
        ),
        (
            service.request("GET", &format!("/v1/vmcores/{id}/vmcore"), &[("range", "bytes=0-1,4-5")], None),
            416,
            "range_not_satisfiable",
            "two ranges",
        ),
        (service.get(&format!("/v1/vmcores/{id}/vmcore?format=zip")), 422, "invalid_argument", "an unknown format"),
        (service.get(&format!("/v1/vmcores/{id}/backtrace?cpu=1&all=1")), 422, "invalid_argument", "two selectors"),
    ];
    for (response, status, code, what) in &cases {
        expect_error(response, *status, code, what);
    }
    let spec = service.get("/v1/openapi.json").json();
    assert!(spec["paths"]["/v1/vmcores/{id}/vmcore"]["get"]["responses"]["416"].is_object(), "416 is documented");

    // With a token, everything but healthz needs it.
    let guarded = Service::start(&["--token", "s3cret"]);
    expect_status(&guarded.get("/v1/healthz"), 200, "healthz without a token");
    expect_error(&guarded.get("/v1/vms"), 401, "unauthorized", "no token");
    let with_token = guarded.request("GET", "/v1/vms", &[("authorization", "Bearer s3cret")], None);
    assert_eq!(with_token.json(), json!({"vms": []}));

    // Beyond loopback without a token, the service refuses to start.
    let binary = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("crashvisor");
    let refused = std::process::Command::new(binary)
        .args(["serve", "--addr", "0.0.0.0:0"])
        .env_remove("CRASHVISOR_TOKEN")
        .output()
        .expect("run crashvisor serve");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("without a token"), "{stderr}");
}

#[test]
fn a_stopped_service_stops_its_vms_and_a_restarted_one_serves_the_store() {
    let _serial = one_at_a_time();
    let mut service = Service::start(&[]);
    let mut events = service.events("/v1/events?since=0");
    let vm = create_booted(&service, &mut events, &json!({"memory_mib": 128}));
    let pid = service.get(&format!("/v1/vms/{vm}")).json()["pid"].as_u64().expect("a pid");
    expect_status(&service.post(&format!("/v1/vms/{vm}/actions"), &json!({"action": "dump"})), 200, "dump");
    let id = events.wait(&vm, "vmcore_ready", CAPTURE_TIMEOUT).data["id"].as_str().unwrap().to_owned();

    let status = service.terminate();
    assert!(status.success(), "the service exits cleanly on SIGTERM: {status}\n{}", service.log());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the VMM {pid} outlived the service");
    events.wait(&vm, "stopped", Duration::from_secs(5));

    let restarted = Service::start_with_store(service.into_store(), &[]);
    let listed = restarted.get("/v1/vmcores").json();
    assert_eq!(listed["vmcores"][0]["id"], id.as_str(), "{listed}");
    assert_eq!(listed["vmcores"][0]["trigger"], "on_demand", "{listed}");
    assert_eq!(restarted.get("/v1/vms").json(), json!({"vms": []}));
}
