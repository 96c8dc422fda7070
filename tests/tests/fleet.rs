//! The fleet's crash store end to end: the real `crashvisor serve --crash-store` with real VMs,
//! shipping to a real S3 server (s3s-fs, started on loopback by the test; `.ci/install-s3-server`
//! installs it). A kdump crash and a host-side crash reach the bucket byte-exact; a second
//! service with another host id lists, downloads (with `Range`), analyses and deletes them; a
//! storm of 8 crashes while the store is down for 30 s all arrive, each once, and the spool
//! drains; `kill -9` of the service mid multipart upload, then a restart on the same state
//! directory, adopts the VM, resumes the upload and completes it, and ships the adopted VM's next
//! crash; `vmm --crash-store` run on its own ships its crash before it exits.
//!
//! Run: `cargo build -p vmm -p api` then `cargo test -p crashvisor-tests --test fleet`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crashvisor_tests::api::{one_at_a_time, EventStream, HttpResponse, Service};
use crashvisor_tests::kdump::CAPTURE_TIMEOUT;
use crashvisor_tests::{TempDir, BOOT_TIMEOUT};
use fleet::test_server::S3Server;
use serde_json::{json, Value};

/// How long an upload may take once the store is reachable (debug builds, a busy host).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(180);

#[track_caller]
fn expect_status(response: &HttpResponse, status: u16, what: &str) {
    assert_eq!(response.status, status, "{what}: {}", response.text());
}

/// Creates a VM and waits for its `booted` event.
#[track_caller]
fn create_booted(service: &Service, events: &mut EventStream, body: &Value) -> String {
    let created = service.post("/v1/vms", body);
    expect_status(&created, 201, "POST /v1/vms");
    let name = created.json()["name"].as_str().expect("a name").to_owned();
    events.wait(&name, "booted", BOOT_TIMEOUT);
    name
}

/// A host-side dump of `vm`; its id.
#[track_caller]
fn dump(service: &Service, events: &mut EventStream, vm: &str) -> String {
    expect_status(&service.post(&format!("/v1/vms/{vm}/actions"), &json!({"action": "dump"})), 200, "dump");
    events.wait(vm, "vmcore_ready", CAPTURE_TIMEOUT).data["id"].as_str().expect("an id").to_owned()
}

/// Waits for `vmcore_uploaded` of crash `id` of `vm`; its data.
#[track_caller]
fn uploaded(events: &mut EventStream, vm: &str, id: &str) -> Value {
    events
        .wait_for(
            |e| e.name == "vmcore_uploaded" && e.data["vm"] == vm && e.data["id"] == id,
            "vmcore_uploaded",
            UPLOAD_TIMEOUT,
        )
        .data
}

/// A store-side view of the bucket for the test's checks.
struct Bucket {
    runtime: tokio::runtime::Runtime,
    bucket: fleet::FleetBucket,
}

impl Bucket {
    fn new(server: &S3Server) -> Self {
        Self::under(server, "fleet")
    }

    fn under(server: &S3Server, prefix: &str) -> Self {
        let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
        Self { runtime, bucket: server.bucket(prefix, "test-reader") }
    }

    /// SHA-256 and length of `file` of crash `id` of `host`, read back from the store.
    fn sha256(&self, host: &str, id: &str, file: &str) -> (String, u64) {
        let key = self.bucket.key(host, id, file);
        self.runtime.block_on(self.bucket.sha256(&key)).unwrap_or_else(|e| panic!("read {key}: {e}"))
    }

    fn meta(&self, host: &str, id: &str) -> dumpd::store::CrashMeta {
        let meta = self.runtime.block_on(self.bucket.meta(host, id)).expect("read meta.json");
        (*meta.unwrap_or_else(|| panic!("{host}/{id} has no meta.json in the store"))).clone()
    }

    fn ids(&self, host: &str) -> Vec<String> {
        let crashes = self.runtime.block_on(self.bucket.list(Some(host))).expect("list the store");
        crashes.into_iter().map(|c| c.id).collect()
    }
}

