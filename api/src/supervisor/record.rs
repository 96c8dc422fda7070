//! The state directory (`crashvisor serve --state-dir`): what a restarted service needs to find
//! its VMs again. One directory per VM under `vms/`, holding the VM's record (`vm.json`: its
//! spec, its last known state and counters with the vmcores announced for it, its VMM's identity
//! and control socket), the VMM's configuration (`vmm.json`), its console (`console.log`) and its
//! stderr (`vmm.log`); `run-dir` names the run directory the service made for itself, which the
//! next one reuses, and `event-seq` the first event number no service has used. Records are written whole and atomically (temporary file, `fsync`, rename);
//! one service at a time holds the directory (`flock` on `lock`).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use dumpd::atomic::AtomicFile;
use serde::{Deserialize, Serialize};

use super::spec::VmSpec;
use super::state::Tracker;

/// The record format this service writes and reads.
pub const RECORD_FORMAT: u32 = 1;
/// A VM's record in its directory.
const FILE_RECORD: &str = "vm.json";
/// The VMM's configuration (`vmm --config`).
const FILE_CONFIG: &str = "vmm.json";
/// The guest's console, as the VMM writes it (its stdout).
const FILE_CONSOLE: &str = "console.log";
/// The VMM's stderr.
const FILE_STDERR: &str = "vmm.log";
/// The lock one service holds on the state directory.
const FILE_LOCK: &str = "lock";
/// How long a service waits for the lock before it says another service holds it.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// How often it tries meanwhile.
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(20);
/// The run directory a service made for itself (no `--run-dir`), for the next one to reuse.
const FILE_RUN_DIR: &str = "run-dir";
/// The first event sequence number no service has used (events.rs reserves them in blocks).
const FILE_EVENT_SEQ: &str = "event-seq";

/// What went wrong with the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// A file or directory could not be read, written or created.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another service holds the directory.
    #[error(
        "another crashvisor serve uses the state directory {} (its VMs are its own); stop it, or give this one \
         another --state-dir",
        .0.display()
    )]
    InUse(PathBuf),
    /// A record that is not one this service can read.
    #[error("the VM record {} cannot be read: {reason}", path.display())]
    Corrupt {
        /// The record file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A record could not be written atomically.
    #[error(transparent)]
    Atomic(#[from] dumpd::atomic::AtomicFileError),
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateDirError {
    let path = path.to_path_buf();
    move |source| StateDirError::Io { action, path, source }
}

/// The identity of a VMM process: its pid and its start time (field 22 of `/proc/PID/stat`,
/// clock ticks after boot), so that a pid reused by another process is not taken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmIdentity {
    /// The process id.
    pub pid: u32,
    /// Its start time in clock ticks after boot.
    pub start_time: u64,
}

/// What became of a recorded VMM process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// It runs.
    Alive,
    /// It ended (no such process, a zombie, or another process under its pid).
    Ended,
}

impl VmmIdentity {
    /// The identity of the running process `pid`.
    pub fn of(pid: u32) -> Result<Self, StateDirError> {
        let path = PathBuf::from(format!("/proc/{pid}/stat"));
        let text = std::fs::read_to_string(&path).map_err(io("read", &path))?;
        let stat = parse_stat(&text).map_err(|reason| StateDirError::Corrupt { path, reason })?;
        Ok(Self { pid, start_time: stat.start_time })
    }

    /// Whether this very process still runs.
    pub fn liveness(&self) -> Liveness {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        liveness_of(self, &text)
    }
}

/// What a `/proc/PID/stat` line (`text`, empty when there is none) says of `identity`.
fn liveness_of(identity: &VmmIdentity, text: &str) -> Liveness {
    match parse_stat(text) {
        Ok(stat) if stat.start_time == identity.start_time && stat.state != 'Z' && stat.state != 'X' => Liveness::Alive,
        _ => Liveness::Ended,
    }
}

/// The fields of `/proc/PID/stat` used here.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), ...
    state: char,
    /// Field 22: start time in clock ticks after boot.
    start_time: u64,
}

/// Parses a `/proc/PID/stat` line. The command name (field 2) is in parentheses and may hold
/// spaces and parentheses itself, so the fields are counted after its last `)`.
fn parse_stat(text: &str) -> Result<Stat, String> {
    let rest = text.rsplit_once(')').map(|(_, rest)| rest).ok_or("no command name in parentheses")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (the state); field 22 is 19 further.
    let state = fields.first().and_then(|s| s.chars().next()).ok_or("no process state")?;
    let start_time = fields.get(19).ok_or("fewer than 22 fields")?;
    let start_time = start_time.parse().map_err(|e| format!("start time {start_time:?}: {e}"))?;
    Ok(Stat { state, start_time })
}

