//! The `VMCOREINFO` note's `KEY=VALUE` lines (linux-semantics.md §6) with typed getters:
//! `SYMBOL(name)` values are hexadecimal addresses without `0x`; `SIZE`, `OFFSET` and `LENGTH`
//! are decimal; `NUMBER` is decimal, possibly negative, or `0x`-prefixed hexadecimal (Linux
//! writes `NUMBER(VMALLOC_START)=0x...`).
//!
//! ```
//! use dumpd::analysis::vmcoreinfo::VmcoreInfo;
//!
//! let info = VmcoreInfo::parse("OSRELEASE=6.18.0\nSYMBOL(_stext)=ffffffff81000000\nNUMBER(phys_base)=-4096\n");
//! assert_eq!(info.get("OSRELEASE"), Some("6.18.0"));
//! assert_eq!(info.symbol("_stext")?, 0xffff_ffff_8100_0000);
//! assert_eq!(info.number("phys_base")?, -4096);
//! assert!(info.size("task_struct").is_err());
//! # Ok::<(), dumpd::analysis::vmcoreinfo::VmcoreInfoError>(())
//! ```

use std::collections::BTreeMap;

/// Why a `VMCOREINFO` value could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmcoreInfoError {
    /// The key is not there (the crashed kernel does not publish it).
    #[error("VMCOREINFO has no {key} line (the crashed kernel does not publish it)")]
    Missing {
        /// The whole key, e.g. `SYMBOL(init_uts_ns)`.
        key: String,
    },
    /// The value does not parse as the key's kind says it should.
    #[error("VMCOREINFO's {key}={value:?} is not {expected}")]
    Invalid {
        /// The whole key.
        key: String,
        /// The value as written (at most 64 characters of it).
        value: String,
        /// What it should be, in words.
        expected: &'static str,
    },
}

/// Parsed `VMCOREINFO` text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmcoreInfo {
    entries: BTreeMap<String, String>,
}

/// Longest value text kept in an error message.
const ERROR_VALUE_MAX: usize = 64;

impl VmcoreInfo {
    /// Parses `KEY=VALUE` lines. Lines without `=` (and NUL padding) are ignored; when a key
    /// repeats, the last value wins (as in kexec-tools' `vmcore-dmesg`). Keys and values are
    /// trimmed of surrounding whitespace.
    pub fn parse(text: &str) -> Self {
        let entries = text
            .split('\n')
            .filter_map(|line| {
                let (key, value) = line.trim_matches(|c: char| c == '\0' || c.is_whitespace()).split_once('=')?;
                Some((key.trim().to_owned(), value.trim().to_owned()))
            })
            .filter(|(key, _)| !key.is_empty())
            .collect();
        Self { entries }
    }

    /// The raw value of `key` (the whole key, e.g. `OSRELEASE` or `SYMBOL(_stext)`).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// Every key and value, sorted by key.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// `SYMBOL(name)`: a kernel virtual address.
    pub fn symbol(&self, name: &str) -> Result<u64, VmcoreInfoError> {
        self.parsed(&format!("SYMBOL({name})"), "a hexadecimal address", parse_hex)
    }

    /// `SIZE(name)`: a structure's size in bytes.
    pub fn size(&self, name: &str) -> Result<u64, VmcoreInfoError> {
        self.parsed(&format!("SIZE({name})"), "a decimal size", parse_dec)
    }

    /// `OFFSET(struct.field)`: a field's offset in bytes.
    pub fn offset(&self, struct_field: &str) -> Result<u64, VmcoreInfoError> {
        self.parsed(&format!("OFFSET({struct_field})"), "a decimal offset", parse_dec)
    }

    /// `LENGTH(name)`: an array's length.
    pub fn length(&self, name: &str) -> Result<u64, VmcoreInfoError> {
        self.parsed(&format!("LENGTH({name})"), "a decimal length", parse_dec)
    }

    /// `NUMBER(name)`: decimal (possibly negative) or `0x` hexadecimal.
    pub fn number(&self, name: &str) -> Result<i64, VmcoreInfoError> {
        self.parsed(&format!("NUMBER({name})"), "a decimal or 0x-hexadecimal number", parse_number)
    }

    /// `CRASHTIME`: the crash's time in seconds since the Unix epoch.
    pub fn crash_time(&self) -> Result<i64, VmcoreInfoError> {
        self.parsed("CRASHTIME", "a decimal time in seconds", |v| v.parse().ok())
    }

