//! The crashed kernel's tasks: the list at `SYMBOL(crashvisor_task_list)` (a pointer to the
//! first task, each linked by `OFFSET(task_struct.next)`), read with the `task_struct` layout
//! from `VMCOREINFO`, and each CPU's running task from the per-CPU blocks
//! (`SYMBOL(crashvisor_per_cpu)`, `SIZE(per_cpu)`, `OFFSET(per_cpu.current)`, `NUMBER(nr_cpus)`).
//!
//! The walk is bounded ([`MAX_TASKS`]) and stops at a loop or an unreadable task, keeping the
//! tasks read so far and saying why in [`TaskList::problem`].

use std::collections::HashSet;
use std::fmt;

use crashvisor_abi::layout::MAX_VCPUS;
use crashvisor_klib::le::{get_u32, get_u64};
use serde::Serialize;

use super::vmcoreinfo::VmcoreInfo;
use super::{c_string, error_chain, hex, hex_opt, AnalysisError, Dump};

/// Most tasks a walk follows (far more than the guest creates; a bound against corrupt lists).
pub const MAX_TASKS: usize = 1 << 16;
/// Largest `SIZE(task_struct)` or `SIZE(per_cpu)` accepted.
const MAX_STRUCT_SIZE: u64 = 64 << 10;
/// Linux's `TASK_COMM_LEN`.
pub const TASK_COMM_LEN: usize = 16;
/// Linux's `PF_KTHREAD`.
pub const PF_KTHREAD: u32 = 0x0020_0000;
/// Linux's `PF_IDLE`.
pub const PF_IDLE: u32 = 0x0000_0002;

/// Where the fields of a task are (`OFFSET(task_struct.*)`), and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TaskLayout {
    size: usize,
    next: usize,
    pid: usize,
    ppid: usize,
    comm: usize,
    state: usize,
    cpu: usize,
    flags: usize,
    saved_rsp: usize,
    stack_base: usize,
    stack_size: usize,
}

impl TaskLayout {
    fn from_info(info: &VmcoreInfo) -> Result<Self, AnalysisError> {
        let size = info.size("task_struct")?;
        if size == 0 || size > MAX_STRUCT_SIZE {
            return Err(AnalysisError::Corrupt(format!("SIZE(task_struct)={size} is not a plausible size")));
        }
        // Each field with its size: the offset must leave room for it inside the task.
        let field = |name: &str, len: u64| -> Result<usize, AnalysisError> {
            let offset = info.offset(&format!("task_struct.{name}"))?;
            if offset.checked_add(len).is_none_or(|end| end > size) {
                return Err(AnalysisError::Corrupt(format!(
                    "OFFSET(task_struct.{name})={offset} leaves no room for its {len} bytes in a {size}-byte task"
                )));
            }
            Ok(offset as usize)
        };
        Ok(Self {
            size: size as usize,
            next: field("next", 8)?,
            pid: field("pid", 4)?,
            ppid: field("ppid", 4)?,
            comm: field("comm", TASK_COMM_LEN as u64)?,
            state: field("state", 1)?,
            cpu: field("cpu", 4)?,
            flags: field("flags", 4)?,
            saved_rsp: field("saved_rsp", 8)?,
            stack_base: field("stack_base", 8)?,
            stack_size: field("stack_size", 8)?,
        })
    }
}

/// One task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Task {
    /// The task structure's kernel address (crash's `TASK`).
    #[serde(serialize_with = "hex")]
    pub address: u64,
    /// Process id (0 for the idle tasks, one per CPU).
    pub pid: u32,
    /// Parent's pid.
    pub ppid: u32,
    /// Name (`comm`).
    pub comm: String,
    /// The raw `TASK_*` state.
    pub state: u8,
    /// Linux's one-letter state (`R`, `S`, `D`, `I`, `X`, or `?`).
    pub state_letter: char,
    /// Linux's name of the state (`TASK_RUNNING`...).
    pub state_name: &'static str,
    /// The CPU whose run queue owns the task.
    pub cpu: u32,
    /// `PF_*` flags.
    pub flags: u32,
    /// The CPU the task was running on at the crash (the per-CPU `current`), if any.
    pub running_on: Option<u32>,
    /// Stack pointer saved when it was last switched out.
    #[serde(serialize_with = "hex")]
    pub saved_rsp: u64,
    /// Lowest address of its kernel stack.
    #[serde(serialize_with = "hex")]
    pub stack_base: u64,
    /// Its stack's size in bytes.
    pub stack_size: u64,
}

