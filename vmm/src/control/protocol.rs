//! The client side of the control socket: one JSON request per line in, one JSON response per
//! line out (see `docs/control-protocol.md`). Parsing and validation are pure, so every hostile
//! line is tested here; nothing a client sends can panic the VMM.

use std::time::Duration;

use crashvisor_abi::control::{
    self as wire, FaultKind, KdumpAction, KdumpOp, KexecKind, KexecOp, LkdtmRequest, Verb, MAX_MESSAGE_LEN,
    MAX_SYSCTL_NAME_LEN, MAX_SYSCTL_VALUE_LEN,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::guest::GuestRequest;

/// Longest request line a client may send, without its `\n`.
pub const MAX_LINE_LEN: usize = 64 * 1024;
/// How long the VMM waits for the guest's answer unless the request says otherwise.
pub const DEFAULT_GUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `timeout_ms` a request may ask for.
pub const MAX_GUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The `code` of an error response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlErrorCode {
    /// The line is not a JSON object.
    BadJson,
    /// No such command.
    UnknownCommand,
    /// A field is missing, unknown, or has a bad value.
    BadArgument,
    /// The line exceeds `MAX_LINE_LEN`.
    LineTooLong,
    /// The server already has its maximum of clients.
    TooManyClients,
    /// No machine is running (it is rebooting or stopping).
    VmUnavailable,
    /// The guest's control channel is not up (no hello yet, paused, or rebooting).
    GuestUnavailable,
    /// The guest did not answer in time.
    GuestTimeout,
    /// Too many requests are waiting for the guest.
    Busy,
    /// The VMM failed.
    Internal,
    /// The guest refused the request with this code.
    Guest(wire::ErrorCode),
}

impl ControlErrorCode {
    /// The code on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::UnknownCommand => "unknown_command",
            Self::BadArgument => "bad_argument",
            Self::LineTooLong => "line_too_long",
            Self::TooManyClients => "too_many_clients",
            Self::VmUnavailable => "vm_unavailable",
            Self::GuestUnavailable => "guest_unavailable",
            Self::GuestTimeout => "guest_timeout",
            Self::Busy => "busy",
            Self::Internal => "internal",
            Self::Guest(code) => code.as_str(),
        }
    }
}

/// An error response: a code for programs, a message for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlError {
    /// What kind of failure.
    pub code: ControlErrorCode,
    /// What went wrong, in a sentence.
    pub message: String,
}

impl ControlError {
    /// An error with `code` and `message`.
    pub fn new(code: ControlErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    fn bad_argument(message: impl Into<String>) -> Self {
        Self::new(ControlErrorCode::BadArgument, message)
    }
}

/// A valid request: the client's `id` (echoed in the response) and what to do.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientRequest {
    /// The client's id (any JSON number or string; null when absent).
    pub id: Value,
    /// The command.
    pub command: Command,
}

/// A request that could not be parsed, with the id to answer under (null if unknown).
#[derive(Clone, Debug, PartialEq)]
pub struct Rejected {
    /// The client's id, if it got that far.
    pub id: Value,
    /// Why the request was refused.
    pub error: ControlError,
}

/// What a client can ask.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Forward to the guest's control thread.
    Guest(GuestRequest),
    /// Inject an NMI into one vCPU, or all of them.
    Nmi {
        /// The vCPU; `None` for all.
        cpu: Option<usize>,
        /// Take a host-side dump once the guest has handled it.
        capture: bool,
    },
    /// Take a host-side dump of the running VM.
    Dump,
    /// Pause the VM.
    Pause,
    /// Resume the VM.
    Resume,
    /// Report the VM's state.
    Status,
    /// Read guest physical memory.
    ReadMemory {
        /// First guest physical address.
        gpa: u64,
        /// Bytes to read.
        len: usize,
    },
    /// Write guest physical memory.
    WriteMemory {
        /// First guest physical address.
        gpa: u64,
        /// The bytes.
        data: Vec<u8>,
    },
}

