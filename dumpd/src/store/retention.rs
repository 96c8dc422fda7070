//! Retention: keeping the crash store within a count per VM and a total size, oldest crashes
//! removed first.
//!
//! Only committed crashes are candidates (temporary `.tmp-*` directories are never listed, so a
//! crash being written is never touched), and the crash named as `keep` (the one just
//! committed) is never removed, even if it alone breaks a limit. Crashes being written count
//! against the size limit all the same: they will be committed, and their space is taken. Sizes are the space used on
//! disk (`st_blocks` × 512), since vmcores are sparse. A crash is first renamed to a hidden
//! `.del-*` name, so it disappears from listings at once, then deleted.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{io, CrashEntry, CrashStore, StoreError};

/// Prefix of a crash directory being deleted (hidden, never listed).
pub const DELETE_PREFIX: &str = ".del-";

/// Limits on what the store keeps. `None` means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Crashes kept per VM, newest first.
    pub max_per_vm: Option<usize>,
    /// Disk space all crashes may use together.
    pub max_total_bytes: Option<u64>,
}

/// A crash removed by retention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrunedCrash {
    /// Its id.
    pub id: String,
    /// Its VM, if known.
    pub vm: Option<String>,
    /// The disk space it used.
    pub disk_bytes: u64,
}

/// What [`CrashStore::prune`] did.
#[derive(Debug, Default)]
pub struct PruneReport {
    /// Crashes removed, oldest first.
    pub removed: Vec<PrunedCrash>,
    /// Crashes that should have been removed but could not be, with why.
    pub failed: Vec<(String, StoreError)>,
    /// Disk space the remaining crashes use.
    pub remaining_bytes: u64,
    /// Disk space the crashes being written used, counted against the size limit.
    pub in_flight_bytes: u64,
}

impl CrashEntry {
    /// The crash's VM: from `meta.json`, else from its id (`<vm>-YYYY-MM-DD-HH:MM:SS[-N]`).
    pub fn vm(&self) -> Option<&str> {
        if let Some(meta) = &self.meta {
            return Some(&meta.vm);
        }
        vm_from_id(&self.id)
    }

    /// The disk space the crash's directory uses (`st_blocks` × 512 of it and its files).
    pub fn disk_bytes(&self) -> Result<u64, StoreError> {
        disk_usage(&self.path)
    }
}

impl CrashStore {
    /// Removes the oldest crashes until `retention` holds, never the crash `keep`.
    pub fn prune(&self, retention: &Retention, keep: Option<&str>) -> Result<PruneReport, StoreError> {
        let entries = self.list()?;
        let mut sizes = Vec::with_capacity(entries.len());
        for entry in &entries {
            sizes.push(entry.disk_bytes()?);
        }
        let in_flight_bytes = self.in_flight_bytes()?;
        let committed_room = Retention {
            max_total_bytes: retention.max_total_bytes.map(|max| max.saturating_sub(in_flight_bytes)),
            ..*retention
        };
        let candidates: Vec<Candidate<'_>> = entries
            .iter()
            .zip(&sizes)
            .map(|(entry, &bytes)| Candidate { id: &entry.id, vm: entry.vm(), bytes })
            .collect();
        let doomed = select(&candidates, &committed_room, keep);
        let remaining_bytes = sizes.iter().zip(&doomed).filter(|(_, &d)| !d).map(|(s, _)| s).sum();
        let mut report = PruneReport { remaining_bytes, in_flight_bytes, ..PruneReport::default() };
        for ((entry, &size), _) in entries.iter().zip(&sizes).zip(&doomed).filter(|(_, &d)| d) {
            match self.delete(&entry.id) {
                Ok(()) => report.removed.push(PrunedCrash {
                    id: entry.id.clone(),
                    vm: entry.vm().map(str::to_owned),
                    disk_bytes: size,
                }),
                Err(e) => {
                    report.remaining_bytes += size;
                    report.failed.push((entry.id.clone(), e));
                }
            }
        }
        Ok(report)
    }

