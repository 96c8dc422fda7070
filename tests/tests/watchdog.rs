//! The guest's lockup detectors, driven over the control socket: faults injected on CPU 1 of a
//! 2-vCPU guest with `watchdog_thresh=2` are reported with Linux's exact lines, by the right
//! detector, inside Linux's detection windows (`crashvisor_tests::windows`), with the matching
//! events; the panic knobs panic; an idle, paused or de-configured guest stays silent; the
//! knobs read and write with Linux's names.
//!
//! Timing is measured from the arrival of the `inject` acknowledgement to the arrival of the
//! report's first console line (the moment the detector fired, to within one console line; the
//! event follows once the whole report is printed).

use std::time::{Duration, Instant};

use crashvisor_tests::windows::{self, Window};
use crashvisor_tests::{
    kernel_text, ControlFailure, Event, KernelLine, Vm, COMMAND_TIMEOUT, DETECT_TIMEOUT, EXIT_TIMEOUT,
};
use serde_json::json;

/// `watchdog_thresh` for every test: soft threshold 4 s, timer period 0.8 s, NMI every 2 s.
const THRESH: u32 = 2;
/// Allowed earliness. The ack is read by the host before the guest's fault task starts (the
/// guest releases it only after writing the answer, and waking it on an emulated CPU takes
/// milliseconds), so measuring from the ack can only make a latency longer. Two things can
/// make it look a little shorter: the watchdog thread's touch comes a moment after its timer
/// tick (the derivation assumes it coincides), and the host may read the ack late if it
/// deschedules the test's reader thread.
const EARLY_SLACK: Duration = Duration::from_millis(100);
/// Allowed lateness beyond a window: the fault task's start after the ack, printing and
/// delivering the report's first line, and timer interrupts taken late by an emulated vCPU.
const LATE_SLACK: Duration = Duration::from_millis(250);
/// The first line of a soft-lockup report, up to the CPU number.
const SOFT_REPORT: &str = "watchdog: BUG: soft lockup - CPU#";

/// Boots 2 vCPUs with `watchdog_thresh=2` and `cmdline`, and waits for the guest's control
/// channel.
fn start_vm(cmdline: &str, args: &[&str]) -> Vm {
    let cmdline = format!("watchdog_thresh={THRESH} {cmdline}");
    let mut all = vec!["--vcpus", "2", "--memory", "64", "--cmdline", cmdline.trim_end()];
    all.extend(args);
    let mut vm = Vm::start_controlled(&all);
    vm.wait_booted();
    vm
}

/// Fails unless `latency` lies in `window`, allowing `stolen` more: the host time the vCPUs
/// involved spent waiting for a physical CPU (steal time), which delays timer ticks and which
/// the guest's soft-lockup clock leaves out on purpose (docs/watchdogs.md).
fn check_window(vm: &mut Vm, what: &str, latency: Duration, window: Window, stolen: Duration) {
    eprintln!(
        "{what}: detected {:.3} s after the ack; window {window}, steal {:.3} s",
        latency.as_secs_f64(),
        stolen.as_secs_f64()
    );
    if latency + EARLY_SLACK <= window.earliest || latency > window.latest + LATE_SLACK + stolen {
        vm.fail(&format!(
            "{what} was detected {latency:?} after the ack, outside Linux's window {window} \
             (slack -{EARLY_SLACK:?}/+{LATE_SLACK:?}, plus {stolen:?} of steal time)"
        ));
    }
}

/// The soft-lockup report's first line, `watchdog: BUG: soft lockup - CPU#1 stuck for 5s!
/// [softlockup/1:7]`, split into (CPU, seconds, comm, pid).
fn parse_soft_report(line: &str) -> Option<(usize, u64, String, u32)> {
    let rest = kernel_text(line).strip_prefix(SOFT_REPORT)?;
    let (cpu, rest) = rest.split_once(" stuck for ")?;
    let (secs, rest) = rest.split_once("s! [")?;
    let (comm, pid) = rest.strip_suffix(']')?.rsplit_once(':')?;
    Some((cpu.parse().ok()?, secs.parse().ok()?, comm.to_string(), pid.parse().ok()?))
}

/// Expects the rest of a report about `comm` (pid `pid`) on `cpu`: the `CPU:` header, the
/// interrupted `RIP` inside `function`, and a call trace through `caller`.
fn expect_regs_and_trace(vm: &mut Vm, cpu: usize, pid: u32, comm: &str, function: &str, caller: &str) {
    vm.expect(KernelLine::starting(format!("CPU: {cpu} UID: 0 PID: {pid} Comm: {comm} ")), COMMAND_TIMEOUT);
    vm.expect(KernelLine::starting(format!("RIP: 0010:{function}+0x")), COMMAND_TIMEOUT);
    vm.expect(KernelLine::exactly("Call Trace:"), COMMAND_TIMEOUT);
    vm.expect(KernelLine::exactly(" <TASK>"), COMMAND_TIMEOUT);
    let mut frames = Vec::new();
    loop {
        let line = vm.expect(|_: &str| true, COMMAND_TIMEOUT);
        match kernel_text(&line) {
            " </TASK>" => break,
            frame => frames.push(frame.trim().to_string()),
        }
    }
    if !frames.iter().any(|f| f.starts_with(&format!("{caller}+0x"))) {
        vm.fail(&format!("the call trace does not pass through {caller}: {frames:?}"));
    }
}

