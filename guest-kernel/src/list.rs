//! Linux's intrusive doubly linked `struct list_head`, with the list hardening
//! (`CONFIG_LIST_HARDENED` and `CONFIG_BUG_ON_DATA_CORRUPTION`): before `list_add` and
//! `list_del` the neighbours' links are checked (`klib::list_debug`), and a corrupted list is a
//! `BUG()` instead of a write through a bad pointer.

use core::ptr::null_mut;

use crashvisor_klib::list_debug::{check_add, check_del, Corruption, LIST_POISON1, LIST_POISON2};

/// A list node (or a list's head).
#[repr(C)]
pub struct ListHead {
    /// The next node.
    pub next: *mut ListHead,
    /// The previous node.
    pub prev: *mut ListHead,
}

impl ListHead {
    /// A node not yet in a list.
    pub const fn new() -> Self {
        Self { next: null_mut(), prev: null_mut() }
    }
}

/// Linux's `INIT_LIST_HEAD`: `head` becomes an empty list.
///
/// # Safety
/// `head` must point at a writable `ListHead`.
pub unsafe fn init(head: *mut ListHead) {
    // SAFETY: the caller passes a writable node.
    unsafe { *head = ListHead { next: head, prev: head } };
}

/// The data-corruption report: Linux's message, then `BUG()`.
fn corrupted(corruption: Corruption) -> ! {
    crate::pr_err!("{}", corruption);
    crate::bug!()
}

/// Linux's `list_add`: inserts `new` right after `head`.
///
/// # Safety
/// `new` must point at a writable node, `head` at a node whose `next` link and that node's
/// `prev` link are readable (the check reports them if they are not each other's).
pub unsafe fn list_add(new: *mut ListHead, head: *mut ListHead) {
    // SAFETY: the caller's contract covers `head`.
    let next = unsafe { (*head).next };
    let (new_addr, prev_addr, next_addr) = (new as u64, head as u64, next as u64);
    // SAFETY: `check_add` reads them only once it knows they are not NULL; the caller's
    // contract makes them readable.
    let checked =
        check_add(new_addr, prev_addr, next_addr, || unsafe { (*next).prev as u64 }, || unsafe { (*head).next as u64 });
    if let Err(corruption) = checked {
        corrupted(corruption);
    }
    // SAFETY: the links were just checked to form a sound list around `new`.
    unsafe {
        (*next).prev = new;
        (*new).next = next;
        (*new).prev = head;
        (*head).next = new;
    }
}

/// Linux's `list_del`: unlinks `entry` and poisons its links.
///
/// # Safety
/// `entry` must point at a writable node whose links, when not NULL or poison, point at
/// readable nodes.
pub unsafe fn list_del(entry: *mut ListHead) {
    // SAFETY: the caller's contract covers `entry`.
    let (prev, next) = unsafe { ((*entry).prev, (*entry).next) };
    // SAFETY: `check_del` reads them only once it knows they are neither NULL nor poison.
    let checked = check_del(
        entry as u64,
        prev as u64,
        next as u64,
        || unsafe { (*prev).next as u64 },
        || unsafe { (*next).prev as u64 },
    );
    if let Err(corruption) = checked {
        corrupted(corruption);
    }
    // SAFETY: the neighbours were just checked to point back at `entry`.
    unsafe {
        (*next).prev = prev;
        (*prev).next = next;
        (*entry).next = LIST_POISON1 as *mut ListHead;
        (*entry).prev = LIST_POISON2 as *mut ListHead;
    }
}
