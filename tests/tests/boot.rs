//! The embedded guest kernel boots on 1, 2 and 16 vCPUs with small and large memory (also
//! above the 3-4 GiB MMIO hole), its shell works, and it panics, reboots and powers off the way
//! Linux does; the VMM reboots it in place, or exits with the documented status.

use crashvisor_tests::{log_text, TempFile, Vm, BOOT_TIMEOUT, COMMAND_TIMEOUT, EXIT_TIMEOUT, PROMPT};
use std::time::{Duration, Instant};

/// Shell commands `help` must list.
const SHELL_COMMANDS: &[&str] = &[
    "help",
    "uptime",
    "ps",
    "dmesg",
    "cat /proc/cpuinfo",
    "echo c > /proc/sysrq-trigger",
    "panic",
    "reboot",
    "poweroff",
];

/// A hole in guest RAM below 1 MiB: the legacy VGA/BIOS range 0xa0000-0xfffff.
const LOW_HOLE_KIB: u64 = 384;

#[test]
fn boots_1_cpu_with_64_mib() {
    boot_and_check(1, 64);
}

#[test]
fn boots_2_cpus_with_512_mib() {
    boot_and_check(2, 512);
}

#[test]
fn boots_2_cpus_with_64_mib() {
    boot_and_check(2, 64);
}

#[test]
fn boots_1_cpu_with_512_mib() {
    boot_and_check(1, 512);
}

#[test]
fn boots_the_most_cpus() {
    boot_and_check(16, 128);
}

#[test]
fn boots_with_ram_above_the_4_gib_hole() {
    let mut vm = Vm::start(&["--memory", "4096"]);
    vm.boot();
    let iomem = vm.run("cat /proc/iomem");
    for wanted in ["00100000-bfffffff : System RAM", "100000000-13fffffff : System RAM"] {
        assert!(iomem.iter().any(|l| l == wanted), "/proc/iomem lacks {wanted:?}: {iomem:#?}");
    }
    let meminfo = vm.run("cat /proc/meminfo");
    let total = format!("{} kB", 4096 * 1024 - LOW_HOLE_KIB);
    assert!(
        meminfo[0].starts_with("MemTotal:") && meminfo[0].ends_with(&total),
        "MemTotal should be {total}: {meminfo:#?}"
    );
    power_off(&mut vm);
}

/// Boots with `cpus` vCPUs and `memory_mib` MiB, checks what the kernel and the shell report,
/// and powers off.
fn boot_and_check(cpus: usize, memory_mib: u64) {
    let mut vm = Vm::start(&["--vcpus", &cpus.to_string(), "--memory", &memory_mib.to_string()]);
    check_boot_log(&mut vm, cpus, memory_mib);
    check_ps(&mut vm, cpus);
    check_cpuinfo(&mut vm, cpus);
    check_memory(&mut vm, memory_mib);
    check_uptime(&mut vm, cpus);
    check_dmesg(&mut vm, cpus);
    check_help(&mut vm);
    let unknown = vm.run("frobnicate now");
    assert_eq!(unknown, ["sh: frobnicate: not found"]);
    power_off(&mut vm);
}

fn check_boot_log(vm: &mut Vm, cpus: usize, memory_mib: u64) {
    let log = vm.boot();
    let texts: Vec<&str> = log.iter().map(|l| log_text(l)).collect();
    assert!(texts[0].starts_with("Linux version "), "the first line is the banner: {log:#?}");
    let brought_up = format!("smp: Brought up 1 node, {cpus} CPU{}", if cpus == 1 { "" } else { "s" });
    let last_ram = (memory_mib << 20) - 1;
    for wanted in [
        brought_up.as_str(),
        &format!("BIOS-e820: [mem 0x0000000000100000-{last_ram:#018x}] usable"),
        "Run /bin/sh as init process",
    ] {
        assert!(texts.contains(&wanted), "boot log lacks {wanted:?}: {log:#?}");
    }
    assert!(!texts.iter().any(|t| t.contains("do_boot_cpu failed")), "a CPU failed to start: {log:#?}");
}

