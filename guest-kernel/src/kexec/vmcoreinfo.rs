//! VMCOREINFO (Linux's `kernel/vmcore_info.c`): the key=value text a capture kernel and tools
//! use to understand the crashed kernel's memory — its release, page size, where the log,
//! utsname and page tables are, and (our own keys) where the frame bitmap is.

use core::fmt::{self, Write};

use crashvisor_abi::layout::{KERNEL_MAP, PAGE_SIZE};
use crashvisor_klib::bytefmt::ByteWriter;

use crate::arch::paging;
use crate::{kvmclock, mm, printk, time, uts};

/// Most bytes of VMCOREINFO text (one page, as Linux).
pub const VMCOREINFO_BYTES: usize = 4096;

extern "C" {
    static _stext: u8;
    static _end: u8;
}

/// Writes the boot-time VMCOREINFO text.
pub fn write(w: &mut dyn Write) -> fmt::Result {
    // SAFETY: only the addresses of the linker symbols are taken.
    let (stext, end) = unsafe { (&_stext as *const u8 as u64, &_end as *const u8 as u64) };
    writeln!(w, "OSRELEASE={}", uts::RELEASE)?;
    writeln!(w, "PAGESIZE={PAGE_SIZE}")?;
    writeln!(w, "SYMBOL(init_uts_ns)={:x}", &uts::INIT_UTS_NS as *const _ as u64)?;
    writeln!(w, "OFFSET(uts_namespace.name)=0")?;
    writeln!(w, "SYMBOL(_stext)={stext:x}")?;
    printk::write_vmcoreinfo(w)?;
    let (bitmap_pa, nr_frames) = mm::frame::bitmap_location();
    writeln!(w, "NUMBER(crashvisor_frame_bitmap)={bitmap_pa}")?;
    writeln!(w, "NUMBER(crashvisor_nr_frames)={nr_frames}")?;
    writeln!(w, "NUMBER(phys_base)={}", mm::phys_base() as i64)?;
    writeln!(w, "SYMBOL(init_top_pgt)={:x}", paging::top_table_virt())?;
    writeln!(w, "NUMBER(pgtable_l5_enabled)=0")?;
    writeln!(w, "KERNELOFFSET=0")?;
    writeln!(w, "NUMBER(KERNEL_IMAGE_SIZE)={}", end - KERNEL_MAP)
}

/// The VMCOREINFO text with `CRASHTIME=` (unix seconds) appended, as at crash time.
pub fn write_at_crash(buf: &mut [u8; VMCOREINFO_BYTES]) -> usize {
    let mut w = ByteWriter::new(buf);
    let _ = write(&mut w);
    let crash_secs = kvmclock::boot_wall_clock_secs() + time::now_ns() / 1_000_000_000;
    let _ = writeln!(w, "CRASHTIME={crash_secs}");
    w.len()
}
