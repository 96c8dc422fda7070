//! The summary `crash` prints when it opens a dump: the machine (CPUs, memory, utsname), when
//! it crashed and after how long (`CRASHTIME`, `NUMBER(crashvisor_uptime_ns)`), the task count,
//! and the panic — its message, CPU and task, from the crash reason the kernel records
//! (`SYMBOL(crashvisor_crash_reason)`). `LOAD AVERAGE` is left out: the kernel keeps none.

use std::fmt;

use crashvisor_klib::le::get_u32;
use serde::Serialize;

use super::tasks::{Task, TaskList};
use super::vmcoreinfo::optional;
use super::{c_string, error_chain, AnalysisError, Dump};

/// Length of each `struct new_utsname` field.
const UTS_FIELD_LEN: usize = 65;
/// Largest `SIZE(crashvisor_crash_reason)` accepted.
const MAX_REASON_SIZE: u64 = 4096;
/// `crash_reason.cpu` before any crash.
const NO_CRASH_CPU: u32 = u32::MAX;

/// The panic as the dump records it: what the analyser reads, through VMCOREINFO, of the
/// crash reason the kernel filled in (`crashvisor_abi::platform::CrashReason`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PanicReport {
    /// The CPU that panicked (or entered kdump from an oops).
    pub cpu: u32,
    /// The pid current on that CPU.
    pub pid: u32,
    /// The panic message (what follows `Kernel panic - not syncing: `).
    pub message: String,
}

/// The crash summary.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The kernel ELF used for symbols, as the caller named it.
    pub kernel: Option<String>,
    /// The dump file, as the caller named it.
    pub dumpfile: String,
    /// CPUs the kernel ran with.
    pub cpus: u32,
    /// The crash time, seconds since the Unix epoch (`CRASHTIME`).
    pub crash_time: Option<i64>,
    /// Time from boot to the crash in nanoseconds.
    pub uptime_ns: Option<u64>,
    /// Number of tasks.
    pub tasks: usize,
    /// `utsname.nodename`.
    pub nodename: String,
    /// `utsname.release`.
    pub release: String,
    /// `utsname.version`.
    pub version: String,
    /// `utsname.machine`.
    pub machine: String,
    /// RAM in bytes.
    pub memory_bytes: Option<u64>,
    /// The panic, if the kernel went down through panic or kdump.
    pub panic: Option<PanicReport>,
    /// The panic task (or CPU 0's running task when there was no panic).
    pub task: Option<Task>,
    /// What could not be read (each also makes its field unknown).
    pub problems: Vec<String>,
}

impl Summary {
    /// The panicking CPU.
    pub fn panic_cpu(&self) -> Option<u32> {
        self.panic.as_ref().map(|p| p.cpu)
    }
}

/// Reads the crash reason, `None` if the kernel recorded none.
pub fn crash_reason(dump: &Dump<'_>) -> Result<Option<PanicReport>, AnalysisError> {
    let info = dump.info();
    let address = info.symbol("crashvisor_crash_reason")?;
    let size = info.size("crashvisor_crash_reason")?;
    let [cpu_at, pid_at, len_at, message_at] =
        ["cpu", "pid", "message_len", "message"].map(|f| info.offset(&format!("crashvisor_crash_reason.{f}")));
    let (cpu_at, pid_at, len_at, message_at) = (cpu_at? as usize, pid_at? as usize, len_at? as usize, message_at?);
    if size > MAX_REASON_SIZE || message_at > size {
        return Err(AnalysisError::Corrupt(format!(
            "SIZE(crashvisor_crash_reason)={size} with its message at {message_at} is not plausible"
        )));
    }
    let bytes = dump.read_vec("the crash reason", address, size as usize)?;
    let field = |at: usize, name: &str| {
        get_u32(&bytes, at).ok_or_else(|| {
            AnalysisError::Corrupt(format!("OFFSET(crashvisor_crash_reason.{name}) is past the structure's end"))
        })
    };
    let cpu = field(cpu_at, "cpu")?;
    if cpu == NO_CRASH_CPU {
        return Ok(None);
    }
    let capacity = bytes.len() - message_at as usize;
    let len = (field(len_at, "message_len")? as usize).min(capacity);
    let message = &bytes[message_at as usize..message_at as usize + len];
    Ok(Some(PanicReport { cpu, pid: field(pid_at, "pid")?, message: String::from_utf8_lossy(message).into_owned() }))
}

/// The six `new_utsname` strings at `SYMBOL(init_uts_ns)` + `OFFSET(uts_namespace.name)`.
fn utsname(dump: &Dump<'_>) -> Result<[String; 6], AnalysisError> {
    let info = dump.info();
    let offset = optional(info.offset("uts_namespace.name"))?.unwrap_or(0);
    let address = info.symbol("init_uts_ns")?.wrapping_add(offset);
    let bytes = dump.read_vec("the kernel's utsname", address, 6 * UTS_FIELD_LEN)?;
    Ok(std::array::from_fn(|i| c_string(&bytes[i * UTS_FIELD_LEN..(i + 1) * UTS_FIELD_LEN])))
}

