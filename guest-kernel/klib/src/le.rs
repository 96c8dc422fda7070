//! Little-endian integers in byte slices: the one reader and writer of on-disk and in-memory
//! formats (ELF headers and notes, kdump headers, the dump hand-off, guest structures).
//!
//! `*_at` and `put_*` index like `bytes[at]` and panic past the end: use them where the length
//! is already checked (fixed-size arrays, validated headers). `get_*` return `None` instead,
//! for offsets that come from untrusted data.
//!
//! ```
//! use crashvisor_klib::le;
//!
//! let mut header = [0u8; 16];
//! le::put_u32(&mut header, 4, 0xdead_beef);
//! assert_eq!(le::u32_at(&header, 4), 0xdead_beef);
//! assert_eq!(le::u16_at(&header, 4), 0xbeef);
//! assert_eq!(le::get_u64(&header, 8), Some(0));
//! assert_eq!(le::get_u64(&header, 9), None);
//! ```

/// The `N` bytes at `at`, or `None` if they run past the end.
fn get<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..)?.first_chunk().copied()
}

/// The `N` bytes at `at`; panics, like indexing, if they run past the end.
fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let Some(array) = get(bytes, at) else {
        panic!("{N} bytes at {at} run past the end of a {}-byte slice", bytes.len());
    };
    array
}

/// The `u16` at `at`; panics if it runs past the end.
#[inline]
pub fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(array(bytes, at))
}

/// The `u32` at `at`; panics if it runs past the end.
#[inline]
pub fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(array(bytes, at))
}

/// The `u64` at `at`; panics if it runs past the end.
#[inline]
pub fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(array(bytes, at))
}

/// The `u16` at `at`, or `None` if it runs past the end.
#[inline]
pub fn get_u16(bytes: &[u8], at: usize) -> Option<u16> {
    get(bytes, at).map(u16::from_le_bytes)
}

/// The `u32` at `at`, or `None` if it runs past the end.
#[inline]
pub fn get_u32(bytes: &[u8], at: usize) -> Option<u32> {
    get(bytes, at).map(u32::from_le_bytes)
}

/// The `u64` at `at`, or `None` if it runs past the end.
#[inline]
pub fn get_u64(bytes: &[u8], at: usize) -> Option<u64> {
    get(bytes, at).map(u64::from_le_bytes)
}

/// Writes `value` at `at`; panics if it runs past the end.
#[inline]
pub fn put_u16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

/// Writes `value` at `at`; panics if it runs past the end.
#[inline]
pub fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// Writes `value` at `at`; panics if it runs past the end.
#[inline]
pub fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_little_endian() {
        let mut b = [0u8; 12];
        put_u64(&mut b, 0, 0x0807_0605_0403_0201);
        put_u16(&mut b, 8, 0x0a09);
        put_u32(&mut b, 8, 0x0c0b_0a09);
        assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!((u16_at(&b, 1), u32_at(&b, 8), u64_at(&b, 4)), (0x0302, 0x0c0b_0a09, 0x0c0b_0a09_0807_0605));
        assert_eq!(
            (get_u16(&b, 10), get_u32(&b, 8), get_u64(&b, 4)),
            (Some(0x0c0b), Some(0x0c0b_0a09), Some(u64_at(&b, 4)))
        );
    }

    #[test]
    fn get_refuses_what_runs_past_the_end() {
        let b = [0xffu8; 8];
        assert_eq!((get_u16(&b, 7), get_u32(&b, 5), get_u64(&b, 1)), (None, None, None));
        assert_eq!((get_u16(&b, usize::MAX), get_u64(&b, 8), get_u64(&[], 0)), (None, None, None));
    }

    #[test]
    #[should_panic(expected = "4 bytes at 6 run past the end of a 8-byte slice")]
    fn at_panics_past_the_end() {
        u32_at(&[0u8; 8], 6);
    }
}
