//! The fill kernel (`benches/fill-kernel`: a PVH test kernel that fills its RAM with noise; the
//! host-dump benchmark's workload and the used-memory dump test's guest), built on demand with a
//! nested `cargo build --release`, as vmm/build.rs builds the guest kernel: in a clean
//! environment, so that the host's flags (`RUSTFLAGS`, `CARGO_TARGET_DIR`, coverage
//! instrumentation) never reach a kernel for a bare CPU, and with its own target directory,
//! `fill-kernel/` inside the running executable's target directory, so that a second run
//! rebuilds nothing. The crate's `.cargo/config.toml`
//! picks the `x86_64-unknown-none` target; the repository's rust-toolchain.toml installs it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

/// The crate's directory.
const SOURCE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../benches/fill-kernel");
/// The target the kernel is built for (set by the crate's `.cargo/config.toml`).
const TARGET: &str = "x86_64-unknown-none";
/// The environment the nested cargo keeps: what rustup and cargo need to find the toolchain.
const KEPT_VARIABLES: [&str; 5] = ["PATH", "HOME", "RUSTUP_HOME", "CARGO_HOME", "TMPDIR"];

/// Builds the kernel (or finds it up to date) and returns the path of its ELF image.
pub fn build() -> Result<PathBuf> {
    let target_dir = target_dir()?.join("fill-kernel");
    let mut cargo = Command::new("cargo");
    cargo.current_dir(SOURCE_DIR).env_clear();
    for key in KEPT_VARIABLES {
        if let Some(value) = std::env::var_os(key) {
            cargo.env(key, value);
        }
    }
    let status = cargo
        .args(["build", "--release", "--offline", "--locked", "--target-dir"])
        .arg(&target_dir)
        .status()
        .context("cannot run cargo to build the fill kernel")?;
    if !status.success() {
        bail!("building the fill kernel in {SOURCE_DIR} failed ({status})");
    }
    let elf = target_dir.join(TARGET).join("release/fill-kernel");
    ensure!(elf.is_file(), "cargo built the fill kernel but {} is missing", elf.display());
    Ok(elf)
}

/// The target directory the running test or bench was built in (`<target>/<profile>/deps/*`).
fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .with_context(|| format!("{} is not in <target>/<profile>/deps/", exe.display()))
}
