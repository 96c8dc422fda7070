//! The control channel: a line protocol between the host and the guest's control thread on
//! COM2 (`crate::serial::COM2_PORT`), version [`PROTOCOL_VERSION`].
//!
//! Every line ends with `\n` (a `\r` before it is ignored). Tokens are separated by spaces.
//!
//! ```text
//! host → guest   <id> <verb> key=value ...          a request; id is a decimal u32, not 0
//! guest → host   <id> ok key=value ...              its response
//!                <id> err code=<ErrorCode> message=<value>
//!                0 hello version=1 release=<value> cpus=<n>
//!                                                   unsolicited, once the control thread runs
//! ```
//!
//! Keys are `[a-z0-9_]+`. Values are percent-encoded: every byte outside printable ASCII
//! `0x21..=0x7e`, and `%`, `=` and space, is written `%XX` (uppercase hex), so a value is never
//! empty of meaning and never contains a separator. The host sends at most one request at a
//! time per id, never longer than [`MAX_REQUEST_LEN`]; it accepts responses up to
//! [`MAX_RESPONSE_LEN`]. Everything here works without allocation, so the guest can parse a
//! request in place and stream its response to the UART.
//!
//! An empty line is the host's resynchronisation mark: the guest ignores it without an answer.
//! After a request went unanswered the host sends one before the next request, so a request
//! line the guest received only in part can never swallow the next one.
//!
//! ```
//! use crashvisor_abi::control::{arg, decode_value, encode_value, parse_line, Verb};
//!
//! let line = parse_line("7 inject fault=panic cpu=1 message=out%20of%20cheese\n").unwrap();
//! assert_eq!((line.id, line.verb()), (7, Some(Verb::Inject)));
//! let mut buf = [0u8; 64];
//! let message = decode_value(arg(&line, "message").unwrap(), &mut buf).unwrap();
//! assert_eq!(message, b"out of cheese");
//!
//! let mut out = [0u8; 64];
//! let mut len = 0;
//! encode_value(b"a b=c", &mut |run: &[u8]| {
//!     out[len..len + run.len()].copy_from_slice(run);
//!     len += run.len();
//! });
//! assert_eq!(&out[..len], b"a%20b%3Dc");
//! ```
//!
//! Requests and their responses (keys in brackets are optional):
//!
//! | verb | request keys | `ok` response keys |
//! |---|---|---|
//! | `hello` | | `version=1 release=<value> cpus=<n>` |
//! | `inject` | `fault=<FaultKind> cpu=<n> [duration_ms=<n>] [message=<value>]` | `pid=<n>` of the task that carries the fault, or none for a fault run in place |
//! | `inject` | `lkdtm=<CrashType> [cpoint=<CrashPoint>] [count=<n>] [cpu=<n>]` (see below) | `DIRECT`: `pid=<n>` of the task that runs the type; another crash point: `cpoint=<name> count=<n>` as registered |
//! | `sysctl_get` | `name=<kernel.x>` | `value=<value>` |
//! | `sysctl_set` | `name=<kernel.x> value=<value>` | `value=<value>` (as now read back) |
//! | `ps` | | `text=<value>`: the shell's `ps` table |
//! | `uptime` | | `ns=<n>`: nanoseconds since boot |
//! | `dmesg` | `since=<seq>` | `next=<seq> text=<value>`: records from `since`, each `[    1.234567] text`, joined with `\n` |
//! | `kexec` | `op=load kind=<KexecKind> [cmdline=<value>]`, `op=unload kind=<KexecKind>`, `op=exec`, `op=status` | `loaded=0\|1 crash_loaded=0\|1 crash_size=<bytes>`; `op=exec` answers first, then jumps |
//! | `kdump` | `op=start\|stop\|status`, `op=config [dump_level=<n>] [final_action=<a>] [failure_action=<a>]` | `state=operational\|not_operational dump_level=<n> final_action=<a> failure_action=<a>` |
//!
//! The LKDTM form of `inject` runs a [`crate::lkdtm::CrashType`] (`lkdtm=PANIC`, LKDTM's upper-case
//! names) at a [`crate::lkdtm::CrashPoint`] (`cpoint=`, default `DIRECT`):
//! - `DIRECT`: a new kernel thread `lkdtm/<cpu>` on CPU `cpu` (default 0) runs the type once the
//!   host has the answer, as `echo TYPE > /sys/kernel/debug/provoke-crash/DIRECT` would;
//! - any other point: the type is registered there (replacing a previous registration) and runs
//!   in the context that hits the point, on its `count`th hit (default 10, LKDTM's
//!   `cpoint_count`, which this also sets), then every `count` hits again. With `cpu`, only hits
//!   on that CPU count (an extension: LKDTM counts every CPU's).
//!
//! A request with both `fault` and `lkdtm` is refused (`bad_argument`); a type or crash point
//! the kernel does not support is refused with `unsupported` and the reason.