impl Task {
    fn parse(address: u64, bytes: &[u8], layout: &TaskLayout) -> Self {
        let u32_field = |at| get_u32(bytes, at).unwrap_or_default();
        let u64_field = |at| get_u64(bytes, at).unwrap_or_default();
        let state = bytes.get(layout.state).copied().unwrap_or_default();
        let (state_letter, state_name) = state_names(state);
        Self {
            address,
            pid: u32_field(layout.pid),
            ppid: u32_field(layout.ppid),
            comm: c_string(bytes.get(layout.comm..layout.comm + TASK_COMM_LEN).unwrap_or_default()),
            state,
            state_letter,
            state_name,
            cpu: u32_field(layout.cpu),
            flags: u32_field(layout.flags),
            running_on: None,
            saved_rsp: u64_field(layout.saved_rsp),
            stack_base: u64_field(layout.stack_base),
            stack_size: u64_field(layout.stack_size),
        }
    }

    /// Whether it is a kernel thread other than init (pid 1): `ps` shows those in brackets.
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0 && self.pid != 1
    }

    /// Whether it is a CPU's idle task.
    pub fn is_idle(&self) -> bool {
        self.flags & PF_IDLE != 0
    }
}

/// Linux's letter and name of a task state (`task_state_to_char`).
pub fn state_names(state: u8) -> (char, &'static str) {
    match state {
        0x00 => ('R', "TASK_RUNNING"),
        0x01 => ('S', "TASK_INTERRUPTIBLE"),
        0x02 => ('D', "TASK_UNINTERRUPTIBLE"),
        0x42 => ('I', "TASK_IDLE"),
        0x80 => ('X', "TASK_DEAD"),
        _ => ('?', "unknown"),
    }
}

/// Every task of the dump.
#[derive(Debug, Clone, Serialize)]
pub struct TaskList {
    /// The tasks, by pid (idle tasks by CPU).
    pub tasks: Vec<Task>,
    /// Each CPU's running task address (`None` where it was not set), by CPU number.
    #[serde(serialize_with = "serialize_current")]
    pub current: Vec<Option<u64>>,
    /// Why the list may be incomplete (a loop, an unreadable task, the per-CPU blocks).
    pub problem: Option<String>,
}

