//! The VMM meets bad configuration, unusable devices, and kernels that are broken or not its
//! own: it must say what is wrong in one `vmm: ...` line on stderr and exit with the status
//! `vmm --help` documents, never with a Rust panic.

use crashvisor_tests::{ElfKernel, TempFile, Vm, EXIT_TIMEOUT};

/// Where the hand-made kernels are loaded and entered (the start of high RAM).
const LOAD_GPA: u32 = 0x10_0000;

/// `ud2` (32-bit): an invalid opcode, which with no IDT becomes a triple fault.
const UD2: &[u8] = &[0x0f, 0x0b];

/// `popcnt eax, eax` (32-bit). The host KVM here cannot emulate it at guest ring 0.
const POPCNT: &[u8] = &[0xf3, 0x0f, 0xb8, 0xc0];

/// Powers the machine off through the crashvisor platform device (32-bit code):
///
/// ```text
/// ba 18 05 00 00    mov edx, 0x518   ; PLATFORM_COMMAND = PLATFORM_PORT_BASE (0x510) + 8
/// b8 01 00 00 00    mov eax, 1       ; Command::PowerOff
/// ef                out dx, eax
/// f4                hlt              ; not reached
/// eb fd             jmp $-1          ; back to hlt
/// ```
const PLATFORM_POWER_OFF: &[u8] = &[0xba, 0x18, 0x05, 0x00, 0x00, 0xb8, 0x01, 0x00, 0x00, 0x00, 0xef, 0xf4, 0xeb, 0xfd];

/// Runs `vmm args`, checks it exits with `code` and no Rust panic, and returns its stderr.
#[track_caller]
fn vmm_exits(args: &[&str], code: i32) -> String {
    let mut vm = Vm::start(args);
    vm.expect_exit_code(code, EXIT_TIMEOUT);
    let stderr = vm.stderr();
    if stderr.contains("panicked") || stderr.contains("RUST_BACKTRACE") {
        vm.fail("the VMM panicked instead of reporting an error");
    }
    stderr
}

/// Like `vmm_exits`, and checks that stderr has a `vmm: ` line containing every one of `parts`.
#[track_caller]
fn vmm_fails_saying(args: &[&str], code: i32, parts: &[&str]) -> String {
    let stderr = vmm_exits(args, code);
    let said = stderr.lines().any(|l| l.starts_with("vmm: ") && parts.iter().all(|p| l.contains(p)));
    assert!(said, "`vmm {}` should print a `vmm: ` line containing {parts:?}; stderr was:\n{stderr}", args.join(" "));
    stderr
}

#[test]
fn missing_kvm_device_is_named() {
    vmm_fails_saying(&["--kvm", "/nonexistent/kvm"], 1, &["/nonexistent/kvm", "does not exist"]);
}

#[test]
fn a_file_that_is_not_kvm_is_rejected() {
    vmm_fails_saying(&["--kvm", "/dev/null"], 1, &["/dev/null", "is not a KVM device"]);
}

#[test]
fn vcpu_count_out_of_range() {
    for vcpus in ["0", "17"] {
        vmm_fails_saying(&["--vcpus", vcpus], 1, &[&format!("{vcpus} vCPUs requested"), "1 to 16 vCPUs"]);
    }
}

#[test]
fn memory_size_out_of_range() {
    vmm_fails_saying(&["--memory", "8"], 1, &["8 MiB of memory requested", "32 to 65536 MiB"]);
}

#[test]
fn memory_size_that_is_not_a_number_is_a_usage_error() {
    let stderr = vmm_exits(&["--memory", "abc"], 2);
    assert!(
        stderr.contains("'abc'") && stderr.contains("--memory"),
        "clap should name the bad value and the flag:\n{stderr}"
    );
}

#[test]
fn kernel_command_line_limits() {
    let long = "x".repeat(4000);
    vmm_fails_saying(&["--cmdline", &long], 1, &["the kernel command line is 4000 bytes", "limit"]);
    vmm_fails_saying(&["--cmdline", "a\tb"], 1, &["printable ASCII"]);
}

