//! The `/sys` files the shell can read (kexec and kdump state, as Linux's `kernel/ksysfs.c`
//! and the CPU devices show them; LKDTM's crash-point files and module parameters).

use alloc::string::String;

use crashvisor_klib::elfnote::{CRASH_NOTE_BYTES, VMCOREINFO_NOTE_SIZE};

use crate::kexec;

/// The contents of the sysfs file at `path`, if it exists.
pub fn read(path: &str) -> Option<String> {
    if let Some(rest) = path.strip_prefix("/sys/devices/system/cpu/cpu") {
        let (cpu, file) = rest.split_once('/')?;
        let cpu: usize = cpu.parse().ok().filter(|&c| c < crate::smp::possible_cpus())?;
        return match file {
            "crash_notes" => Some(alloc::format!("{:x}\n", kexec::crash::crash_note_phys(cpu))),
            "crash_notes_size" => Some(alloc::format!("{}\n", CRASH_NOTE_BYTES)),
            _ => None,
        };
    }
    if let Some(file) = path.strip_prefix(crashvisor_abi::lkdtm::DEBUGFS_DIR).and_then(|f| f.strip_prefix('/')) {
        return crashvisor_abi::lkdtm::CrashPoint::from_name(file).map(|_| crate::lkdtm::available_types());
    }
    if let Some(name) = path.strip_prefix("/sys/module/lkdtm/parameters/") {
        return crate::lkdtm::param(name).map(|value| alloc::format!("{value}\n"));
    }
    let text = match path {
        "/sys/kernel/kexec_loaded" => alloc::format!("{}\n", u8::from(kexec::load::loaded(kexec::load::Kind::Normal))),
        "/sys/kernel/kexec_crash_loaded" => {
            alloc::format!("{}\n", u8::from(kexec::load::loaded(kexec::load::Kind::Crash)))
        }
        "/sys/kernel/kexec_crash_size" => alloc::format!("{}\n", kexec::reserve::region().map_or(0, |(s, e)| e - s)),
        "/sys/kernel/vmcoreinfo" => {
            alloc::format!("0x{:016x} {:x}\n", kexec::crash::vmcoreinfo_note_phys(), VMCOREINFO_NOTE_SIZE)
        }
        _ => return None,
    };
    Some(text)
}
