//! Linux's `crashkernel=` parameter (`kernel/crash_reserve.c`): how much memory to reserve for
//! the kdump capture kernel, and where.
//!
//! Forms (the last occurrence of each wins, as with `get_last_crashkernel`):
//! - `crashkernel=size[@offset]`;
//! - `crashkernel=start-[end]:size[,start-[end]:size...][@offset]`: the size for the range that
//!   holds the system's RAM, rounded up to 128 MiB (end exclusive, empty = unbounded);
//! - `crashkernel=size,high` (reserve above 4 GiB when possible) with an optional
//!   `crashkernel=size,low`.

use crate::cmdline::{memparse, Cmdline};

/// Linux rounds the RAM size up to this before matching ranges (firmware keeps some RAM).
pub const RAM_ROUNDING: u64 = 128 << 20;
/// Alignment of the reservation on x86_64 (`CRASH_ALIGN`).
pub const CRASH_ALIGN: u64 = 16 << 20;
/// Highest end of a low reservation on x86_64 (`CRASH_ADDR_LOW_MAX`).
pub const CRASH_ADDR_LOW_MAX: u64 = 4 << 30;
/// Highest end of a high reservation on x86_64 (`CRASH_ADDR_HIGH_MAX`).
pub const CRASH_ADDR_HIGH_MAX: u64 = 64 << 40;

/// What `crashkernel=` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashkernelRequest {
    /// Bytes to reserve.
    pub size: u64,
    /// Fixed physical start (`@offset`), if any.
    pub base: Option<u64>,
    /// `,high`: prefer memory above 4 GiB.
    pub high: bool,
    /// `,low` size that goes with a high reservation, if given.
    pub low_size: Option<u64>,
}

/// Why `crashkernel=` asks for nothing usable; the messages are Linux's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashkernelError {
    /// No `crashkernel=` parameter.
    Absent,
    /// Malformed; the text is Linux's `pr_warn` message.
    Invalid(&'static str),
    /// A range list matched no range (`crashkernel size resulted in zero bytes`).
    ZeroSize,
}

impl CrashkernelError {
    /// The line Linux logs for this error (`None` when there is nothing to say).
    pub fn message(self) -> Option<&'static str> {
        match self {
            Self::Absent => None,
            Self::Invalid(text) => Some(text),
            Self::ZeroSize => Some("crashkernel size resulted in zero bytes"),
        }
    }
}

/// The value of the last `crashkernel=` whose value ends in `suffix` (`""` = no known suffix).
fn last_value<'a>(cmdline: &Cmdline<'a>, suffix: &str) -> Option<&'a str> {
    let mut found = None;
    for param in cmdline.iter() {
        if param.key != "crashkernel" {
            continue;
        }
        let Some(value) = param.value else { continue };
        let matches = if suffix.is_empty() {
            !value.ends_with(",high") && !value.ends_with(",low")
        } else {
            value.ends_with(suffix)
        };
        if matches {
            found = Some(value.strip_suffix(suffix).unwrap_or(value));
        }
    }
    found
}

/// Parses the `crashkernel=` parameters of `cmdline` for a system with `system_ram` bytes.
pub fn parse(cmdline: &Cmdline<'_>, system_ram: u64) -> Result<CrashkernelRequest, CrashkernelError> {
    if let Some(value) = last_value(cmdline, "") {
        let (size, base) = if value.contains(':') { parse_ranges(value, system_ram)? } else { parse_simple(value)? };
        return Ok(CrashkernelRequest { size, base, high: false, low_size: None });
    }
    let Some(high) = last_value(cmdline, ",high") else { return Err(CrashkernelError::Absent) };
    let (size, rest) = memparse(high).ok_or(CrashkernelError::Invalid("crashkernel: memory value expected"))?;
    if !rest.is_empty() || size == 0 {
        return Err(CrashkernelError::Invalid("crashkernel: unrecognized char"));
    }
    let low_size = match last_value(cmdline, ",low") {
        None => None,
        Some(low) => match memparse(low) {
            Some((n, "")) => Some(n),
            _ => return Err(CrashkernelError::Invalid("crashkernel: memory value expected")),
        },
    };
    Ok(CrashkernelRequest { size, base: None, high: true, low_size })
}

/// `size[@offset]` (`parse_crashkernel_simple`).
fn parse_simple(value: &str) -> Result<(u64, Option<u64>), CrashkernelError> {
    let (size, rest) = memparse(value).ok_or(CrashkernelError::Invalid("crashkernel: memory value expected"))?;
    let base = match rest.strip_prefix('@') {
        Some(offset) => match memparse(offset) {
            Some((base, "")) => Some(base),
            _ => return Err(CrashkernelError::Invalid("crashkernel: unrecognized char")),
        },
        None if rest.is_empty() => None,
        None => return Err(CrashkernelError::Invalid("crashkernel: unrecognized char")),
    };
    Ok((size, base))
}

