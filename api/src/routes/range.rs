//! The `Range` request header (RFC 9110 §14), single byte ranges only: what part of a file of
//! `len` bytes to send. Pure, so every odd header is tested here.

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
    let Some(spec) = header.trim().strip_prefix("bytes=") else { return Ok(ByteRange::Full) };
    if spec.contains(',') {
        return Err(RangeError("only a single byte range is served; ask for one range per request".into()));
    }
    let bad = || RangeError(format!("{header:?} is not a byte range (bytes=START-END, bytes=START- or bytes=-SUFFIX)"));
    let (first, last) = spec.trim().split_once('-').ok_or_else(bad)?;
    let number = |s: &str| {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u64>().ok()
    };
    let beyond = || RangeError(format!("{header:?} starts beyond the end of the {len}-byte file"));
    match (first.trim(), last.trim()) {
        ("", suffix) => {
            let n = number(suffix).ok_or_else(bad)?;
            if n == 0 || len == 0 {
                return Err(RangeError(format!("{header:?} selects no bytes of the {len}-byte file")));
            }
            Ok(ByteRange::Partial { start: len.saturating_sub(n), end: len - 1 })
        }
        (start, "") => {
            let start = number(start).ok_or_else(bad)?;
            if start >= len {
                return Err(beyond());
            }
            Ok(ByteRange::Partial { start, end: len - 1 })
        }
        (start, end) => {
            let (start, end) = (number(start).ok_or_else(bad)?, number(end).ok_or_else(bad)?);
            if end < start {
                return Err(bad());
            }
            if start >= len {
                return Err(beyond());
            }
            Ok(ByteRange::Partial { start, end: end.min(len - 1) })
        }
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
