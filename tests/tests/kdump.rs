//! kdump end to end: a guest booted with `crashkernel=64M kdump=1` loads its capture kernel;
//! faults injected on CPU 1 of 2 vCPUs go through it; the host commits the vmcore and both logs
//! to the crash store; the capture kernel reboots the VM, whose fresh kernel reloads kdump and
//! works. The vmcores are checked by hand and with the real tools (readelf, vmcore-dmesg, gdb).
//! Also `kexec -l`/`-e` from the shell, and the `crashkernel=` reservation as the guest shows it.

use std::collections::HashSet;

use crashvisor_tests::kdump::{self, Crash, PrStatus, Vmcore, PRSTATUS_SIZE};
use crashvisor_tests::{kernel_text, KernelLine, TempDir, TempFile, Vm, BOOT_TIMEOUT, COMMAND_TIMEOUT};
use goblin::elf::{sym, Elf};
use serde_json::json;

const VCPUS: usize = 2;
/// The CPU the faults run on.
const CPU: usize = 1;
/// `crashkernel=` as the tests pass it, and its size in bytes.
const CRASHKERNEL: &str = "crashkernel=64M";
const CRASHKERNEL_BYTES: u64 = 64 << 20;
/// The lockup detectors' threshold: soft lockups after 4 s, the NMI watchdog every 2 s.
const WATCHDOG_THRESH: &str = "watchdog_thresh=2";

/// A fault, the sysctls that make it panic, and what its crash must show.
struct Fault {
    name: &'static str,
    sysctls: &'static [(&'static str, &'static str)],
    /// `meta.json`'s `reason.detector`.
    detector: &'static str,
    /// The start of the crashed kernel's report line, found in `vmcore-dmesg.txt`.
    report: &'static str,
    /// The function the crashing CPU's saved RIP must be in (for faults that stop the CPU in
    /// the faulting code), as the end of its Rust path.
    rip_in: Option<&'static str>,
    /// Whether the reason names the fault's task on CPU 1 (a hung task, and a hard lockup the
    /// buddy detector finds, panic in the detector's CPU and task).
    reason_is_the_fault: bool,
}

const PANIC: Fault = Fault {
    name: "panic",
    sysctls: &[],
    detector: "panic",
    report: "Kernel panic - not syncing: crashvisor injected panic",
    rip_in: None,
    reason_is_the_fault: true,
};
const SYSRQ_CRASH: Fault = Fault {
    name: "sysrq_crash",
    sysctls: &[],
    detector: "sysrq",
    report: "Kernel panic - not syncing: sysrq triggered crash",
    rip_in: None,
    reason_is_the_fault: true,
};
const OOPS: Fault = Fault {
    name: "oops",
    sysctls: &[("kernel.panic_on_oops", "1")],
    detector: "oops",
    report: "BUG: kernel NULL pointer dereference, address: 0000000000000000",
    rip_in: Some("inject::null_dereference"),
    reason_is_the_fault: true,
};
const SOFTLOCKUP: Fault = Fault {
    name: "softlockup",
    sysctls: &[("kernel.softlockup_panic", "1")],
    detector: "softlockup",
    report: "watchdog: BUG: soft lockup - CPU#1 stuck for ",
    rip_in: Some("inject::softlockup"),
    reason_is_the_fault: true,
};
/// A hard lockup seen by the host's NMI watchdog (the default): CPU 1 reports itself.
const HARDLOCKUP: Fault = Fault {
    name: "hardlockup",
    sysctls: &[("kernel.hardlockup_panic", "1")],
    detector: "hardlockup",
    report: "watchdog: CPU1: Watchdog detected hard LOCKUP on cpu 1",
    rip_in: Some("inject::hardlockup"),
    reason_is_the_fault: true,
};
/// A hard lockup seen by the buddy detector (`--nmi-watchdog off`): CPU 0 reports CPU 1 and
/// panics; the crash NMI saves CPU 1's registers in the locked-up loop.
const HARDLOCKUP_BUDDY: Fault = Fault {
    report: "watchdog: CPU0: Watchdog detected hard LOCKUP on cpu 1",
    reason_is_the_fault: false,
    ..HARDLOCKUP
};
const HUNG_TASK: Fault = Fault {
    name: "hung_task",
    sysctls: &[("kernel.hung_task_panic", "1"), ("kernel.hung_task_timeout_secs", "2")],
    detector: "hung_task",
    report: "INFO: task hung_task/1:",
    rip_in: None,
    reason_is_the_fault: false,
};

