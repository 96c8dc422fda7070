//! The kernel command line, parsed the way Linux parses it.
//!
//! - Parameters are split like `next_arg()` in Linux's `kernel/params.c`: whitespace separates
//!   them, each is `key=value` or a bare `key`, and double quotes may surround the value
//!   (`key="a b"`) or the whole parameter (`"key=a b"`); the quotes are removed.
//! - A bare `--` ends the kernel's parameters; what follows belongs to init
//!   ([`Cmdline::init_args`]).
//! - Keys compare like Linux's `parameq()`: `-` and `_` are the same character.
//! - Numbers parse like `memparse()`, `kstrtoull(s, 0)` and `kstrtoll(s, 0)`; booleans like
//!   `kstrtobool()`.
//!
//! Only ASCII whitespace separates parameters (Linux's `isspace()` also accepts the Latin-1
//! byte 0xa0, which in UTF-8 text is a continuation byte).
//!
//! ```
//! use crashvisor_klib::cmdline::{memparse, Cmdline};
//!
//! let cmdline = Cmdline::new(r#"console=ttyS0 "dyndbg=file x.c +p" nokaslr -- single"#);
//! assert_eq!(cmdline.get("dyndbg"), Some(Some("file x.c +p")));
//! assert!(cmdline.has_flag("nokaslr"));
//! assert_eq!(cmdline.init_args(), Some("single"));
//! assert_eq!(memparse("64M@16M"), Some((64 << 20, "@16M")));
//! ```

use core::ops::Range;

/// One kernel parameter, quotes removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param<'a> {
    /// The name before the first `=` (the whole parameter if there is none).
    pub key: &'a str,
    /// The text after the first `=`, or `None` for a bare flag.
    pub value: Option<&'a str>,
}

/// A kernel command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cmdline<'a> {
    text: &'a str,
}

impl<'a> Cmdline<'a> {
    /// Wraps the command-line text.
    pub const fn new(text: &'a str) -> Self {
        Self { text }
    }

    /// Wraps a NUL-terminated command line as the boot protocol delivers it: the text ends at
    /// the first NUL (or the end of `bytes`) and is cut before the first invalid UTF-8 byte.
    pub fn from_bytes(bytes: &'a [u8]) -> Self {
        let bytes = bytes.iter().position(|&b| b == 0).map_or(bytes, |nul| &bytes[..nul]);
        let text = match core::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(err) => core::str::from_utf8(&bytes[..err.valid_up_to()]).unwrap_or_default(),
        };
        Self { text }
    }

    /// The whole command line.
    pub const fn as_str(&self) -> &'a str {
        self.text
    }

    /// The kernel's parameters in order, up to a bare `--`.
    pub fn iter(&self) -> Params<'a> {
        Params { args: RawArgs::new(self.text), done: false }
    }

    /// The value of the **last** occurrence of `key`: `None` if absent, `Some(None)` if it
    /// last appeared as a bare flag.
    pub fn get(&self, key: &str) -> Option<Option<&'a str>> {
        self.iter().filter(|param| param_eq(param.key, key)).last().map(|param| param.value)
    }

    /// Whether `key` appears as a bare flag (without `=`), like Linux's
    /// `cmdline_find_option_bool()`.
    pub fn has_flag(&self, key: &str) -> bool {
        self.iter().any(|param| param.value.is_none() && param_eq(param.key, key))
    }

    /// The text after a bare `--` (init's arguments), or `None` if there is no `--`.
    pub fn init_args(&self) -> Option<&'a str> {
        let mut args = RawArgs::new(self.text);
        args.by_ref().find(|(param, _)| is_end_marker(param))?;
        Some(self.text[args.pos..].trim_end())
    }
}

impl<'a> IntoIterator for &Cmdline<'a> {
    type Item = Param<'a>;
    type IntoIter = Params<'a>;

    fn into_iter(self) -> Params<'a> {
        self.iter()
    }
}

/// Iterator over the kernel's parameters, from [`Cmdline::iter`].
#[derive(Clone, Debug)]
pub struct Params<'a> {
    args: RawArgs<'a>,
    done: bool,
}

