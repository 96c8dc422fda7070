//! `BUG()`: a `ud2` whose address is recorded with its source location in `.bug_table`, so the
//! invalid-opcode handler can print `kernel BUG at file:line!` like Linux.

/// One `.bug_table` entry, emitted by the `bug!` macro.
#[repr(C)]
pub struct BugEntry {
    /// Address of the `ud2`.
    pub addr: u64,
    /// Source location.
    pub location: &'static BugLocation,
}

/// Where a `bug!()` is in the source.
#[repr(C)]
pub struct BugLocation {
    /// Source file.
    pub file: &'static str,
    /// Source line.
    pub line: u32,
}

extern "C" {
    static __bug_table_start: u8;
    static __bug_table_end: u8;
}

fn entries() -> &'static [BugEntry] {
    // SAFETY: the linker script bounds `.bug_table` with these symbols; it holds `BugEntry`
    // records written by `bug!` (two 8-byte words each, 8-aligned).
    unsafe {
        let start = (&__bug_table_start as *const u8).cast::<BugEntry>();
        let end = (&__bug_table_end as *const u8).cast::<BugEntry>();
        core::slice::from_raw_parts(start, end.offset_from(start) as usize)
    }
}

/// Whether `rip` is the `ud2` of a `bug!()`.
pub fn is_bug_site(rip: u64) -> bool {
    entries().iter().any(|e| e.addr == rip)
}

/// Prints Linux's BUG lines for the `bug!()` at `rip`.
pub fn report(rip: u64) {
    if let Some(entry) = entries().iter().find(|e| e.addr == rip) {
        crate::pr_emerg!("------------[ cut here ]------------");
        crate::pr_emerg!("kernel BUG at {}:{}!", entry.location.file, entry.location.line);
    }
}

/// Linux's `BUG()`: an invalid-opcode oops naming this source line.
#[macro_export]
macro_rules! bug {
    () => {{
        static LOCATION: $crate::bug::BugLocation = $crate::bug::BugLocation { file: file!(), line: line!() };
        // SAFETY: `ud2` raises #UD, handled by the oops path; the table entry only records data.
        unsafe {
            core::arch::asm!(
                "2: ud2",
                ".pushsection .bug_table, \"a\"",
                ".balign 8",
                ".quad 2b",
                ".quad {loc}",
                ".popsection",
                loc = sym LOCATION,
                options(noreturn)
            )
        }
    }};
}
