//! Who is still writing: locks that tell a live writer's hidden entries from a dead one's, and
//! the sweep that removes the dead ones when a store is opened.
//!
//! A crash being written lives in `.tmp-<vm>-<pid>-<n>`; its [`PendingCrash`] holds an
//! exclusive `flock` on that directory for as long as it lives. A writer process forked from
//! the VMM keeps the open file ([`PendingCrash::lock`]), so the lock stays held while either
//! process runs and is released by the kernel when the last of them exits, however it dies. A pid in the name
//! could not say this: pids are reused. A `.del-*` entry is a crash retention hid before it
//! deleted it; a process that died in between leaves it behind.
//!
//! A writer writes the crash's `meta.json` as soon as it begins, so a dead writer's directory
//! says whose capture it was: the sweep records that capture as failed in `failures.jsonl`
//! before it removes the directory. A capture that began is thus always committed or recorded.
//!
//! Creating and locking a temporary directory are two steps, so the store's `.lock` file orders
//! them against the sweep: [`CrashStore::begin`] holds it shared across both, the sweep holds
//! it exclusively, and so never sees a new directory before its lock.
//!
//! [`PendingCrash`]: super::PendingCrash
//! [`PendingCrash::lock`]: super::PendingCrash::lock
//! [`CrashStore::begin`]: super::CrashStore::begin

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use std::time::SystemTime;

use super::{io, CrashMeta, CrashStore, FailureRecord, StoreError, DELETE_PREFIX, FILE_META, TMP_PREFIX};

/// The store's lock file (hidden, never listed).
pub const LOCK_FILE: &str = ".lock";

/// What [`CrashStore::sweep`] removed.
#[derive(Debug, Default)]
pub struct SweepReport {
    /// Temporary directories of writers that died before committing.
    pub stale_temporary: Vec<PathBuf>,
    /// The captures those writers had begun, now recorded as failed.
    pub failed_captures: Vec<FailureRecord>,
    /// Crashes retention hid but did not finish deleting.
    pub half_deleted: Vec<PathBuf>,
    /// Entries that should have gone but could not be removed, with why.
    pub failed: Vec<(PathBuf, std::io::Error)>,
}

/// The store's `.lock` file, locked shared (`exclusive` false) or exclusively, until dropped.
pub(super) fn lock_store(dir: &Path, exclusive: bool) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io("open", &path))?;
    let locked = if exclusive { file.lock() } else { file.lock_shared() };
    locked.map_err(io("lock", &path))?;
    Ok(file)
}

/// Opens the new temporary directory `path` and locks it for its writer.
pub(super) fn lock_temporary(path: &Path) -> Result<File, StoreError> {
    let dir = File::open(path).map_err(io("open", path))?;
    match dir.try_lock() {
        Ok(()) => Ok(dir),
        Err(TryLockError::WouldBlock) => {
            Err(io("lock", path)(std::io::Error::other("another process holds the lock of a directory just created")))
        }
        Err(TryLockError::Error(e)) => Err(io("lock", path)(e)),
    }
}