impl<'a> Iterator for Params<'a> {
    type Item = Param<'a>;

    fn next(&mut self) -> Option<Param<'a>> {
        if self.done {
            return None;
        }
        match self.args.next() {
            Some((param, _)) if !is_end_marker(&param) => Some(param),
            _ => {
                self.done = true;
                None
            }
        }
    }
}

/// Every parameter, `--` included, with its span (quotes included) in the text.
#[derive(Clone, Debug)]
struct RawArgs<'a> {
    text: &'a str,
    /// Where the next parameter starts, after any whitespace.
    pos: usize,
}

impl<'a> RawArgs<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, pos: skip_spaces(text.as_bytes(), 0) }
    }
}

impl<'a> Iterator for RawArgs<'a> {
    type Item = (Param<'a>, Range<usize>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.text.len() {
            return None;
        }
        let start = self.pos;
        let (param, end) = next_arg(self.text, start);
        self.pos = skip_spaces(self.text.as_bytes(), end);
        Some((param, start..end))
    }
}

/// Splits the parameter starting at `start` (not whitespace) like Linux's `next_arg()` and
/// returns it with the end of its raw text.
fn next_arg(text: &str, start: usize) -> (Param<'_>, usize) {
    let b = text.as_bytes();
    let is_quote = |at: usize| b.get(at) == Some(&b'"');
    let quoted = is_quote(start);
    let args = start + usize::from(quoted);
    let mut in_quote = quoted;
    // Like Linux, an `=` as the very first character does not count.
    let mut equals = None;
    let mut end = args;
    while let Some(&c) = b.get(end) {
        if is_space(c) && !in_quote {
            break;
        }
        if c == b'=' && equals.is_none() && end > args {
            equals = Some(end);
        }
        if c == b'"' {
            in_quote = !in_quote;
        }
        end += 1;
    }

    let mut key = args..end;
    let mut value = None;
    let mut closing_quote_removed = false;
    if let Some(eq) = equals {
        key = args..eq;
        let mut val = eq + 1..end;
        if val.start < end && is_quote(val.start) {
            val.start += 1;
            if is_quote(end - 1) {
                val.end = end - 1;
                closing_quote_removed = true;
            }
        }
        // `key="` leaves an empty value.
        val.end = val.end.max(val.start);
        value = Some(val);
    }
    if quoted && end > args && is_quote(end - 1) && !closing_quote_removed {
        match value.as_mut() {
            Some(val) => val.end = end - 1,
            None => key.end = end - 1,
        }
    }

    // Every bound sits next to an ASCII byte or at an end, so it is a character boundary.
    let slice = |range: Range<usize>| text.get(range).unwrap_or_default();
    let param = Param { key: slice(key), value: value.map(slice) };
    (param, end)
}

fn is_end_marker(param: &Param<'_>) -> bool {
    param.key == "--" && param.value.is_none()
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn skip_spaces(b: &[u8], mut pos: usize) -> usize {
    while b.get(pos).is_some_and(|&c| is_space(c)) {
        pos += 1;
    }
    pos
}

/// Compares parameter names like Linux's `parameq()`: `-` and `_` are equal.
pub fn param_eq(a: &str, b: &str) -> bool {
    let dash2underscore = |c: &u8| if *c == b'-' { b'_' } else { *c };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| dash2underscore(&x) == dash2underscore(&y))
}

/// Writes a copy of `cmdline` without any occurrence of `key` (bare or `key=...`) into `out`
/// and returns it, or `None` if `out` is too small.
///
/// Kept parameters are copied with their quotes and separated by single spaces; a `--` and
/// init's arguments after it are copied unchanged (a `key` there belongs to init).
pub fn remove_param<'o>(cmdline: &str, key: &str, out: &'o mut [u8]) -> Option<&'o str> {
    let mut len = 0;
    let mut push = |piece: &str| -> Option<()> {
        let sep = usize::from(len > 0);
        let dest = out.get_mut(len..len + sep + piece.len())?;
        dest[..sep].fill(b' ');
        dest[sep..].copy_from_slice(piece.as_bytes());
        len += dest.len();
        Some(())
    };
    for (param, span) in RawArgs::new(cmdline) {
        if is_end_marker(&param) {
            push(cmdline[span.start..].trim_end())?;
            break;
        }
        if !param_eq(param.key, key) {
            push(&cmdline[span])?;
        }
    }
    core::str::from_utf8(&out[..len]).ok()
}

