//! Boot benchmark: for 1 and 2 vCPUs at 64 and 512 MiB, the medians of repeated runs of
//! `vmm` process start → first guest instruction, → all CPUs online, → shell prompt, and the
//! VMM's resident memory beyond guest RAM at the prompt.
//!
//!     cargo build --release --workspace && cargo bench -p crashvisor-benches --bench boot
//!
//! Times start just before the process is spawned (so exec and dynamic linking count) and end at
//! the guest's progress-port writes, which the VMM stamps with CLOCK_MONOTONIC.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use crashvisor_benches::{median, monotonic_ns, release_binary, resident_kib};

const RUNS: usize = 11;

struct Sample {
    first_instruction_ms: f64,
    first_instruction_from_main_ms: f64,
    all_cpus_ms: f64,
    shell_ms: f64,
    overhead_kib: f64,
}

fn boot_once(vmm: &std::path::Path, vcpus: u8, memory_mib: u64) -> Sample {
    let start = monotonic_ns();
    let mut child = Command::new(vmm)
        .args(["--timings", "--vcpus", &vcpus.to_string(), "--memory", &memory_mib.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vmm starts");
    let stderr = BufReader::new(child.stderr.take().expect("stderr is piped"));
    let at = |line: &str, name: &str| -> Option<f64> {
        let rest = line.strip_prefix("timing ")?.strip_prefix(name)?;
        let ns: u128 = rest.split("monotonic_ns ").nth(1)?.trim().parse().ok()?;
        Some((ns - start) as f64 / 1e6)
    };
    let (mut first, mut first_from_main, mut all, mut shell) = (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
    let mut overhead_kib = f64::NAN;
    for line in stderr.lines() {
        let line = line.expect("stderr is readable");
        if let Some(t) = at(&line, "FirstInstruction") {
            first = t;
            // "timing FirstInstruction <ms since main()> ms monotonic_ns ..."
            first_from_main = line.split_whitespace().nth(2).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
        } else if let Some(t) = at(&line, "AllCpusOnline") {
            all = t;
        } else if let Some(t) = at(&line, "ShellReady") {
            shell = t;
            if let Some((total, guest)) = resident_kib(child.id(), memory_mib << 20) {
                overhead_kib = (total - guest) as f64;
            }
            let stdin = child.stdin.as_mut().expect("stdin is piped");
            let _ = stdin.write_all(b"poweroff\n");
        }
    }
    let status = child.wait().expect("vmm exits");
    assert!(status.success(), "vmm ended with {status}");
    Sample {
        first_instruction_ms: first,
        first_instruction_from_main_ms: first_from_main,
        all_cpus_ms: all,
        shell_ms: shell,
        overhead_kib,
    }
}

fn main() {
    // `cargo bench` passes harness flags such as --bench; this benchmark takes none.
    let vmm = release_binary("vmm");
    println!("vmm boot benchmark: medians of {RUNS} runs (ms from process spawn; memory at the shell prompt)");
    println!(
        "{:>5} {:>8} {:>12} {:>14} {:>12} {:>12} {:>16}",
        "vCPUs", "memory", "first insn", "(from main())", "CPUs online", "shell", "VMM RSS - RAM"
    );
    for (vcpus, memory) in [(1u8, 64u64), (2, 64), (1, 512), (2, 512)] {
        let samples: Vec<Sample> = (0..RUNS).map(|_| boot_once(&vmm, vcpus, memory)).collect();
        let pick = |f: fn(&Sample) -> f64| median(&mut samples.iter().map(f).collect::<Vec<_>>());
        println!(
            "{:>5} {:>5} MiB {:>9.2} ms {:>11.2} ms {:>9.1} ms {:>9.1} ms {:>12.0} KiB",
            vcpus,
            memory,
            pick(|s| s.first_instruction_ms),
            pick(|s| s.first_instruction_from_main_ms),
            pick(|s| s.all_cpus_ms),
            pick(|s| s.shell_ms),
            pick(|s| s.overhead_kib),
        );
    }
}
