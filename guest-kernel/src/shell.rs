//! A small interactive shell on COM1, running as pid 1.

use alloc::string::String;

use crashvisor_abi::platform::{Progress, PLATFORM_PROGRESS};

use crate::arch::{cpu, percpu};
use crate::{console, printk, procfs, reboot, time};

const PROMPT: &[u8] = b"~ # ";
const HELP: &str = "\
Commands:
  help                          this list
  uptime                        time since boot
  ps                            tasks: pid, parent, cpu, state, context switches, name
  dmesg                         the kernel log
  cat /proc/cpuinfo|iomem|meminfo|uptime
  echo c > /proc/sysrq-trigger  crash the kernel (sysrq-c)
  panic [MESSAGE]               call panic() with MESSAGE
  sysctl NAME | -w NAME=VALUE | -a     kernel knobs (also cat/echo /proc/sys/kernel/NAME)
  kexec -l|-p [--command-line=TEXT] | -e | -u [-p]   load / start / unload the kernel image
  kdump start|stop|status|config KEY=VALUE   the capture kernel (dump_level, final_action, ...)
  inject FAULT [CPU] [MS]       softlockup hardlockup hung_task deadlock panic oops bug
                                sysrq_crash stack_overflow, optionally ending after MS
  echo TYPE > /sys/kernel/debug/provoke-crash/POINT [&]   LKDTM: run a crash type (DIRECT)
                                or register it at a crash point; cat lists the types
  cat|echo N > /sys/module/lkdtm/parameters/NAME   cpoint_count, recur_count, ...
  taskset -c CPU COMMAND        run COMMAND's LKDTM write on CPU
  reboot                        restart the machine
  poweroff                      power the machine off
";

fn out(text: &str) {
    console::write_text(text.as_bytes());
}

/// The shell task: read a line, run it, repeat.
pub fn main(_: usize) {
    let mut line = String::new();
    console::write_text(PROMPT);
    cpu::outb(PLATFORM_PROGRESS, Progress::ShellReady as u8);
    loop {
        match console::read_byte() {
            b'\r' | b'\n' => {
                console::write_text(b"\n");
                run(line.trim());
                line.clear();
                console::write_text(PROMPT);
            }
            0x7f | 0x08 if line.pop().is_some() => console::write_text(b"\x08 \x08"),
            0x03 => {
                console::write_text(b"^C\n");
                line.clear();
                console::write_text(PROMPT);
            }
            byte @ 0x20..=0x7e if line.len() < 256 => {
                line.push(byte as char);
                console::write_text(&[byte]);
            }
            _ => {}
        }
    }
}

fn run(line: &str) {
    run_on(line, None);
}

/// Runs `line`, with a `taskset -c CPU` prefix taken off first.
fn run_on(line: &str, cpu: Option<usize>) {
    let mut words = line.split_whitespace();
    let Some(command) = words.next() else { return };
    match (command, words.next()) {
        ("taskset", Some("-c")) => match words.next().and_then(|c| c.parse().ok()) {
            Some(cpu) => {
                let rest = line.splitn(4, char::is_whitespace).nth(3).unwrap_or("");
                run_on(rest.trim(), Some(cpu));
            }
            None => out("usage: taskset -c CPU COMMAND\n"),
        },
        ("echo", Some(value)) if line.contains("> /sys/") => {
            let background = line.ends_with('&');
            let path = line.rsplit("> ").next().unwrap_or("").trim_end_matches('&').trim();
            sys_write(path, value, cpu, background);
        }
        ("help", _) => out(HELP),
        ("uptime", _) => uptime(),
        ("ps", _) => ps(),
        ("dmesg", _) => dmesg(),
        ("cat", Some("/proc/cpuinfo")) => out(&procfs::cpuinfo()),
        ("cat", Some("/proc/iomem")) => out(&procfs::iomem()),
        ("cat", Some("/proc/meminfo")) => out(&procfs::meminfo()),
        ("cat", Some("/proc/uptime")) => {
            let ns = time::now_ns();
            out(&alloc::format!("{}.{:02} 0.00\n", ns / 1_000_000_000, ns / 10_000_000 % 100));
        }
        ("echo", Some(key)) if line.ends_with("> /proc/sysrq-trigger") => sysrq(key),
        ("echo", Some(value)) if line.contains("> /proc/sys/") => {
            let path = line.rsplit("> ").next().unwrap_or("").trim();
            sysctl_write(path, value);
        }
        ("cat", Some(path)) if path.starts_with("/proc/sys/") => sysctl_read(path),
        ("cat", Some(path)) if path.starts_with("/sys/") => match crate::sysfs::read(path) {
            Some(text) => out(&text),
            None => out(&alloc::format!("cat: can't open '{path}': No such file or directory\n")),
        },
        ("sysctl", arg) => sysctl_command(arg, words.next()),
        ("inject", Some(fault)) => inject_command(fault, words.next(), words.next()),
        ("kexec", Some(option)) => kexec_command(option, line),
        ("kdump", Some(verb)) => kdump_command(verb, words.next()),
        ("panic", _) => {
            let message = line.strip_prefix("panic").unwrap_or("").trim();
            crate::panic::panic(format_args!("{}", if message.is_empty() { "shell panic" } else { message }));
        }
        ("reboot", _) => reboot::restart(),
        ("poweroff", _) => reboot::power_off(),
        _ => out(&alloc::format!("sh: {command}: not found\n")),
    }
}

