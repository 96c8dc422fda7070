//! `BUG()` and `WARN()` sites: a `ud2` whose address is recorded with its source location and
//! flags in `.bug_table` (Linux's `struct bug_entry`), so the invalid-opcode handler can print
//! `kernel BUG at file:line!`, or report a warning and resume after the `ud2`.

/// Length of the `ud2` instruction a site traps with.
pub const UD2_LEN: u64 = 2;

/// Linux's `BUGFLAG_WARNING`: the site is a `WARN()`, execution continues after it.
pub const BUGFLAG_WARNING: u32 = 1 << 0;
/// Linux's `BUGFLAG_NO_CUT_HERE`: the `cut here` line was printed already (with the message).
pub const BUGFLAG_NO_CUT_HERE: u32 = 1 << 2;

/// One `.bug_table` entry, emitted by the `bug!` and `warn*!` macros.
#[repr(C)]
pub struct BugEntry {
    /// Address of the `ud2`.
    pub addr: u64,
    /// Source location and flags.
    pub location: &'static BugLocation,
}

impl BugEntry {
    /// Whether the site is a `WARN()`.
    pub fn is_warning(&self) -> bool {
        self.location.flags & BUGFLAG_WARNING != 0
    }
}

/// Where a site is in the source, and what it is.
#[repr(C)]
pub struct BugLocation {
    /// Source file.
    pub file: &'static str,
    /// Source line.
    pub line: u32,
    /// `BUGFLAG_*`.
    pub flags: u32,
}

extern "C" {
    static __bug_table_start: u8;
    static __bug_table_end: u8;
}

fn entries() -> &'static [BugEntry] {
    // SAFETY: the linker script bounds `.bug_table` with these symbols; it holds `BugEntry`
    // records written by the macros (two 8-byte words each, 8-aligned).
    unsafe {
        let start = (&__bug_table_start as *const u8).cast::<BugEntry>();
        let end = (&__bug_table_end as *const u8).cast::<BugEntry>();
        core::slice::from_raw_parts(start, end.offset_from(start) as usize)
    }
}

/// The site whose `ud2` is at `rip`.
pub fn find(rip: u64) -> Option<&'static BugEntry> {
    entries().iter().find(|e| e.addr == rip)
}

/// Prints Linux's BUG lines for a `bug!()` site.
pub fn report(entry: &BugEntry) {
    crate::pr_emerg!("{}", crate::warn::CUT_HERE);
    crate::pr_emerg!("kernel BUG at {}:{}!", entry.location.file, entry.location.line);
}

/// A `ud2` recorded in `.bug_table` with this source line and `$flags`; with `noreturn` for
/// `BUG()`, else execution resumes after it (a warning).
#[doc(hidden)]
#[macro_export]
macro_rules! __bug_site {
    ($flags:expr $(, $option:ident)?) => {{
        static LOCATION: $crate::bug::BugLocation =
            $crate::bug::BugLocation { file: file!(), line: line!(), flags: $flags };
        // SAFETY: `ud2` raises #UD, handled by the BUG/WARN path (which resumes after it only
        // for a warning); the table entry only records data.
        unsafe {
            core::arch::asm!(
                "2: ud2",
                ".pushsection .bug_table, \"a\"",
                ".balign 8",
                ".quad 2b",
                ".quad {loc}",
                ".popsection",
                loc = sym LOCATION,
                $(options($option))?
            )
        }
    }};
}

/// Linux's `BUG()`: an invalid-opcode oops naming this source line.
#[macro_export]
macro_rules! bug {
    () => {
        $crate::__bug_site!(0, noreturn)
    };
}
