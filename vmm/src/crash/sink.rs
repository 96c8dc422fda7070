//! The crash sink: one thread per VMM that turns every producer's vmcore into a committed crash
//! and tells clients how it went.
//!
//! A job is a trigger, the guest's crash reason and a [`Producer`]. The sink opens the crash
//! store, begins a hidden temporary crash, has the VM's core collector write the vmcore from a
//! capture kernel's hand-off (its progress reported; on failure the reason goes to `meta.json`)
//! or else lets the producer start the vmcore (written on this thread, or by a forked writer
//! whose progress the sink reports), syncs and measures it, stores the logs, writes
//! `meta.json`, commits atomically and applies retention; then it posts `vmcore_ready`, or
//! records the failure and posts `dump_failed`. Jobs run one at a time, in the order they came;
//! the VMM drains the queue before it exits.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use dumpd::error_chain;
use dumpd::store::{
    CommittedCrash, CoreCollectorMeta, CrashMeta, CrashReasonMeta, CrashSizes, CrashStore, FailureRecord, PendingCrash,
    Retention, StoreError, Trigger, FILE_CORE_COLLECTOR_LOG, FILE_KEXEC_DMESG, FILE_VMCORE, FILE_VMCORE_DMESG,
};

use super::collector::{self, Collected};
use super::fork::{ForkError, ForkedWriter};
use super::{DumpTarget, ProcVmcore, VmcoreStats};
use crate::control::{ControlInput, Inbox};
use crate::devices::crash_reason::CrashInfo;
use crate::error::VmmError;
use crashvisor_control::Event;

/// How often a forked writer's progress is reported.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// Jobs that may wait. Guests cannot queue more: a vCPU waits for its own hand-off, and failure
/// reports beyond this are dropped (logged).
const QUEUE_CAPACITY: usize = 64;

/// How a producer's vmcore is being written.
pub enum Writing {
    /// Written already, on the sink's thread.
    Done(VmcoreStats),
    /// Being written by a forked writer from a copy-on-write view of memory taken while the
    /// vCPUs were stopped for `pause`; `total` bytes of memory go into it.
    Forked {
        /// The writer.
        writer: ForkedWriter,
        /// How long the vCPUs were stopped.
        pause: Duration,
        /// Bytes of memory to write.
        total: u64,
    },
}

/// Where a producer writes its vmcore: the file, in a crash the sink has begun.
pub struct VmcoreFile<'a> {
    /// The vmcore.
    pub file: &'a File,
    /// The crash. A process forked to write the file keeps its lock ([`PendingCrash::lock`])
    /// open, so a store opened meanwhile knows the crash is still being written, and finishes
    /// the crash itself if the VMM dies first.
    pub pending: &'a PendingCrash,
    /// What the store keeps, for such a process's commit.
    pub retention: &'a Retention,
    /// The crash's metadata so far, for such a process to finish the crash with.
    pub meta: &'a CrashMeta,
}

/// The logs stored beside a vmcore.
#[derive(Debug, Default)]
pub struct Logs {
    /// The crashed kernel's log (`vmcore-dmesg.txt`); without it, the sink reads the log back
    /// from the vmcore through the guest's VMCOREINFO.
    pub vmcore_dmesg: Option<Vec<u8>>,
    /// The capture kernel's own log (`kexec-dmesg.log`).
    pub kexec_dmesg: Option<Vec<u8>>,
}

/// The maker of one vmcore: it knows where the guest memory comes from and how the file is laid
/// out; the sink does the rest. Its methods run on the sink's thread.
pub trait Producer: Send {
    /// Adds to `meta` what only this producer knows (before the vmcore is written).
    fn describe(&self, _meta: &mut CrashMeta) {}

    /// The event that announces the capture, posted once the crash is begun in the store: from
    /// then on it ends committed or recorded as failed, whatever dies.
    fn started(&self) -> Option<Event> {
        None
    }

