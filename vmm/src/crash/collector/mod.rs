//! kdump.conf's `core_collector`, run on the host by the crash sink: when a capture kernel hands
//! its vmcore over, a program such as `makedumpfile -l -d 31` reads the crashed kernel's
//! `/proc/vmcore` — the ELF file of the hand-off ([`ProcVmcore`]), served from guest memory by a
//! one-file FUSE filesystem, nothing copied first — and writes the vmcore; its messages go to a
//! log beside it (`core-collector.log`).
//!
//! As kdumpctl runs it: the command's words, then the input path and the output path
//! (`makedumpfile -l -d 31 /proc/vmcore vmcore`). The sink falls back to the producer's own
//! writer when [`collect`] fails.

mod fuse;

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dumpd::image::{open_vmcore, Vmcore};
use dumpd::writer::{MemorySource, Run};

use self::fuse::{FuseMount, ServedFile};
use super::{GuestRam, ProcVmcore, VmcoreStats};

/// Longest a collector may run before it is killed (makedumpfile needs seconds per GiB).
const COLLECTOR_TIMEOUT: Duration = Duration::from_secs(600);
/// How often progress is reported while the collector runs.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// How often the collector is checked for having exited.
const WAIT_INTERVAL: Duration = Duration::from_millis(20);
/// The served file's name, as the capture kernel's would be.
const VMCORE_NAME: &str = "vmcore";
/// Lines of the collector's messages quoted in an error.
const ERROR_LINES: usize = 3;

/// A core collector command: a program and its arguments, split at whitespace (no shell). In a
/// configuration file, the command as one string.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CoreCollector {
    words: Vec<String>,
}

impl TryFrom<String> for CoreCollector {
    type Error = String;

    fn try_from(command: String) -> Result<Self, String> {
        command.parse()
    }
}

impl From<CoreCollector> for String {
    fn from(collector: CoreCollector) -> String {
        collector.to_string()
    }
}

impl std::str::FromStr for CoreCollector {
    type Err = String;

    fn from_str(command: &str) -> Result<Self, String> {
        let words: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
        if words.is_empty() {
            return Err("the core collector is empty: give a command such as \"makedumpfile -l -d 31\"".into());
        }
        Ok(Self { words })
    }
}

impl std::fmt::Display for CoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.words.join(" "))
    }
}

/// Why a collector produced no vmcore.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// The directory for the served `/proc/vmcore` could not be made.
    #[error("cannot create {}", dir.display())]
    MountDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The FUSE filesystem could not be mounted.
    #[error(
        "cannot serve /proc/vmcore through FUSE at {} (the VMM needs /dev/fuse, which `modprobe fuse` \
         provides, and CAP_SYS_ADMIN: run it as root)",
        dir.display()
    )]
    Mount {
        /// The mount point.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The log file could not be written.
    #[error("cannot write the collector's log")]
    Log(#[source] io::Error),
    /// The output could not be opened or measured.
    #[error("cannot open the core collector's output {}", path.display())]
    Open {
        /// The output.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The program could not be started.
    #[error("cannot run {program:?} (is it installed and on PATH?)")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The program failed.
    #[error("the core collector {status}: {last_lines}")]
    Exit {
        /// How it ended.
        status: ExitStatus,
        /// The end of its messages.
        last_lines: String,
    },
    /// The program ran too long and was killed.
    #[error("the core collector ran for more than {0:?} and was killed")]
    Timeout(Duration),
    /// Serving `/proc/vmcore` failed.
    #[error("serving /proc/vmcore to the collector failed")]
    Serve(#[source] io::Error),
    /// The program succeeded but its output is no vmcore.
    #[error("the core collector's output {} is not a vmcore dumpd can read", path.display())]
    Output {
        /// The output.
        path: PathBuf,
        /// Why.
        #[source]
        source: dumpd::image::OpenError,
    },
}

/// A [`ProcVmcore`] as a file: its headers, then its runs of guest memory at their file
/// offsets, zeros in between.
struct ServedVmcore<'a> {
    headers: &'a [u8],
    runs: &'a [Run],
    size: u64,
    memory: GuestRam<'a>,
}

impl ServedFile for ServedVmcore<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0);
        let end = offset + buf.len() as u64;
        if let Some(headers) = self.headers.get(offset as usize..) {
            let n = headers.len().min(buf.len());
            buf[..n].copy_from_slice(&headers[..n]);
        }
        let first = self.runs.partition_point(|r| r.file_offset + r.len <= offset);
        for run in self.runs[first..].iter().take_while(|r| r.file_offset < end) {
            let from = offset.max(run.file_offset);
            let to = end.min(run.file_offset + run.len);
            let dest = &mut buf[(from - offset) as usize..(to - offset) as usize];
            self.memory.read(run.addr + (from - run.file_offset), dest).map_err(io::Error::other)?;
        }
        Ok(())
    }
}

