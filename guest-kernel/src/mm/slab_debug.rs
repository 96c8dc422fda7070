//! The slab debug checks of a cache under `slab_debug=` and their reports, in Linux's words
//! (`mm/slub.c`: `slab_bug`, `check_bytes_and_report`, `print_trailer`, `slab_fix`): a red zone
//! or poison found broken is reported, tainted `B`, and restored; an object already free is
//! not freed again. Where Linux dumps the whole object in hex, the report dumps the rows that
//! hold the damage (at most [`DUMP_ROWS`]): each console line costs milliseconds when the
//! guest's instructions are emulated.

use core::fmt::Write;

use crashvisor_klib::bytefmt::ByteWriter;
use crashvisor_klib::slab_debug::{
    first_mismatch, poison, poison_mismatch, DebugFlags, ObjectLayout, POISON_END, POISON_FREE, RED_ACTIVE,
    RED_INACTIVE,
};

use super::slab::{fill, read_word, KmemCache};
use crate::printk::KERN_ERR;
use crate::{dumpstack, taint};

/// Most 16-byte rows of an object a report dumps.
const DUMP_ROWS: usize = 4;

/// The bytes at `address` (inside a slab object its caller owns).
fn bytes(address: usize, len: usize) -> &'static [u8] {
    // SAFETY: callers pass a range inside a slab object of a page the allocator owns; nothing
    // frees slab pages.
    unsafe { core::slice::from_raw_parts(address as *const u8, len) }
}

/// Linux's `slab_bug`: the report's headline.
fn slab_bug(cache: &KmemCache, what: core::fmt::Arguments<'_>) {
    let mut tainted = [0u8; taint::TAINT_STRING_MAX];
    crate::pr_err!("=============================================================================");
    crate::pr_err!("BUG {} ({}): {}", cache.name(), taint::describe(&mut tainted), what);
    crate::pr_err!("-----------------------------------------------------------------------------");
    crate::pr_err!("");
}

/// Linux's `slab_fix`.
fn slab_fix(cache: &KmemCache, what: core::fmt::Arguments<'_>) {
    crate::pr_err!("FIX {}: {}", cache.name(), what);
}

/// Linux's `print_section`: a hex dump, 16 bytes a line, with the bytes as text.
fn print_section(prefix: &str, address: usize, len: usize) {
    for (row, chunk) in bytes(address, len).chunks(16).enumerate() {
        let mut buf = [0u8; 80];
        let mut line = ByteWriter::new(&mut buf);
        for (i, byte) in chunk.iter().enumerate() {
            let _ = write!(line, "{}{byte:02x}", if i == 0 { "" } else { " " });
        }
        let pad = (16 - chunk.len()) * 3 + 2;
        for _ in 0..pad {
            line.push_byte(b' ');
        }
        for &byte in chunk {
            line.push_byte(if byte.is_ascii_graphic() || byte == b' ' { byte } else { b'.' });
        }
        let text = core::str::from_utf8(line.as_bytes()).unwrap_or("");
        crate::pr_err!("{}{:016x}: {}", prefix, address + row * 16, text);
    }
}

/// Linux's `print_trailer`: the slab, the object (the rows from `focus`, an offset into it) and
/// its red zone, and the stack.
fn print_trailer(cache: &KmemCache, object: usize, layout: &ObjectLayout, focus: usize) {
    let usage = cache.usage(object, layout);
    crate::pr_err!(
        "Slab 0x{:016x} objects={} used={} fp=0x{:016x} flags=0x200(slab)",
        usage.page,
        usage.objects,
        usage.used,
        usage.freelist
    );
    let fp = read_word(object + layout.free_pointer);
    crate::pr_err!("Object 0x{:016x} @offset={} fp=0x{:016x}", object, object - usage.page, fp);
    crate::pr_err!("");
    let first_row = (focus.min(layout.object_size.saturating_sub(1))) & !15;
    let rows = (layout.object_size - first_row).min(DUMP_ROWS * 16);
    print_section("Object   ", object + first_row, rows);
    if !layout.red_zone.is_empty() {
        print_section("Redzone  ", object + layout.red_zone.start, layout.red_zone.len());
    }
    dumpstack::dump_stack(KERN_ERR);
}

