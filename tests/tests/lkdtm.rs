//! LKDTM end to end, driven through the guest shell's `/sys/kernel/debug/provoke-crash/` files
//! as on Linux: every supported crash type runs at least once, and what it must lead to comes
//! from the guest's own table (`crashvisor_abi::lkdtm`) — the line Linux prints, what catches
//! it, when it panics — so the table is checked too.
//!
//! - The types that do not end the boot run one after the other in one VM (each in a child
//!   task, which an oops kills and kthreadd reaps); those that need `slab_debug=` in a second.
//! - Crash points count their hits and run the type in the context that hits them (hard
//!   interrupts: the trace has an `<IRQ>` section).
//! - The types that panic (always, or with their sysctl) each crash a kdump VM: the vmcore's
//!   crash reason, the crashed kernel's log, and `dumpd bt` of the panicking CPU through the
//!   injected code; the VM reboots and reloads kdump between crashes.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crashvisor_abi::lkdtm::{Catcher, Context, CrashPoint, CrashType, Outcome, Panics, DEBUGFS_DIR};
use crashvisor_control::{Injection, Request};
use crashvisor_tests::kdump::{self, dumpd, Crash};
use crashvisor_tests::{kernel_text, KernelLine, TempDir, TempFile, Vm, BOOT_TIMEOUT, COMMAND_TIMEOUT};
use serde_json::{json, Value};

/// The CPU the crash types run on (of 2).
const CPU: usize = 1;
/// The VMM's reset-loop window (docs/vmm.md: three resets within it of booting end the VM).
const RESET_LOOP_WINDOW: Duration = Duration::from_secs(1);
/// The tasks of a fresh guest, as `ps` names them.
const BASE_TASKS: usize = 8;

/// Boots a 2-vCPU guest with `cmdline` to its prompt, its control socket connected.
fn boot(cmdline: &str) -> (Vm, Vec<String>) {
    let mut vm = Vm::start_controlled(&["--vcpus", "2", "--memory", "256", "--cmdline", cmdline]);
    let log = vm.boot();
    (vm, log)
}

/// The outcome the table declares for a supported type.
fn outcome(kind: CrashType) -> Outcome {
    kind.outcome().unwrap_or_else(|| panic!("{kind} is not supported"))
}

/// The kernel text of console lines.
fn texts(lines: &[String]) -> Vec<&str> {
    lines.iter().map(|l| kernel_text(l)).collect()
}

/// Whether a line's text starts with `prefix`.
fn has_line(lines: &[String], prefix: &str) -> bool {
    lines.iter().any(|l| kernel_text(l).starts_with(prefix))
}

/// Whether a line's text contains the message the table names.
fn has_message(lines: &[String], message: &str) -> bool {
    lines.iter().any(|l| kernel_text(l).contains(message))
}

/// `echo TYPE > .../DIRECT` on CPU 1, waiting for the shell; checks that LKDTM ran it and that
/// the line the table names for it was printed, and returns the output.
#[track_caller]
fn run_direct(vm: &mut Vm, kind: CrashType) -> Vec<String> {
    let lines = vm.run(&format!("taskset -c {CPU} echo {kind} > {DEBUGFS_DIR}/DIRECT"));
    let performing = format!("lkdtm: Performing direct entry {kind}");
    let message = outcome(kind).message;
    if !has_line(&lines, &performing) || !has_message(&lines, message) {
        vm.fail(&format!("{kind}: expected {performing:?} and a line with {message:?}, got:\n{}", lines.join("\n")));
    }
    lines
}

/// The report a type that does not end the boot leaves, by what catches it: an oops kills the
/// task that ran it (on CPU 1), a warning carries on; both through the injected code.
#[track_caller]
fn check_report(vm: &mut Vm, kind: CrashType, lines: &[String]) {
    let caught_by = outcome(kind).caught_by;
    let text = texts(lines);
    let oops = text.iter().any(|t| t.starts_with("Oops: "));
    let expected_oops = outcome(kind).panics == Panics::OnOops;
    let mut wrong = Vec::new();
    if oops != expected_oops {
        wrong.push(format!("an Oops line: {oops}, expected {expected_oops}"));
    }
    let ended = match caught_by {
        Catcher::Ubsan => text.contains(&"---[ end trace ]---"),
        Catcher::Nothing => true,
        _ => text.contains(&"---[ end trace 0000000000000000 ]---"),
    };
    if !ended {
        wrong.push("no end-of-report marker".into());
    }
    if caught_by != Catcher::Nothing {
        if !text.iter().any(|t| t.starts_with(&format!("CPU: {CPU} UID: 0 PID: ")) && t.contains(" Comm: sh ")) {
            wrong.push(format!("no CPU: {CPU} ... Comm: sh header"));
        }
        if !text.iter().any(|t| t.starts_with(" lkdtm::lkdtm_do_action+0x")) {
            wrong.push("no trace through lkdtm_do_action".into());
        }
    }
    if caught_by == Catcher::Warn
        && !text.iter().any(|t| t.starts_with("WARNING: ") && t.contains(&format!(", CPU#{CPU}: sh/")))
    {
        wrong.push("no WARNING: line naming CPU 1's sh".into());
    }
    if !wrong.is_empty() {
        vm.fail(&format!("{kind} ({}): {}:\n{}", caught_by.as_str(), wrong.join("; "), lines.join("\n")));
    }
}

