//! Crash analysis of stored vmcores through `dumpd::analysis` (the summary, backtraces, the
//! task list) and conversion to kdump-compressed files through `dumpd::convert`. Everything here
//! reads files and is blocking: handlers run it on tokio's blocking pool.
//!
//! Symbols come from the guest kernel this binary embeds, written once to the run directory;
//! a dump of another kernel build fails `KernelSymbols::verify` and is analysed without them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use axum::http::StatusCode;
use dumpd::analysis::backtrace::{cpu_backtrace, task_backtrace, Backtrace};
use dumpd::analysis::summary::{self, Summary};
use dumpd::analysis::symbols::KernelSymbols;
use dumpd::analysis::tasks::{task_list, TaskList};
use dumpd::analysis::{AnalysisError, Dump};
use dumpd::convert::{convert_file, ConvertOptions};
use dumpd::image::DumpFormat;
use dumpd::kdump::Compression;
use serde::Serialize;

use crate::error::ApiError;

/// The embedded guest kernel's symbols, loaded on first use.
pub struct Symbols {
    elf: PathBuf,
    loaded: OnceLock<Option<Arc<KernelSymbols>>>,
}

impl Symbols {
    /// Symbols from the embedded kernel, to be written to `elf` when first needed.
    pub fn new(elf: PathBuf) -> Self {
        Self { elf, loaded: OnceLock::new() }
    }

    fn get(&self) -> Option<Arc<KernelSymbols>> {
        self.loaded
            .get_or_init(|| {
                let loaded = std::fs::write(&self.elf, vmm::kernel::EMBEDDED_KERNEL)
                    .map_err(|e| e.to_string())
                    .and_then(|()| KernelSymbols::load(&self.elf).map_err(|e| e.to_string()));
                match loaded {
                    Ok(symbols) => Some(Arc::new(symbols)),
                    Err(e) => {
                        tracing::warn!(
                            "backtraces will not be symbolised: cannot load the guest kernel's symbols: {e}"
                        );
                        None
                    }
                }
            })
            .clone()
    }

    /// The symbols if they are the dump's kernel's; otherwise why not.
    fn for_dump(&self, dump: &Dump<'_>) -> (Option<Arc<KernelSymbols>>, Option<String>) {
        match self.get() {
            None => (None, Some("the embedded guest kernel's symbols could not be loaded".into())),
            Some(symbols) => match symbols.verify(dump) {
                Ok(()) => (Some(symbols), None),
                Err(e) => (None, Some(format!("the dump is not of the embedded guest kernel ({e})"))),
            },
        }
    }
}

fn analysis_error(error: AnalysisError) -> ApiError {
    match error {
        AnalysisError::NotFound(message) => ApiError::not_found(message),
        other => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unanalysable",
            format!("the vmcore cannot be analysed: {other}"),
        ),
    }
}

/// Opens `vmcore` for analysis and runs `f` on it.
fn with_dump<T>(vmcore: &Path, f: impl FnOnce(&Dump<'_>) -> Result<T, ApiError>) -> Result<T, ApiError> {
    let image = dumpd::image::open(vmcore).map_err(|e| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unanalysable", format!("the vmcore cannot be opened: {e}"))
    })?;
    let dump = Dump::new(image.as_ref()).map_err(analysis_error)?;
    f(&dump)
}

/// The crash summary (crash's banner), named after `id`.
pub fn summary(vmcore: &Path, id: &str) -> Result<Summary, ApiError> {
    with_dump(vmcore, |dump| {
        let tasks = task_list(dump).unwrap_or_else(|e| TaskList::unavailable(&e));
        Ok(summary::summarize(dump, &tasks, id, None))
    })
}

/// The task list.
pub fn tasks(vmcore: &Path) -> Result<TaskList, ApiError> {
    with_dump(vmcore, |dump| task_list(dump).map_err(analysis_error))
}

/// Which backtraces.
#[derive(Clone, Copy, Debug)]
pub enum Which {
    /// The panicking CPU's (every CPU's if the dump records no panic).
    PanicCpu,
    /// Every CPU's.
    All,
    /// One CPU's.
    Cpu(u32),
    /// One task's.
    Pid(u32),
}

/// Backtraces and whether they are symbolised.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Backtraces {
    /// The backtraces, as `dumpd bt --json` gives them.
    #[schema(value_type = Vec<Object>)]
    pub backtraces: Vec<Backtrace>,
    /// Whether function names were resolved.
    pub symbolised: bool,
    /// Why not, if not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symbols_problem: Option<String>,
}

/// Backtraces by frame pointers.
pub fn backtraces(vmcore: &Path, symbols: &Symbols, which: Which) -> Result<Backtraces, ApiError> {
    with_dump(vmcore, |dump| {
        let (kernel, symbols_problem) = symbols.for_dump(dump);
        let kernel = kernel.as_deref();
        let tasks = task_list(dump).map_err(analysis_error)?;
        let all = |dump: &Dump<'_>| -> Result<Vec<Backtrace>, ApiError> {
            dump.cpus().iter().map(|c| cpu_backtrace(dump, &tasks, c.cpu, kernel).map_err(analysis_error)).collect()
        };
        let backtraces = match which {
            Which::All => all(dump)?,
            Which::Cpu(cpu) => vec![cpu_backtrace(dump, &tasks, cpu, kernel).map_err(analysis_error)?],
            Which::Pid(pid) => {
                let task =
                    tasks.by_pid(pid).ok_or_else(|| ApiError::not_found(format!("the dump has no task {pid}")))?;
                vec![task_backtrace(dump, &tasks, task, kernel).map_err(analysis_error)?]
            }
            Which::PanicCpu => match summary::crash_reason(dump).map_err(analysis_error)? {
                Some(reason) => vec![cpu_backtrace(dump, &tasks, reason.cpu, kernel).map_err(analysis_error)?],
                None => all(dump)?,
            },
        };
        Ok(Backtraces { backtraces, symbolised: kernel.is_some(), symbols_problem })
    })
}

/// The vmcore at `vmcore` as a kdump-compressed (zstd) file at `cached`, converted unless it is
/// there already. The file appears whole or not at all.
pub fn kdump_zstd(vmcore: &Path, cached: &Path) -> Result<(), ApiError> {
    if cached.is_file() {
        return Ok(());
    }
    let options = ConvertOptions { format: DumpFormat::Kdump(Compression::Zstd), dump_level: 1, progress: None };
    let stats = convert_file(vmcore, cached, &options).map_err(|e| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unconvertible", format!("the vmcore cannot be converted: {e}"))
    })?;
    tracing::info!("converted {} to kdump-zstd: {} bytes in {:?}", vmcore.display(), stats.file_bytes, stats.duration);
    Ok(())
}