use core::fmt;

use crate::lkdtm::{CrashPoint, CrashType, Support};

/// Version of this protocol, sent in the hello line and the `hello` response.
pub const PROTOCOL_VERSION: u32 = 1;
/// The id of the guest's unsolicited hello line; requests never use it.
pub const HELLO_ID: u32 = 0;
/// Longest request line the host sends, without its `\n`.
pub const MAX_REQUEST_LEN: usize = 1024;
/// Longest response line the host accepts, without its `\n`; longer ones are dropped.
pub const MAX_RESPONSE_LEN: usize = 1 << 20;
/// Longest `message` of an `inject` request, in decoded bytes.
pub const MAX_MESSAGE_LEN: usize = 256;
/// Longest sysctl name, in bytes.
pub const MAX_SYSCTL_NAME_LEN: usize = 64;
/// Longest sysctl value, in decoded bytes.
pub const MAX_SYSCTL_VALUE_LEN: usize = 256;
/// The namespace of every sysctl the guest has (Linux's `kernel.*` table).
pub const SYSCTL_NAMESPACE: &str = "kernel.";
/// Longest key or verb, in bytes.
pub const MAX_WORD_LEN: usize = 32;
/// The status word of a successful response.
pub const STATUS_OK: &str = "ok";
/// The status word of a failed response.
pub const STATUS_ERR: &str = "err";

/// The keys the protocol defines.
pub mod key {
    /// `inject`: the [`super::FaultKind`] name.
    pub const FAULT: &str = "fault";
    /// `inject`: the CPU to run the fault on.
    pub const CPU: &str = "cpu";
    /// `inject`: the LKDTM crash type (`PANIC`, ...), instead of `fault`.
    pub const LKDTM: &str = "lkdtm";
    /// `inject lkdtm=`: the LKDTM crash point (`DIRECT`, `INT_HARDWARE_ENTRY`, ...).
    pub const CPOINT: &str = "cpoint";
    /// `inject lkdtm=`: the crash point fires on this many hits (LKDTM's `cpoint_count`).
    pub const COUNT: &str = "count";
    /// `inject`: how long a lockup lasts, in milliseconds (absent: until reboot).
    pub const DURATION_MS: &str = "duration_ms";
    /// `inject`: the panic or BUG message; `err`: the error message.
    pub const MESSAGE: &str = "message";
    /// `sysctl_get`, `sysctl_set`: the sysctl name (`kernel.x`).
    pub const NAME: &str = "name";
    /// `sysctl_set`, and the sysctl responses: the value.
    pub const VALUE: &str = "value";
    /// `dmesg`: the first record sequence number wanted.
    pub const SINCE: &str = "since";
    /// `dmesg` response: the sequence number to ask for next.
    pub const NEXT: &str = "next";
    /// `dmesg`, `ps` responses: the text.
    pub const TEXT: &str = "text";
    /// `uptime` response: nanoseconds since boot.
    pub const NS: &str = "ns";
    /// `inject` response: the task carrying the fault.
    pub const PID: &str = "pid";
    /// hello: the protocol version.
    pub const VERSION: &str = "version";
    /// hello: the kernel release (`6.18.0-crashvisor`).
    pub const RELEASE: &str = "release";
    /// hello: the number of online CPUs.
    pub const CPUS: &str = "cpus";
    /// `err` response: the [`super::ErrorCode`].
    pub const CODE: &str = "code";
    /// `kexec`, `kdump`: the operation ([`super::KexecOp`], [`super::KdumpOp`]).
    pub const OP: &str = "op";
    /// `kexec`: which image ([`super::KexecKind`]).
    pub const KIND: &str = "kind";
    /// `kexec op=load`: the new kernel's command line.
    pub const CMDLINE: &str = "cmdline";
    /// `kexec` response: a kernel is loaded for `kexec -e`.
    pub const LOADED: &str = "loaded";
    /// `kexec` response: a capture kernel is loaded.
    pub const CRASH_LOADED: &str = "crash_loaded";
    /// `kexec` response: bytes reserved by `crashkernel=` (0 without a reservation).
    pub const CRASH_SIZE: &str = "crash_size";
    /// `kdump` response: `operational` or `not_operational`.
    pub const STATE: &str = "state";
    /// `kdump`: makedumpfile's `-d` level, 0 to 31.
    pub const DUMP_LEVEL: &str = "dump_level";
    /// `kdump`: what the capture kernel does after a dump (`reboot`, `halt`, `poweroff`).
    pub const FINAL_ACTION: &str = "final_action";
    /// `kdump`: the same when the dump fails.
    pub const FAILURE_ACTION: &str = "failure_action";
}