/// Builds the summary. `dumpfile` and `kernel` are shown as given.
pub fn summarize(dump: &Dump<'_>, tasks: &TaskList, dumpfile: &str, kernel: Option<&str>) -> Summary {
    let info = dump.info();
    let mut problems = Vec::new();
    let uts = noted(&mut problems, utsname(dump)).unwrap_or_default();
    let panic = noted(&mut problems, crash_reason(dump)).flatten();
    let crash_time = noted(&mut problems, optional(info.crash_time()).map_err(AnalysisError::from)).flatten();
    let mut number = |name: &str| {
        let value = noted(&mut problems, optional(info.number(name)).map_err(AnalysisError::from)).flatten();
        value.and_then(|n| u64::try_from(n).ok())
    };
    let (uptime_ns, memory_bytes, cpus) =
        (number("crashvisor_uptime_ns"), number("crashvisor_ram_bytes"), number("nr_cpus"));
    let cpus = cpus.and_then(|n| u32::try_from(n).ok()).unwrap_or(dump.cpus().len() as u32);
    let task = match &panic {
        Some(p) => tasks.running_on(p.cpu).or_else(|| tasks.by_pid(p.pid).filter(|_| p.pid != 0)),
        None => tasks.running_on(0),
    };
    problems.extend(tasks.problem.clone());
    let [_, nodename, release, version, machine, _] = uts;
    Summary {
        kernel: kernel.map(str::to_owned),
        dumpfile: dumpfile.to_owned(),
        cpus,
        crash_time,
        uptime_ns,
        tasks: tasks.tasks.len(),
        nodename,
        release,
        version,
        machine,
        memory_bytes,
        panic,
        task: task.cloned(),
        problems,
    }
}

/// The value of `result`, or `None` with the error added to `problems`.
fn noted<T>(problems: &mut Vec<String>, result: Result<T, AnalysisError>) -> Option<T> {
    result.map_err(|e| problems.push(error_chain(&e))).ok()
}

/// `crash`'s banner: right-aligned labels.
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = |label: &str, value: &dyn fmt::Display| writeln!(f, "{label:>12}: {value}");
        line("KERNEL", &self.kernel.as_deref().unwrap_or("(none given: addresses are not symbolised)"))?;
        line("DUMPFILE", &self.dumpfile)?;
        line("CPUS", &self.cpus)?;
        line("DATE", &self.crash_time.map_or("(unknown)".to_owned(), format_date))?;
        line("UPTIME", &self.uptime_ns.map_or("(unknown)".to_owned(), format_uptime))?;
        line("TASKS", &self.tasks)?;
        line("NODENAME", &self.nodename)?;
        line("RELEASE", &self.release)?;
        line("VERSION", &self.version)?;
        line("MACHINE", &self.machine)?;
        line("MEMORY", &self.memory_bytes.map_or("(unknown)".to_owned(), format_memory))?;
        line("PANIC", &format!("\"{}\"", self.panic.as_ref().map_or("", |p| p.message.as_str())))?;
        if let Some(task) = &self.task {
            line("PID", &task.pid)?;
            line("COMMAND", &format!("\"{}\"", task.comm))?;
            line("TASK", &format_args!("{:016x}", task.address))?;
            line("CPU", &task.running_on.unwrap_or(task.cpu))?;
            let panicked = self.panic.as_ref().is_some_and(|p| task.running_on == Some(p.cpu) || task.pid == p.pid);
            line("STATE", &format!("{}{}", task.state_name, if panicked { " (PANIC)" } else { "" }))?;
        } else if let Some(panic) = &self.panic {
            line("PID", &panic.pid)?;
            line("CPU", &panic.cpu)?;
        }
        for problem in &self.problems {
            writeln!(f, "WARNING: {problem}")?;
        }
        Ok(())
    }
}

/// `Thu Jan  1 00:00:00 UTC 1970`, like `date -u` (times beyond jiff's years -9999 to 9999
/// are shown as its bounds).
pub fn format_date(unix_secs: i64) -> String {
    let time = jiff::Timestamp::from_second(unix_secs).unwrap_or(if unix_secs < 0 {
        jiff::Timestamp::MIN
    } else {
        jiff::Timestamp::MAX
    });
    time.strftime("%a %b %e %H:%M:%S UTC %Y").to_string()
}

