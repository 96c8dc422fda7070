//! The `crashkernel=` reservation (Linux's `reserve_crashkernel`): memory kept free at boot for
//! the kdump capture kernel.

use core::sync::atomic::{AtomicU64, Ordering};

use crashvisor_klib::crashkernel::{self, CrashkernelError, CRASH_ADDR_HIGH_MAX, CRASH_ADDR_LOW_MAX, CRASH_ALIGN};
use crashvisor_klib::memmap::{MemoryMap, RangeKind};

use crate::params;

/// The reservation, `[start, end)`; `end == 0` when there is none (Linux's `crashk_res`).
static CRASHK_RES: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// The reservation as `(start, end)` (end exclusive), if any.
pub fn region() -> Option<(u64, u64)> {
    let end = CRASHK_RES[1].load(Ordering::Relaxed);
    (end != 0).then(|| (CRASHK_RES[0].load(Ordering::Relaxed), end))
}

/// Reserves the capture kernel's memory in `map` as the command line asks. Boot CPU, before
/// the frame allocator starts.
pub fn reserve(map: &mut MemoryMap) {
    let request = match crashkernel::parse(&params::cmdline(), map.total_ram()) {
        Ok(request) => request,
        Err(CrashkernelError::Absent) => return,
        Err(e) => {
            if let Some(message) = e.message() {
                crate::pr_warn!("{}", message);
            }
            return;
        }
    };
    let size = request.size.next_multiple_of(4096);
    let start = match request.base {
        Some(base) => {
            if base % CRASH_ALIGN != 0 || map.reserve(base, base + size, RangeKind::CrashKernel).is_err() {
                crate::pr_warn!("crashkernel reservation failed - memory is in use.");
                return;
            }
            base
        }
        None => {
            let high = request.high.then(|| map.find_free_top_down(size, CRASH_ALIGN, CRASH_ADDR_HIGH_MAX)).flatten();
            let found = high.or_else(|| map.find_free_top_down(size, CRASH_ALIGN, CRASH_ADDR_LOW_MAX));
            match found {
                Some(start) if map.reserve(start, start + size, RangeKind::CrashKernel).is_ok() => start,
                _ => {
                    crate::pr_warn!("cannot allocate crashkernel (size:0x{:x})", size);
                    return;
                }
            }
        }
    };
    CRASHK_RES[0].store(start, Ordering::Relaxed);
    CRASHK_RES[1].store(start + size, Ordering::Relaxed);
    crate::pr_info!("crashkernel reserved: 0x{:016x} - 0x{:016x} ({} MB)", start, start + size - 1, size >> 20);
}
