//! The kernel's own symbol table, embedded in its image and searched at oops time.
//!
//! # Format (version 1, all little endian)
//!
//! | offset        | size            | field                                        |
//! |--------------:|----------------:|----------------------------------------------|
//! |  0            | 4               | magic `b"KSYM"`                              |
//! |  4            | 4               | version, 1                                   |
//! |  8            | 4               | `count`: number of entries                   |
//! | 12            | 4               | `strtab_len`: bytes of the string table      |
//! | 16            | 8               | `text_base`: address offsets are relative to |
//! | 24            | 16 × `count`    | entries, sorted by `offset`                  |
//! | 24 + 16×count | `strtab_len`    | string table, UTF-8, names not terminated    |
//!
//! Each entry is `{ u32 offset, u32 size, u32 name_offset, u32 name_len }`: the symbol spans
//! `[text_base + offset, text_base + offset + size)`, and its name is
//! `strtab[name_offset..name_offset + name_len]`. A symbol of size 0 extends to the next
//! symbol (the last one covers only its own address). Bytes after the string table are
//! ignored, so the table can sit in a fixed-size, zero-padded area of the image; an area that
//! is all zeros means "no table".
//!
//! [`SymbolTable::parse`] validates everything once (including UTF-8), so the kernel should
//! parse at boot and keep the table; [`SymbolTable::lookup`] is then a binary search.
//!
//! ```
//! # #[cfg(feature = "alloc")] {
//! use crashvisor_klib::symbols::{build, format_address, SymbolTable};
//!
//! // On the host, with feature `alloc`:
//! let bytes = build(0xffff_ffff_8100_0000, &[
//!     (0xffff_ffff_8100_0000, 0x80, "start_kernel"),
//!     (0xffff_ffff_8100_0080, 0x40, "panic"),
//! ]);
//! // In the guest, once at boot:
//! let table = SymbolTable::parse(&bytes).expect("built tables are valid");
//! // At oops time:
//! let mut out = [0u8; 128];
//! let text = format_address(Some(&table), 0xffff_ffff_8100_001a, &mut out);
//! assert_eq!(text, b"start_kernel+0x1a/0x80");
//! assert_eq!(table.find("panic"), Some(0xffff_ffff_8100_0080));
//! # }
//! ```

use crate::bytefmt::ByteWriter;
use crate::le::{u32_at, u64_at};

/// The table's magic bytes.
pub const MAGIC: [u8; 4] = *b"KSYM";
/// The format version this module reads and writes.
pub const VERSION: u32 = 1;
/// Size of the header.
pub const HEADER_SIZE: usize = 24;
/// Size of one entry.
pub const ENTRY_SIZE: usize = 16;

/// A validated symbol table borrowed from its bytes.
#[derive(Clone, Copy, Debug)]
pub struct SymbolTable<'a> {
    text_base: u64,
    entries: &'a [[u8; ENTRY_SIZE]],
    strtab: &'a str,
}

/// One symbol, as found by [`SymbolTable::lookup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Symbol<'a> {
    /// The name, as given to the builder.
    pub name: &'a str,
    /// The symbol's start address.
    pub addr: u64,
    /// Its size in bytes (for a size-0 entry, the distance to the next symbol).
    pub size: u64,
    /// How far the looked-up address is past `addr`.
    pub offset: u64,
}

impl<'a> SymbolTable<'a> {
    /// Validates a table: magic, version, sizes, sorted entries, names inside the UTF-8
    /// string table and addresses that do not overflow. `None` if anything is off, including
    /// an all-zero area (no table).
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        let (header, rest) = bytes.split_first_chunk::<HEADER_SIZE>()?;
        if header[..4] != MAGIC || u32_at(header, 4) != VERSION {
            return None;
        }
        let count = usize::try_from(u32_at(header, 8)).ok()?;
        let strtab_len = usize::try_from(u32_at(header, 12)).ok()?;
        let text_base = u64_at(header, 16);

        let entries_len = count.checked_mul(ENTRY_SIZE)?;
        let (entries, _) = rest.get(..entries_len)?.as_chunks::<ENTRY_SIZE>();
        let strtab = rest.get(entries_len..entries_len.checked_add(strtab_len)?)?;
        let table = Self { text_base, entries, strtab: core::str::from_utf8(strtab).ok()? };