/// One row of the shell's `ps`: `  PID  PPID CPU S    NVCSW   NIVCSW COMMAND`.
#[derive(Debug)]
struct Task {
    pid: u32,
    ppid: u32,
    cpu: usize,
    state: char,
    command: String,
}

fn ps(vm: &mut Vm) -> Vec<Task> {
    let out = vm.run("ps");
    let (header, rows) = out.split_first().expect("ps prints a header");
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["PID", "PPID", "CPU", "S", "NVCSW", "NIVCSW", "COMMAND"]
    );
    rows.iter()
        .map(|row| {
            let f: Vec<&str> = row.split_whitespace().collect();
            let number = |i: usize| -> u64 {
                f.get(i)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("field {i} of ps row {row:?} is not a number"))
            };
            assert_eq!(f.len(), 7, "ps row {row:?}");
            assert_eq!(f[3].len(), 1, "one state letter in ps row {row:?}");
            number(4); // voluntary context switches
            number(5); // involuntary context switches
            Task {
                pid: number(0) as u32,
                ppid: number(1) as u32,
                cpu: number(2) as usize,
                state: f[3].chars().next().expect("checked above"),
                command: f[6].to_string(),
            }
        })
        .collect()
}

fn check_ps(vm: &mut Vm, cpus: usize) {
    let tasks = ps(vm);
    for task in &tasks {
        assert!(task.cpu < cpus, "{task:?} is on a CPU that does not exist");
        assert!("RSDTtXZIP".contains(task.state), "{task:?} has an unknown state");
        // Per-CPU kernel threads (swapper/N, and any migration/N, ksoftirqd/N, ... to come)
        // are bound to the CPU their name says: each CPU really runs its own threads.
        if let Some(n) = per_cpu_thread_cpu(&task.command) {
            assert_eq!(task.cpu, n, "{task:?} runs off its CPU");
        }
    }
    for cpu in 0..cpus {
        let name = format!("[swapper/{cpu}]");
        let idle: Vec<_> = tasks.iter().filter(|t| t.command == name).collect();
        assert_eq!(idle.len(), 1, "one idle task {name} expected: {tasks:#?}");
        assert_eq!(idle[0].pid, 0, "{name} has pid 0: {tasks:#?}");
        assert_eq!(idle[0].state, 'R', "idle tasks are always runnable: {tasks:#?}");
    }
    assert_eq!(
        tasks.iter().filter(|t| t.command.starts_with("[swapper/")).count(),
        cpus,
        "one idle task per CPU: {tasks:#?}"
    );
    let sh: Vec<_> = tasks.iter().filter(|t| t.command == "sh").collect();
    assert_eq!(sh.len(), 1, "one shell: {tasks:#?}");
    assert_eq!(sh[0].pid, 1, "the shell is init: {tasks:#?}");
    assert_eq!(sh[0].state, 'R', "the shell runs ps itself: {tasks:#?}");
    let mut pids: Vec<u32> = tasks.iter().map(|t| t.pid).filter(|&p| p != 0).collect();
    pids.sort_unstable();
    let count = pids.len();
    pids.dedup();
    assert_eq!(pids.len(), count, "pids are unique: {tasks:#?}");
}

/// `Some(n)` for a per-CPU kernel thread name `[name/n]`.
fn per_cpu_thread_cpu(command: &str) -> Option<usize> {
    let inner = command.strip_prefix('[')?.strip_suffix(']')?;
    inner.rsplit_once('/')?.1.parse().ok()
}

/// Linux's init has parent 0, and every other parent is a task that `ps` lists.
#[test]
fn ps_parents_exist() {
    let mut vm = Vm::start(&["--vcpus", "2", "--memory", "64"]);
    vm.boot();
    let tasks = ps(&mut vm);
    for task in tasks.iter().filter(|t| t.pid != 0) {
        if task.pid == 1 {
            assert_eq!(task.ppid, 0, "init's parent is 0: {tasks:#?}");
        } else {
            assert!(tasks.iter().any(|t| t.pid == task.ppid), "{task:?} has a parent ps does not list: {tasks:#?}");
        }
    }
}

