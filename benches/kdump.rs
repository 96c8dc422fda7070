//! kdump benchmark: panic → capture kernel up → vmcore complete in the host's crash store, for
//! 256 MiB and 1 GiB guests at dump levels 0, 1 and 31, and with makedumpfile as the host's
//! core collector (`vmm --core-collector "makedumpfile -l -d 31"`, the capture kernel at level
//! 0 as Linux's is), with the guest's and the host's parts shown separately.
//!
//!     cargo build --release --workspace && cargo bench -p crashvisor-benches --bench kdump
//!
//! Every run boots a fresh 2-vCPU guest with `crashkernel=64M kdump=1 kdump_level=N`, injects a
//! panic on CPU 1 over the control socket and stamps the VMM's events as they arrive:
//! - `panic` → `crash_loaded`: the crash path (stop CPU 0, save notes, build the elfcorehdr)
//!   and the capture kernel's boot up to its pvpanic CRASH_LOADED;
//! - `crash_loaded` → `capture_started`: the capture kernel's own work (read the elfcorehdr,
//!   lay out /proc/vmcore, apply the dump level, extract both logs, hand the descriptor over);
//! - `capture_started` → `vmcore_ready`: the host writing and committing the crash directory
//!   (one pass over the dumped ranges, zero pages left as holes, fsync, rename), or the core
//!   collector reading `/proc/vmcore` through FUSE and writing its file.
//!
//! The guest's ring-0 code is emulated on this machine (~1.5 µs per instruction), so its
//! parts are far slower than on hardware virtualization; the host part is not.

use std::time::{Duration, Instant};

use crashvisor_benches::{median, release_binary};
use crashvisor_tests::kdump::CAPTURE_TIMEOUT;
use crashvisor_tests::{Event, TempDir, Vm, BOOT_TIMEOUT};

const RUNS: usize = 3;
const SIZES_MIB: [u64; 2] = [256, 1024];
/// The capture kernel's dump level, and the host's core collector if any.
const CASES: [(u32, Option<&str>); 4] = [(0, None), (1, None), (31, None), (0, Some(COLLECTOR))];
/// kdump.conf's default core collector, less its messages.
const COLLECTOR: &str = "makedumpfile -l -d 31";

struct Sample {
    panic_to_capture_up: Duration,
    capture_work: Duration,
    host_write: Duration,
    total: Duration,
    apparent_bytes: u64,
    on_disk_bytes: u64,
}

/// When the first event called `name` arrived.
fn event_at(vm: &mut Vm, name: &str) -> Instant {
    match vm.control().history().iter().find(|e: &&Event| e.is(name)) {
        Some(event) => event.at,
        None => panic!("no {name} event before vmcore_ready"),
    }
}

fn run_once(memory_mib: u64, level: u32, collector: Option<&str>) -> Sample {
    let store = TempDir::new("bench-crash-store");
    let memory = memory_mib.to_string();
    let cmdline = format!("crashkernel=64M kdump=1 kdump_level={level}");
    let mut args = vec![
        "--vcpus",
        "2",
        "--memory",
        &memory,
        "--nmi-watchdog",
        "off",
        "--crash-dir",
        store.arg(),
        "--cmdline",
        &cmdline,
    ];
    if let Some(collector) = collector {
        args.extend(["--core-collector", collector]);
    }
    let mut vm = Vm::start_controlled(&args);
    vm.wait_event(|e: &Event| e.is("booted"), "booted", BOOT_TIMEOUT);
    vm.expect_kdump_loaded();
    vm.inject("panic", 1, None);
    let crash = vm.expect_vmcore(CAPTURE_TIMEOUT);
    if collector.is_some() {
        assert_eq!(crash.meta["core_collector"]["collected"], true, "{}", crash.meta);
    }
    let ready = crash.event.at;
    let panic = event_at(&mut vm, "panic");
    let capture_up = event_at(&mut vm, "crash_loaded");
    let capture_started = event_at(&mut vm, "capture_started");
    let sizes = &crash.meta["sizes"];
    Sample {
        panic_to_capture_up: capture_up - panic,
        capture_work: capture_started - capture_up,
        host_write: ready - capture_started,
        total: ready - panic,
        apparent_bytes: sizes["vmcore_apparent_bytes"].as_u64().unwrap_or(0),
        on_disk_bytes: sizes["vmcore_on_disk_bytes"].as_u64().unwrap_or(0),
    }
}

fn ms(samples: &[Sample], part: fn(&Sample) -> Duration) -> String {
    let mut values: Vec<f64> = samples.iter().map(|s| part(s).as_secs_f64() * 1000.0).collect();
    format!("{:.0}", median(&mut values))
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1 << 20) as f64)
}

fn main() {
    release_binary("vmm"); // exits with instructions if it has not been built
    println!("kdump: panic on CPU 1 of 2 → vmcore committed; medians of {RUNS} runs, milliseconds");
    println!(
        "{:>7} {:>28} | {:>14} {:>13} {:>10} | {:>8} | {:>12} {:>11}",
        "memory", "level", "panic→capture", "capture work", "host write", "total", "vmcore MiB", "on disk MiB"
    );
    for memory_mib in SIZES_MIB {
        for (level, collector) in CASES {
            let samples: Vec<Sample> = (0..RUNS).map(|_| run_once(memory_mib, level, collector)).collect();
            let last = &samples[samples.len() - 1];
            let case = collector.map_or_else(|| level.to_string(), |c| format!("{level}, {c}"));
            println!(
                "{:>6}M {:>28} | {:>14} {:>13} {:>10} | {:>8} | {:>12} {:>11}",
                memory_mib,
                case,
                ms(&samples, |s| s.panic_to_capture_up),
                ms(&samples, |s| s.capture_work),
                ms(&samples, |s| s.host_write),
                ms(&samples, |s| s.total),
                mib(last.apparent_bytes),
                mib(last.on_disk_bytes),
            );
        }
    }
}
