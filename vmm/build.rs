//! Builds the guest kernel for `x86_64-unknown-none`, writes its symbol table into the image's
//! reserved `.kallsyms` section, and exposes the result to the crate as `GUEST_KERNEL_PATH`.
//!
//! The guest is built by a nested `cargo` with a clean environment and its own target directory
//! (DESIGN.md "Build"): host flags such as `RUSTFLAGS` or coverage instrumentation must not leak
//! into a kernel that runs on a bare, emulated CPU.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "x86_64-unknown-none";

fn main() {
    // SAFETY: first thing in the process: the jobserver descriptors that cargo names in the
    // environment are inherited and still open, and nothing here has closed or replaced them.
    let jobserver = unsafe { jobserver::Client::from_env() };
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets this"));
    let guest_dir = manifest_dir.join("../guest-kernel");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets this"));
    for watched in
        ["src", "abi/src", "klib/src", "Cargo.toml", "Cargo.lock", "linker.ld", "build.rs", ".cargo/config.toml"]
    {
        println!("cargo:rerun-if-changed={}", guest_dir.join(watched).display());
    }

    ensure_target_installed(&guest_dir, jobserver.as_ref());
    let built = build_guest(&guest_dir, &out_dir.join("guest-target"));
    let mut image = fs::read(&built).unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", built.display())));
    embed_symbol_table(&mut image);
    // Page-size the image: the VMM maps it into the guest as a read-only memory slot.
    image.resize(image.len().next_multiple_of(4096), 0);
    let dest = out_dir.join("guest-kernel.elf");
    fs::write(&dest, &image).unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", dest.display())));
    println!("cargo:rustc-env=GUEST_KERNEL_PATH={}", dest.display());
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}

/// A command with the inherited environment stripped down to what rustup and cargo need.
fn clean_command(program: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir).env_clear();
    for key in ["PATH", "HOME", "RUSTUP_HOME", "CARGO_HOME", "TMPDIR"] {
        if let Some(value) = env::var_os(key) {
            cmd.env(key, value);
        }
    }
    cmd
}

fn ensure_target_installed(guest_dir: &Path, jobserver: Option<&jobserver::Client>) {
    if target_installed(guest_dir) {
        return;
    }
    // Nothing may compile while rustup changes the toolchain: on some installations adding a
    // target re-installs the toolchain's components, and a `rustc` that cargo starts meanwhile
    // fails with "could not execute process ... (never executed)". Holding every token of
    // cargo's jobserver keeps cargo from starting any other job until the target is in place.
    let _exclusive = jobserver.map(hold_every_job_slot);
    if target_installed(guest_dir) {
        return;
    }
    println!("cargo:warning=installing the guest target with `rustup target add {GUEST_TARGET}`");
    let status = clean_command("rustup", guest_dir).args(["target", "add", GUEST_TARGET]).status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => fail(&format!(
            "`rustup target add {GUEST_TARGET}` failed ({s}); the guest kernel cannot be built without it"
        )),
        Err(e) => {
            fail(&format!("cannot run rustup ({e}); install the target by hand: rustup target add {GUEST_TARGET}"))
        }
    }
}

fn target_installed(guest_dir: &Path) -> bool {
    let sysroot = clean_command("rustc", guest_dir)
        .args(["--print", "sysroot"])
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run rustc to find the sysroot: {e}")));
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    Path::new(&sysroot).join("lib/rustlib").join(GUEST_TARGET).exists()
}

/// Takes every job slot of cargo's jobserver but the one this build script runs in, waiting
/// for the jobs that hold them to finish; cargo starts nothing new until they are dropped.
fn hold_every_job_slot(client: &jobserver::Client) -> Vec<jobserver::Acquired> {
    let jobs: usize = env::var("NUM_JOBS").ok().and_then(|n| n.parse().ok()).unwrap_or(1);
    (1..jobs)
        .map(|_| client.acquire().unwrap_or_else(|e| fail(&format!("cannot take a jobserver slot: {e}"))))
        .collect()
}

fn build_guest(guest_dir: &Path, target_dir: &Path) -> PathBuf {
    let status = clean_command("cargo", guest_dir)
        .args(["build", "--release", "--offline", "--locked", "--target-dir"])
        .arg(target_dir)
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run cargo to build the guest kernel: {e}")));
    if !status.success() {
        fail(&format!("building the guest kernel in {} failed ({status})", guest_dir.display()));
    }
    target_dir.join(GUEST_TARGET).join("release/guest-kernel")
}

/// Writes the kernel's function symbols into its `.kallsyms` section, in place, so the kernel
/// can symbolise backtraces (`func+0x1a/0x80`) without a second link.
fn embed_symbol_table(image: &mut [u8]) {
    let elf = goblin::elf::Elf::parse(image).unwrap_or_else(|e| fail(&format!("guest kernel is not an ELF: {e}")));
    let section = elf
        .section_headers
        .iter()
        .find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(".kallsyms"))
        .unwrap_or_else(|| fail("the guest kernel has no .kallsyms section"));
    let (offset, capacity) = (section.sh_offset as usize, section.sh_size as usize);
    let text_base = elf
        .syms
        .iter()
        .find(|s| elf.strtab.get_at(s.st_name) == Some("_text"))
        .map(|s| s.st_value)
        .unwrap_or_else(|| fail("the guest kernel has no _text symbol"));
    let names: Vec<(u64, u64, String)> = elf
        .syms
        .iter()
        .filter(|s| s.is_function() && s.st_value >= text_base)
        .filter_map(|s| {
            let raw = elf.strtab.get_at(s.st_name)?;
            let name = format!("{:#}", rustc_demangle::demangle(raw));
            // The crate prefix adds nothing in a one-crate kernel: `sched::schedule+0x1a/0x80`.
            let name = name.strip_prefix("guest_kernel::").unwrap_or(&name).to_string();
            Some((s.st_value, s.st_size, name))
        })
        .collect();
    let entries: Vec<(u64, u64, &str)> = names.iter().map(|(a, s, n)| (*a, *s, n.as_str())).collect();
    let table = crashvisor_klib::symbols::build(text_base, &entries);
    if table.len() > capacity {
        fail(&format!(
            "the kernel symbol table needs {} bytes but .kallsyms reserves {capacity}; raise KALLSYMS_SIZE in guest-kernel",
            table.len()
        ));
    }
    image[offset..offset + table.len()].copy_from_slice(&table);
}
