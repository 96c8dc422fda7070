//! Detection-latency benchmark: how long after an injected fault each lockup detector reports,
//! next to the window Linux's arithmetic allows (`crashvisor_tests::windows`).
//!
//!     cargo build --release --workspace && cargo bench -p crashvisor-benches --bench detect
//!
//! Every run boots a fresh 2-vCPU guest with `watchdog_thresh=2` (hung tasks: a 2 s timeout),
//! injects the fault on CPU 1 over the control socket, and times, from the arrival of the
//! `inject` acknowledgement, the arrival of the report's first console line and of the
//! `lockup_detected` event (sent once the report is printed). The runs of one detector start
//! their faults at evenly spread phases of the detector's period, so min and max approach the
//! window's ends.
//!
//! The figures are about the detectors, not the host: a run during which the host kept a vCPU
//! thread waiting for a physical CPU for more than `MAX_STEAL` (steal time, which delays timer
//! ticks, and which the guest's soft-lockup clock leaves out on purpose) is discarded and
//! repeated; the table says how many were.

use std::time::Duration;

use crashvisor_benches::{median, release_binary};
use crashvisor_tests::windows::{self, Window};
use crashvisor_tests::{Event, KernelLine, Vm};

const THRESH: u32 = 2;
const HUNG_TIMEOUT_SECS: u64 = 2;
const RUNS: u32 = 5;
/// Steal time above which a run counts as disturbed by the host.
const MAX_STEAL: Duration = Duration::from_millis(100);
/// Disturbed runs repeated per detector, at most.
const MAX_REPEATS: u32 = 10;
const DETECT_TIMEOUT: Duration = Duration::from_secs(60);

struct Scenario {
    name: &'static str,
    vmm_args: &'static [&'static str],
    fault: &'static str,
    /// Extra sysctls before the fault.
    sysctls: &'static [(&'static str, u64)],
    /// The report's first line, given the fault task's pid.
    headline: fn(u32) -> KernelLine,
    event_kind: &'static str,
    window: Window,
    /// The period whose phase the runs spread over.
    period: Duration,
}

struct Sample {
    to_line: Duration,
    to_event: Duration,
    stolen: Duration,
}

fn run_once(scenario: &Scenario, phase: Duration) -> Sample {
    let cmdline = format!("watchdog_thresh={THRESH}");
    let mut args = vec!["--vcpus", "2", "--memory", "64", "--cmdline", &cmdline];
    args.extend(scenario.vmm_args);
    let mut vm = Vm::start_controlled(&args);
    vm.wait_booted();
    for (name, value) in scenario.sysctls {
        vm.sysctl_set(name, *value);
    }
    // Spreads the fault's start over the detector's period (a fresh guest's phase is otherwise
    // nearly the same every run).
    std::thread::sleep(phase);
    let before = vm.vcpu_run_delays();
    let fault = vm.inject(scenario.fault, 1, None);
    let (_, line_at) = vm.expect_stamped((scenario.headline)(fault.pid), DETECT_TIMEOUT);
    let kind = scenario.event_kind;
    let event = vm.wait_event(|e: &Event| e.is_lockup(kind), "the lockup event", DETECT_TIMEOUT);
    let stolen = vm.stolen_since(&before).into_iter().sum();
    Sample { to_line: line_at - fault.at, to_event: event.at - fault.at, stolen }
}

fn stats(values: impl Iterator<Item = Duration>) -> String {
    let mut secs: Vec<f64> = values.map(|d| d.as_secs_f64()).collect();
    let (min, max) = secs.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    format!("{min:.2} / {:.2} / {max:.2}", median(&mut secs))
}

fn main() {
    // `cargo bench` passes harness flags such as --bench; this benchmark takes none.
    release_binary("vmm"); // exits with instructions if it has not been built
    let hung = Duration::from_secs(HUNG_TIMEOUT_SECS);
    let p = windows::sample_period(THRESH);
    let scenarios = [
        Scenario {
            name: "soft lockup",
            vmm_args: &[],
            fault: "softlockup",
            sysctls: &[],
            headline: |_| KernelLine::starting("watchdog: BUG: soft lockup - CPU#1 stuck for "),
            event_kind: "soft",
            window: windows::soft_lockup(THRESH),
            period: p,
        },
        Scenario {
            name: "hard lockup (NMI)",
            vmm_args: &[],
            fault: "hardlockup",
            sysctls: &[],
            headline: |_| KernelLine::exactly("watchdog: CPU1: Watchdog detected hard LOCKUP on cpu 1"),
            event_kind: "hard",
            window: windows::hard_lockup_nmi(THRESH),
            period: Duration::from_secs(THRESH.into()),
        },
        Scenario {
            name: "hard lockup (buddy)",
            vmm_args: &["--nmi-watchdog", "off"],
            fault: "hardlockup",
            sysctls: &[],
            headline: |_| KernelLine::exactly("watchdog: CPU0: Watchdog detected hard LOCKUP on cpu 1"),
            event_kind: "hard",
            window: windows::hard_lockup_buddy(THRESH),
            period: p,
        },
        Scenario {
            name: "hung task",
            vmm_args: &[],
            fault: "hung_task",
            sysctls: &[("kernel.hung_task_timeout_secs", HUNG_TIMEOUT_SECS)],
            headline: |pid| KernelLine::starting(format!("INFO: task hung_task/1:{pid} blocked for more than ")),
            event_kind: "hung_task",
            window: windows::hung_task(hung, hung),
            period: hung,
        },
    ];

    println!(
        "detection latency, watchdog_thresh={THRESH} (hung_task_timeout_secs={HUNG_TIMEOUT_SECS}), {RUNS} runs \
         each; seconds from the inject ack, min / median / max"
    );
    println!(
        "{:<20} {:>20} {:>20} {:>18} {:>10}",
        "detector", "ack -> first line", "ack -> event", "Linux window", "repeated"
    );
    for scenario in &scenarios {
        let mut samples = Vec::new();
        let mut repeated = 0;
        for i in 0..RUNS {
            loop {
                let sample = run_once(scenario, scenario.period * i / RUNS);
                if sample.stolen <= MAX_STEAL || repeated == MAX_REPEATS {
                    samples.push(sample);
                    break;
                }
                repeated += 1;
            }
        }
        println!(
            "{:<20} {:>20} {:>20} {:>18} {:>10}",
            scenario.name,
            stats(samples.iter().map(|s| s.to_line)),
            stats(samples.iter().map(|s| s.to_event)),
            scenario.window.to_string(),
            repeated,
        );
        if let Some(worst) = samples.iter().map(|s| s.stolen).max().filter(|&d| d > MAX_STEAL) {
            println!("  (the host stayed busy: up to {:.3} s of steal in a kept run)", worst.as_secs_f64());
        }
    }
}