/// Waits for a `lockup_detected` event of `kind` about `cpu` and checks its `arg`.
fn expect_lockup_event(vm: &mut Vm, kind: &str, cpu: usize, arg: u64) -> Event {
    let event = vm.wait_event(|e| e.is_lockup(kind), &format!("a {kind} lockup event"), DETECT_TIMEOUT);
    if event.u64("cpu") != Some(cpu as u64) || event.u64("arg") != Some(arg) {
        vm.fail(&format!("expected a {kind} lockup event for CPU {cpu} with arg {arg}, got {}", event.body));
    }
    event
}

/// Checks that the report's event came with the report (it is sent once the report is printed).
fn check_event_follows_report(vm: &mut Vm, event: &Event, first_line_at: Instant) {
    let gap = event.at.saturating_duration_since(first_line_at).max(first_line_at.saturating_duration_since(event.at));
    if gap > Duration::from_secs(1) {
        vm.fail(&format!("the event {} came {gap:?} away from its report's first line", event.body));
    }
}

/// Checks the guest's `panic` event names the fault's task on CPU 1.
fn check_panic_task(vm: &mut Vm, event: &Event, pid: u32, comm: &str) {
    if event.u64("cpu") != Some(1) || event.u64("pid") != Some(pid.into()) || event.str("comm") != Some(comm) {
        vm.fail(&format!("the panic event should name {comm} (pid {pid}) on CPU 1: {}", event.body));
    }
}

/// With `--no-reboot` and `panic=-1`, a panic resets the guest and the VMM stops with status 3.
fn expect_stopped_after_panic(vm: &mut Vm) {
    vm.wait_event(|e| e.is("stopped"), "the stopped event", EXIT_TIMEOUT);
    vm.expect_exit_code(3, EXIT_TIMEOUT);
}

/// Whether a console line is a detector's or crash report's headline.
fn is_report_line(line: &str) -> bool {
    let text = kernel_text(line);
    ["watchdog:", "INFO: task ", "Kernel panic", "BUG:", "Oops:", "NMI backtrace", "Future hung task"]
        .iter()
        .any(|p| text.starts_with(p))
}

/// Waits until `until` (plus the steal time the vCPUs accrue meanwhile, which postpones what a
/// detector would do), failing at once on an event `forbidden` accepts among those after
/// `since`; then fails if a console line after `mark` is one `forbidden_line` accepts.
fn expect_quiet(
    vm: &mut Vm,
    since: Instant,
    until: Instant,
    mark: usize,
    forbidden: impl Fn(&Event) -> bool,
    forbidden_line: impl Fn(&str) -> bool,
) {
    let before = vm.vcpu_run_delays();
    let mut deadline = until;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match vm.control().wait_event(|e| e.at >= since && forbidden(e), "nothing", left) {
            Ok(event) => vm.fail(&format!("expected silence, got the event {}", event.body)),
            Err(ControlFailure::Timeout(_)) => {}
            Err(failure) => vm.fail(&failure.to_string()),
        }
        deadline = until + vm.stolen_since(&before).into_iter().max().unwrap_or_default();
        if Instant::now() >= deadline {
            break;
        }
    }
    let noisy: Vec<String> = vm.lines_since(mark).into_iter().map(|(l, _)| l).filter(|l| forbidden_line(l)).collect();
    if !noisy.is_empty() {
        vm.fail(&format!("expected silence on the console, got {noisy:#?}"));
    }
}

fn any_lockup(e: &Event) -> bool {
    e.is("lockup_detected") || e.is("panic") || e.is("oops")
}

// ---------------------------------------------------------------------------------------------
// Soft lockups

#[test]
fn soft_lockup_is_reported_with_linux_lines_inside_linux_window() {
    let mut vm = start_vm("", &[]);
    let before = vm.vcpu_run_delays();
    let fault = vm.inject("softlockup", 1, None);
    let (line, at) = vm.expect_stamped(KernelLine::starting(SOFT_REPORT), DETECT_TIMEOUT);
    let stolen = vm.stolen_since(&before);
    let Some((cpu, secs, comm, pid)) = parse_soft_report(&line) else {
        vm.fail(&format!("not a soft-lockup report line: {line:?}"));
    };
    assert_eq!((cpu, comm.as_str(), pid), (1, "softlockup/1", fault.pid), "{line:?}");
    let (least, most) = windows::soft_lockup_stuck_secs(THRESH);
    assert!((least..=most).contains(&secs), "stuck for {secs}s, expected {least}..={most}: {line:?}");
    check_window(&mut vm, "soft lockup", at - fault.at, windows::soft_lockup(THRESH), stolen[1]);

    vm.expect(KernelLine::exactly("Modules linked in:"), COMMAND_TIMEOUT);
    expect_regs_and_trace(&mut vm, 1, fault.pid, "softlockup/1", "inject::softlockup", "inject::run_job");
    let event = expect_lockup_event(&mut vm, "soft", 1, secs);
    check_event_follows_report(&mut vm, &event, at);
}