names! {
    /// What the host asks of the guest.
    Verb {
        /// Protocol version, kernel release and CPU count.
        Hello = "hello",
        /// Inject a fault.
        Inject = "inject",
        /// Read a sysctl.
        SysctlGet = "sysctl_get",
        /// Write a sysctl.
        SysctlSet = "sysctl_set",
        /// The task list.
        Ps = "ps",
        /// Time since boot.
        Uptime = "uptime",
        /// Kernel log records.
        Dmesg = "dmesg",
        /// Load, unload or start a kernel image (`kexec -l/-p/-u/-e`).
        Kexec = "kexec",
        /// The kdump service (`kdumpctl start/stop/status` and its configuration).
        Kdump = "kdump",
    }
}

names! {
    /// What a `kexec` request does.
    KexecOp {
        /// Load the pristine kernel image (`kexec -l`, or `-p` with `kind=crash`).
        Load = "load",
        /// Unload an image (`kexec -u`, `-u -p`).
        Unload = "unload",
        /// Jump into the loaded image without a machine reboot (`kexec -e`).
        Exec = "exec",
        /// Which images are loaded.
        Status = "status",
    }
}

names! {
    /// Which kexec image a request is about.
    KexecKind {
        /// The image `kexec -e` starts.
        Normal = "normal",
        /// The capture kernel a crash starts.
        Crash = "crash",
    }
}

names! {
    /// What a `kdump` request does.
    KdumpOp {
        /// Load the capture kernel with kdump's command line.
        Start = "start",
        /// Unload it.
        Stop = "stop",
        /// Report the state and configuration.
        Status = "status",
        /// Change the configuration (takes effect at the next `start`).
        Config = "config",
    }
}

names! {
    /// What the capture kernel does after a dump, or after a failed one.
    KdumpAction {
        /// Reset the machine.
        Reboot = "reboot",
        /// Stop the CPUs and stay.
        Halt = "halt",
        /// Power the machine off.
        Poweroff = "poweroff",
    }
}

names! {
    /// Why the guest refused a request (`err code=...`).
    ErrorCode {
        /// The verb is not one the guest knows.
        UnknownVerb = "unknown_verb",
        /// A key is missing, unknown or has a bad value.
        BadArgument = "bad_argument",
        /// No such sysctl.
        UnknownSysctl = "unknown_sysctl",
        /// Known but not available in this kernel or configuration.
        Unsupported = "unsupported",
        /// The guest cannot take this request now (try again).
        Busy = "busy",
        /// The guest failed while carrying the request out.
        Internal = "internal",
    }
}

names! {
    /// The faults `inject` can cause.
    FaultKind {
        /// A CPU spins with preemption disabled: the soft-lockup detector fires.
        SoftLockup = "softlockup",
        /// A CPU spins with interrupts disabled: the hard-lockup detector fires.
        HardLockup = "hardlockup",
        /// A task sleeps uninterruptibly: the hung-task detector fires.
        HungTask = "hung_task",
        /// Two tasks take two locks in opposite orders (an ABBA deadlock).
        Deadlock = "deadlock",
        /// `panic(message)`.
        Panic = "panic",
        /// A NULL-pointer dereference in kernel code.
        Oops = "oops",
        /// `BUG()`: an invalid opcode (`ud2`).
        Bug = "bug",
        /// `echo c > /proc/sysrq-trigger`.
        SysrqCrash = "sysrq_crash",
        /// Unbounded recursion until the stack guard page is hit.
        StackOverflow = "stack_overflow",
    }
}

/// The LKDTM form of `inject` (`lkdtm=<TYPE> [cpoint=<NAME>] [count=<n>] [cpu=<n>]`), as the
/// host writes it and the guest reads it.
///
/// ```
/// use crashvisor_abi::control::{parse_line, LkdtmRequest};
/// use crashvisor_abi::lkdtm::{CrashPoint, CrashType};
///
/// let request = LkdtmRequest::new("PANIC", Some("INT_HARDWARE_ENTRY"), Some(3), Some(1)).unwrap();
/// assert_eq!(request.point, CrashPoint::IntHardwareEntry);
/// let mut line = String::from("9 inject");
/// for (key, value) in request.args() {
///     line += &format!(" {key}={value}");
/// }
/// assert_eq!(line, "9 inject lkdtm=PANIC cpoint=INT_HARDWARE_ENTRY count=3 cpu=1");
/// let parsed = parse_line(&line).unwrap();
/// assert_eq!(LkdtmRequest::from_line(&parsed), Some(Ok(request)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LkdtmRequest {
    /// The crash type.
    pub kind: CrashType,
    /// Where it runs (`DIRECT` when the line names none).
    pub point: CrashPoint,
    /// Fire on this many hits (a crash point other than `DIRECT`).
    pub count: Option<u32>,
    /// The CPU: `DIRECT` runs there (default 0); elsewhere only its hits count.
    pub cpu: Option<u32>,
}

