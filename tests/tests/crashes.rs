//! Crashes injected over the control socket into CPU 1 of a 2-vCPU guest, and NMIs from the
//! operator: Linux's oops, BUG, panic, sysrq-c and stack-guard reports, the events the VMM
//! streams for them, the panic knobs, and what the VMM does after a panic (stay up, reboot, or
//! stop).

use crashvisor_tests::{kernel_text, Event, KernelLine, Vm, COMMAND_TIMEOUT, EXIT_TIMEOUT};
use serde_json::json;

/// Boots 2 vCPUs with `cmdline` and waits for the guest's control channel.
fn start_vm(cmdline: &str, args: &[&str]) -> Vm {
    let mut all = vec!["--vcpus", "2", "--memory", "64"];
    if !cmdline.is_empty() {
        all.extend(["--cmdline", cmdline]);
    }
    all.extend(args);
    let mut vm = Vm::start_controlled(&all);
    vm.wait_booted();
    vm
}

/// Checks that a `panic` event names the fault's task on CPU 1.
fn check_panic_task(vm: &mut Vm, event: &Event, pid: u32, comm: &str) {
    if event.u64("cpu") != Some(1) || event.u64("pid") != Some(pid.into()) || event.str("comm") != Some(comm) {
        vm.fail(&format!("the panic event should name {comm} (pid {pid}) on CPU 1: {}", event.body));
    }
}

/// Waits for the `oops` event of the fault's task on CPU 1.
fn expect_oops_event(vm: &mut Vm, pid: u32) {
    let event = vm.wait_event(|e| e.is("oops"), "the oops event", COMMAND_TIMEOUT);
    if event.u64("cpu") != Some(1) || event.u64("pid") != Some(pid.into()) {
        vm.fail(&format!("the oops event should name pid {pid} on CPU 1: {}", event.body));
    }
}

/// With `--no-reboot` and `panic=-1`, the panic resets the guest and the VMM stops with status 3.
fn expect_stopped_after_panic(vm: &mut Vm) {
    vm.wait_event(|e| e.is("stopped"), "the stopped event", EXIT_TIMEOUT);
    vm.expect_exit_code(3, EXIT_TIMEOUT);
}

/// With the default `panic=0` the guest waits forever after Linux's end marker, and the VMM
/// keeps running; the guest's control channel is down.
fn expect_halted_after_panic(vm: &mut Vm, message: &str) {
    vm.expect(KernelLine::exactly(format!("---[ end Kernel panic - not syncing: {message} ]---")), COMMAND_TIMEOUT);
    let status = vm.request_ok(json!({"cmd": "status"}));
    assert_eq!((&status["state"], &status["guest_control"]), (&json!("running"), &json!(false)), "{status}");
    let error = vm.request(json!({"cmd": "ps"})).expect_err("the guest cannot answer after a panic");
    assert_eq!(error.code, "guest_unavailable");
    assert!(vm.is_running(), "the VMM keeps running");
}

#[test]
fn null_dereference_oopses_and_the_system_carries_on() {
    let mut vm = start_vm("", &[]);
    let fault = vm.inject("oops", 1, None);
    for line in [
        "BUG: kernel NULL pointer dereference, address: 0000000000000000",
        "#PF: supervisor read access in kernel mode",
        "#PF: error_code(0x0000) - not-present page",
        "Oops: Oops: 0000 [#1] SMP NOPTI",
    ] {
        vm.expect(KernelLine::exactly(line), COMMAND_TIMEOUT);
    }
    vm.expect(KernelLine::starting(format!("CPU: 1 UID: 0 PID: {} Comm: oops/1 ", fault.pid)), COMMAND_TIMEOUT);
    vm.expect(KernelLine::starting("RIP: 0010:inject::null_dereference+0x"), COMMAND_TIMEOUT);
    vm.expect(KernelLine::exactly("CR2: 0000000000000000"), COMMAND_TIMEOUT);
    vm.expect(KernelLine::exactly("---[ end trace 0000000000000000 ]---"), COMMAND_TIMEOUT);
    expect_oops_event(&mut vm, fault.pid);
    // Linux kills the task and carries on (panic_on_oops=0), tainted D.
    let ps = vm.request_ok(json!({"cmd": "ps"}));
    let ps = ps["text"].as_str().unwrap_or_default();
    assert!(!ps.lines().any(|row| row.ends_with(" [oops/1]") && !row.contains(" X ")), "the task was killed:\n{ps}");
    assert_eq!(vm.run("uptime").len(), 1, "the shell still works");
}

#[test]
fn oops_panics_with_panic_on_oops() {
    let mut vm = start_vm("", &[]);
    assert_eq!(vm.sysctl_set("kernel.panic_on_oops", 1), "1");
    let fault = vm.inject("oops", 1, None);
    vm.expect(KernelLine::exactly("BUG: kernel NULL pointer dereference, address: 0000000000000000"), COMMAND_TIMEOUT);
    vm.expect(KernelLine::exactly("Oops: Oops: 0000 [#1] SMP NOPTI"), COMMAND_TIMEOUT);
    expect_oops_event(&mut vm, fault.pid);
    let event = vm.expect_kernel_panic("Fatal exception", "oops");
    check_panic_task(&mut vm, &event, fault.pid, "oops/1");
    expect_halted_after_panic(&mut vm, "Fatal exception");
}