/// The store holds crash `id` of `host` byte-exact: each file's SHA-256 and length as recorded
/// in its meta.json, and the vmcore as long as meta.json says.
#[track_caller]
fn check_stored(bucket: &Bucket, host: &str, id: &str) -> BTreeMap<String, String> {
    let meta = bucket.meta(host, id);
    let sums = meta.checksums.clone().expect("meta.json in the store records checksums");
    assert!(sums.contains_key(dumpd::store::FILE_VMCORE), "{sums:?}");
    for (file, sum) in &sums {
        let (found, len) = bucket.sha256(host, id, file);
        assert_eq!(&found, sum, "{file} of {id} in the store");
        if file == dumpd::store::FILE_VMCORE {
            assert_eq!(len, meta.sizes.vmcore_apparent_bytes, "the whole vmcore is in the store");
        }
    }
    sums
}

fn crash_dirs(spool: &Path) -> Vec<String> {
    std::fs::read_dir(spool)
        .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).filter(|n| !n.starts_with('.')).collect())
        .unwrap_or_default()
}

#[test]
fn kdump_and_host_side_crashes_reach_the_bucket_and_another_host_reads_them() {
    let _slot = one_at_a_time();
    let server = S3Server::start("e2e-exact");
    let store = ["--crash-store", "s3://crashes/fleet"];
    let a = Service::start_with_env(
        TempDir::new("fleet-a"),
        &[&store[..], &["--host-id", "host-a", "--keep-local"]].concat(),
        &server.env(),
    );
    let b = Service::start_with_env(
        TempDir::new("fleet-b"),
        &[&store[..], &["--host-id", "host-b"]].concat(),
        &server.env(),
    );
    let mut events = a.events("/v1/events?since=0");

    // A soft lockup panics into kdump.
    let web = create_booted(
        &a,
        &mut events,
        &json!({
            "name": "web-1", "vcpus": 2, "memory_mib": 256, "kdump": {},
            "watchdog": {"thresh_secs": 2, "softlockup_panic": true},
        }),
    );
    a.wait_kdump(&web);
    expect_status(&a.post(&format!("/v1/vms/{web}/faults"), &json!({"kind": "softlockup", "cpu": 1})), 202, "inject");
    let kdump_id = events.wait(&web, "vmcore_ready", CAPTURE_TIMEOUT).data["id"].as_str().unwrap().to_owned();
    let shipped = uploaded(&mut events, &web, &kdump_id);
    assert_eq!(shipped["url"], format!("s3://crashes/fleet/host-a/{kdump_id}/"));
    assert_eq!(shipped["host"], "host-a");
    assert!(shipped["lag_ms"].as_u64().is_some(), "{shipped}");
    // A host-side dump of another VM.
    let db = create_booted(&a, &mut events, &json!({"name": "db-1", "memory_mib": 128}));
    let host_id = dump(&a, &mut events, &db);
    uploaded(&mut events, &db, &host_id);

    let bucket = Bucket::new(&server);
    for id in [&kdump_id, &host_id] {
        let sums = check_stored(&bucket, "host-a", id);
        // The copy kept in host a's spool is the same, byte for byte.
        let local = a.crash_dir.path().join(id).join(dumpd::store::FILE_VMCORE);
        let (local_sum, _) = fleet::checksum::file_sha256(&local).expect("the local copy");
        assert_eq!(local_sum, sums[dumpd::store::FILE_VMCORE], "{id}: the store's vmcore is the spool's");
    }

    // Host b sees host a's crashes in the fleet view, not in its own.
    let fleet = b.get("/v1/vmcores?scope=fleet").json();
    let ids: Vec<&str> = fleet["vmcores"].as_array().unwrap().iter().filter_map(|v| v["id"].as_str()).collect();
    let (kdump_b, host_b) = (format!("{kdump_id}@host-a"), format!("{host_id}@host-a"));
    assert!(ids.contains(&kdump_b.as_str()) && ids.contains(&host_b.as_str()), "{fleet}");
    assert_eq!(b.get("/v1/vmcores?host=host-a").json()["vmcores"].as_array().unwrap().len(), 2);
    assert!(b.get("/v1/vmcores").json()["vmcores"].as_array().unwrap().is_empty(), "host b has no crash of its own");

    // Host b downloads a range of the kdump vmcore straight from the store.
    let local = std::fs::read(a.crash_dir.path().join(&kdump_id).join(dumpd::store::FILE_VMCORE)).unwrap();
    let from = local.len() / 3;
    let range = format!("bytes={from}-{}", from + 65_535);
    let part = b.request("GET", &format!("/v1/vmcores/{kdump_b}/vmcore"), &[("range", &range)], None);
    expect_status(&part, 206, "a ranged download from the store");
    assert!(part.body == local[from..from + 65_536], "the range is byte-exact");
    // And analyses it: its log, the summary and CPU 1's backtrace, from the stored vmcore.
    let dmesg = b.get(&format!("/v1/vmcores/{kdump_b}/dmesg"));
    expect_status(&dmesg, 200, "dmesg of a stored vmcore");
    assert!(dmesg.text().contains("Kernel panic"), "{}", dmesg.text());
    let show = b.get(&format!("/v1/vmcores/{kdump_b}")).json();
    assert_eq!(
        (show["location"].as_str(), show["summary"]["panic"]["cpu"].as_u64()),
        (Some("store"), Some(1)),
        "{show}"
    );
    let bt = b.get(&format!("/v1/vmcores/{kdump_b}/backtrace")).json();
    assert_eq!((bt["symbolised"].as_bool(), bt["backtraces"][0]["cpu"].as_u64()), (Some(true), Some(1)), "{bt}");

    // Host b deletes host a's host-side crash: gone from the store.
    expect_status(&b.delete(&format!("/v1/vmcores/{host_b}")), 204, "DELETE a stored crash");
    assert_eq!(bucket.ids("host-a"), std::slice::from_ref(&kdump_id));
    expect_status(&b.get(&format!("/v1/vmcores/{host_b}")), 404, "a deleted crash");
}

