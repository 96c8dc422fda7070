//! Guest memory as text: `read_memory` answers and `write_memory` requests carry bytes as hex
//! (lowercase when the VMM writes it; either case when it reads).

use std::fmt::Write as _;

use crate::request::MAX_MEMORY_ACCESS;

/// Decodes hex text (either case, even length, at most `MAX_MEMORY_ACCESS` bytes); the error
/// says what is wrong with `data_hex`.
pub fn decode(text: &str) -> Result<Vec<u8>, String> {
    let bad = |why: &str| format!("data_hex {why}");
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
pub fn encode(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(text, "{byte:02x}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        assert_eq!(decode("00ffA5").unwrap(), vec![0, 0xff, 0xa5]);
        assert_eq!(encode(&[0, 0xff, 0xa5]), "00ffa5");
        assert!(decode("abc").is_err());
        assert!(decode("zz").is_err());
        assert!(decode("é0").is_err());
        assert!(decode(&"00".repeat(MAX_MEMORY_ACCESS + 1)).is_err());
    }
}