#[test]
fn softlockup_panic_panics_on_the_first_report() {
    let mut vm = start_vm("panic=-1", &["--no-reboot"]);
    assert_eq!(vm.sysctl_set("kernel.softlockup_panic", 1), "1");
    let fault = vm.inject("softlockup", 1, None);
    vm.expect(KernelLine::starting(format!("{SOFT_REPORT}1 stuck for ")), DETECT_TIMEOUT);
    let event = vm.expect_kernel_panic("softlockup: hung tasks", "softlockup");
    check_panic_task(&mut vm, &event, fault.pid, "softlockup/1");
    expect_stopped_after_panic(&mut vm);
}

/// A lockup that outlasts the detection window but ends before a second report would be due
/// (`4*thresh`) is reported once; then the CPU schedules again and the detector stays quiet.
#[test]
fn soft_lockup_that_ends_is_reported_once_and_the_system_recovers() {
    const DURATION: Duration = Duration::from_secs(7);
    let window = windows::soft_lockup(THRESH);
    assert!(DURATION > window.latest + LATE_SLACK && DURATION < 2 * window.earliest);
    let mut vm = start_vm("", &[]);
    let mark = vm.console_mark();
    let before = vm.vcpu_run_delays();
    let fault = vm.inject("softlockup", 1, Some(DURATION.as_millis() as u64));
    let (line, at) = vm.expect_stamped(KernelLine::starting(format!("{SOFT_REPORT}1 stuck for ")), DETECT_TIMEOUT);
    let stolen = vm.stolen_since(&before);
    check_window(&mut vm, "soft lockup", at - fault.at, window, stolen[1]);
    let secs = parse_soft_report(&line).map_or(0, |(_, secs, ..)| secs);
    expect_lockup_event(&mut vm, "soft", 1, secs);

    // Still stuck, the CPU would be reported again within one window of the first report.
    let until = (at + window.latest + LATE_SLACK).max(fault.at + DURATION) + Duration::from_secs(1);
    expect_quiet(&mut vm, fault.at, until, mark, any_lockup, |_| false);
    let reports: Vec<String> = vm
        .lines_since(mark)
        .into_iter()
        .map(|(l, _)| l)
        .filter(|l| kernel_text(l).starts_with(SOFT_REPORT) || kernel_text(l).starts_with("watchdog:"))
        .collect();
    assert_eq!(reports.len(), 1, "one report: {reports:#?}");

    // The CPU schedules again: the control thread answers, and the fault's task exits (its
    // 7 s count the CPU's run time, so on a loaded host they end later in wall time).
    let ps = wait_exited(&mut vm, "softlockup/1");
    assert!(ps.contains("[watchdog/1]"), "ps after the lockup:\n{ps}");
    let reports = vm.lines_since(mark).into_iter().filter(|(l, _)| kernel_text(l).starts_with("watchdog:")).count();
    assert_eq!(reports, 1, "still one report once the lockup ended");
}

