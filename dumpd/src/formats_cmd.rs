//! `dumpd convert` and `dumpd check` of kdump-compressed files: vmcore formats from the
//! command line.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use dumpd::convert::{convert_file, ConvertOptions};
use dumpd::image::{open_vmcore, DumpFormat, DumpImage, Vmcore};
use dumpd::kdump::{
    DUMP_DH_COMPRESSED_INCOMPLETE, DUMP_DH_COMPRESSED_LZO, DUMP_DH_COMPRESSED_ZLIB, DUMP_DH_COMPRESSED_ZSTD,
};

use crate::{human, note_type_name};

/// Shortest time between two progress updates.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// `dumpd convert`'s arguments.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The vmcore to read (ELF or kdump-compressed).
    input: PathBuf,
    /// The file to write; it appears complete or not at all.
    output: PathBuf,
    /// The output format: elf, kdump-zstd, kdump-zlib or kdump-raw.
    #[arg(long, value_name = "FORMAT", value_parser = <DumpFormat as std::str::FromStr>::from_str)]
    format: DumpFormat,
    /// makedumpfile dump level. Zero pages are stored once in a kdump file at 0 and 1 (as
    #[arg(long, value_name = "N", default_value_t = 1)]
    dump_level: u32,
    /// Print progress on stderr even when it is not a terminal.
    #[arg(long)]
    progress: bool,
}

/// Converts a vmcore, with progress on stderr when it is a terminal (or with `--progress`).
pub fn convert(args: ConvertArgs) -> anyhow::Result<()> {
    let tty = std::io::stderr().is_terminal();
    let printer = Progress { tty, last: Mutex::new(None) };
    let report = |done: u64, total: u64| printer.update(done, total);
    let options = ConvertOptions {
        format: args.format,
        dump_level: args.dump_level,
        progress: (tty || args.progress).then_some(&report as &dyn Fn(u64, u64)),
    };
    let result = convert_file(&args.input, &args.output, &options);
    printer.finish();
    let stats =
        result.with_context(|| format!("cannot convert {} to {}", args.input.display(), args.output.display()))?;
    let secs = stats.duration.as_secs_f64().max(1e-9);
    println!(
        "{}: {} of memory in {} ({:.0} MiB/s), written in {:.2} s",
        args.output.display(),
        human(stats.memory_bytes),
        human(stats.file_bytes),
        stats.memory_bytes as f64 / secs / (1 << 20) as f64,
        secs
    );
    Ok(())
}

/// Prints "converting: X of Y (Z%)" at most every `PROGRESS_INTERVAL`: rewriting one line on a
/// terminal, one line per update otherwise.
struct Progress {
    tty: bool,
    last: Mutex<Option<Instant>>,
}

impl Progress {
    fn update(&self, done: u64, total: u64) {
        let mut last = self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.is_some_and(|at| at.elapsed() < PROGRESS_INTERVAL) && done < total {
            return;
        }
        *last = Some(Instant::now());
        let percent = done.saturating_mul(100).checked_div(total).unwrap_or(100);
        let line = format!("converting: {} of {} ({percent}%)", human(done), human(total));
        let mut stderr = std::io::stderr().lock();
        let _ = if self.tty { write!(stderr, "\r{line}\x1b[K") } else { writeln!(stderr, "{line}") };
    }

    fn finish(&self) {
        let printed = self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).is_some();
        if self.tty && printed {
            eprintln!();
        }
    }
}

/// `dumpd check` for a kdump-compressed file (or makedumpfile's flattened form of one):
/// validates the headers and every page, and prints the header, the notes and the page counts.
pub fn check_kdump(path: &Path) -> anyhow::Result<()> {
    let Vmcore::Kdump(image) = open_vmcore(path)? else {
        anyhow::bail!("{} is not a kdump-compressed vmcore", path.display());
    };
    let (h, sub) = (image.header(), image.sub_header());
    let compression = match h.status & (DUMP_DH_COMPRESSED_ZLIB | DUMP_DH_COMPRESSED_LZO | DUMP_DH_COMPRESSED_ZSTD) {
        DUMP_DH_COMPRESSED_ZSTD => "zstd",
        DUMP_DH_COMPRESSED_ZLIB => "zlib",
        DUMP_DH_COMPRESSED_LZO => "lzo",
        0 => "none",
        _ => "mixed",
    };
    println!(
        "{}: kdump-compressed (header version {}), {compression}, dump level {}{}",
        path.display(),
        h.header_version,
        sub.dump_level,
        if h.status & DUMP_DH_COMPRESSED_INCOMPLETE != 0 { ", INCOMPLETE" } else { "" }
    );
    println!("utsname: {} {} {} {}", h.utsname.sysname, h.utsname.nodename, h.utsname.release, h.utsname.machine);
    println!("notes: {} ({} CPUs)", image.notes().len(), h.nr_cpus);
    for note in image.notes() {
        let name = String::from_utf8_lossy(&note.name);
        println!("  {:12} {:14} {:>8} bytes", name, note_type_name(&name, note.n_type), note.desc.len());
    }
    println!(
        "pages: {} pfns, {} present, {} in the file",
        image.max_mapnr(),
        image.pages_present(),
        image.pages_dumped()
    );
    let mut page = vec![0u8; 4096];
    for load in image.loads() {
        for paddr in (load.paddr..load.paddr + load.len).step_by(page.len()) {
            image.read_phys(paddr, &mut page).with_context(|| format!("{} has a bad page", path.display()))?;
        }
    }
    println!("every page decodes");
    Ok(())
}
