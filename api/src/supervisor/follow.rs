//! Following a file a VMM appends to (its console, its stderr): the last bytes it holds, then
//! each new chunk as it is written (polled, so it works for a VMM this service did not start).
//! The files live in the state directory, so a restarted service reads them where the VMM left
//! them; once the follower is far past a file's head it punches a hole there, so a VM that runs
//! for months keeps a bounded amount of its console on disk (the size stays, the blocks go).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How often a followed file is checked for new bytes.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Bytes read at once.
const READ_CHUNK: usize = 64 * 1024;
/// Most bytes handed on per poll, so one chatty VM cannot hold a runtime thread.
const MAX_PER_POLL: u64 = 1 << 20;
/// A hole is punched once this much more of the file's head can go.
const PUNCH_STEP: u64 = 4 << 20;
/// Hole punching works in whole blocks; 4 KiB divides the block size of every Linux filesystem.
const BLOCK: u64 = 4096;

/// A running follower.
pub struct Follower {
    syncs: mpsc::Sender<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Follower {
    /// Follows `file` from byte `offset`, handing each new chunk to `sink`; the last
    /// `keep_bytes` before the read position stay on disk, older blocks are freed.
    pub fn start(file: File, offset: u64, keep_bytes: u64, sink: impl FnMut(&[u8]) + Send + 'static) -> Self {
        let (syncs, requests) = mpsc::channel(4);
        let reader = Reader { file, offset, keep_bytes, punched: 0, sink };
        Self { syncs, task: tokio::spawn(reader.run(requests)) }
    }

    /// Returns once every byte written before the call has been handed to the sink.
    pub async fn sync(&self) {
        let (done, wait) = oneshot::channel();
        if self.syncs.send(done).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Hands on what is left and stops.
    pub async fn finish(self) {
        drop(self.syncs);
        let _ = self.task.await;
    }
}

struct Reader<S> {
    file: File,
    offset: u64,
    keep_bytes: u64,
    punched: u64,
    sink: S,
}

impl<S: FnMut(&[u8])> Reader<S> {
    async fn run(mut self, mut requests: mpsc::Receiver<oneshot::Sender<()>>) {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            tokio::select! {
                request = requests.recv() => {
                    self.read_all(&mut buf);
                    match request {
                        Some(done) => {
                            let _ = done.send(());
                        }
                        None => return,
                    }
                }
                () = tokio::time::sleep(POLL_INTERVAL) => {
                    self.read_some(&mut buf, MAX_PER_POLL);
                }
            }
        }
    }

    fn read_all(&mut self, buf: &mut [u8]) {
        while self.read_some(buf, MAX_PER_POLL) == MAX_PER_POLL {}
    }

    /// Reads and hands on up to about `max` new bytes; how many it read.
    fn read_some(&mut self, buf: &mut [u8], max: u64) -> u64 {
        // A file cut short (by hand) is read again from its start.
        if self.file.metadata().is_ok_and(|m| m.len() < self.offset) {
            self.offset = 0;
            self.punched = 0;
        }
        let mut read = 0;
        while read < max {
            match self.file.read_at(buf, self.offset) {
                Ok(0) => break,
                Ok(n) => {
                    (self.sink)(&buf[..n]);
                    self.offset += n as u64;
                    read += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("cannot read a VMM's output file: {e}");
                    break;
                }
            }
        }
        self.free_head();
        read
    }

    /// Punches a hole over the head of the file that is no longer kept.
    fn free_head(&mut self) {
        let end = self.offset.saturating_sub(self.keep_bytes) / BLOCK * BLOCK;
        if end < self.punched + PUNCH_STEP {
            return;
        }
        let Ok(len) = libc::off_t::try_from(end) else { return };
        // SAFETY: fallocate(2) on a descriptor this reader owns; it touches no memory of ours.
        // PUNCH_HOLE with KEEP_SIZE frees the blocks of [0, end) and leaves offsets unchanged,
        // so the VMM's appends and our reads go on as before.
        let punched = unsafe {
            libc::fallocate(self.file.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 0, len)
        };
        if punched != 0 {
            tracing::debug!("cannot free the head of a VMM's output file: {}", std::io::Error::last_os_error());
        }
        // Tried once per step either way: a filesystem without holes keeps the whole file.
        self.punched = end;
    }
}

/// The last `max` bytes of `file` and its length.
pub fn tail(file: &File, max: u64) -> std::io::Result<(Vec<u8>, u64)> {
    let len = file.metadata()?.len();
    let start = len.saturating_sub(max);
    let mut bytes = vec![0u8; usize::try_from(len - start).unwrap_or(0)];
    let mut done = 0;
    while done < bytes.len() {
        match file.read_at(&mut bytes[done..], start + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    bytes.truncate(done);
    Ok((bytes, start + done as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    use std::sync::{Arc, Mutex};

    fn temp_file(hint: &str) -> (std::path::PathBuf, File, File) {
        let path = std::env::temp_dir().join(format!("crashvisor-follow-{hint}-{}", std::process::id()));
        File::create(&path).unwrap();
        let writer = File::options().append(true).open(&path).unwrap();
        let reader = File::options().read(true).write(true).open(&path).unwrap();
        (path, writer, reader)
    }

    #[tokio::test]
    async fn new_bytes_reach_the_sink_and_finish_reads_the_rest() {
        let (path, mut writer, reader) = temp_file("basic");
        writer.write_all(b"old\n").unwrap();
        let (old, len) = tail(&reader, 2).unwrap();
        assert_eq!((old.as_slice(), len), (&b"d\n"[..], 4));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let follower = Follower::start(reader, len, 0, move |chunk| sink.lock().unwrap().extend_from_slice(chunk));
        writer.write_all(b"new ").unwrap();
        follower.sync().await;
        assert_eq!(seen.lock().unwrap().as_slice(), b"new ");
        writer.write_all(b"last").unwrap();
        follower.finish().await;
        assert_eq!(seen.lock().unwrap().as_slice(), b"new last");
        std::fs::remove_file(path).unwrap();
    }

    #[tokio::test]
    async fn the_head_of_a_long_file_is_freed_and_its_tail_kept() {
        let (path, mut writer, reader) = temp_file("punch");
        let keep = 64 * 1024;
        let follower = Follower::start(reader, 0, keep, |_| {});
        let block = vec![b'x'; 1 << 20];
        for _ in 0..12 {
            writer.write_all(&block).unwrap();
        }
        writer.write_all(b"the end").unwrap();
        follower.finish().await;
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 12 * (1 << 20) + 7, "the size stays");
        // ext4, xfs, btrfs and tmpfs all punch holes: the head's blocks are gone.
        assert!(meta.blocks() * 512 <= meta.len() - 8 * (1 << 20), "{} bytes allocated", meta.blocks() * 512);
        let (tail, _) = tail(&File::open(&path).unwrap(), keep).unwrap();
        assert!(tail.ends_with(b"xxthe end") && tail.len() as u64 == keep);
        std::fs::remove_file(path).unwrap();
    }
}
