//! Host-side vmcores: a dump of a running or panicked guest without its cooperation.
//!
//! The vCPUs stop only while their registers are read and a copy-on-write view of guest
//! memory is taken (a forked writer process, [`fork`]); then they run again (or the machine
//! reboots or powers off, as the policy says) while the vmcore streams into the crash store.
//! The vmcore has the capture kernel's layout ([`layout`]): one `NT_PRSTATUS` per vCPU
//! ([`regs`]), the guest's VMCOREINFO, the kernel image, the direct map and the vmalloc area
//! ([`pagewalk`]), so the same tools read both kinds.

pub mod fork;
pub mod layout;
pub mod pagewalk;
pub mod regs;

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dumpd::store::{
    CommittedCrash, CrashMeta, CrashSizes, CrashStore, StoreError, Trigger, FILE_VMCORE, FILE_VMCORE_DMESG,
};

use dumpd::error_chain;

use self::fork::{ForkError, ForkedWriter, Output};
use crate::config::DumpFormat;
use crate::devices::crash_reason::CrashInfo;
use crate::devices::dump::{commit, reason_meta, record_failure, DumpEvent, DumpTarget};
use crate::devices::{ResetCause, StopReason};
use crate::vcpu::RunContext;

/// Longest wait for every vCPU to stop.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often progress is reported while the vmcore is written.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// What the machine does once the snapshot is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// Run on.
    Resume,
    /// Stay paused (it was paused before, or the policy is `pause`).
    StayPaused,
    /// Reboot (`dump-and-reboot`).
    Reboot,
    /// Power off (`dump-and-poweroff`).
    PowerOff,
}

/// A host-side dump to take.
#[derive(Clone, Debug)]
pub struct SnapshotRequest {
    /// Why: pvpanic or an operator.
    pub trigger: Trigger,
    /// The guest's crash reason, when it gave one.
    pub reason: Option<CrashInfo>,
    /// What the machine does afterwards.
    pub after: After,
}

