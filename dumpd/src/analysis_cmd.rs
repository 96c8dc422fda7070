//! `dumpd show|bt|log|ps`: crash analysis of a vmcore, crash-style text or `--json`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use dumpd::analysis::backtrace::{cpu_backtrace, task_backtrace, Backtrace};
use dumpd::analysis::symbols::KernelSymbols;
use dumpd::analysis::tasks::{task_list, TaskList};
use dumpd::analysis::{log, summary, Dump};
use serde::Serialize;

/// How to get symbols when `--kernel` is not given.
const KERNEL_HINT: &str = "addresses are not symbolised: pass --kernel ELF with the crashed kernel's ELF (for the \
                           guest kernel a vmm binary embeds: `vmm --extract-kernel guest.elf`)";

/// The analysis subcommands.
#[derive(Subcommand, Debug)]
pub enum AnalysisCommand {
    /// Show the crash summary, like crash's banner: machine, date, uptime, panic message, CPU and task.
    Show {
        #[command(flatten)]
        dump: DumpArgs,
        #[command(flatten)]
        kernel: KernelArg,
    },
    /// Print backtraces by frame pointers, like crash's `bt`: the panicking CPU's by default.
    Bt {
        #[command(flatten)]
        dump: DumpArgs,
        #[command(flatten)]
        kernel: KernelArg,
        /// Every CPU's backtrace.
        #[arg(short = 'a', long = "all", conflicts_with_all = ["cpu", "pid"])]
        all: bool,
        /// This CPU's backtrace.
        #[arg(short = 'c', long, value_name = "CPU", conflicts_with = "pid")]
        cpu: Option<u32>,
        /// This task's backtrace (from where it was switched out, unless it was running).
        #[arg(short = 'p', long, value_name = "PID")]
        pid: Option<u32>,
    },
    /// Print the crashed kernel's log, like `dmesg`.
    Log {
        #[command(flatten)]
        dump: DumpArgs,
    },
    /// List the tasks, like crash's `ps` (`>` marks each CPU's running task).
    Ps {
        #[command(flatten)]
        dump: DumpArgs,
    },
}

/// The dump to analyse and the output format.
#[derive(Args, Debug)]
pub struct DumpArgs {
    /// The vmcore (ELF or kdump-compressed).
    vmcore: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// The kernel ELF to symbolise with.
#[derive(Args, Debug)]
pub struct KernelArg {
    /// The crashed kernel's ELF, for symbols (`vmm --extract-kernel guest.elf` writes the guest
    /// kernel a vmm binary embeds); it must be the build that crashed.
    #[arg(long, value_name = "ELF")]
    kernel: Option<PathBuf>,
}

/// Runs an analysis subcommand.
pub fn run(command: AnalysisCommand) -> anyhow::Result<()> {
    match command {
        AnalysisCommand::Show { dump, kernel } => with_dump(&dump, |d| {
            // KERNEL names only a kernel ELF that matches the dump.
            if let Some(path) = &kernel.kernel {
                load_symbols(d, Some(path))?;
            }
            // The summary goes on without the tasks (it says why).
            let tasks = task_list(d).unwrap_or_else(|e| TaskList::unavailable(&e));
            let kernel_name = kernel.kernel.as_ref().map(|k| k.display().to_string());
            let summary = summary::summarize(d, &tasks, &dump.vmcore.display().to_string(), kernel_name.as_deref());
            print(&summary, dump.json)
        }),
        AnalysisCommand::Bt { dump, kernel, all, cpu, pid } => with_dump(&dump, |d| {
            let symbols = load_symbols(d, kernel.kernel.as_deref())?;
            let tasks = task_list(d)?;
            let traces = backtraces(d, &tasks, symbols.as_ref(), Which::from_args(all, cpu, pid))?;
            if dump.json {
                return print_json(&traces);
            }
            let text: Vec<String> = traces.iter().map(Backtrace::to_string).collect();
            print!("{}", text.join("\n"));
            Ok(())
        }),
        AnalysisCommand::Log { dump } => with_dump(&dump, |d| print(&log::read_log(d)?, dump.json)),
        AnalysisCommand::Ps { dump } => with_dump(&dump, |d| print(&task_list(d)?, dump.json)),
    }
}

/// Which backtraces `bt` shows.
enum Which {
    PanicCpu,
    All,
    Cpu(u32),
    Pid(u32),
}

impl Which {
    fn from_args(all: bool, cpu: Option<u32>, pid: Option<u32>) -> Self {
        match (all, cpu, pid) {
            (true, _, _) => Self::All,
            (_, Some(cpu), _) => Self::Cpu(cpu),
            (_, _, Some(pid)) => Self::Pid(pid),
            _ => Self::PanicCpu,
        }
    }
}

fn backtraces(
    dump: &Dump<'_>,
    tasks: &TaskList,
    symbols: Option<&KernelSymbols>,
    which: Which,
) -> anyhow::Result<Vec<Backtrace>> {
    let cpu = match which {
        Which::Cpu(cpu) => cpu,
        Which::Pid(pid) => {
            let Some(task) = tasks.by_pid(pid) else { bail!("the dump has no task with pid {pid}") };
            return Ok(vec![task_backtrace(dump, tasks, task, symbols)?]);
        }
        Which::PanicCpu => match summary::crash_reason(dump)? {
            Some(reason) => reason.cpu,
            None => {
                eprintln!("dumpd: the dump records no panic; showing every CPU");
                return backtraces(dump, tasks, symbols, Which::All);
            }
        },
        Which::All => {
            return dump.cpus().iter().map(|c| Ok(cpu_backtrace(dump, tasks, c.cpu, symbols)?)).collect();
        }
    };
    Ok(vec![cpu_backtrace(dump, tasks, cpu, symbols)?])
}

/// Opens the vmcore and runs `f` on it.
fn with_dump(args: &DumpArgs, f: impl FnOnce(&Dump<'_>) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let path = &args.vmcore;
    let image = dumpd::image::open(path)?;
    let dump = Dump::new(image.as_ref()).with_context(|| format!("cannot analyse {}", path.display()))?;
    f(&dump)
}

/// The kernel's symbols, checked against the dump; without a kernel, a note on stderr.
fn load_symbols(dump: &Dump<'_>, kernel: Option<&Path>) -> anyhow::Result<Option<KernelSymbols>> {
    let Some(path) = kernel else {
        eprintln!("dumpd: {KERNEL_HINT}");
        return Ok(None);
    };
    let symbols = KernelSymbols::load(path)?;
    symbols.verify(dump).with_context(|| format!("cannot use {} for symbols", path.display()))?;
    Ok(Some(symbols))
}

fn print<T: Serialize + std::fmt::Display>(value: &T, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(value);
    }
    print!("{value}");
    Ok(())
}

fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value).context("cannot write JSON")?);
    Ok(())
}