/// A temporary directory removed when dropped (after the mount on it is gone).
struct MountDir(PathBuf);

/// Names a mount directory `crashvisor-vmcore-<pid of the VMM>-<n>` in the temporary directory.
const MOUNT_DIR_PREFIX: &str = "crashvisor-vmcore-";

/// Unmounts and removes the mount directories of VMMs that died while their collector ran
/// (`kill -9` leaves the mount, dead: every access to it fails with ENOTCONN). A pid that runs
/// again (reused) keeps its directory, which is only left for later.
fn remove_mounts_of_dead_vmms(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(MOUNT_DIR_PREFIX)).and_then(|rest| {
            let (pid, n) = rest.split_once('-')?;
            n.bytes().all(|b| b.is_ascii_digit()).then(|| pid.parse::<u32>().ok()).flatten()
        }) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = entry.path();
        fuse::unmount(&path);
        match std::fs::remove_dir(&path) {
            Ok(()) => tracing::info!("removed {}, left by a VMM that died during its core collector", path.display()),
            Err(e) => tracing::warn!("cannot remove {}, left by a dead VMM: {e}", path.display()),
        }
    }
}

impl Drop for MountDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.0) {
            tracing::warn!("cannot remove {}: {e}", self.0.display());
        }
    }
}

/// A collector's vmcore.
pub struct Collected {
    /// The vmcore, open.
    pub file: File,
    /// Its size (the collector wrote all of it, as far as the VMM knows).
    pub stats: VmcoreStats,
    /// `meta.json`'s `vmcore_format`: `kdump` for makedumpfile's compressed format, none for ELF.
    pub format: Option<String>,
}

/// Runs `collector` on `vmcore` and has it write `output`; its messages go to `log` (created
/// first, so it is there whatever happens). Calls `progress(bytes of guest memory read, bytes in
/// the runs)` now and then (the first at most the second: a collector may read a page twice,
/// and skips those it filters out). On failure, no `output` is left behind.
pub fn collect(
    collector: &CoreCollector,
    vmcore: ProcVmcore<'_>,
    output: &Path,
    log: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Collected, CollectorError> {
    let collected = run_on_mount(collector, vmcore, output, log, progress).and_then(|()| open_output(output));
    if collected.is_err() {
        if let Err(e) = std::fs::remove_file(output) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!("cannot remove the core collector's output {}: {e}", output.display());
            }
        }
    }
    collected
}