/// Removes the temporary directory `path` of the store at `store` for good: renamed to a
/// `.del-` entry first, so that a removal that fails or is cut short leaves nothing a sweep
/// would take for an abandoned capture (and record a second time); a sweep removes the rest.
pub(super) fn discard(store: &Path, path: &Path) -> std::io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let hidden = store.join(format!("{DELETE_PREFIX}{}", name.trim_start_matches('.')));
    match std::fs::rename(path, &hidden) {
        Ok(()) => std::fs::remove_dir_all(&hidden),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The failure record of the capture whose writer died leaving the temporary directory `path`
/// (`None` when it had not written its `meta.json` yet: it had begun nothing).
fn abandoned_capture(path: &Path) -> Option<FailureRecord> {
    let meta: CrashMeta = serde_json::from_slice(&std::fs::read(path.join(FILE_META)).ok()?).ok()?;
    let reason = format!(
        "the process writing the vmcore died before committing it; its unfinished crash {} was removed",
        path.display()
    );
    Some(FailureRecord::new(&meta.vm, meta.trigger, reason, SystemTime::now()).after_vmm_ended())
}

/// True if no live writer holds `path`'s lock (checked by taking it; it is released again).
fn is_abandoned(path: &Path) -> std::io::Result<bool> {
    match File::open(path)?.try_lock() {
        Ok(()) => Ok(true),
        Err(TryLockError::WouldBlock) => Ok(false),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

impl CrashStore {
    /// Removes what dead writers left behind: temporary directories nobody holds and half
    /// deleted crashes. Live writers' directories are left alone. Called by
    /// [`CrashStore::open`]; safe to run while other processes write into the store.
    pub fn sweep(&self) -> Result<SweepReport, StoreError> {
        let _store = lock_store(self.dir(), true)?;
        let mut report = SweepReport::default();
        for entry in std::fs::read_dir(self.dir()).map_err(io("read the crash store", self.dir()))? {
            let entry = entry.map_err(io("read the crash store", self.dir()))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            let path = entry.path();
            let (doomed, kind) = if name.starts_with(TMP_PREFIX) {
                match is_abandoned(&path) {
                    Ok(abandoned) => (abandoned, &mut report.stale_temporary),
                    Err(e) => {
                        report.failed.push((path, e));
                        continue;
                    }
                }
            } else if name.starts_with(DELETE_PREFIX) {
                (true, &mut report.half_deleted)
            } else {
                continue;
            };
            if !doomed {
                continue;
            }
            if name.starts_with(TMP_PREFIX) {
                if let Some(record) = abandoned_capture(&path) {
                    if let Err(e) = self.record_failure(&record) {
                        // Kept for the next sweep to record.
                        report.failed.push((path, std::io::Error::other(crate::error_chain(&e))));
                        continue;
                    }
                    report.failed_captures.push(record);
                }
                match discard(self.dir(), &path) {
                    Ok(()) => kind.push(path),
                    Err(e) => report.failed.push((path, e)),
                }
                continue;
            }
            match std::fs::remove_dir_all(&path) {
                Ok(()) => kind.push(path),
                // Another process's retention finished deleting it meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => report.failed.push((path, e)),
            }
        }
        Ok(report)
    }

    /// Whether a crash process `pid` began is still being written: its temporary directory
    /// (`.tmp-<vm>-<pid>-<n>`) is locked, by a dump writer forked from it or by the process
    /// itself while it exits.
    pub fn is_written_by(&self, pid: u32) -> Result<bool, StoreError> {
        let suffix = format!("-{pid}");
        for entry in std::fs::read_dir(self.dir()).map_err(io("read the crash store", self.dir()))? {
            let entry = entry.map_err(io("read the crash store", self.dir()))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            // `.tmp-<vm>-<pid>-<n>`: what precedes `-<n>` ends in `-<pid>`.
            let begun_by_pid = name
                .strip_prefix(TMP_PREFIX)
                .and_then(|rest| rest.rsplit_once('-'))
                .is_some_and(|(rest, n)| n.bytes().all(|b| b.is_ascii_digit()) && rest.ends_with(&suffix));
            if begun_by_pid && !is_abandoned(&entry.path()).unwrap_or(true) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Disk space the crashes being written use now (their temporary directories; a writer
    /// that finishes meanwhile counts as nothing).
    pub fn in_flight_bytes(&self) -> Result<u64, StoreError> {
        let mut bytes = 0;
        for entry in std::fs::read_dir(self.dir()).map_err(io("read the crash store", self.dir()))? {
            let entry = entry.map_err(io("read the crash store", self.dir()))?;
            if entry.file_name().to_str().is_some_and(|name| name.starts_with(TMP_PREFIX)) {
                bytes += super::retention::disk_usage(&entry.path()).unwrap_or(0);
            }
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CrashMeta, Trigger, FILE_VMCORE};
    use crate::test_dir::TestDir;

    #[test]
    fn a_dead_writers_entries_are_swept_and_a_live_writers_are_not() {
        let dir = TestDir::new("sweep");
        let store = CrashStore::open(dir.path()).unwrap();
        let live = store.begin("live").unwrap();
        live.write_file(FILE_VMCORE, &[7; 8192]).unwrap();
        // A writer that died: its directory exists and nobody holds its lock.
        let dead = dir.path().join(".tmp-dead-4242-0");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join(FILE_VMCORE), [1; 4096]).unwrap();
        let hidden = dir.path().join(".del-old-2024-01-01-00:00:00-4242");
        std::fs::create_dir(&hidden).unwrap();
        std::fs::write(hidden.join(FILE_VMCORE), b"x").unwrap();

        let report = store.sweep().unwrap();
        assert_eq!(report.stale_temporary, std::slice::from_ref(&dead));
        assert_eq!(report.half_deleted, std::slice::from_ref(&hidden));
        assert!(report.failed.is_empty());
        assert!(!dead.exists() && !hidden.exists());
        assert!(live.path().join(FILE_VMCORE).is_file(), "the live writer's file stays");

        // Opening the store sweeps too; the live writer still commits.
        std::fs::create_dir(&dead).unwrap();
        let reopened = CrashStore::open(dir.path()).unwrap();
        assert!(!dead.exists());
        live.write_meta(&CrashMeta::new(Trigger::OnDemand, "live", live.created())).unwrap();
        live.commit().unwrap();
        assert_eq!(reopened.list().unwrap().len(), 1);
        let again = reopened.sweep().unwrap();
        assert!(again.stale_temporary.is_empty() && again.half_deleted.is_empty() && again.failed.is_empty());
    }

    #[test]
    fn a_dead_writers_begun_capture_is_recorded_as_failed() {
        let dir = TestDir::new("sweep-record");
        let store = CrashStore::open(dir.path()).unwrap();
        // Died after it began the capture (its meta.json written) and after it began nothing.
        let begun = dir.path().join(".tmp-web-1-4242-0");
        std::fs::create_dir(&begun).unwrap();
        let meta = CrashMeta::new(Trigger::Kdump, "web-1", std::time::UNIX_EPOCH);
        std::fs::write(begun.join(FILE_META), serde_json::to_vec(&meta).unwrap()).unwrap();
        std::fs::write(begun.join(FILE_VMCORE), [1; 4096]).unwrap();
        let empty = dir.path().join(".tmp-web-2-4242-1");
        std::fs::create_dir(&empty).unwrap();

        let report = store.sweep().unwrap();
        assert_eq!(report.stale_temporary.len(), 2);
        assert!(!begun.exists() && !empty.exists());
        let failures = store.failures().unwrap();
        assert_eq!(report.failed_captures.len(), 1);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!((failures[0].vm.as_str(), failures[0].trigger), ("web-1", Trigger::Kdump));
        assert!(failures[0].reason.contains("died before committing"), "{}", failures[0].reason);
        assert!(store.sweep().unwrap().failed_captures.is_empty(), "recorded once");
    }

    #[test]
    fn a_crash_being_written_is_found_by_its_writers_pid() {
        let dir = TestDir::new("sweep-pid");
        let store = CrashStore::open(dir.path()).unwrap();
        let pid = std::process::id();
        assert!(!store.is_written_by(pid).unwrap());
        let pending = store.begin("web-1").unwrap();
        assert!(store.is_written_by(pid).unwrap());
        assert!(!store.is_written_by(pid + 1).unwrap());
        // A dead writer's directory of the same pid is not being written.
        std::fs::create_dir(dir.path().join(format!(".tmp-web-2-{pid}-99"))).unwrap();
        drop(pending);
        assert!(!store.is_written_by(pid).unwrap());
    }

    #[test]
    fn meta_json_is_replaced_whole() {
        let dir = TestDir::new("sweep-meta");
        let store = CrashStore::open(dir.path()).unwrap();
        let pending = store.begin("vm").unwrap();
        let mut meta = CrashMeta::new(Trigger::OnDemand, "vm", pending.created());
        pending.write_meta(&meta).unwrap();
        meta.dump_level = Some(31);
        pending.write_meta(&meta).unwrap();
        let names: Vec<_> = std::fs::read_dir(pending.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [FILE_META]);
        let committed = pending.commit().unwrap();
        let read: CrashMeta = serde_json::from_slice(&std::fs::read(committed.path.join(FILE_META)).unwrap()).unwrap();
        assert_eq!(read.dump_level, Some(31));
    }

    #[test]
    fn a_forked_writer_keeps_the_lock_after_its_parent_lets_go() {
        let dir = TestDir::new("sweep-fork");
        let store = CrashStore::open(dir.path()).unwrap();
        let path = dir.path().join(".tmp-vm-1-0");
        std::fs::create_dir(&path).unwrap();
        let lock = lock_temporary(&path).unwrap();
        // SAFETY: the child only calls async-signal-safe functions (`pause`) until it is killed,
        // as a forked writer of the VMM touches nothing the parent's threads could hold.
        let child = unsafe { libc::fork() };
        if child == 0 {
            loop {
                // SAFETY: `pause` has no preconditions.
                unsafe { libc::pause() };
            }
        }
        assert!(child > 0, "fork failed");
        // The parent lets go, as a killed VMM does; its forked writer still holds the lock.
        drop(lock);
        assert!(store.sweep().unwrap().stale_temporary.is_empty(), "the child still holds it");
        assert!(path.exists());
        // SAFETY: `child` is our own child; killing and reaping it has no memory effects.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        assert_eq!(store.sweep().unwrap().stale_temporary, std::slice::from_ref(&path));
        assert!(!path.exists());
    }
}
