//! One dump's figures, and the table rows of their medians.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crashvisor_benches::median;

/// What one dump measured.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// How long the guest's vCPUs were stopped.
    pub pause: Duration,
    /// From the request to the file fully written, not yet synced (`None`: not seen).
    pub written: Option<Duration>,
    /// From the request to the file synced (crashvisor: `vmcore_ready`, committed too).
    pub ready: Duration,
    /// The file's apparent size.
    pub file_bytes: u64,
    /// The file's blocks on disk.
    pub disk_bytes: u64,
    /// Peak resident set size of the VMM process during the dump (`None`: not read).
    pub vmm_peak_kib: Option<u64>,
    /// Peak resident set size of the VMM's forked dump writer (`None`: none seen).
    pub writer_peak_kib: Option<u64>,
}

impl Sample {
    /// A peer's dump (QEMU, Cloud Hypervisor), which is in the page cache when its command
    /// returns: syncs the file at `path` apart (open + `fsync`, counted in `ready`), measures
    /// and removes it. `returned` is the command's time, `pause` the guest's stop.
    pub fn of_peer_file(
        who: &str,
        path: &Path,
        pause: Duration,
        returned: Duration,
        vmm_peak_kib: Option<u64>,
    ) -> Result<Self> {
        let syncing = Instant::now();
        File::open(path)
            .and_then(|file| file.sync_all())
            .with_context(|| format!("cannot sync {who}'s dump {}", path.display()))?;
        let synced = syncing.elapsed();
        let meta = std::fs::metadata(path).with_context(|| format!("{who} wrote no dump at {}", path.display()))?;
        std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
        Ok(Self {
            pause,
            written: Some(returned),
            ready: returned + synced,
            file_bytes: meta.len(),
            disk_bytes: meta.blocks() * 512,
            vmm_peak_kib,
            writer_peak_kib: None,
        })
    }
}

/// The medians of one row's samples.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pause_ms: f64,
    written_s: Option<f64>,
    /// Seconds from the request to the file synced.
    pub ready_s: f64,
    mb_per_s: f64,
    file_mib: f64,
    disk_mib: f64,
    vmm_peak_mib: Option<f64>,
    writer_peak_mib: Option<f64>,
}

const MIB: f64 = (1 << 20) as f64;
const KIB_PER_MIB: f64 = 1024.0;
/// Bytes per MiB over bytes per MB: MiB/s × this = MB/s.
const MB_PER_MIB: f64 = 1.048_576;

/// The medians of `samples` of dumps of a guest with `memory_mib` of RAM.
pub fn summarise(samples: &[Sample], memory_mib: u64) -> Summary {
    let ready_s = median_of(samples, |s| Some(s.ready.as_secs_f64())).unwrap_or(f64::NAN);
    Summary {
        pause_ms: median_of(samples, |s| Some(s.pause.as_secs_f64() * 1000.0)).unwrap_or(f64::NAN),
        written_s: median_of(samples, |s| s.written.map(|d| d.as_secs_f64())),
        ready_s,
        mb_per_s: memory_mib as f64 * MB_PER_MIB / ready_s,
        file_mib: median_of(samples, |s| Some(s.file_bytes as f64 / MIB)).unwrap_or(f64::NAN),
        disk_mib: median_of(samples, |s| Some(s.disk_bytes as f64 / MIB)).unwrap_or(f64::NAN),
        vmm_peak_mib: median_of(samples, |s| s.vmm_peak_kib.map(|k| k as f64 / KIB_PER_MIB)),
        writer_peak_mib: median_of(samples, |s| s.writer_peak_kib.map(|k| k as f64 / KIB_PER_MIB)),
    }
}

/// The median of `figure` over the samples that have it (`None` if none has).
fn median_of(samples: &[Sample], figure: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
    let mut values: Vec<f64> = samples.iter().filter_map(figure).collect();
    (!values.is_empty()).then(|| median(&mut values))
}

/// One line of a table.
pub struct Row {
    /// Which VMM.
    pub who: &'static str,
    /// The dump format.
    pub format: &'static str,
    /// Guest RAM.
    pub memory_mib: u64,
    /// The medians.
    pub summary: Summary,
    /// This row's ready time over its QEMU peer's.
    pub ratio: Option<f64>,
    /// This row's ready time over Cloud Hypervisor's (elf rows, when it was measured).
    pub ratio_ch: Option<f64>,
}

/// Prints a table: its heading, the column names, the rows.
pub fn print_table(heading: &str, rows: &[Row]) {
    println!();
    println!("{heading}");
    println!(
        "{:<10} {:<10} {:>8} | {:>9} {:>9} {:>9} {:>6} | {:>9} {:>9} | {:>12} {:>15} | {:>9} {:>7}",
        "",
        "format",
        "RAM",
        "pause ms",
        "written s",
        "ready s",
        "MB/s",
        "file MiB",
        "disk MiB",
        "VMM peak MiB",
        "writer peak MiB",
        "ours/QEMU",
        "ours/CH"
    );
    for row in rows {
        print_row(row);
    }
}

fn print_row(row: &Row) {
    let or_dash = |value: Option<f64>, decimals: usize| value.map_or("-".into(), |v| format!("{v:.decimals$}"));
    let s = &row.summary;
    println!(
        "{:<10} {:<10} {:>8} | {:>9.2} {:>9} {:>9.3} {:>6.0} | {:>9.1} {:>9.1} | {:>12} {:>15} | {:>9} {:>7}",
        row.who,
        row.format,
        format!("{} MiB", row.memory_mib),
        s.pause_ms,
        or_dash(s.written_s, 3),
        s.ready_s,
        s.mb_per_s,
        s.file_mib,
        s.disk_mib,
        or_dash(s.vmm_peak_mib, 0),
        or_dash(s.writer_peak_mib, 0),
        row.ratio.map_or(String::new(), |r| format!("{r:.2}x")),
        row.ratio_ch.map_or(String::new(), |r| format!("{r:.2}x")),
    );
}
