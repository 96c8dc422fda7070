//! `crashvisor`: the main binary. Until the REST service lands it runs one VM, with the same
//! flags as `vmm` (the embedded guest kernel by default).

fn main() -> std::process::ExitCode {
    vmm::cli::main("crashvisor")
}