    fn parsed<T>(
        &self,
        key: &str,
        expected: &'static str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T, VmcoreInfoError> {
        let value = self.get(key).ok_or_else(|| VmcoreInfoError::Missing { key: key.to_owned() })?;
        parse(value).ok_or_else(|| VmcoreInfoError::Invalid {
            key: key.to_owned(),
            value: value.chars().take(ERROR_VALUE_MAX).collect(),
            expected,
        })
    }
}

/// `Ok(None)` for a missing key, the value or the error otherwise: for keys a dump may lack.
pub fn optional<T>(result: Result<T, VmcoreInfoError>) -> Result<Option<T>, VmcoreInfoError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(VmcoreInfoError::Missing { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

fn parse_hex(value: &str) -> Option<u64> {
    let digits = value.strip_prefix("0x").unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

fn parse_dec(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

fn parse_number(value: &str) -> Option<i64> {
    if let Some(hex) = value.strip_prefix("0x") {
        // Hexadecimal NUMBERs are addresses: keep the bits (0xffff... reads as negative).
        return parse_hex(hex).map(|v| v as i64);
    }
    let digits = value.strip_prefix('-').unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_getters_follow_linux_formats() {
        let info = VmcoreInfo::parse(
            "OSRELEASE=6.18.0-crashvisor\nPAGESIZE=4096\nSYMBOL(init_uts_ns)=ffffffff81234560\n\
             SIZE(printk_log)=16\nOFFSET(printk_log.len)=8\nLENGTH(x)=3\nNUMBER(phys_base)=-2097152\n\
             NUMBER(VMALLOC_START)=0xffffc90000000000\nCRASHTIME=1700000000",
        );
        assert_eq!(info.symbol("init_uts_ns"), Ok(0xffff_ffff_8123_4560));
        assert_eq!(info.size("printk_log"), Ok(16));
        assert_eq!(info.offset("printk_log.len"), Ok(8));
        assert_eq!(info.length("x"), Ok(3));
        assert_eq!(info.number("phys_base"), Ok(-2_097_152));
        assert_eq!(info.number("VMALLOC_START").map(|v| v as u64), Ok(0xffff_c900_0000_0000));
        assert_eq!(info.crash_time(), Ok(1_700_000_000), "a last line without a newline counts");
        assert_eq!(info.get("PAGESIZE"), Some("4096"));
        assert_eq!(optional(info.size("nothing")), Ok(None));
        assert_eq!(optional(info.size("printk_log")), Ok(Some(16)));
    }

    #[test]
    fn malformed_values_are_errors_not_panics() {
        let info = VmcoreInfo::parse(
            "SYMBOL(a)=\nSYMBOL(b)=xyz\nSIZE(c)=-1\nSIZE(d)=99999999999999999999999\nNUMBER(e)=--1\n\
             NUMBER(f)=0x\nOFFSET(g)=1 2\nSYMBOL(h)=fffffffffffffffff\nCRASHTIME=soon",
        );
        for result in [info.symbol("a"), info.symbol("b"), info.size("c"), info.size("d"), info.symbol("h")] {
            assert!(matches!(result, Err(VmcoreInfoError::Invalid { .. })), "{result:?}");
        }
        assert!(info.number("e").is_err() && info.number("f").is_err() && info.offset("g").is_err());
        assert!(info.crash_time().is_err());
        assert!(optional(info.symbol("b")).is_err(), "a malformed optional key is still an error");
        let error = info.symbol("missing").unwrap_err().to_string();
        assert_eq!(error, "VMCOREINFO has no SYMBOL(missing) line (the crashed kernel does not publish it)");
    }

    #[test]
    fn odd_lines_are_skipped_and_the_last_duplicate_wins() {
        let info = VmcoreInfo::parse("\0\0garbage\n=novalue\n  SIZE(a) = 1 \r\nSIZE(a)=2\n\nKEY=a=b\0\0\0");
        assert_eq!(info.size("a"), Ok(2));
        assert_eq!(info.get("KEY"), Some("a=b"));
        assert_eq!(info.entries().count(), 2);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic fuzz: random printable and control bytes, lines and '='s.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"SYMBOL(OFFSET)SIZE=NUMBER0x-123456789abcdefxyz.\n\r\0 \xff";
        for _ in 0..2000 {
            let len = (state % 96) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    alphabet[(state % alphabet.len() as u64) as usize]
                })
                .collect();
            let info = VmcoreInfo::parse(&String::from_utf8_lossy(&bytes));
            for (key, _) in info.entries() {
                assert!(!key.is_empty());
            }
            let _ = (info.symbol("a"), info.number("0x"), info.size("S"), info.crash_time());
        }
    }
}