fn check_cpuinfo(vm: &mut Vm, cpus: usize) {
    let out = vm.run("cat /proc/cpuinfo");
    let processors: Vec<&str> = out.iter().filter(|l| l.starts_with("processor\t: ")).map(String::as_str).collect();
    let expected: Vec<String> = (0..cpus).map(|n| format!("processor\t: {n}")).collect();
    assert_eq!(processors, expected, "/proc/cpuinfo: {out:#?}");
}

fn check_memory(vm: &mut Vm, memory_mib: u64) {
    let iomem = vm.run("cat /proc/iomem");
    let last_ram = (memory_mib << 20) - 1;
    for wanted in ["00000000-0009ffff : System RAM".to_string(), format!("00100000-{last_ram:08x} : System RAM")] {
        assert!(iomem.contains(&wanted), "/proc/iomem lacks {wanted:?}: {iomem:#?}");
    }
    assert!(
        iomem.iter().any(|l| l.starts_with("  01000000-") && l.ends_with(" : Kernel code")),
        "the kernel's code is at 16 MiB: {iomem:#?}"
    );

    let meminfo = vm.run("cat /proc/meminfo");
    let kib = |field: &str| -> u64 {
        meminfo
            .iter()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().strip_suffix(" kB"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("/proc/meminfo has no {field} line: {meminfo:#?}"))
    };
    let total = kib("MemTotal:");
    let configured = memory_mib * 1024;
    assert_eq!(total, configured - LOW_HOLE_KIB, "MemTotal is the RAM the VM was given, less the hole below 1 MiB");
    let free = kib("MemFree:");
    assert!(free < total && free > total / 2, "MemFree {free} kB of {total} kB after boot");
}

fn check_uptime(vm: &mut Vm, cpus: usize) {
    let out = vm.run("uptime");
    let online = format!(", {cpus} CPU{} online", if cpus == 1 { "" } else { "s" });
    assert!(out.len() == 1 && out[0].starts_with(" up 00:0") && out[0].ends_with(&online), "uptime: {out:#?}");
    let proc_uptime = vm.run("cat /proc/uptime");
    let seconds: f64 = proc_uptime
        .first()
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("/proc/uptime: {proc_uptime:#?}"));
    assert!(seconds > 0.0 && seconds < 600.0, "/proc/uptime: {proc_uptime:#?}");
}

fn check_dmesg(vm: &mut Vm, cpus: usize) {
    let out = vm.run("dmesg");
    let texts: Vec<&str> = out.iter().map(|l| log_text(l)).collect();
    assert!(texts[0].starts_with("Linux version "), "dmesg: {out:#?}");
    assert!(texts.contains(&"Run /bin/sh as init process"), "dmesg: {out:#?}");
    assert!(texts.iter().any(|t| t.starts_with(&format!("smp: Brought up 1 node, {cpus} CPU"))), "dmesg: {out:#?}");
    assert!(out.iter().all(|l| log_text(l).len() < l.len()), "every dmesg line has a timestamp: {out:#?}");
}

fn check_help(vm: &mut Vm) {
    let help = vm.run("help").join("\n");
    for command in SHELL_COMMANDS {
        assert!(help.contains(command), "help does not list {command:?}:\n{help}");
    }
}

/// `poweroff` at the prompt: the kernel says so and the VMM exits 0.
fn power_off(vm: &mut Vm) {
    vm.send_line("poweroff");
    vm.expect(|l: &str| log_text(l) == "reboot: Power down", COMMAND_TIMEOUT);
    vm.expect_exit_code(0, EXIT_TIMEOUT);
}

