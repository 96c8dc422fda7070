//! The `vmm` command line without KVM: help, version, usage errors, kernel extraction.
//!
//! Being an integration test of the `vmm` package, this also makes `cargo test` build the `vmm`
//! binary that the end-to-end tests in `tests/` run.

use std::process::{Command, Output};

use crashvisor_klib::le::u16_at;

fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmm")).args(args).env_remove("VMM_LOG").output().expect("the vmm binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_documents_every_flag_and_the_exit_statuses() {
    let out = vmm(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for flag in [
        "--kernel",
        "--vcpus",
        "--memory",
        "--cmdline",
        "--console",
        "--no-reboot",
        "--kvm",
        "--control",
        "--nmi-watchdog",
        "--timings",
        "--crash-dir",
        "--name",
        "--extract-kernel",
        "--help",
        "--version",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}:\n{help}");
    }
    assert!(help.contains("Exit status"), "{help}");
    for code in ["0", "1", "2", "3", "4", "5", "101"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(&format!("{code} "))),
            "--help does not document exit status {code}:\n{help}"
        );
    }
}

#[test]
fn version_names_the_program_and_version() {
    let out = vmm(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout).trim(), format!("vmm {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = vmm(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn extract_kernel_writes_the_guest_elf() {
    let path = std::env::temp_dir().join(format!("crashvisor-cli-{}.elf", std::process::id()));
    let out = vmm(&["--extract-kernel", path.to_str().expect("UTF-8 temp dir")]);
    let elf = std::fs::read(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let elf = elf.expect("--extract-kernel wrote the file");
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(elf[4], 2, "ELFCLASS64");
    assert_eq!(u16_at(&elf, 16), 2, "ET_EXEC");
    assert_eq!(u16_at(&elf, 18), 62, "EM_X86_64");
}

#[test]
fn extract_kernel_takes_no_other_flags() {
    let out = vmm(&["--extract-kernel", "/dev/null", "--vcpus", "2"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn nmi_watchdog_takes_on_or_off() {
    let out = vmm(&["--nmi-watchdog", "maybe"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("on or off"), "{}", text(&out.stderr));
}

#[test]
fn a_vm_name_unfit_for_the_crash_store_is_a_usage_error() {
    for bad in ["a/b", "..", ""] {
        let out = vmm(&["--name", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("invalid VM name"), "{}", text(&out.stderr));
    }
}

#[test]
fn a_control_path_that_is_not_a_socket_is_refused() {
    let path = std::env::temp_dir().join(format!("crashvisor-cli-{}.notsock", std::process::id()));
    std::fs::write(&path, b"x").expect("temp file");
    let out = vmm(&["--control", path.to_str().expect("UTF-8 temp dir")]);
    let _ = std::fs::remove_file(&path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Without a usable KVM the device is refused first; with one, the socket path is.
    assert!(stderr.contains("is not a socket") || stderr.to_lowercase().contains("kvm"), "{stderr}");
}
