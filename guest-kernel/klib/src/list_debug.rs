//! The integrity checks of a doubly linked `list_head` before `list_add` and `list_del`
//! (Linux's `lib/list_debug.c`, `CONFIG_LIST_HARDENED`), with Linux's messages. The checks
//! only compare pointers; the caller reads `next->prev` and `prev->next` through the closures,
//! which run only once the pointers they dereference are known not to be NULL or poison.
//!
//! ```
//! use crashvisor_klib::list_debug::{check_add, Corruption};
//!
//! // Adding between prev (0x1000) and next (0x2000), but next->prev is 0: corrupted.
//! let found = check_add(0x3000, 0x1000, 0x2000, || 0, || 0x2000);
//! assert_eq!(found, Err(Corruption::AddNextPrev { prev: 0x1000, next_prev: 0, next: 0x2000 }));
//! assert_eq!(
//!     found.unwrap_err().to_string(),
//!     "list_add corruption. next->prev should be prev (0000000000001000), but was 0000000000000000. (next=0000000000002000)."
//! );
//! ```

use core::fmt;

/// Linux's `POISON_POINTER_DELTA` on x86_64 (`CONFIG_ILLEGAL_POINTER_VALUE`).
pub const POISON_POINTER_DELTA: u64 = 0xdead_0000_0000_0000;
/// `LIST_POISON1`: what `list_del` leaves in `next`.
pub const LIST_POISON1: u64 = 0x100 + POISON_POINTER_DELTA;
/// `LIST_POISON2`: what `list_del` leaves in `prev`.
pub const LIST_POISON2: u64 = 0x122 + POISON_POINTER_DELTA;

/// A corruption found by a check; `Display` is Linux's message (printed with `%px`, i.e. 16
/// hex digits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // the fields are the pointers named in each message
pub enum Corruption {
    AddPrevNull,
    AddNextNull,
    AddNextPrev { prev: u64, next_prev: u64, next: u64 },
    AddPrevNext { next: u64, prev_next: u64, prev: u64 },
    DoubleAdd { new: u64, prev: u64, next: u64 },
    DelNextNull { entry: u64 },
    DelPrevNull { entry: u64 },
    DelPoison1 { entry: u64 },
    DelPoison2 { entry: u64 },
    DelPrevNext { entry: u64, prev_next: u64, prev: u64 },
    DelNextPrev { entry: u64, next_prev: u64, next: u64 },
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::AddPrevNull => f.write_str("list_add corruption. prev is NULL."),
            Self::AddNextNull => f.write_str("list_add corruption. next is NULL."),
            Self::AddNextPrev { prev, next_prev, next } => write!(
                f,
                "list_add corruption. next->prev should be prev ({prev:016x}), but was {next_prev:016x}. (next={next:016x})."
            ),
            Self::AddPrevNext { next, prev_next, prev } => write!(
                f,
                "list_add corruption. prev->next should be next ({next:016x}), but was {prev_next:016x}. (prev={prev:016x})."
            ),
            Self::DoubleAdd { new, prev, next } => {
                write!(f, "list_add double add: new={new:016x}, prev={prev:016x}, next={next:016x}.")
            }
            Self::DelNextNull { entry } => write!(f, "list_del corruption, {entry:016x}->next is NULL"),
            Self::DelPrevNull { entry } => write!(f, "list_del corruption, {entry:016x}->prev is NULL"),
            Self::DelPoison1 { entry } => {
                write!(f, "list_del corruption, {entry:016x}->next is LIST_POISON1 ({LIST_POISON1:016x})")
            }
            Self::DelPoison2 { entry } => {
                write!(f, "list_del corruption, {entry:016x}->prev is LIST_POISON2 ({LIST_POISON2:016x})")
            }
            Self::DelPrevNext { entry, prev_next, prev } => write!(
                f,
                "list_del corruption. prev->next should be {entry:016x}, but was {prev_next:016x}. (prev={prev:016x})"
            ),
            Self::DelNextPrev { entry, next_prev, next } => write!(
                f,
                "list_del corruption. next->prev should be {entry:016x}, but was {next_prev:016x}. (next={next:016x})"
            ),
        }
    }
}

/// Linux's `__list_add_valid_or_report`: may `new` go between `prev` and `next`?
/// `next_prev` reads `next->prev`, `prev_next` reads `prev->next`.
pub fn check_add(
    new: u64,
    prev: u64,
    next: u64,
    next_prev: impl FnOnce() -> u64,
    prev_next: impl FnOnce() -> u64,
) -> Result<(), Corruption> {
    if prev == 0 {
        return Err(Corruption::AddPrevNull);
    }
    if next == 0 {
        return Err(Corruption::AddNextNull);
    }
    let next_prev = next_prev();
    if next_prev != prev {
        return Err(Corruption::AddNextPrev { prev, next_prev, next });
    }
    let prev_next = prev_next();
    if prev_next != next {
        return Err(Corruption::AddPrevNext { next, prev_next, prev });
    }
    if new == prev || new == next {
        return Err(Corruption::DoubleAdd { new, prev, next });
    }
    Ok(())
}

