//! `dumpd`: inspect the crash store and vmcores offline.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use dumpd::elf::{Core, ElfHeader, EHDR_SIZE, NT_PRSTATUS, PRSTATUS_SIZE};
use dumpd::store::CrashStore;

/// Largest header area `check` reads (ELF header, program headers, notes).
const MAX_HEADERS_LEN: u64 = 64 << 20;

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
    },
    /// Validate a vmcore (ELF64 x86_64 core file) and print its notes and PT_LOAD segments.
    Check {
        /// The vmcore file.
        vmcore: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        _ if args.print_crash_dir => {
            println!("{}", dumpd::default_crash_dir().display());
            Ok(())
        }
        Some(Command::List { crash_dir }) => list(&crash_dir.unwrap_or_else(dumpd::default_crash_dir)),
        Some(Command::Check { vmcore }) => check(&vmcore),
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

fn list(dir: &Path) -> anyhow::Result<()> {
    if !dir.is_dir() {
        bail!("{} is not a crash store (no such directory)", dir.display());
    }
    let store = CrashStore::open(dir)?;
    let crashes = store.list()?;
    if crashes.is_empty() {
        println!("no crashes in {}", dir.display());
        return Ok(());
    }
    let width = crashes.iter().map(|c| c.id.len()).max().unwrap_or(0).max(2);
    println!("{:width$}  {:9}  {:14}  SIZE", "ID", "TRIGGER", "DETECTOR");
    for crash in crashes {
        let (trigger, detector, size) = match &crash.meta {
            Some(m) => (
                m.trigger.as_str(),
                m.reason.as_ref().map_or("-", |r| r.detector.as_str()),
                format!("{} ({} on disk)", human(m.sizes.vmcore_apparent_bytes), human(m.sizes.vmcore_on_disk_bytes)),
            ),
            None => ("?", "?", "no readable meta.json".to_owned()),
        };
        println!("{:width$}  {trigger:9}  {detector:14}  {size}", crash.id);
    }
    Ok(())
}

fn check(path: &Path) -> anyhow::Result<()> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let metadata = file.metadata().with_context(|| format!("cannot stat {}", path.display()))?;
    let headers =
        read_headers(&mut file, metadata.len()).with_context(|| format!("{} is not a vmcore", path.display()))?;
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
        let kind = note_type_name(&note.name_lossy(), note.n_type);
        let warning = if note.is_prstatus() && note.desc.len() != PRSTATUS_SIZE {
            format!("  (gdb ignores NT_PRSTATUS notes that are not {PRSTATUS_SIZE} bytes)")
        } else {
            String::new()
        };
        println!("  {:12} {kind:14} {:>8} bytes{warning}", note.name_lossy(), note.desc.len());
    }
    let loads: Vec<_> = core.loads().collect();
    let bytes: u64 = loads.iter().map(|l| l.filesz).sum();
    println!("PT_LOAD: {} segments, {} of memory", loads.len(), human(bytes));
    if let (Some(first), Some(end)) = (loads.iter().map(|l| l.offset).min(), loads.iter().map(|l| l.file_end()).max()) {
        println!("  file offsets {first:#x}-{end:#x}");
    }
    for l in loads {
        println!("  offset {:#014x}  paddr {:#014x}  vaddr {:#018x}  size {:#x}", l.offset, l.paddr, l.vaddr, l.filesz);
    }
    Ok(())
}

/// Reads the ELF header, then the program headers, then the notes: as much as `Core::parse`
/// needs, never more than `MAX_HEADERS_LEN`.
fn read_headers(file: &mut File, file_len: u64) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut want = EHDR_SIZE as u64;
    loop {
        if want > file_len {
            bail!("it ends at byte {file_len}, inside its headers (which need {want} bytes)");
        }
        if want > MAX_HEADERS_LEN {
            bail!("its headers and notes take {want} bytes, more than the {MAX_HEADERS_LEN} this tool reads");
        }
        let have = bytes.len() as u64;
        bytes.resize(want as usize, 0);
        file.read_exact(&mut bytes[have as usize..]).context("cannot read the headers")?;
        ElfHeader::parse(&bytes)?;
        let needed = Core::required_len(&bytes)?;
        if needed <= want {
            return Ok(bytes);
        }
        want = needed;
    }
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
