//! `dumpd list` and `dumpd prune`: the crash store from the command line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use dumpd::error_chain;
use dumpd::store::{parse_bytes, CrashEntry, CrashMeta, CrashStore, Retention};
use serde::Serialize;

use crate::human;

/// `dumpd prune`'s arguments.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// The crash store [default: $XDG_DATA_HOME/crashvisor/crash or ~/.local/share/crashvisor/crash].
    #[arg(long, value_name = "DIR")]
    crash_dir: Option<PathBuf>,
    /// Keep at most N crashes per VM (the newest).
    #[arg(long, value_name = "N")]
    max_per_vm: Option<usize>,
    /// Keep the store's crashes within this much disk space (bytes, or with a K, M, G or T
    /// suffix in binary units), removing the oldest first.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    max_total_bytes: Option<u64>,
}

/// One crash in `dumpd list --json`.
#[derive(Serialize)]
struct ListEntry<'a> {
    id: &'a str,
    vm: Option<&'a str>,
    path: &'a Path,
    /// Space the crash uses on disk (`st_blocks` × 512, all its files).
    disk_bytes: Option<u64>,
    /// `meta.json`, or null if it cannot be read.
    meta: Option<&'a CrashMeta>,
}

fn open_store(dir: &Path) -> anyhow::Result<CrashStore> {
    if !dir.is_dir() {
        bail!("{} is not a crash store (no such directory)", dir.display());
    }
    Ok(CrashStore::open(dir)?)
}

/// Prints the crashes: a table, or a JSON array for scripts.
pub fn list(dir: &Path, json: bool) -> anyhow::Result<()> {
    let crashes = open_store(dir)?.list()?;
    if json {
        let entries: Vec<ListEntry<'_>> = crashes.iter().map(list_entry).collect();
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    if crashes.is_empty() {
        println!("no crashes in {}", dir.display());
        return Ok(());
    }
    let width = crashes.iter().map(|c| c.id.len()).max().unwrap_or(0).max(2);
    println!("{:width$}  {:9}  {:14}  SIZE", "ID", "TRIGGER", "DETECTOR");
    for crash in crashes {
        let (trigger, detector, size) = match &crash.meta {
            Some(m) => (
                m.trigger.as_str(),
                m.reason.as_ref().map_or("-", |r| r.detector.as_str()),
                format!("{} ({} on disk)", human(m.sizes.vmcore_apparent_bytes), human(m.sizes.vmcore_on_disk_bytes)),
            ),
            None => ("?", "?", "no readable meta.json".to_owned()),
        };
        println!("{:width$}  {trigger:9}  {detector:14}  {size}", crash.id);
    }
    Ok(())
}

fn list_entry(crash: &CrashEntry) -> ListEntry<'_> {
    ListEntry {
        id: &crash.id,
        vm: crash.vm(),
        path: &crash.path,
        disk_bytes: crash.disk_bytes().ok(),
        meta: crash.meta.as_ref(),
    }
}

/// Applies a retention policy to the store now.
pub fn prune(args: PruneArgs) -> anyhow::Result<()> {
    let dir = args.crash_dir.unwrap_or_else(dumpd::default_crash_dir);
    let retention = Retention { max_per_vm: args.max_per_vm, max_total_bytes: args.max_total_bytes };
    if retention == Retention::default() {
        bail!("nothing to do: give --max-per-vm N and/or --max-total-bytes BYTES");
    }
    let report =
        open_store(&dir)?.prune(&retention, None).with_context(|| format!("cannot prune {}", dir.display()))?;
    for crash in &report.removed {
        println!("removed {} ({})", crash.id, human(crash.disk_bytes));
    }
    for (id, error) in &report.failed {
        eprintln!("dumpd: cannot remove {id}: {}", error_chain(error));
    }
    let freed: u64 = report.removed.iter().map(|c| c.disk_bytes).sum();
    println!(
        "{} crashes removed, {} freed; the store now uses {}",
        report.removed.len(),
        human(freed),
        human(report.remaining_bytes)
    );
    if !report.failed.is_empty() {
        bail!("{} crashes could not be removed", report.failed.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_bytes("1234"), Ok(1234));
        assert_eq!(parse_bytes("10K"), Ok(10 << 10));
        assert_eq!(parse_bytes("1.5g"), Ok(3 << 29));
        assert_eq!(parse_bytes("2T"), Ok(2 << 40));
        assert!(parse_bytes("12X").is_err());
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("-1").is_err());
    }
}
