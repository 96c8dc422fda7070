//! Host-side vmcores: a dump of a running or panicked guest without its cooperation, one of the
//! crash sink's producers.
//!
//! The vCPUs stop only while their registers are read and a copy-on-write view of guest
//! memory is taken (a forked writer process, `crash::fork`); then they run again (or the
//! machine reboots or powers off, as the policy says) while the vmcore streams into the crash
//! store. The vmcore has the capture kernel's layout ([`layout`]): one `NT_PRSTATUS` per vCPU
//! ([`regs`]), the guest's VMCOREINFO, the kernel image, the direct map and the vmalloc area
//! ([`pagewalk`]), so the same tools read both kinds.

pub mod layout;
pub mod pagewalk;
pub mod regs;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dumpd::store::CrashMeta;

use crate::config::DumpFormat;
use crate::crash::fork::ForkedWriter;
use crate::crash::{CaptureError, Output, Producer, VmcoreFile, Writing};
use crate::vcpu::requests::Pauser;
use crate::vcpu::RunContext;
use crate::vm::{ResetCause, StopReason};

/// Longest wait for every vCPU to stop.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the machine does once the snapshot is taken (a machine an operator paused stays
/// paused, whatever this says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// Run on.
    Resume,
    /// Reboot (`dump-and-reboot`).
    Reboot,
    /// Power off (`dump-and-poweroff`).
    PowerOff,
}

/// A host-side dump of one machine, for the crash sink.
pub struct Snapshot {
    machine: Arc<RunContext>,
    after: After,
    format: DumpFormat,
    /// How long to wait before the snapshot.
    delay: Duration,
}

impl Snapshot {
    /// A dump of `machine` in `format`, taken `delay` from when the sink starts it.
    pub fn new(machine: Arc<RunContext>, after: After, format: DumpFormat, delay: Duration) -> Self {
        Self { machine, after, format, delay }
    }

    /// Reads the registers and VMCOREINFO, lays the vmcore out and forks its writer: the work
    /// of the pause. Returns the writer and the bytes of memory it writes.
    fn fork(&self, vmcore: &VmcoreFile<'_>) -> Result<(ForkedWriter, u64), CaptureError> {
        let ctx = &self.machine;
        let started = Instant::now();
        let states = ctx.vcpus.states();
        let states = states
            .iter()
            .enumerate()
            .map(|(id, state)| state.ok_or(CaptureError::Registers(id)))
            .collect::<Result<Vec<_>, _>>()?;
        let crash_secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let vmcoreinfo =
            ctx.devices.platform.vmcoreinfo_gpa().and_then(|gpa| layout::read_vmcoreinfo(&ctx.memory, gpa, crash_secs));
        let layout = layout::layout(&ctx.memory, &states, vmcoreinfo);
        let laid_out = Instant::now();
        let notes = layout.notes();
        let kdump = |compression| Output::Kdump { notes: &notes, loads: &layout.loads, compression };
        let writer = match self.format {
            DumpFormat::Elf => {
                let core = dumpd::elf::build::layout(&notes, &layout.loads)?;
                ForkedWriter::start(vmcore, &Output::Elf(&core), &ctx.memory)?
            }
            DumpFormat::Kdump(compression) => ForkedWriter::start(vmcore, &kdump(compression), &ctx.memory)?,
        };
        tracing::debug!("host-side dump: registers and layout {:?}, fork {:?}", laid_out - started, laid_out.elapsed());
        Ok((writer, layout.loads.iter().map(|l| l.len).sum()))
    }
}

impl Producer for Snapshot {
    fn describe(&self, meta: &mut CrashMeta) {
        meta.vmcore_format = (self.format != DumpFormat::Elf).then(|| self.format.name().into());
    }

    fn start(&mut self, vmcore: &VmcoreFile<'_>) -> Result<Writing, CaptureError> {
        std::thread::sleep(self.delay);
        let ctx = &self.machine;
        let pause_start = Instant::now();
        let stopped = ctx.pause(Pauser::Snapshot, PAUSE_TIMEOUT);
        tracing::debug!("host-side dump: vCPUs stopped in {:?}", pause_start.elapsed());
        let forked = if stopped { self.fork(vmcore) } else { Err(CaptureError::Pause(PAUSE_TIMEOUT)) };
        if stopped && !ctx.is_paused() {
            match self.after {
                After::Resume => {}
                After::Reboot => ctx.request_stop(StopReason::Reset(ResetCause::PanicPolicy)),
                After::PowerOff => ctx.request_stop(StopReason::PowerOff),
            }
        }
        ctx.resume(Pauser::Snapshot);
        let pause = pause_start.elapsed();
        let (writer, total) = forked?;
        tracing::info!(
            "host-side dump: vCPUs stopped for {pause:?}; writing {total} bytes of memory ({:?})",
            self.format
        );
        Ok(Writing::Forked { writer, pause, total })
    }
}
