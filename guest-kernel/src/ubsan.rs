//! UBSAN's reports (Linux's `lib/ubsan.c`): the kernel has no compiler-inserted sanitizer, so
//! code calls these checks where the compiler would have put one (`klib::ubsan` decides); a
//! failed check prints Linux's report once per call site and execution goes on with C's
//! result, unless `kernel.panic_on_warn` makes it panic.

use core::sync::atomic::{AtomicBool, Ordering};

use crashvisor_klib::ubsan::{self as checks, Report};

use crate::printk::KERN_WARNING;
use crate::warn::{check_panic_on_warn, CUT_HERE};

/// A checked operation's place in the source; it reports once (Linux's `was_reported`).
pub struct Location {
    /// Source file.
    pub file: &'static str,
    /// Source line.
    pub line: u32,
    /// Source column.
    pub column: u32,
    /// Set by the first report from here.
    pub reported: AtomicBool,
}

/// The [`Location`] of this call site, as a `&'static`.
#[macro_export]
macro_rules! ubsan_here {
    () => {{
        static LOCATION: $crate::ubsan::Location = $crate::ubsan::Location {
            file: file!(),
            line: line!(),
            column: column!(),
            reported: core::sync::atomic::AtomicBool::new(false),
        };
        &LOCATION
    }};
}

/// Prints `report` for `location` (once per location).
pub fn report(location: &Location, report: &Report) {
    if location.reported.swap(true, Ordering::Relaxed) {
        return;
    }
    crate::pr_warn!("{}", CUT_HERE);
    crate::pr_err!("UBSAN: {} in {}:{}:{}", report.reason(), location.file, location.line, location.column);
    crate::pr_err!("{}", report);
    crate::dumpstack::dump_stack(KERN_WARNING);
    crate::pr_warn!("---[ end trace ]---");
    check_panic_on_warn("UBSAN");
}

/// `lhs + rhs` in a C `int`: reported if it overflows, then wrapped as the machine does.
pub fn add_i32(lhs: i32, rhs: i32, location: &Location) -> i32 {
    checks::add_i32(lhs, rhs).unwrap_or_else(|overflow| {
        report(location, &overflow);
        lhs.wrapping_add(rhs)
    })
}

/// `lhs + rhs` in a C `unsigned int` under `-fsanitize=unsigned-integer-overflow`.
pub fn add_u32(lhs: u32, rhs: u32, location: &Location) -> u32 {
    checks::add_u32(lhs, rhs).unwrap_or_else(|overflow| {
        report(location, &overflow);
        lhs.wrapping_add(rhs)
    })
}

/// The bounds check of `array[index]` for an array of `len` elements of C type `array_type`;
/// C goes on with the access either way.
pub fn check_index(index: usize, len: usize, array_type: &'static str, location: &Location) {
    if let Err(out_of_bounds) = checks::check_index(index, len, array_type) {
        report(location, &out_of_bounds);
    }
}
