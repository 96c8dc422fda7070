//! The upload journal: one JSON file per crash in the spool's hidden `.upload/` directory,
//! replaced atomically (write, fsync, rename, fsync the directory) at every step, so an upload
//! resumes where it stood after a crash or a restart of the uploader.
//!
//! A committed crash in the spool without a journal, or with one that is not `done`, is waiting
//! to be shipped: the queue is the spool itself, and a crash is queued durably the moment its
//! directory is committed. `.upload/.lock` is held by the one uploader that ships a spool.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::FleetError;

/// The journal directory inside the spool (hidden: the crash store never lists it).
pub const JOURNAL_DIR: &str = ".upload";
/// The uploader's lock file inside it.
const LOCK_FILE: &str = ".lock";
/// Ends the name of a journal being written (`.ID.json.PID-N.tmp`), renamed over `ID.json`.
const TMP_SUFFIX: &str = ".tmp";
/// Tells this process's journal writes apart.
static NEXT_TMP: AtomicU64 = AtomicU64::new(0);
/// S3's multipart limits: parts per upload, and the size of each part but the last.
pub const MAX_PARTS: u64 = 10_000;
/// The smallest part S3 takes (but the last).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// The largest part S3 takes.
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// Longest file name a journal may name.
const MAX_NAME_LEN: usize = 255;

/// How far one file of a crash has been shipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum FileUpload {
    /// Nothing sent yet (or what was sent must be sent again).
    Pending,
    /// A multipart upload under way: its id, the part size and the parts sent, in order.
    Multipart {
        /// The store's upload id.
        upload_id: String,
        /// Bytes per part (the last may be shorter).
        part_size: u64,
        /// The store's id (ETag) of each part sent.
        parts: Vec<String>,
    },
    /// The whole object is in the store (not yet verified).
    Sent,
}

/// One file of a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Its length.
    pub size: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
    /// How far it has been shipped.
    pub upload: FileUpload,
}

/// Where a crash's upload stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Stage {
    /// Files are being sent.
    Sending,
    /// Committed in the store (`meta.json` written) and verified.
    Done {
        /// The crash's place in the store, `s3://BUCKET/PREFIX/HOST/ID/`.
        url: String,
        /// When, milliseconds since the Unix epoch.
        uploaded_unix_ms: u64,
    },
}

/// A crash's journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The crash's id in the spool.
    pub id: String,
    /// Its id in the store (the same, unless the store already held a crash of that id).
    pub remote_id: String,
    /// Its files but `meta.json`, by name.
    pub files: BTreeMap<String, FileEntry>,
    /// Where the upload stands.
    pub stage: Stage,
}

impl Journal {
    /// Whether the crash is committed in the store.
    pub fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done { .. })
    }

    /// Why this journal, read from the file of crash `id`, cannot be believed, if it cannot: a
    /// journal names keys in the store and sizes of reads, so nothing in it is taken on trust.
    fn check(&self, id: &str) -> Result<(), String> {
        let plain = |name: &str| dumpd::store::is_plain_name(name, MAX_NAME_LEN);
        if self.id != id {
            return Err(format!("it is the journal of {:?}", self.id));
        }
        if !dumpd::store::is_crash_id(&self.remote_id) {
            return Err(format!("its id in the store {:?} is not a crash id", self.remote_id));
        }
        for (name, file) in &self.files {
            if !plain(name) {
                return Err(format!("its file name {name:?} is not a plain name"));
            }
            if let FileUpload::Multipart { part_size, parts, .. } = &file.upload {
                if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(part_size) {
                    return Err(format!("{name}: a part size of {part_size} bytes is outside S3's limits"));
                }
                let count = file.size.div_ceil(*part_size);
                if count > MAX_PARTS || parts.len() as u64 > count {
                    return Err(format!("{name}: {} parts sent of {count}", parts.len()));
                }
            }
        }
        Ok(())
    }
}

/// The spool's journal directory.
#[derive(Debug, Clone)]
pub struct Journals {
    dir: PathBuf,
}

