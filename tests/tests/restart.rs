//! VMs outlive a killed service and are adopted again (docs/api.md, "What survives a restart"):
//! the real `crashvisor serve` with a state directory runs three VMs and is killed with SIGKILL;
//! while no service runs, one VMM is killed and one guest panics into a host-side vmcore
//! (through its VMM's control socket, which the test reaches as any client could); the service
//! started again on the same directories lists the live VMs as running and controls them
//! (sysctl, NMI, events, console, stop), reports the killed one failed, and announces the
//! vmcore committed while it was down. And the service, a VMM or a dump writer killed at 24
//! random moments (VM boots, panics caught by kdump or the host, host-side dumps, the service's
//! own adoption of its VMs), the service killed and restarted after each, loses no VM and no
//! crash: each restart finds every VM whose VMM lives running and controllable, every VM whose
//! VMM was killed failed, every crash asked of a living VM and every capture begun committed
//! (and listed) or recorded as failed, nothing half written, no writer left running, and no VMM
//! or writer outlives the final stop.
//!
//! `cargo test -p crashvisor-tests --test restart` (after `cargo build -p vmm -p api`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crashvisor_tests::api::{
    one_at_a_time, parent_of, process_runs, signal, signal_if_alive, vmm_processes, EventStream, HttpResponse, Service,
};
use crashvisor_tests::kdump::{self, CAPTURE_TIMEOUT};
use crashvisor_tests::{fill_kernel, Control, BOOT_TIMEOUT, COMMAND_TIMEOUT};
use dumpd::store::CrashStore;
use serde_json::{json, Value};

#[track_caller]
fn expect_status(response: &HttpResponse, status: u16, what: &str) {
    assert_eq!(response.status, status, "{what}: {}", response.text());
}

/// Creates VM `name` (128 MiB, `extra` merged in) and waits for its `booted` event; its pid.
#[track_caller]
fn create_booted(service: &Service, events: &mut EventStream, name: &str, extra: Value) -> u32 {
    let mut body = json!({"name": name, "memory_mib": 128});
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    expect_status(&service.post("/v1/vms", &body), 201, "POST /v1/vms");
    events.wait(name, "booted", BOOT_TIMEOUT);
    vm(service, name)["pid"].as_u64().expect("a running VM has a pid") as u32
}

#[track_caller]
fn vm(service: &Service, name: &str) -> Value {
    let response = service.get(&format!("/v1/vms/{name}"));
    expect_status(&response, 200, &format!("GET /v1/vms/{name}"));
    response.json()
}

