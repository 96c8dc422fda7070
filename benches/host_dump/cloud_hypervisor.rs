//! Cloud Hypervisor's side, when `HOST_DUMP_CLOUD_HYPERVISOR` names its binary (built with
//! `--features guest_debug`, which `vm.coredump` needs; its `ch-remote` beside it). The guest
//! boots with `--kernel` (the fill kernel is a PVH kernel) and is dumped as Cloud Hypervisor's
//! documentation says: `ch-remote pause`, `ch-remote coredump file://...` (an ELF file), then
//! `ch-remote resume`. Its pause is from the pause request to the resume's return; its file is
//! in the page cache when `coredump` returns, so the bench syncs it apart, as for QEMU.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crashvisor_tests::TempDir;

use crate::process::{peak_rss_kib, reset_peak_rss, with_stderr};
use crate::table::Sample;
use crate::workload::{Kernels, Workload};

/// Longest wait for the API socket to appear.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// The binaries, found from `HOST_DUMP_CLOUD_HYPERVISOR`.
#[derive(Debug, Clone)]
pub struct Binaries {
    cloud_hypervisor: PathBuf,
    ch_remote: PathBuf,
}

impl Binaries {
    /// `cloud_hypervisor` and the `ch-remote` in its directory; both must exist.
    pub fn find(cloud_hypervisor: &Path) -> Result<Self> {
        let ch_remote = cloud_hypervisor.with_file_name("ch-remote");
        for binary in [cloud_hypervisor, ch_remote.as_path()] {
            if !binary.is_file() {
                bail!(
                    "HOST_DUMP_CLOUD_HYPERVISOR: {} is not a file (give the cloud-hypervisor binary built with \
                     `cargo build --release --features guest_debug --bin cloud-hypervisor --bin ch-remote`)",
                    binary.display()
                );
            }
        }
        Ok(Self { cloud_hypervisor: cloud_hypervisor.to_path_buf(), ch_remote })
    }
}

/// A Cloud Hypervisor VM, killed when dropped.
pub struct CloudHypervisor {
    binaries: Binaries,
    child: Child,
    socket: PathBuf,
    dir: TempDir,
}

impl CloudHypervisor {
    /// Boots `workload` with `memory_mib` of RAM and waits until the guest is ready; returns
    /// the VM and the console line that said so.
    pub fn start(
        binaries: &Binaries,
        kernels: &Kernels,
        workload: Workload,
        memory_mib: u64,
    ) -> Result<(Self, String)> {
        let dir = TempDir::new("bench-cloud-hypervisor");
        let (console, socket, stderr) =
            (dir.path().join("console"), dir.path().join("api.sock"), dir.path().join("stderr"));
        let mut child = Command::new(&binaries.cloud_hypervisor)
            .arg("--api-socket")
            .arg(format!("path={}", socket.display()))
            .arg("--kernel")
            .arg(workload.kernel_file(kernels)?)
            .args(["--cmdline", &workload.cmdline()])
            .args(["--cpus", &format!("boot={}", workload.vcpus())])
            .args(["--memory", &format!("size={memory_mib}M")])
            .arg("--serial")
            .arg(format!("file={}", console.display()))
            .args(["--console", "off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).context("cannot create Cloud Hypervisor's stderr file")?)
            .spawn()
            .with_context(|| format!("cannot start {}", binaries.cloud_hypervisor.display()))?;
        let started = Instant::now();
        while !socket.exists() {
            if started.elapsed() > SOCKET_TIMEOUT || child.try_wait().ok().flatten().is_some() {
                let _ = child.kill();
                let _ = child.wait();
                let error = anyhow::anyhow!("Cloud Hypervisor made no API socket at {}", socket.display());
                return Err(with_stderr(error, "Cloud Hypervisor", &stderr));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut vm = Self { binaries: binaries.clone(), child, socket, dir };
        let ready = workload
            .await_ready(&console, &mut vm.child, "Cloud Hypervisor")
            .map_err(|e| with_stderr(e, "Cloud Hypervisor", &stderr))?;
        Ok((vm, ready))
    }

    /// Runs `ch-remote` with `args` against this VM.
    fn remote(&self, args: &[&str]) -> Result<()> {
        let output = Command::new(&self.binaries.ch_remote)
            .arg("--api-socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .with_context(|| format!("cannot run {}", self.binaries.ch_remote.display()))?;
        if !output.status.success() {
            bail!(
                "ch-remote {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// Pauses the VM, takes one ELF `coredump`, resumes it, syncs and measures the file, and
    /// removes it.
    pub fn dump(&mut self) -> Result<Sample> {
        let pid = self.child.id();
        let path = self.dir.path().join("vmcore");
        reset_peak_rss(pid)?;
        let destination = format!("file://{}", path.display());
        let asked = Instant::now();
        self.remote(&["pause"])?;
        self.remote(&["coredump", &destination])?;
        let returned = asked.elapsed();
        self.remote(&["resume"])?;
        let pause = asked.elapsed();
        let vmm_peak_kib = peak_rss_kib(pid);
        Sample::of_peer_file("Cloud Hypervisor", &path, pause, returned, vmm_peak_kib)
    }
}

impl Drop for CloudHypervisor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
