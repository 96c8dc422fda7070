//! The capture kernel's work (what `/proc/vmcore`, `vmcore-dmesg` and makedumpfile do in a
//! Linux kdump environment): read the crashed kernel's elfcorehdr and notes from old memory,
//! lay the vmcore out as Linux's `/proc/vmcore`, leave out free pages (dump level 16) with the
//! old kernel's frame bitmap, extract the old and the own kernel log, and hand it all to the
//! host's dump device — headers and page ranges, never a copy of memory. Then the final action.

use alloc::string::String;
use alloc::vec::Vec;

use crashvisor_abi::control::KdumpAction;
use crashvisor_abi::dump::{DumpDescriptor, DumpFailure, DumpRange, DUMP_LEVEL_FREE, DUMP_MAGIC, DUMP_VERSION};
use crashvisor_abi::layout::{KERNEL_MAP, PAGE_SIZE};
use crashvisor_abi::platform::{Command, PVPANIC_CRASH_LOADED, PVPANIC_PORT, STATUS_OK};
use crashvisor_klib::cmdline::memparse;
use crashvisor_klib::elfcore::CoreHeader;
use crashvisor_klib::elfnote::{NoteIter, VMCOREINFO_NOTE_NAME};
use crashvisor_klib::le;
use crashvisor_klib::printk::LogIndex;
use crashvisor_klib::vmcore::{append_note_segment, DumpRangeBuilder, VmcoreError, VmcoreLayout};

use super::kdump;
use crate::arch::cpu;
use crate::{mm, params, platform, printk, reboot, time};

/// Largest elfcorehdr read from old memory.
const ELFCOREHDR_MAX: usize = 16 * 1024;

/// What to do once the vmcore is handed over (or when that fails).
fn run_action(action: KdumpAction) -> ! {
    match action {
        KdumpAction::Reboot => reboot::restart(),
        KdumpAction::Poweroff => reboot::power_off(),
        KdumpAction::Halt => {
            crate::pr_emerg!("reboot: System halted");
            loop {
                cpu::hlt();
            }
        }
    }
}

/// What the host reads by physical address lives in the kernel image (stacks are not in the
/// direct map, so their addresses have no simple physical counterpart).
struct Handoff {
    descriptor: DumpDescriptor,
    failure: DumpFailure,
}

impl Handoff {
    fn set_descriptor(&mut self, descriptor: DumpDescriptor) -> u64 {
        self.descriptor = descriptor;
        mm::kernel_virt_to_phys(&self.descriptor as *const DumpDescriptor as u64)
    }

    fn set_failure(&mut self, failure: DumpFailure) -> u64 {
        self.failure = failure;
        mm::kernel_virt_to_phys(&self.failure as *const DumpFailure as u64)
    }
}

static HANDOFF: crate::sync::SpinLock<Handoff> = crate::sync::SpinLock::new(Handoff {
    descriptor: DumpDescriptor {
        magic: 0,
        version: 0,
        dump_level: 0,
        headers_gpa: 0,
        headers_len: 0,
        ranges_gpa: 0,
        nr_ranges: 0,
        file_size: 0,
        vmcore_dmesg_gpa: 0,
        vmcore_dmesg_len: 0,
        kexec_dmesg_gpa: 0,
        kexec_dmesg_len: 0,
        capture_ns: 0,
        reserved: 0,
    },
    failure: DumpFailure { magic: 0, message_len: 0, message: [0; crashvisor_abi::dump::DUMP_FAILURE_MESSAGE_LEN] },
});

/// The `elfcorehdr=` address, if this kernel is a capture kernel (Linux's `is_kdump_kernel`).
pub fn elfcorehdr() -> Option<u64> {
    let value = params::cmdline().get("elfcorehdr").flatten()?;
    let (addr, _) = memparse(value)?;
    Some(addr)
}

/// Bytes of old memory through the direct map (the capture kernel maps all of it).
fn old(pa: u64, len: u64) -> &'static [u8] {
    // SAFETY: the capture kernel's direct map covers every range of the crashed kernel's memory
    // map, and nothing writes the old memory; callers bound `pa..pa+len` by the elfcorehdr.
    unsafe { core::slice::from_raw_parts(mm::phys_to_virt(pa) as *const u8, len as usize) }
}

