//! The crash store: one directory per crash, `<vm>-<YYYY-MM-DD-HH:MM:SS>` (UTC), holding
//! `vmcore`, `vmcore-dmesg.txt`, `kexec-dmesg.log` and `meta.json` (see docs/crash-store.md).
//!
//! A crash is written into a hidden temporary directory (`.tmp-<vm>-<pid>-<n>`) and becomes
//! visible in one `rename` once every file and the directory are on disk, so readers never see
//! a half-written crash. A [`PendingCrash`] dropped before [`PendingCrash::commit`] removes its
//! temporary directory; one whose writer died is removed when the store is next opened (see
//! `sweep.rs`).
//!
//! ```
//! # let dir = std::env::temp_dir().join(format!("dumpd-doc-{}", std::process::id()));
//! use dumpd::store::{CrashStore, FILE_VMCORE};
//!
//! let store = CrashStore::open(&dir)?;
//! let pending = store.begin("web-1")?;
//! pending.write_file(FILE_VMCORE, b"\x7fELF...")?;
//! pending.write_meta(&dumpd::store::CrashMeta::new(dumpd::store::Trigger::OnDemand, "web-1", pending.created()))?;
//! let crash = pending.commit()?;
//! assert!(crash.id.starts_with("web-1-"));
//! assert_eq!(store.list()?.len(), 1);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

mod retention;
mod sweep;
pub use retention::{parse_bytes, select, Candidate, PruneReport, PrunedCrash, Retention, DELETE_PREFIX};
pub use sweep::{SweepReport, LOCK_FILE};

/// The vmcore's file name.
pub const FILE_VMCORE: &str = "vmcore";
/// The crashed kernel's log.
pub const FILE_VMCORE_DMESG: &str = "vmcore-dmesg.txt";
/// The capture kernel's own log.
pub const FILE_KEXEC_DMESG: &str = "kexec-dmesg.log";
/// What a host-side core collector (`vmm --core-collector`) printed.
pub const FILE_CORE_COLLECTOR_LOG: &str = "core-collector.log";
/// The crash's metadata.
pub const FILE_META: &str = "meta.json";
/// Failed captures, one JSON object per line, in the store directory.
pub const FILE_FAILURES: &str = "failures.jsonl";
/// `meta.json` being replaced ([`PendingCrash::write_meta`]); never in a committed crash.
const META_PARTIAL: &str = "meta.json.partial";
/// Prefix of temporary directories (hidden, never listed).
pub const TMP_PREFIX: &str = ".tmp-";
/// `meta.json`'s `format` written by this version.
pub const META_FORMAT: u32 = 1;
/// Longest VM name.
pub const MAX_VM_NAME_LEN: usize = 64;
/// How many `-N` suffixes are tried when a crash directory's name is taken.
const MAX_NAME_SUFFIX: u32 = 10_000;

/// Why the crash store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file-system operation failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What the store was doing.
        action: &'static str,
        /// The path it was doing it to.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A VM name the store cannot use in a directory name.
    #[error("invalid VM name {0:?}: use 1 to 64 characters from A-Z a-z 0-9 _ . - and do not start with a dot")]
    VmName(String),
    /// A file name that is not a plain name inside the crash directory.
    #[error("invalid file name {0:?} in a crash directory")]
    FileName(String),
    /// `commit` without `meta.json`.
    #[error("a crash is committed only with its {FILE_META}")]
    MissingMeta,
    /// `meta.json` could not be encoded.
    #[error("cannot encode {FILE_META}")]
    Meta(#[source] serde_json::Error),
    /// No committed crash has this id.
    #[error("no crash {0:?} in the crash store")]
    NoSuchCrash(String),
    /// Every candidate name for the crash directory is taken.
    #[error("no free name for a crash directory starting {0}")]
    NoFreeName(String),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { action, path: path.to_path_buf(), source }
}

