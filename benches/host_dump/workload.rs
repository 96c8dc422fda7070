//! The guests the bench dumps: the fill kernel with half or all of its RAM filled with noise,
//! and crashvisor's idle guest kernel. Each is booted, on either VMM, with its console in a
//! file, and dumped once the console says it is ready.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crashvisor_tests::PROMPT;

/// Longest wait for a guest to be ready: filling 4 GiB takes seconds natively, and much longer
/// when other work keeps the host's cores busy.
const READY_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the console file is read while waiting.
const CONSOLE_POLL: Duration = Duration::from_millis(20);
/// Console lines shown when a guest never gets ready.
const CONSOLE_TAIL_LINES: usize = 20;
/// The fill kernel's line once RAM is filled (its crate documentation defines it).
const FILL_DONE: &str = "fill: done ";

/// A guest the bench dumps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// The fill kernel, `fill=half`: every even 4 KiB page noise, odd pages untouched.
    Half,
    /// The fill kernel, `fill=full`: every page noise.
    Full,
    /// crashvisor's guest kernel at its shell prompt: RAM mostly never touched.
    Idle,
}

/// The kernels the workloads boot.
pub struct Kernels {
    /// The fill kernel's ELF image.
    pub fill: PathBuf,
    /// crashvisor's guest kernel (embedded in `vmm`; QEMU needs it as a file), when an idle
    /// row is measured.
    pub guest: Option<PathBuf>,
}

impl Workload {
    /// Parses a name of `HOST_DUMP_WORKLOADS`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "half" => Ok(Self::Half),
            "full" => Ok(Self::Full),
            "idle" => Ok(Self::Idle),
            other => bail!("unknown workload {other:?} (expected half, full or idle)"),
        }
    }

    /// The table heading that names the workload.
    pub fn heading(self) -> &'static str {
        match self {
            Self::Half => "fill kernel, half filled: every even 4 KiB page noise, odd pages untouched (1 vCPU)",
            Self::Full => "fill kernel, fully filled: every 4 KiB page noise (1 vCPU)",
            Self::Idle => "idle guest: crashvisor's guest kernel at its shell prompt, RAM mostly untouched (2 vCPUs)",
        }
    }

    /// vCPUs of the guest.
    pub fn vcpus(self) -> u8 {
        match self {
            Self::Half | Self::Full => 1,
            Self::Idle => 2,
        }
    }

    /// The fill kernel's mode (`fill=` on its command line, `mode=` in its lines).
    fn fill_mode(self) -> Option<&'static str> {
        match self {
            Self::Half => Some("half"),
            Self::Full => Some("full"),
            Self::Idle => None,
        }
    }

    /// The kernel command line.
    pub fn cmdline(self) -> String {
        match self.fill_mode() {
            Some(mode) => format!("fill={mode}"),
            None => "console=ttyS0".into(),
        }
    }

    /// Whether this is crashvisor's own guest kernel, which our VMM boots from its embedded
    /// copy (no `--kernel`).
    pub fn is_embedded_kernel(self) -> bool {
        self == Self::Idle
    }

    /// The kernel file to boot.
    pub fn kernel_file(self, kernels: &Kernels) -> Result<&Path> {
        match self {
            Self::Half | Self::Full => Ok(kernels.fill.as_path()),
            Self::Idle => kernels.guest.as_deref().context("crashvisor's guest kernel was not extracted"),
        }
    }

    /// The console text that says the guest is ready to be dumped: the fill kernel's `fill:
    /// done` line, or the shell prompt.
    fn ready(self, console: &str) -> Option<String> {
        match self {
            Self::Half | Self::Full => {
                let start = console.find(FILL_DONE)?;
                let line = console[start..].split_inclusive('\n').next()?;
                line.ends_with('\n').then(|| line.trim_end().to_owned())
            }
            Self::Idle => console.contains(PROMPT).then(|| PROMPT.trim_end().to_owned()),
        }
    }

    /// Waits until the console file of `vm` (a VMM process) says the guest is ready, and
    /// returns what it said. `who` names the VMM in errors.
    pub fn await_ready(self, console: &Path, vm: &mut Child, who: &str) -> Result<String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let text = String::from_utf8_lossy(&std::fs::read(console).unwrap_or_default()).into_owned();
            if let Some(line) = self.ready(&text) {
                if let Some(mode) = self.fill_mode().filter(|mode| !line.contains(&format!(" mode={mode} "))) {
                    bail!("{who}: the fill kernel was asked for fill={mode} but said: {line}");
                }
                return Ok(line);
            }
            let exited = vm.try_wait().with_context(|| format!("cannot wait for {who}"))?;
            if let Some(status) = exited {
                bail!("{who} exited ({status}) before the guest was ready; its console ended:\n{}", tail(&text));
            }
            if Instant::now() >= deadline {
                bail!("{who}: the guest was not ready after {READY_TIMEOUT:?}; its console ends:\n{}", tail(&text));
            }
            std::thread::sleep(CONSOLE_POLL);
        }
    }
}

/// The last lines of a console, for errors.
fn tail(console: &str) -> String {
    let lines: Vec<&str> = console.lines().collect();
    lines[lines.len().saturating_sub(CONSOLE_TAIL_LINES)..].join("\n")
}