#[test]
fn a_crash_storm_while_the_store_is_down_arrives_whole_and_once() {
    let _slot = one_at_a_time();
    let mut server = S3Server::start("e2e-storm");
    let service = Service::start_with_env(
        TempDir::new("fleet-storm"),
        &["--crash-store", "s3://crashes/fleet", "--host-id", "host-a"],
        &server.env(),
    );
    let mut events = service.events("/v1/events?since=0");
    let vms: Vec<String> = (0..8)
        .map(|i| create_booted(&service, &mut events, &json!({"name": format!("vm-{i}"), "memory_mib": 64})))
        .collect();

    server.stop();
    let down_at = Instant::now();
    let ids: Vec<String> = vms.iter().map(|vm| dump(&service, &mut events, vm)).collect();
    for (vm, id) in vms.iter().zip(&ids) {
        events.wait_for(
            |e| e.name == "upload_retrying" && e.data["vm"] == vm.as_str() && e.data["id"] == id.as_str(),
            "upload_retrying",
            Duration::from_secs(60),
        );
    }
    let listed = service.get("/v1/vmcores").json();
    assert_eq!(listed["vmcores"].as_array().unwrap().len(), 8, "{listed}");
    assert!(listed["vmcores"].as_array().unwrap().iter().all(|v| v["location"] == "spool"), "{listed}");
    assert!(listed["store_error"].is_string(), "{listed}");
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down_at.elapsed()));
    server.resume();

    for (vm, id) in vms.iter().zip(&ids) {
        uploaded(&mut events, vm, id);
    }
    // Settled: nothing more is sent, every crash is in the store once, the spool is empty.
    std::thread::sleep(Duration::from_secs(3));
    let metrics = service.get("/v1/metrics").text();
    for line in ["crashvisor_vmcores_uploaded_total 8", "crashvisor_spool_crashes_waiting 0"] {
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in\n{metrics}");
    }
    let bucket = Bucket::new(&server);
    let mut stored = bucket.ids("host-a");
    stored.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(stored, expected, "each crash once in the store");
    for id in &ids {
        check_stored(&bucket, "host-a", id);
    }
    assert!(
        crash_dirs(service.crash_dir.path()).is_empty(),
        "the spool drained: {:?}",
        crash_dirs(service.crash_dir.path())
    );
}