/// Whether `name` can be one component of a path in the store (or a fleet store's key):
/// 1 to `max_len` characters of `[A-Za-z0-9_.-]`, not starting with `.` (which would hide it,
/// and rules out `.` and `..`).
pub fn is_plain_name(name: &str, max_len: usize) -> bool {
    (1..=max_len).contains(&name.len())
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Longest crash id: a 64-character VM name, `-YYYY-MM-DD-HH:MM:SS` and a `-N` suffix.
pub const MAX_CRASH_ID_LEN: usize = 128;

/// Whether `id` can be a crash directory's name, `<vm>-YYYY-MM-DD-HH:MM:SS[-N]`: 1 to 128
/// characters of `[A-Za-z0-9_.:-]`, not starting with `.`.
pub fn is_crash_id(id: &str) -> bool {
    (1..=MAX_CRASH_ID_LEN).contains(&id.len())
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

/// Checks a VM name for use in the store ([`is_plain_name`], at most 64 characters).
pub fn validate_vm_name(name: &str) -> Result<(), StoreError> {
    if is_plain_name(name, MAX_VM_NAME_LEN) {
        Ok(())
    } else {
        Err(StoreError::VmName(name.to_owned()))
    }
}

/// What produced a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The guest's capture kernel handed over its vmcore.
    Kdump,
    /// The host dumped the guest after pvpanic PANICKED.
    Pvpanic,
    /// An operator asked for a dump.
    OnDemand,
}

impl Trigger {
    /// The name used in `meta.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kdump => "kdump",
            Self::Pvpanic => "pvpanic",
            Self::OnDemand => "on_demand",
        }
    }
}

/// Why the guest crashed, as it told the host before panicking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashReasonMeta {
    /// The detector or path (`softlockup`, `hardlockup`, `hung_task`, `oops`, `bug`, `sysrq`, ...).
    pub detector: String,
    /// The panicking CPU.
    pub cpu: u32,
    /// Pid of the task current there.
    pub pid: u32,
    /// That task's name.
    pub comm: String,
    /// The panic message.
    pub message: String,
}

/// Sizes of the vmcore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashSizes {
    /// Its length, holes included.
    pub vmcore_apparent_bytes: u64,
    /// Space it takes on disk.
    pub vmcore_on_disk_bytes: u64,
    /// Bytes the writer wrote.
    pub vmcore_written_bytes: u64,
    /// Pages left as holes because they were all zero.
    pub zero_pages_skipped: u64,
}

/// How long the capture took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashTimings {
    /// The capture kernel's time from its first instruction to the hand-off (kdump only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub capture_kernel_ns: Option<u64>,
    /// How long a host-side dump kept the vCPUs stopped (host-side dumps only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pause_us: Option<u64>,
    /// The host's time to write the crash directory.
    pub host_write_ms: u64,
}

/// The files of a crash directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashFiles {
    /// The vmcore.
    pub vmcore: String,
    /// The crashed kernel's log, if the crash has one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vmcore_dmesg: Option<String>,
    /// The capture kernel's log, if the crash has one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kexec_dmesg: Option<String>,
    /// The core collector's messages, if one ran.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub core_collector_log: Option<String>,
}

/// What became of a host-side core collector (kdump.conf's `core_collector`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreCollectorMeta {
    /// The command, as configured (the input and output paths follow it).
    pub command: String,
    /// `true` if the vmcore is the collector's output; `false` if the collector failed and the
    /// built-in writer wrote it (kdump's `failure_action` of a failed collector).
    pub collected: bool,
    /// Why the collector failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

/// `meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashMeta {
    /// `META_FORMAT`.
    pub format: u32,
    /// What produced the crash.
    pub trigger: Trigger,
    /// The VM's name.
    pub vm: String,
    /// The guest's crash reason, if it gave one.
    #[serde(default)]
    pub reason: Option<CrashReasonMeta>,
    /// makedumpfile `-d` level applied (kdump).
    #[serde(default)]
    pub dump_level: Option<u32>,
    /// The vmcore's file format when it is not ELF (`kdump-zstd`, `kdump-zlib`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vmcore_format: Option<String>,
    /// The core collector that made (or failed to make) the vmcore, if one was configured.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub core_collector: Option<CoreCollectorMeta>,
    /// Sizes.
    pub sizes: CrashSizes,
    /// Timings.
    pub timings: CrashTimings,
    /// When the capture began, RFC 3339 UTC (`2024-05-01T12:34:56Z`); the directory name uses
    /// the same instant.
    pub created: String,
    /// The same instant in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The files.
    pub files: CrashFiles,
    /// SHA-256 of each file but `meta.json`, lowercase hex by file name: recorded when the crash
    /// is shipped to a fleet's crash store, and checked against what the store holds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub checksums: Option<BTreeMap<String, String>>,
}