/// Linux's `__list_del_entry_valid_or_report`: may `entry` (between `prev` and `next`) be
/// unlinked? `prev_next` reads `prev->next`, `next_prev` reads `next->prev`.
pub fn check_del(
    entry: u64,
    prev: u64,
    next: u64,
    prev_next: impl FnOnce() -> u64,
    next_prev: impl FnOnce() -> u64,
) -> Result<(), Corruption> {
    if next == 0 {
        return Err(Corruption::DelNextNull { entry });
    }
    if prev == 0 {
        return Err(Corruption::DelPrevNull { entry });
    }
    if next == LIST_POISON1 {
        return Err(Corruption::DelPoison1 { entry });
    }
    if prev == LIST_POISON2 {
        return Err(Corruption::DelPoison2 { entry });
    }
    let prev_next = prev_next();
    if prev_next != entry {
        return Err(Corruption::DelPrevNext { entry, prev_next, prev });
    }
    let next_prev = next_prev();
    if next_prev != entry {
        return Err(Corruption::DelNextPrev { entry, next_prev, next });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn never() -> u64 {
        panic!("a NULL or poisoned pointer must not be followed")
    }

    #[test]
    fn a_sound_add_and_del_pass() {
        assert_eq!(check_add(0x30, 0x10, 0x20, || 0x10, || 0x20), Ok(()));
        assert_eq!(check_del(0x30, 0x10, 0x20, || 0x30, || 0x30), Ok(()));
    }

    #[test]
    fn add_checks_in_linux_order() {
        assert_eq!(check_add(0x30, 0, 0x20, never, never), Err(Corruption::AddPrevNull));
        assert_eq!(check_add(0x30, 0x10, 0, never, never), Err(Corruption::AddNextNull));
        assert_eq!(
            check_add(0x30, 0x10, 0x20, || 0x99, never),
            Err(Corruption::AddNextPrev { prev: 0x10, next_prev: 0x99, next: 0x20 })
        );
        assert_eq!(
            check_add(0x30, 0x10, 0x20, || 0x10, || 0x98),
            Err(Corruption::AddPrevNext { next: 0x20, prev_next: 0x98, prev: 0x10 })
        );
        assert_eq!(
            check_add(0x10, 0x10, 0x10, || 0x10, || 0x10),
            Err(Corruption::DoubleAdd { new: 0x10, prev: 0x10, next: 0x10 })
        );
    }

    #[test]
    fn del_checks_in_linux_order() {
        assert_eq!(check_del(0x30, 0x10, 0, never, never), Err(Corruption::DelNextNull { entry: 0x30 }));
        assert_eq!(check_del(0x30, 0, 0x20, never, never), Err(Corruption::DelPrevNull { entry: 0x30 }));
        assert_eq!(check_del(0x30, 0x10, LIST_POISON1, never, never), Err(Corruption::DelPoison1 { entry: 0x30 }));
        assert_eq!(check_del(0x30, LIST_POISON2, 0x20, never, never), Err(Corruption::DelPoison2 { entry: 0x30 }));
        assert_eq!(
            check_del(0x30, 0x10, 0x20, || 0x31, never),
            Err(Corruption::DelPrevNext { entry: 0x30, prev_next: 0x31, prev: 0x10 })
        );
        assert_eq!(
            check_del(0x30, 0x10, 0x20, || 0x30, || 0),
            Err(Corruption::DelNextPrev { entry: 0x30, next_prev: 0, next: 0x20 })
        );
    }

    #[test]
    fn messages_are_linuxs() {
        let e = 0xffff_c900_0001_3e40;
        assert_eq!(
            Corruption::DelNextPrev { entry: e, next_prev: 0, next: 0xffff_c900_0001_3e50 }.to_string(),
            "list_del corruption. next->prev should be ffffc90000013e40, but was 0000000000000000. (next=ffffc90000013e50)"
        );
        assert_eq!(
            Corruption::DelPoison1 { entry: 0x10 }.to_string(),
            "list_del corruption, 0000000000000010->next is LIST_POISON1 (dead000000000100)"
        );
        assert_eq!(Corruption::AddPrevNull.to_string(), "list_add corruption. prev is NULL.");
        assert_eq!(
            Corruption::DoubleAdd { new: 1, prev: 1, next: 2 }.to_string(),
            "list_add double add: new=0000000000000001, prev=0000000000000001, next=0000000000000002."
        );
    }
}
