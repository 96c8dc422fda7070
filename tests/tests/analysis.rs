//! Crash analysis end to end: a 2-vCPU guest with kdump crashes by soft lockup on CPU 1
//! (`softlockup_panic`); the real `dumpd` binary reads the committed vmcore — with the guest
//! kernel ELF `vmm --extract-kernel` writes — and its `show`, `bt`, `ps` and `log` must name the
//! panicking CPU, task and message, the locked-up function, the watchdog threads and the soft
//! lockup report, all from the vmcore alone.

use crashvisor_tests::kdump::{self, dumpd, Crash, Vmcore};
use crashvisor_tests::{kernel_text, TempDir, BOOT_TIMEOUT};
use serde_json::Value;

/// The CPU the soft lockup runs on.
const CPU: usize = 1;

/// `dumpd ARGS --json`, parsed.
#[track_caller]
fn dumpd_json(args: &[&str]) -> Value {
    let text = dumpd(&[args, &["--json"]].concat());
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("dumpd {} --json: {e} in:\n{text}", args.join(" ")))
}

/// Boots a small guest with kdump, locks up CPU 1 until the soft-lockup detector panics, and
/// returns the committed crash and the pid of the locked-up task.
fn soft_lockup_crash(store: &TempDir) -> (Crash, u32) {
    let mut vm = kdump::start_crashing_vm(store, "crashkernel=64M kdump=1 watchdog_thresh=2");
    let booted = vm.wait_event(|e| e.is("booted"), "the booted event", BOOT_TIMEOUT);
    assert_eq!(booted.u64("boot"), Some(1), "{}", booted.body);
    vm.expect_kdump_loaded();
    assert_eq!(vm.sysctl_set("kernel.softlockup_panic", "1"), "1");
    let injected = vm.inject("softlockup", CPU, None);
    (vm.expect_vmcore(kdump::CAPTURE_TIMEOUT), injected.pid)
}

/// The value of a `show` banner line (`       PANIC: "..."`).
fn banner_value<'a>(show: &'a str, label: &str) -> Option<&'a str> {
    show.lines().find_map(|l| l.trim_start().strip_prefix(label)?.strip_prefix(": "))
}

#[test]
fn dumpd_analyses_a_soft_lockup_vmcore() {
    let kernel = kdump::extract_guest_kernel();
    let store = TempDir::new("analysis-store");
    let (crash, pid) = soft_lockup_crash(&store);
    let vmcore_path = crash.vmcore();
    let vmcore = vmcore_path.to_str().expect("a UTF-8 path");
    let with_kernel = |command: &'static str| [command, vmcore, "--kernel", kernel.arg()];
    let comm = format!("softlockup/{CPU}");

    // The VMCOREINFO the analysis reads fits Linux's one page with room to spare, whole.
    let info = Vmcore::read(&vmcore_path).expect("the vmcore's notes").vmcoreinfo().expect("a VMCOREINFO note");
    assert!(info.len() <= 4096, "VMCOREINFO is {} bytes:\n{info}", info.len());
    assert!(info.trim_end().lines().last().is_some_and(|l| l.starts_with("CRASHTIME=")), "{info}");

    // show: the panic, its CPU and task.
    let show = dumpd(&with_kernel("show"));
    let expect = [
        ("KERNEL", kernel.arg().to_string()),
        ("CPUS", "2".to_string()),
        ("RELEASE", "6.18.0-crashvisor".to_string()),
        ("PANIC", "\"softlockup: hung tasks\"".to_string()),
        ("PID", pid.to_string()),
        ("COMMAND", format!("\"{comm}\"")),
        ("CPU", CPU.to_string()),
        ("STATE", "TASK_RUNNING (PANIC)".to_string()),
    ];
    for (label, value) in expect {
        assert_eq!(banner_value(&show, label), Some(value.as_str()), "{label} in dumpd show:\n{show}");
    }
    assert!(!show.contains("WARNING"), "dumpd show:\n{show}");
    let json = dumpd_json(&with_kernel("show"));
    assert_eq!((&json["panic"]["cpu"], &json["task"]["pid"]), (&Value::from(CPU), &Value::from(pid)), "{json}");

    // bt: the panicking CPU by default, stopped in the locked-up function.
    let bt = dumpd(&with_kernel("bt"));
    let mut lines = bt.lines();
    let header = lines.next().unwrap_or_default();
    assert!(header.starts_with(&format!("PID: {pid} ")) && header.contains(&format!("COMMAND: \"{comm}\"")), "{bt}");
    let first = lines.next().unwrap_or_default();
    assert!(first.starts_with(" #0 [") && first.contains("inject::softlockup+0x"), "dumpd bt:\n{bt}");
    assert!(bt.contains("task_entry+0x") && !bt.contains("backtrace stopped"), "dumpd bt:\n{bt}");
    let all = dumpd(&[&with_kernel("bt")[..], &["-a"]].concat());
    assert_eq!(all.lines().filter(|l| l.starts_with("PID: ")).count(), 2, "dumpd bt -a:\n{all}");
    assert!(all.contains(" CPU: 0 ") && all.contains(" CPU: 1 "), "dumpd bt -a:\n{all}");

    // ps: every task, the watchdog threads among them, the locked-up one running on CPU 1.
    let ps = dumpd(&["ps", vmcore]);
    for name in ["[watchdog/0]", "[watchdog/1]", "[khungtaskd]", "[swapper/1]"] {
        assert!(ps.lines().any(|l| l.ends_with(name)), "no {name} in dumpd ps:\n{ps}");
    }
    let row = ps.lines().find(|l| l.ends_with(&format!("[{comm}]"))).unwrap_or_else(|| panic!("dumpd ps:\n{ps}"));
    let words: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(words[..3], [">", &pid.to_string(), "2"], "{row}");
    assert_eq!(words[3], CPU.to_string(), "{row}");

    // log: the crashed kernel's log, as vmcore-dmesg extracted it into the crash store.
    let log = dumpd(&["log", vmcore]);
    let report = format!("watchdog: BUG: soft lockup - CPU#{CPU} stuck for ");
    assert!(log.lines().any(|l| kernel_text(l).starts_with(&report)), "no {report:?} in dumpd log:\n{log}");
    assert!(log.lines().any(|l| kernel_text(l) == "Kernel panic - not syncing: softlockup: hung tasks"), "{log}");
    assert_eq!(log, crash.vmcore_dmesg(), "dumpd log and vmcore-dmesg.txt differ");
}