impl CrashMeta {
    /// Metadata with no reason, sizes or timings yet, and a vmcore as the only file.
    pub fn new(trigger: Trigger, vm: &str, created: SystemTime) -> Self {
        let since_epoch = created.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Self {
            format: META_FORMAT,
            trigger,
            vm: vm.to_owned(),
            reason: None,
            dump_level: None,
            vmcore_format: None,
            core_collector: None,
            sizes: CrashSizes::default(),
            timings: CrashTimings::default(),
            created: rfc3339(created),
            created_unix_ms: u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX),
            files: CrashFiles {
                vmcore: FILE_VMCORE.into(),
                vmcore_dmesg: None,
                kexec_dmesg: None,
                core_collector_log: None,
            },
            checksums: None,
        }
    }
}

/// A failed capture, one line of `failures.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// When, RFC 3339 UTC.
    pub time: String,
    /// The VM's name.
    pub vm: String,
    /// What was capturing.
    pub trigger: Trigger,
    /// Why it failed.
    pub reason: String,
    /// Recorded after its VMM ended (by a sweep, or by a dump writer that finished alone), so
    /// the VMM never announced it: the service does (`dump_failed`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub after_vmm_ended: bool,
}

impl FailureRecord {
    /// The record of `vm`'s capture by `trigger` that failed at `time` for `reason`, reported
    /// by the VMM that ran it.
    pub fn new(vm: &str, trigger: Trigger, reason: String, time: SystemTime) -> Self {
        Self { time: rfc3339(time), vm: vm.to_owned(), trigger, reason, after_vmm_ended: false }
    }

    /// The same, recorded after its VMM ended: nobody announced it yet.
    pub fn after_vmm_ended(self) -> Self {
        Self { after_vmm_ended: true, ..self }
    }

    /// When it failed, in ms since the epoch (`None` if `time` is not RFC 3339).
    pub fn unix_ms(&self) -> Option<u64> {
        let at: Timestamp = self.time.parse().ok()?;
        u64::try_from(at.as_millisecond()).ok()
    }
}

/// A committed crash directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashEntry {
    /// The directory's name, the crash's id.
    pub id: String,
    /// Its path.
    pub path: PathBuf,
    /// Its `meta.json`, if it could be read.
    pub meta: Option<CrashMeta>,
}

/// A crash store directory.
#[derive(Debug, Clone)]
pub struct CrashStore {
    dir: PathBuf,
}