/// A 2-vCPU guest with kdump on, writing to its own crash store.
struct KdumpVm {
    vm: Vm,
    store: TempDir,
    /// The guest kernel's `booted` release, for VMCOREINFO's `OSRELEASE`.
    release: String,
}

/// Without the host's NMI watchdog: its ticks keep coming after the crashed kernel jumped to
/// the capture kernel, and one that lands in the capture kernel's early boot resets the VM
/// (see `capture_kernel_survives_nmis_during_its_early_boot`). Hard lockups are then found by
/// the buddy detector.
const NO_NMI_WATCHDOG: &[&str] = &["--nmi-watchdog", "off"];

/// Boots a 2-vCPU guest with `crashkernel=64M kdump=1 {cmdline}` and the extra `vmm` `args`,
/// and waits for its capture kernel to be loaded.
fn start_kdump_vm(cmdline: &str, args: &[&str]) -> KdumpVm {
    let store = TempDir::new("crash-store");
    let cmdline = format!("{CRASHKERNEL} kdump=1 {cmdline}");
    let mut all = vec!["--vcpus", "2", "--memory", "256", "--crash-dir", store.arg(), "--cmdline", cmdline.trim_end()];
    all.extend(args);
    let mut vm = Vm::start_controlled(&all);
    let booted = vm.wait_event(|e| e.is("booted"), "the booted event", BOOT_TIMEOUT);
    assert_eq!(booted.u64("boot"), Some(1), "{}", booted.body);
    let release = booted.str("release").unwrap_or_default().to_string();
    vm.expect_kdump_loaded();
    KdumpVm { vm, store, release }
}