fn serialize_current<S: serde::Serializer>(current: &[Option<u64>], serializer: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Addr(#[serde(serialize_with = "hex_opt")] Option<u64>);
    serializer.collect_seq(current.iter().map(|&a| Addr(a)))
}

impl TaskList {
    /// An empty list that says why the tasks could not be read (for reports that go on
    /// without them, such as the summary of a dump whose kernel publishes no task list).
    pub fn unavailable(error: &AnalysisError) -> Self {
        Self { tasks: Vec::new(), current: Vec::new(), problem: Some(format!("no tasks: {}", error_chain(error))) }
    }

    /// The task running on `cpu` at the crash.
    pub fn running_on(&self, cpu: u32) -> Option<&Task> {
        self.tasks.iter().find(|t| t.running_on == Some(cpu))
    }

    /// The task with `pid` (the first one for pid 0: CPU 0's idle task).
    pub fn by_pid(&self, pid: u32) -> Option<&Task> {
        self.tasks.iter().find(|t| t.pid == pid)
    }
}

/// Each CPU's `current` task address, from the per-CPU blocks (`None` where it is null).
pub fn current_tasks(dump: &Dump<'_>) -> Result<Vec<Option<u64>>, AnalysisError> {
    let info = dump.info();
    let base = info.symbol("crashvisor_per_cpu")?;
    let size = info.size("per_cpu")?;
    let offset = info.offset("per_cpu.current")?;
    let nr_cpus = info.number("nr_cpus")?;
    if size == 0 || size > MAX_STRUCT_SIZE || offset.saturating_add(8) > size {
        return Err(AnalysisError::Corrupt(format!(
            "SIZE(per_cpu)={size} with OFFSET(per_cpu.current)={offset} is not a plausible per-CPU block"
        )));
    }
    let nr_cpus = u32::try_from(nr_cpus)
        .ok()
        .filter(|&n| (1..=MAX_VCPUS as u32).contains(&n))
        .ok_or_else(|| AnalysisError::Corrupt(format!("NUMBER(nr_cpus)={nr_cpus} is not between 1 and {MAX_VCPUS}")))?;
    (0..u64::from(nr_cpus))
        .map(|cpu| {
            let at = base.wrapping_add(cpu * size + offset);
            let task = dump.read_u64(&format!("CPU {cpu}'s current task pointer"), at)?;
            Ok((task != 0).then_some(task))
        })
        .collect()
}

/// Walks the task list and marks the tasks running on each CPU.
pub fn task_list(dump: &Dump<'_>) -> Result<TaskList, AnalysisError> {
    let layout = TaskLayout::from_info(dump.info())?;
    let head = dump.info().symbol("crashvisor_task_list")?;
    let mut next = dump.read_u64("the task list head (crashvisor_task_list)", head)?;
    let mut tasks = Vec::new();
    let mut seen = HashSet::new();
    let mut problem = None;
    while next != 0 {
        if tasks.len() >= MAX_TASKS {
            problem = Some(format!("the task list has more than {MAX_TASKS} tasks; the rest is left out"));
            break;
        }
        if !seen.insert(next) {
            problem = Some(format!("the task list loops back to the task at {next:#x} after {} tasks", tasks.len()));
            break;
        }
        let bytes = match dump.read_vec("a task", next, layout.size) {
            Ok(bytes) => bytes,
            Err(e) => {
                problem = Some(format!("the task list ends early: {}", error_chain(&e)));
                break;
            }
        };
        tasks.push(Task::parse(next, &bytes, &layout));
        next = get_u64(&bytes, layout.next).unwrap_or_default();
    }
    let current = match current_tasks(dump) {
        Ok(current) => current,
        Err(e) => {
            let text = format!("the running tasks are unknown: {}", error_chain(&e));
            problem = Some(problem.map_or(text.clone(), |p| format!("{p}; {text}")));
            Vec::new()
        }
    };
    for (cpu, address) in current.iter().enumerate() {
        if let Some(task) = tasks.iter_mut().find(|t| Some(t.address) == *address) {
            task.running_on = Some(cpu as u32);
        }
    }
    tasks.sort_by_key(|t| (t.pid, t.cpu));
    Ok(TaskList { tasks, current, problem })
}

/// `ps` like crash: `>` marks the tasks running on a CPU; kernel threads are in brackets.
impl fmt::Display for TaskList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "   PID    PPID  CPU        TASK        ST  COMM")?;
        for t in &self.tasks {
            let marker = if t.running_on.is_some() { '>' } else { ' ' };
            let cpu = t.running_on.unwrap_or(t.cpu);
            let comm = if t.is_kernel_thread() { format!("[{}]", t.comm) } else { t.comm.clone() };
            writeln!(
                f,
                "{marker}{:>6} {:>7} {cpu:>4}  {:016x}  {}   {comm}",
                t.pid, t.ppid, t.address, t.state_letter
            )?;
        }
        if let Some(problem) = &self.problem {
            writeln!(f, "ps: {problem}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::analysis::test_image::TestImage;
    use crashvisor_abi::layout::{KERNEL_MAP, PAGE_OFFSET};

    /// The layout the tests' tasks use (96 bytes).
    pub(crate) const LAYOUT: &str = "SIZE(task_struct)=96\nOFFSET(task_struct.next)=0\nOFFSET(task_struct.pid)=8\n\
        OFFSET(task_struct.ppid)=12\nOFFSET(task_struct.comm)=16\nOFFSET(task_struct.state)=32\n\
        OFFSET(task_struct.cpu)=36\nOFFSET(task_struct.flags)=40\nOFFSET(task_struct.saved_rsp)=48\n\
        OFFSET(task_struct.stack_base)=56\nOFFSET(task_struct.stack_size)=64\n";
    /// Physical address of the task list head and the per-CPU blocks (2 CPUs of 64 bytes).
    pub(crate) const HEAD: u64 = 0x100;
    pub(crate) const PER_CPU: u64 = 0x200;

    pub(crate) fn info() -> String {
        format!(
            "NUMBER(phys_base)=0\nSYMBOL(init_top_pgt)={:x}\n{LAYOUT}SYMBOL(crashvisor_task_list)={:x}\n\
             SYMBOL(crashvisor_per_cpu)={:x}\nSIZE(per_cpu)=64\nOFFSET(per_cpu.current)=16\nNUMBER(nr_cpus)=2\n",
            KERNEL_MAP + 0x1000,
            KERNEL_MAP + HEAD,
            KERNEL_MAP + PER_CPU
        )
    }

    /// Writes a task at physical `paddr` (direct-mapped) and returns its address.
    pub(crate) fn write_task(image: &mut TestImage, paddr: u64, pid: u32, comm: &str, state: u8, next: u64) -> u64 {
        let mut task = [0u8; 96];
        task[0..8].copy_from_slice(&next.to_le_bytes());
        task[8..12].copy_from_slice(&pid.to_le_bytes());
        task[12..16].copy_from_slice(&2u32.to_le_bytes());
        task[16..16 + comm.len()].copy_from_slice(comm.as_bytes());
        task[32] = state;
        task[36..40].copy_from_slice(&(pid % 2).to_le_bytes());
        task[40..44].copy_from_slice(&PF_KTHREAD.to_le_bytes());
        image.write(paddr, &task);
        PAGE_OFFSET + paddr
    }

    /// Three tasks: pid 3 "watchdog/1" (running on CPU 1), pid 1 "sh" (S), pid 2 (D).
    pub(crate) fn image() -> TestImage {
        let mut image = TestImage::new(0x1_0000, &info());
        let third = write_task(&mut image, 0x3000, 3, "watchdog/1", 0, 0);
        let second = write_task(&mut image, 0x2800, 2, "kthreadd", 2, third);
        let first = write_task(&mut image, 0x2000, 1, "sh", 1, second);
        image.write_u64(HEAD, first);
        image.write_u64(PER_CPU + 64 + 16, third);
        image
    }

    #[test]
    fn tasks_are_read_with_the_published_layout() {
        let image = image();
        let dump = Dump::new(&image).unwrap();
        let list = task_list(&dump).unwrap();
        assert_eq!(list.problem, None);
        let rows: Vec<_> = list.tasks.iter().map(|t| (t.pid, t.comm.as_str(), t.state_letter, t.running_on)).collect();
        assert_eq!(rows, [(1, "sh", 'S', None), (2, "kthreadd", 'D', None), (3, "watchdog/1", 'R', Some(1))]);
        assert_eq!(list.current, [None, Some(PAGE_OFFSET + 0x3000)]);
        assert_eq!(list.running_on(1).map(|t| t.pid), Some(3));
        let text = list.to_string();
        assert!(text.contains(">     3       2    1  ffff888000003000  R   [watchdog/1]"), "{text}");
        assert!(text.contains("      1       2    1  ffff888000002000  S   sh\n"), "{text}");
        let json = serde_json::to_value(&list).unwrap();
        assert_eq!(json["tasks"][2]["address"], "0xffff888000003000");
        assert_eq!(json["current"], serde_json::json!([null, "0xffff888000003000"]));
    }

    #[test]
    fn loops_and_unreadable_tasks_keep_what_was_read() {
        let mut image = image();
        // The last task points back at the first.
        image.write_u64(0x3000, PAGE_OFFSET + 0x2000);
        let dump = Dump::new(&image).unwrap();
        let list = task_list(&dump).unwrap();
        assert_eq!(list.tasks.len(), 3);
        assert!(list.problem.as_deref().unwrap().contains("loops back to the task at 0xffff888000002000"));

        image.write_u64(0x3000, PAGE_OFFSET + 0x7fff_0000);
        let dump = Dump::new(&image).unwrap();
        let list = task_list(&dump).unwrap();
        assert_eq!(list.tasks.len(), 3);
        let problem = list.problem.unwrap();
        assert!(problem.starts_with("the task list ends early: cannot read a task at 0xffff88807fff0000"), "{problem}");
    }

    #[test]
    fn implausible_layouts_are_refused() {
        for (key, value) in [("SIZE(task_struct)=96", "SIZE(task_struct)=99999999"), ("comm)=16", "comm)=90")] {
            let image = TestImage::new(0x1_0000, &info().replace(key, value));
            let dump = Dump::new(&image).unwrap();
            assert!(matches!(task_list(&dump), Err(AnalysisError::Corrupt(_))), "{value}");
        }
        let image = TestImage::new(0x1_0000, &info().replace("SYMBOL(crashvisor_task_list)", "X"));
        let dump = Dump::new(&image).unwrap();
        let error = task_list(&dump).unwrap_err();
        let list = TaskList::unavailable(&error);
        assert_eq!(
            list.problem.unwrap(),
            "no tasks: VMCOREINFO has no SYMBOL(crashvisor_task_list) line (the crashed kernel does not publish it)"
        );
        let image = TestImage::new(0x1_0000, &info().replace("NUMBER(nr_cpus)=2", "NUMBER(nr_cpus)=100000"));
        let dump = Dump::new(&image).unwrap();
        let list = task_list(&dump).unwrap();
        assert!(list.problem.unwrap().contains("NUMBER(nr_cpus)=100000 is not between 1 and"));
    }

    #[test]
    fn random_task_memory_never_panics() {
        let mut image = image();
        let mut state = 0x1234_5678_9abc_def1u64;
        for round in 0..200 {
            for at in (0x2000..0x3100).step_by(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Mostly pointers into the tasks' page, sometimes anything.
                let value = if state.is_multiple_of(3) { state } else { PAGE_OFFSET + 0x2000 + (state % 0x1100) };
                image.write_u64(at, value);
            }
            let dump = Dump::new(&image).unwrap();
            let list = task_list(&dump).unwrap();
            assert!(list.tasks.len() <= 0x1100, "round {round}");
            let _ = list.to_string();
        }
    }
}
