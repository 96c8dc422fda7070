//! Host-side vmcores end to end: the VMM dumps a guest without a capture kernel — on pvpanic
//! PANICKED as `--on-panic` says, on an operator's `dump`, and after an operator's NMI — from
//! a copy-on-write view of memory while the guest runs on. The vmcores open in the same tools
//! as the capture kernel's (readelf, vmcore-dmesg, gdb).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crashvisor_tests::kdump::{self, PrStatus, Vmcore};
use crashvisor_tests::{kernel_text, Event, TempDir, Vm, BOOT_TIMEOUT, COMMAND_TIMEOUT};
use serde_json::{json, Value};

const VCPUS: usize = 2;
/// Upper bound for a host-side dump of a small guest to be committed.
const DUMP_TIMEOUT: Duration = Duration::from_secs(60);

fn start(store: &TempDir, args: &[&str]) -> Vm {
    let mut all = vec!["--vcpus", "2", "--memory", "256", "--crash-dir", store.arg(), "--cmdline", "watchdog_thresh=2"];
    all.extend(args);
    let mut vm = Vm::start_controlled(&all);
    assert_eq!(vm.wait_booted(), 1);
    vm
}

/// Waits for a host-side dump to be committed: `snapshot_taken` then `vmcore_ready`; returns
/// the crash directory, its `meta.json` and the `snapshot_taken` event.
fn expect_host_vmcore(vm: &mut Vm) -> (PathBuf, Value, Event) {
    let taken = vm.wait_event(|e| e.is("snapshot_taken") || e.is("dump_failed"), "snapshot_taken", DUMP_TIMEOUT);
    assert!(taken.is("snapshot_taken"), "{}", taken.body);
    let ready = vm.wait_event(|e| e.is("vmcore_ready") || e.is("dump_failed"), "vmcore_ready", DUMP_TIMEOUT);
    assert!(ready.is("vmcore_ready"), "{}", ready.body);
    let dir = PathBuf::from(ready.str("path").expect("vmcore_ready has a path"));
    let len = std::fs::metadata(dir.join("vmcore")).expect("the vmcore is there").len();
    assert_eq!(ready.u64("size"), Some(len), "{}", ready.body);
    let meta = std::fs::read_to_string(dir.join("meta.json")).expect("meta.json is there");
    let meta: Value = serde_json::from_str(&meta).expect("meta.json parses");
    assert!(meta["timings"]["pause_us"].as_u64().is_some(), "{meta}");
    assert_eq!(meta["files"], json!({"vmcore": "vmcore", "vmcore_dmesg": "vmcore-dmesg.txt"}), "{meta}");
    (dir, meta, taken)
}

/// The vmcore's notes: one NT_PRSTATUS per vCPU with distinct non-zero pids, VMCOREINFO with
/// OSRELEASE and CRASHTIME. Returns the registers by vCPU.
fn check_notes(path: &Path) -> (Vmcore, Vec<PrStatus>) {
    let vmcore = Vmcore::read(path).unwrap_or_else(|e| panic!("{e}"));
    assert!(vmcore.is_x86_64_core());
    let cpus: Vec<PrStatus> = vmcore.prstatus().iter().filter_map(|n| PrStatus::parse(&n.desc)).collect();
    assert_eq!(cpus.len(), VCPUS, "{:?}", vmcore.notes);
    let pids: HashSet<u32> = cpus.iter().map(|c| c.pid).collect();
    assert!(pids.len() == VCPUS && !pids.contains(&0), "{cpus:x?}");
    let info = vmcore.vmcoreinfo().expect("a VMCOREINFO note");
    assert!(info.lines().any(|l| l.starts_with("OSRELEASE=")), "{info}");
    assert!(info.lines().any(|l| l.strip_prefix("CRASHTIME=").is_some_and(|t| t.parse::<u64>().is_ok())), "{info}");
    // The direct map, the kernel image and the task stacks.
    for base in [0xffff_8880_0000_0000u64, 0xffff_ffff_8000_0000, 0xffff_c900_0000_0000] {
        assert!(vmcore.loads.iter().any(|l| l.vaddr >= base && l.vaddr - base < 1 << 40), "no PT_LOAD near {base:#x}");
    }
    (vmcore, cpus)
}