/// Crashes boot `boot` of the VM with `fault` on CPU 1, checks the committed crash, waits
/// for the next boot to reload kdump and answer, and returns the crash.
fn crash_and_check(kvm: &mut KdumpVm, fault: &Fault, boot: u64, kernel: &Elf) -> Crash {
    let vm = &mut kvm.vm;
    for (name, value) in fault.sysctls {
        assert_eq!(vm.sysctl_set(name, *value), *value, "{name}");
    }
    let injected = vm.inject(fault.name, CPU, None);
    let crash = vm.expect_vmcore(kdump::CAPTURE_TIMEOUT);
    let what = format!("{} crash {}", fault.name, crash.dir.display());
    assert!(crash.dir.starts_with(kvm.store.path()), "{what} is outside the crash store");
    check_id(&crash.id);

    // meta.json
    let meta = &crash.meta;
    assert_eq!(meta["format"], 1, "{what}: {meta}");
    assert_eq!(meta["trigger"], "kdump", "{what}: {meta}");
    assert_eq!(meta["vm"], "vm", "{what}: {meta}");
    assert_eq!(meta["reason"]["detector"], fault.detector, "{what}: meta.json's reason: {meta}");
    if fault.reason_is_the_fault {
        assert_eq!(meta["reason"]["cpu"], CPU, "{what}: {meta}");
        assert_eq!(meta["reason"]["pid"], injected.pid, "{what}: {meta}");
        assert_eq!(meta["reason"]["comm"], format!("{}/{CPU}", fault.name), "{what}: {meta}");
    }
    let apparent = std::fs::metadata(crash.vmcore()).expect("the vmcore exists").len();
    assert_eq!(meta["sizes"]["vmcore_apparent_bytes"], apparent, "{what}: {meta}");
    assert_eq!(crash.event.u64("size"), Some(apparent), "{what}: {}", crash.event.body);
    assert_eq!(
        meta["files"],
        json!({"vmcore": "vmcore", "vmcore_dmesg": "vmcore-dmesg.txt", "kexec_dmesg": "kexec-dmesg.log"}),
        "{what}"
    );

    // The vmcore's notes.
    let vmcore = Vmcore::read(&crash.vmcore()).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(vmcore.is_x86_64_core(), "{what}: e_type {} e_machine {}", vmcore.e_type, vmcore.e_machine);
    assert!(!vmcore.loads.is_empty(), "{what}: no PT_LOAD");
    let prstatus = vmcore.prstatus();
    assert_eq!(prstatus.len(), VCPUS, "{what}: one NT_PRSTATUS per vCPU: {:?}", vmcore.notes);
    let cpus: Vec<PrStatus> = prstatus
        .iter()
        .map(|note| {
            assert_eq!(note.name, "CORE", "{what}");
            PrStatus::parse(&note.desc)
                .unwrap_or_else(|| panic!("{what}: an NT_PRSTATUS of {} bytes, not {PRSTATUS_SIZE}", note.desc.len()))
        })
        .collect();
    let pids: HashSet<u32> = cpus.iter().map(|c| c.pid).collect();
    assert!(pids.len() == VCPUS && !pids.contains(&0), "{what}: pr_pids {cpus:x?}");
    let info = vmcore.vmcoreinfo().unwrap_or_else(|| panic!("{what}: no VMCOREINFO note: {:?}", vmcore.notes));
    assert!(info.lines().any(|l| l == format!("OSRELEASE={}", kvm.release)), "{what}: VMCOREINFO:\n{info}");
    assert!(info.lines().any(|l| l.strip_prefix("CRASHTIME=").is_some_and(|t| t.parse::<u64>().is_ok())), "{info}");
    if let Some(function) = fault.rip_in {
        let crashing = cpus.iter().find(|c| c.pid == CPU as u32 + 1);
        let crashing = crashing.unwrap_or_else(|| panic!("{what}: no NT_PRSTATUS for CPU {CPU}: {cpus:x?}"));
        let symbol = function_at(kernel, crashing.rip);
        assert!(
            symbol.as_deref().is_some_and(|s| s.ends_with(function)),
            "{what}: CPU {CPU}'s RIP {:#x} is in {symbol:?}, not {function}",
            crashing.rip
        );
    }

    // Both logs.
    let dmesg = crash.vmcore_dmesg();
    assert!(
        dmesg.lines().any(|l| kernel_text(l).starts_with(fault.report)),
        "{what}: no {:?} in:\n{dmesg}",
        fault.report
    );
    assert!(!dmesg.contains("elfcorehdr"), "{what}: vmcore-dmesg.txt is the crashed kernel's log:\n{dmesg}");
    let kexec_dmesg = crash.kexec_dmesg();
    assert!(
        kexec_dmesg.lines().any(|l| kernel_text(l).starts_with("Command line: ") && l.contains(" elfcorehdr=")),
        "{what}: kexec-dmesg.log is the capture kernel's log:\n{kexec_dmesg}"
    );

    // The next boot reloads kdump and works.
    vm.expect_reboot_after_dump(boot + 1);
    vm.expect_kdump_loaded();
    let status = vm.request_ok(json!({"cmd": "status"}));
    assert_eq!((&status["boots"], &status["guest_control"]), (&json!(boot + 1), &json!(true)), "{status}");
    let ps = vm.request_ok(json!({"cmd": "ps"}));
    let ps = ps["text"].as_str().unwrap_or_default();
    assert!(ps.lines().any(|row| row.ends_with(" sh")), "{what}: ps after the reboot:\n{ps}");
    crash
}

/// `<vm>-YYYY-MM-DD-HH:MM:SS`, maybe with `-N`.
fn check_id(id: &str) {
    let stamp = id.strip_prefix("vm-").unwrap_or_else(|| panic!("crash id {id:?}"));
    let (stamp, _) = stamp.split_at_checked(19).unwrap_or_else(|| panic!("crash id {id:?}"));
    let pattern = "dddd-dd-dd-dd:dd:dd";
    let fits = stamp.bytes().zip(pattern.bytes()).all(|(b, p)| if p == b'd' { b.is_ascii_digit() } else { b == p });
    assert!(fits, "crash id {id:?}");
}

/// The Rust path of the function symbol holding `address`.
fn function_at(kernel: &Elf, address: u64) -> Option<String> {
    let symbol = kernel
        .syms
        .iter()
        .find(|s| s.st_type() == sym::STT_FUNC && s.st_value <= address && address < s.st_value + s.st_size.max(1))?;
    kernel.strtab.get_at(symbol.st_name).map(kdump::rust_symbol_path)
}

fn extracted_kernel() -> (TempFile, Vec<u8>) {
    let file = kdump::extract_guest_kernel();
    let bytes = std::fs::read(file.path()).expect("the extracted kernel is readable");
    (file, bytes)
}