/// Why a host-side dump failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The crash store failed.
    #[error("the crash store failed")]
    Store(#[from] StoreError),
    /// Not every vCPU stopped.
    #[error("not every vCPU stopped within {PAUSE_TIMEOUT:?}")]
    Pause,
    /// KVM did not give a vCPU's registers.
    #[error("KVM did not give the registers of vCPU {0}")]
    Registers(usize),
    /// The layout could not be built.
    #[error("cannot lay out the vmcore")]
    Layout(#[from] crashvisor_klib::elfcore::ElfError),
    /// The writer failed.
    #[error("writing the vmcore failed")]
    Write(#[from] ForkError),
    /// The written file could not be measured.
    #[error("cannot measure the vmcore")]
    Measure(#[source] std::io::Error),
}

/// Takes a host-side dump of the machine in `ctx` into `target`'s crash store, posting
/// `SnapshotTaken`, `Progress` and `VmcoreReady` or `Failed` through `post`. Blocks until the
/// vmcore is committed (the guest runs meanwhile); run it on its own thread.
pub fn take(
    ctx: &Arc<RunContext>,
    target: &DumpTarget,
    request: &SnapshotRequest,
    format: DumpFormat,
    post: &mut dyn FnMut(DumpEvent),
) {
    match capture(ctx, target, request, format, post) {
        Ok((crash, sizes)) => {
            tracing::info!(
                "host-side vmcore ready: {} ({} bytes on disk)",
                crash.path.display(),
                sizes.vmcore_on_disk_bytes
            );
            post(DumpEvent::vmcore_ready(crash, &sizes));
        }
        Err(e) => {
            let reason =
                format!("cannot take a host-side dump into {}: {}", target.crash_dir.display(), error_chain(&e));
            tracing::error!("{reason}");
            record_failure(target, request.trigger, reason, post);
        }
    }
}

fn capture(
    ctx: &Arc<RunContext>,
    target: &DumpTarget,
    request: &SnapshotRequest,
    format: DumpFormat,
    post: &mut dyn FnMut(DumpEvent),
) -> Result<(CommittedCrash, CrashSizes), SnapshotError> {
    let started = Instant::now();
    let store = CrashStore::open(&target.crash_dir)?;
    let pending = store.begin(&target.vm_name)?;
    let file = pending.create_file(FILE_VMCORE)?;

    // The pause: registers, VMCOREINFO, layout, fork.
    let pause_start = Instant::now();
    let was_paused = ctx.vcpus.is_paused();
    if !ctx.pause(PAUSE_TIMEOUT) {
        finish(ctx, if was_paused { After::StayPaused } else { After::Resume });
        return Err(SnapshotError::Pause);
    }
    let snapshot = (|| {
        let states = ctx.vcpus.states();
        let states = states
            .iter()
            .enumerate()
            .map(|(id, state)| state.ok_or(SnapshotError::Registers(id)))
            .collect::<Result<Vec<_>, _>>()?;
        let crash_secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let vmcoreinfo =
            ctx.devices.platform.vmcoreinfo_gpa().and_then(|gpa| layout::read_vmcoreinfo(&ctx.memory, gpa, crash_secs));
        let layout = layout::layout(&ctx.memory, &states, vmcoreinfo);
        let notes = layout.notes();
        let kdump = |compression| Output::Kdump { notes: &notes, loads: &layout.loads, compression };
        let writer = match format {
            DumpFormat::Elf => {
                let core = dumpd::elf::build::layout(&notes, &layout.loads)?;
                ForkedWriter::start(&file, &Output::Elf(&core), &ctx.memory)?
            }
            DumpFormat::Kdump(compression) => ForkedWriter::start(&file, &kdump(compression), &ctx.memory)?,
        };
        let total: u64 = layout.loads.iter().map(|l| l.len).sum();
        Ok::<_, SnapshotError>((writer, total))
    })();
    finish(ctx, if was_paused { After::StayPaused } else { request.after });
    let pause = pause_start.elapsed();
    let (writer, total) = snapshot?;
    post(DumpEvent::SnapshotTaken { pause_us: u64::try_from(pause.as_micros()).unwrap_or(u64::MAX), total });
    tracing::info!("host-side dump: vCPUs stopped for {pause:?}; writing {total} bytes of memory ({format:?})");

    let (file_size, written_bytes, zero_pages_skipped) = loop {
        if let Some(outcome) = writer.poll(PROGRESS_INTERVAL) {
            break outcome?;
        }
        post(DumpEvent::Progress { done: writer.done().min(total), total });
    };
    post(DumpEvent::Progress { done: total, total });
    let on_disk = file.metadata().map_err(SnapshotError::Measure)?.blocks() * 512;
    drop(file);
    let sizes = CrashSizes {
        vmcore_apparent_bytes: file_size,
        vmcore_on_disk_bytes: on_disk,
        vmcore_written_bytes: written_bytes,
        zero_pages_skipped,
    };
    // The crashed kernel's log, as the capture kernel's vmcore-dmesg.txt, read back from the
    // vmcore through the guest's VMCOREINFO (a guest without one has no log file).
    let dmesg = kernel_log(&pending.path().join(FILE_VMCORE));
    if let Some(text) = &dmesg {
        pending.write_file(FILE_VMCORE_DMESG, text.as_bytes())?;
    }
    let mut meta = CrashMeta::new(request.trigger, &target.vm_name, pending.created());
    meta.files.vmcore_dmesg = dmesg.is_some().then(|| FILE_VMCORE_DMESG.into());
    meta.vmcore_format = (format != DumpFormat::Elf).then(|| format.name().into());
    meta.reason = request.reason.as_ref().map(reason_meta);
    meta.sizes = sizes;
    meta.timings.pause_us = Some(u64::try_from(pause.as_micros()).unwrap_or(u64::MAX));
    meta.timings.host_write_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    pending.write_meta(&meta)?;
    Ok((commit(pending, target)?, sizes))
}

/// The kernel log in the vmcore at `path`, or `None` when it cannot be read (logged).
fn kernel_log(path: &std::path::Path) -> Option<String> {
    let read = || -> Result<String, Box<dyn std::error::Error>> {
        let image = dumpd::image::open(path)?;
        let dump = dumpd::analysis::Dump::new(image.as_ref())?;
        Ok(dumpd::analysis::log::read_log(&dump)?.to_string())
    };
    read().map_err(|e| tracing::warn!("no vmcore-dmesg.txt for the host-side dump: {e}")).ok()
}

/// Lets the machine go on as `after` says.
fn finish(ctx: &RunContext, after: After) {
    match after {
        After::Resume => ctx.resume(),
        After::StayPaused => {}
        After::Reboot => ctx.request_stop(StopReason::Reset(ResetCause::PanicPolicy)),
        After::PowerOff => ctx.request_stop(StopReason::PowerOff),
    }
}