/// `start-[end]:size[,...][@offset]` (`parse_crashkernel_mem`).
fn parse_ranges(value: &str, system_ram: u64) -> Result<(u64, Option<u64>), CrashkernelError> {
    let ram = system_ram.div_ceil(RAM_ROUNDING).saturating_mul(RAM_ROUNDING);
    let (list, offset) = match value.split_once('@') {
        Some((list, offset)) => (list, Some(offset)),
        None => (value, None),
    };
    let mut size = 0;
    for entry in list.split(',') {
        let (start, rest) = memparse(entry).ok_or(CrashkernelError::Invalid("crashkernel: Memory value expected"))?;
        let rest = rest.strip_prefix('-').ok_or(CrashkernelError::Invalid("crashkernel: '-' expected"))?;
        let (end, rest) = match memparse(rest) {
            Some((end, rest)) => {
                if end <= start {
                    return Err(CrashkernelError::Invalid("crashkernel: end <= start"));
                }
                (end, rest)
            }
            None => (u64::MAX, rest),
        };
        let rest = rest.strip_prefix(':').ok_or(CrashkernelError::Invalid("crashkernel: ':' expected"))?;
        let (range_size, rest) = match memparse(rest) {
            Some((n, rest)) => (n, rest),
            None => return Err(CrashkernelError::Invalid("crashkernel: Memory value expected")),
        };
        if !rest.is_empty() {
            return Err(CrashkernelError::Invalid("crashkernel: ',' or '@' expected"));
        }
        if range_size >= ram {
            return Err(CrashkernelError::Invalid("crashkernel: invalid size"));
        }
        // Entries after the first match are not looked at, as in Linux.
        if ram >= start && ram < end {
            size = range_size;
            break;
        }
    }
    if size == 0 {
        return Err(CrashkernelError::ZeroSize);
    }
    let base = match offset {
        Some(offset) => match memparse(offset) {
            Some((base, "")) => Some(base),
            _ => return Err(CrashkernelError::Invalid("crashkernel: Memory value expected after '@'")),
        },
        None => None,
    };
    Ok((size, base))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn parse_str(cmdline: &str, ram: u64) -> Result<CrashkernelRequest, CrashkernelError> {
        parse(&Cmdline::new(cmdline), ram)
    }

    #[test]
    fn simple_size_and_offset() {
        assert_eq!(
            parse_str("crashkernel=128M", 512 * MIB),
            Ok(CrashkernelRequest { size: 128 * MIB, base: None, high: false, low_size: None })
        );
        assert_eq!(
            parse_str("crashkernel=64M@48M", 512 * MIB).map(|r| (r.size, r.base)),
            Ok((64 * MIB, Some(48 * MIB)))
        );
        assert!(matches!(parse_str("crashkernel=64Mx", 512 * MIB), Err(CrashkernelError::Invalid(_))));
        assert_eq!(parse_str("quiet", 512 * MIB), Err(CrashkernelError::Absent));
    }

    #[test]
    fn the_last_occurrence_wins() {
        assert_eq!(parse_str("crashkernel=64M crashkernel=96M", 512 * MIB).map(|r| r.size), Ok(96 * MIB));
    }

    #[test]
    fn ranges_pick_the_range_holding_ram_rounded_to_128m() {
        let spec = "crashkernel=0-256M:0,256M-1G:64M,1G-:128M";
        // 200 MiB rounds up to 256 MiB: the second range.
        assert_eq!(parse_str(spec, 200 * MIB).map(|r| r.size), Ok(64 * MIB));
        assert_eq!(parse_str(spec, 2048 * MIB).map(|r| r.size), Ok(128 * MIB));
        // 100 MiB rounds up to 128 MiB: the first range, whose size is 0.
        assert_eq!(parse_str(spec, 100 * MIB), Err(CrashkernelError::ZeroSize));
        assert_eq!(
            parse_str("crashkernel=512M-1G:64M@32M", 600 * MIB).map(|r| (r.size, r.base)),
            Ok((64 * MIB, Some(32 * MIB)))
        );
        assert_eq!(parse_str("crashkernel=1G-2G:64M", 512 * MIB), Err(CrashkernelError::ZeroSize));
    }

    #[test]
    fn malformed_ranges_get_linux_messages() {
        assert_eq!(
            parse_str("crashkernel=1G-512M:64M", 2048 * MIB),
            Err(CrashkernelError::Invalid("crashkernel: end <= start"))
        );
        assert_eq!(
            parse_str("crashkernel=0-1G:1G", 512 * MIB),
            Err(CrashkernelError::Invalid("crashkernel: invalid size"))
        );
        // Without a ':' it is the simple form, whose parse stops at the '-'.
        assert_eq!(
            parse_str("crashkernel=0-1G", 512 * MIB),
            Err(CrashkernelError::Invalid("crashkernel: unrecognized char"))
        );
        assert_eq!(
            parse_str("crashkernel=0-1G;64M:x", 512 * MIB),
            Err(CrashkernelError::Invalid("crashkernel: ':' expected"))
        );
        assert_eq!(
            parse_str("crashkernel=0:64M", 512 * MIB),
            Err(CrashkernelError::Invalid("crashkernel: '-' expected"))
        );
    }

    #[test]
    fn high_and_low() {
        assert_eq!(
            parse_str("crashkernel=256M,high crashkernel=96M,low", 8192 * MIB),
            Ok(CrashkernelRequest { size: 256 * MIB, base: None, high: true, low_size: Some(96 * MIB) })
        );
        assert_eq!(parse_str("crashkernel=256M,high", 8192 * MIB).map(|r| r.low_size), Ok(None));
        // A plain form takes precedence over ,high (Linux tries it first).
        assert_eq!(parse_str("crashkernel=256M,high crashkernel=64M", 8192 * MIB).map(|r| r.high), Ok(false));
    }
}