#[test]
fn configuration_file_mistakes_are_named() {
    let typo = TempFile::with_contents("typo.json", b"{\n  \"vcpus\": 2,\n  \"memroy_mib\": 64\n}\n");
    vmm_fails_saying(&["--config", typo.arg()], 1, &[typo.arg(), "unknown field `memroy_mib`", "line 3"]);
    let range = TempFile::with_contents("range.json", br#"{"vcpus": 17}"#);
    vmm_fails_saying(&["--config", range.arg()], 1, &["17 vCPUs requested", "1 to 16 vCPUs"]);
    vmm_fails_saying(&["--config", "/nonexistent/vm.json"], 1, &["/nonexistent/vm.json", "No such file"]);
    let stderr = vmm_exits(&["--config", range.arg(), "--vcpus", "2"], 2);
    assert!(stderr.contains("--config"), "the flags and a file do not mix:\n{stderr}");
}

#[test]
fn missing_kernel_file() {
    vmm_fails_saying(&["--kernel", "/nonexistent/vmlinux"], 1, &["cannot read kernel file /nonexistent/vmlinux"]);
}

#[test]
fn text_file_is_not_a_kernel() {
    let text = TempFile::with_contents("notes.txt", b"this is not an ELF file\n");
    vmm_fails_saying(&["--kernel", text.arg()], 1, &[text.arg(), "is not a loadable x86_64 ELF kernel"]);
    let empty = TempFile::with_contents("empty", b"");
    vmm_fails_saying(&["--kernel", empty.arg()], 1, &["is not a loadable x86_64 ELF kernel"]);
}

#[test]
fn truncated_and_hostile_elf_headers_are_rejected() {
    let valid = ElfKernel::pvh(UD2, LOAD_GPA).to_bytes();
    // Cut inside the program headers.
    let truncated = TempFile::with_contents("truncated.elf", &valid[..100]);
    vmm_fails_saying(&["--kernel", truncated.arg()], 1, &[truncated.arg()]);
    // e_phnum = 0xffff with e_phoff beyond the end of the file.
    let mut hostile = valid.clone();
    hostile[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes()[..]);
    hostile[0x38..0x3a].copy_from_slice(&0xffffu16.to_le_bytes());
    let hostile = TempFile::with_contents("hostile.elf", &hostile);
    vmm_fails_saying(&["--kernel", hostile.arg()], 1, &[hostile.arg()]);
    // A note whose name size runs past the end of its segment and the file.
    let mut bad_note = valid;
    bad_note[0xb0..0xb4].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    let bad_note = TempFile::with_contents("bad-note.elf", &bad_note);
    vmm_fails_saying(&["--kernel", bad_note.arg()], 1, &[bad_note.arg()]);
}

#[test]
fn elf_without_pvh_note_is_rejected() {
    let kernel = ElfKernel::pvh(UD2, LOAD_GPA).without_pvh_note().write_temp("no-pvh");
    vmm_fails_saying(&["--kernel", kernel.arg()], 1, &[kernel.arg(), "has no PVH entry point"]);
}

#[test]
fn kernel_beyond_guest_memory_names_the_size_needed() {
    let kernel = ElfKernel::pvh(UD2, 200 << 20).write_temp("high");
    vmm_fails_saying(&["--kernel", kernel.arg(), "--memory", "64"], 1, &["needs guest memory up to 201 MiB", "64 MiB"]);
}

#[test]
fn console_file_that_cannot_be_created() {
    vmm_fails_saying(
        &["--console", "/nonexistent/dir/console.log"],
        1,
        &["cannot open console output /nonexistent/dir/console.log"],
    );
}

#[test]
fn instruction_kvm_cannot_emulate_is_reported() {
    let kernel = ElfKernel::pvh(POPCNT, LOAD_GPA).write_temp("popcnt");
    vmm_fails_saying(&["--kernel", kernel.arg()], 5, &["RIP 0x0000000000100000", "f3 0f b8 c0"]);
}

#[test]
fn foreign_pvh_kernel_boots_and_powers_off() {
    let kernel = ElfKernel::pvh(PLATFORM_POWER_OFF, LOAD_GPA).write_temp("poweroff");
    let stderr = vmm_exits(&["--kernel", kernel.arg()], 0);
    assert!(stderr.is_empty(), "a clean power-off is silent:\n{stderr}");
}

#[test]
fn triple_fault_without_reboot_exits_4() {
    let kernel = ElfKernel::pvh(UD2, LOAD_GPA).write_temp("ud2");
    vmm_fails_saying(&["--kernel", kernel.arg(), "--no-reboot"], 4, &["triple-faulted"]);
}

#[test]
fn triple_fault_loop_gives_up_with_4() {
    let kernel = ElfKernel::pvh(UD2, LOAD_GPA).write_temp("ud2-loop");
    vmm_fails_saying(&["--kernel", kernel.arg()], 4, &["triple-faulted"]);
}

#[test]
fn log_lines_on_a_pipe_have_no_colour_codes() {
    let kernel = ElfKernel::pvh(UD2, LOAD_GPA).write_temp("ud2-colour");
    // The reset loop is reported by a log line (tracing) before the `vmm: ` line.
    let stderr = vmm_exits(&["--kernel", kernel.arg()], 4);
    assert!(stderr.contains("giving up"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "stderr is a pipe, yet has escape sequences:\n{stderr:?}");
}
