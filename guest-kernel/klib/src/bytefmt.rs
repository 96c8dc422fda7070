//! Formatting text and numbers into caller-provided byte buffers, without `core::fmt`.
//!
//! `core::fmt` costs thousands of instructions per call through its trait objects; under the
//! guest's instruction emulator that is milliseconds. [`ByteWriter`] writes bytes, decimal and
//! lowercase hexadecimal numbers directly, and truncates like `snprintf` when the buffer is full.
//!
//! ```
//! use crashvisor_klib::bytefmt::ByteWriter;
//!
//! let mut buf = [0u8; 32];
//! let mut w = ByteWriter::new(&mut buf);
//! w.push_str("RAX: ").push_hex_padded(0xdead, 16);
//! assert_eq!(w.as_bytes(), b"RAX: 000000000000dead");
//! ```

/// Most decimal digits of a `u64` (`18446744073709551615`).
pub const U64_DEC_DIGITS: usize = 20;
/// Most hexadecimal digits of a `u64`.
pub const U64_HEX_DIGITS: usize = 16;

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Writes `value` in decimal right-aligned into `out` and returns the digits.
pub fn format_dec(mut value: u64, out: &mut [u8; U64_DEC_DIGITS]) -> &[u8] {
    let mut start = U64_DEC_DIGITS;
    loop {
        start -= 1;
        // `value % 10` is below 10, so the cast is lossless.
        out[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    &out[start..]
}

/// Writes `value` in lowercase hexadecimal right-aligned into `out`, zero-padded to at least
/// `min_digits` (at most 16), and returns the digits.
pub fn format_hex(mut value: u64, min_digits: usize, out: &mut [u8; U64_HEX_DIGITS]) -> &[u8] {
    let min_digits = min_digits.clamp(1, U64_HEX_DIGITS);
    let mut start = U64_HEX_DIGITS;
    while value != 0 || U64_HEX_DIGITS - start < min_digits {
        start -= 1;
        // The mask keeps the index below 16.
        out[start] = HEX_DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
    &out[start..]
}

/// A cursor that appends to a byte buffer and silently drops what does not fit (like
/// `snprintf`); also a `core::fmt::Write` sink for the rare paths that format.
#[derive(Debug)]
pub struct ByteWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
    truncated: bool,
}

impl<'a> ByteWriter<'a> {
    /// Starts writing at the beginning of `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, len: 0, truncated: false }
    }

    /// Appends as much of `bytes` as fits.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> &mut Self {
        let room = self.buf.len() - self.len;
        let n = bytes.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        self.truncated |= n < bytes.len();
        self
    }

    /// Appends as much of `s` as fits (possibly cutting a multi-byte character).
    pub fn push_str(&mut self, s: &str) -> &mut Self {
        self.push_bytes(s.as_bytes())
    }

    /// Appends one byte if it fits.
    pub fn push_byte(&mut self, byte: u8) -> &mut Self {
        self.push_bytes(&[byte])
    }

    /// Appends `value` in decimal (`%llu`).
    pub fn push_dec(&mut self, value: u64) -> &mut Self {
        let mut digits = [0u8; U64_DEC_DIGITS];
        self.push_bytes(format_dec(value, &mut digits))
    }

    /// Appends `value` in lowercase hexadecimal without prefix (`%llx`).
    pub fn push_hex(&mut self, value: u64) -> &mut Self {
        self.push_hex_padded(value, 1)
    }

    /// Appends `value` in lowercase hexadecimal, zero-padded to `width` digits (`%0*llx`,
    /// `width` at most 16).
    pub fn push_hex_padded(&mut self, value: u64, width: usize) -> &mut Self {
        let mut digits = [0u8; U64_HEX_DIGITS];
        self.push_bytes(format_hex(value, width, &mut digits))
    }

    /// Appends `0x` and `value` in lowercase hexadecimal, like the kernel's `%#lx` (which,
    /// unlike C's, prints `0x0` for zero).
    pub fn push_hex_prefixed(&mut self, value: u64) -> &mut Self {
        self.push_bytes(b"0x").push_hex(value)
    }

    /// Number of bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether some output was dropped because the buffer was full.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Ends writing and returns the written bytes with the buffer's lifetime.
    pub fn into_bytes(self) -> &'a [u8] {
        &self.buf[..self.len]
    }
}

impl core::fmt::Write for ByteWriter<'_> {
    /// Never fails: text that does not fit is dropped (see `is_truncated`).
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.push_str(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_covers_zero_and_extremes() {
        let mut d = [0u8; U64_DEC_DIGITS];
        assert_eq!(format_dec(0, &mut d), b"0");
        assert_eq!(format_dec(7, &mut d), b"7");
        assert_eq!(format_dec(1_000_000, &mut d), b"1000000");
        assert_eq!(format_dec(u64::MAX, &mut d), b"18446744073709551615");
    }

    #[test]
    fn hex_pads_and_never_exceeds_sixteen_digits() {
        let mut d = [0u8; U64_HEX_DIGITS];
        assert_eq!(format_hex(0, 1, &mut d), b"0");
        assert_eq!(format_hex(0, 0, &mut d), b"0");
        assert_eq!(format_hex(0x1a, 4, &mut d), b"001a");
        assert_eq!(format_hex(u64::MAX, 40, &mut d), b"ffffffffffffffff");
        assert_eq!(format_hex(0xdead_beef, 1, &mut d), b"deadbeef");
    }

    #[test]
    fn writer_chains_and_truncates() {
        let mut buf = [0u8; 10];
        let mut w = ByteWriter::new(&mut buf);
        assert!(w.is_empty());
        w.push_str("pid ").push_dec(4321).push_byte(b' ');
        assert_eq!(w.as_bytes(), b"pid 4321 ");
        assert!(!w.is_truncated());
        w.push_hex_prefixed(0);
        assert!(w.is_truncated());
        assert_eq!(w.len(), 10);
        assert_eq!(w.into_bytes(), b"pid 4321 0");
    }
}
