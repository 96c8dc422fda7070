//! The kernel's own symbol table, for `func+0x1a/0x80` in backtraces.
//!
//! The linker reserves `KALLSYMS_SIZE` zero bytes in `.kallsyms`; after linking, `vmm/build.rs`
//! writes the table (format: `crashvisor_klib::symbols`) into them, so no second link is needed.
//! It is parsed once at boot; readers (oops, NMI, panic paths) then take no lock.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use crashvisor_klib::symbols::SymbolTable;

/// Bytes reserved for the symbol table.
pub const KALLSYMS_SIZE: usize = 64 * 1024;

#[used]
#[link_section = ".kallsyms"]
static KALLSYMS_SPACE: [u8; KALLSYMS_SIZE] = [0; KALLSYMS_SIZE];

extern "C" {
    static __kallsyms_start: u8;
    static __kallsyms_end: u8;
}

struct Parsed(UnsafeCell<Option<SymbolTable<'static>>>);
// SAFETY: written once by the boot CPU in `init` before `READY` is set; read-only afterwards.
unsafe impl Sync for Parsed {}
static PARSED: Parsed = Parsed(UnsafeCell::new(None));
static READY: AtomicBool = AtomicBool::new(false);

/// Parses the embedded table. Boot CPU, once, before other CPUs start.
pub fn init() {
    // SAFETY: the linker symbols bound the `.kallsyms` section, which stays mapped for the
    // kernel's lifetime. Going through the symbols (not `KALLSYMS_SPACE`) keeps the compiler
    // from assuming the bytes are still the zeros it emitted.
    let bytes = unsafe {
        let start = &__kallsyms_start as *const u8;
        let end = &__kallsyms_end as *const u8;
        core::slice::from_raw_parts(start, end as usize - start as usize)
    };
    // SAFETY: single writer before READY is published (see `Parsed`).
    unsafe { *PARSED.0.get() = SymbolTable::parse(bytes) };
    READY.store(true, Ordering::Release);
}

/// The embedded table, or `None` if the image was not post-processed (or before `init`).
pub fn table() -> Option<SymbolTable<'static>> {
    if !READY.load(Ordering::Acquire) {
        return None;
    }
    // SAFETY: READY guarantees the single write happened; the value is never written again.
    unsafe { *PARSED.0.get() }
}