/// Linux's `check_bytes_and_report`: `len` bytes at `start` of `object` should all be
/// `expected` (or, for `Poison`, the poison pattern); a broken range is reported and restored.
fn check_bytes(
    cache: &KmemCache,
    object: usize,
    layout: &ObjectLayout,
    what: &str,
    start: usize,
    len: usize,
    expected: u8,
) {
    let found = if what == "Poison" {
        poison_mismatch(bytes(start, len)).map(|(offset, found, _)| (offset, found))
    } else {
        first_mismatch(bytes(start, len), expected)
    };
    let Some((offset, found)) = found else { return };
    let fault = start + offset;
    // The end of the broken run: the last byte that differs from the pattern.
    let range = bytes(start, len);
    let end = (offset..len)
        .rev()
        .find(|&i| {
            let want = if what == "Poison" && i == len - 1 { POISON_END } else { expected };
            range[i] != want
        })
        .map_or(fault + 1, |i| start + i + 1);
    slab_bug(cache, format_args!("{what} overwritten"));
    crate::pr_err!(
        "0x{:016x}-0x{:016x} @offset={}. First byte 0x{:x} instead of 0x{:x}",
        fault,
        end - 1,
        fault - object,
        found,
        expected
    );
    print_trailer(cache, object, layout, fault - object);
    taint::add(taint::TAINT_BAD_PAGE);
    slab_fix(cache, format_args!("Restoring {what} 0x{:016x}-0x{:016x}=0x{:x}", fault, end - 1, expected));
    if what == "Poison" {
        // SAFETY: the object is free and owned by the allocator (checked on allocation); poisoning
        // it whole restores the pattern.
        poison(unsafe { core::slice::from_raw_parts_mut(object as *mut u8, layout.object_size) });
    } else {
        fill(fault, end - fault, expected);
    }
}

/// On allocation: a free object's poison and red zone must be intact (Linux's
/// `alloc_debug_processing`).
pub(super) fn check_free_object(cache: &KmemCache, object: usize, layout: &ObjectLayout) {
    let debug = cache.debug();
    if debug.contains(DebugFlags::RED_ZONE) {
        let red = object + layout.red_zone.start;
        check_bytes(cache, object, layout, "Right Redzone", red, layout.red_zone.len(), RED_INACTIVE);
    }
    if debug.contains(DebugFlags::POISON) {
        check_bytes(cache, object, layout, "Poison", object, layout.object_size, POISON_FREE);
    }
}

/// On free: an allocated object's red zone, and the bytes of a `kmalloc` object beyond the
/// `size` asked for, must be intact (Linux's `free_debug_processing`).
pub(super) fn check_allocated_object(cache: &KmemCache, object: usize, size: usize, layout: &ObjectLayout) {
    if !cache.debug().contains(DebugFlags::RED_ZONE) {
        return;
    }
    let red = object + layout.red_zone.start;
    check_bytes(cache, object, layout, "Right Redzone", red, layout.red_zone.len(), RED_ACTIVE);
    if size < layout.object_size {
        check_bytes(cache, object, layout, "kmalloc Redzone", object + size, layout.object_size - size, RED_ACTIVE);
    }
}

/// Gives a free object its poison and inactive red zone.
pub(super) fn prepare_free_object(object: usize, layout: &ObjectLayout, debug: DebugFlags) {
    if debug.contains(DebugFlags::POISON) {
        // SAFETY: the object is being freed (or created free) and belongs to the allocator.
        poison(unsafe { core::slice::from_raw_parts_mut(object as *mut u8, layout.object_size) });
    }
    if debug.contains(DebugFlags::RED_ZONE) {
        fill(object + layout.red_zone.start, layout.red_zone.len(), RED_INACTIVE);
    }
}

/// A double free found on the free list (Linux's `object_err(..., "Object already free")`).
pub(super) fn object_already_free(cache: &KmemCache, object: usize, layout: &ObjectLayout) {
    slab_bug(cache, format_args!("Object already free"));
    print_trailer(cache, object, layout, 0);
    taint::add(taint::TAINT_BAD_PAGE);
    slab_fix(cache, format_args!("Object at 0x{object:016x} not freed"));
}