/// Why an `inject lkdtm=` request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LkdtmRequestError<'a> {
    /// The request also names a `fault`.
    AlsoAFault,
    /// No crash type has this name.
    UnknownType(&'a str),
    /// The kernel does not run this crash type.
    UnsupportedType(CrashType, &'static str),
    /// No crash point has this name.
    UnknownPoint(&'a str),
    /// The kernel has no counterpart for this crash point.
    UnsupportedPoint(CrashPoint, &'static str),
    /// `cpu` is not a decimal `u32`.
    BadCpu,
    /// `count` is not a decimal from 1 to `i32::MAX` (LKDTM's `cpoint_count` is an `int`).
    BadCount,
}

impl LkdtmRequestError<'_> {
    /// The `err` code the guest answers with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnsupportedType(..) | Self::UnsupportedPoint(..) => ErrorCode::Unsupported,
            _ => ErrorCode::BadArgument,
        }
    }
}

impl fmt::Display for LkdtmRequestError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlsoAFault => f.write_str("give either fault or lkdtm, not both"),
            Self::UnknownType(name) => write!(f, "unknown LKDTM crash type {name}"),
            Self::UnsupportedType(kind, why) => write!(f, "{kind} is not supported by this kernel: {why}"),
            Self::UnknownPoint(name) => write!(f, "unknown LKDTM crash point {name}"),
            Self::UnsupportedPoint(point, why) => write!(f, "crash point {point} is not supported: {why}"),
            Self::BadCpu => f.write_str("cpu is not a number"),
            Self::BadCount => f.write_str("count is not a number from 1 to 2147483647"),
        }
    }
}

impl LkdtmRequest {
    /// Reads the form from an `inject` request: `None` when it has no `lkdtm` key (the fault
    /// form), else the request or why it is refused.
    pub fn from_line<'a>(line: &Line<'a>) -> Option<Result<Self, LkdtmRequestError<'a>>> {
        let name = line.arg(key::LKDTM)?;
        Some(Self::read(line, name))
    }

    fn read<'a>(line: &Line<'a>, name: &'a str) -> Result<Self, LkdtmRequestError<'a>> {
        if line.arg(key::FAULT).is_some() {
            return Err(LkdtmRequestError::AlsoAFault);
        }
        let cpu = line.arg(key::CPU).map(|c| parse_u32(c).ok_or(LkdtmRequestError::BadCpu)).transpose()?;
        let count = line.arg(key::COUNT).map(|c| parse_u32(c).ok_or(LkdtmRequestError::BadCount)).transpose()?;
        Self::new(name, line.arg(key::CPOINT), count, cpu)
    }

    /// The request for crash type `name` at crash point `point` (`DIRECT` when `None`): refused
    /// when either is unknown, or [`Self::check`] refuses it. The guest reads its lines with it.
    pub fn new<'a>(
        name: &'a str,
        point: Option<&'a str>,
        count: Option<u32>,
        cpu: Option<u32>,
    ) -> Result<Self, LkdtmRequestError<'a>> {
        let kind = CrashType::from_name(name).ok_or(LkdtmRequestError::UnknownType(name))?;
        let point = match point {
            None => CrashPoint::Direct,
            Some(name) => CrashPoint::from_name(name).ok_or(LkdtmRequestError::UnknownPoint(name))?,
        };
        let request = Self { kind, point, count, cpu };
        request.check()?;
        Ok(request)
    }

    /// Whether the kernel runs this request: refused when the type or the crash point is
    /// unsupported, or `count` is outside 1 to `i32::MAX`. The host checks a typed request with
    /// it before sending it.
    pub fn check(&self) -> Result<(), LkdtmRequestError<'static>> {
        if let Support::Unsupported(why) = self.kind.support() {
            return Err(LkdtmRequestError::UnsupportedType(self.kind, why));
        }
        if let Err(why) = self.point.counterpart() {
            return Err(LkdtmRequestError::UnsupportedPoint(self.point, why));
        }
        if self.count.is_some_and(|n| n == 0 || n > i32::MAX as u32) {
            return Err(LkdtmRequestError::BadCount);
        }
        Ok(())
    }

    /// The arguments after a request's `<id> inject`, in order: `lkdtm=<TYPE> cpoint=<NAME>`,
    /// then `count=<n>` and `cpu=<n>` when given. Names and numbers need no encoding.
    pub fn args(&self) -> impl Iterator<Item = (&'static str, ArgValue)> {
        [
            Some((key::LKDTM, ArgValue::Name(self.kind.as_str()))),
            Some((key::CPOINT, ArgValue::Name(self.point.as_str()))),
            self.count.map(|n| (key::COUNT, ArgValue::Number(n))),
            self.cpu.map(|n| (key::CPU, ArgValue::Number(n))),
        ]
        .into_iter()
        .flatten()
    }
}