/// Everything the state directory holds about one VM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmRecord {
    /// [`RECORD_FORMAT`].
    pub format: u32,
    /// The VM's configuration.
    pub spec: VmSpec,
    /// When the VM was created, ms since the epoch.
    pub created_unix_ms: u64,
    /// Its VMM's control socket.
    pub control_socket: PathBuf,
    /// Its running VMM, if any (none yet while it is being started).
    pub vmm: Option<VmmIdentity>,
    /// Its last known state and counters, among them the vmcores announced for it.
    pub status: Tracker,
}

/// A VM's record, or why it cannot be read.
pub type RecordRead = Result<VmRecord, StateDirError>;

/// The state directory, held by this service.
#[derive(Debug)]
pub struct StateDir {
    root: PathBuf,
    _lock: File,
}

/// One VM's directory in the state directory.
#[derive(Clone, Debug)]
pub struct VmDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens (creates, mode 0700) the state directory and takes its lock.
    pub fn open(root: &Path) -> Result<Self, StateDirError> {
        use std::os::unix::fs::DirBuilderExt;
        let vms = root.join("vms");
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&vms).map_err(io("create", &vms))?;
        let lock_path = root.join(FILE_LOCK);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("open", &lock_path))?;
        // A service killed while it started a VMM leaves the lock to that child until it has
        // exec'd (the descriptor is close-on-exec): a few milliseconds, which a service started
        // at once waits out. A live service holds it for good.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            // SAFETY: flock(2) on a descriptor this function owns; it touches no memory.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Self { root: root.to_path_buf(), _lock: lock });
            }
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io("lock", &lock_path)(error));
            }
            if std::time::Instant::now() >= deadline {
                return Err(StateDirError::InUse(root.to_path_buf()));
            }
            std::thread::sleep(LOCK_RETRY);
        }
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The run directory the last service made for itself, if it named one.
    pub fn run_dir(&self) -> Option<PathBuf> {
        let text = std::fs::read_to_string(self.root.join(FILE_RUN_DIR)).ok()?;
        Some(PathBuf::from(text.trim_end_matches('\n'))).filter(|p| p.is_absolute())
    }

    /// Names the run directory this service made for itself (`None`: it was given one).
    pub fn set_run_dir(&self, dir: Option<&Path>) -> Result<(), StateDirError> {
        let path = self.root.join(FILE_RUN_DIR);
        match dir {
            Some(dir) => {
                let file = AtomicFile::create(&path)?;
                let text = format!("{}\n", dir.display());
                file.file().write_all(text.as_bytes()).map_err(io("write", &path))?;
                Ok(file.commit()?)
            }
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &path)(e)),
                _ => Ok(()),
            },
        }
    }

    /// The first event sequence number no earlier service used (1 for a new directory).
    pub fn event_seq(&self) -> u64 {
        let path = self.root.join(FILE_EVENT_SEQ);
        match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().unwrap_or_else(|e| {
                tracing::warn!("{} is not a number ({e}); event numbers start again at 1", path.display());
                1
            }),
            Err(_) => 1,
        }
    }

    /// Records `next` as the first event sequence number no service may have used (an error is
    /// logged: the next service could then reuse numbers).
    pub fn reserve_event_seq(&self) -> impl Fn(u64) + Send + Sync + 'static {
        let path = self.root.join(FILE_EVENT_SEQ);
        move |next| {
            let written = AtomicFile::create(&path).map_err(StateDirError::from).and_then(|file| {
                file.file().write_all(format!("{next}\n").as_bytes()).map_err(io("write", &path))?;
                Ok(file.commit()?)
            });
            if let Err(e) = written {
                tracing::error!("cannot reserve event numbers, so the next service may reuse them: {e}");
            }
        }
    }

    /// The directory of VM `name` (a name the crash store accepts, so a safe file name).
    pub fn vm(&self, name: &str) -> VmDir {
        VmDir { dir: self.root.join("vms").join(name) }
    }

    /// The VMs recorded, by name, each with its record or why it cannot be read. A directory
    /// with no record is removed: its VM was being created or deleted when the last service
    /// died, and no VMM is started before the first record is on disk.
    pub fn scan(&self) -> Result<Vec<(String, RecordRead)>, StateDirError> {
        let vms = self.root.join("vms");
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&vms).map_err(io("read", &vms))? {
            let entry = entry.map_err(io("read", &vms))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            if dumpd::store::validate_vm_name(&name).is_err() || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let vm = self.vm(&name);
            vm.sweep();
            if !vm.dir.join(FILE_RECORD).exists() {
                tracing::info!("removing {}: it holds no VM record", vm.dir.display());
                vm.remove()?;
                continue;
            }
            found.push((name, vm.read()));
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found)
    }
}