impl CrashStore {
    /// Opens the store at `dir`, creating it (and its parents) if missing, and sweeps what
    /// dead writers left behind ([`CrashStore::sweep`]; entries it cannot remove stay hidden).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let store = Self::open_unswept(dir)?;
        let swept = store.sweep()?;
        for path in swept.stale_temporary.iter().chain(&swept.half_deleted) {
            tracing::info!(path = %path.display(), "removed a dead writer's crash store entry");
        }
        for record in &swept.failed_captures {
            tracing::warn!(vm = %record.vm, trigger = record.trigger.as_str(), "recorded a failed capture: {}", record.reason);
        }
        for (path, error) in &swept.failed {
            tracing::warn!(path = %path.display(), %error, "cannot remove a dead writer's crash store entry");
        }
        Ok(store)
    }

    /// Opens the store at `dir`, creating it if missing, without sweeping.
    fn open_unswept(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io("create the crash store", &dir))?;
        Ok(Self { dir })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts a crash of VM `vm_name` now, in a new hidden temporary directory.
    pub fn begin(&self, vm_name: &str) -> Result<PendingCrash, StoreError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        validate_vm_name(vm_name)?;
        let pid = std::process::id();
        // Shared: other writers may begin at once; a sweep waits until the lock below is held.
        let _store = sweep::lock_store(&self.dir, false)?;
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = self.dir.join(format!("{TMP_PREFIX}{vm_name}-{pid}-{n}"));
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    let lock = match sweep::lock_temporary(&path) {
                        Ok(lock) => lock,
                        Err(e) => {
                            let _ = std::fs::remove_dir(&path);
                            return Err(e);
                        }
                    };
                    return Ok(PendingCrash {
                        store: self.dir.clone(),
                        path,
                        lock,
                        vm_name: vm_name.to_owned(),
                        created: SystemTime::now(),
                        committed: false,
                    });
                }
                // A stale directory of an earlier process with the same pid: take the next n.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io("create a temporary crash directory in", &self.dir)(e)),
            }
        }
    }

    /// The committed crashes (never temporary directories), oldest first.
    pub fn list(&self) -> Result<Vec<CrashEntry>, StoreError> {
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io("read the crash store", &self.dir))? {
            let entry = entry.map_err(io("read the crash store", &self.dir))?;
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else { continue };
            if id.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path();
            let meta = std::fs::read(path.join(FILE_META)).ok().and_then(|b| serde_json::from_slice(&b).ok());
            entries.push(CrashEntry { id, path, meta });
        }
        entries.sort_by(|a, b| {
            let at = |e: &CrashEntry| e.meta.as_ref().map_or(0, |m| m.created_unix_ms);
            at(a).cmp(&at(b)).then_with(|| a.id.cmp(&b.id))
        });
        Ok(entries)
    }

    /// Appends a failed capture to `failures.jsonl` (one `write` of one line, `O_APPEND`).
    pub fn record_failure(&self, record: &FailureRecord) -> Result<(), StoreError> {
        let mut line = serde_json::to_vec(record).map_err(StoreError::Meta)?;
        line.push(b'\n');
        let path = self.dir.join(FILE_FAILURES);
        let mut file = OpenOptions::new().create(true).append(true).open(&path).map_err(io("open", &path))?;
        file.write_all(&line).map_err(io("append to", &path))
    }

    /// The failed captures recorded so far (unreadable lines are skipped).
    pub fn failures(&self) -> Result<Vec<FailureRecord>, StoreError> {
        let path = self.dir.join(FILE_FAILURES);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io("read", &path)(e)),
        }
    }
}

/// A crash being written; invisible to [`CrashStore::list`] until committed.
#[derive(Debug)]
pub struct PendingCrash {
    store: PathBuf,
    path: PathBuf,
    /// The directory, locked while its writer lives (a forked writer keeps it open).
    lock: File,
    vm_name: String,
    created: SystemTime,
    committed: bool,
}

/// A crash made visible by [`PendingCrash::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedCrash {
    /// The directory's name, the crash's id.
    pub id: String,
    /// Its path.
    pub path: PathBuf,
}

impl PendingCrash {
    /// The temporary directory files are written into.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// When the crash began (the directory's name will say this instant).
    pub fn created(&self) -> SystemTime {
        self.created
    }

    /// The VM's name.
    pub fn vm_name(&self) -> &str {
        &self.vm_name
    }