    /// The crashed kernel's `/proc/vmcore`, when a capture kernel handed it over: the VM's core
    /// collector, if it has one, writes the vmcore from it instead of [`start`](Self::start).
    fn proc_vmcore(&self) -> Option<ProcVmcore<'_>> {
        None
    }

    /// Starts the vmcore in `vmcore`.
    fn start(&mut self, vmcore: &VmcoreFile<'_>) -> Result<Writing, CaptureError>;

    /// The logs to store beside the written vmcore.
    fn logs(&mut self) -> Result<Logs, CaptureError> {
        Ok(Logs::default())
    }

    /// The crash was committed (`true`) or given up (`false`). A producer dropped without this
    /// call (the sink had stopped) was given up too.
    fn finish(self: Box<Self>, _committed: bool) {}
}

/// Why a vmcore could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The crash store failed.
    #[error("the crash store failed")]
    Store(#[from] StoreError),
    /// Writing the vmcore failed (the reason is the writer's whole error chain).
    #[error("writing the vmcore failed: {0}")]
    Write(String),
    /// The forked writer failed.
    #[error("writing the vmcore failed")]
    Forked(#[from] ForkError),
    /// Syncing or measuring the vmcore failed.
    #[error("cannot sync the vmcore")]
    Sync(#[source] std::io::Error),
    /// A log could not be read out of guest memory (it was checked: a host-side failure).
    #[error("cannot read a log from guest memory")]
    Log(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Not every vCPU stopped for a snapshot.
    #[error("not every vCPU stopped within {0:?}")]
    Pause(Duration),
    /// KVM did not give a vCPU's registers.
    #[error("KVM did not give the registers of vCPU {0}")]
    Registers(usize),
    /// The vmcore could not be laid out.
    #[error("cannot lay out the vmcore")]
    Layout(#[from] crashvisor_klib::elfcore::ElfError),
}

enum Job {
    Vmcore { trigger: Trigger, reason: Option<CrashInfo>, producer: Box<dyn Producer> },
    Failure { trigger: Trigger, reason: String },
    Stop,
}

/// A handle on the VMM's crash sink, for producers.
#[derive(Clone)]
pub struct CrashSink {
    jobs: SyncSender<Job>,
    /// Vmcore jobs queued or running.
    dumps: Arc<AtomicUsize>,
}

impl CrashSink {
    /// Queues a vmcore. False when the queue is full or the sink has stopped: the producer is
    /// dropped, given up (logged).
    pub fn submit(&self, trigger: Trigger, reason: Option<CrashInfo>, producer: Box<dyn Producer>) -> bool {
        self.dumps.fetch_add(1, Ordering::SeqCst);
        let queued = self.queue(Job::Vmcore { trigger, reason, producer });
        if !queued {
            self.dumps.fetch_sub(1, Ordering::SeqCst);
        }
        queued
    }

    /// Queues a capture that produced no vmcore: a line in `failures.jsonl` and `dump_failed`.
    pub fn record_failure(&self, trigger: Trigger, reason: String) {
        self.queue(Job::Failure { trigger, reason });
    }

    /// Whether a vmcore is queued or being written.
    pub fn is_busy(&self) -> bool {
        self.dumps.load(Ordering::SeqCst) > 0
    }

    fn queue(&self, job: Job) -> bool {
        let queued = self.jobs.try_send(job);
        if let Err(e) = &queued {
            tracing::warn!("the crash sink takes no more jobs ({e}); dropping a capture");
        }
        queued.is_ok()
    }
}

/// The crash sink's thread. Dropping it lets the queued jobs finish, then ends the thread.
pub struct SinkThread {
    sink: CrashSink,
    thread: Option<JoinHandle<()>>,
}

impl SinkThread {
    /// Starts the sink writing into `target`, posting its events to `inbox`.
    pub fn start(target: DumpTarget, inbox: Inbox) -> Result<Self, VmmError> {
        let (jobs, queue) = sync_channel(QUEUE_CAPACITY);
        let dumps = Arc::new(AtomicUsize::new(0));
        let worker = Worker { target, inbox, dumps: dumps.clone() };
        let thread = std::thread::Builder::new()
            .name("crash-sink".into())
            .spawn(move || worker.run(&queue))
            .map_err(|source| VmmError::Thread { what: "crash sink", source })?;
        Ok(Self { sink: CrashSink { jobs, dumps }, thread: Some(thread) })
    }

    /// A handle for producers.
    pub fn sink(&self) -> CrashSink {
        self.sink.clone()
    }
}

impl Drop for SinkThread {
    fn drop(&mut self) {
        let Some(thread) = self.thread.take() else { return };
        if self.sink.jobs.send(Job::Stop).is_ok() && thread.join().is_err() {
            tracing::error!("the crash sink thread panicked");
        }
    }
}

/// The sink's thread and what it owns.
struct Worker {
    target: DumpTarget,
    inbox: Inbox,
    dumps: Arc<AtomicUsize>,
}

impl Worker {
    fn run(&self, queue: &Receiver<Job>) {
        let _span = tracing::info_span!("crash-sink").entered();
        for job in queue {
            match job {
                Job::Vmcore { trigger, reason, producer } => {
                    self.capture(trigger, reason.as_ref(), producer);
                    self.dumps.fetch_sub(1, Ordering::SeqCst);
                }
                Job::Failure { trigger, reason } => self.record_failure(trigger, reason),
                Job::Stop => return,
            }
        }
    }

    fn post(&self, event: Event) {
        self.inbox.post(ControlInput::Event(event));
    }

    /// Stores one vmcore and reports how it went.
    fn capture(&self, trigger: Trigger, reason: Option<&CrashInfo>, mut producer: Box<dyn Producer>) {
        let begun = CrashStore::open(&self.target.crash_dir).and_then(|store| store.begin(&self.target.vm_name));
        let stored = match begun {
            Ok(pending) => match self.store(&pending, trigger, reason, producer.as_mut()) {
                Ok(sizes) => commit(pending, &self.target).map(|crash| (crash, sizes)).map_err(CaptureError::from),
                Err(e) => {
                    // Recorded before the crash's directory goes (when `pending` drops), so
                    // that no moment exists where a begun capture is neither on disk nor
                    // recorded.
                    self.record_failure(trigger, self.failure_reason(trigger, &e));
                    drop(pending);
                    producer.finish(false);
                    return;
                }
            },
            Err(e) => Err(e.into()),
        };
        let committed = match stored {
            Ok((crash, sizes)) => {
                tracing::info!(
                    "vmcore ready: {} ({} bytes, {} on disk)",
                    crash.path.display(),
                    sizes.vmcore_apparent_bytes,
                    sizes.vmcore_on_disk_bytes
                );
                self.post(Event::VmcoreReady {
                    id: crash.id,
                    path: crash.path.display().to_string(),
                    size: sizes.vmcore_apparent_bytes,
                    on_disk: sizes.vmcore_on_disk_bytes,
                });
                true
            }
            Err(e) => {
                self.record_failure(trigger, self.failure_reason(trigger, &e));
                false
            }
        };
        producer.finish(committed);
    }

    /// The reason recorded for a capture by `trigger` that failed with `error`.
    fn failure_reason(&self, trigger: Trigger, error: &CaptureError) -> String {
        let what = describe_failure(trigger, &self.target.crash_dir.display().to_string());
        let reason = format!("{what}: {}", error_chain(error));
        tracing::error!("{reason}");
        reason
    }

    /// The one sequence every vmcore goes through, in the crash `pending` just begun: `meta.json`
    /// as begun, the vmcore, logs, `meta.json` complete (the commit and retention follow).
    fn store(
        &self,
        pending: &PendingCrash,
        trigger: Trigger,
        reason: Option<&CrashInfo>,
        producer: &mut dyn Producer,
    ) -> Result<CrashSizes, CaptureError> {
        let started = Instant::now();
        let mut meta = CrashMeta::new(trigger, &self.target.vm_name, pending.created());
        meta.reason = reason.map(reason_meta);
        producer.describe(&mut meta);
        // Begun: should this process die now, the store's next sweep records the failure.
        pending.write_meta(&meta)?;
        if let Some(event) = producer.started() {
            self.post(event);
        }
        let (file, stats) = match self.collect(producer, pending, &mut meta) {
            Some(Collected { file, stats, format }) => {
                meta.vmcore_format = format;
                (file, stats)
            }
            None => {
                let file = pending.create_file(FILE_VMCORE)?;
                let vmcore = VmcoreFile { file: &file, pending, retention: &self.target.retention, meta: &meta };
                let writing = producer.start(&vmcore)?;
                let stats = match writing {
                    Writing::Done(stats) => stats,
                    Writing::Forked { writer, pause, total } => self.follow(&writer, pause, total, &mut meta)?,
                };
                (file, stats)
            }
        };
        let logs = producer.logs()?;
        if let Some(why) = finish_vmcore(pending, &file, stats, logs, &mut meta)? {
            tracing::warn!("no vmcore-dmesg.txt for the vmcore: {why}");
        }
        drop(file);
        meta.timings.host_write_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        pending.write_meta(&meta)?;
        Ok(meta.sizes)
    }

    /// Has the VM's core collector write the vmcore into `pending` from the producer's
    /// `/proc/vmcore`, reporting its progress: `None` when there is no collector or no
    /// `/proc/vmcore`, or when the collector failed (then `meta` says why, and the producer
    /// writes the vmcore as kdump's `failure_action` would have the built-in writer do).
    fn collect(&self, producer: &dyn Producer, pending: &PendingCrash, meta: &mut CrashMeta) -> Option<Collected> {
        let collector = self.target.core_collector.as_ref()?;
        let vmcore = producer.proc_vmcore()?;
        let command = collector.to_string();
        let (output, log) = (pending.path().join(FILE_VMCORE), pending.path().join(FILE_CORE_COLLECTOR_LOG));
        let mut progress = |done, total| self.post(Event::DumpProgress { done, total });
        let collected = collector::collect(collector, vmcore, &output, &log, &mut progress);
        meta.files.core_collector_log = log.is_file().then(|| FILE_CORE_COLLECTOR_LOG.into());
        match collected {
            Ok(collected) => {
                tracing::info!("core collector `{command}` wrote the vmcore");
                meta.core_collector = Some(CoreCollectorMeta { command, collected: true, error: None });
                Some(collected)
            }
            Err(e) => {
                let error = error_chain(&e);
                tracing::warn!("core collector `{command}` failed, the built-in writer writes the vmcore: {error}");
                meta.core_collector = Some(CoreCollectorMeta { command, collected: false, error: Some(error) });
                None
            }
        }
    }

    /// Reports a forked writer's snapshot and progress until it is done.
    fn follow(
        &self,
        writer: &ForkedWriter,
        pause: Duration,
        total: u64,
        meta: &mut CrashMeta,
    ) -> Result<VmcoreStats, CaptureError> {
        let pause_us = u64::try_from(pause.as_micros()).unwrap_or(u64::MAX);
        meta.timings.pause_us = Some(pause_us);
        self.post(Event::SnapshotTaken { pause_us, total });
        let stats = loop {
            if let Some(outcome) = writer.poll(PROGRESS_INTERVAL) {
                break outcome?;
            }
            self.post(Event::DumpProgress { done: writer.done().min(total), total });
        };
        self.post(Event::DumpProgress { done: total, total });
        Ok(stats)
    }

    /// Records a capture that produced no vmcore in the store's failure log and posts
    /// `dump_failed`.
    fn record_failure(&self, trigger: Trigger, reason: String) {
        let record = FailureRecord::new(&self.target.vm_name, trigger, reason, SystemTime::now());
        if let Err(e) = CrashStore::open(&self.target.crash_dir).and_then(|store| store.record_failure(&record)) {
            tracing::warn!("cannot record the failed capture: {}", error_chain(&e));
        }
        self.post(Event::DumpFailed { reason: record.reason });
    }
}

/// Commits `pending`, then applies the target's retention (never to the crash just committed).
fn commit(pending: PendingCrash, target: &DumpTarget) -> Result<CommittedCrash, StoreError> {
    let (committed, pruned) = pending.commit_with_retention(&target.retention)?;
    match pruned {
        Ok(report) => {
            for crash in &report.removed {
                tracing::info!("crash store retention removed {}", crash.id);
            }
            for (id, e) in &report.failed {
                tracing::warn!("crash store retention could not remove {id}: {}", error_chain(e));
            }
        }
        Err(e) => tracing::warn!("crash store retention failed: {}", error_chain(&e)),
    }
    Ok(committed)
}

/// What a failed capture by `trigger` into the store `dir` was (the start of its reason).
pub(super) fn describe_failure(trigger: Trigger, dir: &str) -> String {
    match trigger {
        Trigger::Kdump => format!("cannot store the vmcore in {dir}"),
        Trigger::Pvpanic | Trigger::OnDemand => format!("cannot take a host-side dump into {dir}"),
    }
}

/// The files beside a written vmcore, shared by the sink and a forked writer that outlived its
/// VMM: syncs and measures the vmcore into `meta.sizes`, stores the logs (the crashed kernel's
/// read back from the vmcore when the producer has none). Returns why that log is missing, if
/// it is; `meta.json` and the commit are the caller's.
pub(super) fn finish_vmcore(
    pending: &PendingCrash,
    file: &File,
    stats: VmcoreStats,
    logs: Logs,
    meta: &mut CrashMeta,
) -> Result<Option<String>, CaptureError> {
    // Synced now so the block count is final (commit syncs again, at no cost).
    file.sync_all().map_err(CaptureError::Sync)?;
    let on_disk = file.metadata().map_err(CaptureError::Sync)?.blocks() * 512;
    meta.sizes = CrashSizes {
        vmcore_apparent_bytes: stats.file_bytes,
        vmcore_on_disk_bytes: on_disk,
        vmcore_written_bytes: stats.written_bytes,
        zero_pages_skipped: stats.zero_pages_skipped,
    };
    let (vmcore_dmesg, missing) = match logs.vmcore_dmesg {
        Some(text) => (Some(text), None),
        None => match kernel_log(pending) {
            Ok(text) => (Some(text), None),
            Err(why) => (None, Some(why)),
        },
    };
    for (name, text, entry) in [
        (FILE_VMCORE_DMESG, vmcore_dmesg, &mut meta.files.vmcore_dmesg),
        (FILE_KEXEC_DMESG, logs.kexec_dmesg, &mut meta.files.kexec_dmesg),
    ] {
        if let Some(text) = text {
            pending.write_file(name, &text)?;
            *entry = Some(name.into());
        }
    }
    Ok(missing)
}

/// The crashed kernel's log read back from the pending crash's vmcore, or why it cannot be read
/// (a guest without VMCOREINFO has no log file).
fn kernel_log(pending: &PendingCrash) -> Result<Vec<u8>, String> {
    let read = || -> Result<String, Box<dyn std::error::Error>> {
        let image = dumpd::image::open(&pending.path().join(FILE_VMCORE))?;
        let dump = dumpd::analysis::Dump::new(image.as_ref())?;
        Ok(dumpd::analysis::log::read_log(&dump)?.to_string())
    };
    read().map(String::into_bytes).map_err(|e| e.to_string())
}

fn reason_meta(info: &CrashInfo) -> CrashReasonMeta {
    CrashReasonMeta {
        detector: info.detector.as_str().into(),
        cpu: info.cpu,
        pid: info.pid,
        comm: info.comm.clone(),
        message: info.message.clone(),
    }
}