        let mut previous = 0;
        for entry in entries {
            let (offset, size) = (entry_offset(entry), entry_size(entry));
            if offset < previous || table.name(entry).is_none() {
                return None;
            }
            text_base.checked_add(u64::from(offset) + u64::from(size))?;
            previous = offset;
        }
        Some(table)
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no symbols.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The address entry offsets are relative to.
    pub fn text_base(&self) -> u64 {
        self.text_base
    }

    /// The symbol containing `addr`, by binary search.
    pub fn lookup(&self, addr: u64) -> Option<Symbol<'a>> {
        let offset = addr.checked_sub(self.text_base)?;
        let after = self.entries.partition_point(|entry| u64::from(entry_offset(entry)) <= offset);
        let index = after.checked_sub(1)?;
        let symbol = self.symbol(index)?;
        let delta = addr - symbol.addr;
        // A size-0 last symbol still covers its own address.
        (delta < symbol.size.max(1)).then_some(Symbol { offset: delta, ..symbol })
    }

    /// The address of the first symbol named `name` (a linear scan).
    pub fn find(&self, name: &str) -> Option<u64> {
        self.entries
            .iter()
            .find(|entry| self.name(entry) == Some(name))
            .map(|entry| self.text_base + u64::from(entry_offset(entry)))
    }

    /// Every symbol in address order, each with `offset` 0.
    pub fn iter(&self) -> impl Iterator<Item = Symbol<'a>> + '_ {
        (0..self.entries.len()).filter_map(|index| self.symbol(index))
    }

    /// The symbol at `index` with its effective size.
    fn symbol(&self, index: usize) -> Option<Symbol<'a>> {
        let entry = self.entries.get(index)?;
        let start = entry_offset(entry);
        let size = match entry_size(entry) {
            0 => self.entries.get(index + 1).map_or(0, |next| entry_offset(next) - start),
            size => size,
        };
        Some(Symbol {
            name: self.name(entry)?,
            addr: self.text_base + u64::from(start),
            size: u64::from(size),
            offset: 0,
        })
    }

    fn name(&self, entry: &[u8; ENTRY_SIZE]) -> Option<&'a str> {
        let start = usize::try_from(u32_at(entry, 8)).ok()?;
        let len = usize::try_from(u32_at(entry, 12)).ok()?;
        self.strtab.get(start..start.checked_add(len)?)
    }
}

fn entry_offset(entry: &[u8; ENTRY_SIZE]) -> u32 {
    u32_at(entry, 0)
}

fn entry_size(entry: &[u8; ENTRY_SIZE]) -> u32 {
    u32_at(entry, 4)
}

impl Symbol<'_> {
    /// Writes `name+0xoffset/0xsize` (Linux's `%pS`) into `out`, truncated if it does not fit,
    /// and returns the written part.
    pub fn format<'b>(&self, out: &'b mut [u8]) -> &'b [u8] {
        let mut w = ByteWriter::new(out);
        w.push_str(self.name)
            .push_byte(b'+')
            .push_hex_prefixed(self.offset)
            .push_byte(b'/')
            .push_hex_prefixed(self.size);
        w.into_bytes()
    }
}

/// Formats `addr` like Linux's `%pS`: `name+0x1a/0x80`, or `0xffffffff81234567` when no
/// symbol contains it (or there is no table).
pub fn format_address<'b>(table: Option<&SymbolTable<'_>>, addr: u64, out: &'b mut [u8]) -> &'b [u8] {
    match table.and_then(|table| table.lookup(addr)) {
        Some(symbol) => symbol.format(out),
        None => {
            let mut w = ByteWriter::new(out);
            w.push_hex_prefixed(addr);
            w.into_bytes()
        }
    }
}

/// Formats a return address from a stack trace like Linux's `%pB`: the symbol is looked up
/// at `addr - 1`, so a call that is the last instruction of a function is attributed to it,
/// and the offset printed is that of `addr`.
pub fn format_return_address<'b>(table: Option<&SymbolTable<'_>>, addr: u64, out: &'b mut [u8]) -> &'b [u8] {
    let found = addr.checked_sub(1).and_then(|call| table.and_then(|table| table.lookup(call)));
    match found {
        Some(symbol) => Symbol { offset: symbol.offset + 1, ..symbol }.format(out),
        None => format_address(None, addr, out),
    }
}