/// Five crashes in one VM: `kdump=1` reloads the capture kernel after each reboot.
#[test]
fn panic_sysrq_soft_lockup_hung_task_and_hard_lockup_are_each_captured_and_the_vm_reboots() {
    let (_file, bytes) = extracted_kernel();
    let kernel = Elf::parse(&bytes).expect("the guest kernel is an ELF file");
    let mut kvm = start_kdump_vm(WATCHDOG_THRESH, NO_NMI_WATCHDOG);
    let faults = [&PANIC, &SYSRQ_CRASH, &SOFTLOCKUP, &HUNG_TASK, &HARDLOCKUP_BUDDY];
    let mut ids = Vec::new();
    for (boot, fault) in (1..).zip(faults) {
        ids.push(crash_and_check(&mut kvm, fault, boot, &kernel).id);
    }
    let mut entries: Vec<String> = std::fs::read_dir(kvm.store.path())
        .expect("the crash store exists")
        .map(|e| e.expect("a readable crash store").file_name().to_string_lossy().into_owned())
        .filter(|name| name != dumpd::store::LOCK_FILE)
        .collect();
    entries.sort();
    ids.sort();
    assert_eq!(entries, ids, "the crash store holds one directory per crash, its lock file and nothing else");
}

/// The host's NMI watchdog finds the hard lockup. (Its next tick comes a whole period after
/// the one that detected the lockup, long after the capture kernel's early boot.)
#[test]
fn hard_lockup_from_the_nmi_watchdog_is_captured() {
    let (_file, bytes) = extracted_kernel();
    let kernel = Elf::parse(&bytes).expect("the guest kernel is an ELF file");
    let mut kvm = start_kdump_vm(WATCHDOG_THRESH, &[]);
    let status = kvm.vm.request_ok(json!({"cmd": "status"}));
    assert_eq!(status["nmi_watchdog"], json!({"enabled": true, "period_ms": 2000}), "{status}");
    crash_and_check(&mut kvm, &HARDLOCKUP, 1, &kernel);
}

#[test]
fn oops_with_panic_on_oops_is_captured() {
    let (_file, bytes) = extracted_kernel();
    let kernel = Elf::parse(&bytes).expect("the guest kernel is an ELF file");
    let mut kvm = start_kdump_vm("", NO_NMI_WATCHDOG);
    crash_and_check(&mut kvm, &OOPS, 1, &kernel);
}