/// The `ps` rows of children of the shell (`[sh]`: the tasks that ran crash types).
fn children(vm: &mut Vm) -> Vec<String> {
    vm.run("ps").into_iter().filter(|row| row.ends_with(" [sh]")).collect()
}

#[test]
fn every_type_that_does_not_end_the_boot_reports_as_linux_does() {
    // kdump is on throughout: once every type has run, a panic is still captured, from the
    // kernel they left behind.
    let mut kvm = KdumpVm::start("");
    let vm = &mut kvm.vm;
    let log: Vec<String> = vm.lines_since(0).into_iter().map(|(line, _)| line).collect();
    assert!(has_line(&log, "lkdtm: No crash points registered, enable through debugfs"), "{log:?}");
    assert!(has_line(&log, "x86/mm: Checked W+X mappings: passed, no W+X pages found."), "{log:?}");
    let tasks = vm.run("ps").len();

    let listed = vm.run(&format!("cat {DEBUGFS_DIR}/DIRECT"));
    let wanted: Vec<String> = ["Available crash types:".to_string()]
        .into_iter()
        .chain(CrashType::supported().map(|k| k.to_string()))
        .collect();
    assert_eq!(listed, wanted, "cat DIRECT lists the supported types");

    let kinds: Vec<CrashType> = CrashType::supported()
        .filter(|&k| {
            let o = outcome(k);
            matches!(o.panics, Panics::OnOops | Panics::OnWarn | Panics::Never) && o.requires.is_none()
        })
        .filter(|&k| k != CrashType::LOOP)
        .collect();
    assert!(kinds.len() >= 25, "{kinds:?}");
    for kind in kinds {
        let lines = run_direct(vm, kind);
        check_report(vm, kind, &lines);
    }
    // Every oops killed its task; kthreadd reaped them all.
    assert_eq!(children(vm), Vec::<String>::new(), "the children that ran the types are gone");
    assert_eq!(vm.run("ps").len(), tasks, "ps");

    // LOOP never returns, and nothing catches it (the kernel is preemptible): run it in the
    // background, and the shell still answers.
    let started = vm.run(&format!("taskset -c {CPU} echo LOOP > {DEBUGFS_DIR}/DIRECT &"));
    assert!(started.iter().any(|l| l.starts_with("[1] ")), "{started:?}");
    let performing = "lkdtm: Performing direct entry LOOP";
    if !has_line(&started, performing) {
        // The child on CPU 1 may print after the shell's prompt.
        vm.expect(KernelLine::exactly(performing), COMMAND_TIMEOUT);
    }
    let running = children(vm);
    assert!(running.len() == 1 && running[0].contains(" R "), "the LOOP child runs: {running:?}");
    assert_eq!(vm.run("uptime").len(), 1);

    // Unknown and unsupported names are refused, as Linux refuses unknown ones.
    let refused = vm.run(&format!("echo NOT_A_TYPE > {DEBUGFS_DIR}/DIRECT"));
    assert_eq!(refused.last().map(String::as_str), Some("sh: write error: Invalid argument"), "{refused:?}");
    let refused = vm.run(&format!("echo USERCOPY_KERNEL > {DEBUGFS_DIR}/DIRECT"));
    assert!(has_line(&refused, "lkdtm: USERCOPY_KERNEL is not supported by this kernel: "), "{refused:?}");

    // A panic beside the LOOP on CPU 1: captured, its CPU header tainted by the oopses (D)
    // and warnings (W) before it.
    let release = vm.request_ok(json!({"cmd": "hello"}))["release"].as_str().unwrap_or_default().to_string();
    let crash = kvm.crash(&on_cpu1(CrashType::PANIC, &[], "lkdtm::bugs::lkdtm_PANIC"));
    let dmesg = crash.vmcore_dmesg();
    let header = dmesg.lines().rev().map(kernel_text).find(|t| t.starts_with(&format!("CPU: {CPU} ")));
    let taint = header.and_then(|h| h.split(" Tainted: ").nth(1)?.split(&format!(" {release} ")).next());
    assert!(
        taint.is_some_and(|t| t.contains('D') && t.contains('W')),
        "the panic's CPU header {header:?} is not tainted D and W"
    );
}

