//! Host-side dump benchmark: crashvisor's dump of a running guest (`{"cmd":"dump"}` on the
//! control socket) next to QEMU's `dump-guest-memory` of the same guest in the same run, on
//! guests that use their memory (issue 12).
//!
//! ```text
//! cargo build --release --workspace
//! cargo bench -p crashvisor-benches --bench host_dump
//! HOST_DUMP_SIZES=256 HOST_DUMP_RUNS=1 cargo bench -p crashvisor-benches --bench host_dump   # a smoke run
//! ```
//!
//! - `HOST_DUMP_SIZES`: guest RAM in MiB, comma-separated (default `256,1024,4096`);
//! - `HOST_DUMP_RUNS`: dumps per row, whose medians are shown (default 3);
//! - `HOST_DUMP_WORKLOADS`: which guests, comma-separated (default `half,full,idle`);
//! - `HOST_DUMP_CLOUD_HYPERVISOR`: a `cloud-hypervisor` binary built with `--features
//!   guest_debug`, `ch-remote` beside it: its ELF `vm.coredump` is measured too, on the same
//!   guests (see `cloud_hypervisor.rs`).
//!
//! The bench builds the fill kernel (`benches/fill-kernel`, see its crate documentation) with
//! a nested cargo, and installs QEMU (Debian's `qemu-system-x86`) with apt-get when it is
//! missing and the bench runs as root. It needs the release `vmm`, KVM, and free space in
//! `$TMPDIR` for one vmcore at a time (as large as guest RAM).
//!
//! # Workloads
//! - `half`: the fill kernel, `fill=half`: every even 4 KiB page of RAM noise, odd pages never
//!   touched (zeros); 1 vCPU.
//! - `full`: the fill kernel, `fill=full`: every page noise; 1 vCPU.
//! - `idle`: crashvisor's guest kernel at its shell prompt, RAM mostly never touched (what the
//!   earlier version of this bench measured); 2 vCPUs.
//!
//! For each workload, size and VMM one guest boots (our VMM: `vmm [--kernel FILL] --console
//! FILE --control SOCKET`, one per dump format, the format being a VMM flag; QEMU: `-M microvm -accel kvm -cpu
//! host,-arch-capabilities -serial file:...`), and is dumped `HOST_DUMP_RUNS` times in each
//! format once its console says it is ready (the fill kernel's `fill: done` line, or the shell
//! prompt). Each vmcore is removed after it is measured. The fill kernel spins once it is done,
//! so every dump of one guest sees the same memory.
//!
//! # Columns
//! - pause ms: how long the vCPUs were stopped. Ours: `snapshot_taken`'s `pause_us`. QEMU stops
//!   the guest for its whole dump: its pause is its return time. Cloud Hypervisor's: from the
//!   pause request to the resume's return.
//! - written s: from the request to the file fully written, not yet synced. Ours: the first
//!   time the forked writer is seen inside `fsync` in `/proc/PID/syscall` (looked at every
//!   2 ms; the VMM reports no such moment; `-` when it was never seen there, as with small
//!   files whose sync is shorter than that). QEMU: `dump-guest-memory`'s return.
//! - ready s: from the request to the file durable. Ours: the arrival of `vmcore_ready` (the
//!   file synced, `meta.json` written, the crash directory committed). QEMU: its return plus
//!   an `fsync` of its file timed apart (open + `sync_all`).
//! - MB/s: guest RAM over ready time.
//! - file MiB, disk MiB: the vmcore's apparent size and its blocks on disk.
//! - VMM peak MiB, writer peak MiB: peak resident set size (`VmHWM`) of the VMM process during the dump
//!   (reset through `/proc/PID/clear_refs` just before the request; populated guest RAM counts
//!   in it) and of our VMM's forked writer (read every 2 ms while it runs; it starts with its
//!   parent's resident set, the guest RAM both share copy-on-write, so the two overlap).
//! - ours/QEMU: our ready time over QEMU's ready time (return + fsync) on the same guest: elf
//!   against QEMU's elf; kdump-zstd and kdump-zlib against QEMU's kdump-zlib (QEMU 7.2 has no
//!   zstd).
//! - ours/CH: our elf ready time over Cloud Hypervisor's (pause + coredump + fsync), when it is
//!   measured.
//!
//! The figures are printed, never checked: numbers taken while other work keeps the host's
//! cores busy say little.

mod cloud_hypervisor;
mod ours;
mod process;
mod qemu;
mod table;
mod workload;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use crashvisor_benches::release_binary;
use crashvisor_tests::TempFile;

use crate::cloud_hypervisor::{Binaries, CloudHypervisor};
use crate::ours::OurVm;
use crate::qemu::Qemu;
use crate::table::{print_table, summarise, Row};
use crate::workload::{Kernels, Workload};

/// Our host-side dump formats (`vmm --dump-format`).
const OUR_FORMATS: [&str; 3] = ["elf", "kdump-zstd", "kdump-zlib"];
/// QEMU's formats measured (its `dump-guest-memory` has no zstd).
const QEMU_FORMATS: [&str; 2] = ["elf", "kdump-zlib"];
/// Guest RAM sizes when `HOST_DUMP_SIZES` is not set.
const DEFAULT_SIZES_MIB: &str = "256,1024,4096";
/// Dumps per row when `HOST_DUMP_RUNS` is not set.
const DEFAULT_RUNS: usize = 3;
/// Workloads when `HOST_DUMP_WORKLOADS` is not set.
const DEFAULT_WORKLOADS: &str = "half,full,idle";

/// What to measure, from the environment.
struct Config {
    sizes_mib: Vec<u64>,
    runs: usize,
    workloads: Vec<Workload>,
    cloud_hypervisor: Option<Binaries>,
}

