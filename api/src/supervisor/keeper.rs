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
    /// Starts writing `record` (at once) and its later versions into `dir`.
    pub fn start(dir: VmDir, record: VmRecord) -> Self {
        let (latest, versions) = watch::channel((1, record));
        let (written_tx, written) = watch::channel(0);
        let writer = tokio::spawn(write_versions(dir, versions, written_tx));
        Self { latest, written, writer }
    }

    /// Hands over a new version, unless it is the same as the last.
    pub fn save(&self, record: VmRecord) {
        self.latest.send_if_modified(|(version, last)| {
            if *last == record {
                return false;
            }
            *version += 1;
            *last = record;
            true
        });
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
        let (version, record) = versions.borrow_and_update().clone();
        let target = dir.clone();
        match tokio::task::spawn_blocking(move || target.write(&record)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("cannot save the VM's record, so a restarted service may not find it: {e}"),
            Err(e) => tracing::error!("the VM's record writer failed: {e}"),
        }
        written.send_replace(version);
        // An error: the VM's task is gone and every version it handed over is written.
        if versions.changed().await.is_err() {
            return;
        }
    }
}