#[test]
fn a_service_killed_mid_multipart_upload_resumes_it_after_a_restart() {
    let _slot = one_at_a_time();
    let server = S3Server::start("e2e-kill");
    let args = ["--crash-store", "s3://crashes/fleet", "--host-id", "host-a"];
    let mut service = Service::start_with_env(TempDir::new("fleet-kill"), &args, &server.env());
    let mut events = service.events("/v1/events?since=0");
    let vm = create_booted(&service, &mut events, &json!({"name": "big", "memory_mib": 512}));
    let vmm_pid = service.get(&format!("/v1/vms/{vm}")).json()["pid"].as_u64().expect("the VMM's pid");
    let id = dump(&service, &mut events, &vm);

    // As soon as the journal shows a part sent, kill -9 the service; its VMM runs on.
    let journal_path = service.crash_dir.path().join(".upload").join(format!("{id}.json"));
    let journal = |path: &Path| -> Option<Value> { serde_json::from_slice(&std::fs::read(path).ok()?).ok() };
    let deadline = Instant::now() + UPLOAD_TIMEOUT;
    loop {
        let parts = journal(&journal_path)
            .map_or(0, |j| j["files"]["vmcore"]["upload"]["parts"].as_array().map_or(0, Vec::len));
        if parts >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no part of {id} was sent within {UPLOAD_TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = service.kill();
    assert!(!killed.success(), "{killed}");
    let left = journal(&journal_path).expect("the journal survives");
    assert_eq!(left["stage"]["state"], "sending", "killed mid-upload: {left}");
    assert_eq!(left["files"]["vmcore"]["upload"]["state"], "multipart", "{left}");

    // Restarted on the same spool and state directory: the VM is adopted, and the upload
    // resumes where the journal stood, and completes.
    service.restart();
    let mut events = service.events("/v1/events?since=0");
    let adopted = events.wait(&vm, "adopted", BOOT_TIMEOUT);
    assert_eq!(adopted.data["pid"].as_u64(), Some(vmm_pid), "the same VMM is adopted: {}", adopted.data);
    uploaded(&mut events, &vm, &id);
    assert!(service.log().contains("resuming multipart upload"), "{}", service.log());
    check_stored(&Bucket::new(&server), "host-a", &id);
    assert!(crash_dirs(service.crash_dir.path()).is_empty());

    // The adopted VM ships its next crash too.
    let next = dump(&service, &mut events, &vm);
    uploaded(&mut events, &vm, &next);
    check_stored(&Bucket::new(&server), "host-a", &next);
}

#[test]
fn a_vmm_on_its_own_ships_its_crash_before_it_exits() {
    use std::io::{Read, Write};
    let _slot = one_at_a_time();
    let server = S3Server::start("e2e-vmm");
    let spool = TempDir::new("fleet-vmm");
    let mut vmm = std::process::Command::new(crashvisor_tests::vmm_binary())
        .args(["--memory", "64", "--on-panic", "dump-and-poweroff", "--crash-dir", spool.arg()])
        .args(["--crash-store", "s3://crashes/solo", "--host-id", "solo"])
        .envs(server.env())
        .env_remove("VMM_LOG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start vmm");
    let mut stdout = vmm.stdout.take().expect("piped");
    let mut console = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&console).contains(crashvisor_tests::PROMPT) {
        let n = stdout.read(&mut buf).expect("read the console");
        assert!(n > 0, "the VMM ended before its prompt:\n{}", String::from_utf8_lossy(&console));
        console.extend_from_slice(&buf[..n]);
    }
    vmm.stdin.take().expect("piped").write_all(b"echo c > /proc/sysrq-trigger\n").expect("type");
    std::thread::spawn(move || while stdout.read(&mut buf).is_ok_and(|n| n > 0) {});
    let status = vmm.wait().expect("the VMM exits after the dump and the upload");
    assert!(status.success(), "powered off after the dump: {status}");
    // Before it exited, the crash reached the store and left the spool.
    let bucket = Bucket::under(&server, "solo");
    let ids = bucket.ids("solo");
    assert_eq!(ids.len(), 1, "{ids:?}");
    check_stored(&bucket, "solo", &ids[0]);
    assert!(crash_dirs(spool.path()).is_empty(), "{:?}", crash_dirs(spool.path()));
}
