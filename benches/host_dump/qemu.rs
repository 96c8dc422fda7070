//! QEMU's side: a `-M microvm` guest with its console in a file, dumped with QMP's
//! `dump-guest-memory` (`paging: false`). QEMU stops the guest for the whole dump, so its pause
//! is the command's return time; its file is in the page cache then, so the bench syncs it
//! apart (open + `fsync`) and counts that too for "ready".

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crashvisor_tests::TempDir;
use serde_json::{json, Value};

use crate::process::{connect_while_alive, peak_rss_kib, reset_peak_rss, with_stderr};
use crate::table::Sample;
use crate::workload::{Kernels, Workload};

/// The QEMU binary.
const QEMU: &str = "qemu-system-x86_64";
/// Debian's package that holds it.
const QEMU_PACKAGE: &str = "qemu-system-x86";
/// Longest wait for the QMP socket.
/// Longest wait for a QMP answer (a dump is one command).
const QMP_TIMEOUT: Duration = Duration::from_secs(1800);

/// Makes sure QEMU is installed: as root, installs Debian's package when it is missing.
pub fn ensure_installed() -> Result<()> {
    if installed() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{QEMU} is missing; install it (as root): apt-get install --no-install-recommends {QEMU_PACKAGE}");
    }
    eprintln!("{QEMU} is missing: installing {QEMU_PACKAGE} with apt-get");
    let install = || apt_get(&["install", "-y", "--no-install-recommends", QEMU_PACKAGE]);
    // A fresh system may have no package lists yet.
    if install().is_err() {
        apt_get(&["update"])?;
        install()?;
    }
    if !installed() {
        bail!("apt-get installed {QEMU_PACKAGE} but {QEMU} still does not run");
    }
    Ok(())
}

fn installed() -> bool {
    Command::new(QEMU).arg("--version").output().is_ok_and(|output| output.status.success())
}

fn apt_get(args: &[&str]) -> Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("apt-get {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// A QEMU microvm and its QMP connection, killed when dropped.
pub struct Qemu {
    child: Child,
    qmp: BufReader<UnixStream>,
    dir: TempDir,
}

impl Qemu {
    /// Boots `workload` with `memory_mib` of RAM and waits until the guest is ready; returns
    /// QEMU and the console line that said so.
    pub fn start(kernels: &Kernels, workload: Workload, memory_mib: u64) -> Result<(Self, String)> {
        let dir = TempDir::new("bench-qemu");
        let (console, socket, stderr) =
            (dir.path().join("console"), dir.path().join("qmp.sock"), dir.path().join("stderr"));
        let kernel = workload.kernel_file(kernels)?;
        let mut child = Command::new(QEMU)
            .args(["-M", "microvm", "-accel", "kvm", "-cpu", "host,-arch-capabilities"])
            .args(["-smp", &workload.vcpus().to_string(), "-m", &format!("{memory_mib}M")])
            .arg("-kernel")
            .arg(kernel)
            .args(["-append", &workload.cmdline(), "-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).context("cannot create QEMU's stderr file")?)
            .spawn()
            .with_context(|| format!("cannot start {QEMU}"))?;
        let stream = match connect_while_alive(&socket, &mut child, QEMU, "QMP", |p| UnixStream::connect(p)) {
            Ok(stream) => stream,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(with_stderr(e, "QEMU", &stderr));
            }
        };
        stream.set_read_timeout(Some(QMP_TIMEOUT)).context("cannot set the QMP socket's timeout")?;
        let mut qemu = Self { child, qmp: BufReader::new(stream), dir };
        let mut greeting = String::new();
        qemu.qmp.read_line(&mut greeting).context("QEMU sent no QMP greeting")?;
        qemu.execute(json!({"execute": "qmp_capabilities"}))?;
        let ready =
            workload.await_ready(&console, &mut qemu.child, "QEMU").map_err(|e| with_stderr(e, "QEMU", &stderr))?;
        Ok((qemu, ready))
    }

    /// Sends a QMP command and returns its `return`, skipping the events that come first.
    fn execute(&mut self, command: Value) -> Result<Value> {
        let mut line = command.to_string();
        line.push('\n');
        self.qmp.get_mut().write_all(line.as_bytes()).context("cannot send a QMP command")?;
        loop {
            let mut reply = String::new();
            if self.qmp.read_line(&mut reply).with_context(|| format!("no QMP answer to {command}"))? == 0 {
                bail!("QEMU closed its QMP socket while running {command}");
            }
            let mut reply: Value =
                serde_json::from_str(&reply).with_context(|| format!("QMP sent something else than JSON: {reply}"))?;
            if let Some(error) = reply.get("error") {
                bail!("QMP {command} failed: {error}");
            }
            if let Some(answer) = reply.get_mut("return") {
                return Ok(answer.take());
            }
        }
    }

    /// Takes one `dump-guest-memory` in `format` (`elf`, `kdump-zlib`), syncs and measures the
    /// file, and removes it.
    pub fn dump(&mut self, format: &str) -> Result<Sample> {
        let pid = self.child.id();
        let path = self.dir.path().join("vmcore");
        reset_peak_rss(pid)?;
        let protocol = format!("file:{}", path.display());
        let arguments = json!({"paging": false, "protocol": protocol, "format": format});
        let asked = Instant::now();
        self.execute(json!({"execute": "dump-guest-memory", "arguments": arguments}))?;
        let returned = asked.elapsed();
        let vmm_peak_kib = peak_rss_kib(pid);
        Sample::of_peer_file("QEMU", &path, returned, returned, vmm_peak_kib)
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