#[test]
fn bug_reports_kernel_bug_and_an_invalid_opcode_oops() {
    let mut vm = start_vm("", &[]);
    let fault = vm.inject("bug", 1, None);
    vm.expect(KernelLine::exactly("------------[ cut here ]------------"), COMMAND_TIMEOUT);
    let line = vm.expect(KernelLine::starting("kernel BUG at "), COMMAND_TIMEOUT);
    let location = kernel_text(&line).trim_start_matches("kernel BUG at ");
    let (file, line_number) = location.strip_suffix('!').and_then(|l| l.rsplit_once(':')).unwrap_or_default();
    assert!(file.ends_with("inject.rs") && line_number.parse::<u32>().is_ok(), "{line:?}");
    vm.expect(KernelLine::exactly("Oops: invalid opcode: 0000 [#1] SMP NOPTI"), COMMAND_TIMEOUT);
    vm.expect(KernelLine::starting(format!("CPU: 1 UID: 0 PID: {} Comm: bug/1 ", fault.pid)), COMMAND_TIMEOUT);
    vm.expect(KernelLine::exactly("---[ end trace 0000000000000000 ]---"), COMMAND_TIMEOUT);
    expect_oops_event(&mut vm, fault.pid);
    assert_eq!(vm.sysctl_get("kernel.panic_on_oops"), "0", "the guest carries on");
}

#[test]
fn sysrq_crash_panics_and_the_vmm_stops_without_reboot() {
    let mut vm = start_vm("panic=-1", &["--no-reboot"]);
    let fault = vm.inject("sysrq_crash", 1, None);
    vm.expect(KernelLine::exactly("sysrq: Trigger a crash"), COMMAND_TIMEOUT);
    let event = vm.expect_kernel_panic("sysrq triggered crash", "sysrq");
    check_panic_task(&mut vm, &event, fault.pid, "sysrq_crash/1");
    expect_stopped_after_panic(&mut vm);
}

#[test]
fn panic_carries_its_message_to_the_console_and_the_event() {
    // Spaces, punctuation and non-ASCII survive both the control protocol and the guest.
    const MESSAGE: &str = "crashvisor test: disk on fire (100% sure) — über";
    let mut vm = start_vm("panic=-1", &[]);
    let fault = vm.inject_request(json!({"cmd": "inject", "fault": "panic", "cpu": 1, "message": MESSAGE}));
    let event = vm.expect_kernel_panic(MESSAGE, "panic");
    check_panic_task(&mut vm, &event, fault.pid, "panic/1");
    assert_eq!(event.str("source"), Some("event"), "{}", event.body);
    // panic=-1 reboots at once; the control client stays connected through the reboot.
    let reboot = vm.wait_event(|e| e.is("rebooting"), "the rebooting event", EXIT_TIMEOUT);
    assert_eq!(reboot.str("cause"), Some("reset_control"), "{}", reboot.body);
    assert_eq!(vm.wait_booted(), 2);
    assert_eq!(vm.request_ok(json!({"cmd": "status"}))["boots"], 2);
}

#[test]
fn stack_overflow_hits_the_guard_page_and_panics() {
    let mut vm = start_vm("panic=-1", &["--no-reboot"]);
    let fault = vm.inject("stack_overflow", 1, None);
    vm.expect(KernelLine::starting("BUG: TASK stack guard page was hit at "), COMMAND_TIMEOUT);
    vm.expect(KernelLine::exactly("Oops: stack guard page: 0000 [#1] SMP NOPTI"), COMMAND_TIMEOUT);
    // The double fault is handled in NMI context, where an oops is fatal (as in Linux).
    let event = vm.expect_kernel_panic("Fatal exception in interrupt", "stack_overflow");
    // TASK_COMM_LEN is 16: 15 characters and the NUL.
    check_panic_task(&mut vm, &event, fault.pid, "stack_overflow/");
    expect_stopped_after_panic(&mut vm);
}

/// `{"cmd":"nmi"}` is `virsh inject-nmi`: no local handler claims it, so Linux's unknown-NMI
/// path reports it and carries on, or panics with `kernel.unknown_nmi_panic`.
#[test]
fn operator_nmi_is_an_unknown_nmi_and_panics_with_unknown_nmi_panic() {
    let mut vm = start_vm("", &[]);
    assert_eq!(vm.request_ok(json!({"cmd": "nmi", "cpu": 0})), json!({"cpus": [0]}));
    let injected = vm.wait_event(|e| e.is("nmi_injected"), "the nmi_injected event", COMMAND_TIMEOUT);
    assert_eq!(injected["cpus"], json!([0]));
    vm.expect(KernelLine::exactly("Uhhuh. NMI received for unknown reason 00 on CPU 0."), COMMAND_TIMEOUT);
    vm.expect(KernelLine::exactly("Dazed and confused, but trying to continue"), COMMAND_TIMEOUT);
    let unknown = vm.wait_event(|e| e.is("unknown_nmi"), "the unknown_nmi event", COMMAND_TIMEOUT);
    assert_eq!((unknown.u64("cpu"), unknown.u64("reason")), (Some(0), Some(0)), "{}", unknown.body);

    assert_eq!(vm.sysctl_set("kernel.unknown_nmi_panic", 1), "1", "the guest carried on");
    vm.request_ok(json!({"cmd": "nmi", "cpu": 0}));
    vm.expect(KernelLine::exactly("Uhhuh. NMI received for unknown reason 00 on CPU 0."), COMMAND_TIMEOUT);
    let event = vm.expect_kernel_panic("NMI: Not continuing", "unknown_nmi");
    assert_eq!(event.u64("cpu"), Some(0), "{}", event.body);
    expect_halted_after_panic(&mut vm, "NMI: Not continuing");
}
