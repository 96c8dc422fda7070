//! `vmm`: run one crashvisor VM from the shell. See `vmm --help`.

fn main() -> std::process::ExitCode {
    vmm::cli::main("vmm")
}
