//! The kernel's own symbol table, for `func+0x1a/0x80` in backtraces.
//!
//! The linker reserves `KALLSYMS_SIZE` zero bytes in `.kallsyms`; after linking, `vmm/build.rs`
//! writes the table (format: `crashvisor_klib::symbols`) into them, so no second link is needed.

use crashvisor_klib::symbols::SymbolTable;

/// Bytes reserved for the symbol table.
pub const KALLSYMS_SIZE: usize = 256 * 1024;

#[used]
#[link_section = ".kallsyms"]
static KALLSYMS_SPACE: [u8; KALLSYMS_SIZE] = [0; KALLSYMS_SIZE];

extern "C" {
    static __kallsyms_start: u8;
    static __kallsyms_end: u8;
}

/// The embedded table, or `None` if the image was not post-processed.
pub fn table() -> Option<SymbolTable<'static>> {
    // SAFETY: the linker symbols bound the `.kallsyms` section, which is mapped read-only for
    // the kernel's lifetime. Going through the symbols (not `KALLSYMS_SPACE`) keeps the compiler
    // from assuming the bytes are still the zeros it emitted.
    let bytes = unsafe {
        let start = &__kallsyms_start as *const u8;
        let end = &__kallsyms_end as *const u8;
        core::slice::from_raw_parts(start, end as usize - start as usize)
    };
    SymbolTable::parse(bytes)
}