#[test]
fn slab_debug_finds_overflow_use_after_free_and_double_free() {
    let (mut vm, _) = boot("slab_debug=ZP,kmalloc-1k;F,lkdtm-heap-double_free");
    for kind in [CrashType::SLAB_LINEAR_OVERFLOW, CrashType::WRITE_AFTER_FREE, CrashType::READ_AFTER_FREE] {
        assert!(outcome(kind).requires.is_some_and(|r| r.starts_with("slab_debug=")), "{kind}");
        run_direct(&mut vm, kind);
    }
    // The details of the first two: Linux's slab_bug, the broken bytes, the fix.
    let overflow = run_direct(&mut vm, CrashType::SLAB_LINEAR_OVERFLOW);
    for line in ["BUG kmalloc-1k (", "FIX kmalloc-1k: Restoring Right Redzone 0x"] {
        assert!(has_line(&overflow, line), "no {line:?} in:\n{}", overflow.join("\n"));
    }
    assert!(texts(&overflow).iter().any(|t| t.ends_with("Right Redzone overwritten")), "{overflow:?}");
    assert!(
        texts(&overflow).iter().any(|t| t.contains(" @offset=1024. First byte 0x78 instead of 0xcc")),
        "{overflow:?}"
    );
    let write = run_direct(&mut vm, CrashType::WRITE_AFTER_FREE);
    assert!(texts(&write).iter().any(|t| t.ends_with("Poison overwritten")), "{write:?}");
    assert!(texts(&write).iter().any(|t| t.contains(" @offset=512. First byte 0xf0 instead of 0x6b")), "{write:?}");
    let read = run_direct(&mut vm, CrashType::READ_AFTER_FREE);
    assert!(has_line(&read, "lkdtm: Memory correctly poisoned (6b6b6b6b)"), "{read:?}");
    // With F on its cache, a double free is found on the free list and not done.
    let lines = vm.run(&format!("taskset -c {CPU} echo SLAB_FREE_DOUBLE > {DEBUGFS_DIR}/DIRECT"));
    assert!(texts(&lines)
        .iter()
        .any(|t| t.starts_with("BUG lkdtm-heap-double_free (") && t.ends_with("): Object already free")));
    assert!(has_line(&lines, "FIX lkdtm-heap-double_free: Object at 0x"), "{lines:?}");
    assert!(!has_line(&lines, "Oops: "), "no BUG(): the free is refused, the task goes on:\n{}", lines.join("\n"));
    assert_eq!(vm.run("uptime").len(), 1);
}

/// `MemFree` in kB.
fn mem_free_kb(vm: &mut Vm) -> u64 {
    let meminfo = vm.run("cat /proc/meminfo");
    let line = meminfo.iter().find(|l| l.starts_with("MemFree:")).unwrap_or_else(|| panic!("{meminfo:?}"));
    line.split_whitespace().nth(1).and_then(|kb| kb.parse().ok()).unwrap_or_else(|| panic!("{line:?}"))
}

#[test]
fn dead_tasks_are_reaped_with_their_stacks() {
    const RUNS: u64 = 24;
    let (mut vm, _) = boot("");
    run_direct(&mut vm, CrashType::REPORT_STACK);
    let before = mem_free_kb(&mut vm);
    for _ in 0..RUNS {
        run_direct(&mut vm, CrashType::REPORT_STACK);
    }
    let after = mem_free_kb(&mut vm);
    // Each run's task had a 16 KiB stack: kept, they would be 384 KiB.
    assert!(before.saturating_sub(after) < RUNS * 16 / 4, "MemFree {before} kB -> {after} kB after {RUNS} tasks died");
    assert_eq!(vm.run("ps").len(), 1 + BASE_TASKS, "ps");
}

/// The last line of a command's output that is the shell's: a crash point registered at boot
/// prints its hits at any time, even into the echo of the command being typed, so kernel
/// lines (and the echo they broke) may surround a one-line answer.
fn last_shell_line(lines: &[String]) -> Option<&str> {
    lines.iter().rev().map(String::as_str).find(|l| !l.starts_with('['))
}

