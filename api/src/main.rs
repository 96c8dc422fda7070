//! `crashvisor`: the main binary. With no subcommand it runs the REST service on
//! 127.0.0.1:8080 (`crashvisor serve`); `crashvisor vmm ...` runs one VM (the service starts
//! one such process per VM); `vm`, `inject` and `vmcore` are the client of a running service.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;

use api::client::{self, InjectArgs, VmCommand, VmcoreCommand};
use api::serve::{self, ServeArgs};
use clap::{FromArgMatches, Parser, Subcommand};

/// crashvisor: run VMs that crash on purpose, and catch every crash as a vmcore.
#[derive(Parser, Debug)]
#[command(name = "crashvisor", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the REST service (the default; see docs/api.md).
    Serve(ServeArgs),
    /// Run one VM with the VMM's own flags (`crashvisor vmm --help`; docs/vmm.md).
    #[command(disable_help_flag = true)]
    Vmm {
        /// The VMM's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Create, list, show and delete VMs of a running service.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Inject a fault into a VM: crashvisor inject VM softlockup --cpu 1.
    Inject(InjectArgs),
    /// List, download and show vmcores of a running service.
    #[command(subcommand)]
    Vmcore(VmcoreCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Some(command) => command,
        // No subcommand: the service with its defaults (and the environment's settings).
        None => Command::Serve(default_serve_args()),
    };
    if let Command::Vmm { args } = command {
        return vmm::cli::main_from("crashvisor vmm", std::iter::once(OsString::from("crashvisor vmm")).chain(args));
    }
    let serving = matches!(command, Command::Serve(_));
    init_logs(serving);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("crashvisor: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Serve(args) => serve::run(args).await,
            Command::Vm(command) => client::vm(command).await,
            Command::Inject(args) => client::inject(args).await,
            Command::Vmcore(command) => client::vmcore(command).await,
            Command::Vmm { .. } => unreachable!("handled above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crashvisor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `serve`'s options from the environment alone.
fn default_serve_args() -> ServeArgs {
    #[derive(Parser)]
    struct Defaults {
        #[command(flatten)]
        serve: ServeArgs,
    }
    let matches = <Defaults as clap::CommandFactory>::command().get_matches_from(["crashvisor"]);
    Defaults::from_arg_matches(&matches).map_or_else(|e| e.exit(), |d| d.serve)
}

/// Logs on stderr: `CRASHVISOR_LOG` as a filter, else info for the service and warnings for
/// the client.
fn init_logs(serving: bool) {
    let default = if serving { "info" } else { "warn" };
    let filter = std::env::var("CRASHVISOR_LOG").unwrap_or_else(|_| default.into());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .init();
}
