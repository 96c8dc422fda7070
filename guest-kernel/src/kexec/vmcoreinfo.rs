//! VMCOREINFO (Linux's `kernel/vmcore_info.c`): the key=value text a capture kernel and tools
//! use to understand the crashed kernel's memory — its release, page size, where the log,
//! utsname and page tables are, and (our own keys, docs/analysis.md) where the frame bitmap,
//! the task list, the per-CPU blocks and the crash reason are.

use core::fmt::{self, Write};

use crashvisor_abi::layout::{KERNEL_MAP, PAGE_SIZE};
use crashvisor_klib::bytefmt::ByteWriter;

use crate::arch::{paging, percpu, switch};
use crate::mm::memmap;
use crate::{kvmclock, mm, panic, printk, sched, setup, smp, time, uts};

/// Most bytes of VMCOREINFO text (one page, as Linux).
pub const VMCOREINFO_BYTES: usize = 4096;
/// Room the crash-time lines need after the boot-time text: `NUMBER(crashvisor_uptime_ns)=`
/// and `CRASHTIME=`, each with up to 20 digits and a newline.
const CRASH_LINES_MAX: usize = 29 + 21 + 10 + 21;

extern "C" {
    static _stext: u8;
    static _end: u8;
}

/// Writes the boot-time VMCOREINFO text.
fn write(w: &mut dyn Write) -> fmt::Result {
    // SAFETY: only the addresses of the linker symbols are taken.
    let (stext, end) = unsafe { (&_stext as *const u8 as u64, &_end as *const u8 as u64) };
    writeln!(w, "OSRELEASE={}", uts::RELEASE)?;
    writeln!(w, "PAGESIZE={PAGE_SIZE}")?;
    writeln!(w, "SYMBOL(init_uts_ns)={:x}", &uts::INIT_UTS_NS as *const _ as u64)?;
    writeln!(w, "OFFSET(uts_namespace.name)=0")?;
    writeln!(w, "SYMBOL(swapper_pg_dir)={:x}", paging::top_table_virt())?;
    writeln!(w, "SYMBOL(_stext)={stext:x}")?;
    writeln!(w, "NUMBER(VMALLOC_START)={:#x}", paging::VMALLOC_START)?;
    memmap::write_vmcoreinfo(w)?;
    printk::write_vmcoreinfo(w)?;
    let (bitmap_pa, nr_frames) = mm::frame::bitmap_location();
    writeln!(w, "NUMBER(crashvisor_frame_bitmap)={bitmap_pa}")?;
    writeln!(w, "NUMBER(crashvisor_nr_frames)={nr_frames}")?;
    // The crash path must not wait for a lock a stopped CPU may hold: then the line is left out.
    if let Some(map) = setup::MEMORY_MAP.try_lock_irqsave() {
        writeln!(w, "NUMBER(crashvisor_ram_bytes)={}", map.as_ref().map_or(0, |m| m.total_ram()))?;
    }
    sched::task::write_vmcoreinfo(w)?;
    switch::write_vmcoreinfo(w)?;
    percpu::write_vmcoreinfo(w)?;
    writeln!(w, "NUMBER(nr_cpus)={}", smp::possible_cpus())?;
    panic::write_vmcoreinfo(w)?;
    writeln!(w, "NUMBER(phys_base)={}", mm::phys_base() as i64)?;
    writeln!(w, "SYMBOL(init_top_pgt)={:x}", paging::top_table_virt())?;
    writeln!(w, "NUMBER(pgtable_l5_enabled)=0")?;
    writeln!(w, "KERNELOFFSET=0")?;
    writeln!(w, "NUMBER(KERNEL_IMAGE_SIZE)={}", end - KERNEL_MAP)
}

/// The boot-time VMCOREINFO text into `buf`; returns its length. Warns (as Linux's
/// `vmcoreinfo_append_str`) when the text, with the lines added at crash time, does not fit.
pub fn write_at_boot(buf: &mut [u8; VMCOREINFO_BYTES]) -> usize {
    let mut w = ByteWriter::new(buf);
    let _ = write(&mut w);
    if w.is_truncated() || w.len() + CRASH_LINES_MAX > VMCOREINFO_BYTES {
        crate::pr_warn!("vmcoreinfo data exceeds allocated size, truncating");
    }
    w.len()
}

/// The VMCOREINFO text with the time since boot and `CRASHTIME=` (unix seconds) appended, as at
/// crash time.
pub fn write_at_crash(buf: &mut [u8; VMCOREINFO_BYTES]) -> usize {
    let mut w = ByteWriter::new(buf);
    let _ = write(&mut w);
    let uptime_ns = time::now_ns();
    let crash_secs = kvmclock::boot_wall_clock_secs() + uptime_ns / 1_000_000_000;
    let _ = writeln!(w, "NUMBER(crashvisor_uptime_ns)={uptime_ns}");
    let _ = writeln!(w, "CRASHTIME={crash_secs}");
    w.len()
}
