//! crashvisor's side: a `vmm` process with its console in a file, dumped over its control
//! socket (`{"cmd":"dump"}`).
//!
//! What the VMM reports, and where each figure comes from:
//! - pause: the `snapshot_taken` event's `pause_us` (also `timings.pause_us` in `meta.json`);
//! - ready: the arrival of `vmcore_ready`, posted once the vmcore is synced, `meta.json`
//!   written and the crash directory committed; its `size` and `on_disk` are the file sizes;
//! - written: the VMM reports no such moment (`dump_progress` counts memory read, four times a
//!   second, and its last one comes after the writer's `fsync`; `timings.host_write_ms` in
//!   `meta.json` ends just before the commit). The bench looks at the forked writer every 2 ms
//!   instead and takes the first time it is inside `fsync`, its last act after writing;
//! - peak RSS: `VmHWM` of the VMM (reset just before the request) and of its writer (sampled
//!   while it runs).

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use crashvisor_tests::{Control, Event, TempDir};
use serde_json::json;

use crate::process::{connect_while_alive, peak_rss_kib, reset_peak_rss, with_stderr, WriterWatch};
use crate::table::Sample;
use crate::workload::{Kernels, Workload};

/// Longest wait for the control socket to accept a connection.
/// Longest wait for the answer to the `dump` request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a dump to be committed.
const DUMP_TIMEOUT: Duration = Duration::from_secs(1800);

/// One `vmm` process, killed when dropped.
pub struct OurVm {
    child: Child,
    control: Control,
    dir: TempDir,
}

impl OurVm {
    /// Boots `workload` with `memory_mib` of RAM, host-side dumps in `format`, and waits until
    /// the guest is ready; returns the VM and the console line that said so.
    pub fn start(
        vmm: &Path,
        kernels: &Kernels,
        workload: Workload,
        memory_mib: u64,
        format: &str,
    ) -> Result<(Self, String)> {
        let dir = TempDir::new("bench-host-dump");
        let (console, socket, stderr) =
            (dir.path().join("console"), dir.path().join("control.sock"), dir.path().join("stderr"));
        let mut command = Command::new(vmm);
        if !workload.is_embedded_kernel() {
            command.arg("--kernel").arg(workload.kernel_file(kernels)?);
        }
        command
            .args(["--vcpus", &workload.vcpus().to_string(), "--memory", &memory_mib.to_string()])
            .args(["--cmdline", &workload.cmdline(), "--dump-format", format, "--no-reboot"])
            .arg("--console")
            .arg(&console)
            .arg("--control")
            .arg(&socket)
            .arg("--crash-dir")
            .arg(dir.path().join("crash"))
            .env_remove("VMM_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).context("cannot create the VMM's stderr file")?);
        let mut child = command.spawn().with_context(|| format!("cannot start {}", vmm.display()))?;
        let control = match connect_while_alive(&socket, &mut child, "vmm", "its control socket", Control::connect) {
            Ok(control) => control,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(with_stderr(e, "vmm", &stderr));
            }
        };
        let mut vm = Self { child, control, dir };
        let ready = workload.await_ready(&console, &mut vm.child, "vmm").map_err(|e| with_stderr(e, "vmm", &stderr))?;
        Ok((vm, ready))
    }

    /// Takes one host-side dump, measures it, and removes the crash it committed.
    pub fn dump(&mut self) -> Result<Sample> {
        let pid = self.child.id();
        reset_peak_rss(pid)?;
        let writer = WriterWatch::start(pid);
        let asked = Instant::now();
        let reply = self.control.request(json!({"cmd": "dump"}), REQUEST_TIMEOUT).map_err(|e| anyhow!("{e}"))?;
        if let Err(refused) = reply.outcome {
            bail!("the VMM refused the dump: {refused}");
        }
        let taken = self.outcome("snapshot_taken")?;
        let ready = self.outcome("vmcore_ready")?;
        let seen = writer.finish();
        let vmm_peak_kib = peak_rss_kib(pid);
        let crash = ready.str("path").context("vmcore_ready has no path")?;
        std::fs::remove_dir_all(crash).with_context(|| format!("cannot remove the crash {crash}"))?;
        Ok(Sample {
            pause: Duration::from_micros(taken.u64("pause_us").context("snapshot_taken has no pause_us")?),
            written: seen.fsync_at.map(|at| at - asked),
            ready: ready.at - asked,
            file_bytes: ready.u64("size").context("vmcore_ready has no size")?,
            disk_bytes: ready.u64("on_disk").context("vmcore_ready has no on_disk")?,
            vmm_peak_kib,
            writer_peak_kib: seen.peak_rss_kib,
        })
    }

    /// Waits for event `name`, or fails with the reason of a `dump_failed`.
    fn outcome(&mut self, name: &str) -> Result<Event> {
        let event = self
            .control
            .wait_event(|e| e.is(name) || e.is("dump_failed"), name, DUMP_TIMEOUT)
            .map_err(|e| with_stderr(anyhow!("{e}"), "vmm", &self.dir.path().join("stderr")))?;
        if event.is("dump_failed") {
            bail!("the dump failed: {}", event.str("reason").unwrap_or("(no reason given)"));
        }
        Ok(event)
    }
}

impl Drop for OurVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
