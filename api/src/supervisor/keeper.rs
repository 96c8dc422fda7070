//! Writes one VM's record to the state directory in the background: the VM's task hands it
//! each new version and goes on; a writer task writes the newest one (versions that came in
//! between are skipped, never written out of order), off the runtime's threads since each write
//! is `fsync`ed. [`RecordKeeper::flush`] waits until what was handed over is on disk.

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::record::{VmDir, VmRecord};

/// The writer of one VM's record.
pub struct RecordKeeper {
    latest: watch::Sender<(u64, VmRecord)>,
    written: watch::Receiver<u64>,
    writer: JoinHandle<()>,
}

impl RecordKeeper {
    /// Keeps `record` and its later versions in `dir`: writes it at once, unless it is
    /// `on_disk` already.
    pub fn start(dir: VmDir, record: VmRecord, on_disk: bool) -> Self {
        // A receiver starts with the first version seen: marked changed, it is written at once.
        let (latest, mut versions) = watch::channel((1, record));
        if !on_disk {
            versions.mark_changed();
        }
        let (written_tx, written) = watch::channel(u64::from(on_disk));
        let writer = tokio::spawn(write_versions(dir, versions, written_tx));
        Self { latest, written, writer }
    }

    /// Hands over a new version, unless it is the same as the last; whether it was new.
    pub fn save(&self, record: VmRecord) -> bool {
        self.latest.send_if_modified(|(version, last)| {
            if *last == record {
                return false;
            }
            *version += 1;
            *last = record;
            true
        })
    }

    /// Waits until the last version handed over is written (or its write failed, which is
    /// logged).
    pub async fn flush(&self) {
        let version = self.latest.borrow().0;
        let mut written = self.written.clone();
        let _ = written.wait_for(|&done| done >= version).await;
    }

    /// Writes what is left and stops.
    pub async fn finish(self) {
        drop(self.latest);
        let _ = self.writer.await;
    }
}

async fn write_versions(dir: VmDir, mut versions: watch::Receiver<(u64, VmRecord)>, written: watch::Sender<u64>) {
    loop {
        if !versions.has_changed().unwrap_or(false) && versions.changed().await.is_err() {
            return;
        }
        let (version, record) = versions.borrow_and_update().clone();
        let target = dir.clone();
        match tokio::task::spawn_blocking(move || target.write(&record)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("cannot save the VM's record, so a restarted service may not find it: {e}"),
            Err(e) => tracing::error!("the VM's record writer failed: {e}"),
        }
        written.send_replace(version);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::record::tests::{record, temp_root};
    use crate::supervisor::record::StateDir;

    #[tokio::test]
    async fn a_record_is_written_at_once_unless_on_disk_and_each_change_after() {
        let root = temp_root("keeper");
        let state = StateDir::open(&root).unwrap();
        let dir = state.vm("web-1");
        dir.create().unwrap();
        let first = record();
        let keeper = RecordKeeper::start(dir.clone(), first.clone(), false);
        keeper.flush().await;
        assert_eq!(dir.read().unwrap(), first, "written at once");

        let mut changed = first.clone();
        changed.vmm = None;
        dir.write(&changed).unwrap();
        keeper.finish().await;
        let keeper = RecordKeeper::start(dir.clone(), first.clone(), true);
        keeper.flush().await;
        assert_eq!(dir.read().unwrap(), changed, "a record on disk already is not written again");
        let mut later = first.clone();
        later.control_socket = "/run/y/web-1.sock".into();
        keeper.save(later.clone());
        keeper.finish().await;
        assert_eq!(dir.read().unwrap(), later, "a change is written, the last one before finish too");
        drop(state);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
