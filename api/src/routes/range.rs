//! The `Range` request header (RFC 9110 §14), single byte ranges only: what part of a file of
//! `len` bytes to send. `http-range-header` parses it; this module keeps our policy (one range,
//! other units ignored) and our messages. Pure, so every odd header is tested here.

use http_range_header::{RangeInvalid, RangeUnsatisfiableError};

/// What to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// The whole file (no `Range`, or a unit other than bytes, which RFC 9110 says to ignore).
    Full,
    /// Bytes `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
}

/// Why a `Range` cannot be served (416).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeError(pub String);

/// Parses `header` for a file of `len` bytes.
pub fn parse(header: Option<&str>, len: u64) -> Result<ByteRange, RangeError> {
    let Some(header) = header else { return Ok(ByteRange::Full) };
    let ranges = match http_range_header::parse_range_header(header.trim()) {
        Ok(ranges) => ranges,
        Err(RangeUnsatisfiableError::Invalid(RangeInvalid::DoesNotStartWithToken)) => return Ok(ByteRange::Full),
        Err(e) => {
            return Err(RangeError(format!(
                "{header:?} is not a byte range (bytes=START-END, bytes=START- or bytes=-SUFFIX): {e}"
            )))
        }
    };
    if ranges.len() > 1 {
        return Err(RangeError("only a single byte range is served; ask for one range per request".into()));
    }
    match ranges.validate(len).as_deref() {
        Ok([range]) => Ok(ByteRange::Partial { start: *range.start(), end: *range.end() }),
        _ => Err(RangeError(format!("{header:?} selects no bytes of the {len}-byte file; start within it"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(start: u64, end: u64) -> Result<ByteRange, RangeError> {
        Ok(ByteRange::Partial { start, end })
    }

    #[test]
    fn single_ranges() {
        assert_eq!(parse(None, 100), Ok(ByteRange::Full));
        assert_eq!(parse(Some("bytes=0-9"), 100), part(0, 9));
        assert_eq!(parse(Some("bytes=90-200"), 100), part(90, 99), "clamped to the end");
        assert_eq!(parse(Some("bytes=10-"), 100), part(10, 99));
        assert_eq!(parse(Some("bytes=-10"), 100), part(90, 99));
        assert_eq!(parse(Some("bytes=-1000"), 100), part(0, 99));
        assert_eq!(parse(Some("bytes=99-99"), 100), part(99, 99));
        assert_eq!(parse(Some("items=0-1"), 100), Ok(ByteRange::Full), "other units are ignored");
    }

    #[test]
    fn unsatisfiable_ranges() {
        for bad in [
            "bytes=100-",
            "bytes=100-200",
            "bytes=5-4",
            "bytes=-0",
            "bytes=0-1,5-6",
            "bytes=a-b",
            "bytes=-",
            "bytes=1",
            "bytes=+1-2",
            "bytes=99999999999999999999-",
        ] {
            assert!(parse(Some(bad), 100).is_err(), "{bad}");
        }
        assert!(parse(Some("bytes=-5"), 0).is_err());
    }
}