    /// The descriptor whose lock tells the store this crash is being written. A process forked
    /// to write into the crash keeps it open: while any process holds it, no sweep removes the
    /// temporary directory, and when the last one exits the kernel drops the lock.
    pub fn lock(&self) -> BorrowedFd<'_> {
        self.lock.as_fd()
    }

    /// Creates the new file `name` (a plain name) in the crash directory.
    pub fn create_file(&self, name: &str) -> Result<File, StoreError> {
        if name.is_empty() || name.starts_with('.') || name.contains('/') {
            return Err(StoreError::FileName(name.to_owned()));
        }
        let path = self.path.join(name);
        OpenOptions::new().write(true).create_new(true).open(&path).map_err(io("create", &path))
    }

    /// Creates the file `name` holding `bytes`.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let mut file = self.create_file(name)?;
        file.write_all(bytes).map_err(io("write", &self.path.join(name)))
    }

    /// Writes `meta.json`, replacing the one written before (whole or not at all). The crash's
    /// writer writes it once when it begins, so that a sweep that finds the crash abandoned
    /// knows whose capture failed, and again, complete, just before the commit.
    pub fn write_meta(&self, meta: &CrashMeta) -> Result<(), StoreError> {
        let mut json = serde_json::to_vec_pretty(meta).map_err(StoreError::Meta)?;
        json.push(b'\n');
        let (partial, path) = (self.path.join(META_PARTIAL), self.path.join(FILE_META));
        std::fs::write(&partial, &json).map_err(io("write", &partial))?;
        std::fs::rename(&partial, &path).map_err(io("rename into", &path))
    }

    /// Makes the crash visible: fsyncs every file and the directory, renames it to
    /// `<vm>-<YYYY-MM-DD-HH:MM:SS>` (with `-1`, `-2`, ... if taken; never replacing anything),
    /// then fsyncs the store directory. Needs `meta.json`.
    pub fn commit(mut self) -> Result<CommittedCrash, StoreError> {
        let committed = self.rename_into_store()?;
        self.committed = true;
        Ok(committed)
    }

    /// [`PendingCrash::commit_with_retention`] by a process forked from the one that began the
    /// crash, which owns it (this process only has its copy): for a writer that outlived its
    /// VMM. The forked process must leave without dropping its copy (`_exit`).
    pub fn commit_forked(
        &self,
        retention: &Retention,
    ) -> Result<(CommittedCrash, Result<PruneReport, StoreError>), StoreError> {
        let committed = self.rename_into_store()?;
        let report = self.store().prune(retention, Some(&committed.id));
        Ok((committed, report))
    }

    /// Gives the crash up from a process forked from the one that began it (which owns it; see
    /// [`PendingCrash::commit_forked`]): its directory is removed, best effort.
    pub fn discard_forked(&self) {
        let _ = sweep::discard(&self.store, &self.path);
    }

    /// The store the crash is in (not swept again).
    pub fn store(&self) -> CrashStore {
        CrashStore { dir: self.store.clone() }
    }

    /// The commit: syncs, renames, syncs the store.
    fn rename_into_store(&self) -> Result<CommittedCrash, StoreError> {
        if !self.path.join(FILE_META).is_file() {
            return Err(StoreError::MissingMeta);
        }
        for entry in std::fs::read_dir(&self.path).map_err(io("read", &self.path))? {
            let path = entry.map_err(io("read", &self.path))?.path();
            File::open(&path).and_then(|f| f.sync_all()).map_err(io("sync", &path))?;
        }
        sync_dir(&self.path)?;
        let base = format!("{}-{}", self.vm_name, dir_timestamp(self.created));
        let mut committed = None;
        for suffix in 0..=MAX_NAME_SUFFIX {
            let id = if suffix == 0 { base.clone() } else { format!("{base}-{suffix}") };
            let target = self.store.join(&id);
            if rename_noreplace(&self.path, &target).map_err(io("commit the crash directory", &target))? {
                committed = Some(CommittedCrash { id, path: target });
                break;
            }
        }
        let committed = committed.ok_or(StoreError::NoFreeName(base))?;
        sync_dir(&self.store)?;
        Ok(committed)
    }

    /// [`PendingCrash::commit`], then [`CrashStore::prune`] keeping the new crash. The outer
    /// error is the commit's; the inner result is the pruning's (the crash is committed either
    /// way).
    pub fn commit_with_retention(
        self,
        retention: &Retention,
    ) -> Result<(CommittedCrash, Result<PruneReport, StoreError>), StoreError> {
        let store = self.store();
        let committed = self.commit()?;
        let report = store.prune(retention, Some(&committed.id));
        Ok((committed, report))
    }
}

impl Drop for PendingCrash {
    /// Removes an uncommitted temporary directory, best effort: one that cannot be removed
    /// stays hidden and is never listed.
    fn drop(&mut self) {
        if !self.committed {
            let _ = sweep::discard(&self.store, &self.path);
        }
    }
}

fn sync_dir(path: &Path) -> Result<(), StoreError> {
    File::open(path).and_then(|d| d.sync_all()).map_err(io("sync directory", path))
}

/// Renames `from` to `to` unless `to` exists: true if renamed, false if `to` exists.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<bool> {
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (from_c, to_c) = (c(from)?, c(to)?);
    // SAFETY: both pointers are NUL-terminated strings that live across the call; AT_FDCWD makes
    // the paths relative to the working directory like `rename(2)`.
    let rc = unsafe {
        libc::renameat2(libc::AT_FDCWD, from_c.as_ptr(), libc::AT_FDCWD, to_c.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EEXIST) => Ok(false),
        // A file system without RENAME_NOREPLACE: check, then rename. A directory is never
        // renamed over a non-empty one, and a crash directory is never empty.
        Some(libc::EINVAL | libc::ENOSYS) => {
            if to.symlink_metadata().is_ok() {
                return Ok(false);
            }
            match std::fs::rename(from, to) {
                Ok(()) => Ok(true),
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => Ok(false),
                Err(e) => Err(e),
            }
        }
        _ => Err(e),
    }
}