/// `echo VALUE > /sys/...`: LKDTM's crash-point files and module parameters. A `DIRECT`
/// write runs its crash type in a child task (as `sh -c` would), on `cpu` (default the shell's
/// CPU 0), and waits for it unless the line ends with `&`.
fn sys_write(path: &str, value: &str, cpu: Option<usize>, background: bool) {
    if let Some(file) = path.strip_prefix(crashvisor_abi::lkdtm::DEBUGFS_DIR).and_then(|f| f.strip_prefix('/')) {
        match crate::lkdtm::debugfs_write(file, value) {
            Ok(Some(kind)) => run_direct(kind, cpu.unwrap_or(0), background),
            Ok(None) => {}
            Err(crate::lkdtm::LkdtmError::UnknownPoint) => {
                out(&alloc::format!("sh: can't create {path}: No such file or directory\n"))
            }
            Err(_) => out("sh: write error: Invalid argument\n"),
        }
    } else if let Some(name) = path.strip_prefix("/sys/module/lkdtm/parameters/") {
        if !crate::lkdtm::set_param(name, value) {
            out("sh: write error: Invalid argument\n");
        }
    } else {
        out(&alloc::format!("sh: can't create {path}: Permission denied\n"));
    }
}

/// The entry of the child that writes to `DIRECT`: `arg` is the crash type's index.
fn direct_child(arg: usize) {
    if let Some(&kind) = crashvisor_abi::lkdtm::CrashType::ALL.get(arg) {
        crate::lkdtm::direct_entry(kind);
    }
}

/// Runs LKDTM crash type `kind` in a child task on `cpu`; waits for it to end (it may never)
/// unless `background`.
fn run_direct(kind: crashvisor_abi::lkdtm::CrashType, cpu: usize, background: bool) {
    use crate::sched::{self, task::Policy};
    let online =
        cpu < crate::smp::possible_cpus() && percpu::of(cpu).online.load(core::sync::atomic::Ordering::Relaxed);
    if !online {
        return out(&alloc::format!("taskset: CPU {cpu} is not online\n"));
    }
    let index = crashvisor_abi::lkdtm::CrashType::ALL.iter().position(|&k| k == kind).unwrap_or(0);
    let Some(child) = sched::spawn("sh", Policy::Normal, Some(cpu), direct_child, index) else {
        return out("sh: can't fork: Out of memory\n");
    };
    let pid = child.pid;
    if background {
        return out(&alloc::format!("[1] {pid}\n"));
    }
    let alive = || {
        let tasks = sched::task::list();
        let found = tasks.iter().any(|t| t.pid == pid && t.state() != sched::task::TASK_DEAD);
        found
    };
    while alive() {
        sched::sleep_ns_state(CHILD_POLL_NS, sched::task::TASK_INTERRUPTIBLE);
    }
}

/// How often the shell looks whether a child it waits for has ended.
const CHILD_POLL_NS: u64 = 10_000_000;

fn sysctl_read(name: &str) {
    match crate::sysctl::get(name) {
        Ok(value) => out(&alloc::format!("{value}\n")),
        Err(_) => out(&alloc::format!("cat: {name}: No such file or directory\n")),
    }
}

fn sysctl_write(name: &str, value: &str) {
    match crate::sysctl::set(name, value) {
        Ok(()) => {}
        Err(crate::sysctl::SysctlError::Unknown) => out(&alloc::format!("sh: can't create {name}: No such file\n")),
        Err(crate::sysctl::SysctlError::Invalid) => out("sh: write error: Invalid argument\n"),
    }
}