impl Config {
    fn from_env() -> Result<Self> {
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        let sizes_mib = var("HOST_DUMP_SIZES", DEFAULT_SIZES_MIB)
            .split(',')
            .map(|size| size.trim().parse().with_context(|| format!("HOST_DUMP_SIZES: {size:?} is not a MiB count")))
            .collect::<Result<Vec<u64>>>()?;
        let runs = var("HOST_DUMP_RUNS", &DEFAULT_RUNS.to_string());
        let runs: usize = runs.trim().parse().with_context(|| format!("HOST_DUMP_RUNS: {runs:?} is not a count"))?;
        ensure!(runs > 0, "HOST_DUMP_RUNS must be at least 1");
        let workloads = var("HOST_DUMP_WORKLOADS", DEFAULT_WORKLOADS)
            .split(',')
            .map(|name| Workload::parse(name.trim()).context("HOST_DUMP_WORKLOADS"))
            .collect::<Result<Vec<_>>>()?;
        let cloud_hypervisor = std::env::var_os("HOST_DUMP_CLOUD_HYPERVISOR")
            .map(|binary| Binaries::find(&PathBuf::from(binary)))
            .transpose()?;
        Ok(Self { sizes_mib, runs, workloads, cloud_hypervisor })
    }
}

fn main() -> Result<()> {
    let config = Config::from_env()?;
    let vmm = release_binary("vmm"); // exits with instructions if it has not been built
    qemu::ensure_installed()?;
    let fill = crashvisor_tests::fill_kernel::build()?;
    let guest = config.workloads.contains(&Workload::Idle).then(|| extract_guest_kernel(&vmm)).transpose()?;
    let kernels = Kernels { fill, guest: guest.as_ref().map(|file| file.path().to_path_buf()) };
    for &workload in &config.workloads {
        let mut rows = Vec::new();
        for &memory_mib in &config.sizes_mib {
            let measured = measure(&vmm, &kernels, workload, memory_mib, &config)
                .with_context(|| format!("{workload:?} guest, {memory_mib} MiB"))?;
            rows.extend(measured);
        }
        let runs = match config.runs {
            1 => "one run each".to_owned(),
            runs => format!("medians of {runs} runs"),
        };
        print_table(&format!("{}; {runs}", workload.heading()), &rows);
    }
    Ok(())
}

/// Measures every VMM on one guest; returns the table's rows. Progress goes to stderr.
fn measure(vmm: &Path, kernels: &Kernels, workload: Workload, memory_mib: u64, config: &Config) -> Result<Vec<Row>> {
    let runs = config.runs;
    let mut ours = Vec::new();
    for format in OUR_FORMATS {
        let (mut vm, ready) = OurVm::start(vmm, kernels, workload, memory_mib, format)?;
        eprintln!("crashvisor, {memory_mib} MiB, {format}: the guest is ready ({ready}); dumping");
        let samples = (0..runs).map(|_| vm.dump()).collect::<Result<Vec<_>>>();
        ours.push((format, samples.with_context(|| format!("crashvisor's {format} dump"))?));
    }
    let (mut qemu, ready) = Qemu::start(kernels, workload, memory_mib)?;
    eprintln!("QEMU, {memory_mib} MiB: the guest is ready ({ready}); dumping");
    let mut theirs = Vec::new();
    for format in QEMU_FORMATS {
        let samples = (0..runs).map(|_| qemu.dump(format)).collect::<Result<Vec<_>>>();
        theirs.push((format, samples.with_context(|| format!("QEMU's {format} dump"))?));
    }
    drop(qemu);
    let cloud_hypervisor = match &config.cloud_hypervisor {
        Some(binaries) => {
            let (mut vm, ready) = CloudHypervisor::start(binaries, kernels, workload, memory_mib)?;
            eprintln!("Cloud Hypervisor, {memory_mib} MiB: the guest is ready ({ready}); dumping");
            let samples = (0..runs).map(|_| vm.dump()).collect::<Result<Vec<_>>>();
            Some(samples.context("Cloud Hypervisor's coredump")?)
        }
        None => None,
    };

    let qemu_ready = |format: &str| -> Option<f64> {
        theirs.iter().find(|(f, _)| *f == format).map(|(_, samples)| summarise(samples, memory_mib).ready_s)
    };
    let mut rows = Vec::new();
    for (format, samples) in &ours {
        let summary = summarise(samples, memory_mib);
        let peer = if *format == "elf" { "elf" } else { "kdump-zlib" };
        let ratio = qemu_ready(peer).map(|qemu| summary.ready_s / qemu);
        let ratio_ch = cloud_hypervisor
            .as_ref()
            .filter(|_| *format == "elf")
            .map(|samples| summary.ready_s / summarise(samples, memory_mib).ready_s);
        rows.push(Row { who: "crashvisor", format, memory_mib, summary, ratio, ratio_ch });
    }
    for (format, samples) in &theirs {
        let summary = summarise(samples, memory_mib);
        rows.push(Row { who: "QEMU", format, memory_mib, summary, ratio: None, ratio_ch: None });
    }
    if let Some(samples) = &cloud_hypervisor {
        let summary = summarise(samples, memory_mib);
        rows.push(Row { who: "CH", format: "elf", memory_mib, summary, ratio: None, ratio_ch: None });
    }
    Ok(rows)
}

/// crashvisor's guest kernel as a file (QEMU boots it for the idle rows).
fn extract_guest_kernel(vmm: &Path) -> Result<TempFile> {
    let file = TempFile::new("guest-kernel.elf");
    let output = Command::new(vmm).arg("--extract-kernel").arg(file.path()).output();
    let output = output.with_context(|| format!("cannot run {} --extract-kernel", vmm.display()))?;
    if !output.status.success() {
        bail!("vmm --extract-kernel failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(file)
}
