//! The kernel log: Linux's variable-length record buffer of 3.5–5.9 (`kernel/printk/printk.c`).
//!
//! The layout is byte-exact, so unmodified kexec-tools `vmcore-dmesg`, makedumpfile
//! `--dump-dmesg` and `crash` read the log out of a vmcore (linux-semantics.md §7 (a)).
//!
//! # Buffer layout
//!
//! The buffer is a byte array whose length is a power of two of at least 4 KiB
//! ([`is_valid_buf_len`]). Records are 4-byte aligned; each is a 16-byte header
//! (`struct printk_log`, little endian) followed by the text and zero padding:
//!
//! | offset | size | field                                               |
//! |-------:|-----:|-----------------------------------------------------|
//! |      0 |    8 | `ts_nsec`: timestamp in nanoseconds                 |
//! |      8 |    2 | `len`: whole record, header and padding included    |
//! |     10 |    2 | `text_len`                                          |
//! |     12 |    2 | `dict_len`, always 0                                |
//! |     14 |    1 | `facility`                                          |
//! |     15 |    1 | `flags` in bits 0–4 ([`LOG_NEWLINE`]), `level` in bits 5–7 |
//!
//! A header with `len == 0` marks the end of the used part of the buffer: the next record is
//! at offset 0. The live records run from [`LogIndex::first_idx`] to [`LogIndex::next_idx`].
//!
//! # Invariants readers rely on
//!
//! - `next_idx + 16 <= buf_len`, so a wrap marker always fits at `next_idx`;
//! - walking from `first_idx`, adding `len` and jumping to 0 at a zero header reaches
//!   `next_idx` after at most one jump, without reading past `buf_len - 16`.
//!
//! `vmcore-dmesg` prints a zero header it crosses as an empty `[    0.000000] ` line, as it
//! does for a real Linux kernel.
//!
//! # VMCOREINFO
//!
//! The kernel publishes `SYMBOL(log_buf)` (a pointer variable), `SYMBOL(log_buf_len)` (u32),
//! `SYMBOL(log_first_idx)` and `SYMBOL(log_next_idx)` (the addresses of the fields of its
//! [`LogIndex`], see [`LogIndex::OFFSET_FIRST_IDX`]), `SIZE(printk_log)=16` and the
//! `OFFSET(printk_log.*)` values [`OFFSET_TS_NSEC`], [`OFFSET_LEN`], [`OFFSET_TEXT_LEN`] and
//! [`OFFSET_DICT_LEN`].

use crate::le::{get_u16, u16_at, u64_at};

/// `sizeof(struct printk_log)` without `CONFIG_PRINTK_CALLER`.
pub const HEADER_SIZE: usize = 16;
/// `offsetof(struct printk_log, ts_nsec)`.
pub const OFFSET_TS_NSEC: usize = 0;
/// `offsetof(struct printk_log, len)`.
pub const OFFSET_LEN: usize = 8;
/// `offsetof(struct printk_log, text_len)`.
pub const OFFSET_TEXT_LEN: usize = 10;
/// `offsetof(struct printk_log, dict_len)`.
pub const OFFSET_DICT_LEN: usize = 12;
/// `offsetof(struct printk_log, facility)`.
pub const OFFSET_FACILITY: usize = 14;
/// Offset of the byte holding `flags:5` and `level:3`.
pub const OFFSET_FLAGS_LEVEL: usize = 15;
/// Record alignment (`LOG_ALIGN` on x86).
pub const LOG_ALIGN: usize = 4;
/// `LOG_NEWLINE`: the record was a complete line ending in `\n` (which is not stored).
pub const LOG_NEWLINE: u8 = 2;
/// Smallest supported buffer.
pub const MIN_BUF_LEN: usize = 4096;
/// Largest supported buffer (Linux's `LOG_BUF_LEN_MAX`).
pub const MAX_BUF_LEN: usize = 1 << 31;
/// Appended to a message cut to fit, as Linux's `truncate_msg()` does.
pub const TRUNC_MSG: &[u8] = b"<truncated>";
/// Longest line Linux's `vprintk_store()` formats (`LOG_LINE_MAX`, 1024 - 32): a good size
/// for the caller's formatting buffer.
pub const LOG_LINE_MAX: usize = 992;
/// Longest console timestamp [`format_timestamp`] writes: `[18446744073.709551] `.
pub const TIMESTAMP_MAX_LEN: usize = 21;

/// Linux's `MAX_LOG_TAKE_PART`: a truncated message keeps at most this fraction of the buffer.
const MAX_LOG_TAKE_PART: usize = 4;
/// Longest text stored whole: a longer one could overflow the u16 `len` field, so it is
/// truncated (Linux cannot pass one, its `text_len` being a u16 capped at `LOG_LINE_MAX`).
const TEXT_LEN_LIMIT: usize = 65504;

