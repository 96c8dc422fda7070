//! `read_memory` and `write_memory`: guest physical memory for test harnesses and debuggers
//! (like QEMU's `pmemsave` or a gdb stub's `m`/`M` packets), bounds-checked through vm-memory.
//! Data travels as lowercase hex.

use std::fmt::Write as _;

use serde_json::{json, Value};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::protocol::{ControlError, ControlErrorCode};

/// Most bytes one `read_memory` returns or one `write_memory` writes (the hex text of a write
/// must fit in a request line).
pub const MAX_MEMORY_ACCESS: usize = 16 * 1024;

/// Decodes hex text (either case, even length) into bytes.
pub fn decode_hex(text: &str) -> Result<Vec<u8>, ControlError> {
    let bad = |why: &str| ControlError::new(ControlErrorCode::BadArgument, format!("data_hex {why}"));
    if !text.len().is_multiple_of(2) {
        return Err(bad("has an odd number of digits"));
    }
    if text.len() / 2 > MAX_MEMORY_ACCESS {
        return Err(bad(&format!("holds {} bytes; the limit is {MAX_MEMORY_ACCESS}", text.len() / 2)));
    }
    let digit = |c: u8| (c as char).to_digit(16).ok_or_else(|| bad("holds a character that is not a hex digit"));
    text.as_bytes().chunks_exact(2).map(|pair| Ok((digit(pair[0])? << 4 | digit(pair[1])?) as u8)).collect()
}

/// Encodes bytes as lowercase hex.
pub fn encode_hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(text, "{byte:02x}");
    }
    text
}

fn out_of_ram(gpa: u64, len: usize) -> ControlError {
    ControlError::new(
        ControlErrorCode::BadArgument,
        format!("{len} bytes at guest physical address {gpa:#x} are not all guest RAM"),
    )
}

/// Reads `len` bytes of guest RAM at `gpa`.
pub fn read(memory: &GuestMemoryMmap, gpa: u64, len: usize) -> Result<Value, ControlError> {
    if len == 0 || len > MAX_MEMORY_ACCESS {
        return Err(ControlError::new(
            ControlErrorCode::BadArgument,
            format!("len {len} is outside 1..={MAX_MEMORY_ACCESS}"),
        ));
    }
    let mut buf = vec![0u8; len];
    memory.read_slice(&mut buf, GuestAddress(gpa)).map_err(|_| out_of_ram(gpa, len))?;
    Ok(json!({ "gpa": gpa, "data_hex": encode_hex(&buf) }))
}

/// Writes `data` into guest RAM at `gpa`: all of it, or nothing when it would leave RAM.
pub fn write(memory: &GuestMemoryMmap, gpa: u64, data: &[u8]) -> Result<Value, ControlError> {
    if data.is_empty() {
        return Err(ControlError::new(ControlErrorCode::BadArgument, "data_hex is empty"));
    }
    // Check the whole range first: vm-memory may write a prefix before failing.
    if !memory.check_range(GuestAddress(gpa), data.len()) {
        return Err(out_of_ram(gpa, data.len()));
    }
    memory.write_slice(data, GuestAddress(gpa)).map_err(|_| out_of_ram(gpa, data.len()))?;
    Ok(json!({ "gpa": gpa, "len": data.len() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x2000), (GuestAddress(0x4000), 0x1000)]).unwrap()
    }

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        assert_eq!(decode_hex("00ffA5").unwrap(), vec![0, 0xff, 0xa5]);
        assert_eq!(encode_hex(&[0, 0xff, 0xa5]), "00ffa5");
        assert!(decode_hex("abc").is_err());
        assert!(decode_hex("zz").is_err());
        assert!(decode_hex("é0").is_err());
        assert!(decode_hex(&"00".repeat(MAX_MEMORY_ACCESS + 1)).is_err());
    }

    #[test]
    fn writes_and_reads_inside_ram_only() {
        let memory = ram();
        write(&memory, 0x1ffe, &[1, 2]).unwrap();
        assert_eq!(read(&memory, 0x1ffe, 2).unwrap()["data_hex"], "0102");
        // Straddling the hole between the regions, or past the end: refused, nothing written.
        assert!(write(&memory, 0x1fff, &[9, 9]).is_err());
        assert_eq!(memory.read_obj::<u8>(GuestAddress(0x1fff)).unwrap(), 2);
        assert!(write(&memory, 0x4fff, &[9, 9]).is_err());
        assert!(write(&memory, u64::MAX, &[9]).is_err());
        assert!(write(&memory, u64::MAX - 1, &[9, 9, 9]).is_err());
        assert!(read(&memory, 0x3000, 1).is_err());
        assert!(read(&memory, 0, 0).is_err());
        assert!(read(&memory, 0, MAX_MEMORY_ACCESS + 1).is_err());
    }
}