impl Journals {
    /// The journals of the spool at `spool`, creating their directory if missing.
    pub fn open(spool: &Path) -> Result<Self, FleetError> {
        let dir = spool.join(JOURNAL_DIR);
        std::fs::create_dir_all(&dir).map_err(FleetError::local("create the upload journal directory", &dir))?;
        Ok(Self { dir })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Takes the uploader's lock, waiting while another uploader holds it (blocking).
    pub fn lock(&self) -> Result<File, FleetError> {
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(FleetError::local("open", &path))?;
        file.lock().map_err(FleetError::local("lock", &path))?;
        self.remove_stale_tmp();
        Ok(file)
    }

    /// Removes journals half written by an uploader that died (only the lock's holder writes).
    fn remove_stale_tmp(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_str().is_some_and(|n| n.starts_with('.') && n.ends_with(TMP_SUFFIX)) {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    tracing::warn!(path = %entry.path().display(), "cannot remove a half-written upload journal: {e}");
                }
            }
        }
    }

    /// Crash `id`'s journal, if it has one. One that cannot be parsed or believed counts as none
    /// (the upload starts over, which is safe: nothing is visible in the store before
    /// `meta.json`).
    pub fn load(&self, id: &str) -> Result<Option<Journal>, FleetError> {
        let path = self.path(id);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let journal = serde_json::from_slice::<Journal>(&bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|journal| journal.check(id).map(|()| journal));
                match journal {
                    Ok(journal) => Ok(Some(journal)),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "unusable upload journal, starting over: {e}");
                        Ok(None)
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FleetError::local("read", &path)(e)),
        }
    }

    /// Replaces crash `journal.id`'s journal atomically and durably.
    pub fn save(&self, journal: &Journal) -> Result<(), FleetError> {
        let path = self.path(&journal.id);
        // A name of its own per write: a write still running for an upload that was given up
        // (a cancelled task's blocking save) must not take the file from under this one.
        let n = NEXT_TMP.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(".{}.json.{}-{n}{TMP_SUFFIX}", journal.id, std::process::id()));
        let mut json = serde_json::to_vec_pretty(journal).map_err(|e| FleetError::Meta {
            what: format!("the upload journal of {}", journal.id),
            detail: e.to_string(),
        })?;
        json.push(b'\n');
        let mut file = File::create(&tmp).map_err(FleetError::local("create", &tmp))?;
        file.write_all(&json).and_then(|()| file.sync_all()).map_err(FleetError::local("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(FleetError::local("replace", &path))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(FleetError::local("sync", &self.dir))
    }

    /// Removes crash `id`'s journal (none is fine).
    pub fn remove(&self, id: &str) -> Result<(), FleetError> {
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(FleetError::local("remove", &path)(e)),
        }
    }

    /// The ids that have a journal.
    pub fn ids(&self) -> Result<Vec<String>, FleetError> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(FleetError::local("read", &self.dir))? {
            let entry = entry.map_err(FleetError::local("read", &self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = name.strip_suffix(".json").filter(|_| !name.starts_with('.')) {
                ids.push(id.to_owned());
            }
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journals_round_trip_and_are_replaced_whole() {
        let spool = std::env::temp_dir().join(format!("fleet-journal-{}", std::process::id()));
        let journals = Journals::open(&spool).unwrap();
        assert_eq!(journals.load("vm-1").unwrap(), None);
        let mut journal = Journal {
            id: "vm-1".into(),
            remote_id: "vm-1".into(),
            files: BTreeMap::from([(
                "vmcore".into(),
                FileEntry { size: 10, sha256: "ab".into(), upload: FileUpload::Pending },
            )]),
            stage: Stage::Sending,
        };
        journals.save(&journal).unwrap();
        journal.files.get_mut("vmcore").unwrap().upload =
            FileUpload::Multipart { upload_id: "u".into(), part_size: MIN_PART_SIZE, parts: vec!["e1".into()] };
        journals.save(&journal).unwrap();
        assert_eq!(journals.load("vm-1").unwrap(), Some(journal.clone()));
        assert!(!journal.is_done());
        assert_eq!(journals.ids().unwrap(), ["vm-1"], "no temporary file left, the lock is not an id");
        let _lock = journals.lock().unwrap();
        std::fs::write(spool.join(JOURNAL_DIR).join("bad.json"), b"{").unwrap();
        assert_eq!(journals.load("bad").unwrap(), None, "an unreadable journal starts over");
        journals.remove("vm-1").unwrap();
        journals.remove("vm-1").unwrap();
        assert_eq!(journals.load("vm-1").unwrap(), None);
        std::fs::remove_dir_all(&spool).unwrap();
    }

    #[test]
    fn a_journal_that_cannot_be_believed_starts_over() {
        let spool = std::env::temp_dir().join(format!("fleet-journal-bad-{}", std::process::id()));
        let journals = Journals::open(&spool).unwrap();
        let multipart = |part_size, parts: usize| FileEntry {
            size: 100 << 20,
            sha256: "ab".into(),
            upload: FileUpload::Multipart { upload_id: "u".into(), part_size, parts: vec!["e".into(); parts] },
        };
        let journal = |id: &str, remote_id: &str, name: &str, file| Journal {
            id: id.into(),
            remote_id: remote_id.into(),
            files: BTreeMap::from([(name.to_owned(), file)]),
            stage: Stage::Sending,
        };
        let write = |journal: &Journal| {
            let json = serde_json::to_vec(journal).unwrap();
            std::fs::write(spool.join(JOURNAL_DIR).join("vm-1.json"), json).unwrap();
        };
        let good = journal("vm-1", "vm-1-2026-12-03-13:44:09-1", "vmcore", multipart(16 << 20, 3));
        write(&good);
        assert_eq!(journals.load("vm-1").unwrap(), Some(good));
        for bad in [
            journal("vm-2", "vm-1", "vmcore", multipart(16 << 20, 3)),
            journal("vm-1", "../../x", "vmcore", multipart(16 << 20, 3)),
            journal("vm-1", "vm-1", "../vmcore", multipart(16 << 20, 3)),
            journal("vm-1", "vm-1", "vmcore", multipart(0, 0)),
            journal("vm-1", "vm-1", "vmcore", multipart(MAX_PART_SIZE + 1, 0)),
            journal("vm-1", "vm-1", "vmcore", multipart(16 << 20, 8)),
        ] {
            write(&bad);
            assert_eq!(journals.load("vm-1").unwrap(), None, "{bad:?}");
        }
        std::fs::remove_dir_all(&spool).unwrap();
    }
}