/// Whether `len` is a usable buffer length: a power of two from 4 KiB to 2 GiB.
pub fn is_valid_buf_len(len: usize) -> bool {
    len.is_power_of_two() && (MIN_BUF_LEN..=MAX_BUF_LEN).contains(&len)
}

/// The log's indices: Linux's `log_first_idx`, `log_next_idx`, `log_first_seq` and
/// `log_next_seq`, in one `#[repr(C)]` block whose address the kernel publishes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogIndex {
    /// Byte offset of the oldest record (or of a zero header meaning "it is at 0").
    pub first_idx: u32,
    /// Byte offset where the next record goes.
    pub next_idx: u32,
    /// Sequence number of the oldest record.
    pub first_seq: u64,
    /// Sequence number the next record gets.
    pub next_seq: u64,
}

const _: () = assert!(core::mem::size_of::<LogIndex>() == 24);

/// A position in the log, like Linux's `console_seq` plus `console_idx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// Sequence number of the record at `idx`.
    pub seq: u64,
    /// Byte offset of that record (or of a zero header before it).
    pub idx: u32,
}

/// One record read back from the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'b> {
    /// Sequence number.
    pub seq: u64,
    /// Timestamp in nanoseconds.
    pub ts_nsec: u64,
    /// Syslog facility (0 = kernel).
    pub facility: u8,
    /// Log level, 0 (`KERN_EMERG`) to 7 (`KERN_DEBUG`).
    pub level: u8,
    /// `LOG_*` flags (5 bits).
    pub flags: u8,
    /// The text, without the trailing newline.
    pub text: &'b [u8],
}

impl LogIndex {
    /// Byte offset of `first_idx` (publish as `SYMBOL(log_first_idx)`).
    pub const OFFSET_FIRST_IDX: usize = 0;
    /// Byte offset of `next_idx` (publish as `SYMBOL(log_next_idx)`).
    pub const OFFSET_NEXT_IDX: usize = 4;
    /// Byte offset of `first_seq`.
    pub const OFFSET_FIRST_SEQ: usize = 8;
    /// Byte offset of `next_seq`.
    pub const OFFSET_NEXT_SEQ: usize = 16;

    /// An empty log.
    pub const fn new() -> Self {
        Self { first_idx: 0, next_idx: 0, first_seq: 0, next_seq: 0 }
    }

    /// Whether the log holds no record.
    pub fn is_empty(&self) -> bool {
        self.first_seq >= self.next_seq
    }

    /// Number of records in the log.
    pub fn len(&self) -> u64 {
        self.next_seq.saturating_sub(self.first_seq)
    }

    /// The position of the oldest record.
    pub fn first(&self) -> Cursor {
        Cursor { seq: self.first_seq, idx: self.first_idx }
    }

    /// The position the next record will take: keep it before [`append`](Self::append) to
    /// read back what was appended.
    pub fn cursor(&self) -> Cursor {
        Cursor { seq: self.next_seq, idx: self.next_idx }
    }

    /// Stores one message like Linux's `log_store()` and returns its sequence number.
    ///
    /// A single trailing `\n` is removed and recorded as [`LOG_NEWLINE`], as
    /// `vprintk_store()` does. Old records are dropped to make room. A message that still
    /// does not fit once every old record is dropped (which, as in Linux, depends on where
    /// the free space lies) keeps its first `buf.len() / 4` bytes followed by [`TRUNC_MSG`].
    /// `level` keeps its low 3 bits.
    ///
    /// Returns `None`, storing nothing, if `buf`'s length is not valid
    /// ([`is_valid_buf_len`]). Indices inconsistent with `buf` (corruption) reset the log.
    pub fn append(&mut self, buf: &mut [u8], ts_nsec: u64, facility: u8, level: u8, text: &[u8]) -> Option<u64> {
        if !is_valid_buf_len(buf.len()) {
            return None;
        }
        if !self.is_consistent(buf.len()) {
            self.reset();
        }
        let (mut text, flags) = match text.split_last() {
            Some((b'\n', line)) => (line, LOG_NEWLINE),
            _ => (text, 0),
        };
        let mut trunc_msg: &[u8] = &[];
        let mut size = record_size(text.len());
        if text.len() > TEXT_LEN_LIMIT || !self.make_free_space(buf, size) {
            let max_text_len = (buf.len() / MAX_LOG_TAKE_PART).min(TEXT_LEN_LIMIT);
            text = &text[..text.len().min(max_text_len)];
            trunc_msg = TRUNC_MSG;
            size = record_size(text.len() + trunc_msg.len());
            if !self.make_free_space(buf, size) {
                return None;
            }
        }

        let mut idx = self.next_idx as usize;
        if idx + size + HEADER_SIZE > buf.len() {
            // The record and a following wrap marker do not fit before the end: leave a zero
            // header saying "continue at 0".
            buf.get_mut(idx..idx + HEADER_SIZE)?.fill(0);
            idx = 0;
        }
        let (header, body) = buf.get_mut(idx..idx + size)?.split_first_chunk_mut::<HEADER_SIZE>()?;
        let text_len = text.len() + trunc_msg.len();
        // The text is at most TEXT_LEN_LIMIT bytes plus TRUNC_MSG, so `size` is at most 65532
        // and both lengths fit the u16 fields.
        header[OFFSET_TS_NSEC..OFFSET_LEN].copy_from_slice(&ts_nsec.to_le_bytes());
        header[OFFSET_LEN..OFFSET_TEXT_LEN].copy_from_slice(&(size as u16).to_le_bytes());
        header[OFFSET_TEXT_LEN..OFFSET_DICT_LEN].copy_from_slice(&(text_len as u16).to_le_bytes());
        header[OFFSET_DICT_LEN..OFFSET_FACILITY].fill(0);
        header[OFFSET_FACILITY] = facility;
        header[OFFSET_FLAGS_LEVEL] = (flags & 0x1f) | ((level & 7) << 5);
        body[..text.len()].copy_from_slice(text);
        body[text.len()..text_len].copy_from_slice(trunc_msg);
        body[text_len..].fill(0);

        // `idx + size <= buf.len() - 16 < 2^31`.
        self.next_idx = (idx + size) as u32;
        let seq = self.next_seq;
        self.next_seq += 1;
        Some(seq)
    }

