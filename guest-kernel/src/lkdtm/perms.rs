//! LKDTM's `perms.c`: writes to read-only memory (`.rodata`, `__ro_after_init` data, kernel
//! text) and execution of non-executable memory (data, stack, slab, vmalloc, `.rodata`, NULL),
//! which the kernel's page permissions (`kernel_map.rs`, the NX direct map and vmalloc area)
//! turn into page-fault oopses.

use core::sync::atomic::{AtomicU64, Ordering};

use super::lkdtm_info;
use crate::arch::vmap::VmArea;
use crate::mm;

/// How many bytes of `do_nothing` are copied to be sure the whole function is.
const EXEC_SIZE: usize = 64;

/// Non-const, so in `.data` (or `.bss`): writable, never executable.
static DATA_AREA: DataArea = DataArea(core::cell::UnsafeCell::new([0; EXEC_SIZE]));
struct DataArea(core::cell::UnsafeCell<[u8; EXEC_SIZE]>);
// SAFETY: only `lkdtm_EXEC_DATA` writes it, and what it writes is never read as data.
unsafe impl Sync for DataArea {}

/// Const, so in `.rodata`.
static RODATA: u64 = 0xAA55_AA55;

/// Written once during init, then read-only (`__ro_after_init`).
#[link_section = ".data..ro_after_init"]
static RO_AFTER_INIT: AtomicU64 = AtomicU64::new(0x55AA_5500);

/// Writes to `RO_AFTER_INIT` while it still may (Linux's `lkdtm_perms_init`).
pub(super) fn init() {
    RO_AFTER_INIT.fetch_or(0xAA, Ordering::Relaxed);
}

/// Returns to its caller; copied into non-executable memory to be run there.
#[inline(never)]
extern "C" fn do_nothing() {}

/// Linux's `do_overwritten`, the target of `WRITE_KERN`.
#[inline(never)]
extern "C" fn do_overwritten() {
    lkdtm_info!("do_overwritten wasn't overwritten!");
}

/// A function placed in `.rodata` (Linux's `lkdtm_rodata_do_nothing`, from `rodata.c`).
#[link_section = ".rodata.lkdtm_rodata_do_nothing"]
#[inline(never)]
extern "C" fn lkdtm_rodata_do_nothing() {}

/// Linux's `execute_location`: runs `do_nothing`, copies it to `dst` when `write`, and calls
/// `dst`.
#[inline(never)]
fn execute_location(dst: *mut u8, write: bool) {
    let text = do_nothing as *const () as *const u8;
    lkdtm_info!("attempting ok execution at {:016x}", text as u64);
    core::hint::black_box(do_nothing)();
    if write {
        // SAFETY: `dst` is `EXEC_SIZE` writable bytes the caller owns; the kernel's text is
        // readable.
        unsafe { core::ptr::copy_nonoverlapping(text, dst, EXEC_SIZE) };
    }
    lkdtm_info!("attempting bad execution at {:016x}", dst as u64);
    // SAFETY: deliberately calls memory that is not executable; the page-fault handler reports
    // the oops and ends this task, so the call never completes (and a copy of `do_nothing`
    // would just return, clobbering nothing beyond the C ABI).
    unsafe { core::arch::asm!("call {}", in(reg) core::hint::black_box(dst), clobber_abi("C")) };
    super::lkdtm_err!("FAIL: func returned");
}

/// Xors a word at `address`, whatever the compiler assumes about it.
fn xor_word(address: *const u64, value: u64) {
    // SAFETY: deliberately writes read-only memory; the page-fault handler ends this task.
    unsafe { core::arch::asm!("xor qword ptr [{a}], {v}", a = in(reg) address, v = in(reg) value, options(nostack)) };
}

/// A write to `.rodata`.
pub fn lkdtm_WRITE_RO() {
    let ptr = core::hint::black_box(&RODATA as *const u64);
    lkdtm_info!("attempting bad rodata write at {:016x}", ptr as u64);
    xor_word(ptr, 0xabcd_1234);
    super::lkdtm_err!("FAIL: survived bad write");
}