/// Parses a size like Linux's `memparse()`: an integer (`0x` hex, leading `0` octal, else
/// decimal) optionally followed by `K`, `M`, `G`, `T`, `P` or `E` (any case) multiplying by
/// 2^10 … 2^60. Returns the value and the text after it; `None` if there are no digits or the
/// value overflows `u64` (where Linux would return garbage).
pub fn memparse(s: &str) -> Option<(u64, &str)> {
    let (value, rest) = parse_integer_prefix(s)?;
    let shift = match rest.as_bytes().first().map(u8::to_ascii_lowercase) {
        Some(b'k') => 10,
        Some(b'm') => 20,
        Some(b'g') => 30,
        Some(b't') => 40,
        Some(b'p') => 50,
        Some(b'e') => 60,
        _ => return Some((value, rest)),
    };
    if value > u64::MAX >> shift {
        return None;
    }
    Some((value << shift, &rest[1..]))
}

/// Parses the integer at the start of `s` like Linux's `simple_strtoull(s, &end, 0)`, but
/// returns `None` when there are no digits or the value overflows.
fn parse_integer_prefix(s: &str) -> Option<(u64, &str)> {
    let b = s.as_bytes();
    // `_parse_integer_fixup_radix()`: "0x" counts as a prefix only before a hex digit.
    let (radix, skip) = match b {
        [b'0', x, d, ..] if x.eq_ignore_ascii_case(&b'x') && d.is_ascii_hexdigit() => (16, 2),
        [b'0', ..] => (8, 0),
        _ => (10, 0),
    };
    let mut value: u64 = 0;
    let mut end = skip;
    while let Some(digit) = b.get(end).and_then(|&c| char::from(c).to_digit(radix)) {
        value = value.checked_mul(u64::from(radix))?.checked_add(u64::from(digit))?;
        end += 1;
    }
    (end > skip).then(|| (value, &s[end..]))
}

/// Parses the whole of `s` like `kstrtoull()` after the optional `+`.
fn parse_magnitude(s: &str) -> Option<u64> {
    let (value, rest) = parse_integer_prefix(s)?;
    matches!(rest, "" | "\n").then_some(value)
}

/// Parses an unsigned integer like Linux's `kstrtoull(s, 0)`: optional `+`, `0x` hex, leading
/// `0` octal or decimal, optionally one trailing newline, nothing else.
pub fn parse_u64(s: &str) -> Option<u64> {
    parse_magnitude(s.strip_prefix('+').unwrap_or(s))
}

/// Parses a signed integer like Linux's `kstrtoll(s, 0)`: an optional `-` (or `+`) and then
/// what [`parse_u64`] accepts, within `i64`'s range.
pub fn parse_i64(s: &str) -> Option<i64> {
    match s.strip_prefix('-') {
        Some(digits) => {
            // Like Linux: `-(long long)tmp` must not be positive; this admits `i64::MIN`.
            let negated = parse_magnitude(digits)?.wrapping_neg().cast_signed();
            (negated <= 0).then_some(negated)
        }
        None => i64::try_from(parse_u64(s)?).ok(),
    }
}