/// NMIs keep coming while the capture kernel boots (the host NMI watchdog's ticks, which
/// nothing stops at the crash; an operator's `nmi`): each must be survived, like Linux does.
#[test]
fn capture_kernel_survives_nmis_during_its_early_boot() {
    let mut kvm = start_kdump_vm("", NO_NMI_WATCHDOG);
    let vm = &mut kvm.vm;
    vm.inject("panic", CPU, None);
    let panic = vm.wait_event(|e| e.is("panic"), "the panic event", COMMAND_TIMEOUT);
    let deadline = panic.at + kdump::CAPTURE_TIMEOUT;
    let ended =
        |e: &crashvisor_tests::Event| ["vmcore_ready", "dump_failed", "rebooting", "stopped"].contains(&e.name());
    while !vm.events_since(panic.at).iter().any(ended) {
        if std::time::Instant::now() >= deadline {
            vm.fail(&format!("no vmcore_ready within {:?}", kdump::CAPTURE_TIMEOUT));
        }
        // Fails with vm_unavailable while the machine resets: then the loop ends.
        let _ = vm.request(json!({"cmd": "nmi"}));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    vm.expect_vmcore(kdump::CAPTURE_TIMEOUT);
    vm.expect_reboot_after_dump(2);
}

/// readelf, vmcore-dmesg (kexec-tools) and gdb open a vmcore of a 2-vCPU guest.
#[test]
fn real_tools_read_the_vmcore() {
    for tool in ["readelf", "vmcore-dmesg", "gdb"] {
        kdump::require_tool(tool);
    }
    let (kernel, _) = extracted_kernel();
    let mut kvm = start_kdump_vm("", NO_NMI_WATCHDOG);
    let message = "kdump tools test";
    kvm.vm.inject_request(json!({"cmd": "inject", "fault": "panic", "cpu": CPU, "message": message}));
    let crash = kvm.vm.expect_vmcore(kdump::CAPTURE_TIMEOUT);
    let vmcore = crash.vmcore();
    let vmcore = vmcore.to_str().expect("a UTF-8 path");

    let notes = kdump::run_tool("readelf", &["-n", vmcore]);
    assert_eq!(notes.matches("NT_PRSTATUS").count(), VCPUS, "readelf -n:\n{notes}");
    assert!(notes.lines().any(|l| l.trim_start().starts_with("VMCOREINFO ")), "readelf -n:\n{notes}");

    let log = kdump::run_tool("vmcore-dmesg", &[vmcore]);
    let panic_line = format!("Kernel panic - not syncing: {message}");
    assert!(log.lines().any(|l| kernel_text(l) == panic_line), "vmcore-dmesg:\n{log}");
    assert!(log.lines().any(|l| kernel_text(l) == kdump::KDUMP_LOADED), "{log}");

    let threads = kdump::run_tool("gdb", &["-nx", "-batch", "-ex", "info threads", kernel.arg(), vmcore]);
    let rows: Vec<&str> = threads
        .lines()
        .filter(|l| {
            let mut words = l.trim_start().trim_start_matches('*').split_whitespace();
            words.next().is_some_and(|id| id.parse::<u32>().is_ok()) && words.next() == Some("LWP")
        })
        .collect();
    assert_eq!(rows.len(), VCPUS, "gdb info threads:\n{threads}");
    for lwp in 1..=VCPUS {
        assert!(rows.iter().any(|r| r.contains(&format!(" LWP {lwp} "))), "no LWP {lwp} in:\n{threads}");
    }
    // The crashing CPU (LWP 2) backtraces through the panic into the injected fault's code.
    let bt = kdump::run_tool("gdb", &["-nx", "-batch", "-ex", "thread apply all bt", kernel.arg(), vmcore]);
    let crashing = bt.split("\nThread ").find(|t| t.contains("(LWP 2)")).unwrap_or_else(|| panic!("gdb bt:\n{bt}"));
    for function in ["kexec::crash::crash_kexec", "guest_kernel::panic::panic (", "guest_kernel::inject::"] {
        assert!(crashing.contains(function), "no {function} in CPU 1's backtrace:\n{bt}");
    }
    kvm.vm.expect_reboot_after_dump(2);
}

/// `kexec -l` then `kexec -e` from the shell starts a new kernel inside the same machine.
#[test]
fn kexec_load_and_exec_start_a_new_kernel_without_a_machine_reboot() {
    let mut vm = Vm::start_controlled(&["--vcpus", "2", "--memory", "256"]);
    assert_eq!(vm.wait_booted(), 1);
    vm.boot();
    assert_eq!(vm.run("kexec -l --command-line=\"panic=5 crashvisor.test=1\""), Vec::<String>::new());
    vm.send_line("kexec -e");
    vm.expect(KernelLine::exactly("kexec_core: Starting new kernel"), COMMAND_TIMEOUT);
    vm.expect(KernelLine::starting("Linux version "), BOOT_TIMEOUT);
    vm.expect(KernelLine::exactly("Command line: panic=5 crashvisor.test=1"), BOOT_TIMEOUT);
    vm.expect(KernelLine::exactly("smp: Brought up 1 node, 2 CPUs"), BOOT_TIMEOUT);
    vm.expect_prompt(BOOT_TIMEOUT);
    let uptime = vm.run("uptime");
    assert!(uptime.len() == 1 && uptime[0].ends_with(", 2 CPUs online"), "{uptime:?}");
    // The new kernel's control thread says hello within the same machine.
    let booted = vm.wait_event(|e| e.is("booted"), "the new kernel's booted event", BOOT_TIMEOUT);
    assert_eq!(booted.u64("boot"), Some(1), "{}", booted.body);
    let status = vm.request_ok(json!({"cmd": "status"}));
    assert_eq!((&status["boots"], &status["state"]), (&json!(1), &json!("running")), "{status}");
    let history: Vec<String> = vm.control().history().iter().map(|e| e.body.to_string()).collect();
    assert!(!history.iter().any(|e| e.contains("\"rebooting\"")), "the VMM did not reboot: {history:#?}");
    let ps = vm.request_ok(json!({"cmd": "ps"}));
    assert!(ps["text"].as_str().unwrap_or_default().lines().any(|row| row.ends_with(" sh")), "{ps}");
}

/// Boots a 2-vCPU guest with `cmdline` and waits for the prompt (and for kdump to load, with
/// `kdump=1`).
fn boot_shell(cmdline: &str) -> Vm {
    let mut vm = Vm::start(&["--vcpus", "2", "--memory", "256", "--cmdline", cmdline]);
    let log = vm.boot();
    if cmdline.contains("kdump=1") && !log.iter().any(|l| kernel_text(l) == kdump::KDUMP_LOADED) {
        vm.expect_kdump_loaded();
    }
    vm
}

#[test]
fn kdump_start_without_crashkernel_fails_and_nothing_is_loaded() {
    let mut vm = boot_shell("panic=0");
    let out = vm.run("kdump start");
    assert!(
        out.len() == 1 && out[0].starts_with("kdump: cannot load the capture kernel"),
        "kdump start should fail: {out:?}"
    );
    assert_eq!(vm.run("cat /sys/kernel/kexec_crash_loaded"), ["0"]);
    assert_eq!(vm.run("cat /sys/kernel/kexec_crash_size"), ["0"]);
    assert_eq!(vm.run("kdump status").first().map(String::as_str), Some("Kdump is not operational"));
}

#[test]
fn kdump_start_without_crashkernel_says_to_reserve_memory() {
    let mut vm = boot_shell("panic=0");
    let out = vm.run("kdump start");
    assert!(out.len() == 1 && out[0].contains("crashkernel="), "the error should name crashkernel=: {out:?}");
}

#[test]
fn crashkernel_reserves_64_mib_inside_system_ram() {
    let mut vm = boot_shell(&format!("{CRASHKERNEL} kdump=1"));
    assert_eq!(vm.run("cat /sys/kernel/kexec_crash_size"), [CRASHKERNEL_BYTES.to_string()]);
    assert_eq!(vm.run("cat /sys/kernel/kexec_crash_loaded"), ["1"]);
    assert_eq!(vm.run("kdump status").first().map(String::as_str), Some("Kdump is operational"));
    let iomem = vm.run("cat /proc/iomem");
    let parse = |line: &str| -> Option<(u64, u64, String)> {
        let (range, name) = line.trim_start().split_once(" : ")?;
        let (start, end) = range.split_once('-')?;
        Some((u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?, name.to_string()))
    };
    let position = iomem.iter().position(|l| l.ends_with(" : Crash kernel"));
    let position = position.unwrap_or_else(|| panic!("no Crash kernel in /proc/iomem:\n{}", iomem.join("\n")));
    let line = &iomem[position];
    let (start, end, _) = parse(line).unwrap_or_else(|| panic!("{line:?}"));
    assert_eq!(end + 1 - start, CRASHKERNEL_BYTES, "{line:?}");
    assert!(line.starts_with("  ") && !line.starts_with("    "), "nested one level: {line:?}");
    // Its parent: the nearest top-level entry above it.
    let parent = iomem[..position].iter().rev().find(|l| !l.starts_with(' '));
    let parent = parent.and_then(|l| parse(l));
    assert!(
        parent.as_ref().is_some_and(|(s, e, name)| name == "System RAM" && *s <= start && end <= *e),
        "Crash kernel should be nested under System RAM:\n{}",
        iomem.join("\n")
    );
}

/// The bounds of the `Crash kernel` line of `/proc/iomem` (inclusive end, as Linux prints).
fn crash_kernel_range(vm: &mut Vm) -> (u64, u64) {
    let iomem = vm.run("cat /proc/iomem");
    let line = iomem.iter().find(|l| l.ends_with(" : Crash kernel"));
    let line = line.unwrap_or_else(|| panic!("no Crash kernel in /proc/iomem:\n{}", iomem.join("\n")));
    let range = line.trim_start().split_once(" : ").and_then(|(range, _)| range.split_once('-'));
    let parse = |hex: &str| u64::from_str_radix(hex, 16).ok();
    match range.and_then(|(start, end)| Some((parse(start)?, parse(end)?))) {
        Some(bounds) => bounds,
        None => panic!("cannot parse {line:?}"),
    }
}

/// kdump driven only through the control socket (`kdump` and `kexec` requests), and a pattern
/// the host writes into guest RAM before the crash found byte-exact in the vmcore at its
/// physical address (dump level 1 keeps every non-zero page, used or free).
#[test]
fn kdump_over_the_control_socket_captures_a_planted_pattern_byte_exact() {
    let store = TempDir::new("crash-store");
    let mut vm = kdump::start_crashing_vm(&store, CRASHKERNEL);
    vm.boot();
    assert_eq!(vm.wait_booted(), 1);
    let defaults =
        json!({"state": "not_operational", "dump_level": 31, "final_action": "reboot", "failure_action": "reboot"});
    assert_eq!(vm.request_ok(json!({"cmd": "kdump", "op": "status"})), defaults);
    let refused = vm.request(json!({"cmd": "kdump", "op": "config", "dump_level": 1, "final_action": "explode"}));
    assert_eq!(refused.map_err(|e| e.code), Err("bad_argument".to_string()));
    assert_eq!(vm.request_ok(json!({"cmd": "kdump", "op": "status"})), defaults, "a refused config changes nothing");
    let configured = vm.request_ok(json!({"cmd": "kdump", "op": "config", "dump_level": 1}));
    assert_eq!(configured["dump_level"], 1, "{configured}");
    let kexec = vm.request_ok(json!({"cmd": "kexec", "op": "status"}));
    assert_eq!(kexec, json!({"loaded": false, "crash_loaded": false, "crash_size": CRASHKERNEL_BYTES}));
    let started = vm.request_ok(json!({"cmd": "kdump", "op": "start"}));
    assert_eq!((&started["state"], &started["dump_level"]), (&json!("operational"), &json!(1)), "{started}");
    let kexec = vm.request_ok(json!({"cmd": "kexec", "op": "status"}));
    assert_eq!(kexec["crash_loaded"], true, "{kexec}");

    // Two pages' worth of pattern, straddling a page boundary, 1 MiB below the reservation
    // (the frame allocator hands out low memory first, so nothing there is in use).
    let (crash_start, _) = crash_kernel_range(&mut vm);
    let gpa = crash_start - 0x10_0000 + 0x800;
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 1).collect();
    let hex: String = pattern.iter().map(|b| format!("{b:02x}")).collect();
    vm.request_ok(json!({"cmd": "write_memory", "gpa": gpa, "data_hex": hex}));
    let read = vm.request_ok(json!({"cmd": "read_memory", "gpa": gpa, "len": pattern.len()}));
    assert_eq!(read["data_hex"], hex, "read_memory returns what write_memory wrote");

    vm.inject("panic", CPU, None);
    let crash = vm.expect_vmcore(kdump::CAPTURE_TIMEOUT);
    assert_eq!(crash.meta["dump_level"], 1, "{}", crash.meta);
    let path = crash.vmcore();
    let vmcore = Vmcore::read(&path).unwrap_or_else(|e| panic!("{e}"));
    let found = vmcore.read_phys(&path, gpa, pattern.len()).unwrap_or_else(|e| panic!("{e}"));
    let first_difference = found.iter().zip(&pattern).position(|(a, b)| a != b);
    assert_eq!(first_difference, None, "the vmcore differs from the planted pattern at {gpa:#x}");

    // The next kernel (no kdump=1) has nothing loaded; kexec through the socket starts another.
    vm.expect_reboot_after_dump(2);
    let kexec = vm.request_ok(json!({"cmd": "kexec", "op": "status"}));
    assert_eq!((&kexec["loaded"], &kexec["crash_loaded"]), (&json!(false), &json!(false)), "{kexec}");
    let refused = vm.request(json!({"cmd": "kexec", "op": "exec"}));
    assert_eq!(refused.map_err(|e| e.code), Err("bad_argument".to_string()), "exec without a loaded kernel");
    let loaded = vm.request_ok(json!({"cmd": "kexec", "op": "load", "cmdline": "panic=5 crashvisor.kexec=socket"}));
    assert_eq!(loaded["loaded"], true, "{loaded}");
    let exec = vm.request_stamped(json!({"cmd": "kexec", "op": "exec"}));
    assert!(exec.outcome.is_ok(), "kexec exec: {:?}", exec.outcome);
    vm.expect(KernelLine::exactly("Command line: panic=5 crashvisor.kexec=socket"), BOOT_TIMEOUT);
    let booted = vm.wait_event(|e| e.is("booted") && e.at > exec.at, "the kexec'd kernel's booted event", BOOT_TIMEOUT);
    assert_eq!((booted.u64("boot"), booted.u64("cpus")), (Some(2), Some(VCPUS as u64)), "{}", booted.body);
}
