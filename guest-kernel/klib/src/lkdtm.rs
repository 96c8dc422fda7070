//! LKDTM's pure logic: the crash-point counter (`crash_count` / `cpoint_count`) and the module
//! parameters given on the kernel command line (`lkdtm.cpoint_name=`, `lkdtm.cpoint_type=`,
//! `lkdtm.cpoint_count=`, `lkdtm.recur_count=`), checked as `lkdtm_module_init` checks them.
//!
//! ```
//! use crashvisor_abi::lkdtm::{CrashPoint, CrashType};
//! use crashvisor_klib::cmdline::Cmdline;
//! use crashvisor_klib::lkdtm::{BootParams, CrashCount};
//!
//! let cmdline = Cmdline::new("lkdtm.cpoint_name=INT_HARDWARE_ENTRY lkdtm.cpoint_type=PANIC lkdtm.cpoint_count=2");
//! let params = BootParams::parse(&cmdline).unwrap();
//! assert_eq!(params.crash_point, Some((CrashPoint::IntHardwareEntry, CrashType::PANIC)));
//! let mut count = CrashCount::new(params.cpoint_count);
//! assert_eq!(count.hit(), (1, false));
//! assert_eq!(count.hit(), (0, true));
//! assert_eq!(count.hit(), (1, false), "reloaded from cpoint_count");
//! ```

use core::fmt;

use crashvisor_abi::lkdtm::{CrashPoint, CrashType, DEFAULT_CPOINT_COUNT};

use crate::cmdline::{parse_i64, Cmdline};

/// LKDTM's `crash_count`: how many more hits until the registered type runs. Each hit counts
/// down; at zero the type runs and the count reloads from `cpoint_count`. As in Linux, a
/// `cpoint_count` of 0 or less makes the point fire at most once more (the count goes negative
/// and never reaches zero again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashCount {
    remaining: i32,
    reload: i32,
}

impl CrashCount {
    /// A counter that fires on the `count`th hit, then every `count` hits.
    pub const fn new(count: i32) -> Self {
        Self { remaining: count, reload: count }
    }

    /// One hit: the count left after it (what LKDTM prints as "trigger in %d rounds") and
    /// whether the type runs now.
    pub fn hit(&mut self) -> (i32, bool) {
        self.remaining = self.remaining.saturating_sub(1);
        let left = self.remaining;
        let fire = left == 0;
        if fire {
            self.remaining = self.reload;
        }
        (left, fire)
    }

    /// Sets `cpoint_count`, the count reloaded after each firing (as writing the module
    /// parameter does: the current countdown is left alone).
    pub fn set_reload(&mut self, count: i32) {
        self.reload = count;
    }

    /// Restarts the countdown at `count` and reloads `count` afterwards.
    pub fn reset(&mut self, count: i32) {
        *self = Self::new(count);
    }

    /// `cpoint_count`.
    pub fn reload(&self) -> i32 {
        self.reload
    }

    /// Hits left before the next firing.
    pub fn remaining(&self) -> i32 {
        self.remaining
    }
}

/// Why `lkdtm.*=` boot parameters are refused (Linux's messages, after `lkdtm: `).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamError<'a> {
    /// Only one of `cpoint_name` and `cpoint_type`.
    NeedBoth,
    /// `cpoint_type` names no crash type.
    UnknownType(&'a str),
    /// `cpoint_name` names no crash point.
    UnknownPoint(&'a str),
    /// A number that does not parse.
    BadNumber(&'static str, &'a str),
}

impl fmt::Display for ParamError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NeedBoth => f.write_str("Need both cpoint_type and cpoint_name or neither"),
            Self::UnknownType(name) => write!(f, "Unknown crashtype '{name}'"),
            Self::UnknownPoint(name) => write!(f, "Invalid crashpoint {name}"),
            Self::BadNumber(param, value) => write!(f, "invalid value '{value}' for {param}"),
        }
    }
}

/// The module parameters from the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootParams {
    /// The crash point and type to register at init, if both were given.
    pub crash_point: Option<(CrashPoint, CrashType)>,
    /// `cpoint_count` (default [`DEFAULT_CPOINT_COUNT`]).
    pub cpoint_count: i32,
    /// `recur_count`: EXHAUST_STACK's recursion depth (`None`: LKDTM's default).
    pub recur_count: Option<i32>,
}

