//! How the API writes times: RFC 3339 in UTC to the second (`2024-02-29T12:34:56Z`), and
//! milliseconds since the Unix epoch.

use std::time::{SystemTime, UNIX_EPOCH};

use jiff::Timestamp;

/// `time` as RFC 3339 in UTC with second precision (before 1970 counts as 1970; beyond 9999 as
/// the end of 9999).
pub fn rfc3339(time: SystemTime) -> String {
    let time = Timestamp::try_from(time.max(UNIX_EPOCH)).unwrap_or(Timestamp::MAX);
    format!("{time:.0}")
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_utc_to_the_second() {
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789); // 2024-02-29 12:34:56.789 UTC
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56Z");
        assert_eq!(unix_ms(t), 1_709_210_096_789);
        assert_eq!(rfc3339(UNIX_EPOCH - Duration::from_secs(5)), "1970-01-01T00:00:00Z");
    }
}