/// Builds a table from `(address, size, name)` triples in any order: sorted by address;
/// symbols below `text_base` or too far above it (offset or size beyond 32 bits) are dropped;
/// of several at one address the first with a non-zero size is kept, else the first given.
#[cfg(any(test, feature = "alloc"))]
pub fn build(text_base: u64, symbols: &[(u64, u64, &str)]) -> alloc::vec::Vec<u8> {
    use alloc::vec::Vec;

    let mut kept: Vec<(u32, u32, &str)> = symbols
        .iter()
        .filter_map(|&(addr, size, name)| {
            let offset = u32::try_from(addr.checked_sub(text_base)?).ok()?;
            let size = u32::try_from(size).ok()?;
            text_base.checked_add(u64::from(offset) + u64::from(size))?;
            Some((offset, size, name))
        })
        .collect();
    // Stable: equal keys keep the caller's order.
    kept.sort_by_key(|&(offset, size, _)| (offset, size == 0));
    kept.dedup_by_key(|&mut (offset, ..)| offset);

    let mut entries = Vec::with_capacity(kept.len() * ENTRY_SIZE);
    let mut strtab = Vec::new();
    let mut count: u32 = 0;
    for (offset, size, name) in kept {
        let (Ok(name_offset), Ok(name_len)) = (u32::try_from(strtab.len()), u32::try_from(name.len())) else {
            break;
        };
        if name_offset.checked_add(name_len).is_none() || count == u32::MAX {
            break;
        }
        for field in [offset, size, name_offset, name_len] {
            entries.extend_from_slice(&field.to_le_bytes());
        }
        strtab.extend_from_slice(name.as_bytes());
        count += 1;
    }

    let mut bytes = Vec::with_capacity(HEADER_SIZE + entries.len() + strtab.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&count.to_le_bytes());
    // The loop above stopped before the string table passed u32::MAX.
    bytes.extend_from_slice(&(strtab.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&text_base.to_le_bytes());
    bytes.extend_from_slice(&entries);
    bytes.extend_from_slice(&strtab);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    const BASE: u64 = 0xffff_ffff_8100_0000;

    fn sample() -> Vec<u8> {
        build(
            BASE,
            &[
                (BASE + 0x200, 0x10, "third"),
                (BASE, 0x80, "start_kernel"),
                (BASE + 0x100, 0, "gap_to_third"),
                (BASE + 0x80, 0x40, "panic"),
                (BASE + 0x300, 0, "_etext"),
            ],
        )
    }

    #[test]
    fn lookup_finds_containing_symbol() {
        let bytes = sample();
        let table = SymbolTable::parse(&bytes).unwrap();
        assert_eq!(table.len(), 5);
        assert_eq!(
            table.lookup(BASE + 0x1a),
            Some(Symbol { name: "start_kernel", addr: BASE, size: 0x80, offset: 0x1a })
        );
        assert_eq!(table.lookup(BASE).unwrap().offset, 0);
        assert_eq!(table.lookup(BASE + 0x80).unwrap().name, "panic");
        assert_eq!(table.lookup(BASE + 0xbf).unwrap().name, "panic");
        // Between panic's end and the next symbol.
        assert_eq!(table.lookup(BASE + 0xc0), None);
        // Size 0: up to the next symbol.
        let gap = table.lookup(BASE + 0x1ff).unwrap();
        assert_eq!((gap.name, gap.size, gap.offset), ("gap_to_third", 0x100, 0xff));
        assert_eq!(table.lookup(BASE + 0x210), None);
        // The last size-0 symbol covers only its address.
        assert_eq!(table.lookup(BASE + 0x300).unwrap().name, "_etext");
        assert_eq!(table.lookup(BASE + 0x301), None);
        assert_eq!(table.lookup(BASE - 1), None);
        assert_eq!(table.lookup(0), None);
        assert_eq!(table.lookup(u64::MAX), None);
    }

    #[test]
    fn find_and_iter() {
        let bytes = sample();
        let table = SymbolTable::parse(&bytes).unwrap();
        assert_eq!(table.find("panic"), Some(BASE + 0x80));
        assert_eq!(table.find("pani"), None);
        assert_eq!(table.text_base(), BASE);
        let names: Vec<_> = table.iter().map(|s| s.name).collect();
        assert_eq!(names, ["start_kernel", "panic", "gap_to_third", "third", "_etext"]);
    }

    #[test]
    fn formats_like_percent_p_s_and_b() {
        let bytes = sample();
        let table = SymbolTable::parse(&bytes).unwrap();
        let mut out = [0u8; 64];
        assert_eq!(format_address(Some(&table), BASE + 0x1a, &mut out), b"start_kernel+0x1a/0x80");
        assert_eq!(format_address(Some(&table), BASE + 0x80, &mut out), b"panic+0x0/0x40");
        assert_eq!(format_address(Some(&table), BASE + 0xc0, &mut out), b"0xffffffff810000c0");
        assert_eq!(format_address(None, 0, &mut out), b"0x0");
        // %pB: a return address just past the end of panic is still panic.
        assert_eq!(format_return_address(Some(&table), BASE + 0xc0, &mut out), b"panic+0x40/0x40");
        assert_eq!(format_return_address(Some(&table), BASE + 0x10, &mut out), b"start_kernel+0x10/0x80");
        assert_eq!(format_return_address(Some(&table), 0, &mut out), b"0x0");
        assert_eq!(format_return_address(Some(&table), BASE, &mut out), b"0xffffffff81000000");
        let mut small = [0u8; 8];
        assert_eq!(format_address(Some(&table), BASE + 1, &mut small), b"start_ke");
    }

    #[test]
    fn build_sorts_dedups_and_drops_out_of_range() {
        let base = 0x100_0000;
        let bytes = build(
            base,
            &[
                (base + 8, 0, "alias"),
                (base + 8, 4, "sized"),
                (base + 8, 4, "later"),
                (base - 8, 4, "below"),
                (base + (1 << 32), 4, "too_far"),
                (base, 1 << 32, "too_big"),
                (base, 8, "h\u{e9}llo"),
            ],
        );
        let table = SymbolTable::parse(&bytes).unwrap();
        let names: Vec<_> = table.iter().map(|s| (s.name, s.size)).collect();
        assert_eq!(names, [("h\u{e9}llo", 8), ("sized", 4)]);
        // Addresses near the top of the address space do not overflow.
        let top = build(u64::MAX - 16, &[(u64::MAX - 16, 16, "top"), (u64::MAX - 8, 9, "over")]);
        let table = SymbolTable::parse(&top).unwrap();
        assert_eq!(table.len(), 1);
        assert_eq!(table.lookup(u64::MAX - 1).unwrap().name, "top");
    }

    #[test]
    fn empty_table_and_padding() {
        let mut bytes = build(BASE, &[]);
        let table = SymbolTable::parse(&bytes).unwrap();
        assert!(table.is_empty());
        assert_eq!(table.lookup(BASE), None);
        bytes.resize(4096, 0);
        assert!(SymbolTable::parse(&bytes).is_some(), "trailing padding is ignored");
    }

    #[test]
    fn rejects_malformed_tables() {
        assert!(SymbolTable::parse(&[0u8; 4096]).is_none(), "all zeros means no table");
        assert!(SymbolTable::parse(&[]).is_none());
        let good = sample();
        let corrupt = |at: usize, value: &[u8]| {
            let mut bytes = good.clone();
            bytes[at..at + value.len()].copy_from_slice(value);
            SymbolTable::parse(&bytes).is_none()
        };
        assert!(corrupt(0, b"KSYN"));
        assert!(corrupt(4, &2u32.to_le_bytes()));
        assert!(corrupt(8, &6u32.to_le_bytes()), "count past the end");
        assert!(corrupt(8, &u32::MAX.to_le_bytes()));
        assert!(corrupt(12, &1000u32.to_le_bytes()), "strtab past the end");
        // Entry 0 moved above entry 1.
        let mut unsorted = good.clone();
        unsorted[HEADER_SIZE..HEADER_SIZE + 4].copy_from_slice(&0x90u32.to_le_bytes());
        assert!(SymbolTable::parse(&unsorted).is_none());
        // Name past the string table, and name overflow.
        assert!(corrupt(HEADER_SIZE + 8, &1000u32.to_le_bytes()));
        assert!(corrupt(HEADER_SIZE + 12, &u32::MAX.to_le_bytes()));
        assert!(SymbolTable::parse(&good[..good.len() - 1]).is_none(), "truncated");
        // Invalid UTF-8, and a name cut inside a character.
        let strtab = good.len() - "start_kernelpanicgap_to_thirdthird_etext".len();
        assert!(corrupt(strtab, &[0xff]));
        let split = build(BASE, &[(BASE, 1, "\u{e9}")]);
        let mut cut = split.clone();
        cut[HEADER_SIZE + 12..HEADER_SIZE + 16].copy_from_slice(&1u32.to_le_bytes());
        assert!(SymbolTable::parse(&cut).is_none());
        // Overflowing text_base + offset + size.
        let mut high = split;
        high[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(SymbolTable::parse(&high).is_none());
    }
}