/// A physically contiguous, page-granular buffer the host can read by guest-physical address.
struct Pages {
    va: u64,
    len: usize,
}

impl Pages {
    fn new(len: usize) -> Result<Self, &'static str> {
        let pages = len.div_ceil(PAGE_SIZE as usize).max(1);
        let va = mm::frame::alloc_pages(pages).ok_or("out of memory in the capture kernel")?;
        Ok(Self { va, len: pages * PAGE_SIZE as usize })
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `va..va+len` are pages allocated for this buffer alone.
        unsafe { core::slice::from_raw_parts_mut(self.va as *mut u8, self.len) }
    }

    fn phys(&self) -> u64 {
        mm::virt_to_phys(self.va)
    }

    fn from_text(text: &str) -> Result<Self, &'static str> {
        let mut pages = Self::new(text.len())?;
        pages.bytes()[..text.len()].copy_from_slice(text.as_bytes());
        Ok(pages)
    }
}

fn vmcoreinfo_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

fn hex(value: Option<&str>) -> Option<u64> {
    u64::from_str_radix(value?, 16).ok()
}

/// The crashed kernel's log as `vmcore-dmesg` prints it, read through its VMCOREINFO keys.
fn old_log(vmcoreinfo: &str) -> Option<String> {
    let phys_base = vmcoreinfo_value(vmcoreinfo, "NUMBER(phys_base)")?.parse::<i64>().ok()? as u64;
    let kernel_pa = |va: u64| va.wrapping_sub(KERNEL_MAP).wrapping_add(phys_base);
    let buf_va = le::u64_at(old(kernel_pa(hex(vmcoreinfo_value(vmcoreinfo, "SYMBOL(log_buf)"))?), 8), 0);
    let len_va = hex(vmcoreinfo_value(vmcoreinfo, "SYMBOL(log_buf_len)"))?;
    let len = u64::from(le::u32_at(old(kernel_pa(len_va), 4), 0));
    let index_va = hex(vmcoreinfo_value(vmcoreinfo, "SYMBOL(log_first_idx)"))?;
    let raw = old(kernel_pa(index_va), 24);
    let (first_idx, next_idx) = (le::u32_at(raw, 0), le::u32_at(raw, 4));
    let index = LogIndex { first_idx, next_idx, first_seq: le::u64_at(raw, 8), next_seq: le::u64_at(raw, 16) };
    if !len.is_power_of_two() || len > 1 << 24 {
        return None;
    }
    let buf = old(kernel_pa(buf_va), len);
    let mut text = String::new();
    for record in index.records(buf, 0) {
        printk::push_line(&mut text, &record);
    }
    Some(text)
}

/// Runs the dump and the final action: the capture kernel's reason to exist.
pub fn run(_: usize) {
    cpu::outb(PVPANIC_PORT, PVPANIC_CRASH_LOADED);
    let config = kdump::config_from_cmdline();
    match dump(config.dump_level) {
        Ok(()) => run_action(config.final_action),
        Err(reason) => {
            crate::pr_err!("kdump: dump failed: {}", reason);
            let failure_pa = HANDOFF.lock_irqsave().set_failure(DumpFailure::new(reason.as_bytes()));
            platform::command(Command::DumpFailed, failure_pa);
            run_action(config.failure_action)
        }
    }
}

