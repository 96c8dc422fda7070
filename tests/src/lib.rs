//! Support for the end-to-end tests in `tests/tests/`: they run the real `vmm` binary on the
//! real `/dev/kvm` and talk to the guest's shell over the console, like a person would.
//!
//! ```no_run
//! use crashvisor_tests::{Vm, EXIT_TIMEOUT};
//!
//! let mut vm = Vm::start(&["--vcpus", "2", "--memory", "128"]);
//! let boot_log = vm.boot(); // every console line up to the first shell prompt
//! assert!(boot_log.iter().any(|l| l.ends_with("smp: Brought up 1 node, 2 CPUs")));
//! let ps = vm.run("ps"); // the command's output lines, without its echo and the next prompt
//! assert!(ps.iter().any(|l| l.ends_with(" sh")));
//! vm.send_line("poweroff");
//! vm.expect("reboot: Power down", EXIT_TIMEOUT);
//! vm.expect_exit_code(0, EXIT_TIMEOUT);
//! ```
//!
//! The binaries are found next to the test executable (`target/<profile>/vmm`), so build them
//! with the same profile first: `cargo test --workspace` does (the `vmm` and `dumpd` packages'
//! own `cli` tests make Cargo build their binaries), as does
//! `cargo test -p vmm -p dumpd -p crashvisor-tests`.
//!
//! Guest ring-0 code may run under an instruction emulator on some hosts, so every wait has a
//! generous upper bound but returns as soon as the awaited output appears: nothing sleeps for a
//! fixed time. The host may have only a few cores, so `Vm` serialises the VMs of one test binary
//! (see [`Vm::start`]); keep VM tests in few binaries.
//!
//! A VM started with [`Vm::start_controlled`] also serves the control socket, and the `Vm` has a
//! client on it ([`Control`]): requests, and the events the VMM streams, stamped on arrival.
//!
//! ```no_run
//! use crashvisor_tests::{kernel_text, Vm, COMMAND_TIMEOUT};
//! use std::time::Duration;
//!
//! let mut vm = Vm::start_controlled(&["--vcpus", "2", "--cmdline", "watchdog_thresh=2"]);
//! vm.wait_booted();
//! let fault = vm.inject("softlockup", 1, None);
//! let event = vm.wait_event(|e| e.is_lockup("soft"), "a soft lockup", Duration::from_secs(60));
//! println!("detected {:?} after the ack", event.at - fault.at);
//! vm.expect(|l: &str| kernel_text(l).starts_with("watchdog: BUG: soft lockup - CPU#1"), COMMAND_TIMEOUT);
//! ```
#![deny(missing_docs)]

pub mod api;
mod control;
mod elf;
pub mod fill_kernel;
pub mod kdump;
mod temp;
mod vm;
pub mod windows;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

pub use control::{Control, ControlFailure, ErrorReply, Event, Reply};
pub use elf::ElfKernel;
pub use temp::{TempDir, TempFile};
pub use vm::{Injected, LineMatcher, Vm};

/// Upper bound for a boot to the first shell prompt.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for one shell command to print its output and the next prompt.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for the VMM to exit once the guest has decided to stop (or for the VMM to reject
/// its arguments).
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for a lockup detector to fire after a fault: a bound for a lost report, not a
/// measured window (tests check windows with the steal time left out). The detectors count
/// their CPU's run time, so on a loaded host a report comes later in wall time: 46 s after the
/// fault with 42 s of steal was seen with two busy loops and parallel builds on a 2-core host.
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(180);
/// The guest shell's prompt.
pub const PROMPT: &str = "~ # ";
/// The KVM device the tests need.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// Path of the `vmm` binary built with the same profile as the running test executable.
///
/// # Panics
///
/// If it has not been built, with a message saying how to build it.
#[track_caller]
pub fn vmm_binary() -> PathBuf {
    built_binary("vmm", "vmm")
}

/// Path of the `dumpd` binary built with the same profile as the running test executable.
///
/// # Panics
///
/// If it has not been built, with a message saying how to build it.
#[track_caller]
pub fn dumpd_binary() -> PathBuf {
    built_binary("dumpd", "dumpd")
}