    /// Deletes the committed crash `id`: hides it by renaming it, so it disappears from
    /// listings at once (readers with files open read on), then removes it. A process that dies
    /// in between leaves a hidden `.del-*` entry, which the next [`CrashStore::open`] removes.
    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        let path = self.dir().join(id);
        if id.starts_with('.') || id.contains('/') || !path.is_dir() {
            return Err(StoreError::NoSuchCrash(id.to_owned()));
        }
        let hidden = self.dir().join(format!("{DELETE_PREFIX}{id}-{}", std::process::id()));
        match std::fs::rename(&path, &hidden) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::NoSuchCrash(id.to_owned())),
            Err(e) => return Err(io("hide the crash directory", &path)(e)),
        }
        std::fs::remove_dir_all(&hidden).map_err(io("delete", &hidden))
    }
}

/// A crash as retention weighs it, wherever it is kept (this directory, or a fleet's object
/// store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// Its id.
    pub id: &'a str,
    /// Its VM, if known.
    pub vm: Option<&'a str>,
    /// The space it takes.
    pub bytes: u64,
}

/// Which of `candidates` (oldest first) to remove: per VM beyond `max_per_vm` newest, then the
/// oldest until the rest fit in `max_total_bytes`; never `keep`. True means remove.
pub fn select(candidates: &[Candidate<'_>], retention: &Retention, keep: Option<&str>) -> Vec<bool> {
    let mut doomed = vec![false; candidates.len()];
    let removable = |i: usize| keep != Some(candidates[i].id);
    if let Some(max) = retention.max_per_vm {
        let mut vms: Vec<Option<&str>> = candidates.iter().map(|c| c.vm).collect();
        vms.sort_unstable();
        vms.dedup();
        for vm in vms {
            let of_vm: Vec<usize> = (0..candidates.len()).filter(|&i| candidates[i].vm == vm).collect();
            let mut excess = of_vm.len().saturating_sub(max);
            for &i in of_vm.iter().filter(|&&i| removable(i)) {
                if excess == 0 {
                    break;
                }
                doomed[i] = true;
                excess -= 1;
            }
        }
    }
    if let Some(max) = retention.max_total_bytes {
        // Saturating: sizes may come from a listing of a remote store.
        let mut total =
            candidates.iter().zip(&doomed).filter(|(_, &d)| !d).fold(0u64, |sum, (c, _)| sum.saturating_add(c.bytes));
        for i in 0..candidates.len() {
            if total <= max {
                break;
            }
            if !doomed[i] && removable(i) {
                doomed[i] = true;
                total = total.saturating_sub(candidates[i].bytes);
            }
        }
    }
    doomed
}

/// `<vm>` of a crash id `<vm>-YYYY-MM-DD-HH:MM:SS` or `<vm>-YYYY-MM-DD-HH:MM:SS-N`.
fn vm_from_id(id: &str) -> Option<&str> {
    strip_stamp(id).or_else(|| {
        let (base, n) = id.rsplit_once('-')?;
        (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then(|| strip_stamp(base)).flatten()
    })
}

/// `s` without a trailing `-YYYY-MM-DD-HH:MM:SS`, if it has one and something before it.
fn strip_stamp(s: &str) -> Option<&str> {
    const STAMP: &str = "-YYYY-MM-DD-HH:MM:SS";
    let cut = s.len().checked_sub(STAMP.len())?;
    let (vm, stamp) = (s.get(..cut)?, s.get(cut..)?);
    let is_stamp = stamp.bytes().zip(STAMP.bytes()).all(|(c, p)| match p {
        b'-' | b':' => c == p,
        _ => c.is_ascii_digit(),
    });
    (is_stamp && !vm.is_empty()).then_some(vm)
}

/// `st_blocks` × 512 of `dir` and everything directly in it (crash directories are flat).
pub(super) fn disk_usage(dir: &Path) -> Result<u64, StoreError> {
    let mut bytes = std::fs::symlink_metadata(dir).map_err(io("stat", dir))?.blocks() * 512;
    for entry in std::fs::read_dir(dir).map_err(io("read", dir))? {
        let entry = entry.map_err(io("read", dir))?;
        let path = entry.path();
        bytes += std::fs::symlink_metadata(&path).map_err(io("stat", &path))?.blocks() * 512;
    }
    Ok(bytes)
}

/// `1234`, `10K`, `1.5G`: bytes, or binary units.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let (number, shift) = match text.trim().char_indices().last() {
        Some((at, unit)) if unit.is_ascii_alphabetic() => {
            let shift = match unit.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("{text:?}: unknown unit {unit:?}; use K, M, G or T")),
            };
            (&text.trim()[..at], shift)
        }
        _ => (text.trim(), 0),
    };
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a size in bytes (e.g. 500M, 20G)"))?;
    let bytes = value * (1u64 << shift) as f64;
    if !(0.0..1.8e19).contains(&bytes) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{dir_timestamp, CrashMeta, Trigger, FILE_VMCORE};
    use crate::test_dir::TestDir;
    use std::time::{Duration, UNIX_EPOCH};

    /// Commits a crash of `vm` at `secs` with a vmcore of `data_kib` KiB of data written at the
    /// start and a 64 MiB hole after it.
    fn crash(store: &CrashStore, vm: &str, secs: u64, data_kib: usize) -> String {
        let mut pending = store.begin(vm).unwrap();
        pending.created = UNIX_EPOCH + Duration::from_secs(secs);
        let file = pending.create_file(FILE_VMCORE).unwrap();
        std::io::Write::write_all(&mut &file, &vec![0x5a; data_kib << 10]).unwrap();
        file.set_len(64 << 20).unwrap();
        pending.write_meta(&CrashMeta::new(Trigger::Kdump, vm, pending.created)).unwrap();
        pending.commit().unwrap().id
    }

    fn ids(store: &CrashStore) -> Vec<String> {
        store.list().unwrap().into_iter().map(|e| e.id).collect()
    }

    #[test]
    fn keeps_the_newest_per_vm() {
        let dir = TestDir::new("retention-per-vm");
        let store = CrashStore::open(dir.path()).unwrap();
        let a: Vec<String> = (0..4).map(|i| crash(&store, "a", 1000 + i * 10, 4)).collect();
        let b: Vec<String> = (0..2).map(|i| crash(&store, "b", 1005 + i * 10, 4)).collect();
        let report = store.prune(&Retention { max_per_vm: Some(2), max_total_bytes: None }, None).unwrap();
        let removed: Vec<&str> = report.removed.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(removed, [a[0].as_str(), a[1].as_str()], "the oldest of a; b is within the limit");
        assert!(report.failed.is_empty());
        assert_eq!(ids(&store), [b[0].clone(), b[1].clone(), a[2].clone(), a[3].clone()]);
        assert_eq!(report.removed[0].vm.as_deref(), Some("a"));
        // Nothing left to do: a second run removes nothing.
        assert!(store
            .prune(&Retention { max_per_vm: Some(2), max_total_bytes: None }, None)
            .unwrap()
            .removed
            .is_empty());
        // Zero per VM, keeping one: only that one stays.
        let report = store.prune(&Retention { max_per_vm: Some(0), max_total_bytes: None }, Some(&a[3])).unwrap();
        assert_eq!(report.removed.len(), 3);
        assert_eq!(ids(&store), [a[3].clone()]);
    }

    #[test]
    fn crashes_being_written_count_against_the_size_limit() {
        let dir = TestDir::new("retention-in-flight");
        let store = CrashStore::open(dir.path()).unwrap();
        let old = crash(&store, "a", 1000, 256);
        let new = crash(&store, "b", 2000, 256);
        let sizes: Vec<u64> = store.list().unwrap().iter().map(|e| e.disk_bytes().unwrap()).collect();
        let writing = store.begin("c").unwrap();
        writing.write_file(FILE_VMCORE, &vec![0x5a; 256 << 10]).unwrap();
        let in_flight = store.in_flight_bytes().unwrap();
        assert!(in_flight >= 256 << 10, "the temporary directory's space: {in_flight}");
        // Room for both committed crashes, but not with the one being written.
        let limit = sizes[0] + sizes[1];
        let report = store.prune(&Retention { max_per_vm: None, max_total_bytes: Some(limit) }, None).unwrap();
        assert_eq!(report.removed.iter().map(|p| p.id.clone()).collect::<Vec<_>>(), [old]);
        assert_eq!((report.in_flight_bytes, report.remaining_bytes), (in_flight, sizes[1]));
        assert_eq!(ids(&store), [new]);
        drop(writing);
        assert_eq!(store.in_flight_bytes().unwrap(), 0);
    }

    #[test]
    fn counts_bytes_on_disk_and_removes_oldest_first() {
        let dir = TestDir::new("retention-bytes");
        let store = CrashStore::open(dir.path()).unwrap();
        let old = crash(&store, "a", 1000, 256);
        let mid = crash(&store, "b", 2000, 256);
        let new = crash(&store, "a", 3000, 256);
        let entries = store.list().unwrap();
        let sizes: Vec<u64> = entries.iter().map(|e| e.disk_bytes().unwrap()).collect();
        for size in &sizes {
            assert!((256 << 10..1 << 20).contains(size), "allocated size, not the 64 MiB length: {size}");
        }
        // Room for two: the oldest goes, whatever its VM.
        let limit = sizes[1] + sizes[2];
        let report = store.prune(&Retention { max_per_vm: None, max_total_bytes: Some(limit) }, None).unwrap();
        assert_eq!(report.removed.iter().map(|p| p.id.clone()).collect::<Vec<_>>(), [old]);
        assert_eq!(report.removed[0].disk_bytes, sizes[0]);
        assert_eq!(report.remaining_bytes, limit);
        // A limit below the kept crash alone removes everything else but the kept one.
        let report = store.prune(&Retention { max_per_vm: None, max_total_bytes: Some(1) }, Some(&mid)).unwrap();
        assert_eq!(report.removed.iter().map(|p| p.id.clone()).collect::<Vec<_>>(), [new]);
        assert_eq!(ids(&store), [mid]);
    }

    #[test]
    fn commit_with_retention_never_touches_pending_or_the_new_crash() {
        let dir = TestDir::new("retention-commit");
        let store = CrashStore::open(dir.path()).unwrap();
        crash(&store, "vm", 1000, 8);
        let writing = store.begin("vm").unwrap();
        writing.write_file(FILE_VMCORE, &[1; 100_000]).unwrap();
        let mut pending = store.begin("vm").unwrap();
        pending.created = UNIX_EPOCH + Duration::from_secs(500); // older than the first, by its clock
        pending.write_meta(&CrashMeta::new(Trigger::Kdump, "vm", pending.created)).unwrap();
        let retention = Retention { max_per_vm: Some(1), max_total_bytes: Some(0) };
        let (committed, report) = pending.commit_with_retention(&retention).unwrap();
        let report = report.unwrap();
        assert_eq!(report.removed.len(), 1);
        assert_eq!(ids(&store), std::slice::from_ref(&committed.id));
        assert!(writing.path().join(FILE_VMCORE).is_file(), "a crash being written is not touched");
        let hidden: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.') && n != crate::store::LOCK_FILE)
            .collect();
        assert_eq!(hidden.len(), 1, "only the pending crash's directory: {hidden:?}");
        assert_eq!(committed.id, format!("vm-{}", dir_timestamp(UNIX_EPOCH + Duration::from_secs(500))));
    }

    #[test]
    fn vm_names_come_from_ids_without_meta() {
        assert_eq!(vm_from_id("web-1-2024-02-29-12:34:56"), Some("web-1"));
        assert_eq!(vm_from_id("web-1-2024-02-29-12:34:56-12"), Some("web-1"));
        assert_eq!(vm_from_id("a-2-2024-02-29-12:34:56-3"), Some("a-2"));
        assert_eq!(vm_from_id("-2024-02-29-12:34:56"), None);
        assert_eq!(vm_from_id("stray"), None);
        assert_eq!(vm_from_id("vm-2024-02-29-12:34"), None);
        let entry = CrashEntry { id: "x-2024-02-29-12:34:56".into(), path: "/nonexistent".into(), meta: None };
        assert_eq!(entry.vm(), Some("x"));
        assert!(entry.disk_bytes().is_err());
    }
}