/// Mounts the served `/proc/vmcore`, runs the collector on it and checks how it ended.
fn run_on_mount(
    collector: &CoreCollector,
    vmcore: ProcVmcore<'_>,
    output: &Path,
    log: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), CollectorError> {
    let mut log_file = File::create(log).map_err(CollectorError::Log)?;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    remove_mounts_of_dead_vmms(&std::env::temp_dir());
    let dir = std::env::temp_dir().join(format!("{MOUNT_DIR_PREFIX}{}-{n}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|source| CollectorError::MountDir { dir: dir.clone(), source })?;
    let dir = MountDir(dir);
    let mount =
        FuseMount::mount(&dir.0, VMCORE_NAME).map_err(|source| CollectorError::Mount { dir: dir.0.clone(), source })?;
    let input = mount.file_path();
    writeln!(log_file, "core_collector: {collector} {} {}", input.display(), output.display())
        .map_err(CollectorError::Log)?;

    let core = vmcore.core;
    let total: u64 = core.runs.iter().map(|r| r.len).sum();
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let status = std::thread::scope(|s| {
        let server = s.spawn(|| {
            let memory = GuestRam::counting(vmcore.memory, &done);
            let file = ServedVmcore { headers: &core.headers, runs: &core.runs, size: core.file_size, memory };
            mount.serve(&file, &stop)
        });
        let status =
            run(collector, &input, output, &log_file, &mut || progress(done.load(Ordering::Relaxed).min(total), total));
        stop.store(true, Ordering::Release);
        let served = server.join().unwrap_or_else(|_| Err(io::Error::other("the FUSE server panicked")));
        served.map_err(CollectorError::Serve)?;
        status
    });
    drop(mount);
    let status = status?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let last_lines = lines[lines.len().saturating_sub(ERROR_LINES)..].join(" / ");
        return Err(CollectorError::Exit { status, last_lines });
    }
    Ok(())
}

/// Opens a successful collector's output, which must be a vmcore dumpd reads.
fn open_output(output: &Path) -> Result<Collected, CollectorError> {
    let format = match open_vmcore(output) {
        Ok(Vmcore::Kdump(_)) => Some("kdump".to_owned()),
        Ok(Vmcore::Elf(_)) => None,
        Err(source) => return Err(CollectorError::Output { path: output.to_path_buf(), source }),
    };
    let opened = File::open(output).and_then(|file| Ok((file.metadata()?.len(), file)));
    let (len, file) = opened.map_err(|source| CollectorError::Open { path: output.to_path_buf(), source })?;
    Ok(Collected { file, stats: VmcoreStats { file_bytes: len, written_bytes: len, zero_pages_skipped: 0 }, format })
}

/// Starts the collector with `input` and `output` after its words and waits for it, calling
/// `tick` every [`PROGRESS_INTERVAL`]; kills it after [`COLLECTOR_TIMEOUT`].
fn run(
    collector: &CoreCollector,
    input: &Path,
    output: &Path,
    log: &File,
    tick: &mut dyn FnMut(),
) -> Result<ExitStatus, CollectorError> {
    let (program, args) = collector.words.split_first().expect("FromStr refuses an empty command");
    let spawn_error = |source| CollectorError::Spawn { program: program.clone(), source };
    let mut child: Child = Command::new(program)
        .args(args)
        .arg(input)
        .arg(output)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(CollectorError::Log)?)
        .stderr(log.try_clone().map_err(CollectorError::Log)?)
        .spawn()
        .map_err(spawn_error)?;
    let started = Instant::now();
    let mut last_tick = started;
    loop {
        if let Some(status) = child.try_wait().map_err(spawn_error)? {
            tick();
            return Ok(status);
        }
        if started.elapsed() > COLLECTOR_TIMEOUT {
            // The child is ours; kill and reap it.
            let _ = child.kill();
            let _ = child.wait();
            return Err(CollectorError::Timeout(COLLECTOR_TIMEOUT));
        }
        if last_tick.elapsed() >= PROGRESS_INTERVAL {
            tick();
            last_tick = Instant::now();
        }
        std::thread::sleep(WAIT_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::dump::tests::{assert_crash_matches, guest, run_dump, TestDir};
    use crashvisor_abi::platform::STATUS_OK;
    use crashvisor_control::Event;
    use dumpd::store::{CoreCollectorMeta, CrashStore, FILE_CORE_COLLECTOR_LOG};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    #[test]
    fn mount_directories_of_dead_vmms_go_and_those_of_live_ones_stay() {
        let tmp = TestDir::new("collector-mounts");
        std::fs::create_dir_all(&tmp.0).unwrap();
        let mut child = Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let live = std::process::id();
        let dir = |name: String| {
            let path = tmp.0.join(name);
            std::fs::create_dir(&path).unwrap();
            path
        };
        let of_dead = dir(format!("{MOUNT_DIR_PREFIX}{dead}-3"));
        let of_live = dir(format!("{MOUNT_DIR_PREFIX}{live}-0"));
        let other = dir(format!("{MOUNT_DIR_PREFIX}{dead}-x"));
        remove_mounts_of_dead_vmms(&tmp.0);
        assert!(!of_dead.exists(), "a dead VMM's directory is removed");
        assert!(of_live.exists() && other.exists(), "a live VMM's directory and a stranger stay");
    }

    #[test]
    fn commands_are_words() {
        let c: CoreCollector = "  makedumpfile -l\t-d 31 ".parse().unwrap();
        assert_eq!(c.words, ["makedumpfile", "-l", "-d", "31"]);
        assert_eq!(c.to_string(), "makedumpfile -l -d 31");
        assert!(" ".parse::<CoreCollector>().unwrap_err().contains("empty"));
        assert_eq!(serde_json::to_value(&c).unwrap(), "makedumpfile -l -d 31");
        assert_eq!(serde_json::from_value::<CoreCollector>("cp".into()).unwrap().words, ["cp"]);
        assert!(serde_json::from_value::<CoreCollector>("".into()).is_err());
    }

    /// kdump.conf's simplest collector, `cp`, copies the served `/proc/vmcore` of a hand-off
    /// byte for byte; a failing one leaves the built-in writer's vmcore and says why in
    /// meta.json. Needs what the VMM needs to run a collector (root, /dev/fuse).
    #[test]
    fn the_sink_has_the_core_collector_write_a_hand_off() {
        let store = TestDir::new("dump-collector");
        let g = guest();
        g.install();
        let mut target = store.target();
        target.core_collector = Some("cp".parse().unwrap());
        let (status, events) = run_dump(&g.memory, target, None);
        assert_eq!(status, STATUS_OK, "{events:?}");
        let crash = &CrashStore::open(&store.0).unwrap().list().unwrap()[0];
        let meta = crash.meta.as_ref().unwrap();
        assert_eq!(
            meta.core_collector,
            Some(CoreCollectorMeta { command: "cp".into(), collected: true, error: None }),
            "a core collector needs root and /dev/fuse (`modprobe fuse`; .ci/run loads it)"
        );
        assert_eq!(meta.files.core_collector_log.as_deref(), Some(FILE_CORE_COLLECTOR_LOG));
        assert_eq!(meta.dump_level, Some(g.descriptor.dump_level), "the hand-off describes the crash");
        assert_crash_matches(&crash.path, &g);
        let log = std::fs::read_to_string(crash.path.join(FILE_CORE_COLLECTOR_LOG)).unwrap();
        assert!(log.starts_with("core_collector: cp /"), "{log}");
        let total: u64 = g.ranges.iter().map(|r| r.len).sum();
        assert!(events.contains(&Event::DumpProgress { done: total, total }), "{events:?}");
        assert!(matches!(events.last(), Some(Event::VmcoreReady { .. })), "{events:?}");

        let failing = TestDir::new("dump-collector-failing");
        let mut target = failing.target();
        target.core_collector = Some("false".parse().unwrap());
        assert_eq!(run_dump(&g.memory, target, None).0, STATUS_OK);
        let crash = &CrashStore::open(&failing.0).unwrap().list().unwrap()[0];
        let collector = crash.meta.as_ref().unwrap().core_collector.clone().unwrap();
        assert!(!collector.collected);
        assert!(collector.error.unwrap().contains("exit status: 1"));
        assert_crash_matches(&crash.path, &g);
    }

    #[test]
    fn the_served_file_is_headers_then_runs_of_memory() {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        memory.write_slice(&[0xaa; 0x100], GuestAddress(0x1000)).unwrap();
        memory.write_slice(&[0xbb; 0x100], GuestAddress(0x3000)).unwrap();
        let runs = [
            Run { file_offset: 0x1000, addr: 0x1000, len: 0x100 },
            Run { file_offset: 0x2000, addr: 0x3000, len: 0x80 },
        ];
        let file = ServedVmcore { headers: b"ELF!", runs: &runs, size: 0x3000, memory: GuestRam::new(&memory) };
        let mut all = vec![0xffu8; 0x3000];
        file.read_at(0, &mut all).unwrap();
        assert_eq!(&all[..5], b"ELF!\0");
        assert!(all[0x1000..0x1100].iter().all(|&b| b == 0xaa) && all[0x1100] == 0);
        assert!(all[0x2000..0x2080].iter().all(|&b| b == 0xbb) && all[0x2080] == 0);
        let mut piece = [0xffu8; 0x20];
        file.read_at(0x10f0, &mut piece).unwrap();
        assert_eq!(piece[..0x10], [0xaa; 0x10]);
        assert_eq!(piece[0x10..], [0; 0x10]);
        file.read_at(0x2070, &mut piece).unwrap();
        assert_eq!(piece[..0x10], [0xbb; 0x10]);
    }
}
