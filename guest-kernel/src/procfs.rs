//! The text of the `/proc` files the shell can show, in Linux's formats.

use alloc::string::String;
use core::fmt::Write;
use core::sync::atomic::Ordering;

use crashvisor_klib::memmap::RangeKind;

use crate::arch::{cpu, percpu};
use crate::{mm, setup, smp, time};

/// `/proc/cpuinfo` (the fields a kernel engineer looks at first).
pub fn cpuinfo() -> String {
    let mut out = String::new();
    let mut brand = [0u8; 48];
    for (i, leaf) in (0x8000_0002u32..=0x8000_0004).enumerate() {
        let r = cpu::cpuid(leaf, 0);
        for (j, word) in [r.eax, r.ebx, r.ecx, r.edx].iter().enumerate() {
            brand[i * 16 + j * 4..i * 16 + j * 4 + 4].copy_from_slice(&word.to_le_bytes());
        }
    }
    let brand = core::str::from_utf8(&brand).unwrap_or("").trim_matches(|c: char| c == '\0' || c == ' ');
    let v = cpu::cpuid(0, 0);
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&v.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&v.edx.to_le_bytes());
    vendor[8..].copy_from_slice(&v.ecx.to_le_bytes());
    let signature = cpu::cpuid(1, 0).eax;
    let khz = time::tsc_khz();
    for n in (0..smp::possible_cpus()).filter(|&c| percpu::of(c).online.load(Ordering::Relaxed)) {
        let _ = writeln!(out, "processor\t: {n}");
        let _ = writeln!(out, "vendor_id\t: {}", core::str::from_utf8(&vendor).unwrap_or("unknown"));
        let _ = writeln!(out, "cpu family\t: {}", (signature >> 8) & 0xf);
        let _ = writeln!(out, "model\t\t: {}", ((signature >> 4) & 0xf) | ((signature >> 12) & 0xf0));
        let _ = writeln!(out, "model name\t: {brand}");
        let _ = writeln!(out, "stepping\t: {}", signature & 0xf);
        let _ = writeln!(out, "cpu MHz\t\t: {}.{:03}", khz / 1000, khz % 1000);
        let _ = writeln!(out, "physical id\t: 0");
        let _ = writeln!(out, "siblings\t: {}", smp::possible_cpus());
        let _ = writeln!(out, "core id\t\t: {n}");
        let _ = writeln!(out, "cpu cores\t: {}", smp::possible_cpus());
        let _ = writeln!(out, "apicid\t\t: {}", percpu::of(n).apic_id.load(Ordering::Relaxed));
        let _ = writeln!(out, "flags\t\t: fpu tsc msr pae apic x2apic tsc_deadline_timer pdpe1gb lm hypervisor");
        let _ = writeln!(out);
    }
    out
}

fn iomem_line(out: &mut String, depth: usize, start: u64, end: u64, name: &str) {
    let _ = writeln!(out, "{:indent$}{:08x}-{:08x} : {}", "", start, end - 1, name, indent = depth * 2);
}

/// `/proc/iomem`: RAM and reserved ranges, with the kernel's own ranges nested under RAM.
pub fn iomem() -> String {
    let mut out = String::new();
    let guard = setup::MEMORY_MAP.lock_irqsave();
    let Some(map) = guard.as_ref() else {
        return out;
    };
    let (kernel_start, _) = mm::kernel_image_phys();
    let mm::KernelSections { text_end, data_end, bss_start, bss_end } = mm::kernel_sections();
    // Merge ranges back into System RAM runs; reserved firmware ranges stay separate.
    let mut run: Option<(u64, u64)> = None;
    let flush = |out: &mut String, run: (u64, u64)| {
        iomem_line(out, 0, run.0, run.1, "System RAM");
        if kernel_start >= run.0 && kernel_start < run.1 {
            iomem_line(out, 1, kernel_start, text_end, "Kernel code");
            iomem_line(out, 1, text_end.next_multiple_of(4096), data_end, "Kernel data");
            iomem_line(out, 1, bss_start, bss_end, "Kernel bss");
        }
        if let Some((start, end)) = crate::kexec::reserve::region().filter(|&(s, _)| s >= run.0 && s < run.1) {
            iomem_line(out, 1, start, end, "Crash kernel");
        }
    };
    for range in map.ranges() {
        if range.kind.is_ram_backed() {
            run = match run {
                Some((s, e)) if e == range.start => Some((s, range.end)),
                Some(r) => {
                    flush(&mut out, r);
                    Some((range.start, range.end))
                }
                None => Some((range.start, range.end)),
            };
        } else if range.kind == RangeKind::Reserved {
            if let Some(r) = run.take() {
                flush(&mut out, r);
            }
            iomem_line(&mut out, 0, range.start, range.end, "Reserved");
        }
    }
    if let Some(r) = run {
        flush(&mut out, r);
    }
    out
}

/// `/proc/meminfo` (the first lines).
pub fn meminfo() -> String {
    let mut out = String::new();
    let total_kb = setup::MEMORY_MAP.lock_irqsave().as_ref().map_or(0, |m| m.total_ram()) / 1024;
    let free_kb = mm::frame::free_count() * 4;
    let mut line = |name: &str, kb: u64| {
        let label = alloc::format!("{name}:");
        let _ = writeln!(out, "{label:<16}{kb:>8} kB");
    };
    line("MemTotal", total_kb);
    line("MemFree", free_kb);
    line("MemAvailable", free_kb);
    line("Buffers", 0);
    line("Cached", 0);
    out
}

/// The task table shown by the shell's `ps` and the control channel: pid, parent, CPU, state,
/// voluntary and involuntary context switches, and the name (kernel threads in brackets).
pub fn ps() -> String {
    let mut text = String::from("  PID  PPID CPU S    NVCSW   NIVCSW COMMAND\n");
    let tasks = crate::sched::task::list();
    for t in tasks.iter() {
        let kernel_thread = t.flags & crate::sched::task::PF_KTHREAD != 0 && t.pid != 1;
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
    }
    text
}