#[test]
fn crash_points_count_hits_and_run_the_type_where_they_are_hit() {
    let (mut vm, log) = boot(
        "watchdog_thresh=2 lkdtm.cpoint_name=INT_TASKLET_ENTRY lkdtm.cpoint_type=OVERFLOW_SIGNED lkdtm.cpoint_count=3",
    );
    assert!(has_line(&log, "lkdtm: Crash point INT_TASKLET_ENTRY of type OVERFLOW_SIGNED registered"), "{log:?}");
    for (parameter, value) in [("cpoint_name", "INT_TASKLET_ENTRY"), ("cpoint_count", "3")] {
        let out = vm.run(&format!("cat /sys/module/lkdtm/parameters/{parameter}"));
        assert_eq!(last_shell_line(&out), Some(value), "{parameter}: {out:?}");
    }
    // Timer callbacks (the watchdog's, every 0.8 s per CPU) hit it; the third runs the type,
    // which may be while the guest still boots: the whole console is searched, for lines that
    // hold each text (a hit may be printed into the echo of a command being typed).
    let hit = "lkdtm: Crash point INT_TASKLET_ENTRY of type OVERFLOW_SIGNED hit, trigger in ";
    let firing = [
        format!("{hit}2 rounds"),
        format!("{hit}1 rounds"),
        format!("{hit}0 rounds"),
        "UBSAN: signed-integer-overflow in src/lkdtm/bugs.rs:".into(),
        "Call Trace:".into(),
        " <IRQ>".into(),
        " lkdtm::lkdtm_do_action+0x".into(),
        " </IRQ>".into(),
    ];
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    loop {
        let console: Vec<String> = vm.lines_since(0).into_iter().map(|(line, _)| line).collect();
        let text = texts(&console);
        let mut at = 0;
        let found = firing.iter().all(|wanted| match text[at..].iter().position(|t| t.contains(wanted.as_str())) {
            Some(i) => {
                at += i + 1;
                true
            }
            None => false,
        });
        if found {
            break;
        }
        if Instant::now() > deadline {
            vm.fail(&format!("no firing with an interrupt-context UBSAN report ({firing:?}) in {COMMAND_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Registering at another point moves the type there; a large cpoint_count keeps the next
    // firings away. Console input hits INT_HW_IRQ_EN (the UART's interrupt handler).
    for command in [
        "echo 100000 > /sys/module/lkdtm/parameters/cpoint_count".to_string(),
        format!("echo WARNING_MESSAGE > {DEBUGFS_DIR}/INT_HW_IRQ_EN"),
    ] {
        let out = vm.run(&command);
        assert!(!out.iter().any(|l| l.contains("write error")), "{command}: {out:?}");
    }
    let fired = "lkdtm: Crash point INT_HW_IRQ_EN of type WARNING_MESSAGE hit, trigger in 0 rounds";
    // The hit comes from a typed character's interrupt: its line may follow part of the echo.
    let fired_in = |lines: &[String]| lines.iter().any(|l| l.contains(fired));
    let mut lines = Vec::new();
    for _ in 0..8 {
        lines.extend(vm.run("uptime"));
        if fired_in(&lines) {
            break;
        }
    }
    assert!(fired_in(&lines), "{}", lines.join("\n"));
    let text = texts(&lines);
    let warning = text.iter().position(|t| t.starts_with("Warning message trigger count: "));
    let irq = text.iter().position(|t| *t == " <IRQ>");
    let task = text.iter().position(|t| *t == " <TASK>");
    assert!(warning < irq && irq < task && warning.is_some(), "an interrupt-context trace:\n{}", lines.join("\n"));
    assert!(text.contains(&" interrupt_common+0x20/0x41") || text.iter().any(|t| t.starts_with(" interrupt_common+")));

    // Points this kernel has no counterpart for say why.
    let refused = vm.run(&format!("echo PANIC > {DEBUGFS_DIR}/FS_SUBMIT_BH"));
    assert!(has_line(&refused, "lkdtm: Crash point FS_SUBMIT_BH is not supported by this kernel: "), "{refused:?}");
    let refused = vm.run(&format!("echo PANIC > {DEBUGFS_DIR}/NOWHERE"));
    let wanted = format!("sh: can't create {DEBUGFS_DIR}/NOWHERE: No such file or directory");
    assert_eq!(refused.last(), Some(&wanted), "{refused:?}");

    warning_types_run_at_every_interrupt_point(&mut vm);
}

/// A smaller matrix: every type that only warns in interrupt context, at each crash point a
/// timer interrupt hits, registered through the control socket to fire on CPU 1's next hit;
/// each reports from inside the interrupt. Reports Linux prints once (UBSAN's per call site,
/// `WARN_ONCE`) are looked for the first time only; `OVERFLOW_SIGNED` already reported.
fn warning_types_run_at_every_interrupt_point(vm: &mut Vm) {
    let kinds: Vec<CrashType> = CrashType::supported()
        .filter(|&k| outcome(k).panics_in(Context::Hardirq) == Panics::OnWarn && outcome(k).requires.is_none())
        .collect();
    assert!(kinds.len() >= 6, "{kinds:?}");
    let once = |k: CrashType| outcome(k).caught_by == Catcher::Ubsan || k == CrashType::SLAB_FREE_PAGE;
    let mut reported = HashSet::from([CrashType::OVERFLOW_SIGNED]);
    for point in [CrashPoint::IntHardwareEntry, CrashPoint::IntTaskletEntry] {
        for &kind in &kinds {
            let request = Request::Inject(Injection::lkdtm_at(kind, point, Some(1), Some(CPU as u32)));
            assert_eq!(vm.request_typed(request), json!({"cpoint": point.as_str(), "count": 1}), "{kind} at {point}");
            let fired = format!("lkdtm: Crash point {point} of type {kind} hit, trigger in 0 rounds");
            vm.expect(KernelLine::exactly(fired), COMMAND_TIMEOUT);
            if once(kind) && !reported.insert(kind) {
                continue;
            }
            vm.expect(KernelLine::starting(outcome(kind).message), COMMAND_TIMEOUT);
            vm.expect(KernelLine::exactly(" <IRQ>"), COMMAND_TIMEOUT);
            vm.expect(KernelLine::starting(" lkdtm::lkdtm_do_action+0x"), COMMAND_TIMEOUT);
        }
    }
    // A count no boot reaches ends the firings.
    let never = Injection::lkdtm_at(CrashType::WARNING, CrashPoint::Timeradd, Some(i32::MAX as u32), None);
    assert_eq!(vm.request_typed(Request::Inject(never))["count"], i32::MAX);
}

/// A guest with kdump on, writing to its own crash store, and the guest kernel ELF for `dumpd`.
struct KdumpVm {
    vm: Vm,
    _store: TempDir,
    kernel: TempFile,
    boot: u64,
}

impl KdumpVm {
    fn start(cmdline: &str) -> Self {
        let store = TempDir::new("lkdtm-crashes");
        let cmdline = format!("crashkernel=64M kdump=1 watchdog_thresh=2 {cmdline}");
        let mut vm = kdump::start_crashing_vm(&store, cmdline.trim_end());
        assert_eq!(vm.wait_booted(), 1);
        vm.expect_kdump_loaded();
        vm.expect_prompt(BOOT_TIMEOUT);
        Self { vm, _store: store, kernel: kdump::extract_guest_kernel(), boot: 1 }
    }

    /// Waits until the guest has been up for `at_least`.
    #[track_caller]
    fn wait_uptime(&mut self, at_least: Duration) {
        loop {
            let answer = self.vm.request_typed(Request::Uptime {});
            let Some(ns) = answer["ns"].as_u64() else { self.vm.fail(&format!("an uptime without ns: {answer}")) };
            match at_least.checked_sub(Duration::from_nanos(ns)) {
                Some(left) if !left.is_zero() => std::thread::sleep(left),
                _ => return,
            }
        }
    }

    /// Sets the sysctls, runs the commands, types the trigger lines (which crash the kernel, or
    /// make it crash: their prompts are not awaited), and checks the committed crash: its
    /// detector, the crashed kernel's message line, and a backtrace (`dumpd bt`) through the
    /// injected code. Then waits for the next boot to reload kdump and show its prompt.
    #[track_caller]
    fn crash(&mut self, expected: &Expected) -> Crash {
        // The VMM gives up on a guest that resets three times within 1 s of booting, a reset
        // loop (docs/vmm.md); on a quiet host a boot, a crash at its prompt and the capture
        // kernel's reset take less, so each boot is let run that long first.
        self.wait_uptime(RESET_LOOP_WINDOW);
        for (name, value) in &expected.sysctls {
            assert_eq!(self.vm.sysctl_set(name, *value), *value, "{name}");
        }
        for command in &expected.commands {
            self.vm.run(command);
        }
        for (request, answer_is_right) in &expected.requests {
            let answer = self.vm.request_typed(request.clone());
            assert!(answer_is_right(&answer), "{}: {request:?} was answered {answer}", expected.what);
        }
        for line in &expected.trigger {
            self.vm.send_line(line);
        }
        for _ in 0..expected.pokes {
            // Each request is a UART interrupt on COM2; once the guest is down they fail.
            let _ = self.vm.request(serde_json::json!({"cmd": "uptime"}));
        }
        let crash = self.vm.expect_vmcore(kdump::CAPTURE_TIMEOUT);
        let what = format!("{} ({})", expected.what, crash.dir.display());
        let reason = &crash.meta["reason"];
        assert_eq!(reason["detector"], expected.detector, "{what}: {}", crash.meta);
        if let Some((cpu, comm)) = expected.task {
            assert_eq!(reason["cpu"], cpu, "{what}: {}", crash.meta);
            if let Some(comm) = comm {
                assert_eq!(reason["comm"], comm, "{what}: {}", crash.meta);
            }
        }
        let dmesg = crash.vmcore_dmesg();
        assert!(
            dmesg.lines().any(|l| kernel_text(l).contains(expected.message)),
            "{what}: no {:?} in vmcore-dmesg.txt:\n{dmesg}",
            expected.message
        );
        let vmcore = crash.vmcore();
        let vmcore = vmcore.to_str().expect("a UTF-8 path");
        let cpu = expected.bt_cpu.map(|c| c.to_string());
        let mut args = vec!["bt", vmcore, "--kernel", self.kernel.arg()];
        if let Some(cpu) = &cpu {
            args.extend(["-c", cpu]);
        }
        let bt = dumpd(&args);
        assert!(bt.contains(expected.through), "{what}: dumpd bt does not pass through {}:\n{bt}", expected.through);
        self.boot += 1;
        self.vm.expect_reboot_after_dump(self.boot);
        self.vm.expect_kdump_loaded();
        self.vm.expect_prompt(BOOT_TIMEOUT);
        crash
    }
}

/// Whether a control request's answer is the one expected.
type AnswerCheck = fn(&Value) -> bool;

/// One crash and what its vmcore must show.
struct Expected {
    what: String,
    sysctls: Vec<(&'static str, &'static str)>,
    /// Shell commands run first.
    commands: Vec<String>,
    /// Control-socket requests sent then, each with a check of its answer.
    requests: Vec<(Request, AnswerCheck)>,
    /// Lines typed without waiting for the shell.
    trigger: Vec<String>,
    /// Control-channel requests sent then, one at a time.
    pokes: usize,
    /// `meta.json`'s `reason.detector`.
    detector: &'static str,
    /// Text of a line of the crashed kernel's log.
    message: &'static str,
    /// The crash reason's CPU and task name (`None`: any task), when known.
    task: Option<(usize, Option<&'static str>)>,
    /// A function `dumpd bt` shows.
    through: &'static str,
    /// The CPU whose backtrace that is (default: the panicking one).
    bt_cpu: Option<u32>,
}

/// The shell line that runs `kind` on `cpu` (in the background: the shell may never get it
/// back).
fn direct(kind: CrashType, cpu: usize) -> String {
    format!("taskset -c {cpu} echo {kind} > {DEBUGFS_DIR}/DIRECT &")
}

/// `kind` run on CPU 1, panicking there (with `sysctls`), as the table describes it.
fn on_cpu1(kind: CrashType, sysctls: &[(&'static str, &'static str)], through: &'static str) -> Expected {
    let o = outcome(kind);
    Expected {
        what: kind.to_string(),
        sysctls: sysctls.to_vec(),
        commands: Vec::new(),
        requests: Vec::new(),
        trigger: vec![direct(kind, CPU)],
        pokes: 0,
        detector: o.detector.map_or("", |d| d.as_str()),
        message: o.message,
        task: Some((CPU, Some("sh"))),
        through,
        bt_cpu: None,
    }
}

#[test]
fn types_that_always_panic_are_captured_by_kdump() {
    let mut kvm = KdumpVm::start("");
    let cases = [
        (CrashType::PANIC, "lkdtm::bugs::lkdtm_PANIC"),
        (CrashType::PANIC_IN_HARDIRQ, "lkdtm::bugs::panic_in_hardirq"),
        (CrashType::BUG_IN_HARDIRQ, "lkdtm::bugs::bug_in_hardirq"),
        (CrashType::EXHAUST_STACK, "lkdtm::stack::recursive_loop"),
        (CrashType::CORRUPT_STACK, "lkdtm_CORRUPT_STACK_frame"),
        (CrashType::CORRUPT_STACK_STRONG, "lkdtm_CORRUPT_STACK_STRONG_frame"),
        (CrashType::DOUBLE_FAULT, "lkdtm::stack::lkdtm_DOUBLE_FAULT"),
        (CrashType::PANIC_STOP_IRQOFF, "lkdtm::bugs::panic_stop_irqoff_fn"),
    ];
    for (kind, through) in cases {
        assert_eq!(outcome(kind).panics, Panics::Always, "{kind}");
        let mut expected = on_cpu1(kind, &[], through);
        if kind == CrashType::PANIC_STOP_IRQOFF {
            expected.task = None; // the last CPU to stop panics, whichever it is
        }
        kvm.crash(&expected);
    }
}

#[test]
fn types_that_panic_with_their_sysctl_are_captured_by_kdump() {
    let mut kvm = KdumpVm::start("");
    let cases = [
        // Through the control socket (`inject` with `lkdtm`): in a new `lkdtm/1` thread.
        Expected {
            requests: vec![(Request::Inject(Injection::lkdtm(CrashType::EXCEPTION, Some(CPU as u32))), |a| {
                a["pid"].is_u64()
            })],
            trigger: Vec::new(),
            task: Some((CPU, Some("lkdtm/1"))),
            ..on_cpu1(CrashType::EXCEPTION, &[("kernel.panic_on_oops", "1")], "lkdtm::bugs::lkdtm_EXCEPTION")
        },
        on_cpu1(CrashType::WARNING, &[("kernel.panic_on_warn", "1")], "lkdtm::lkdtm_do_action"),
        on_cpu1(CrashType::SOFTLOCKUP, &[("kernel.softlockup_panic", "1")], "lkdtm::bugs::lkdtm_SOFTLOCKUP"),
        // The first run takes the lock and returns (on CPU 0); the second spins on it.
        Expected {
            commands: vec![format!("taskset -c 0 echo SPINLOCKUP > {DEBUGFS_DIR}/DIRECT")],
            ..on_cpu1(CrashType::SPINLOCKUP, &[("kernel.softlockup_panic", "1")], "lkdtm::bugs::lkdtm_SPINLOCKUP")
        },
        // The buddy detector on CPU 0 reports CPU 1 and panics; CPU 1's registers, saved by
        // the crash NMI, are in the spin.
        Expected {
            task: None,
            bt_cpu: Some(CPU as u32),
            ..on_cpu1(CrashType::HARDLOCKUP, &[("kernel.hardlockup_panic", "1")], "lkdtm::bugs::lkdtm_HARDLOCKUP")
        },
        // CPU 1 waits for CPU 0, which spins in the call-function interrupt.
        Expected {
            task: None,
            bt_cpu: Some(0),
            ..on_cpu1(CrashType::SMP_CALL_LOCKUP, &[("kernel.hardlockup_panic", "1")], "__lkdtm_SMP_CALL_LOCKUP")
        },
        // khungtaskd panics; the hung task is not running.
        Expected {
            task: None,
            ..on_cpu1(
                CrashType::HUNG_TASK,
                &[("kernel.hung_task_panic", "1"), ("kernel.hung_task_timeout_secs", "2")],
                "hung_task::khungtaskd",
            )
        },
    ];
    for expected in &cases {
        let crash = kvm.crash(expected);
        if expected.what == CrashType::HUNG_TASK.as_str() {
            // The hung task's own backtrace, from where it was switched out.
            let dmesg = crash.vmcore_dmesg();
            let pid = dmesg.lines().find_map(|l| kernel_text(l).strip_prefix("INFO: task sh:")?.split(' ').next());
            let pid = pid.unwrap_or_else(|| panic!("no hung-task report in:\n{dmesg}"));
            let vmcore = crash.vmcore();
            let bt = dumpd(&["bt", vmcore.to_str().expect("a UTF-8 path"), "--kernel", kvm.kernel.arg(), "-p", pid]);
            assert!(bt.contains("lkdtm::bugs::lkdtm_HUNG_TASK"), "the hung task's backtrace:\n{bt}");
        }
        // The soft-lockup panic's trace: the watchdog's frames in the timer interrupt, then the
        // spin it interrupted; the NMI backtrace of CPU 1 the buddy detector asks for before
        // it panics: the NMI's frames, then the spin.
        if expected.what == CrashType::SOFTLOCKUP.as_str() {
            let (from, spin) = ("Kernel panic - not syncing: softlockup", "lkdtm::bugs::lkdtm_SOFTLOCKUP");
            check_trace_crosses(&crash.vmcore_dmesg(), from, "IRQ", "watchdog_timer_fn", spin);
        }
        if expected.what == CrashType::HARDLOCKUP.as_str() {
            let (from, spin) = ("NMI backtrace for cpu 1", "lkdtm::bugs::lkdtm_HARDLOCKUP");
            check_trace_crosses(&crash.vmcore_dmesg(), from, "NMI", "interrupt_dispatch", spin);
            check_backtrace_before_panic(&crash.vmcore_dmesg());
        }
    }
}

/// A trace that crosses contexts as Linux prints it: after the first line starting with `from`,
/// the interrupt's or NMI's frames between ` <{section}>` and ` </{section}>` (one through
/// `inside`), then the interrupted registers (`RIP:` in the spinning `spin`) and the task's
/// frames in ` <TASK>`.
#[track_caller]
fn check_trace_crosses(dmesg: &str, from: &str, section: &str, inside: &str, spin: &str) {
    let text: Vec<&str> = dmesg.lines().map(kernel_text).collect();
    let start = text.iter().position(|t| t.starts_with(from));
    let after = |from: Option<usize>, wanted: &dyn Fn(&str) -> bool| {
        from.and_then(|i| text[i..].iter().position(|t| wanted(t)).map(|j| i + j))
    };
    let (open, close) = (format!(" <{section}>"), format!(" </{section}>"));
    let opened = after(start, &|t| t == open);
    let handler = after(opened, &|t| t.starts_with(' ') && t.contains(&format!("{inside}+0x")));
    let closed = after(handler, &|t| t == close);
    let task = after(closed, &|t| t == " <TASK>");
    let rip = after(closed, &|t| t.starts_with(&format!("RIP: 0010:{spin}+0x")));
    assert!(
        task.is_some() && rip.is_some(),
        "the trace: {from:?} {start:?}, {open} {opened:?}, {inside} {handler:?}, {close} {closed:?}, <TASK> {task:?}, \
         RIP in {spin} {rip:?}, in:\n{dmesg}"
    );
}

/// As in Linux, the buddy detector waits for the NMI backtrace it asked for: CPU 1's whole
/// backtrace comes between the report and the panic.
#[track_caller]
fn check_backtrace_before_panic(dmesg: &str) {
    let text: Vec<&str> = dmesg.lines().map(kernel_text).collect();
    let at = |wanted: &str| text.iter().position(|t| *t == wanted);
    let report = at("watchdog: CPU0: Watchdog detected hard LOCKUP on cpu 1");
    let backtrace = at("NMI backtrace for cpu 1");
    let trace_end = backtrace.and_then(|b| text[b..].iter().position(|t| *t == " </TASK>").map(|i| b + i));
    let panic = at("Kernel panic - not syncing: Hard LOCKUP");
    assert!(
        report.is_some() && report < backtrace && trace_end.is_some() && trace_end < panic,
        "report {report:?}, NMI backtrace {backtrace:?} to {trace_end:?}, panic {panic:?}, in:\n{dmesg}"
    );
}

#[test]
fn types_at_crash_points_run_in_the_hitting_context_and_are_captured() {
    // Every boot's countdown starts at cpoint_count: 3 hits. Timer interrupts and callbacks
    // come every 0.8 s per CPU; console input brings UART interrupts.
    let mut kvm = KdumpVm::start("lkdtm.cpoint_count=3");
    // Registering is the last line typed (the type may run before the prompt comes back),
    // unless control-channel requests after the prompt bring the UART interrupts.
    let point = |kind: CrashType, point: &str, pokes: usize, detector, message, through| {
        let register = vec![format!("echo {kind} > {DEBUGFS_DIR}/{point}")];
        let (commands, trigger) = if pokes > 0 { (register, Vec::new()) } else { (Vec::new(), register) };
        Expected {
            what: format!("{kind} at {point}"),
            sysctls: Vec::new(),
            commands,
            requests: Vec::new(),
            trigger,
            pokes,
            detector,
            message,
            task: None,
            through,
            bt_cpu: None,
        }
    };
    let cases = [
        point(
            CrashType::PANIC,
            "INT_HARDWARE_ENTRY",
            0,
            "panic",
            "Kernel panic - not syncing: dumptest",
            "lkdtm::hit_armed",
        ),
        // An oops in interrupt context panics (kdump starts at the oops, with its registers).
        point(
            CrashType::BUG,
            "INT_TASKLET_ENTRY",
            0,
            "bug",
            "kernel BUG at src/lkdtm/bugs.rs:",
            "lkdtm::bugs::lkdtm_BUG",
        ),
        point(
            CrashType::EXCEPTION,
            "INT_HW_IRQ_EN",
            4,
            "oops",
            "BUG: kernel NULL pointer dereference",
            "lkdtm::bugs::lkdtm_EXCEPTION",
        ),
        // Through the control socket, counting only CPU 1's hits, on the second.
        Expected {
            requests: vec![(
                Request::Inject(Injection::lkdtm_at(CrashType::PANIC, CrashPoint::Timeradd, Some(2), Some(CPU as u32))),
                |a| *a == json!({"cpoint": "TIMERADD", "count": 2}),
            )],
            trigger: Vec::new(),
            task: Some((CPU, None)),
            ..point(
                CrashType::PANIC,
                "TIMERADD",
                0,
                "panic",
                "Kernel panic - not syncing: dumptest",
                "lkdtm::hit_armed",
            )
        },
    ];
    for expected in &cases {
        let crash = kvm.crash(expected);
        let point = expected.what.rsplit(' ').next().unwrap_or_default();
        let fired = format!("lkdtm: Crash point {point} of type ");
        let dmesg = crash.vmcore_dmesg();
        assert!(
            dmesg.lines().any(|l| kernel_text(l).starts_with(&fired) && l.ends_with(" hit, trigger in 0 rounds")),
            "{}: no firing line in:\n{dmesg}",
            expected.what
        );
    }
}