/// `00:01:02`, or `3 days, 00:01:02`, as crash prints uptime.
pub fn format_uptime(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let (days, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match days {
        0 => format!("{h:02}:{m:02}:{s:02}"),
        _ => format!("{days} days, {h:02}:{m:02}:{s:02}"),
    }
}

/// `256 MB`, `1.5 GB`, as crash prints memory.
pub fn format_memory(bytes: u64) -> String {
    let (value, unit) = if bytes >= 1 << 30 {
        (bytes as f64 / (1u64 << 30) as f64, "GB")
    } else {
        (bytes as f64 / (1u64 << 20) as f64, "MB")
    };
    let text = format!("{value:.1}");
    format!("{} {unit}", text.strip_suffix(".0").unwrap_or(&text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::tasks::{task_list, tests as task_tests};
    use crate::analysis::test_image::TestImage;
    use crashvisor_abi::layout::KERNEL_MAP;

    #[test]
    fn dates_uptimes_and_sizes_format_like_crash() {
        assert_eq!(format_date(0), "Thu Jan  1 00:00:00 UTC 1970");
        assert_eq!(format_date(1_709_210_096), "Thu Feb 29 12:34:56 UTC 2024");
        assert_eq!(format_date(-1), "Wed Dec 31 23:59:59 UTC 1969");
        let _ = format_date(i64::MAX / 2);
        assert_eq!(format_uptime(7_500_000_000), "00:00:07");
        assert_eq!(format_uptime(3 * 86_400_000_000_000 + 3_723_000_000_000), "3 days, 01:02:03");
        assert_eq!(format_memory(256 << 20), "256 MB");
        assert_eq!(format_memory(3 << 29), "1.5 GB");
    }

    /// The task tests' image plus utsname, a crash reason and the machine keys.
    fn image(reason_cpu: u32) -> TestImage {
        let info = format!(
            "{}SYMBOL(init_uts_ns)={:x}\nOFFSET(uts_namespace.name)=0\nSYMBOL(crashvisor_crash_reason)={:x}\n\
             SIZE(crashvisor_crash_reason)=304\nOFFSET(crashvisor_crash_reason.cpu)=12\n\
             OFFSET(crashvisor_crash_reason.pid)=16\nOFFSET(crashvisor_crash_reason.message_len)=40\n\
             OFFSET(crashvisor_crash_reason.message)=48\nNUMBER(crashvisor_ram_bytes)=268435456\n\
             NUMBER(crashvisor_uptime_ns)=12500000000\nCRASHTIME=1709210096\n",
            task_tests::info(),
            KERNEL_MAP + 0x4000,
            KERNEL_MAP + 0x5000
        );
        let mut image = task_tests::image();
        image.notes[0].desc = info.into_bytes();
        for (i, field) in ["Linux", "crashvisor", "6.18.0-crashvisor", "#1 SMP", "x86_64", "(none)"].iter().enumerate()
        {
            image.write(0x4000 + (i * 65) as u64, field.as_bytes());
        }
        image.write(0x5000 + 12, &reason_cpu.to_le_bytes());
        image.write(0x5000 + 16, &3u32.to_le_bytes());
        image.write(0x5000 + 40, &22u32.to_le_bytes());
        image.write(0x5000 + 48, b"softlockup: hung tasks");
        image
    }

    #[test]
    fn the_banner_names_the_panic_task() {
        let image = image(1);
        let dump = Dump::new(&image).unwrap();
        let tasks = task_list(&dump).unwrap();
        let summary = summarize(&dump, &tasks, "vmcore", Some("guest.elf"));
        assert_eq!(summary.problems, Vec::<String>::new());
        assert_eq!(summary.panic_cpu(), Some(1));
        let expected = "      KERNEL: guest.elf
    DUMPFILE: vmcore
        CPUS: 2
        DATE: Thu Feb 29 12:34:56 UTC 2024
      UPTIME: 00:00:12
       TASKS: 3
    NODENAME: crashvisor
     RELEASE: 6.18.0-crashvisor
     VERSION: #1 SMP
     MACHINE: x86_64
      MEMORY: 256 MB
       PANIC: \"softlockup: hung tasks\"
         PID: 3
     COMMAND: \"watchdog/1\"
        TASK: ffff888000003000
         CPU: 1
       STATE: TASK_RUNNING (PANIC)
";
        assert_eq!(summary.to_string(), expected);
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["panic"]["message"], "softlockup: hung tasks");
        assert_eq!(json["task"]["comm"], "watchdog/1");
    }

    #[test]
    fn no_crash_and_damaged_fields_are_said() {
        let mut image = image(NO_CRASH_CPU);
        let dump = Dump::new(&image).unwrap();
        let tasks = task_list(&dump).unwrap();
        let summary = summarize(&dump, &tasks, "vmcore", None);
        assert_eq!(summary.panic, None);
        let text = summary.to_string();
        assert!(text.contains("       PANIC: \"\"\n") && !text.contains("(PANIC)"), "{text}");
        assert!(text.contains("KERNEL: (none given"), "{text}");

        // An absurd message length is clamped to the message's room.
        image.write(0x5000 + 12, &1u32.to_le_bytes());
        image.write(0x5000 + 40, &u32::MAX.to_le_bytes());
        let dump = Dump::new(&image).unwrap();
        let summary = summarize(&dump, &tasks, "vmcore", None);
        assert_eq!(summary.panic.map(|p| p.message.len()), Some(256));

        // Unreadable structures are warnings.
        image.memory.truncate(0x4100);
        let dump = Dump::new(&image).unwrap();
        let summary = summarize(&dump, &tasks, "vmcore", None);
        assert!(summary.problems[0].starts_with("cannot read the kernel's utsname"), "{:?}", summary.problems);
        assert!(summary.problems[1].starts_with("cannot read the crash reason"), "{:?}", summary.problems);
        assert!(summary.to_string().contains("WARNING: cannot read the kernel's utsname"));
    }
}