impl VmDir {
    /// Creates the directory (empty: a VM of the same name before it is gone).
    pub fn create(&self) -> Result<(), StateDirError> {
        self.remove()?;
        std::fs::create_dir(&self.dir).map_err(io("create", &self.dir))
    }

    /// Removes the directory and everything in it.
    pub fn remove(&self) -> Result<(), StateDirError> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &self.dir)(e)),
            _ => Ok(()),
        }
    }

    /// Removes temporary files a killed service left half written (the directory's lock is
    /// held: no other writer runs).
    fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            if entry.file_name().to_str().is_some_and(|n| n.starts_with('.') && n.contains(".tmp-")) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// The VMM's configuration file.
    pub fn config(&self) -> PathBuf {
        self.dir.join(FILE_CONFIG)
    }

    /// The console file.
    pub fn console(&self) -> PathBuf {
        self.dir.join(FILE_CONSOLE)
    }

    /// The VMM's stderr file.
    pub fn stderr(&self) -> PathBuf {
        self.dir.join(FILE_STDERR)
    }

    /// Writes `record` atomically.
    pub fn write(&self, record: &VmRecord) -> Result<(), StateDirError> {
        let path = self.dir.join(FILE_RECORD);
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|e| StateDirError::Corrupt { path: path.clone(), reason: format!("cannot encode it: {e}") })?;
        let file = AtomicFile::create(&path)?;
        file.file().write_all(&bytes).map_err(io("write", &path))?;
        Ok(file.commit()?)
    }

    /// Reads the record.
    pub fn read(&self) -> Result<VmRecord, StateDirError> {
        let path = self.dir.join(FILE_RECORD);
        let bytes = std::fs::read(&path).map_err(io("read", &path))?;
        let corrupt = |reason: String| StateDirError::Corrupt { path: path.clone(), reason };
        let record: VmRecord = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if record.format != RECORD_FORMAT {
            return Err(corrupt(format!("format {}, this service reads format {RECORD_FORMAT}", record.format)));
        }
        Ok(record)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn temp_root(hint: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("crashvisor-state-{hint}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        root
    }

    pub(crate) fn record() -> VmRecord {
        let spec = crate::supervisor::spec::CreateVm { name: Some("web-1".into()), ..Default::default() };
        VmRecord {
            format: RECORD_FORMAT,
            spec: spec.into_spec("vm-1".into()).unwrap(),
            created_unix_ms: 1_700_000_000_000,
            control_socket: "/run/x/web-1.sock".into(),
            vmm: Some(VmmIdentity { pid: 42, start_time: 1234 }),
            status: Tracker::new(),
        }
    }

    #[test]
    fn records_round_trip_and_are_replaced_whole() {
        let root = temp_root("roundtrip");
        let state = StateDir::open(&root).unwrap();
        let vm = state.vm("web-1");
        vm.create().unwrap();
        let mut r = record();
        vm.write(&r).unwrap();
        assert_eq!(vm.read().unwrap(), r);
        r.vmm = None;
        vm.write(&r).unwrap();
        assert_eq!(vm.read().unwrap(), r);
        let files = || -> Vec<_> {
            std::fs::read_dir(root.join("vms/web-1")).unwrap().map(|e| e.unwrap().file_name()).collect()
        };
        assert_eq!(files(), ["vm.json"], "no temporary file is left");
        std::fs::write(root.join("vms/web-1/.vm.json.tmp-1-0"), "{").unwrap();
        let scanned = state.scan().unwrap();
        assert_eq!(scanned.len(), 1);
        assert_eq!(scanned[0].1.as_ref().unwrap(), &r);
        assert_eq!(files(), ["vm.json"], "a killed writer's temporary file is swept");
        vm.remove().unwrap();
        assert!(state.scan().unwrap().is_empty());
        drop(state);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_run_directory_is_remembered() {
        let root = temp_root("rundir");
        let state = StateDir::open(&root).unwrap();
        assert_eq!(state.run_dir(), None);
        state.set_run_dir(Some(Path::new("/tmp/crashvisor-7"))).unwrap();
        assert_eq!(state.run_dir(), Some(PathBuf::from("/tmp/crashvisor-7")));
        state.set_run_dir(None).unwrap();
        assert_eq!(state.run_dir(), None);
        state.set_run_dir(None).unwrap();
        drop(state);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn event_numbers_are_remembered() {
        let root = temp_root("seq");
        let state = StateDir::open(&root).unwrap();
        assert_eq!(state.event_seq(), 1);
        state.reserve_event_seq()(4097);
        assert_eq!(state.event_seq(), 4097);
        drop(state);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn one_service_holds_the_directory() {
        let root = temp_root("lock");
        let first = StateDir::open(&root).unwrap();
        let second = StateDir::open(&root).unwrap_err().to_string();
        assert!(second.contains("another crashvisor serve") && second.contains("--state-dir"), "{second}");
        drop(first);
        assert!(StateDir::open(&root).is_ok(), "free again once the first is gone");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_lock_left_to_a_starting_child_is_waited_out() {
        use std::os::unix::process::CommandExt;
        let root = temp_root("lock-child");
        let first = StateDir::open(&root).unwrap();
        let fd = first._lock.as_raw_fd();
        // As a VMM the service was starting when it was killed: a child that shares the lock's
        // open file description for a while (here past its exec, as `sleep`).
        let mut command = std::process::Command::new("sleep");
        command.arg("0.3");
        // SAFETY: the closure only calls fcntl(2), which is async-signal-safe, on a descriptor
        // the child inherited.
        unsafe {
            command.pre_exec(move || match libc::fcntl(fd, libc::F_SETFD, 0) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            })
        };
        let mut child = command.spawn().unwrap();
        drop(first);
        let start = std::time::Instant::now();
        let second = StateDir::open(&root);
        assert!(second.is_ok(), "{:?}", second.err());
        assert!(start.elapsed() >= std::time::Duration::from_millis(200), "the child held the lock");
        child.wait().unwrap();
        drop(second);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn corrupt_records_are_named_errors() {
        let root = temp_root("corrupt");
        let state = StateDir::open(&root).unwrap();
        let vm = state.vm("bad");
        vm.create().unwrap();
        for (bytes, expect) in [
            (&b"{\"format\": 1, \"spec\": "[..], "EOF"),
            (&b"\xff\xfe"[..], "expected value"),
            (&b"{}"[..], "missing field"),
        ] {
            std::fs::write(root.join("vms/bad/vm.json"), bytes).unwrap();
            let error = vm.read().unwrap_err().to_string();
            assert!(error.contains("vms/bad/vm.json") && error.contains(expect), "{error}");
        }
        let mut future = serde_json::to_value(record()).unwrap();
        future["format"] = 2.into();
        std::fs::write(root.join("vms/bad/vm.json"), future.to_string()).unwrap();
        assert!(vm.read().unwrap_err().to_string().contains("format 2"));
        let scanned = state.scan().unwrap();
        assert!(scanned[0].1.is_err(), "a bad record is reported, not skipped");
        std::fs::remove_file(root.join("vms/bad/vm.json")).unwrap();
        let missing = vm.read().unwrap_err().to_string();
        assert!(missing.contains("cannot read") && missing.contains("vm.json"), "{missing}");
        std::fs::write(root.join("vms/bad/console.log"), "half deleted").unwrap();
        assert!(state.scan().unwrap().is_empty(), "a directory without a record is not a VM");
        assert!(!root.join("vms/bad").exists(), "and it is removed");
        drop(state);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn stat_lines_parse_past_odd_command_names() {
        let line = "77 (vm (x) y) S 1 77 77 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 3 0 98765 1000 20 18446744073709551615";
        assert_eq!(parse_stat(line), Ok(Stat { state: 'S', start_time: 98765 }));
        assert!(parse_stat("77 (vm) S 1 2").unwrap_err().contains("fewer than 22"));
        assert!(parse_stat("garbage").is_err());
        assert!(parse_stat("").is_err());
    }

    #[test]
    fn a_reused_pid_or_a_zombie_is_not_the_vmm() {
        let identity = VmmIdentity { pid: 77, start_time: 98765 };
        let line =
            |state: char, start: u64| format!("77 (vmm) {state} 1 77 77 0 -1 0 0 0 0 0 0 0 0 0 20 0 3 0 {start} 0");
        assert_eq!(liveness_of(&identity, &line('S', 98765)), Liveness::Alive);
        assert_eq!(liveness_of(&identity, &line('S', 98766)), Liveness::Ended, "another process, same pid");
        assert_eq!(liveness_of(&identity, &line('Z', 98765)), Liveness::Ended, "exited, not yet reaped");
        assert_eq!(liveness_of(&identity, ""), Liveness::Ended, "no such process");
        let me = VmmIdentity::of(std::process::id()).unwrap();
        assert_eq!(me.liveness(), Liveness::Alive);
        assert_eq!(VmmIdentity { start_time: me.start_time + 1, ..me }.liveness(), Liveness::Ended);
    }
}
