//! A small interactive shell on COM1, running as pid 1.

use alloc::string::String;
use core::fmt::Write;
use core::sync::atomic::Ordering;

use crashvisor_abi::platform::{Progress, PLATFORM_PROGRESS};
use crashvisor_klib::printk::{format_timestamp, TIMESTAMP_MAX_LEN};

use crate::arch::{cpu, percpu};
use crate::sched::task;
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
    let mut words = line.split_whitespace();
    let Some(command) = words.next() else { return };
    match (command, words.next()) {
        ("help", _) => out(HELP),
        ("uptime", _) => uptime(),
        ("ps", _) => ps(),
        ("dmesg", _) => dmesg(),
        ("cat", Some("/proc/cpuinfo")) => out(&procfs::cpuinfo()),
        ("cat", Some("/proc/iomem")) => out(&procfs::iomem()),
        ("cat", Some("/proc/meminfo")) => out(&procfs::meminfo()),
        ("cat", Some("/proc/uptime")) => {
            let ns = time::now_ns();
            out(&alloc::format!(
                "{}.{:02} 0.00\n",
                ns / 1_000_000_000,
                ns / 10_000_000 % 100
            ));
        }
        ("echo", Some(key)) if line.ends_with("> /proc/sysrq-trigger") => sysrq(key),
        ("panic", _) => {
            let message = line.strip_prefix("panic").unwrap_or("").trim();
            crate::panic::panic(format_args!(
                "{}",
                if message.is_empty() {
                    "shell panic"
                } else {
                    message
                }
            ));
        }
        ("reboot", _) => reboot::restart(),
        ("poweroff", _) => reboot::power_off(),
        _ => out(&alloc::format!("sh: {command}: not found\n")),
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
    let mut text = String::from("  PID  PPID CPU S    NVCSW   NIVCSW COMMAND\n");
    task::for_each(|t| {
        let kernel_thread = t.flags & task::PF_KTHREAD != 0 && t.pid != 1;
        let (open, close) = if kernel_thread { ("[", "]") } else { ("", "") };
        let _ = writeln!(
            text,
            "{:>5} {:>5} {:>3} {} {:>8} {:>8} {open}{}{close}",
            t.pid,
            t.ppid,
            t.cpu(),
            t.state_char(),
            t.nvcsw.load(Ordering::Relaxed),
            t.nivcsw.load(Ordering::Relaxed),
            t.comm()
        );
    });
    out(&text);
}

fn dmesg() {
    let mut text = String::new();
    printk::for_each_record(0, |record| {
        let mut stamp = [0u8; TIMESTAMP_MAX_LEN];
        text.push_str(
            core::str::from_utf8(format_timestamp(record.ts_nsec, &mut stamp)).unwrap_or(""),
        );
        text.push_str(core::str::from_utf8(record.text).unwrap_or("?"));
        text.push('\n');
    });
    out(&text);
}

fn sysrq(key: &str) {
    match key {
        "c" => {
            printk::console_verbose();
            crate::pr_info!("sysrq: Trigger a crash");
            crate::panic::panic(format_args!("sysrq triggered crash\n"));
        }
        "b" => {
            crate::pr_info!("sysrq: Resetting");
            reboot::emergency_restart();
        }
        "o" => {
            crate::pr_info!("sysrq: Power Off");
            reboot::power_off();
        }
        _ => crate::pr_info!("sysrq: HELP : reboot(b) crash(c) poweroff(o)"),
    }
}