/// Polls `ps` until kernel thread `comm` has exited, and returns the last table.
fn wait_exited(vm: &mut Vm, comm: &str) -> String {
    let deadline = Instant::now() + DETECT_TIMEOUT;
    loop {
        let ps = vm.request_ok(json!({"cmd": "ps"}));
        let ps = ps["text"].as_str().unwrap_or_default().to_string();
        if has_exited(&ps, comm) {
            return ps;
        }
        if Instant::now() > deadline {
            vm.fail(&format!("{comm} did not exit within {DETECT_TIMEOUT:?}:\n{ps}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether the shell's `ps` table shows kernel thread `comm` as gone or dead (`X`: exited
/// tasks stay listed).
fn has_exited(ps: &str, comm: &str) -> bool {
    let row = ps.lines().find(|row| row.ends_with(&format!(" [{comm}]")));
    matches!(row.and_then(|row| row.split_whitespace().nth(3)), None | Some("X"))
}

// ---------------------------------------------------------------------------------------------
// Hard lockups

#[test]
fn hard_lockup_is_caught_by_the_host_nmi_within_two_thresholds() {
    let mut vm = start_vm("", &[]);
    let status = vm.request_ok(json!({"cmd": "status"}));
    assert_eq!(status["nmi_watchdog"], json!({"enabled": true, "period_ms": THRESH * 1000}), "{status}");
    let before = vm.vcpu_run_delays();
    let fault = vm.inject("hardlockup", 1, None);
    let headline = KernelLine::exactly("watchdog: CPU1: Watchdog detected hard LOCKUP on cpu 1");
    let (_, at) = vm.expect_stamped(headline, DETECT_TIMEOUT);
    // A check after a period the host mostly stole is forgiven: one more period each.
    let stolen = vm.stolen_since(&before)[1];
    let half_period = Duration::from_millis(u64::from(THRESH) * 500);
    let forgiven = Duration::from_secs(THRESH.into()) * (stolen.as_nanos() / half_period.as_nanos()) as u32;
    check_window(&mut vm, "hard lockup (NMI)", at - fault.at, windows::hard_lockup_nmi(THRESH), stolen + forgiven);

    vm.expect(KernelLine::exactly("Modules linked in:"), COMMAND_TIMEOUT);
    expect_regs_and_trace(&mut vm, 1, fault.pid, "hardlockup/1", "inject::hardlockup", "inject::run_job");
    // The NMI handler on the locked-up CPU reports itself: reporter = victim.
    let event = expect_lockup_event(&mut vm, "hard", 1, 1);
    check_event_follows_report(&mut vm, &event, at);
}

#[test]
fn hardlockup_panic_panics_and_the_vm_reboots() {
    let mut vm = start_vm("panic=-1", &[]);
    assert_eq!(vm.sysctl_set("kernel.hardlockup_panic", 1), "1");
    let fault = vm.inject("hardlockup", 1, None);
    vm.expect(KernelLine::exactly("watchdog: CPU1: Watchdog detected hard LOCKUP on cpu 1"), DETECT_TIMEOUT);
    let event = vm.expect_kernel_panic("Hard LOCKUP", "hardlockup");
    check_panic_task(&mut vm, &event, fault.pid, "hardlockup/1");
    let reboot = vm.wait_event(|e| e.is("rebooting"), "the rebooting event", EXIT_TIMEOUT);
    assert_eq!(reboot.str("cause"), Some("reset_control"), "{}", reboot.body);
    assert_eq!(vm.wait_booted(), 2);
    assert_eq!(vm.sysctl_get("kernel.hardlockup_panic"), "0", "a new boot starts from the defaults");
}

#[test]
fn buddy_detector_reports_from_the_next_cpu_without_host_nmis() {
    let mut vm = start_vm("", &["--nmi-watchdog", "off"]);
    let status = vm.request_ok(json!({"cmd": "status"}));
    assert_eq!(status["nmi_watchdog"], json!({"enabled": false, "period_ms": 0}), "{status}");
    let before = vm.vcpu_run_delays();
    let fault = vm.inject("hardlockup", 1, None);
    let headline = KernelLine::exactly("watchdog: CPU0: Watchdog detected hard LOCKUP on cpu 1");
    let (_, at) = vm.expect_stamped(headline, DETECT_TIMEOUT);
    // CPU 0's timer does the checking: its delays count as much as the victim's.
    let stolen: Duration = vm.stolen_since(&before).into_iter().sum();
    check_window(&mut vm, "hard lockup (buddy)", at - fault.at, windows::hard_lockup_buddy(THRESH), stolen);

    vm.expect(KernelLine::exactly("Modules linked in:"), COMMAND_TIMEOUT);
    vm.expect(KernelLine::exactly("NMI backtrace for cpu 1"), COMMAND_TIMEOUT);
    expect_regs_and_trace(&mut vm, 1, fault.pid, "hardlockup/1", "inject::hardlockup", "inject::run_job");
    // Reported by CPU 0 about CPU 1.
    let event = expect_lockup_event(&mut vm, "hard", 1, 0);
    check_event_follows_report(&mut vm, &event, at);
}

// ---------------------------------------------------------------------------------------------
// Hung tasks

const HUNG_TIMEOUT: Duration = Duration::from_secs(2);

#[test]
fn hung_task_is_reported_with_linux_lines_until_the_warnings_run_out() {
    let mut vm = start_vm("", &[]);
    let release = vm.request_ok(json!({"cmd": "hello"}))["release"].as_str().unwrap_or_default().to_string();
    assert_eq!(vm.sysctl_set("kernel.hung_task_timeout_secs", HUNG_TIMEOUT.as_secs()), "2");
    assert_eq!(vm.sysctl_set("kernel.hung_task_warnings", 1), "1");
    let mark = vm.console_mark();
    let before = vm.vcpu_run_delays();
    let fault = vm.inject("hung_task", 1, None);
    let headline = format!("INFO: task hung_task/1:{} blocked for more than ", fault.pid);
    let (line, at) = vm.expect_stamped(KernelLine::starting(headline.as_str()), DETECT_TIMEOUT);
    let stolen: Duration = vm.stolen_since(&before).into_iter().sum();
    check_window(&mut vm, "hung task", at - fault.at, windows::hung_task(HUNG_TIMEOUT, HUNG_TIMEOUT), stolen);
    // The time since the scan that first saw the task blocked: at least the timeout, less
    // than the next scan.
    let blocked: u64 = kernel_text(&line)
        .strip_prefix(headline.as_str())
        .and_then(|rest| rest.strip_suffix(" seconds."))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| vm.fail(&format!("not a hung-task headline: {line:?}")));
    assert!((2..4).contains(&blocked), "{line:?}");

    vm.expect(KernelLine::exactly(format!("      Not tainted {release} #1")), COMMAND_TIMEOUT);
    vm.expect(
        KernelLine::exactly("\"echo 0 > /proc/sys/kernel/hung_task_timeout_secs\" disables this message."),
        COMMAND_TIMEOUT,
    );
    let task_line = format!(
        "task:{:<15.15} state:D stack:0     pid:{:<5} tgid:{:<5} ppid:2      task_flags:0x",
        "hung_task/1", fault.pid, fault.pid
    );
    vm.expect(KernelLine::starting(task_line), COMMAND_TIMEOUT);
    vm.expect(KernelLine::exactly("Call Trace:"), COMMAND_TIMEOUT);
    vm.expect(KernelLine::starting(" inject::hung_task+0x"), COMMAND_TIMEOUT);
    vm.expect(KernelLine::exactly(" </TASK>"), COMMAND_TIMEOUT);
    // hung_task_warnings=1: that was the last report; Linux says so once, right after it.
    let suppressed = "Future hung task reports are suppressed, see sysctl kernel.hung_task_warnings";
    vm.expect(KernelLine::exactly(suppressed), COMMAND_TIMEOUT);
    let event = vm.wait_event(|e| e.is_lockup("hung_task"), "the hung-task event", DETECT_TIMEOUT);
    assert_eq!(event.u64("arg"), Some(fault.pid.into()), "the event names the task: {}", event.body);
    check_event_follows_report(&mut vm, &event, at);

    // The next two scans find the task still hung and stay silent.
    let until = at + 2 * HUNG_TIMEOUT + LATE_SLACK;
    expect_quiet(&mut vm, fault.at, until, mark, any_lockup, |_| false);
    let lines: Vec<String> = vm.lines_since(mark).into_iter().map(|(l, _)| kernel_text(&l).to_string()).collect();
    assert_eq!(lines.iter().filter(|l| l.starts_with("INFO: task ")).count(), 1, "{lines:#?}");
    assert_eq!(lines.iter().filter(|l| *l == suppressed).count(), 1, "{lines:#?}");
}

#[test]
fn hung_task_panic_panics() {
    let mut vm = start_vm("panic=-1", &["--no-reboot"]);
    assert_eq!(vm.sysctl_set("kernel.hung_task_panic", 1), "1");
    assert_eq!(vm.sysctl_set("kernel.hung_task_timeout_secs", HUNG_TIMEOUT.as_secs()), "2");
    let fault = vm.inject("hung_task", 1, None);
    vm.expect(
        KernelLine::starting(format!("INFO: task hung_task/1:{} blocked for more than ", fault.pid)),
        DETECT_TIMEOUT,
    );
    let event = vm.expect_kernel_panic("hung_task: blocked tasks", "hung_task");
    assert_eq!(event.str("comm"), Some("khungtaskd"), "khungtaskd panics: {}", event.body);
    expect_stopped_after_panic(&mut vm);
}

/// docs/control-protocol.md and docs/vmm.md: for a hung task, the event's `cpu` is the CPU the
/// detector (`khungtaskd`) ran on.
#[test]
fn hung_task_event_names_the_cpu_the_detector_ran_on() {
    let mut vm = start_vm("", &[]);
    let ps = vm.request_ok(json!({"cmd": "ps"}));
    let ps = ps["text"].as_str().unwrap_or_default().to_string();
    let detector_cpu: u64 = ps
        .lines()
        .find(|row| row.ends_with(" [khungtaskd]"))
        .and_then(|row| row.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or_else(|| vm.fail(&format!("ps lists no khungtaskd:\n{ps}")));
    assert_eq!(vm.sysctl_set("kernel.hung_task_timeout_secs", HUNG_TIMEOUT.as_secs()), "2");
    // Hang a task on the other CPU, so the two answers differ.
    let fault = vm.inject("hung_task", 1 - detector_cpu as usize, None);
    let event = vm.wait_event(|e| e.is_lockup("hung_task"), "the hung-task event", DETECT_TIMEOUT);
    assert_eq!(event.u64("arg"), Some(fault.pid.into()));
    assert_eq!(event.u64("cpu"), Some(detector_cpu), "khungtaskd runs on CPU {detector_cpu}: {}", event.body);
}

// ---------------------------------------------------------------------------------------------
// Deadlock

#[test]
fn abba_deadlock_is_a_soft_lockup_on_both_cpus() {
    let mut vm = start_vm("", &[]);
    let fault = vm.inject("deadlock", 1, None);
    let mut reported = [None, None];
    while reported.iter().any(Option::is_none) {
        let line = vm.expect(KernelLine::starting(SOFT_REPORT), DETECT_TIMEOUT);
        let Some((cpu, _, comm, pid)) = parse_soft_report(&line).filter(|(cpu, ..)| *cpu < 2) else {
            vm.fail(&format!("not a soft-lockup report of CPU 0 or 1: {line:?}"));
        };
        assert_eq!(comm, format!("deadlock/{cpu}"), "{line:?}");
        reported[cpu] = Some(pid);
    }
    assert_eq!(reported[1], Some(fault.pid), "the ack names the thread on the requested CPU");
    assert_ne!(reported[0], reported[1]);
    // A CPU still stuck reports again every period (Linux's update_report_ts), so one CPU may
    // report twice before the other's first report when the host delays that CPU's timer.
    let mut evented = [false, false];
    while evented.iter().any(|seen| !seen) {
        let event = vm.wait_event(|e| e.is_lockup("soft"), "a soft lockup event", DETECT_TIMEOUT);
        match event.u64("cpu") {
            Some(cpu @ (0 | 1)) => evented[cpu as usize] = true,
            _ => vm.fail(&format!("not a soft lockup event of CPU 0 or 1: {}", event.body)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// No false reports

/// `watchdog_thresh=2`: 20 s are 25 soft-detector periods and 10 NMI checks per CPU.
#[test]
fn idle_guest_reports_nothing_for_20_seconds() {
    let mut vm = start_vm("", &[]);
    let mark = vm.console_mark();
    let since = Instant::now();
    expect_quiet(&mut vm, since, since + Duration::from_secs(20), mark, any_lockup, is_report_line);
}

/// The host's pause is not the guest's lockup: KVM_KVMCLOCK_CTRL marks the kvmclock pages, and
/// the detectors forgive the gap.
#[test]
fn host_pause_of_5_seconds_is_not_a_lockup() {
    let mut vm = start_vm("", &[]);
    let mark = vm.console_mark();
    let since = Instant::now();
    assert_eq!(vm.request_ok(json!({"cmd": "pause"})), json!({"state": "paused"}));
    vm.wait_event(|e| e.is("paused"), "the paused event", COMMAND_TIMEOUT);
    // The point of the test: 5 s of wall time pass while the guest cannot run.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(vm.request_ok(json!({"cmd": "resume"})), json!({"state": "running"}));
    let resumed = vm.wait_event(|e| e.is("resumed"), "the resumed event", COMMAND_TIMEOUT);
    expect_quiet(&mut vm, since, resumed.at + Duration::from_secs(10), mark, any_lockup, is_report_line);
    assert_eq!(vm.sysctl_get("kernel.watchdog"), "1", "the guest still answers");
}

/// `nowatchdog` turns off both detectors: a soft lockup (on CPU 0) and a hard lockup (on CPU 1)
/// outlast their windows and their ends without a word.
#[test]
fn nowatchdog_silences_the_soft_and_hard_detectors() {
    let mut vm = start_vm("nowatchdog", &[]);
    assert_eq!(vm.sysctl_get("kernel.watchdog"), "0");
    let status = vm.request_ok(json!({"cmd": "status"}));
    assert_eq!(status["nmi_watchdog"]["period_ms"], 0, "no hard detector, no NMI clock: {status}");
    let mark = vm.console_mark();
    // Both at once, if the guest can take the second request while the first fault runs: it can
    // while CPU 0 spins with interrupts on (COM2 interrupts CPU 0; the control thread runs on
    // CPU 1 here). Otherwise the second ack comes when the first fault ends.
    let soft = vm.inject("softlockup", 0, Some(7_000));
    let hard = vm.inject("hardlockup", 1, Some(5_000));
    let until = (hard.at + Duration::from_secs(5)).max(soft.at + Duration::from_secs(7)) + Duration::from_secs(1);
    assert!(until > hard.at + windows::hard_lockup_nmi(THRESH).latest + LATE_SLACK);
    assert!(until > soft.at + windows::soft_lockup(THRESH).latest + LATE_SLACK);
    expect_quiet(&mut vm, soft.at, until, mark, any_lockup, is_report_line);
    wait_exited(&mut vm, "softlockup/0");
    wait_exited(&mut vm, "hardlockup/1");
    let noisy: Vec<String> = vm.lines_since(mark).into_iter().map(|(l, _)| l).filter(|l| is_report_line(l)).collect();
    assert!(noisy.is_empty(), "silent until the faults ended: {noisy:#?}");
}

/// `nosoftlockup` turns off the soft detector only; a spin with interrupts on gives the hard
/// detector nothing to see, so the guest stays silent.
#[test]
fn nosoftlockup_silences_the_soft_detector() {
    let mut vm = start_vm("nosoftlockup", &[]);
    assert_eq!(vm.sysctl_get("kernel.soft_watchdog"), "0");
    assert_eq!(vm.sysctl_get("kernel.watchdog"), "1");
    let mark = vm.console_mark();
    let fault = vm.inject("softlockup", 1, Some(7_000));
    let until = fault.at + Duration::from_secs(8);
    assert!(until > fault.at + windows::soft_lockup(THRESH).latest + LATE_SLACK);
    expect_quiet(&mut vm, fault.at, until, mark, any_lockup, is_report_line);
}

/// A hung task is reported at every scan while warnings remain; writing 0 to
/// `hung_task_timeout_secs` stops that.
#[test]
fn hung_task_timeout_0_stops_the_hung_task_detector() {
    let mut vm = start_vm("", &[]);
    assert_eq!(vm.sysctl_set("kernel.hung_task_timeout_secs", HUNG_TIMEOUT.as_secs()), "2");
    let fault = vm.inject("hung_task", 1, None);
    vm.expect(KernelLine::starting(format!("INFO: task hung_task/1:{} blocked", fault.pid)), DETECT_TIMEOUT);
    // The event ends the report; the next scan is a whole interval away.
    vm.wait_event(|e| e.is_lockup("hung_task"), "the hung-task event", DETECT_TIMEOUT);
    let reply = vm.request_stamped(json!({"cmd": "sysctl_set", "name": "kernel.hung_task_timeout_secs", "value": 0}));
    assert_eq!(reply.outcome.as_ref().ok().and_then(|r| r["value"].as_str()), Some("0"), "{:?}", reply.outcome);
    let mark = vm.console_mark();
    // Without the write the next two scans would report the task again.
    let until = reply.at + 2 * HUNG_TIMEOUT + LATE_SLACK;
    expect_quiet(&mut vm, reply.at, until, mark, any_lockup, |l| kernel_text(l).starts_with("INFO: task "));
}

/// `nmi_watchdog=0` turns off the hard detector: interrupts off for longer than its window
/// give no hard report. (When interrupts return the soft detector may report the spin, as
/// Linux's does; it is on here.)
#[test]
fn nmi_watchdog_0_silences_the_hard_detector() {
    let mut vm = start_vm("nmi_watchdog=0", &[]);
    assert_eq!(vm.sysctl_get("kernel.nmi_watchdog"), "0");
    let status = vm.request_ok(json!({"cmd": "status"}));
    assert_eq!(status["nmi_watchdog"]["period_ms"], 0, "the guest stopped the NMI clock: {status}");
    let mark = vm.console_mark();
    let fault = vm.inject("hardlockup", 1, Some(6_000));
    let until = fault.at + Duration::from_secs(7);
    assert!(until > fault.at + windows::hard_lockup_nmi(THRESH).latest + LATE_SLACK);
    let hard = |e: &Event| e.is_lockup("hard") || e.is("panic");
    expect_quiet(&mut vm, fault.at, until, mark, hard, |l| kernel_text(l).contains("hard LOCKUP"));
}

// ---------------------------------------------------------------------------------------------
// Knobs

#[test]
fn sysctls_read_and_write_with_linux_names_and_documented_errors() {
    let mut vm = start_vm("", &[]);
    let defaults = [
        ("kernel.watchdog", "1"),
        ("kernel.soft_watchdog", "1"),
        ("kernel.nmi_watchdog", "1"),
        ("kernel.watchdog_thresh", "2"),
        ("kernel.watchdog_cpumask", "0-1"),
        ("kernel.softlockup_panic", "0"),
        ("kernel.hardlockup_panic", "0"),
        ("kernel.softlockup_all_cpu_backtrace", "0"),
        ("kernel.hardlockup_all_cpu_backtrace", "0"),
        ("kernel.hung_task_timeout_secs", "120"),
        ("kernel.hung_task_check_interval_secs", "0"),
        ("kernel.hung_task_warnings", "10"),
        ("kernel.hung_task_panic", "0"),
        ("kernel.hung_task_check_count", "4194304"),
        ("kernel.hung_task_all_cpu_backtrace", "0"),
        ("kernel.panic", "0"),
        ("kernel.panic_on_oops", "0"),
        ("kernel.unknown_nmi_panic", "0"),
        ("kernel.panic_on_unrecovered_nmi", "0"),
        ("kernel.panic_on_io_nmi", "0"),
    ];
    for (name, value) in defaults {
        assert_eq!(vm.sysctl_get(name), value, "{name}");
    }

    // Values as JSON numbers, strings and booleans; each write returns what reads back.
    for (name, value, read_back) in [
        ("kernel.softlockup_panic", json!(3), "3"),
        ("kernel.softlockup_panic", json!("0"), "0"),
        ("kernel.hung_task_warnings", json!(-1), "-1"),
        ("kernel.panic_on_oops", json!(true), "1"),
        ("kernel.panic_on_oops", json!(false), "0"),
        ("kernel.watchdog_cpumask", json!("1"), "1"),
        ("kernel.watchdog_cpumask", json!("0-1"), "0-1"),
        ("kernel.watchdog_thresh", json!(60), "60"),
        ("kernel.watchdog_thresh", json!(2), "2"),
    ] {
        assert_eq!(vm.sysctl_set(name, value.clone()), read_back, "{name} = {value}");
        assert_eq!(vm.sysctl_get(name), read_back, "{name} after writing {value}");
    }

    // Out of range or malformed: EINVAL is `bad_argument`, and the knob keeps its value.
    for (name, value) in [
        ("kernel.watchdog_thresh", json!(61)),
        ("kernel.watchdog_thresh", json!(-1)),
        ("kernel.watchdog", json!(2)),
        ("kernel.hung_task_warnings", json!(-2)),
        ("kernel.watchdog_cpumask", json!("0-2")),
        ("kernel.panic_on_oops", json!("yes")),
    ] {
        let before = vm.sysctl_get(name);
        let error = vm.request(json!({"cmd": "sysctl_set", "name": name, "value": value.clone()}));
        assert_eq!(error.map_err(|e| e.code), Err("bad_argument".into()), "{name} = {value}");
        assert_eq!(vm.sysctl_get(name), before, "{name} unchanged");
    }
    // Unknown names are ENOENT: `unknown_sysctl`, naming the sysctl.
    for request in [
        json!({"cmd": "sysctl_get", "name": "kernel.nope"}),
        json!({"cmd": "sysctl_set", "name": "kernel.nope", "value": 1}),
        json!({"cmd": "sysctl_get", "name": "vm.swappiness"}),
    ] {
        let error = vm.request(request.clone()).expect_err("an unknown sysctl");
        assert_eq!(error.code, "unknown_sysctl", "{request}");
        assert_eq!(Some(error.message.as_str()), request["name"].as_str(), "{request}");
    }
    // Malformed requests never reach the guest.
    for request in [
        json!({"cmd": "sysctl_get", "name": "kernel.Panic"}),
        json!({"cmd": "sysctl_get", "name": "kernel.panic", "value": 1}),
        json!({"cmd": "sysctl_set", "name": "kernel.panic"}),
        json!({"cmd": "sysctl_set", "name": "kernel.panic", "value": [1]}),
    ] {
        let error = vm.request(request.clone()).expect_err("a malformed request");
        assert_eq!(error.code, "bad_argument", "{request}");
    }

    // The shell reads the same knobs.
    vm.boot();
    assert_eq!(vm.sysctl_set("kernel.softlockup_panic", 7), "7");
    assert_eq!(vm.run("cat /proc/sys/kernel/softlockup_panic"), ["7"]);
}

/// A write to `kernel.watchdog_thresh` restarts the detectors with the new threshold: the host's
/// NMI period follows, and a soft lockup is reported inside the new, shorter window.
#[test]
fn watchdog_thresh_write_takes_effect() {
    const NEW_THRESH: u32 = 1;
    let mut vm = start_vm("", &[]);
    assert_eq!(vm.sysctl_set("kernel.watchdog_thresh", NEW_THRESH), "1");
    let status = vm.request_ok(json!({"cmd": "status"}));
    assert_eq!(status["nmi_watchdog"]["period_ms"], NEW_THRESH * 1000, "{status}");
    let before = vm.vcpu_run_delays();
    let fault = vm.inject("softlockup", 1, None);
    let (line, at) = vm.expect_stamped(KernelLine::starting(format!("{SOFT_REPORT}1 stuck for ")), DETECT_TIMEOUT);
    let stolen = vm.stolen_since(&before);
    check_window(&mut vm, "soft lockup, thresh 1", at - fault.at, windows::soft_lockup(NEW_THRESH), stolen[1]);
    let (least, most) = windows::soft_lockup_stuck_secs(NEW_THRESH);
    let secs = parse_soft_report(&line).map_or(0, |(_, secs, ..)| secs);
    assert!((least..=most).contains(&secs), "{line:?}");
}

/// Boot parameters with their own names set the knobs they stand for.
#[test]
fn boot_parameters_set_the_knobs() {
    let cmdline = "softlockup_panic=3 nmi_watchdog=panic softlockup_all_cpu_backtrace=1 \
                   hardlockup_all_cpu_backtrace=1 hung_task_panic=1 panic=5 oops=panic unknown_nmi_panic";
    let mut vm = start_vm(cmdline, &[]);
    for (name, value) in [
        ("kernel.watchdog_thresh", "2"),
        ("kernel.softlockup_panic", "3"),
        ("kernel.hardlockup_panic", "1"),
        ("kernel.nmi_watchdog", "1"),
        ("kernel.softlockup_all_cpu_backtrace", "1"),
        ("kernel.hardlockup_all_cpu_backtrace", "1"),
        ("kernel.hung_task_panic", "1"),
        ("kernel.panic", "5"),
        ("kernel.panic_on_oops", "1"),
        ("kernel.unknown_nmi_panic", "1"),
    ] {
        assert_eq!(vm.sysctl_get(name), value, "{name} after booting with {cmdline:?}");
    }
}

/// Linux 5.8+: `sysctl.kernel.NAME=VALUE` on the command line sets any sysctl at boot.
#[test]
fn sysctl_boot_parameters_set_sysctls() {
    let mut vm =
        start_vm("sysctl.kernel.softlockup_panic=1 sysctl.kernel.hung_task_timeout_secs=7 panic=-1", &["--no-reboot"]);
    assert_eq!(vm.sysctl_get("kernel.softlockup_panic"), "1");
    assert_eq!(vm.sysctl_get("kernel.hung_task_timeout_secs"), "7");
}