/// Parses a boolean like Linux's `kstrtobool()`, which looks only at the first one or two
/// characters: `1`/`y`/`Y`/`t`/`T`/`on` are true, `0`/`n`/`N`/`f`/`F`/`off` false (so `yes`
/// and `false` work too); `on`/`off` in any case.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.as_bytes() {
        [b'1' | b'y' | b'Y' | b't' | b'T', ..] => Some(true),
        [b'0' | b'n' | b'N' | b'f' | b'F', ..] => Some(false),
        [b'o' | b'O', b'n' | b'N', ..] => Some(true),
        [b'o' | b'O', b'f' | b'F', ..] => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn params(text: &str) -> Vec<(&str, Option<&str>)> {
        Cmdline::new(text).iter().map(|p| (p.key, p.value)).collect()
    }

    #[test]
    fn splits_on_whitespace_and_first_equals() {
        assert_eq!(
            params("  root=/dev/vda1\tro  a=b=c\n\r quiet "),
            [("root", Some("/dev/vda1")), ("ro", None), ("a", Some("b=c")), ("quiet", None)]
        );
        assert_eq!(params(""), []);
        assert_eq!(params(" \t "), []);
        assert_eq!(params("empty="), [("empty", Some(""))]);
    }

    #[test]
    fn leading_equals_is_part_of_the_key_like_linux() {
        assert_eq!(params("=a=b"), [("=a", Some("b"))]);
        assert_eq!(params("=x"), [("=x", None)]);
    }

    #[test]
    fn removes_quotes_like_next_arg() {
        assert_eq!(params(r#"key="a b" x"#), [("key", Some("a b")), ("x", None)]);
        assert_eq!(params(r#""key=a b" x"#), [("key", Some("a b")), ("x", None)]);
        assert_eq!(params(r#""flag with space""#), [("flag with space", None)]);
        assert_eq!(params(r#"k=""#), [("k", Some(""))]);
        assert_eq!(params(r#""k=""#), [("k", Some(""))]);
        assert_eq!(params(r#"k="""#), [("k", Some(""))]);
        assert_eq!(params(r#""""#), [("", None)]);
        // A quote inside a value keeps whitespace together but stays in the text.
        assert_eq!(params(r#"a=b"c d"e f"#), [("a", Some(r#"b"c d"e"#)), ("f", None)]);
        // An unterminated quote runs to the end.
        assert_eq!(params(r#"a="b c"#), [("a", Some("b c"))]);
    }

    #[test]
    fn double_dash_ends_kernel_parameters() {
        let cmdline = Cmdline::new("a=1 -- b=2  c ");
        assert_eq!(params(cmdline.as_str()), [("a", Some("1"))]);
        assert_eq!(cmdline.get("b"), None);
        assert_eq!(cmdline.init_args(), Some("b=2  c"));
        assert_eq!(Cmdline::new("a --").init_args(), Some(""));
        assert_eq!(Cmdline::new("a --=x b").init_args(), None);
        assert_eq!(Cmdline::new(r#"a "--" b"#).init_args(), Some("b"));
    }

    #[test]
    fn get_returns_last_occurrence_and_flags() {
        let cmdline = Cmdline::new("loglevel=4 debug loglevel=8 panic_on_oops flag=1 flag");
        assert_eq!(cmdline.get("loglevel"), Some(Some("8")));
        assert_eq!(cmdline.get("debug"), Some(None));
        assert_eq!(cmdline.get("missing"), None);
        assert_eq!(cmdline.get("flag"), Some(None));
        assert!(cmdline.has_flag("debug"));
        assert!(cmdline.has_flag("panic-on-oops"));
        assert!(!cmdline.has_flag("loglevel"));
        assert_eq!(cmdline.get("panic_on_oops"), Some(None));
        assert_eq!((&cmdline).into_iter().count(), 6);
    }

    #[test]
    fn dash_and_underscore_are_equal_in_keys() {
        assert!(param_eq("crash_kexec_post_notifiers", "crash-kexec-post_notifiers"));
        assert!(!param_eq("abc", "abd"));
        assert!(!param_eq("abc", "ab"));
    }

    #[test]
    fn from_bytes_stops_at_nul_and_bad_utf8() {
        assert_eq!(Cmdline::from_bytes(b"a=1 b\0junk").as_str(), "a=1 b");
        assert_eq!(Cmdline::from_bytes(b"a=1 \xff b").as_str(), "a=1 ");
        assert_eq!(Cmdline::from_bytes(b"").as_str(), "");
    }

    #[test]
    fn non_ascii_text_is_sliced_safely() {
        assert_eq!(params("k=\u{e0}\u{e9} \u{2603}"), [("k", Some("\u{e0}\u{e9}")), ("\u{2603}", None)]);
    }

    #[test]
    fn memparse_matches_linux() {
        assert_eq!(memparse("4096"), Some((4096, "")));
        assert_eq!(memparse("64M"), Some((64 << 20, "")));
        assert_eq!(memparse("64m@16M"), Some((64 << 20, "@16M")));
        assert_eq!(memparse("1k"), Some((1024, "")));
        assert_eq!(memparse("2G,"), Some((2 << 30, ",")));
        assert_eq!(memparse("1T"), Some((1 << 40, "")));
        assert_eq!(memparse("1p"), Some((1 << 50, "")));
        assert_eq!(memparse("15E"), Some((15 << 60, "")));
        assert_eq!(memparse("0x10M"), Some((16 << 20, "")));
        assert_eq!(memparse("0X1g"), Some((1 << 30, "")));
        // `e` is a hex digit, so no suffix here.
        assert_eq!(memparse("0x1e"), Some((0x1e, "")));
        assert_eq!(memparse("010"), Some((8, "")));
        assert_eq!(memparse("08"), Some((0, "8")));
        assert_eq!(memparse("0"), Some((0, "")));
        assert_eq!(memparse("0x"), Some((0, "x")));
        assert_eq!(memparse("0xg"), Some((0, "xg")));
        assert_eq!(memparse("12Q"), Some((12, "Q")));
        assert_eq!(memparse(""), None);
        assert_eq!(memparse("M"), None);
        assert_eq!(memparse("-1"), None);
        assert_eq!(memparse("16E"), None);
        assert_eq!(memparse("18446744073709551616"), None);
        assert_eq!(memparse("18446744073709551615"), Some((u64::MAX, "")));
    }

    #[test]
    fn parse_u64_matches_kstrtoull() {
        assert_eq!(parse_u64("0"), Some(0));
        assert_eq!(parse_u64("+42\n"), Some(42));
        assert_eq!(parse_u64("0x1F"), Some(31));
        assert_eq!(parse_u64("0755"), Some(0o755));
        assert_eq!(parse_u64("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64("18446744073709551616"), None);
        for bad in ["", "+", "0x", "08", "1 ", "1\n\n", "12k", "-1", " 1", "++1"] {
            assert_eq!(parse_u64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn parse_i64_matches_kstrtoll() {
        assert_eq!(parse_i64("-5"), Some(-5));
        assert_eq!(parse_i64("-0"), Some(0));
        assert_eq!(parse_i64("+7"), Some(7));
        assert_eq!(parse_i64("-0x10"), Some(-16));
        assert_eq!(parse_i64("9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64("9223372036854775808"), None);
        assert_eq!(parse_i64("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64("-9223372036854775809"), None);
        assert_eq!(parse_i64("-+1"), None);
        assert_eq!(parse_i64("--1"), None);
    }

    #[test]
    fn parse_bool_matches_kstrtobool() {
        for yes in ["1", "y", "Y", "yes", "t", "true", "T", "on", "ON", "oN", "1x"] {
            assert_eq!(parse_bool(yes), Some(true), "{yes}");
        }
        for no in ["0", "n", "N", "no", "f", "false", "off", "OFF", "oFx"] {
            assert_eq!(parse_bool(no), Some(false), "{no}");
        }
        for bad in ["", "o", "ox", "2", "enable", " 1"] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
    }

    #[test]
    fn remove_param_drops_every_occurrence() {
        let mut out = [0u8; 128];
        let cmdline = r#"crashkernel=64M  console=ttyS0 "crashkernel=1G" crash-kernel x="a b" crashkernelx"#;
        assert_eq!(
            remove_param(cmdline, "crashkernel", &mut out),
            Some(r#"console=ttyS0 crash-kernel x="a b" crashkernelx"#)
        );
        assert_eq!(remove_param("crashkernel=1", "crashkernel", &mut out), Some(""));
        assert_eq!(
            remove_param("a crashkernel=1 -- crashkernel=2  b ", "crashkernel", &mut out),
            Some("a -- crashkernel=2  b")
        );
    }

    #[test]
    fn remove_param_reports_a_small_buffer() {
        let mut out = [0u8; 8];
        assert_eq!(remove_param("abcd efgh ij", "ij", &mut out), None);
        assert_eq!(remove_param("abc efgh ij", "ij", &mut out), Some("abc efgh"));
    }
}