    /// The records from sequence number `from_seq` on (from the oldest if `from_seq` was
    /// dropped), oldest first. This walks the headers before `from_seq`; a console that
    /// keeps up should resume from a [`Cursor`] with [`records_from`](Self::records_from).
    pub fn records<'b>(&self, buf: &'b [u8], from_seq: u64) -> Records<'b> {
        let mut records = self.records_from(buf, self.first());
        while records.seq < from_seq && records.next().is_some() {}
        records
    }

    /// The records from `cursor` on, oldest first. A cursor whose record was dropped restarts
    /// at the oldest record, like Linux's console does.
    ///
    /// Reading stops early, without panicking, at anything inconsistent (a header crossing
    /// the end of `buf`, a `len` too short for its text, a second wrap), so it is safe on a
    /// buffer taken from a crash dump.
    pub fn records_from<'b>(&self, buf: &'b [u8], cursor: Cursor) -> Records<'b> {
        let start = if cursor.seq < self.first_seq { self.first() } else { cursor };
        Records {
            buf,
            idx: start.idx as usize,
            seq: start.seq,
            next_idx: self.next_idx as usize,
            next_seq: self.next_seq,
            wrapped: false,
        }
    }

    /// Drops every record but keeps the sequence numbers going.
    fn reset(&mut self) {
        self.first_idx = 0;
        self.next_idx = 0;
        self.first_seq = self.next_seq;
    }

    /// Whether both indices are aligned places for a header and the sequence numbers ordered.
    fn is_consistent(&self, buf_len: usize) -> bool {
        is_header_place(self.first_idx as usize, buf_len)
            && is_header_place(self.next_idx as usize, buf_len)
            && self.first_seq <= self.next_seq
    }

    /// Linux's `logbuf_has_space()`: whether `size` bytes plus a wrap marker fit.
    fn has_space(&self, buf_len: usize, size: usize, empty: bool) -> bool {
        let (first, next) = (self.first_idx as usize, self.next_idx as usize);
        let free = if next > first || empty { buf_len.saturating_sub(next).max(first) } else { first - next };
        free >= size + HEADER_SIZE
    }

    /// Linux's `log_make_free_space()`: drops the oldest records until `size` bytes fit.
    fn make_free_space(&mut self, buf: &[u8], size: usize) -> bool {
        while self.first_seq < self.next_seq && !self.has_space(buf.len(), size, false) {
            match log_next(buf, self.first_idx as usize) {
                Some(idx) => {
                    self.first_idx = idx;
                    self.first_seq += 1;
                }
                None => self.reset(),
            }
        }
        self.has_space(buf.len(), size, self.first_seq == self.next_seq)
    }
}

/// Size of a record with `text_len` bytes of text, padded to [`LOG_ALIGN`].
fn record_size(text_len: usize) -> usize {
    (HEADER_SIZE + text_len).next_multiple_of(LOG_ALIGN)
}

fn is_header_place(idx: usize, buf_len: usize) -> bool {
    idx.is_multiple_of(LOG_ALIGN) && idx + HEADER_SIZE <= buf_len
}

