//! `dumpd`: inspect and convert vmcores offline.

use clap::Parser;

/// Inspect and convert crashvisor vmcores (the subcommands arrive with the dumpd issue).
#[derive(Parser, Debug)]
#[command(name = "dumpd", version)]
struct Args {
    /// Print the default crash store directory and exit.
    #[arg(long)]
    print_crash_dir: bool,
}

fn main() {
    let args = Args::parse();
    if args.print_crash_dir {
        println!("{}", dumpd::default_crash_dir().display());
    }
}