/// `target/<profile>/<name>`, found from the test executable `target/<profile>/deps/<test>-<hash>`.
#[track_caller]
fn built_binary(name: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("test executables live in target/<profile>/deps/");
    let binary = profile_dir.join(name);
    assert!(
        binary.is_file(),
        "{} does not exist. The end-to-end tests run the real binaries: build them first with \
         `cargo build -p {package}` (add --release if the tests run with --release), or run \
         `cargo test --workspace`, which builds them.",
        binary.display()
    );
    binary
}

/// Checks that `/dev/kvm` exists and can be opened, once per test binary.
///
/// # Panics
///
/// If it cannot: these tests boot real VMs and deliberately fail, rather than skip, on a host
/// without KVM, so that a green run always means the VMs really ran.
#[track_caller]
pub fn require_kvm() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let result = CHECKED.get_or_init(|| {
        let device = Path::new(KVM_DEVICE);
        if !device.exists() {
            return Err(format!(
                "{KVM_DEVICE} does not exist: the end-to-end tests boot real VMs and need KVM \
                 (load kvm_intel or kvm_amd, or run on a host with hardware virtualisation). \
                 They fail instead of skipping so that a green run means the VMs really ran."
            ));
        }
        std::fs::OpenOptions::new().read(true).write(true).open(device).map(drop).map_err(|e| {
            format!(
                "cannot open {KVM_DEVICE} for reading and writing ({e}): add this user to \
                     the kvm group or fix the device's permissions"
            )
        })
    });
    if let Err(message) = result {
        panic!("{message}");
    }
}

/// The text of a kernel log line without its `[    1.234567] ` timestamp (lines without one
/// are returned whole).
pub fn log_text(line: &str) -> &str {
    match line.strip_prefix('[').and_then(|rest| rest.split_once("] ")) {
        Some((stamp, text))
            if !stamp.is_empty() && stamp.trim_start().bytes().all(|b| b.is_ascii_digit() || b == b'.') =>
        {
            text
        }
        _ => line,
    }
}

/// The text of a kernel log line as the console shows it: without a shell prompt the line may
/// start with (the kernel prints after a prompt that has no line ending) and without its
/// timestamp.
pub fn kernel_text(line: &str) -> &str {
    let mut rest = line;
    while let Some(after) = rest.strip_prefix(PROMPT) {
        rest = after;
    }
    log_text(rest)
}

/// A kernel log line, matched on its [`kernel_text`]: exactly, or by its start. Failure messages
/// name what was awaited.
#[derive(Clone, Debug)]
pub struct KernelLine {
    text: String,
    whole: bool,
}

impl KernelLine {
    /// A line whose text is exactly `text`.
    pub fn exactly(text: impl Into<String>) -> Self {
        Self { text: text.into(), whole: true }
    }

    /// A line whose text starts with `prefix`.
    pub fn starting(prefix: impl Into<String>) -> Self {
        Self { text: prefix.into(), whole: false }
    }
}

impl LineMatcher for KernelLine {
    fn matches(&self, line: &str) -> bool {
        let text = kernel_text(line);
        if self.whole {
            text == self.text
        } else {
            text.starts_with(&self.text)
        }
    }

    fn describe(&self) -> String {
        if self.whole {
            format!("the kernel line {:?}", self.text)
        } else {
            format!("a kernel line starting with {:?}", self.text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_text_strips_a_leading_prompt_and_the_timestamp() {
        assert_eq!(kernel_text("~ # [    5.834981] watchdog: BUG: x"), "watchdog: BUG: x");
        assert_eq!(kernel_text("~ # ~ # [    1.000000] y"), "y");
        assert_eq!(kernel_text("[    1.000000] y"), "y");
        assert_eq!(kernel_text("~ # ps"), "ps");
    }

    #[test]
    fn log_text_strips_printk_timestamps_only() {
        assert_eq!(log_text("[    0.003975] Linux version 6.18"), "Linux version 6.18");
        assert_eq!(log_text("[    2.029064]  <TASK>"), " <TASK>");
        assert_eq!(log_text("[12345.000001] x"), "x");
        assert_eq!(log_text("~ # ps"), "~ # ps");
        assert_eq!(log_text("[mem 0x0-0x1] usable"), "[mem 0x0-0x1] usable");
        assert_eq!(log_text("[] x"), "[] x");
    }
}