/// Linux's `log_next()`: the offset after the record at `idx`; a zero header stands for the
/// record at 0. `None` if the result is not a valid header place.
fn log_next(buf: &[u8], idx: usize) -> Option<u32> {
    let next = match get_u16(buf, idx + OFFSET_LEN)? {
        0 => usize::from(get_u16(buf, OFFSET_LEN)?),
        len => idx + usize::from(len),
    };
    if next == 0 || !is_header_place(next, buf.len()) {
        return None;
    }
    u32::try_from(next).ok()
}

/// Iterator over log records, from [`LogIndex::records`] or [`LogIndex::records_from`].
#[derive(Clone, Debug)]
pub struct Records<'b> {
    buf: &'b [u8],
    idx: usize,
    seq: u64,
    next_idx: usize,
    next_seq: u64,
    wrapped: bool,
}

impl Records<'_> {
    /// Where the iteration stands: resume from here later with [`LogIndex::records_from`].
    pub fn cursor(&self) -> Cursor {
        Cursor {
            seq: self.seq,
            // A valid position is below `buf.len() <= 2^31`; anything else reads nothing.
            idx: u32::try_from(self.idx).unwrap_or(u32::MAX),
        }
    }

    /// Ends the iteration for good (the buffer is inconsistent).
    fn stop(&mut self) -> Option<Record<'static>> {
        self.next_seq = self.seq;
        None
    }
}

impl<'b> Iterator for Records<'b> {
    type Item = Record<'b>;

    fn next(&mut self) -> Option<Record<'b>> {
        loop {
            if self.seq >= self.next_seq || self.idx == self.next_idx {
                return None;
            }
            let Some(header) = self.buf.get(self.idx..).and_then(|rest| rest.first_chunk::<HEADER_SIZE>()) else {
                return self.stop();
            };
            let len = usize::from(u16_at(header, OFFSET_LEN));
            if len == 0 {
                if self.wrapped {
                    return self.stop();
                }
                self.wrapped = true;
                self.idx = 0;
                continue;
            }
            let text_len = usize::from(u16_at(header, OFFSET_TEXT_LEN));
            let text_start = self.idx + HEADER_SIZE;
            let text = match self.buf.get(text_start..text_start + text_len) {
                Some(text) if HEADER_SIZE + text_len <= len && len.is_multiple_of(LOG_ALIGN) => text,
                _ => return self.stop(),
            };
            let record = Record {
                seq: self.seq,
                ts_nsec: u64_at(header, OFFSET_TS_NSEC),
                facility: header[OFFSET_FACILITY],
                level: header[OFFSET_FLAGS_LEVEL] >> 5,
                flags: header[OFFSET_FLAGS_LEVEL] & 0x1f,
                text,
            };
            self.idx += len;
            self.seq += 1;
            return Some(record);
        }
    }
}

