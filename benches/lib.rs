//! Shared helpers of the benchmarks: finding the release binaries, statistics, process memory.
#![deny(missing_docs)]

use std::path::PathBuf;

/// A release binary of the workspace, next to the running benchmark (`target/release/deps/..`).
/// Exits with instructions if it has not been built.
pub fn release_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the benchmark knows its own path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("benchmarks run from target/<profile>/deps");
    let path = dir.join(name);
    if !path.exists() {
        eprintln!("error: {} is missing; build it first: cargo build --release --workspace", path.display());
        std::process::exit(1);
    }
    path
}

/// CLOCK_MONOTONIC in nanoseconds (the clock the VMM stamps its boot milestones with).
pub fn monotonic_ns() -> u128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// The median of `values` (NaN if empty).
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// Resident memory of process `pid`: (total KiB, KiB of the mapping whose size is
/// `mapping_bytes`, i.e. guest RAM). Read from `/proc/PID/smaps`.
pub fn resident_kib(pid: u32, mapping_bytes: u64) -> Option<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (mut total, mut guest) = (0u64, 0u64);
    let mut current_size = 0u64;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("Size:") => current_size = fields.next()?.parse::<u64>().ok()? * 1024,
            Some("Rss:") => {
                let kib: u64 = fields.next()?.parse().ok()?;
                total += kib;
                if current_size == mapping_bytes {
                    guest += kib;
                }
            }
            _ => {}
        }
    }
    Some((total, guest))
}