impl BootParams {
    /// Reads `lkdtm.cpoint_name=`, `lkdtm.cpoint_type=`, `lkdtm.cpoint_count=` and
    /// `lkdtm.recur_count=` (the last of each wins, as for every kernel parameter).
    pub fn parse<'a>(cmdline: &Cmdline<'a>) -> Result<Self, ParamError<'a>> {
        let value = |key| cmdline.get(key).flatten();
        let number = |key: &'static str, default: Option<i32>| match value(key) {
            None => Ok(default),
            Some(text) => parse_i64(text)
                .and_then(|n| i32::try_from(n).ok())
                .map(Some)
                .ok_or(ParamError::BadNumber(&key[6..], text)),
        };
        let cpoint_count = number("lkdtm.cpoint_count", Some(DEFAULT_CPOINT_COUNT))?.unwrap_or(DEFAULT_CPOINT_COUNT);
        let recur_count = number("lkdtm.recur_count", None)?.filter(|&n| n >= 0);
        let crash_point = match (value("lkdtm.cpoint_name"), value("lkdtm.cpoint_type")) {
            (None, None) => None,
            (Some(name), Some(kind)) => {
                let kind = CrashType::from_name(kind).ok_or(ParamError::UnknownType(kind))?;
                let point = CrashPoint::from_name(name).ok_or(ParamError::UnknownPoint(name))?;
                Some((point, kind))
            }
            _ => return Err(ParamError::NeedBoth),
        };
        Ok(Self { crash_point, cpoint_count, recur_count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn the_count_fires_on_the_nth_hit_and_reloads() {
        let mut count = CrashCount::new(3);
        assert_eq!([count.hit(), count.hit(), count.hit()], [(2, false), (1, false), (0, true)]);
        assert_eq!(count.remaining(), 3);
        count.set_reload(1);
        assert_eq!([count.hit(), count.hit(), count.hit()], [(2, false), (1, false), (0, true)]);
        assert_eq!(count.hit(), (0, true), "every hit once the reload is 1");
        count.reset(2);
        assert_eq!((count.hit(), count.reload()), ((1, false), 2));
    }

    #[test]
    fn a_count_of_zero_goes_negative_and_never_fires_again() {
        let mut count = CrashCount::new(1);
        count.set_reload(0);
        assert_eq!(count.hit(), (0, true));
        assert_eq!(count.hit(), (-1, false));
        let mut low = CrashCount::new(i32::MIN);
        assert_eq!(low.hit(), (i32::MIN, false), "saturates");
    }

    #[test]
    fn boot_params_follow_lkdtm_module_init() {
        let parse = |text: &'static str| BootParams::parse(&Cmdline::new(text));
        let none = parse("quiet").unwrap();
        assert_eq!((none.crash_point, none.cpoint_count, none.recur_count), (None, DEFAULT_CPOINT_COUNT, None));
        let both = parse("lkdtm.cpoint_type=BUG lkdtm.cpoint_name=TIMERADD lkdtm.recur_count=5").unwrap();
        assert_eq!(both.crash_point, Some((CrashPoint::Timeradd, CrashType::BUG)));
        assert_eq!(both.recur_count, Some(5));
        assert_eq!(parse("lkdtm.cpoint_type=BUG"), Err(ParamError::NeedBoth));
        assert_eq!(parse("lkdtm.cpoint_name=DIRECT"), Err(ParamError::NeedBoth));
        assert_eq!(parse("lkdtm.cpoint_name=DIRECT lkdtm.cpoint_type=NOPE"), Err(ParamError::UnknownType("NOPE")));
        assert_eq!(parse("lkdtm.cpoint_name=HERE lkdtm.cpoint_type=BUG"), Err(ParamError::UnknownPoint("HERE")));
        assert_eq!(parse("lkdtm.cpoint_count=x"), Err(ParamError::BadNumber("cpoint_count", "x")));
        assert_eq!(parse("lkdtm.recur_count=-1").unwrap().recur_count, None, "negative: the default");
        assert_eq!(ParamError::UnknownType("NOPE").to_string(), "Unknown crashtype 'NOPE'");
        assert_eq!(ParamError::UnknownPoint("HERE").to_string(), "Invalid crashpoint HERE");
        assert_eq!(ParamError::NeedBoth.to_string(), "Need both cpoint_type and cpoint_name or neither");
    }
}