/// `sysctl NAME`, `sysctl -w NAME=VALUE`, `sysctl -a`.
fn sysctl_command(first: Option<&str>, second: Option<&str>) {
    match (first, second) {
        (Some("-a"), _) => {
            for name in crate::sysctl::names() {
                if let Ok(value) = crate::sysctl::get(name) {
                    out(&alloc::format!("{name} = {value}\n"));
                }
            }
        }
        (Some("-w"), Some(assignment)) => match assignment.split_once('=') {
            Some((name, value)) => match crate::sysctl::set(name, value) {
                Ok(()) => out(&alloc::format!("{name} = {value}\n")),
                Err(crate::sysctl::SysctlError::Unknown) => out(&alloc::format!(
                    "sysctl: cannot stat /proc/sys/{}: No such file or directory\n",
                    name.replace('.', "/")
                )),
                Err(crate::sysctl::SysctlError::Invalid) => {
                    out(&alloc::format!("sysctl: setting key \"{name}\": Invalid argument\n"))
                }
            },
            None => out("sysctl: -w needs NAME=VALUE\n"),
        },
        (Some(name), _) => match crate::sysctl::get(name) {
            Ok(value) => out(&alloc::format!("{name} = {value}\n")),
            Err(_) => out(&alloc::format!(
                "sysctl: cannot stat /proc/sys/{}: No such file or directory\n",
                name.replace('.', "/")
            )),
        },
        (None, _) => out("usage: sysctl NAME | sysctl -w NAME=VALUE | sysctl -a\n"),
    }
}

/// `kexec -l|-p [--command-line=TEXT]`, `kexec -e`, `kexec -u [-p]` (the image is always the
/// pristine kernel the VMM passed in).
fn kexec_command(option: &str, line: &str) {
    use crate::kexec::load::{self, Kind};
    let cmdline = line.split_once("--command-line=").or_else(|| line.split_once("--append=")).map(|(_, v)| v);
    let cmdline = cmdline.map(|v| v.trim().trim_matches('"')).unwrap_or("");
    match option {
        "-l" | "-p" => {
            let kind = if option == "-l" { Kind::Normal } else { Kind::Crash };
            if let Err(e) = load::load(kind, cmdline) {
                out(&alloc::format!("kexec: {e}\n"));
            }
        }
        "-e" => out(&alloc::format!("kexec: {}\n", load::exec_normal())),
        "-u" => load::unload(if line.contains(" -p") { Kind::Crash } else { Kind::Normal }),
        _ => out("usage: kexec -l|-p [--command-line=TEXT] | kexec -e | kexec -u [-p]\n"),
    }
}

/// `kdump start|stop|status|config KEY=VALUE`.
fn kdump_command(verb: &str, arg: Option<&str>) {
    use crate::kexec::kdump;
    match (verb, arg) {
        ("start", _) => match kdump::start() {
            Ok(()) => out("kdump: capture kernel loaded\n"),
            Err(e) => out(&alloc::format!("kdump: cannot load the capture kernel: {e}\n")),
        },
        ("stop", _) => kdump::stop(),
        ("status", _) => out(&kdump::status()),
        ("config", Some(setting)) => match setting.split_once('=').map(|(k, v)| kdump::configure(k, v)) {
            Some(Ok(())) => {}
            Some(Err(e)) => out(&alloc::format!("kdump: {e}\n")),
            None => out("kdump: config KEY=VALUE\n"),
        },
        _ => out("usage: kdump start|stop|status|config KEY=VALUE\n"),
    }
}

/// `inject FAULT [CPU] [DURATION_MS]`.
fn inject_command(fault: &str, cpu: Option<&str>, duration: Option<&str>) {
    let Some(kind) = crashvisor_abi::control::FaultKind::from_name(fault) else {
        let names: alloc::vec::Vec<&str> = crashvisor_abi::control::FaultKind::ALL.iter().map(|k| k.as_str()).collect();
        return out(&alloc::format!("inject: unknown fault {fault}; one of: {}\n", names.join(" ")));
    };
    let cpu = cpu.and_then(|c| c.parse().ok()).unwrap_or(0);
    let duration_ms = duration.and_then(|d| d.parse().ok());
    let fault =
        crate::inject::Fault { kind, cpu, duration_ms, message: alloc::string::String::from("shell-injected panic") };
    match crate::inject::inject(fault) {
        Ok(pid) => out(&alloc::format!("injected {} on CPU {cpu} (pid {pid})\n", kind.as_str())),
        Err(e) => out(&alloc::format!("inject: {e:?}\n")),
    }
}

fn uptime() {
    let secs = time::now_ns() / 1_000_000_000;
    out(&alloc::format!(
        " up {:02}:{:02}:{:02}, {} CPU{} online\n",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        percpu::online_count(),
        if percpu::online_count() == 1 { "" } else { "s" }
    ));
}

fn ps() {
    out(&procfs::ps());
}

fn dmesg() {
    out(&printk::text_since(0).0);
}

fn sysrq(key: &str) {
    match key.as_bytes() {
        [key] => crate::sysrq::handle(*key),
        _ => out("sh: echo: write error: Invalid argument\n"),
    }
}