/// A call-trace line in Linux's form ` name+0xoff/0xsize` (optionally ` ? name+...` for an
/// unreliable frame); returns the name, checking the offset lies within the function.
fn trace_frame(text: &str) -> Option<&str> {
    let frame = text.strip_prefix(' ')?;
    let frame = frame.strip_prefix("? ").unwrap_or(frame);
    let (name, location) = frame.rsplit_once('+')?;
    let (offset, size) = location.split_once('/')?;
    let hex = |v: &str| u64::from_str_radix(v.strip_prefix("0x")?, 16).ok();
    let (offset, size) = (hex(offset)?, hex(size)?);
    // offset == size is a return address just past a function whose last instruction is a call
    // that does not return (Linux's %pB prints it the same way).
    let plausible = !name.is_empty() && !name.contains(' ') && offset <= size && size > 0;
    plausible.then_some(name)
}

/// Checks a whole Linux-style panic report for `message`, raised by the shell (pid 1).
fn expect_panic_report(vm: &mut Vm, message: &str) {
    let exactly = |wanted: String| move |l: &str| log_text(l) == wanted;
    vm.expect(exactly(format!("Kernel panic - not syncing: {message}")), COMMAND_TIMEOUT);
    vm.expect(|l: &str| log_text(l).starts_with("CPU: 0 UID: 0 PID: 1 Comm: sh"), COMMAND_TIMEOUT);
    vm.expect(exactly("Call Trace:".into()), COMMAND_TIMEOUT);
    vm.expect(exactly(" <TASK>".into()), COMMAND_TIMEOUT);
    let mut frames = Vec::new();
    loop {
        let line = vm.expect(|_: &str| true, COMMAND_TIMEOUT);
        let text = log_text(&line);
        if text == " </TASK>" {
            break;
        }
        match trace_frame(text) {
            Some(name) => frames.push(name.to_string()),
            None => vm.fail(&format!("{line:?} is not a call-trace frame")),
        }
    }
    if !frames.iter().any(|f| f == "panic::panic") {
        vm.fail(&format!("the call trace does not name panic::panic: {frames:?}"));
    }
    vm.expect(exactly("Kernel Offset: disabled".into()), COMMAND_TIMEOUT);
    vm.expect(exactly(format!("---[ end Kernel panic - not syncing: {message} ]---")), COMMAND_TIMEOUT);
}

#[test]
fn shell_panic_prints_a_linux_style_report_and_stays_down() {
    let mut vm = Vm::start(&["--vcpus", "2", "--memory", "64"]);
    vm.boot();
    vm.send_line("panic some message");
    expect_panic_report(&mut vm, "some message");
    // With the default panic=0 the kernel waits forever; the VMM keeps running.
    if !vm.is_running() {
        vm.fail("the VMM exited after a panic with panic=0");
    }
}

#[test]
fn sysrq_c_crashes_the_kernel() {
    let mut vm = Vm::start(&["--memory", "64"]);
    vm.boot();
    vm.send_line("echo c > /proc/sysrq-trigger");
    vm.expect(|l: &str| log_text(l) == "sysrq: Trigger a crash", COMMAND_TIMEOUT);
    expect_panic_report(&mut vm, "sysrq triggered crash");
}

/// Waits for the banner of a new boot, its command line (a reboot keeps the configuration),
/// and the shell prompt after it.
fn expect_new_boot(vm: &mut Vm, cmdline: &str) {
    vm.expect(|l: &str| log_text(l).starts_with("Linux version "), BOOT_TIMEOUT);
    let wanted = format!("Command line: {cmdline}");
    vm.expect(|l: &str| log_text(l) == wanted, BOOT_TIMEOUT);
    vm.boot();
}

#[test]
fn panic_timeout_reboots_in_place() {
    let mut vm = Vm::start(&["--vcpus", "2", "--memory", "64", "--cmdline", "panic=1"]);
    vm.boot();
    vm.send_line("panic reboot me");
    vm.expect(|l: &str| log_text(l) == "Kernel panic - not syncing: reboot me", COMMAND_TIMEOUT);
    vm.expect(|l: &str| log_text(l) == "Rebooting in 1 seconds..", COMMAND_TIMEOUT);
    expect_new_boot(&mut vm, "panic=1");
    check_ps(&mut vm, 2);
    power_off(&mut vm);
}