#[test]
fn a_panic_without_kdump_is_dumped_by_the_host_then_the_vm_reboots() {
    for tool in ["readelf", "vmcore-dmesg", "gdb"] {
        kdump::require_tool(tool);
    }
    let store = TempDir::new("crash-store");
    let mut vm = start(&store, &["--on-panic", "dump-and-reboot"]);
    let message = "host dump test";
    vm.inject_request(json!({"cmd": "inject", "fault": "panic", "cpu": 1, "message": message}));
    let (dir, meta, _) = expect_host_vmcore(&mut vm);
    assert_eq!(meta["trigger"], "pvpanic", "{meta}");
    assert_eq!((&meta["reason"]["detector"], &meta["reason"]["cpu"]), (&json!("panic"), &json!(1)), "{meta}");
    let path = dir.join("vmcore");
    check_notes(&path);
    let reset = vm.wait_event(|e| e.is("rebooting"), "the policy's reboot", BOOT_TIMEOUT);
    assert_eq!(reset.str("cause"), Some("panic_policy"), "{}", reset.body);
    assert_eq!(vm.wait_booted(), 2);

    let vmcore = path.to_str().expect("a UTF-8 path");
    let notes = kdump::run_tool("readelf", &["-n", vmcore]);
    assert_eq!(notes.matches("NT_PRSTATUS").count(), VCPUS, "readelf -n:\n{notes}");
    let log = kdump::run_tool("vmcore-dmesg", &[vmcore]);
    let panic_line = format!("Kernel panic - not syncing: {message}");
    assert!(log.lines().any(|l| kernel_text(l) == panic_line), "vmcore-dmesg:\n{log}");
    let kernel = kdump::extract_guest_kernel();
    let bt = kdump::run_tool("gdb", &["-nx", "-batch", "-ex", "thread apply all bt", kernel.arg(), vmcore]);
    let crashing = bt.split("\nThread ").find(|t| t.contains("(LWP 2)")).unwrap_or_else(|| panic!("gdb:\n{bt}"));
    assert!(crashing.contains("guest_kernel::panic::panic"), "CPU 1's backtrace:\n{bt}");

    // The host's own log copy, and dumpd's analysis, from the vmcore alone.
    let log_copy = std::fs::read_to_string(dir.join("vmcore-dmesg.txt")).expect("vmcore-dmesg.txt");
    assert!(log_copy.lines().any(|l| kernel_text(l) == panic_line), "vmcore-dmesg.txt:\n{log_copy}");
    let dumpd = |args: &[&str]| {
        let out = std::process::Command::new(crashvisor_tests::dumpd_binary()).args(args).output().expect("dumpd runs");
        assert!(out.status.success(), "dumpd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let show = dumpd(&["show", vmcore, "--kernel", kernel.arg()]);
    for field in ["CPU: 1", "COMMAND: \"panic/1\"", message] {
        assert!(show.contains(field), "no {field:?} in dumpd show:\n{show}");
    }
    let bt = dumpd(&["bt", vmcore, "--kernel", kernel.arg()]);
    assert!(bt.contains("guest_kernel::panic::panic"), "dumpd bt:\n{bt}");
}

#[test]
fn an_on_demand_dump_of_a_running_guest_is_byte_exact_and_the_guest_runs_on_silently() {
    let store = TempDir::new("crash-store");
    let mut vm = start(&store, &[]);
    // Keep CPU 1 busy in a task, and plant a pattern the vmcore must hold at its address.
    vm.inject("hung_task", 1, Some(60_000));
    let gpa = 0x0800_0000 + 0x123;
    let pattern: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8 | 0x80).collect();
    let hex: String = pattern.iter().map(|b| format!("{b:02x}")).collect();
    vm.request_ok(json!({"cmd": "write_memory", "gpa": gpa, "data_hex": hex}));

    let started = vm.request_ok(json!({"cmd": "dump"}));
    assert_eq!(started, json!({"state": "dumping"}));
    let (dir, meta, taken) = expect_host_vmcore(&mut vm);
    assert_eq!(meta["trigger"], "on_demand", "{meta}");
    let progress = vm.control().history().iter().filter(|e| e.is("dump_progress")).count();
    assert!(progress >= 1, "at least the final dump_progress event");
    let path = dir.join("vmcore");
    let (vmcore, _) = check_notes(&path);
    let found = vmcore.read_phys(&path, gpa, pattern.len()).unwrap_or_else(|e| panic!("{e}"));
    assert!(found == pattern, "the vmcore differs from the planted pattern at {gpa:#x}");

    // The guest ran on: it answers, and no detector fired across the dump nor for the next
    // soft-lockup threshold and more (4 s at watchdog_thresh=2).
    std::thread::sleep(Duration::from_secs(6));
    let status = vm.request_ok(json!({"cmd": "status"}));
    assert_eq!(status["state"], "running", "{status}");
    vm.request_ok(json!({"cmd": "uptime"}));
    let lockups: Vec<String> = vm
        .control()
        .history()
        .iter()
        .filter(|e| e.at > taken.at && e.is("lockup_detected"))
        .map(|e| e.body.to_string())
        .collect();
    assert!(lockups.is_empty(), "watchdogs fired after the dump: {lockups:?}");
}

#[test]
fn an_nmi_with_capture_is_dumped_after_the_guest_took_it_and_dumps_do_not_overlap() {
    let store = TempDir::new("crash-store");
    let mut vm = start(&store, &[]);
    let reply = vm.request_ok(json!({"cmd": "nmi", "cpu": 1, "capture": true}));
    assert_eq!(reply["cpus"], json!([1]), "{reply}");
    // A second dump while the first is pending or being written is refused.
    let busy = vm.request(json!({"cmd": "dump"}));
    assert_eq!(busy.map_err(|e| e.code), Err("busy".to_string()));
    let nmi = vm.wait_event(|e| e.is("unknown_nmi"), "the guest's unknown NMI", COMMAND_TIMEOUT);
    assert_eq!(nmi.u64("cpu"), Some(1), "{}", nmi.body);
    let (dir, meta, taken) = expect_host_vmcore(&mut vm);
    assert!(taken.at > nmi.at, "the snapshot follows the guest's NMI report");
    assert_eq!(meta["trigger"], "on_demand", "{meta}");
    check_notes(&dir.join("vmcore"));
    let dmesg = vm.request_ok(json!({"cmd": "dmesg"}));
    assert!(dmesg["text"].as_str().unwrap_or_default().contains("NMI received for unknown reason"), "{dmesg}");
}

/// `--dump-format kdump-zstd`: the host writes makedumpfile's compressed format; dumpd reads
/// it and converts it back to an ELF vmcore holding the planted pattern byte-exact.
#[test]
fn a_kdump_zstd_host_dump_converts_back_to_the_same_memory() {
    let store = TempDir::new("crash-store");
    let mut vm = start(&store, &["--dump-format", "kdump-zstd"]);
    let gpa = 0x0600_0000 + 0x40;
    let pattern: Vec<u8> = (0..6000u32).map(|i| (i.wrapping_mul(31) >> 2) as u8 | 1).collect();
    let hex: String = pattern.iter().map(|b| format!("{b:02x}")).collect();
    vm.request_ok(json!({"cmd": "write_memory", "gpa": gpa, "data_hex": hex}));
    vm.request_ok(json!({"cmd": "dump"}));
    let (dir, meta, _) = expect_host_vmcore(&mut vm);
    assert_eq!(meta["vmcore_format"], "kdump-zstd", "{meta}");
    let kdump = dir.join("vmcore");
    let head = std::fs::read(&kdump).expect("the vmcore is readable");
    assert_eq!(&head[..8], b"KDUMP   ", "makedumpfile's signature");
    assert!(head.len() < (64 << 20), "zero pages are left out: {} bytes", head.len());

    let out = TempDir::new("converted");
    let elf = out.path().join("vmcore.elf");
    let status = std::process::Command::new(crashvisor_tests::dumpd_binary())
        .args(["convert", kdump.to_str().expect("UTF-8"), elf.to_str().expect("UTF-8"), "--format", "elf"])
        .status()
        .expect("dumpd runs");
    assert!(status.success(), "dumpd convert failed: {status}");
    let (vmcore, _) = check_notes_of_converted(&elf);
    let found = vmcore.read_phys(&elf, gpa, pattern.len()).unwrap_or_else(|e| panic!("{e}"));
    assert!(found == pattern, "the converted vmcore differs from the planted pattern at {gpa:#x}");
}

/// A converted vmcore keeps the notes (its PT_LOADs are the direct map only: a kdump file has
/// no virtual addresses of its own).
fn check_notes_of_converted(path: &Path) -> (Vmcore, usize) {
    let vmcore = Vmcore::read(path).unwrap_or_else(|e| panic!("{e}"));
    assert!(vmcore.is_x86_64_core());
    let cpus = vmcore.prstatus().iter().filter_map(|n| PrStatus::parse(&n.desc)).count();
    assert_eq!(cpus, VCPUS, "{:?}", vmcore.notes);
    assert!(vmcore.vmcoreinfo().is_some_and(|i| i.contains("OSRELEASE=")));
    (vmcore, cpus)
}