/// A value of an [`LkdtmRequest`] argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgValue {
    /// A crash type's or crash point's name.
    Name(&'static str),
    /// A count or a CPU.
    Number(u32),
}

impl fmt::Display for ArgValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) => f.write_str(name),
            Self::Number(n) => write!(f, "{n}"),
        }
    }
}

/// Why a line or a value does not follow the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// The line is empty (or only spaces).
    EmptyLine,
    /// The id is not a decimal `u32` (digits only, at most 10 of them).
    BadId,
    /// The id is not followed by a verb or status word.
    MissingWord,
    /// The verb or status word is not `[a-z][a-z0-9_]*` of at most `MAX_WORD_LEN` bytes.
    BadWord,
    /// An argument has no `=`.
    MissingEquals,
    /// A key is empty, too long, or not `[a-z0-9_]+`.
    BadKey,
    /// A value holds a byte that must be percent-encoded.
    BadValueByte,
    /// A `%` is not followed by two hex digits.
    BadEscape,
    /// The decoded value does not fit the caller's buffer.
    BufferTooSmall,
}

impl ProtocolError {
    /// A short description, usable as an `err` message.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EmptyLine => "empty line",
            Self::BadId => "the id is not a decimal u32",
            Self::MissingWord => "no verb after the id",
            Self::BadWord => "malformed verb",
            Self::MissingEquals => "an argument has no '='",
            Self::BadKey => "malformed key",
            Self::BadValueByte => "a value holds a byte that must be percent-encoded",
            Self::BadEscape => "a '%' is not followed by two hex digits",
            Self::BufferTooSmall => "a value is too long",
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One parsed line: its id, its verb or status word, and its arguments (all borrowed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line<'a> {
    /// The request id (`HELLO_ID` for the hello line).
    pub id: u32,
    /// The verb of a request, `ok`/`err` for a response, `hello` for the hello line.
    pub word: &'a str,
    /// The validated `key=value` tokens.
    args: &'a str,
}

impl<'a> Line<'a> {
    /// The word as a request verb, if it is one.
    pub fn verb(&self) -> Option<Verb> {
        Verb::from_name(self.word)
    }

    /// Whether this is a successful response.
    pub fn is_ok(&self) -> bool {
        self.word == STATUS_OK
    }

    /// Whether this is a failed response.
    pub fn is_err(&self) -> bool {
        self.word == STATUS_ERR
    }

    /// Whether this is the guest's unsolicited hello line.
    pub fn is_hello(&self) -> bool {
        self.id == HELLO_ID && self.word == Verb::Hello.as_str()
    }

    /// The `(key, raw value)` pairs, in order. Values are still percent-encoded.
    pub fn args(&self) -> Args<'a> {
        Args { rest: self.args }
    }

    /// The raw (still encoded) value of the first argument named `key`.
    pub fn arg(&self, key: &str) -> Option<&'a str> {
        self.args().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// Iterator over the arguments of a [`Line`].
#[derive(Clone, Debug)]
pub struct Args<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Args<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let trimmed = self.rest.trim_start_matches(' ');
        if trimmed.is_empty() {
            self.rest = trimmed;
            return None;
        }
        let (token, rest) = trimmed.split_once(' ').unwrap_or((trimmed, ""));
        self.rest = rest;
        // parse_line checked that every token has a '='.
        Some(token.split_once('=').unwrap_or((token, "")))
    }
}

/// The raw value of the first argument of `line` named `key`.
pub fn arg<'a>(line: &Line<'a>, key: &str) -> Option<&'a str> {
    line.arg(key)
}