/// A write to `__ro_after_init` data after init.
pub fn lkdtm_WRITE_RO_AFTER_INIT() {
    let ptr = core::hint::black_box(RO_AFTER_INIT.as_ptr() as *const u64);
    if RO_AFTER_INIT.load(Ordering::Relaxed) & 0xAA != 0xAA {
        return lkdtm_info!("{:016x} was NOT written during init!?", ptr as u64);
    }
    lkdtm_info!("attempting bad ro_after_init write at {:016x}", ptr as u64);
    xor_word(ptr, 0xabcd_1234);
    super::lkdtm_err!("FAIL: survived bad write");
}

/// Copies `do_nothing` over `do_overwritten`, in kernel text.
pub fn lkdtm_WRITE_KERN() {
    let from = do_nothing as *const () as u64;
    let to = do_overwritten as *const () as u64;
    let size = to.abs_diff(from).min(EXEC_SIZE as u64);
    lkdtm_info!("attempting bad {} byte write at {:016x}", size, to);
    // SAFETY: deliberately writes kernel text; the page-fault handler ends this task.
    unsafe {
        core::arch::asm!("rep movsb", inout("rsi") from => _, inout("rdi") to => _, inout("rcx") size => _, options(nostack))
    };
    super::lkdtm_err!("FAIL: survived bad write");
    do_overwritten();
}

/// Function descriptors exist on powerpc64 and ia64 only.
pub fn lkdtm_WRITE_OPD() {
    lkdtm_info!("XFAIL: Platform doesn't use function descriptors.");
}

/// Runs a copy of `do_nothing` in `.data`.
pub fn lkdtm_EXEC_DATA() {
    execute_location(DATA_AREA.0.get().cast(), true);
    core::hint::black_box(()); // no tail call: the function stays in traces
}

/// Runs a copy of `do_nothing` on the stack.
pub fn lkdtm_EXEC_STACK() {
    let mut stack_area = [0u8; EXEC_SIZE];
    execute_location(core::hint::black_box(stack_area.as_mut_ptr()), true);
}

/// Runs a copy of `do_nothing` in a slab object.
pub fn lkdtm_EXEC_KMALLOC() {
    let area = mm::slab::kmalloc(EXEC_SIZE);
    if !area.is_null() {
        execute_location(area, true);
        mm::slab::kfree(area, EXEC_SIZE);
    }
}

/// Runs a copy of `do_nothing` in a vmalloc area.
pub fn lkdtm_EXEC_VMALLOC() {
    if let Some(area) = VmArea::new(EXEC_SIZE as u64) {
        execute_location(area.as_mut_ptr(), true);
    }
}

/// Runs a function in `.rodata`.
pub fn lkdtm_EXEC_RODATA() {
    execute_location(lkdtm_rodata_do_nothing as *const () as *mut u8, false);
    core::hint::black_box(()); // no tail call: the function stays in traces
}

/// Calls address 0.
pub fn lkdtm_EXEC_NULL() {
    execute_location(core::ptr::null_mut(), false);
    core::hint::black_box(()); // no tail call: the function stays in traces
}

/// Reads, then writes, address 0.
pub fn lkdtm_ACCESS_NULL() {
    let ptr = core::hint::black_box(core::ptr::null_mut::<u64>());
    lkdtm_info!("attempting bad read at {:016x}", ptr as u64);
    // SAFETY: deliberately reads address 0; the page-fault handler ends this task.
    let tmp = unsafe { ptr.read_volatile() }.wrapping_add(0xc0de_c0de);
    super::lkdtm_err!("FAIL: survived bad read");
    lkdtm_info!("attempting bad write at {:016x}", ptr as u64);
    // SAFETY: as above, a write.
    unsafe { ptr.write_volatile(tmp) };
    super::lkdtm_err!("FAIL: survived bad write");
}