fn dump(dump_level: u32) -> Result<(), String> {
    let header_pa = elfcorehdr().ok_or("no elfcorehdr= on the command line")?;
    crate::pr_info!("kdump: reading the crashed kernel's elfcorehdr at {:#x}", header_pa);
    let core = CoreHeader::parse(old(header_pa, ELFCOREHDR_MAX as u64))
        .map_err(|e| alloc::format!("the elfcorehdr is not sane: {e:?}"))?;

    // The notes of every CPU and VMCOREINFO, merged into one segment as /proc/vmcore does.
    let notes_total: u64 = core.notes().map(|n| n.size).sum();
    let mut notes = Pages::new(notes_total as usize)?;
    let mut used = 0;
    for note in core.notes() {
        used = append_note_segment(notes.bytes(), used, old(note.paddr, note.size))
            .map_err(|e| alloc::format!("bad note segment: {e:?}"))?;
    }
    let merged = &notes.bytes()[..used];
    let vmcoreinfo = NoteIter::new(merged)
        .find(|n| n.name == VMCOREINFO_NOTE_NAME)
        .map(|n| String::from_utf8_lossy(n.desc).into_owned())
        .unwrap_or_default();

    let layout = VmcoreLayout::new(core, used as u64).map_err(|e| alloc::format!("vmcore layout: {e:?}"))?;
    let mut headers = Pages::new(layout.data_offset() as usize)?;
    let headers_len =
        layout.write_headers(merged, headers.bytes()).map_err(|e| alloc::format!("vmcore headers: {e:?}"))?;

    // The page ranges, without the old kernel's free pages at dump level 16.
    let bitmap = vmcoreinfo_value(&vmcoreinfo, "NUMBER(crashvisor_frame_bitmap)").and_then(|v| v.parse::<u64>().ok());
    let nr_frames = vmcoreinfo_value(&vmcoreinfo, "NUMBER(crashvisor_nr_frames)").and_then(|v| v.parse::<u64>().ok());
    let words: Vec<u64> = match (bitmap, nr_frames) {
        (Some(pa), Some(n)) if dump_level & DUMP_LEVEL_FREE != 0 => {
            old(pa, n.div_ceil(64) * 8).chunks_exact(8).map(|w| le::u64_at(w, 0)).collect()
        }
        _ => Vec::new(),
    };
    let mut capacity = 1024;
    let (ranges, summary) = loop {
        let ranges = Pages::new(capacity * core::mem::size_of::<DumpRange>())?;
        let mut builder = DumpRangeBuilder::new(&layout);
        if !words.is_empty() {
            builder = builder.exclude_free_pages(&words, nr_frames.unwrap_or(0));
        }
        // SAFETY: the buffer holds `capacity` properly aligned (page-aligned) DumpRange slots.
        let slots = unsafe { core::slice::from_raw_parts_mut(ranges.va as *mut DumpRange, capacity) };
        match builder.build_into(slots) {
            Ok(summary) => break (ranges, summary),
            Err(VmcoreError::TooManyRanges { needed }) => capacity = needed as usize,
            Err(e) => return Err(alloc::format!("dump ranges: {e:?}")),
        }
    };

    if !words.is_empty() {
        let loads_bytes: u64 = layout.loads().map(|load| load.memsz).sum();
        crate::pr_info!(
            "kdump: dump level {} leaves out {} free pages",
            dump_level,
            loads_bytes.saturating_sub(summary.bytes) / PAGE_SIZE
        );
    }
    let vmcore_dmesg = Pages::from_text(&old_log(&vmcoreinfo).unwrap_or_default())?;
    let vmcore_dmesg_len = vmcore_dmesg.len as u64;
    crate::pr_info!(
        "kdump: handing {} ranges ({} KiB) of old memory to the host, dump level {}",
        summary.ranges,
        summary.bytes >> 10,
        dump_level
    );
    let own = printk::text_since(0).0;
    let kexec_dmesg = Pages::from_text(&own)?;
    let descriptor = DumpDescriptor {
        magic: DUMP_MAGIC,
        version: DUMP_VERSION,
        dump_level,
        headers_gpa: headers.phys(),
        headers_len: headers_len as u64,
        ranges_gpa: ranges.phys(),
        nr_ranges: summary.ranges,
        file_size: layout.file_size(),
        vmcore_dmesg_gpa: vmcore_dmesg.phys(),
        vmcore_dmesg_len: text_len(&vmcore_dmesg, vmcore_dmesg_len),
        kexec_dmesg_gpa: kexec_dmesg.phys(),
        kexec_dmesg_len: own.len() as u64,
        capture_ns: time::now_ns(),
        reserved: 0,
    };
    let descriptor_pa = HANDOFF.lock_irqsave().set_descriptor(descriptor);
    match platform::command(Command::Dump, descriptor_pa) {
        STATUS_OK => Ok(()),
        status => Err(alloc::format!("the host refused the dump (status {status})")),
    }
}

/// Length of the text in a page buffer made by `Pages::from_text` (up to the first NUL).
fn text_len(pages: &Pages, max: u64) -> u64 {
    // SAFETY: reads the buffer's own pages.
    let bytes = unsafe { core::slice::from_raw_parts(pages.va as *const u8, max as usize) };
    bytes.iter().position(|&b| b == 0).unwrap_or(max as usize) as u64
}