/// Parses and validates one line (a trailing `\n` or `\r\n` is allowed). Every argument is
/// checked, so iterating [`Line::args`] afterwards cannot fail and every value decodes.
pub fn parse_line(line: &str) -> Result<Line<'_>, ProtocolError> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut tokens = line.split(' ').filter(|t| !t.is_empty());
    let id = tokens.next().ok_or(ProtocolError::EmptyLine)?;
    let id = parse_u32(id).ok_or(ProtocolError::BadId)?;
    let word = tokens.next().ok_or(ProtocolError::MissingWord)?;
    if !is_word(word) || !word.as_bytes()[0].is_ascii_lowercase() {
        return Err(ProtocolError::BadWord);
    }
    for token in tokens {
        let (key, value) = token.split_once('=').ok_or(ProtocolError::MissingEquals)?;
        if !is_word(key) {
            return Err(ProtocolError::BadKey);
        }
        check_value(value)?;
    }
    // The arguments start after the word; `word` is a subslice of `line`.
    let args_start = word.as_ptr() as usize - line.as_ptr() as usize + word.len();
    Ok(Line { id, word, args: &line[args_start..] })
}

fn is_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_WORD_LEN
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Whether `byte` may appear in a value as itself.
fn is_literal(byte: u8) -> bool {
    (0x21..=0x7e).contains(&byte) && byte != b'%' && byte != b'='
}

fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        _ => None,
    }
}

/// Checks that `raw` is a well-formed encoded value.
fn check_value(raw: &str) -> Result<(), ProtocolError> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let escape = bytes.get(i + 1..i + 3).ok_or(ProtocolError::BadEscape)?;
                if hex_digit(escape[0]).is_none() || hex_digit(escape[1]).is_none() {
                    return Err(ProtocolError::BadEscape);
                }
                i += 3;
            }
            b if is_literal(b) => i += 1,
            _ => return Err(ProtocolError::BadValueByte),
        }
    }
    Ok(())
}

/// Percent-decodes `raw` into `out` and returns the decoded bytes (never longer than `raw`).
pub fn decode_value<'b>(raw: &str, out: &'b mut [u8]) -> Result<&'b [u8], ProtocolError> {
    check_value(raw)?;
    let bytes = raw.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < bytes.len() {
        let slot = out.get_mut(n).ok_or(ProtocolError::BufferTooSmall)?;
        if bytes[i] == b'%' {
            // check_value guarantees two hex digits follow.
            let hi = hex_digit(bytes[i + 1]).unwrap_or(0);
            let lo = hex_digit(bytes[i + 2]).unwrap_or(0);
            *slot = hi << 4 | lo;
            i += 3;
        } else {
            *slot = bytes[i];
            i += 1;
        }
        n += 1;
    }
    Ok(&out[..n])
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Percent-encodes `bytes`, handing the output to `emit` in pieces: runs of literal bytes and
/// `%XX` triples, so the guest can write a value straight to the UART without a buffer.
pub fn encode_value(bytes: &[u8], emit: &mut dyn FnMut(&[u8])) {
    let mut run_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if is_literal(b) {
            continue;
        }
        if run_start < i {
            emit(&bytes[run_start..i]);
        }
        emit(&[b'%', HEX_UPPER[usize::from(b >> 4)], HEX_UPPER[usize::from(b & 0xf)]]);
        run_start = i + 1;
    }
    if run_start < bytes.len() {
        emit(&bytes[run_start..]);
    }
}

/// Length of `bytes` once percent-encoded.
pub fn encoded_len(bytes: &[u8]) -> usize {
    bytes.iter().map(|&b| if is_literal(b) { 1 } else { 3 }).sum()
}

/// Displays bytes percent-encoded, for `write!` into any `fmt::Write` sink.
#[derive(Clone, Copy, Debug)]
pub struct Encoded<'a>(pub &'a [u8]);

impl fmt::Display for Encoded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut result = Ok(());
        encode_value(self.0, &mut |run| {
            if result.is_ok() {
                // Runs and escapes are ASCII by construction.
                result = f.write_str(core::str::from_utf8(run).unwrap_or("%3F"));
            }
        });
        result
    }
}

/// Whether `name` is spelt like a sysctl name (`kernel.panic`): 1 to [`MAX_SYSCTL_NAME_LEN`]
/// lowercase letters, digits, `_` and `.`, the alphabet of every name in the guest's table.
/// Whether the guest has it is the guest's answer (`unknown_sysctl`).
pub fn is_sysctl_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SYSCTL_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

/// Parses a decimal `u64` value: ASCII digits only (no sign, no spaces), at most 20 of them.
pub fn parse_u64(raw: &str) -> Option<u64> {
    if raw.is_empty() || raw.len() > 20 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}