/// Parses one request line (without its `\n`).
pub fn parse_request(line: &[u8]) -> Result<ClientRequest, Rejected> {
    let reject =
        |id: &Value, code, message: String| Rejected { id: id.clone(), error: ControlError::new(code, message) };
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| reject(&Value::Null, ControlErrorCode::BadJson, format!("the request is not JSON: {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(reject(&Value::Null, ControlErrorCode::BadJson, "a request is a JSON object".into()));
    };
    let id = fields.remove("id").unwrap_or(Value::Null);
    if !matches!(id, Value::Null | Value::Number(_) | Value::String(_)) {
        return Err(reject(&Value::Null, ControlErrorCode::BadArgument, "\"id\" must be a number or a string".into()));
    }
    let cmd = match fields.remove("cmd") {
        Some(Value::String(cmd)) => cmd,
        Some(_) => return Err(reject(&id, ControlErrorCode::BadArgument, "\"cmd\" must be a string".into())),
        None => return Err(reject(&id, ControlErrorCode::BadArgument, "the request has no \"cmd\"".into())),
    };
    match parse_command(&cmd, fields) {
        Ok(command) => Ok(ClientRequest { id, command }),
        Err(error) => Err(Rejected { id, error }),
    }
}

/// The command names, for error messages.
const COMMANDS: &str =
    "hello, inject, sysctl_get, sysctl_set, ps, uptime, dmesg, kexec, kdump, nmi, dump, pause, resume, status, \
     read_memory, write_memory";

fn parse_command(cmd: &str, fields: Map<String, Value>) -> Result<Command, ControlError> {
    match cmd {
        "nmi" => {
            fields_of::<NmiFields>(fields).map(|f| Command::Nmi { cpu: f.cpu, capture: f.capture.unwrap_or(false) })
        }
        "dump" => fields_of::<NoFields>(fields).map(|_| Command::Dump),
        "pause" => fields_of::<NoFields>(fields).map(|_| Command::Pause),
        "resume" => fields_of::<NoFields>(fields).map(|_| Command::Resume),
        "status" => fields_of::<NoFields>(fields).map(|_| Command::Status),
        "read_memory" => fields_of::<ReadMemoryFields>(fields).map(|f| Command::ReadMemory { gpa: f.gpa, len: f.len }),
        "write_memory" => {
            let f: WriteMemoryFields = fields_of(fields)?;
            Ok(Command::WriteMemory { gpa: f.gpa, data: super::memory::decode_hex(&f.data_hex)? })
        }
        _ => match Verb::from_name(cmd) {
            Some(verb) => guest_request(verb, fields).map(Command::Guest),
            None => Err(ControlError::new(
                ControlErrorCode::UnknownCommand,
                format!("unknown command {cmd:?}; the commands are {COMMANDS}"),
            )),
        },
    }
}

fn fields_of<T: DeserializeOwned>(fields: Map<String, Value>) -> Result<T, ControlError> {
    serde_json::from_value(Value::Object(fields)).map_err(|e| ControlError::bad_argument(e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NmiFields {
    cpu: Option<usize>,
    capture: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadMemoryFields {
    gpa: u64,
    len: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteMemoryFields {
    gpa: u64,
    data_hex: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeoutOnly {
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectFields {
    fault: Option<String>,
    lkdtm: Option<String>,
    cpoint: Option<String>,
    count: Option<u32>,
    cpu: Option<u32>,
    duration_ms: Option<u64>,
    message: Option<String>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SysctlFields {
    name: String,
    value: Option<SysctlValue>,
    timeout_ms: Option<u64>,
}

/// A sysctl value as JSON gives it; numbers and booleans are sent as their text.
#[derive(Deserialize)]
#[serde(untagged)]
enum SysctlValue {
    Text(String),
    Unsigned(u64),
    Signed(i64),
    Bool(bool),
}

impl SysctlValue {
    fn into_text(self) -> String {
        match self {
            Self::Text(s) => s,
            Self::Unsigned(n) => n.to_string(),
            Self::Signed(n) => n.to_string(),
            Self::Bool(b) => u8::from(b).to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DmesgFields {
    since: Option<u64>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KexecFields {
    op: String,
    kind: Option<String>,
    cmdline: Option<String>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KdumpFields {
    op: String,
    dump_level: Option<u32>,
    final_action: Option<String>,
    failure_action: Option<String>,
    timeout_ms: Option<u64>,
}

/// Looks up a protocol name, or says which names there are.
fn name_of<T: Copy>(
    what: &str,
    value: &str,
    from_name: fn(&str) -> Option<T>,
    all: &[T],
    as_str: fn(T) -> &'static str,
) -> Result<T, ControlError> {
    from_name(value).ok_or_else(|| {
        let names: Vec<&str> = all.iter().map(|v| as_str(*v)).collect();
        ControlError::bad_argument(format!("unknown {what} {value:?}; the choices are {}", names.join(", ")))
    })
}

fn inject_args(f: InjectFields, args: &mut Vec<(&'static str, Vec<u8>)>) -> Result<(), ControlError> {
    match (f.fault, f.lkdtm) {
        (Some(fault), None) if f.cpoint.is_none() && f.count.is_none() => {
            fault_args(&fault, f.cpu, f.duration_ms, f.message, args)
        }
        (Some(_), None) => Err(ControlError::bad_argument("\"cpoint\" and \"count\" go with \"lkdtm\", not \"fault\"")),
        (None, Some(lkdtm)) if f.duration_ms.is_none() && f.message.is_none() => {
            let request = LkdtmRequest::new(&lkdtm, f.cpoint.as_deref(), f.count, f.cpu).map_err(|e| {
                let code = match e.code() {
                    wire::ErrorCode::BadArgument => ControlErrorCode::BadArgument,
                    code => ControlErrorCode::Guest(code),
                };
                ControlError::new(code, e.to_string())
            })?;
            args.extend(request.args().map(|(key, value)| (key, value.to_string().into_bytes())));
            Ok(())
        }
        (None, Some(_)) => {
            Err(ControlError::bad_argument("\"duration_ms\" and \"message\" go with \"fault\", not \"lkdtm\""))
        }
        (Some(_), Some(_)) => Err(ControlError::bad_argument("give either \"fault\" or \"lkdtm\", not both")),
        (None, None) => Err(ControlError::bad_argument(
            "inject needs a \"fault\" (softlockup, panic, ...) or an LKDTM crash type in \"lkdtm\" (PANIC, ...)",
        )),
    }
}

fn fault_args(
    fault: &str,
    cpu: Option<u32>,
    duration_ms: Option<u64>,
    message: Option<String>,
    args: &mut Vec<(&'static str, Vec<u8>)>,
) -> Result<(), ControlError> {
    let fault = name_of("fault", fault, FaultKind::from_name, FaultKind::ALL, FaultKind::as_str)?;
    args.push((wire::key::FAULT, fault.as_str().into()));
    args.push((wire::key::CPU, cpu.unwrap_or(0).to_string().into()));
    if let Some(ms) = duration_ms {
        args.push((wire::key::DURATION_MS, ms.to_string().into()));
    }
    if let Some(message) = message {
        if message.len() > MAX_MESSAGE_LEN {
            return Err(ControlError::bad_argument(format!(
                "the message is {} bytes; the limit is {MAX_MESSAGE_LEN}",
                message.len()
            )));
        }
        args.push((wire::key::MESSAGE, message.into()));
    }
    Ok(())
}

fn kexec_args(f: KexecFields, args: &mut Vec<(&'static str, Vec<u8>)>) -> Result<(), ControlError> {
    let op = name_of("kexec op", &f.op, KexecOp::from_name, KexecOp::ALL, KexecOp::as_str)?;
    args.push((wire::key::OP, op.as_str().into()));
    let takes_kind = matches!(op, KexecOp::Load | KexecOp::Unload);
    match (f.kind, takes_kind) {
        (Some(kind), true) => {
            let kind = name_of("kexec kind", &kind, KexecKind::from_name, KexecKind::ALL, KexecKind::as_str)?;
            args.push((wire::key::KIND, kind.as_str().into()));
        }
        (Some(_), false) => return Err(ControlError::bad_argument(format!("kexec op {} takes no \"kind\"", op))),
        (None, _) => {}
    }
    match (f.cmdline, op) {
        (Some(cmdline), KexecOp::Load) => args.push((wire::key::CMDLINE, cmdline.into())),
        (Some(_), _) => return Err(ControlError::bad_argument(format!("kexec op {op} takes no \"cmdline\""))),
        (None, _) => {}
    }
    Ok(())
}

fn kdump_args(f: KdumpFields, args: &mut Vec<(&'static str, Vec<u8>)>) -> Result<(), ControlError> {
    let op = name_of("kdump op", &f.op, KdumpOp::from_name, KdumpOp::ALL, KdumpOp::as_str)?;
    args.push((wire::key::OP, op.as_str().into()));
    let settings = [
        (wire::key::DUMP_LEVEL, f.dump_level.map(|l| l.to_string())),
        (wire::key::FINAL_ACTION, f.final_action),
        (wire::key::FAILURE_ACTION, f.failure_action),
    ];
    for (key, value) in settings {
        let Some(value) = value else { continue };
        if op != KdumpOp::Config {
            return Err(ControlError::bad_argument(format!("\"{key}\" goes with kdump op config, not {op}")));
        }
        match key {
            wire::key::DUMP_LEVEL if value.parse::<u32>().map_or(true, |l| l > 31) => {
                return Err(ControlError::bad_argument(format!("dump_level {value} is outside 0..=31")))
            }
            wire::key::DUMP_LEVEL => {}
            _ => {
                name_of(key, &value, KdumpAction::from_name, KdumpAction::ALL, KdumpAction::as_str)?;
            }
        }
        args.push((key, value.into()));
    }
    Ok(())
}

fn timeout(ms: Option<u64>) -> Result<Duration, ControlError> {
    match ms {
        None => Ok(DEFAULT_GUEST_TIMEOUT),
        Some(ms) if ms > 0 && Duration::from_millis(ms) <= MAX_GUEST_TIMEOUT => Ok(Duration::from_millis(ms)),
        Some(ms) => {
            Err(ControlError::bad_argument(format!("timeout_ms {ms} is outside 1..={}", MAX_GUEST_TIMEOUT.as_millis())))
        }
    }
}

fn guest_request(verb: Verb, fields: Map<String, Value>) -> Result<GuestRequest, ControlError> {
    let mut args: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let timeout_ms = match verb {
        Verb::Hello | Verb::Ps | Verb::Uptime => fields_of::<TimeoutOnly>(fields)?.timeout_ms,
        Verb::Inject => {
            let f: InjectFields = fields_of(fields)?;
            let timeout_ms = f.timeout_ms;
            inject_args(f, &mut args)?;
            timeout_ms
        }
        Verb::SysctlGet | Verb::SysctlSet => {
            let f: SysctlFields = fields_of(fields)?;
            check_sysctl_name(&f.name)?;
            args.push((wire::key::NAME, f.name.into()));
            match (verb, f.value) {
                (Verb::SysctlGet, Some(_)) => return Err(ControlError::bad_argument("sysctl_get takes no \"value\"")),
                (Verb::SysctlSet, None) => return Err(ControlError::bad_argument("sysctl_set needs a \"value\"")),
                (_, Some(value)) => {
                    let value = value.into_text();
                    if value.len() > MAX_SYSCTL_VALUE_LEN {
                        return Err(ControlError::bad_argument(format!(
                            "the value is {} bytes; the limit is {MAX_SYSCTL_VALUE_LEN}",
                            value.len()
                        )));
                    }
                    args.push((wire::key::VALUE, value.into()));
                }
                (_, None) => {}
            }
            f.timeout_ms
        }
        Verb::Dmesg => {
            let f: DmesgFields = fields_of(fields)?;
            args.push((wire::key::SINCE, f.since.unwrap_or(0).to_string().into()));
            f.timeout_ms
        }
        Verb::Kexec => {
            let f: KexecFields = fields_of(fields)?;
            let timeout_ms = f.timeout_ms;
            kexec_args(f, &mut args)?;
            timeout_ms
        }
        Verb::Kdump => {
            let f: KdumpFields = fields_of(fields)?;
            let timeout_ms = f.timeout_ms;
            kdump_args(f, &mut args)?;
            timeout_ms
        }
    };
    Ok(GuestRequest { verb, args, timeout: timeout(timeout_ms)? })
}

fn check_sysctl_name(name: &str) -> Result<(), ControlError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_SYSCTL_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(ControlError::bad_argument(format!(
            "{name:?} is not a sysctl name (like kernel.panic: lowercase letters, digits, '_', '.', '-'; at most {MAX_SYSCTL_NAME_LEN} bytes)"
        )))
    }
}

#[derive(Serialize)]
struct OkResponse<'a> {
    id: &'a Value,
    ok: bool,
    result: Value,
}

#[derive(Serialize)]
struct ErrorResponse<'a> {
    id: &'a Value,
    ok: bool,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'static str,
    message: &'a str,
}

fn to_line(value: &impl Serialize) -> String {
    // Serializing plain structs of JSON values and strings cannot fail.
    let mut line = serde_json::to_string(value).unwrap_or_else(|e| {
        tracing::error!("cannot encode a response: {e}");
        r#"{"id":null,"ok":false,"error":{"code":"internal","message":"encoding failed"}}"#.into()
    });
    line.push('\n');
    line
}

/// A success response line (with its `\n`): `{"id":..,"ok":true,"result":..}`.
pub fn ok_line(id: &Value, result: Value) -> String {
    to_line(&OkResponse { id, ok: true, result })
}

/// An error response line (with its `\n`): `{"id":..,"ok":false,"error":{"code":..,"message":..}}`.
pub fn error_line(id: &Value, error: &ControlError) -> String {
    to_line(&ErrorResponse { id, ok: false, error: ErrorBody { code: error.code.as_str(), message: &error.message } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(line: &str) -> Result<ClientRequest, Rejected> {
        parse_request(line.as_bytes())
    }

    fn code(line: &str) -> &'static str {
        parse(line).unwrap_err().error.code.as_str()
    }

    #[test]
    fn parses_the_documented_example() {
        let req = parse(r#"{"id":1,"cmd":"inject","fault":"softlockup","cpu":1,"duration_ms":5000}"#).unwrap();
        assert_eq!(req.id, json!(1));
        let Command::Guest(g) = req.command else { panic!("not a guest command") };
        assert_eq!(g.verb, Verb::Inject);
        assert_eq!(
            g.args,
            vec![("fault", b"softlockup".to_vec()), ("cpu", b"1".to_vec()), ("duration_ms", b"5000".to_vec()),]
        );
        assert_eq!(g.timeout, DEFAULT_GUEST_TIMEOUT);
    }

    #[test]
    fn parses_local_commands() {
        assert_eq!(
            parse(r#"{"id":"a","cmd":"nmi","cpu":1}"#).unwrap(),
            ClientRequest { id: json!("a"), command: Command::Nmi { cpu: Some(1), capture: false } }
        );
        assert_eq!(parse(r#"{"cmd":"nmi"}"#).unwrap().command, Command::Nmi { cpu: None, capture: false });
        assert_eq!(parse(r#"{"cmd":"pause"}"#).unwrap().id, Value::Null);
        assert_eq!(parse(r#"{"cmd":"resume"}"#).unwrap().command, Command::Resume);
        assert_eq!(parse(r#"{"cmd":"status"}"#).unwrap().command, Command::Status);
    }

    #[test]
    fn parses_guest_commands() {
        let guest = |line: &str| match parse(line).unwrap().command {
            Command::Guest(g) => g,
            other => panic!("{other:?}"),
        };
        let g = guest(r#"{"cmd":"sysctl_set","name":"kernel.panic","value":10,"timeout_ms":500}"#);
        assert_eq!(g.args[1], ("value", b"10".to_vec()));
        assert_eq!(g.timeout, Duration::from_millis(500));
        let g = guest(r#"{"cmd":"sysctl_set","name":"kernel.watchdog","value":true}"#);
        assert_eq!(g.args[1], ("value", b"1".to_vec()));
        let g = guest(r#"{"cmd":"sysctl_get","name":"kernel.softlockup_panic"}"#);
        assert_eq!(g.args, vec![("name", b"kernel.softlockup_panic".to_vec())]);
        let g = guest(r#"{"cmd":"dmesg"}"#);
        assert_eq!(g.args, vec![("since", b"0".to_vec())]);
        let g = guest(r#"{"cmd":"inject","fault":"panic","message":"a b"}"#);
        assert_eq!(g.args[1], ("cpu", b"0".to_vec()), "cpu defaults to 0");
        assert_eq!(g.args[2], ("message", b"a b".to_vec()));
        for verb in ["hello", "ps", "uptime"] {
            assert_eq!(guest(&format!(r#"{{"cmd":"{verb}"}}"#)).args, vec![]);
        }
    }

    #[test]
    fn parses_lkdtm_injections_and_refuses_what_the_guest_would() {
        let req =
            parse(r#"{"cmd":"inject","lkdtm":"PANIC_IN_HARDIRQ","cpoint":"INT_HARDWARE_ENTRY","count":3,"cpu":1}"#);
        let Command::Guest(g) = req.unwrap().command else { panic!("not a guest command") };
        let line = super::super::guest::request_line(5, &g).unwrap();
        assert_eq!(line, "5 inject lkdtm=PANIC_IN_HARDIRQ cpoint=INT_HARDWARE_ENTRY count=3 cpu=1\n");
        let Command::Guest(g) = parse(r#"{"cmd":"inject","lkdtm":"BUG"}"#).unwrap().command else { panic!() };
        assert_eq!(g.args, vec![("lkdtm", b"BUG".to_vec()), ("cpoint", b"DIRECT".to_vec())]);

        let refused = |line: &str| {
            let e = parse(line).unwrap_err().error;
            (e.code.as_str(), e.message)
        };
        let (code, message) = refused(r#"{"cmd":"inject","lkdtm":"USERCOPY_KERNEL"}"#);
        assert_eq!(code, "unsupported");
        assert!(
            message.starts_with("USERCOPY_KERNEL is not supported by this kernel: there is no user space"),
            "{message}"
        );
        assert_eq!(refused(r#"{"cmd":"inject","lkdtm":"BUG","cpoint":"SCSI_QUEUE_RQ"}"#).0, "unsupported");
        assert_eq!(refused(r#"{"cmd":"inject","lkdtm":"panic"}"#).1, "unknown LKDTM crash type panic");
        assert_eq!(refused(r#"{"cmd":"inject","lkdtm":"BUG","cpoint":"NOWHERE"}"#).0, "bad_argument");
        for line in [
            r#"{"cmd":"inject","lkdtm":"BUG","cpoint":"TIMERADD","count":0}"#,
            r#"{"cmd":"inject","lkdtm":"BUG","cpoint":"TIMERADD","count":2147483648}"#,
            r#"{"cmd":"inject","lkdtm":"BUG","count":-1}"#,
            r#"{"cmd":"inject","lkdtm":"BUG","fault":"bug"}"#,
            r#"{"cmd":"inject","lkdtm":"SOFTLOCKUP","duration_ms":100}"#,
            r#"{"cmd":"inject","fault":"panic","cpoint":"TIMERADD"}"#,
            r#"{"cmd":"inject","lkdtm":7}"#,
        ] {
            assert_eq!(refused(line).0, "bad_argument", "{line}");
        }
    }

    #[test]
    fn rejects_hostile_requests_with_codes() {
        assert_eq!(code(""), "bad_json");
        assert_eq!(code("not json"), "bad_json");
        assert_eq!(code("[1,2]"), "bad_json");
        assert_eq!(code("\"cmd\""), "bad_json");
        assert_eq!(code("{\"cmd\":\"status\"} trailing"), "bad_json");
        assert_eq!(code(r#"{"id":1}"#), "bad_argument");
        assert_eq!(code(r#"{"id":{},"cmd":"status"}"#), "bad_argument");
        assert_eq!(code(r#"{"cmd":7}"#), "bad_argument");
        assert_eq!(code(r#"{"cmd":"reboot"}"#), "unknown_command");
        assert_eq!(code(r#"{"cmd":"Hello"}"#), "unknown_command");
        assert_eq!(code(r#"{"cmd":"status","extra":1}"#), "bad_argument");
        assert_eq!(code(r#"{"cmd":"nmi","cpu":-1}"#), "bad_argument");
        assert_eq!(code(r#"{"cmd":"nmi","cpu":"0"}"#), "bad_argument");
        assert_eq!(code(r#"{"cmd":"inject"}"#), "bad_argument");
        assert_eq!(code(r#"{"cmd":"inject","fault":"meltdown"}"#), "bad_argument");
        assert_eq!(code(r#"{"cmd":"inject","fault":"panic","cpu":4294967296}"#), "bad_argument");
        let long = "x".repeat(MAX_MESSAGE_LEN + 1);
        assert_eq!(code(&format!(r#"{{"cmd":"inject","fault":"panic","message":"{long}"}}"#)), "bad_argument");
        assert_eq!(code(r#"{"cmd":"sysctl_get"}"#), "bad_argument");
        assert_eq!(code(r#"{"cmd":"sysctl_get","name":"kernel panic"}"#), "bad_argument");
        assert_eq!(code(r#"{"cmd":"sysctl_get","name":"kernel.panic","value":1}"#), "bad_argument");
        assert_eq!(code(r#"{"cmd":"sysctl_set","name":"kernel.panic"}"#), "bad_argument");
        assert_eq!(code(r#"{"cmd":"sysctl_set","name":"kernel.panic","value":[1]}"#), "bad_argument");
        assert_eq!(code(r#"{"cmd":"uptime","timeout_ms":0}"#), "bad_argument");
        assert_eq!(code(r#"{"cmd":"uptime","timeout_ms":999999999}"#), "bad_argument");
        assert_eq!(code(r#"{"cmd":"dmesg","since":-5}"#), "bad_argument");
        // The id is echoed whenever it was readable.
        assert_eq!(parse(r#"{"id":9,"cmd":"bogus"}"#).unwrap_err().id, json!(9));
        assert_eq!(parse(&"\u{0}".repeat(10)).unwrap_err().id, Value::Null);
        assert!(parse_request(b"\xff\xfe{}").is_err());
    }

    #[test]
    fn responses_are_single_json_lines() {
        let ok = ok_line(&json!(1), json!({"pid": 12}));
        assert_eq!(ok, "{\"id\":1,\"ok\":true,\"result\":{\"pid\":12}}\n");
        let err = error_line(&Value::Null, &ControlError::new(ControlErrorCode::GuestTimeout, "no answer\nin 10 s"));
        assert_eq!(err.matches('\n').count(), 1);
        let v: Value = serde_json::from_str(&err).unwrap();
        assert_eq!(v["error"]["code"], "guest_timeout");
        assert_eq!(ControlErrorCode::Guest(wire::ErrorCode::UnknownSysctl).as_str(), "unknown_sysctl");
    }
}