/// Waits until the crash store holds a committed crash of VM `name`; its id.
#[track_caller]
fn wait_committed(store: &CrashStore, name: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let crashes = store.list().expect("the crash store lists");
        if let Some(crash) = crashes.iter().find(|c| c.meta.as_ref().is_some_and(|m| m.vm == name)) {
            return crash.id.clone();
        }
        assert!(Instant::now() < deadline, "no vmcore of {name} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the console of VM `name` holds `text`.
#[track_caller]
fn wait_console(service: &Service, name: &str, text: &str) -> String {
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    loop {
        let console = service.get(&format!("/v1/vms/{name}/console")).text();
        if console.contains(text) {
            return console;
        }
        assert!(Instant::now() < deadline, "no {text:?} on the console of {name}:\n{console}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn vms_outlive_a_killed_service_and_are_adopted_again() {
    let _serial = one_at_a_time();
    let mut service = Service::start(&[]);
    let mut events = service.events("/v1/events?since=0");
    let keep = create_booted(&service, &mut events, "keep", json!({}));
    let doomed = create_booted(&service, &mut events, "doomed", json!({}));
    let panics = create_booted(&service, &mut events, "panics", json!({"on_panic": "dump-and-reboot"}));
    wait_console(&service, "keep", "smp: Brought up 1 node, 1 CPU");

    let last_seq = events.history.iter().filter_map(|e| e.id).max().expect("numbered events");
    let killed = service.kill();
    assert!(!killed.success(), "{killed}");
    for (name, pid) in [("keep", keep), ("doomed", doomed), ("panics", panics)] {
        assert!(process_runs(pid), "the VMM of {name} (pid {pid}) died with the service");
    }

    // While no service runs: one VMM dies, one guest panics into a host-side vmcore.
    signal(doomed, "KILL");
    let socket = service.vm_record("panics")["control_socket"].as_str().expect("a control socket").to_owned();
    let mut control = Control::connect(socket.as_ref()).expect("the VMM's control socket answers without the service");
    let injected = control
        .request(json!({"cmd": "inject", "fault": "panic", "message": "while nobody listened"}), COMMAND_TIMEOUT);
    assert!(injected.is_ok(), "inject a panic: {injected:?}");
    let store = CrashStore::open(service.crash_dir.path()).expect("the crash store opens");
    let committed = wait_committed(&store, "panics", CAPTURE_TIMEOUT);
    drop(control);

    service.restart();
    let mut events = service.events("/v1/events?since=0");
    let adopted = events.wait("keep", "adopted", COMMAND_TIMEOUT);
    assert_eq!((adopted.data["pid"].as_u64(), adopted.data["state"].as_str()), (Some(keep.into()), Some("running")));
    let first_seq = events.history.iter().filter_map(|e| e.id).min().expect("numbered events");
    assert!(first_seq > last_seq, "event numbers go on above the last service's: {first_seq} after {last_seq}");
    let failed = events.wait("doomed", "failed", COMMAND_TIMEOUT);
    let reason = failed.data["reason"].as_str().unwrap_or("");
    assert!(reason.contains("ended while no service ran") && reason.contains("was running"), "{reason}");
    assert_eq!(failed.data["exit"], "unknown");
    let ready = events.wait("panics", "vmcore_ready", COMMAND_TIMEOUT);
    assert_eq!((ready.data["id"].as_str(), &ready.data["found_at_restart"]), (Some(committed.as_str()), &json!(true)));
    events.wait("panics", "adopted", COMMAND_TIMEOUT);

    let listed = service.get("/v1/vms").json();
    let states: Vec<(&str, &str)> = listed["vms"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|v| (v["name"].as_str().unwrap_or(""), v["state"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(states[..2], [("doomed", "failed"), ("keep", "running")], "{listed}");
    assert_eq!(vm(&service, "keep")["pid"].as_u64(), Some(keep.into()), "the same VMM");
    assert!(vm(&service, "doomed")["pid"].is_null());
    let panicked = vm(&service, "panics");
    assert_eq!(panicked["vmcores"], json!([committed]), "{panicked}");
    // It reboots after the dump (while away, or since): its second boot runs.
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while vm(&service, "panics")["boots"] != 2 || vm(&service, "panics")["state"] != "running" {
        assert!(Instant::now() < deadline, "the panicked VM did not boot again: {}", vm(&service, "panics"));
        std::thread::sleep(Duration::from_millis(100));
    }

    // The adopted VMs are served as before: the guest answers, events stream, the console
    // holds what was written before the restart and what follows it.
    let set = service.put("/v1/vms/keep/sysctl/kernel.panic", &json!({"value": 7}));
    assert_eq!(set.json(), json!({"name": "kernel.panic", "value": "7"}), "{}", set.text());
    let read = service.get("/v1/vms/panics/sysctl/kernel.panic");
    expect_status(&read, 200, "a sysctl of the VM that panicked while away");
    expect_status(&service.post("/v1/vms/keep/actions", &json!({"action": "nmi"})), 200, "nmi");
    events.wait("keep", "nmi_injected", COMMAND_TIMEOUT);
    let console = wait_console(&service, "keep", "Uhhuh. NMI received for unknown reason");
    assert!(console.contains("smp: Brought up 1 node, 1 CPU"), "the boot log from before the restart:\n{console}");
    let dumped = service.get(&format!("/v1/vmcores/{committed}"));
    expect_status(&dumped, 200, "the vmcore committed while no service ran");

    // Stop works on an adopted VMM: it ends, and the VM is stopped, not failed.
    let stopped = service.post("/v1/vms/keep/actions", &json!({"action": "poweroff"}));
    expect_status(&stopped, 200, "poweroff");
    assert_eq!(vm(&service, "keep")["state"], "stopped");
    assert!(!process_runs(keep), "the adopted VMM {keep} still runs after its stop");
    expect_status(&service.delete("/v1/vms/panics"), 204, "delete");
    assert!(!process_runs(panics), "the adopted VMM {panics} still runs after its VM was deleted");
    assert!(!service.state_dir.path().join("vms/panics").exists(), "a deleted VM leaves the state directory");

    let status = service.terminate();
    assert!(status.success(), "{status}\n{}", service.log());
    let left: Vec<_> = std::fs::read_dir(service.state_dir.path().join("vms")).expect("vms/").collect();
    assert!(left.is_empty(), "a stopped service forgets its VMs: {left:?}");
}

#[test]
fn a_host_side_dump_outlives_its_killed_vmm() {
    let _serial = one_at_a_time();
    let mut service = Service::start(&[]);
    let mut events = service.events("/v1/events?since=0");
    // A guest that has filled its 1 GiB with noise: its dump takes seconds however fast the
    // writer, so the VMM dies while the writer writes (an idle guest's untouched RAM is written
    // before the first progress report).
    let kernel = fill_kernel::build().unwrap_or_else(|e| panic!("{e:#}"));
    let body = json!({"name": "big", "memory_mib": 1024, "kernel": kernel, "cmdline": "fill=full"});
    expect_status(&service.post("/v1/vms", &body), 201, "POST /v1/vms");
    wait_console(&service, "big", "fill: done");
    let pid = vm(&service, "big")["pid"].as_u64().expect("a running VM has a pid") as u32;
    let before: BTreeSet<u32> = vmm_processes().into_iter().collect();
    expect_status(&service.post("/v1/vms/big/actions", &json!({"action": "dump"})), 200, "a host-side dump");
    let progress = events.wait("big", "dump_progress", CAPTURE_TIMEOUT);
    let writers: Vec<u32> = vmm_processes().into_iter().filter(|p| !before.contains(p)).collect();
    signal(pid, "KILL");
    eprintln!("killed the VMM {pid} after {}; its writers: {writers:?}", progress.data);
    assert!(!writers.is_empty(), "no dump writer ran when the VMM was killed: {}", progress.data);

    // The writer finishes and commits alone; the running service announces and lists the crash,
    // and the VM failed.
    let store = CrashStore::open(service.crash_dir.path()).expect("the crash store opens");
    let committed = wait_committed(&store, "big", CAPTURE_TIMEOUT);
    let failed = events.wait("big", "failed", COMMAND_TIMEOUT);
    let ready = events.wait("big", "vmcore_ready", COMMAND_TIMEOUT);
    assert_eq!(ready.data["id"].as_str(), Some(committed.as_str()), "{}", ready.data);
    assert!(ready.data.get("found_at_restart").is_none(), "{}", ready.data);
    assert!(failed.data["reason"].as_str().is_some_and(|r| r.contains("signal 9")), "{}", failed.data);
    let meta = store.list().expect("the store lists").pop().and_then(|c| c.meta).expect("meta.json");
    assert!(meta.sizes.vmcore_apparent_bytes > 1 << 30, "the whole guest is in the vmcore: {:?}", meta.sizes);
    assert_eq!(meta.trigger, dumpd::store::Trigger::OnDemand);
    assert!(meta.sizes.vmcore_on_disk_bytes > 1000 << 20, "the guest's memory is in the vmcore: {:?}", meta.sizes);
    let listed = service.get("/v1/vmcores").text();
    assert!(listed.contains(&committed), "GET /v1/vmcores lists the writer's crash: {listed}");
    expect_status(&service.get(&format!("/v1/vmcores/{committed}")), 200, "the writer's vmcore");
    assert!(store.failures().expect("the failures read").is_empty());
    let hidden: Vec<_> = std::fs::read_dir(service.crash_dir.path())
        .expect("the store reads")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(".tmp-") || n.starts_with(".del-"))
        .collect();
    assert!(hidden.is_empty(), "half-written entries stay: {hidden:?}");
    // No writer outlives its dump.
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    while writers.iter().any(|&p| process_runs(p)) {
        assert!(Instant::now() < deadline, "the dump writers {writers:?} outlived the dump");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A service started later still has it, announced once.
    service.kill();
    service.restart();
    assert_eq!(vm(&service, "big")["state"], "failed");
    assert_eq!(vm(&service, "big")["vmcores"], json!([committed]));
    let status = service.terminate();
    assert!(status.success(), "{status}\n{}", service.log());
}

#[test]
fn a_detached_service_leaves_its_vms_and_sigterm_stops_a_vmm_after_its_dump() {
    let _serial = one_at_a_time();
    let mut service = Service::start(&["--detach-on-exit"]);
    let mut events = service.events("/v1/events?since=0");
    let keep = create_booted(&service, &mut events, "keep", json!({}));
    let big = create_booted(&service, &mut events, "big", json!({"memory_mib": 1024}));
    let status = service.terminate();
    assert!(status.success(), "{status}\n{}", service.log());
    assert!(process_runs(keep) && process_runs(big), "a detached service stopped its VMMs");

    service.restart();
    let mut events = service.events("/v1/events?since=0");
    events.wait("keep", "adopted", COMMAND_TIMEOUT);
    events.wait("big", "adopted", COMMAND_TIMEOUT);
    expect_status(&service.post("/v1/vms/big/actions", &json!({"action": "dump"})), 200, "a host-side dump");
    events.wait("big", "dump_progress", CAPTURE_TIMEOUT);
    // SIGTERM stops the VMM as `shutdown` does: the dump in flight is committed by the VMM
    // (announced live, not found later), then the VM is stopped, not failed.
    signal(big, "TERM");
    let ready = events.wait("big", "vmcore_ready", CAPTURE_TIMEOUT);
    assert!(ready.data.get("found_at_restart").is_none(), "{}", ready.data);
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    while vm(&service, "big")["state"] != "stopped" {
        assert!(Instant::now() < deadline, "SIGTERM did not stop the VM: {}", vm(&service, "big"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!process_runs(big), "the VMM {big} runs on after SIGTERM");
    let read = service.get("/v1/vms/keep/sysctl/kernel.panic");
    expect_status(&read, 200, "the adopted VM answers");

    // The last service stops detached too; SIGTERM ends the idle VMM left behind.
    let status = service.terminate();
    assert!(status.success(), "{status}\n{}", service.log());
    assert!(process_runs(keep), "a detached service stopped its VMM");
    signal(keep, "TERM");
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    while process_runs(keep) {
        assert!(Instant::now() < deadline, "the idle VMM {keep} runs on after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A VMM killed while it stores a capture kernel's vmcore (its core collector, makedumpfile,
/// still reading the crashed kernel's memory) loses that vmcore, and the capture is recorded:
/// the service announces `dump_failed` as it sees the VMM end, `failures.jsonl` has the line,
/// and nothing half written is left.
#[test]
fn a_vmm_killed_while_it_stores_a_capture_kernels_vmcore_leaves_a_recorded_failure() {
    let _serial = one_at_a_time();
    kdump::require_fuse();
    kdump::require_tool("makedumpfile");
    let service = Service::start(&[]);
    let mut events = service.events("/v1/events?since=0");
    let collected = json!({"memory_mib": 512, "kdump": {"dump_level": 0, "core_collector": "makedumpfile -l -d 0"}});
    let pid = create_booted(&service, &mut events, "kd", collected);
    service.wait_kdump("kd");
    expect_status(&service.post("/v1/vms/kd/faults", &json!({"kind": "panic"})), 202, "inject a panic");
    events.wait("kd", "capture_started", CAPTURE_TIMEOUT);
    signal(pid, "KILL");
    let failed = events.wait("kd", "dump_failed", COMMAND_TIMEOUT);
    assert!(failed.data["reason"].as_str().is_some_and(|r| r.contains("died before committing")), "{}", failed.data);
    events.wait("kd", "failed", COMMAND_TIMEOUT);

    let entries: Vec<String> = std::fs::read_dir(service.crash_dir.path())
        .expect("the store reads")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(!entries.iter().any(|n| n.starts_with(".tmp-") || n.starts_with(".del-")), "{entries:?}");
    let store = CrashStore::open(service.crash_dir.path()).expect("the crash store opens");
    assert!(store.list().expect("the store lists").is_empty(), "a vmcore was committed after all");
    let failures = store.failures().expect("the failures read");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!((failures[0].vm.as_str(), failures[0].trigger), ("kd", dumpd::store::Trigger::Kdump));
}

/// Rounds of the random test: each kills the service, a VMM or a dump writer at a random
/// moment, then the service.
const ROUNDS: usize = 24;
/// VMs the random test runs at once at most (each 256 MiB: a host-side dump's writer lives
/// long enough to be killed now and then).
const MAX_VMS: usize = 4;
/// VMs the random test creates at most (killed VMMs are replaced).
const MAX_CREATED: usize = 8;
/// Panics of one VM in the random test at most (each crash stays in the store).
const MAX_CRASHES_PER_VM: usize = 4;
/// Events that say a capture began: from then on it must end committed or recorded as failed.
const BEGUN: [&str; 2] = ["capture_started", "snapshot_taken"];

/// xorshift64: the random test's moments. The seed is printed, and read from
/// `CRASHVISOR_TEST_SEED`, so a failing run can be replayed.
struct Moments(u64);

impl Moments {
    fn new() -> Self {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let seed = std::env::var("CRASHVISOR_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| now.map_or(1, |d| d.as_nanos() as u64) | 1);
        eprintln!("random moments from seed {seed} (CRASHVISOR_TEST_SEED={seed} replays them)");
        Self(seed)
    }

    /// A number below `n`.
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// One VM of the random test, as the test knows it.
#[derive(Debug, Default)]
struct TestVm {
    /// Crashes asked for (panics, host-side dumps).
    asked: usize,
    /// Crashes that must have ended by now (committed or failed): all of a running VM's; of a
    /// VM whose VMM was killed, those asked before that round and the one it had begun.
    owed: usize,
    /// Its VMM was killed: it ends `failed`.
    killed: bool,
}

/// The VM's crashes in the store: committed ids and recorded failures.
fn outcomes(store: &CrashStore, name: &str) -> (BTreeSet<String>, usize) {
    let committed = store.list().expect("the crash store lists");
    assert!(committed.iter().all(|e| e.meta.is_some()), "a crash without its meta.json is visible: {committed:?}");
    let committed = committed.into_iter().filter(|e| e.meta.as_ref().is_some_and(|m| m.vm == name)).map(|e| e.id);
    let failed = store.failures().expect("the failures read").into_iter().filter(|f| f.vm == name).count();
    (committed.collect(), failed)
}

/// Dump writers running now: processes of the VMM program that are not a VMM the service knows
/// (`vmms`) and did not run before the test (`before`).
fn writers(vmms: &BTreeSet<u32>, before: &BTreeSet<u32>) -> Vec<u32> {
    vmm_processes().into_iter().filter(|p| !vmms.contains(p) && !before.contains(p)).collect()
}

/// Waits until process `pid`, killed, is gone.
#[track_caller]
fn wait_gone(pid: u32) {
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    while process_runs(pid) {
        assert!(Instant::now() < deadline, "the killed process {pid} runs on");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The pids of the VMMs the service lists.
fn listed_vmms(service: &Service) -> BTreeSet<u32> {
    let listed = service.get("/v1/vms").json();
    listed["vms"].as_array().into_iter().flatten().filter_map(|v| v["pid"].as_u64()).map(|p| p as u32).collect()
}

/// What is not yet as it must end up: every VM whose VMM lives running and its crashes all
/// committed (and listed) or recorded as failed; every killed one failed with the crashes it
/// began ended the same way; no dump writer running; nothing half written visible.
fn unsettled(
    service: &Service,
    store: &CrashStore,
    vms: &BTreeMap<String, TestVm>,
    before: &BTreeSet<u32>,
) -> Option<String> {
    let running = writers(&listed_vmms(service), before);
    if !running.is_empty() {
        return Some(format!("the dump writers {running:?} still run"));
    }
    let hidden: Vec<String> = std::fs::read_dir(store.dir())
        .expect("the store reads")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(".tmp-") || n.starts_with(".del-"))
        .collect();
    if !hidden.is_empty() {
        return Some(format!("half-written entries stay: {hidden:?}"));
    }
    for (name, test) in vms {
        let vm = vm(service, name);
        let (committed, failed) = outcomes(store, name);
        let ended = committed.len() + failed;
        assert!(
            ended <= test.asked,
            "{name}: more crashes than asked for ({}): {committed:?}, {failed} failed",
            test.asked
        );
        if ended < test.owed {
            return Some(format!("{name}: {} committed and {failed} failed of {} owed", committed.len(), test.owed));
        }
        if test.killed {
            if vm["state"] != "failed" {
                return Some(format!("{name}, whose VMM was killed, is {}", vm["state"]));
            }
            continue;
        }
        assert_ne!(vm["state"], "failed", "{name}'s VMM was not killed: {vm}");
        if vm["state"] != "running" {
            return Some(format!("{name} is {}", vm["state"]));
        }
        let listed: BTreeSet<String> =
            vm["vmcores"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect();
        if listed != committed {
            return Some(format!("{name} lists the vmcores {listed:?}, the store holds {committed:?}"));
        }
    }
    None
}

#[test]
fn the_service_vmms_and_dump_writers_killed_at_random_moments_lose_no_vm_and_no_crash() {
    let _serial = one_at_a_time();
    let before: BTreeSet<u32> = vmm_processes().into_iter().collect();
    let mut moments = Moments::new();
    let mut service = Service::start(&[]);
    let mut events = service.events("/v1/events?since=0");
    let store = CrashStore::open(service.crash_dir.path()).expect("the crash store opens");
    // Each panic gives one vmcore: kdump's once the capture kernel is loaded, else the host's.
    let crashing = json!({"kdump": {}, "on_panic": "dump-and-reboot", "memory_mib": 256});
    let mut vms: BTreeMap<String, TestVm> = BTreeMap::new();
    for name in ["vm-0", "vm-1"] {
        create_booted(&service, &mut events, name, crashing.clone());
        vms.insert(name.to_owned(), TestVm::default());
    }
    let mut killed = BTreeMap::<&str, usize>::new();
    for round in 0..ROUNDS {
        let started = Instant::now();
        let live: Vec<String> = vms.iter().filter(|(_, t)| !t.killed).map(|(n, _)| n.clone()).collect();
        let name = live[moments.below(live.len())].clone();
        let mut crashing_now = true;
        let what = match moments.below(4) {
            0 | 1 if vms[&name].asked < MAX_CRASHES_PER_VM => {
                let injected = service.post(&format!("/v1/vms/{name}/faults"), &json!({"kind": "panic"}));
                expect_status(&injected, 202, "inject a panic");
                vms.entry(name.clone()).or_default().asked += 1;
                format!("a panic of {name}")
            }
            2 if vms[&name].asked < MAX_CRASHES_PER_VM => {
                let dumped = service.post(&format!("/v1/vms/{name}/actions"), &json!({"action": "dump"}));
                expect_status(&dumped, 200, "a host-side dump");
                vms.entry(name.clone()).or_default().asked += 1;
                format!("a host-side dump of {name}")
            }
            3 if live.len() < MAX_VMS && vms.len() < MAX_CREATED => {
                let name = format!("vm-{}", vms.len());
                let mut body = crashing.clone();
                body["name"] = json!(name);
                expect_status(&service.post("/v1/vms", &body), 201, "POST /v1/vms");
                vms.insert(name.clone(), TestVm::default());
                crashing_now = false;
                format!("the creation of {name}")
            }
            _ => {
                crashing_now = false;
                "nothing in particular".to_owned()
            }
        };
        // Everything asked for before this round has settled; what this round asks may not.
        // 0 and 1 the service, 2 a VMM (the crashing VM's, mostly), 3 a dump writer (when a
        // crash was asked for).
        let victim = moments.below(if crashing_now { 4 } else { 3 });
        let vmms = listed_vmms(&service);
        let mut victim_kind = "service";
        let done = if victim == 3 {
            // A dump writer, as soon as one runs (within the moment's delay).
            let deadline = Instant::now() + Duration::from_millis(moments.below(3000) as u64);
            loop {
                let vmms: BTreeSet<u32> = vmms.union(&listed_vmms(&service)).copied().collect();
                let live_writer =
                    writers(&vmms, &before).into_iter().find(|&p| parent_of(p).is_some_and(|pp| vmms.contains(&pp)));
                if let Some(writer) = live_writer.filter(|&w| signal_if_alive(w, "KILL")) {
                    victim_kind = "writer";
                    break format!("the dump writer {writer} was killed");
                }
                if Instant::now() >= deadline {
                    break "no dump writer ran to be killed".to_owned();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        } else {
            // Now and then at once: while the service starts the new VMM or the dump.
            let delay = if moments.below(4) == 0 { moments.below(20) } else { moments.below(3000) };
            std::thread::sleep(Duration::from_millis(delay as u64));
            // One VM always lives on.
            if victim == 2 && live.len() > 1 {
                let victim =
                    if crashing_now && moments.below(4) != 0 { &name } else { &live[moments.below(live.len())] };
                let pid = vm(&service, victim)["pid"].as_u64().map(|p| p as u32);
                match pid {
                    Some(pid) => {
                        signal(pid, "KILL");
                        wait_gone(pid);
                        // The service, alive, reads the VMM's last events before it says the
                        // VM failed: every capture the VMM began is among them by then.
                        events.wait(victim, "failed", COMMAND_TIMEOUT);
                        let begun = events
                            .received()
                            .iter()
                            .filter(|e| e.at >= started && BEGUN.contains(&e.name.as_str()) && e.data["vm"] == **victim)
                            .count();
                        // What it asked before this round has ended; this round's crash must
                        // end too if it began.
                        let test = vms.get_mut(victim).expect("a test VM");
                        test.killed = true;
                        test.owed = (test.owed + begun).min(test.asked);
                        victim_kind = "VMM";
                        format!("{delay} ms later the VMM {pid} of {victim} was killed ({begun} captures begun)")
                    }
                    None => format!("{delay} ms later {victim} had no VMM to kill"),
                }
            } else {
                format!("{delay} ms later")
            }
        };
        eprintln!("round {round}: {what}; {done}; the service is killed");
        *killed.entry(victim_kind).or_default() += 1;
        service.kill();
        if moments.below(3) == 0 {
            // Killed again while it adopts its VMs.
            service.restart();
            let delay = moments.below(1000);
            std::thread::sleep(Duration::from_millis(delay as u64));
            eprintln!("round {round}: and {delay} ms after its restart");
            service.kill();
        }
        service.restart();
        events = service.events("/v1/events?since=0");
        for test in vms.values_mut().filter(|t| !t.killed) {
            test.owed = test.asked;
        }
        let deadline = Instant::now() + CAPTURE_TIMEOUT;
        while let Some(missing) = unsettled(&service, &store, &vms, &before) {
            assert!(Instant::now() < deadline, "round {round}, after {what}: {missing}\n{}", service.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        for (name, _) in vms.iter().filter(|(_, t)| !t.killed) {
            let read = service.get(&format!("/v1/vms/{name}/sysctl/kernel.panic"));
            expect_status(&read, 200, &format!("round {round}: {name}'s guest answers"));
        }
    }
    eprintln!("killed: {killed:?}");
    let status = service.terminate();
    assert!(status.success(), "{status}\n{}", service.log());
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    loop {
        let left: Vec<u32> = vmm_processes().into_iter().filter(|p| !before.contains(p)).collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "VMMs or dump writers outlived the service's stop: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