/// Parses a decimal `u32` value: ASCII digits only, at most 10 of them.
pub fn parse_u32(raw: &str) -> Option<u32> {
    if raw.len() > 10 {
        return None;
    }
    parse_u64(raw).and_then(|v| u32::try_from(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    fn encode(bytes: &[u8]) -> ([u8; 1024], usize) {
        let mut out = [0u8; 1024];
        let mut len = 0;
        encode_value(bytes, &mut |run| {
            out[len..len + run.len()].copy_from_slice(run);
            len += run.len();
        });
        (out, len)
    }

    #[test]
    fn values_round_trip() {
        let mut all = [0u8; 256];
        for (i, b) in all.iter_mut().enumerate() {
            *b = i as u8;
        }
        for sample in
            [&b""[..], b"plain", b"a b", b"%=% =", b"line\nbreak\ttab", "caf\u{e9} \u{1f980}".as_bytes(), &all]
        {
            let (out, len) = encode(sample);
            let encoded = core::str::from_utf8(&out[..len]).unwrap();
            assert_eq!(len, encoded_len(sample));
            assert!(encoded.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'='));
            let mut buf = [0u8; 256];
            assert_eq!(decode_value(encoded, &mut buf).unwrap(), sample);
        }
    }

    #[test]
    fn encoding_is_uppercase_and_streams_runs() {
        let mut pieces = 0;
        encode_value(b"ab cd\n", &mut |_| pieces += 1);
        assert_eq!(pieces, 4, "ab, %20, cd, %0A");
        let (out, len) = encode(b"\xff=");
        assert_eq!(&out[..len], b"%FF%3D");
        let mut s = [0u8; 32];
        let mut w = Cursor(&mut s, 0);
        fmt::Write::write_fmt(&mut w, format_args!("{}", Encoded(b"a b"))).unwrap();
        assert_eq!(&w.0[..w.1], b"a%20b");
    }

    struct Cursor<'a>(&'a mut [u8], usize);
    impl fmt::Write for Cursor<'_> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.0[self.1..self.1 + s.len()].copy_from_slice(s.as_bytes());
            self.1 += s.len();
            Ok(())
        }
    }

    #[test]
    fn parses_requests_responses_and_hello() {
        let line = parse_line("12 sysctl_set name=kernel.panic value=10\r\n").unwrap();
        assert_eq!(line.id, 12);
        assert_eq!(line.verb(), Some(Verb::SysctlSet));
        let mut args = line.args();
        assert_eq!(args.next(), Some(("name", "kernel.panic")));
        assert_eq!(args.next(), Some(("value", "10")));
        assert_eq!(args.next(), None);
        assert_eq!(arg(&line, "value"), Some("10"));
        assert_eq!(arg(&line, "missing"), None);

        let line = parse_line("3 ok").unwrap();
        assert!(line.is_ok() && !line.is_err() && line.args().next().is_none());
        let line = parse_line("4 err code=busy message=try%20later").unwrap();
        assert!(line.is_err());
        assert_eq!(ErrorCode::from_name(line.arg("code").unwrap()), Some(ErrorCode::Busy));
        let line = parse_line("0 hello version=1 release=6.18.0-crashvisor cpus=2").unwrap();
        assert!(line.is_hello());
        assert_eq!(line.arg("cpus").and_then(parse_u32), Some(2));
        let line = parse_line("  5   ps   \n").unwrap();
        assert_eq!((line.id, line.word, line.args().count()), (5, "ps", 0));
        let line = parse_line("6 dmesg text=").unwrap();
        assert_eq!(line.arg("text"), Some(""));
    }

    #[test]
    fn rejects_hostile_lines_without_panicking() {
        use ProtocolError::*;
        let cases: &[(&str, ProtocolError)] = &[
            ("", EmptyLine),
            ("\n", EmptyLine),
            ("   ", EmptyLine),
            ("1", MissingWord),
            ("x ok", BadId),
            ("-1 ok", BadId),
            ("+1 ok", BadId),
            ("4294967296 ok", BadId),
            ("00000000000000000001 ok", BadId),
            ("99999999999999999999999 ok", BadId),
            ("1 OK", BadWord),
            ("1 _ok", BadWord),
            ("1 o\tk", BadWord),
            ("1 ok key", MissingEquals),
            ("1 ok =v", BadKey),
            ("1 ok K=v", BadKey),
            ("1 ok a=b=c", BadValueByte),
            ("1 ok a=%", BadEscape),
            ("1 ok a=%4", BadEscape),
            ("1 ok a=%zz", BadEscape),
            ("1 ok a=%\u{e9}", BadEscape),
            ("1 ok a=caf\u{e9}", BadValueByte),
            ("1 ok a=tab\there", BadValueByte),
            ("1 ok a=\rb", BadValueByte),
            ("1 ok a=b\n\n", BadValueByte),
        ];
        for (line, want) in cases {
            assert_eq!(parse_line(line), Err(*want), "{line:?}");
        }
        let long_word = "1 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        assert_eq!(parse_line(long_word), Err(BadWord));
        assert_eq!(parse_line("4294967295 ok").map(|l| l.id), Ok(u32::MAX));
    }

    #[test]
    fn lkdtm_requests_are_read_and_refused_with_reasons() {
        let read = |text: &'static str| {
            let line = parse_line(text).unwrap();
            LkdtmRequest::from_line(&line).map(|r| r.map_err(|e| (e.code(), e.to_string())))
        };
        assert_eq!(read("1 inject fault=panic cpu=1"), None, "the fault form");
        let direct = LkdtmRequest { kind: CrashType::BUG, point: CrashPoint::Direct, count: None, cpu: None };
        assert_eq!(read("1 inject lkdtm=BUG"), Some(Ok(direct)));
        let refused = |text| read(text).unwrap().unwrap_err();
        assert_eq!(refused("1 inject lkdtm=BUG fault=bug").0, ErrorCode::BadArgument);
        assert_eq!(refused("1 inject lkdtm=bug"), (ErrorCode::BadArgument, "unknown LKDTM crash type bug".into()));
        let (code, message) = refused("1 inject lkdtm=USERCOPY_KERNEL");
        assert_eq!(code, ErrorCode::Unsupported);
        assert!(message.starts_with("USERCOPY_KERNEL is not supported by this kernel: "), "{message}");
        assert_eq!(refused("1 inject lkdtm=BUG cpoint=NOWHERE").1, "unknown LKDTM crash point NOWHERE");
        assert_eq!(refused("1 inject lkdtm=BUG cpoint=SCSI_QUEUE_RQ").0, ErrorCode::Unsupported);
        assert_eq!(refused("1 inject lkdtm=BUG cpu=-1").0, ErrorCode::BadArgument);
        assert_eq!(
            refused("1 inject lkdtm=BUG cpoint=TIMERADD count=0").1,
            "count is not a number from 1 to 2147483647"
        );
        assert_eq!(refused("1 inject lkdtm=BUG cpoint=TIMERADD count=2147483648").0, ErrorCode::BadArgument);
        let all = read("1 inject cpu=1 count=7 cpoint=TIMERADD lkdtm=WARNING").unwrap().unwrap();
        assert_eq!(
            all,
            LkdtmRequest { kind: CrashType::WARNING, point: CrashPoint::Timeradd, count: Some(7), cpu: Some(1) }
        );
    }

    #[test]
    fn decode_checks_its_input_and_buffer() {
        let mut small = [0u8; 2];
        assert_eq!(decode_value("abc", &mut small), Err(ProtocolError::BufferTooSmall));
        assert_eq!(decode_value("%41%42", &mut small).unwrap(), b"AB");
        assert_eq!(decode_value("%6a", &mut small).unwrap(), b"j");
        assert_eq!(decode_value("%", &mut small), Err(ProtocolError::BadEscape));
        assert_eq!(decode_value("a b", &mut small), Err(ProtocolError::BadValueByte));
        let mut empty = [0u8; 0];
        assert_eq!(decode_value("", &mut empty).unwrap(), b"");
    }

    #[test]
    fn names_round_trip() {
        for v in Verb::ALL {
            assert_eq!(Verb::from_name(v.as_str()), Some(*v));
        }
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_name(c.as_str()), Some(*c));
        }
        for f in FaultKind::ALL {
            assert_eq!(FaultKind::from_name(f.as_str()), Some(*f));
        }
        assert_eq!(FaultKind::ALL.len(), 9);
        assert_eq!(FaultKind::from_name("sysrq_crash"), Some(FaultKind::SysrqCrash));
        assert_eq!(Verb::from_name("Hello"), None);
        assert_eq!(parse_u64("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64("18446744073709551616"), None);
        assert_eq!(parse_u64(""), None);
        assert_eq!(parse_u32("4294967296"), None);
    }

    #[test]
    fn sysctl_names_use_the_guest_alphabet() {
        for good in ["kernel.panic", "kernel.hung_task_timeout_secs", "vm.swappiness", "a"] {
            assert!(is_sysctl_name(good), "{good}");
        }
        let long = [b'k'; MAX_SYSCTL_NAME_LEN + 1];
        let long = core::str::from_utf8(&long).unwrap();
        for bad in ["", "kernel panic", "kernel.Panic", "kernel.a-b", "/proc/sys/kernel/panic", "k\u{e9}", long] {
            assert!(!is_sysctl_name(bad), "{bad}");
        }
    }
}