#[test]
fn shell_reboot_reboots_in_place() {
    let mut vm = Vm::start(&["--memory", "64", "--cmdline", "loglevel=7 panic=0"]);
    vm.boot();
    vm.send_line("reboot");
    vm.expect(|l: &str| log_text(l) == "reboot: Restarting system", COMMAND_TIMEOUT);
    expect_new_boot(&mut vm, "loglevel=7 panic=0");
    power_off(&mut vm);
}

#[test]
fn no_reboot_turns_a_reboot_into_exit_3() {
    let mut vm = Vm::start(&["--memory", "64", "--no-reboot"]);
    vm.boot();
    vm.send_line("reboot");
    vm.expect(|l: &str| log_text(l) == "reboot: Restarting system", COMMAND_TIMEOUT);
    vm.expect_exit_code(3, EXIT_TIMEOUT);
    let console = vm.console();
    assert_eq!(console.matches("Linux version").count(), 1, "no second boot");
}

/// The largest memory `vmm` accepts is all usable by the guest. Slow: setting up 64 GiB takes
/// the guest about 30 s when its ring-0 code is emulated.
#[test]
fn largest_memory_is_all_usable() {
    let mut vm = Vm::start(&["--memory", "65536"]);
    let log = vm.expect_prompt(2 * BOOT_TIMEOUT);
    assert!(!log.iter().any(|l| l.contains("will not be used")), "the guest ignores some RAM: {log:#?}");
    let meminfo = vm.run("cat /proc/meminfo");
    let total = format!("{} kB", 65536 * 1024 - LOW_HOLE_KIB);
    assert!(
        meminfo[0].starts_with("MemTotal:") && meminfo[0].ends_with(&total),
        "MemTotal should be {total}: {meminfo:#?}"
    );
    power_off(&mut vm);
}

#[test]
fn shell_line_editing_and_console_quit() {
    let mut vm = Vm::start(&["--memory", "64"]);
    vm.boot();
    // DEL erases the `z`: the shell runs `ps`.
    vm.send(b"pz\x7fs\n");
    let out = vm.expect_prompt(COMMAND_TIMEOUT);
    assert!(out.iter().any(|l| l.contains("PID  PPID")), "`pz<DEL>s` did not run ps: {out:#?}");
    // Ctrl-C drops the line typed so far.
    vm.send(b"reboot\x03");
    assert_eq!(vm.expect_prompt(COMMAND_TIMEOUT), ["reboot^C"]);
    // Ctrl-A x quits the VMM with status 0.
    vm.send(b"\x01x");
    vm.expect_exit_code(0, EXIT_TIMEOUT);
}

#[test]
fn console_file_receives_the_console() {
    let file = TempFile::new("console.log");
    let mut vm = Vm::start(&["--memory", "64", "--console", file.arg()]);
    let prompt_deadline = Instant::now() + BOOT_TIMEOUT;
    // A regular file offers no readiness event in std: look at it every few milliseconds.
    while !std::fs::read_to_string(file.path()).unwrap_or_default().ends_with(PROMPT) {
        if Instant::now() > prompt_deadline || !vm.is_running() {
            let seen = std::fs::read_to_string(file.path()).unwrap_or_default();
            vm.fail(&format!("no prompt in {}:\n{seen}", file.arg()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    vm.send_line("poweroff");
    vm.expect_exit_code(0, EXIT_TIMEOUT);
    let console = std::fs::read_to_string(file.path()).expect("the console file exists");
    for wanted in ["Linux version ", "~ # poweroff\r\n", "reboot: Power down\r\n"] {
        assert!(console.contains(wanted), "console file lacks {wanted:?}:\n{console}");
    }
    assert_eq!(vm.console(), "", "nothing goes to stdout");
}
