//! Shipping one crash: its checksums and journal, each file sent (in parts, resumable), each
//! object read back and checked, then `meta.json`, retention in the store and the local copy
//! removed. The queue around it is in `mod.rs`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use dumpd::store::{select, Candidate, CrashMeta, FILE_META};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{blocking, ready_unix_ms, remove_local, unix_ms, Uploaded, Uploader, MAX_REMOTE_SUFFIX};
use crate::journal::{FileEntry, FileUpload, Journal, Stage, MAX_PARTS, MAX_PART_SIZE, MIN_PART_SIZE};
use crate::{checksum, FleetError};

impl Uploader {
    /// Sends crash `id`'s files to the store without committing it: checksums, journal, every
    /// file not yet sent. What [`Uploader::ship`] does first; a later `ship` resumes from here.
    pub async fn stage(&self, id: &str) -> Result<(Journal, CrashMeta), FleetError> {
        let dir = self.spool.dir().join(id);
        if id.starts_with('.') || id.contains('/') || !dir.is_dir() {
            return Err(FleetError::NotFound(format!("{id} in the spool")));
        }
        let meta_path = dir.join(FILE_META);
        let meta: CrashMeta =
            tokio::fs::read(&meta_path).await.map_err(FleetError::local("read", &meta_path)).and_then(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| FleetError::Meta {
                    what: format!("{} cannot be read", meta_path.display()),
                    detail: e.to_string(),
                })
            })?;
        let journals = self.journals.clone();
        let loaded = {
            let id = id.to_owned();
            blocking(move || journals.load(&id)).await?
        };
        let files = {
            let dir = dir.clone();
            blocking(move || local_files(&dir)).await?
        };
        let mut journal = match loaded {
            Some(journal) if same_files(&journal, &files) => journal,
            _ => self.new_journal(id, &dir, &files).await?,
        };
        let meta = self.record_checksums(&dir, meta, &journal).await?;
        if !journal.is_done() {
            let names: Vec<String> = journal.files.keys().cloned().collect();
            for name in names {
                if journal.files[&name].upload != FileUpload::Sent {
                    self.send_file(&dir, &mut journal, &name).await?;
                }
            }
        }
        Ok((journal, meta))
    }

    /// Ships crash `id`: [`Uploader::stage`], then every object read back and checked (sent
    /// again if it differs), then `meta.json`, then retention in the store, then the local copy
    /// removed unless `keep_local`.
    pub async fn ship(&self, id: &str) -> Result<Uploaded, FleetError> {
        let started = Instant::now();
        let (mut journal, meta) = self.stage(id).await?;
        let dir = self.spool.dir().join(id);
        let host = self.bucket.host().to_owned();
        let mut resent = Vec::new();
        if !journal.is_done() {
            let names: Vec<String> = journal.files.keys().cloned().collect();
            for name in names {
                match self.verify(&journal, &name).await {
                    Ok(()) => {}
                    Err(mismatch @ FleetError::Checksum { .. }) => {
                        tracing::warn!(id, "sending {name} again: {mismatch}");
                        self.send_file(&dir, &mut journal, &name).await?;
                        self.verify(&journal, &name).await?;
                        resent.push(name);
                    }
                    // The store could not be read back (down, a timeout): retried later, not
                    // sent again.
                    Err(e) => return Err(e),
                }
            }
            let mut json = serde_json::to_vec_pretty(&meta)
                .map_err(|e| FleetError::Meta { what: format!("meta.json of {id}"), detail: e.to_string() })?;
            json.push(b'\n');
            self.bucket.put(&self.bucket.key(&host, &journal.remote_id, FILE_META), Bytes::from(json)).await?;
            let url = self.bucket.crash_url(&host, &journal.remote_id);
            journal.stage = Stage::Done { url, uploaded_unix_ms: unix_ms(SystemTime::now()) };
            self.save(&journal).await?;
            // A DELETE of the spool's copy while it was being committed: that DELETE saw no
            // commit yet, so the store's copy is this side's to remove. (The DELETE, once the
            // local copy is gone, looks at the journal again: whichever of the two comes second
            // sees the other, so a deleted crash never stays in the store.)
            if !dir.is_dir() {
                match self.bucket.delete(&host, &journal.remote_id).await {
                    Ok(()) | Err(FleetError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
                let journals = self.journals.clone();
                let id = id.to_owned();
                blocking(move || journals.remove(&id)).await?;
                return Err(FleetError::NotFound(format!(
                    "{} in the spool: deleted while it was being uploaded",
                    journal.id
                )));
            }
        }
        let Stage::Done { url, uploaded_unix_ms } = journal.stage.clone() else {
            return Err(FleetError::NotFound(format!("{id}'s upload journal")));
        };
        let pruned = match self.prune_store(&journal.remote_id).await {
            Ok(pruned) => pruned,
            Err(e) => {
                tracing::warn!("retention in the crash store failed (the upload stands): {e}");
                Vec::new()
            }
        };
        if !self.config.keep_local {
            let spool = self.spool.clone();
            let journals = self.journals.clone();
            let id = id.to_owned();
            blocking(move || remove_local(&spool, &journals, &id)).await?;
        }
        let meta_bytes = serde_json::to_vec_pretty(&meta).map_or(0, |j| j.len() as u64 + 1);
        Ok(Uploaded {
            id: id.to_owned(),
            remote_id: journal.remote_id.clone(),
            vm: meta.vm.clone(),
            url,
            bytes: journal.files.values().map(|f| f.size).sum::<u64>() + meta_bytes,
            lag: Some(Duration::from_millis(uploaded_unix_ms.saturating_sub(ready_unix_ms(&meta)))),
            took: started.elapsed(),
            resent,
            pruned,
        })
    }

    async fn save(&self, journal: &Journal) -> Result<(), FleetError> {
        let journals = self.journals.clone();
        let journal = journal.clone();
        blocking(move || journals.save(&journal)).await
    }

    /// A journal for crash `id` with its files' checksums and a free id in the store.
    async fn new_journal(&self, id: &str, dir: &Path, files: &[(String, u64)]) -> Result<Journal, FleetError> {
        let mut entries = BTreeMap::new();
        for (name, _) in files {
            let path = dir.join(name);
            let (sha256, size) = blocking(move || checksum::file_sha256(&path)).await?;
            entries.insert(name.clone(), FileEntry { size, sha256, upload: FileUpload::Pending });
        }
        let remote_id = self.free_remote_id(id).await?;
        let journal = Journal { id: id.to_owned(), remote_id, files: entries, stage: Stage::Sending };
        self.save(&journal).await?;
        Ok(journal)
    }

    /// `id`, or `id-N` if the store already holds a committed crash `id` of this host (a crash
    /// of the same VM in the same second, after the first left the spool).
    async fn free_remote_id(&self, id: &str) -> Result<String, FleetError> {
        let host = self.bucket.host();
        for n in 0..=MAX_REMOTE_SUFFIX {
            let candidate = if n == 0 { id.to_owned() } else { format!("{id}-{n}") };
            if self.bucket.len(&self.bucket.key(host, &candidate, FILE_META)).await?.is_none() {
                return Ok(candidate);
            }
        }
        Err(FleetError::Meta { what: format!("crash {id}"), detail: "no free id in the crash store".into() })
    }

    /// `meta` with the journal's checksums, written back to the spool's `meta.json` (replaced
    /// atomically) if it did not have them.
    async fn record_checksums(
        &self,
        dir: &Path,
        mut meta: CrashMeta,
        journal: &Journal,
    ) -> Result<CrashMeta, FleetError> {
        let checksums: BTreeMap<String, String> =
            journal.files.iter().map(|(name, f)| (name.clone(), f.sha256.clone())).collect();
        if meta.checksums.as_ref() == Some(&checksums) {
            return Ok(meta);
        }
        meta.checksums = Some(checksums);
        let mut json = serde_json::to_vec_pretty(&meta)
            .map_err(|e| FleetError::Meta { what: format!("meta.json of {}", journal.id), detail: e.to_string() })?;
        json.push(b'\n');
        let dir = dir.to_path_buf();
        blocking(move || {
            let tmp = dir.join(".meta.json.tmp");
            let path = dir.join(FILE_META);
            std::fs::write(&tmp, &json)
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .map_err(FleetError::local("write", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(FleetError::local("replace", &path))?;
            std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(FleetError::local("sync", &dir))
        })
        .await?;
        Ok(meta)
    }

    /// Sends file `name` of the crash in `dir`: in one request, or in parts resumed from the
    /// journal. Marks it sent in the journal.
    async fn send_file(&self, dir: &Path, journal: &mut Journal, name: &str) -> Result<(), FleetError> {
        let path = dir.join(name);
        let key = self.bucket.key(self.bucket.host(), &journal.remote_id, name);
        let entry =
            journal.files.get(name).cloned().ok_or_else(|| FleetError::NotFound(format!("{name} in the journal")))?;
        if entry.size <= self.config.part_size {
            let bytes = tokio::fs::read(&path).await.map_err(FleetError::local("read", &path))?;
            self.bucket.put(&key, Bytes::from(bytes)).await?;
        } else {
            let (upload_id, part_size, mut parts) = match entry.upload {
                FileUpload::Multipart { upload_id, part_size, parts } => {
                    tracing::info!(key = %key, "resuming multipart upload {upload_id} after part {}", parts.len());
                    (upload_id, part_size, parts)
                }
                FileUpload::Pending | FileUpload::Sent => {
                    let upload_id = self.bucket.create_multipart(&key).await?;
                    (upload_id, part_size_for(entry.size, self.config.part_size), Vec::new())
                }
            };
            let set = |journal: &mut Journal, upload: FileUpload| {
                if let Some(file) = journal.files.get_mut(name) {
                    file.upload = upload;
                }
            };
            set(journal, FileUpload::Multipart { upload_id: upload_id.clone(), part_size, parts: parts.clone() });
            self.save(journal).await?;
            let count = entry.size.div_ceil(part_size);
            let mut file = tokio::fs::File::open(&path).await.map_err(FleetError::local("open", &path))?;
            let result: Result<(), FleetError> = async {
                for index in parts.len() as u64..count {
                    let start = index * part_size;
                    let len = part_size.min(entry.size - start);
                    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
                    file.seek(std::io::SeekFrom::Start(start)).await.map_err(FleetError::local("seek", &path))?;
                    file.read_exact(&mut buf).await.map_err(FleetError::local("read", &path))?;
                    let part = self.bucket.put_part(&key, &upload_id, index as usize, Bytes::from(buf)).await?;
                    parts.push(part);
                    set(
                        journal,
                        FileUpload::Multipart { upload_id: upload_id.clone(), part_size, parts: parts.clone() },
                    );
                    self.save(journal).await?;
                }
                self.bucket.complete_multipart(&key, &upload_id, &parts).await
            }
            .await;
            if let Err(e) = result {
                if upload_is_gone(&e) {
                    // The store no longer knows this upload: the next attempt starts it over.
                    tracing::warn!(key = %key, "the store forgot multipart upload {upload_id}; starting over: {e}");
                    let _ = self.bucket.abort_multipart(&key, &upload_id).await;
                    set(journal, FileUpload::Pending);
                    self.save(journal).await?;
                }
                return Err(e);
            }
        }
        if let Some(file) = journal.files.get_mut(name) {
            file.upload = FileUpload::Sent;
        }
        self.save(journal).await
    }

    /// Reads file `name`'s object back and compares it with the journal's checksum.
    async fn verify(&self, journal: &Journal, name: &str) -> Result<(), FleetError> {
        let key = self.bucket.key(self.bucket.host(), &journal.remote_id, name);
        let entry = &journal.files[name];
        let (found, found_len) = match self.bucket.sha256(&key).await {
            Ok(found) => found,
            Err(FleetError::Store { source: object_store::Error::NotFound { .. }, .. }) => ("none".into(), 0),
            Err(e) => return Err(e),
        };
        if found == entry.sha256 && found_len == entry.size {
            return Ok(());
        }
        Err(FleetError::Checksum {
            key: key.to_string(),
            expected: entry.sha256.clone(),
            expected_len: entry.size,
            found,
            found_len,
        })
    }

    /// Retention on this host's prefix in the store, never removing `keep`: the ids removed.
    async fn prune_store(&self, keep: &str) -> Result<Vec<String>, FleetError> {
        let retention = &self.config.retention;
        if retention.max_per_vm.is_none() && retention.max_total_bytes.is_none() {
            return Ok(Vec::new());
        }
        let host = self.bucket.host();
        let crashes = self.bucket.list(Some(host)).await?;
        let candidates: Vec<Candidate<'_>> = crashes
            .iter()
            .map(|c| Candidate { id: &c.id, vm: c.meta.as_ref().map(|m| m.vm.as_str()), bytes: c.bytes })
            .collect();
        let doomed = select(&candidates, retention, Some(keep));
        let mut pruned = Vec::new();
        for (crash, _) in crashes.iter().zip(doomed).filter(|(_, d)| *d) {
            self.bucket.delete(host, &crash.id).await?;
            tracing::info!(id = crash.id, "retention removed a crash from the store");
            pruned.push(crash.id.clone());
        }
        Ok(pruned)
    }
}

/// The part size for a file of `size` bytes: the configured one, or larger (whole MiB) when the
/// file would need more than S3's 10,000 parts, at most S3's 5 GiB.
fn part_size_for(size: u64, configured: u64) -> u64 {
    let least = size.div_ceil(MAX_PARTS).next_multiple_of(1 << 20);
    configured.max(least).clamp(MIN_PART_SIZE, MAX_PART_SIZE)
}

/// Whether a multipart upload failed because the store no longer knows it (S3's 404
/// `NoSuchUpload`), not a passing fault. A 403 is not that: it says the credentials may not
/// write (expired, a policy changed), and the parts already sent stay useful once they may.
fn upload_is_gone(error: &FleetError) -> bool {
    matches!(error, FleetError::Store { source: object_store::Error::NotFound { .. }, .. })
}

/// The crash directory's files but `meta.json` and hidden ones, with their lengths.
fn local_files(dir: &Path) -> Result<Vec<(String, u64)>, FleetError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(FleetError::local("read", dir))? {
        let entry = entry.map_err(FleetError::local("read", dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        let meta = entry.metadata().map_err(FleetError::local("stat", &entry.path()))?;
        if name == FILE_META || name.starts_with('.') || !meta.is_file() {
            continue;
        }
        files.push((name, meta.len()));
    }
    files.sort();
    Ok(files)
}

/// Whether `journal` describes exactly `files` (names and lengths).
fn same_files(journal: &Journal, files: &[(String, u64)]) -> bool {
    journal.files.len() == files.len()
        && files.iter().all(|(name, len)| journal.files.get(name).is_some_and(|f| f.size == *len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_stay_within_s3s_limits() {
        assert_eq!(part_size_for(1 << 30, 16 << 20), 16 << 20);
        // 160 GiB in 16 MiB parts would be 10,240 parts.
        let size = 160u64 << 30;
        let part = part_size_for(size, 16 << 20);
        assert!(size.div_ceil(part) <= MAX_PARTS && part.is_multiple_of(1 << 20), "{part}");
        assert_eq!(part_size_for(1, 0), MIN_PART_SIZE);
        assert_eq!(part_size_for(u64::MAX, 16 << 20), MAX_PART_SIZE);
    }
}