/// `time` in UTC (before 1970 counts as 1970; beyond 9999 as the end of 9999).
fn utc(time: SystemTime) -> Timestamp {
    Timestamp::try_from(time.max(UNIX_EPOCH)).unwrap_or(Timestamp::MAX)
}

/// `YYYY-MM-DD-HH:MM:SS` in UTC, as crash directories are named.
pub fn dir_timestamp(time: SystemTime) -> String {
    utc(time).strftime("%Y-%m-%d-%H:%M:%S").to_string()
}

/// RFC 3339 in UTC with second precision, `YYYY-MM-DDTHH:MM:SSZ`: the times in meta.json and
/// failures.jsonl.
fn rfc3339(time: SystemTime) -> String {
    format!("{:.0}", utc(time))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TestDir;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn meta(vm: &str, created: SystemTime) -> CrashMeta {
        CrashMeta::new(Trigger::Kdump, vm, created)
    }

    #[test]
    fn timestamps_are_utc() {
        let t = at(1_709_210_096); // 2024-02-29 12:34:56 UTC
        assert_eq!(dir_timestamp(t), "2024-02-29-12:34:56");
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56Z");
        assert_eq!(dir_timestamp(UNIX_EPOCH - Duration::from_secs(5)), "1970-01-01-00:00:00");
    }

    #[test]
    fn vm_names_are_checked() {
        for good in ["vm", "web-1", "a.b_c", &"x".repeat(64)] {
            assert!(validate_vm_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", "é", &"x".repeat(65), "a\0b"] {
            assert!(matches!(validate_vm_name(bad), Err(StoreError::VmName(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_pending_crash_is_invisible_until_committed() {
        let dir = TestDir::new("store-commit");
        let store = CrashStore::open(dir.path().join("crash")).unwrap();
        let pending = store.begin("vm").unwrap();
        let tmp = pending.path().to_path_buf();
        assert!(tmp.file_name().unwrap().to_str().unwrap().starts_with(".tmp-vm-"));
        pending.write_file(FILE_VMCORE, b"core").unwrap();
        pending.write_file(FILE_VMCORE_DMESG, b"log").unwrap();
        assert!(store.list().unwrap().is_empty(), "temporary directories are not listed");
        assert!(matches!(pending.create_file("../x"), Err(StoreError::FileName(_))));
        assert!(matches!(pending.create_file(FILE_VMCORE), Err(StoreError::Io { .. })), "files are new");

        let mut m = meta("vm", pending.created());
        m.sizes.vmcore_apparent_bytes = 4;
        pending.write_meta(&m).unwrap();
        let created = pending.created();
        let crash = pending.commit().unwrap();
        assert_eq!(crash.id, format!("vm-{}", dir_timestamp(created)));
        assert!(!tmp.exists());
        assert_eq!(std::fs::read(crash.path.join(FILE_VMCORE)).unwrap(), b"core");
        let list = store.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].id.as_str(), list[0].meta.as_ref()), (crash.id.as_str(), Some(&m)));
    }

    #[test]
    fn dropping_a_pending_crash_removes_it() {
        let dir = TestDir::new("store-drop");
        let store = CrashStore::open(dir.path()).unwrap();
        let pending = store.begin("vm").unwrap();
        pending.write_file(FILE_VMCORE, &[1; 10_000]).unwrap();
        let tmp = pending.path().to_path_buf();
        drop(pending);
        assert!(!tmp.exists());
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, [LOCK_FILE], "nothing but the store's lock file");
    }

    #[test]
    fn commit_needs_meta_and_cleans_up_on_failure() {
        let dir = TestDir::new("store-nometa");
        let store = CrashStore::open(dir.path()).unwrap();
        let pending = store.begin("vm").unwrap();
        let tmp = pending.path().to_path_buf();
        assert!(matches!(pending.commit(), Err(StoreError::MissingMeta)));
        assert!(!tmp.exists());
    }

    #[test]
    fn name_collisions_get_suffixes() {
        let dir = TestDir::new("store-collide");
        let store = CrashStore::open(dir.path()).unwrap();
        let created = at(1_700_000_000);
        let mut ids = Vec::new();
        for _ in 0..3 {
            let mut pending = store.begin("vm").unwrap();
            pending.created = created; // the same second, three times
            pending.write_meta(&meta("vm", created)).unwrap();
            ids.push(pending.commit().unwrap().id);
        }
        let base = format!("vm-{}", dir_timestamp(created));
        assert_eq!(ids, [base.clone(), format!("{base}-1"), format!("{base}-2")]);
        // An empty directory in the way is not replaced either.
        std::fs::create_dir(dir.path().join(format!("{base}-3"))).unwrap();
        let mut pending = store.begin("vm").unwrap();
        pending.created = created;
        pending.write_meta(&meta("vm", created)).unwrap();
        assert_eq!(pending.commit().unwrap().id, format!("{base}-4"));
        let listed: Vec<_> = store.list().unwrap().into_iter().map(|e| (e.id, e.meta.is_some())).collect();
        assert_eq!(listed.len(), 5);
        assert_eq!(listed[0], (format!("{base}-3"), false), "no meta sorts first");
    }

    #[test]
    fn list_skips_hidden_entries_and_files() {
        let dir = TestDir::new("store-list");
        let store = CrashStore::open(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join(".tmp-vm-1-0")).unwrap();
        std::fs::write(dir.path().join("stray-file"), b"").unwrap();
        let _pending = store.begin("other").unwrap();
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn failures_are_appended() {
        let dir = TestDir::new("store-failures");
        let store = CrashStore::open(dir.path()).unwrap();
        assert!(store.failures().unwrap().is_empty());
        let record = |reason: &str| FailureRecord {
            time: rfc3339(at(0)),
            vm: "vm".into(),
            trigger: Trigger::Kdump,
            reason: reason.into(),
            after_vmm_ended: false,
        };
        store.record_failure(&record("no elfcorehdr")).unwrap();
        store.record_failure(&record("descriptor: bad magic")).unwrap();
        assert_eq!(store.failures().unwrap(), [record("no elfcorehdr"), record("descriptor: bad magic")]);
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn failures_say_whether_their_vmm_announced_them_and_when() {
        let store_dir = TestDir::new("failure-fields");
        let store = CrashStore::open(store_dir.path()).unwrap();
        let theirs = FailureRecord::new("vm", Trigger::OnDemand, "full disk".into(), at(1_700_000_000));
        let swept = theirs.clone().after_vmm_ended();
        store.record_failure(&theirs).unwrap();
        store.record_failure(&swept).unwrap();
        let text = std::fs::read_to_string(store_dir.path().join(FILE_FAILURES)).unwrap();
        assert!(!text.lines().next().unwrap().contains("after_vmm_ended"), "{text}");
        assert_eq!(store.failures().unwrap(), [theirs.clone(), swept]);
        assert_eq!(theirs.unix_ms(), Some(1_700_000_000_000));
        assert_eq!(FailureRecord { time: "yesterday".into(), ..theirs }.unix_ms(), None);
    }

    #[test]
    fn meta_json_has_stable_names() {
        let mut m = meta("vm", at(1_709_210_096));
        m.reason = Some(CrashReasonMeta {
            detector: "sysrq".into(),
            cpu: 1,
            pid: 7,
            comm: "sh".into(),
            message: "sysrq triggered crash".into(),
        });
        m.dump_level = Some(31);
        m.timings.capture_kernel_ns = Some(5);
        m.files.vmcore_dmesg = Some(FILE_VMCORE_DMESG.into());
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["trigger"], "kdump");
        assert_eq!(json["created"], "2024-02-29T12:34:56Z");
        assert_eq!(json["created_unix_ms"], 1_709_210_096_000u64);
        assert_eq!(json["reason"]["detector"], "sysrq");
        assert_eq!(json["timings"]["capture_kernel_ns"], 5);
        assert_eq!(json["files"]["vmcore_dmesg"], "vmcore-dmesg.txt");
        assert!(json["files"].get("kexec_dmesg").is_none());
        assert_eq!(serde_json::from_value::<CrashMeta>(json).unwrap(), m);
        assert_eq!(Trigger::OnDemand.as_str(), serde_json::to_value(Trigger::OnDemand).unwrap());
    }
}
