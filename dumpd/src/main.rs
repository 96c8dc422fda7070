//! `dumpd`: inspect the crash store and vmcores offline.

mod analysis_cmd;
mod formats_cmd;
mod store_cmd;

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use crashvisor_klib::elfnote::{NT_PRSTATUS, PRSTATUS_SIZE};
use dumpd::elf::image::read_headers;
use dumpd::elf::Core;
use dumpd::kdump::{flattened, KDUMP_SIGNATURE};

/// Inspect crashvisor's crash store and vmcores.
#[derive(Parser, Debug)]
#[command(name = "dumpd", version)]
struct Args {
    /// Print the default crash store directory and exit.
    #[arg(long)]
    print_crash_dir: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the crashes in the store: one line each with its id, trigger, detector and size.
    List {
        /// The crash store [default: $XDG_DATA_HOME/crashvisor/crash or ~/.local/share/crashvisor/crash].
        #[arg(long, value_name = "DIR")]
        crash_dir: Option<PathBuf>,
        /// Print one JSON array of the crashes (id, vm, path, disk_bytes, meta) for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Remove the oldest crashes until the store is within the given limits.
    Prune(store_cmd::PruneArgs),
    /// Validate a vmcore (ELF64 x86_64 core file or kdump-compressed file) and print its notes
    /// and memory layout.
    Check {
        /// The vmcore file.
        vmcore: PathBuf,
    },
    /// Convert a vmcore between ELF and kdump-compressed (zstd, zlib), writing OUTPUT atomically.
    Convert(formats_cmd::ConvertArgs),
    #[command(flatten)]
    Analysis(analysis_cmd::AnalysisCommand),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        _ if args.print_crash_dir => {
            println!("{}", dumpd::default_crash_dir().display());
            Ok(())
        }
        Some(Command::List { crash_dir, json }) => {
            store_cmd::list(&crash_dir.unwrap_or_else(dumpd::default_crash_dir), json)
        }
        Some(Command::Prune(args)) => store_cmd::prune(args),
        Some(Command::Check { vmcore }) => check(&vmcore),
        Some(Command::Convert(args)) => formats_cmd::convert(args),
        Some(Command::Analysis(command)) => analysis_cmd::run(command),
        None => {
            eprintln!("dumpd: no command given; see dumpd --help");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dumpd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut magic = [0u8; 16];
    if file.read_exact_at(&mut magic, 0).is_ok() && (magic[..8] == KDUMP_SIGNATURE || &magic == flattened::SIGNATURE) {
        return formats_cmd::check_kdump(path);
    }
    let metadata = file.metadata().with_context(|| format!("cannot stat {}", path.display()))?;
    let headers = read_headers(&file, metadata.len()).with_context(|| format!("{} is not a vmcore", path.display()))?;
    let core = Core::parse(&headers).with_context(|| format!("{} is not a valid vmcore", path.display()))?;
    core.check_file_len(metadata.len()).with_context(|| format!("{} is truncated", path.display()))?;

    println!(
        "{}: ELF64 x86_64 core file, {} program headers, {} ({} on disk)",
        path.display(),
        core.program_headers().len(),
        human(metadata.len()),
        human(metadata.blocks() * 512)
    );
    println!("notes: {}", core.notes().len());
    for note in core.notes() {
        let name = String::from_utf8_lossy(note.name);
        let kind = note_type_name(&name, note.n_type);
        let warning = if note.is_prstatus() && note.desc.len() != PRSTATUS_SIZE {
            format!("  (gdb ignores NT_PRSTATUS notes that are not {PRSTATUS_SIZE} bytes)")
        } else {
            String::new()
        };
        println!("  {name:12} {kind:14} {:>8} bytes{warning}", note.desc.len());
    }
    let loads: Vec<_> = core.loads().collect();
    let bytes: u64 = loads.iter().map(|l| l.p_filesz).sum();
    println!("PT_LOAD: {} segments, {} of memory", loads.len(), human(bytes));
    if let (Some(first), Some(end)) = (loads.iter().map(|l| l.p_offset).min(), loads.iter().map(|l| l.file_end()).max())
    {
        println!("  file offsets {first:#x}-{end:#x}");
    }
    for l in loads {
        println!(
            "  offset {:#014x}  paddr {:#014x}  vaddr {:#018x}  size {:#x}",
            l.p_offset, l.p_paddr, l.p_vaddr, l.p_filesz
        );
    }
    Ok(())
}

fn note_type_name(name: &str, n_type: u32) -> String {
    match (name, n_type) {
        ("CORE", NT_PRSTATUS) => "NT_PRSTATUS".into(),
        ("CORE", 2) => "NT_PRFPREG".into(),
        ("CORE", 3) => "NT_PRPSINFO".into(),
        ("CORE", 6) => "NT_AUXV".into(),
        ("VMCOREINFO", 0) => "VMCOREINFO".into(),
        (_, t) => format!("type {t:#x}"),
    }
}

/// Bytes in binary units with one decimal.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
