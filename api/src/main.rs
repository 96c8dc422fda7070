//! `crashvisor`: the main binary. Until the REST service lands it runs one VM on the embedded
//! guest kernel, exactly like `vmm` with the same flags.

fn main() -> std::process::ExitCode {
    let status = std::process::Command::new(vmm_binary())
        .args(std::env::args_os().skip(1))
        .status();
    match status {
        Ok(s) => std::process::ExitCode::from(s.code().unwrap_or(1) as u8),
        Err(e) => {
            eprintln!("crashvisor: cannot start vmm ({e}); build it with `cargo build --release`");
            std::process::ExitCode::from(1)
        }
    }
}

/// The `vmm` binary next to this one.
fn vmm_binary() -> std::path::PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("vmm")))
        .unwrap_or_else(|| "vmm".into())
}