/// Writes Linux's console prefix `[%5lu.%06lu] ` for `ts_nsec` (seconds, then microseconds)
/// into `out` and returns it: `[    0.123456] ` is 15 bytes; seconds beyond 99999 widen it,
/// up to [`TIMESTAMP_MAX_LEN`].
pub fn format_timestamp(ts_nsec: u64, out: &mut [u8; TIMESTAMP_MAX_LEN]) -> &[u8] {
    let mut secs = ts_nsec / 1_000_000_000;
    // Below 10^6, so the 32-bit divisions below are exact and cheap.
    let mut usecs = ((ts_nsec % 1_000_000_000) / 1000) as u32;
    let mut pos = TIMESTAMP_MAX_LEN - 2;
    out[pos..].copy_from_slice(b"] ");
    for _ in 0..6 {
        pos -= 1;
        out[pos] = b'0' + (usecs % 10) as u8;
        usecs /= 10;
    }
    pos -= 1;
    out[pos] = b'.';
    let secs_end = pos;
    loop {
        pos -= 1;
        out[pos] = b'0' + (secs % 10) as u8;
        secs /= 10;
        if secs == 0 {
            break;
        }
    }
    while secs_end - pos < 5 {
        pos -= 1;
        out[pos] = b' ';
    }
    pos -= 1;
    out[pos] = b'[';
    &out[pos..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::VecDeque;
    use alloc::string::String;
    use alloc::vec;
    use alloc::vec::Vec;
    use core::fmt::Write;

    /// kexec-tools 2.0.25 `dump_dmesg_structured()`, reading `buf` as the vmcore would.
    /// Returns its output, or its exit code on a detected corruption. Panics if it would
    /// read outside the buffer (which in a vmcore means reading unrelated memory).
    fn vmcore_dmesg(buf: &[u8], first_idx: u32, next_idx: u32) -> Result<String, i32> {
        let log_sz = HEADER_SIZE as u32;
        let log_buf_len = u32::try_from(buf.len()).unwrap();
        let mut out = String::new();
        let mut current_idx = first_idx;
        let mut has_wrapped_around = false;
        while current_idx != next_idx {
            let at = current_idx as usize;
            assert!(at + HEADER_SIZE <= buf.len(), "header read past the buffer at {at:#x}");
            let header = &buf[at..at + HEADER_SIZE];
            let ts_nsec = u64_at(header, 0);
            write!(out, "[{:5}.{:06}] ", ts_nsec / 1_000_000_000, ts_nsec % 1_000_000_000 / 1000).unwrap();
            let text_len = usize::from(u16_at(header, 10));
            assert!(at + HEADER_SIZE + text_len <= buf.len(), "text read past the buffer");
            for &c in &buf[at + HEADER_SIZE..at + HEADER_SIZE + text_len] {
                let isprint = (0x20..0x7f).contains(&c);
                let isspace = matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
                if !isprint && !isspace {
                    write!(out, "\\x{c:02x}").unwrap();
                } else {
                    out.push(char::from(c));
                }
            }
            out.push('\n');
            let loglen = u32::from(u16_at(header, 8));
            if loglen == 0 {
                if has_wrapped_around {
                    return Err(68);
                }
                current_idx = 0;
                has_wrapped_around = true;
            } else {
                current_idx += loglen;
                if current_idx > log_buf_len - log_sz {
                    return Err(69);
                }
            }
        }
        Ok(out)
    }

    /// What vmcore-dmesg prints for one record.
    fn dmesg_line(ts_nsec: u64, text: &[u8]) -> String {
        let mut stamp = [0u8; TIMESTAMP_MAX_LEN];
        let mut line = String::from_utf8(format_timestamp(ts_nsec, &mut stamp).to_vec()).unwrap();
        for &c in text {
            if (0x20..0x7f).contains(&c) || matches!(c, b'\t' | b'\n' | 0x0b | 0x0c | b'\r') {
                line.push(char::from(c));
            } else {
                write!(line, "\\x{c:02x}").unwrap();
            }
        }
        line.push('\n');
        line
    }

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> usize {
            (self.next() % n) as usize
        }
    }

    #[test]
    fn header_is_byte_exact() {
        let mut buf = vec![0xaau8; 4096];
        let mut log = LogIndex::new();
        assert_eq!(log.append(&mut buf, 0x0102_0304_0506_0708, 3, 6, b"hello\n"), Some(0));
        assert_eq!(
            buf[..24],
            [
                0x08,
                0x07,
                0x06,
                0x05,
                0x04,
                0x03,
                0x02,
                0x01, // ts_nsec
                24,
                0, // len: 16 + 5 padded to 24
                5,
                0, // text_len
                0,
                0, // dict_len
                3, // facility
                (6 << 5) | LOG_NEWLINE,
                b'h',
                b'e',
                b'l',
                b'l',
                b'o',
                0,
                0,
                0,
            ]
        );
        assert_eq!(buf[24], 0xaa, "nothing is written past the record");
        assert_eq!(log, LogIndex { first_idx: 0, next_idx: 24, first_seq: 0, next_seq: 1 });
    }

    #[test]
    fn index_block_matches_published_offsets() {
        let log = LogIndex { first_idx: 1, next_idx: 2, first_seq: 3, next_seq: 4 };
        let base = core::ptr::addr_of!(log) as usize;
        assert_eq!(core::ptr::addr_of!(log.first_idx) as usize - base, LogIndex::OFFSET_FIRST_IDX);
        assert_eq!(core::ptr::addr_of!(log.next_idx) as usize - base, LogIndex::OFFSET_NEXT_IDX);
        assert_eq!(core::ptr::addr_of!(log.first_seq) as usize - base, LogIndex::OFFSET_FIRST_SEQ);
        assert_eq!(core::ptr::addr_of!(log.next_seq) as usize - base, LogIndex::OFFSET_NEXT_SEQ);
    }

    #[test]
    fn levels_flags_and_sequence_numbers_round_trip() {
        let mut buf = vec![0u8; 4096];
        let mut log = LogIndex::new();
        for level in 0..8u8 {
            let text: &[u8] = if level % 2 == 0 { b"line\n" } else { b"fragment" };
            assert_eq!(log.append(&mut buf, 1000 + u64::from(level), 0, level, text), Some(u64::from(level)));
        }
        // Only the low 3 bits of the level are kept.
        assert_eq!(log.append(&mut buf, 9, 1, 0x0c, b"x"), Some(8));
        let records: Vec<_> = log.records(&buf, 0).collect();
        assert_eq!(records.len(), 9);
        for (i, record) in records[..8].iter().enumerate() {
            assert_eq!(record.seq, i as u64);
            assert_eq!(record.level, i as u8);
            assert_eq!(record.ts_nsec, 1000 + i as u64);
            let (text, flags): (&[u8], u8) = if i % 2 == 0 { (b"line", LOG_NEWLINE) } else { (b"fragment", 0) };
            assert_eq!((record.text, record.flags), (text, flags));
        }
        assert_eq!((records[8].level, records[8].facility), (4, 1));
        assert_eq!(log.len(), 9);
        assert!(!log.is_empty());
    }

    #[test]
    fn empty_text_and_lone_newline_are_records() {
        let mut buf = vec![0u8; 4096];
        let mut log = LogIndex::new();
        log.append(&mut buf, 1, 0, 0, b"").unwrap();
        log.append(&mut buf, 2, 0, 0, b"\n").unwrap();
        let texts: Vec<_> = log.records(&buf, 0).map(|r| (r.text.len(), r.flags)).collect();
        assert_eq!(texts, [(0, 0), (0, LOG_NEWLINE)]);
        assert_eq!(log.next_idx, 32);
    }

    #[test]
    fn rejects_invalid_buffer_lengths() {
        let mut log = LogIndex::new();
        for len in [0, 2048, 4095, 6000] {
            let mut buf = vec![0u8; len];
            assert_eq!(log.append(&mut buf, 1, 0, 0, b"x"), None);
        }
        assert!(log.is_empty());
        assert!(is_valid_buf_len(1 << 17));
    }

    #[test]
    fn wraps_with_a_zero_header_when_the_next_header_would_not_fit() {
        let mut buf = vec![0u8; 4096];
        let mut log = LogIndex::new();
        // Records of 1008 bytes: after 4, next_idx = 4032, and 4032 + 1008 + 16 > 4096.
        let text = [b'a'; 992];
        for ts in 1..=4 {
            log.append(&mut buf, ts, 0, 6, &text).unwrap();
        }
        assert_eq!(log.next_idx, 4032);
        log.append(&mut buf, 5, 0, 6, &text).unwrap();
        assert_eq!(buf[4032..4048], [0u8; 16], "wrap marker");
        // Dropping one record frees 1008 bytes, short of 1008 + 16: two are dropped.
        assert_eq!((log.first_idx, log.first_seq), (2016, 2));
        assert_eq!(log.next_idx, 1008);
        let stamps: Vec<_> = log.records(&buf, 0).map(|r| r.ts_nsec).collect();
        assert_eq!(stamps, [3, 4, 5]);
    }

    #[test]
    fn exact_fit_leaves_room_for_a_final_header() {
        let mut buf = vec![0u8; 4096];
        let mut log = LogIndex::new();
        // 4096 - 16 = 4080 bytes usable before a wrap: 16 + 4064 is one record...
        log.append(&mut buf, 1, 0, 0, &[b'z'; 2000]).unwrap();
        log.append(&mut buf, 2, 0, 0, &[b'z'; 2048]).unwrap();
        // ...2016 + 2064 = 4080 = buf_len - 16: it fits without wrapping.
        assert_eq!((log.first_idx, log.next_idx), (0, 4080));
        let out = vmcore_dmesg(&buf, log.first_idx, log.next_idx).unwrap();
        assert_eq!(out.lines().count(), 2);
    }

    #[test]
    fn long_text_is_truncated_like_linux() {
        let mut buf = vec![0u8; 4096];
        let mut log = LogIndex::new();
        log.append(&mut buf, 1, 0, 6, b"before").unwrap();
        let long: Vec<u8> = (0..5000u32).map(|i| b'a' + (i % 26) as u8).collect();
        assert_eq!(log.append(&mut buf, 2, 0, 6, &long), Some(1));
        // Making room failed, so the whole log was dropped first, as in Linux.
        let records: Vec<_> = log.records(&buf, 0).collect();
        assert_eq!(records.len(), 1);
        let mut expected = long[..1024].to_vec();
        expected.extend_from_slice(TRUNC_MSG);
        assert_eq!(records[0].text, &expected[..]);
        assert_eq!(records[0].seq, 1);
        assert_eq!(log.first_seq, 1);
        vmcore_dmesg(&buf, log.first_idx, log.next_idx).unwrap();
    }

    #[test]
    fn text_beyond_u16_is_truncated_in_a_big_buffer() {
        let mut buf = vec![0u8; 1 << 20];
        let mut log = LogIndex::new();
        let long = vec![b'q'; 70_000];
        log.append(&mut buf, 1, 0, 6, &long).unwrap();
        let record = log.records(&buf, 0).next().unwrap();
        assert_eq!(record.text.len(), TEXT_LEN_LIMIT + TRUNC_MSG.len());
        assert!(record.text.ends_with(TRUNC_MSG));
        let fits = vec![b'q'; 60_000];
        log.append(&mut buf, 2, 0, 6, &fits).unwrap();
        assert_eq!(log.records(&buf, 1).next().unwrap().text.len(), 60_000);
    }

    #[test]
    fn truncation_depends_on_position_like_linux() {
        // After four 1016-byte records next_idx is 4064: dropping three of them frees 3048
        // bytes at the start, enough for 2516 + 16, so the message wraps whole.
        let mut buf = vec![0u8; 4096];
        let mut log = LogIndex::new();
        for ts in 1..=4 {
            log.append(&mut buf, ts, 0, 0, &[b'x'; 1000]).unwrap();
        }
        log.append(&mut buf, 5, 0, 0, &[b'y'; 2500]).unwrap();
        let texts: Vec<_> = log.records(&buf, 0).map(|r| r.text.len()).collect();
        assert_eq!(texts, [1000, 2500]);

        // With next_idx at 2032 neither side ever has 2532 bytes: it is truncated although
        // it would fit in an empty buffer.
        let mut log = LogIndex::new();
        for ts in 1..=2 {
            log.append(&mut buf, ts, 0, 0, &[b'x'; 1000]).unwrap();
        }
        log.append(&mut buf, 3, 0, 0, &[b'y'; 2500]).unwrap();
        let texts: Vec<_> = log.records(&buf, 0).map(|r| r.text.len()).collect();
        assert_eq!(texts, [1024 + TRUNC_MSG.len()]);
    }

    #[test]
    fn survives_many_wraps_and_matches_vmcore_dmesg() {
        for (seed, buf_len) in [(1u64, 4096usize), (7, 4096), (42, 8192), (99, 1 << 14)] {
            let mut rng = Rng(seed);
            let mut buf = vec![0u8; buf_len];
            let mut log = LogIndex::new();
            let mut model: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
            let mut wraps = 0;
            for i in 0..2000u64 {
                let len = match rng.below(20) {
                    0 => rng.below(2 * buf_len as u64),
                    1 => 0,
                    _ => rng.below(200),
                };
                let mut text: Vec<u8> = (0..len).map(|_| b' ' + rng.below(95) as u8).collect();
                if rng.below(10) == 0 {
                    text.push([0x01, 0x7f, 0xff, b'\t'][rng.below(4)]);
                }
                if len > 0 && rng.below(2) == 0 {
                    text.push(b'\n');
                }
                let ts = 1_000 + i * 987_654_321;
                let before = log.next_idx;
                let seq = log.append(&mut buf, ts, 0, (i % 8) as u8, &text).unwrap();
                assert_eq!(seq, i);
                wraps += usize::from(log.next_idx < before);

                let mut stored = text.strip_suffix(b"\n").unwrap_or(&text).to_vec();
                let max = buf_len / 4;
                let record = log.records(&buf, seq).next().unwrap();
                if record.text.len() != stored.len() {
                    stored.truncate(max);
                    stored.extend_from_slice(TRUNC_MSG);
                }
                model.push_back((ts, stored));
                while model.len() as u64 > log.len() {
                    model.pop_front();
                }

                // Invariants the kernel and vmcore-dmesg rely on.
                assert!(log.next_idx as usize + HEADER_SIZE <= buf_len);
                assert_eq!(log.next_idx % 4, 0);
                assert_eq!(log.first_idx % 4, 0);
                let records: Vec<_> = log.records(&buf, 0).collect();
                assert_eq!(records.len() as u64, log.len());
                assert_eq!(records.first().unwrap().seq, log.first_seq);
                for (record, (ts, text)) in records.iter().zip(&model) {
                    assert_eq!((record.ts_nsec, record.text), (*ts, &text[..]));
                }

                let out = vmcore_dmesg(&buf, log.first_idx, log.next_idx).expect("walk succeeds");
                let mut expected = String::new();
                for (ts, text) in &model {
                    expected.push_str(&dmesg_line(*ts, text));
                }
                // vmcore-dmesg prints a crossed wrap marker as an empty zero-time line.
                let markers = out.matches("[    0.000000] \n").count();
                assert!(markers <= 1);
                assert_eq!(markers == 1, log.first_idx > log.next_idx || records_start_at_marker(&buf, &log));
                assert_eq!(out.replacen("[    0.000000] \n", "", 1), expected);
            }
            assert!(wraps > 10, "seed {seed}: only {wraps} wraps");
        }
    }

    fn records_start_at_marker(buf: &[u8], log: &LogIndex) -> bool {
        let at = log.first_idx as usize;
        !log.is_empty() && buf[at + 8..at + 10] == [0, 0]
    }

    #[test]
    fn records_from_seq_and_cursor() {
        let mut buf = vec![0u8; 4096];
        let mut log = LogIndex::new();
        let start = log.cursor();
        for i in 0..10u64 {
            log.append(&mut buf, i + 1, 0, 0, &[b'a'; 300]).unwrap();
        }
        // 316 bytes each: 12 fit in 4096 - 16, so all 10 survive.
        assert_eq!(log.records_from(&buf, start).count(), 10);
        assert_eq!(log.records(&buf, 7).map(|r| r.seq).collect::<Vec<_>>(), [7, 8, 9]);
        assert_eq!(log.records(&buf, 10).count(), 0);
        assert_eq!(log.records(&buf, 1000).count(), 0);

        let mut it = log.records(&buf, 0);
        it.nth(4);
        let cursor = it.cursor();
        assert_eq!(cursor.seq, 5);
        for i in 10..14u64 {
            log.append(&mut buf, i + 1, 0, 0, &[b'a'; 300]).unwrap();
        }
        // Records 0..=2 were dropped; the cursor at 5 is still good.
        assert_eq!(log.first_seq, 3);
        let seqs: Vec<_> = log.records_from(&buf, cursor).map(|r| r.seq).collect();
        assert_eq!(seqs, (5..14).collect::<Vec<_>>());
        // A cursor whose record was dropped restarts at the oldest record.
        assert_eq!(log.records_from(&buf, start).next().unwrap().seq, 3);
        assert_eq!(log.records(&buf, 0).next().unwrap().seq, 3);
        // Reading back just the appended record.
        let before = log.cursor();
        log.append(&mut buf, 99, 0, 0, b"last\n").unwrap();
        let new: Vec<_> = log.records_from(&buf, before).map(|r| r.text).collect();
        assert_eq!(new, [b"last"]);
    }

    #[test]
    fn reader_stops_at_corruption() {
        let mut buf = vec![0u8; 4096];
        let mut log = LogIndex::new();
        for i in 0..5u64 {
            log.append(&mut buf, i, 0, 0, b"abcdef").unwrap();
        }
        // Record 2's text_len exceeds its len.
        buf[2 * 24 + 10] = 200;
        assert_eq!(log.records(&buf, 0).count(), 2);
        // Record 1's len points near the end of the buffer.
        buf[2 * 24 + 10] = 6;
        buf[24 + 8..24 + 10].copy_from_slice(&4088u16.to_le_bytes());
        assert_eq!(log.records(&buf, 0).count(), 2);
        // Two zero headers make a cycle.
        buf[24 + 8..24 + 10].fill(0);
        buf[8..10].fill(0);
        assert_eq!(log.records(&buf, 0).count(), 0);
        // A truncated buffer, as read from a partial dump.
        assert_eq!(log.records(&buf[..40], 0).count(), 0);
    }

    #[test]
    fn inconsistent_indices_reset_the_log() {
        let mut buf = vec![0u8; 4096];
        let mut log = LogIndex { first_idx: 4090, next_idx: 12, first_seq: 5, next_seq: 9 };
        assert_eq!(log.append(&mut buf, 1, 0, 0, b"fresh"), Some(9));
        assert_eq!(log, LogIndex { first_idx: 0, next_idx: 24, first_seq: 9, next_seq: 10 });

        // A garbage header met while making room also resets.
        let mut log = LogIndex::new();
        for _ in 0..3 {
            log.append(&mut buf, 1, 0, 0, &[b'a'; 1000]).unwrap();
        }
        buf[8..10].copy_from_slice(&3u16.to_le_bytes());
        assert_eq!(log.append(&mut buf, 2, 0, 0, &[b'b'; 1500]), Some(3));
        let texts: Vec<_> = log.records(&buf, 0).map(|r| r.text.len()).collect();
        assert_eq!(texts, [1500]);
        vmcore_dmesg(&buf, log.first_idx, log.next_idx).unwrap();
    }

    #[test]
    fn timestamps_match_linux_print_time() {
        let mut out = [0u8; TIMESTAMP_MAX_LEN];
        let cases: [(u64, &[u8]); 7] = [
            (0, b"[    0.000000] "),
            (123_456_789, b"[    0.123456] "),
            (1_000_000_999, b"[    1.000000] "),
            (12_345_678_901_234, b"[12345.678901] "),
            (99_999_999_999_999, b"[99999.999999] "),
            (100_000_000_000_000, b"[100000.000000] "),
            (u64::MAX, b"[18446744073.709551] "),
        ];
        for (ts, expected) in cases {
            assert_eq!(format_timestamp(ts, &mut out), expected);
            let mut std_fmt = String::new();
            write!(std_fmt, "[{:5}.{:06}] ", ts / 1_000_000_000, ts % 1_000_000_000 / 1000).unwrap();
            assert_eq!(std_fmt.as_bytes(), expected);
        }
    }
}
