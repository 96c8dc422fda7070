//! Kernel taint flags and Linux's `print_tainted()` string.

use core::sync::atomic::{AtomicU32, Ordering};

/// `TAINT_BAD_PAGE` ('B'): the slab allocator found a corrupted object.
pub const TAINT_BAD_PAGE: u32 = 5;
/// `TAINT_DIE` ('D'): an oops happened.
pub const TAINT_DIE: u32 = 7;
/// `TAINT_WARN` ('W'): a `WARN()` fired.
pub const TAINT_WARN: u32 = 9;
/// `TAINT_SOFTLOCKUP` ('L').
pub const TAINT_SOFTLOCKUP: u32 = 14;

/// Characters of each taint bit when set, and when clear (Linux's `taint_flags`).
const FLAGS: [(u8, u8); 20] = [
    (b'P', b'G'),
    (b'F', b' '),
    (b'S', b' '),
    (b'R', b' '),
    (b'M', b' '),
    (b'B', b' '),
    (b'U', b' '),
    (b'D', b' '),
    (b'A', b' '),
    (b'W', b' '),
    (b'C', b' '),
    (b'I', b' '),
    (b'O', b' '),
    (b'E', b' '),
    (b'L', b' '),
    (b'K', b' '),
    (b'X', b' '),
    (b'T', b' '),
    (b'N', b' '),
    (b'J', b' '),
];

/// Longest string `describe` produces.
pub const TAINT_STRING_MAX: usize = 9 + FLAGS.len();

static TAINTED: AtomicU32 = AtomicU32::new(0);

/// Sets taint bit `flag`.
pub fn add(flag: u32) {
    TAINTED.fetch_or(1 << flag, Ordering::Relaxed);
}

/// Whether taint bit `flag` is set.
pub fn test(flag: u32) -> bool {
    TAINTED.load(Ordering::Relaxed) & (1 << flag) != 0
}

/// `Not tainted`, or `Tainted: ` and one character per flag, as Linux prints it.
pub fn describe(buf: &mut [u8; TAINT_STRING_MAX]) -> &str {
    let mask = TAINTED.load(Ordering::Relaxed);
    if mask == 0 {
        return "Not tainted";
    }
    buf[..9].copy_from_slice(b"Tainted: ");
    for (i, (set, clear)) in FLAGS.iter().enumerate() {
        buf[9 + i] = if mask & (1 << i) != 0 { *set } else { *clear };
    }
    core::str::from_utf8(&buf[..]).unwrap_or("Tainted")
}
