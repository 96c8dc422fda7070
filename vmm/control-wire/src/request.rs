//! Requests: one JSON object per line, tagged by `cmd`, with an optional `id` the response
//! echoes. [`parse_request`] reads a client's line strictly (unknown fields, wrong types and
//! out-of-range values are refused with the documented codes) and never panics.

use std::time::Duration;

use crashvisor_abi::control::{
    is_sysctl_name, KdumpAction, KdumpOp, KexecKind, KexecOp, Verb, MAX_SYSCTL_NAME_LEN, MAX_SYSCTL_VALUE_LEN,
};
use crashvisor_abi::dump::DUMP_LEVEL_ALL;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::inject::Injection;
use crate::response::{ControlError, ControlErrorCode};

/// Longest request line a client may send, without its `\n`.
pub const MAX_LINE_LEN: usize = 64 * 1024;
/// How long the VMM waits for the guest's answer unless the request says otherwise.
pub const DEFAULT_GUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `timeout_ms` a request may ask for.
pub const MAX_GUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Most bytes one `read_memory` returns or one `write_memory` writes (the hex text of a write
/// must fit in a request line).
pub const MAX_MEMORY_ACCESS: usize = 16 * 1024;

/// What a client can ask. The VMM answers the first eight itself and forwards the others to
/// the guest's control thread. Variants without fields are written `Status {}` so that unknown
/// fields are refused for them too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The VM's state.
    Status {},
    /// Inject an NMI into one vCPU, or all of them.
    Nmi {
        /// The vCPU; all when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cpu: Option<usize>,
        /// Take a host-side dump once the guest has handled it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        capture: bool,
    },
    /// Take a host-side dump of the running VM.
    Dump {},
    /// Pause the VM.
    Pause {},
    /// Resume the VM.
    Resume {},
    /// Power the VM off and end the VMM (a dump being written finishes first).
    Shutdown {},
    /// Read guest physical memory.
    ReadMemory {
        /// First guest physical address.
        gpa: u64,
        /// Bytes to read, 1 to `MAX_MEMORY_ACCESS`.
        len: usize,
    },
    /// Write guest physical memory.
    WriteMemory {
        /// First guest physical address.
        gpa: u64,
        /// The bytes as hex, 1 to `MAX_MEMORY_ACCESS` of them.
        data_hex: String,
    },
    /// The guest's protocol version, release and CPUs.
    Hello {},
    /// Inject a fault of ours or an LKDTM crash type.
    Inject(Injection),
    /// Read a sysctl.
    SysctlGet {
        /// Its name (`kernel.panic`).
        name: String,
    },
    /// Write a sysctl; the answer is the value read back.
    SysctlSet {
        /// Its name.
        name: String,
        /// The value.
        value: SysctlValue,
    },
    /// The shell's `ps` table.
    Ps {},
    /// Nanoseconds since the guest booted.
    Uptime {},
    /// Kernel log records.
    Dmesg {
        /// The first record sequence number (default 0).
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
    },
    /// `kexec -l/-p/-u/-e` and its status.
    Kexec {
        /// What to do.
        #[serde(with = "crate::names")]
        op: KexecOp,
        /// Which image, for `load` and `unload` (default `normal`).
        #[serde(default, with = "crate::names::option", skip_serializing_if = "Option::is_none")]
        kind: Option<KexecKind>,
        /// The new kernel's command line, for `load`.
        #[serde(skip_serializing_if = "Option::is_none")]
        cmdline: Option<String>,
    },
    /// The kdump service: start, stop, status, or its configuration.
    Kdump {
        /// What to do.
        #[serde(with = "crate::names")]
        op: KdumpOp,
        /// `config`: makedumpfile's `-d` level, 0 to 31.
        #[serde(skip_serializing_if = "Option::is_none")]
        dump_level: Option<u32>,
        /// `config`: what the capture kernel does after a dump.
        #[serde(default, with = "crate::names::option", skip_serializing_if = "Option::is_none")]
        final_action: Option<KdumpAction>,
        /// `config`: the same after a failed dump.
        #[serde(default, with = "crate::names::option", skip_serializing_if = "Option::is_none")]
        failure_action: Option<KdumpAction>,
    },
}

/// A sysctl value as JSON gives it; the guest gets numbers and booleans (1 or 0) as text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SysctlValue {
    /// Text.
    Text(String),
    /// A non-negative number.
    Unsigned(u64),
    /// A negative number.
    Signed(i64),
    /// A boolean.
    Bool(bool),
}

impl SysctlValue {
    /// The value as the guest reads it.
    pub fn text(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            Self::Unsigned(n) => n.to_string(),
            Self::Signed(n) => n.to_string(),
            Self::Bool(b) => u8::from(*b).to_string(),
        }
    }
}

impl Request {
    /// The command's name (its `cmd`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Status {} => "status",
            Self::Nmi { .. } => "nmi",
            Self::Dump {} => "dump",
            Self::Pause {} => "pause",
            Self::Resume {} => "resume",
            Self::Shutdown {} => "shutdown",
            Self::ReadMemory { .. } => "read_memory",
            Self::WriteMemory { .. } => "write_memory",
            Self::Hello { .. } => "hello",
            Self::Inject(_) => "inject",
            Self::SysctlGet { .. } => "sysctl_get",
            Self::SysctlSet { .. } => "sysctl_set",
            Self::Ps { .. } => "ps",
            Self::Uptime { .. } => "uptime",
            Self::Dmesg { .. } => "dmesg",
            Self::Kexec { .. } => "kexec",
            Self::Kdump { .. } => "kdump",
        }
    }

    /// The guest protocol's verb that carries this request, or `None` for the VMM's own
    /// commands (the VMM answers them without the guest).
    pub fn guest_verb(&self) -> Option<Verb> {
        Some(match self {
            Self::Hello {} => Verb::Hello,
            Self::Inject(_) => Verb::Inject,
            Self::SysctlGet { .. } => Verb::SysctlGet,
            Self::SysctlSet { .. } => Verb::SysctlSet,
            Self::Ps {} => Verb::Ps,
            Self::Uptime {} => Verb::Uptime,
            Self::Dmesg { .. } => Verb::Dmesg,
            Self::Kexec { .. } => Verb::Kexec,
            Self::Kdump { .. } => Verb::Kdump,
            Self::Status {}
            | Self::Nmi { .. }
            | Self::Dump {}
            | Self::Pause {}
            | Self::Resume {}
            | Self::Shutdown {}
            | Self::ReadMemory { .. }
            | Self::WriteMemory { .. } => return None,
        })
    }

    /// Checks what serde cannot: lengths, ranges, names and which fields go together.
    pub fn validate(&self) -> Result<(), ControlError> {
        match self {
            Self::ReadMemory { len, .. } if *len == 0 || *len > MAX_MEMORY_ACCESS => {
                Err(bad(format!("len {len} is outside 1..={MAX_MEMORY_ACCESS}")))
            }
            Self::WriteMemory { data_hex, .. } if data_hex.is_empty() => Err(bad("data_hex is empty")),
            Self::WriteMemory { data_hex, .. } => crate::hex::decode(data_hex).map(drop).map_err(bad),
            Self::Inject(injection) => injection.check(),
            Self::SysctlGet { name, .. } => check_sysctl_name(name),
            Self::SysctlSet { name, value, .. } => {
                check_sysctl_name(name)?;
                match value.text().len() {
                    len if len > MAX_SYSCTL_VALUE_LEN => {
                        Err(bad(format!("the value is {len} bytes; the limit is {MAX_SYSCTL_VALUE_LEN}")))
                    }
                    _ => Ok(()),
                }
            }
            Self::Kexec { op, kind, cmdline, .. } => match (op, kind, cmdline) {
                (KexecOp::Exec | KexecOp::Status, Some(_), _) => Err(bad(format!("kexec op {op} takes no \"kind\""))),
                (KexecOp::Load, _, _) | (_, _, None) => Ok(()),
                (_, _, Some(_)) => Err(bad(format!("kexec op {op} takes no \"cmdline\""))),
            },
            Self::Kdump { op, dump_level, final_action, failure_action, .. } => {
                let settings = [
                    ("dump_level", dump_level.is_some()),
                    ("final_action", final_action.is_some()),
                    ("failure_action", failure_action.is_some()),
                ];
                match settings.iter().find(|(_, given)| *given) {
                    Some((key, _)) if *op != KdumpOp::Config => {
                        Err(bad(format!("\"{key}\" goes with kdump op config, not {op}")))
                    }
                    _ => match dump_level.filter(|&level| level > DUMP_LEVEL_ALL) {
                        Some(level) => Err(bad(format!("dump_level {level} is outside 0..={DUMP_LEVEL_ALL}"))),
                        None => Ok(()),
                    },
                }
            }
            _ => Ok(()),
        }
    }

    /// The request line under `id`, with its `\n`.
    pub fn to_line(&self, id: impl Into<Value>) -> String {
        crate::to_line(&ClientRequest { id: id.into(), timeout_ms: None, request: self.clone() })
    }
}

fn bad(message: impl Into<String>) -> ControlError {
    ControlError::bad_argument(message)
}

fn check_sysctl_name(name: &str) -> Result<(), ControlError> {
    if is_sysctl_name(name) {
        return Ok(());
    }
    Err(bad(format!(
        "{name:?} is not a sysctl name (like kernel.panic: lowercase letters, digits, '_' and '.'; at most \
         {MAX_SYSCTL_NAME_LEN} bytes)"
    )))
}

/// A request with what goes beside its `cmd`: the id its response carries (any JSON number or
/// string; null when absent) and, for a guest command, how long the VMM waits for the guest's
/// answer (`timeout_ms`, 1 to 120000; 10000 when absent).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClientRequest {
    /// The client's id.
    pub id: Value,
    /// The wait for the guest, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The request.
    #[serde(flatten)]
    pub request: Request,
}

impl ClientRequest {
    /// How long the VMM waits for the guest's answer.
    pub fn guest_timeout(&self) -> Duration {
        self.timeout_ms.map_or(DEFAULT_GUEST_TIMEOUT, Duration::from_millis)
    }
}

/// A request line that was refused, and the id to answer under (null if it was not read).
#[derive(Clone, Debug, PartialEq)]
pub struct Rejected {
    /// The client's id, if it got that far.
    pub id: Value,
    /// Why the request was refused.
    pub error: ControlError,
}

/// Reads one request line (without its `\n`).
pub fn parse_request(line: &[u8]) -> Result<ClientRequest, Rejected> {
    let reject = |id: &Value, error| Rejected { id: id.clone(), error };
    let bad_json = |message: String| reject(&Value::Null, ControlError::new(ControlErrorCode::BadJson, message));
    let value: Value = serde_json::from_slice(line).map_err(|e| bad_json(format!("the request is not JSON: {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(bad_json("a request is a JSON object".into()));
    };
    let id = fields.remove("id").unwrap_or(Value::Null);
    if !matches!(id, Value::Null | Value::Number(_) | Value::String(_)) {
        return Err(reject(&Value::Null, bad("\"id\" must be a number or a string")));
    }
    let cmd = match fields.get("cmd") {
        Some(Value::String(cmd)) => cmd.clone(),
        Some(_) => return Err(reject(&id, bad("\"cmd\" must be a string"))),
        None => return Err(reject(&id, bad("the request has no \"cmd\""))),
    };
    let timeout_ms = fields.remove("timeout_ms").map(Option::<u64>::deserialize).transpose().map(Option::flatten);
    let request = match Request::deserialize(Value::Object(fields)) {
        Ok(request) => request,
        Err(e) => return Err(reject(&id, refusal(&cmd, e))),
    };
    let checked = timeout_ms.map_err(|e| bad(format!("timeout_ms: {e}"))).and_then(|timeout_ms| {
        check_timeout(&request, timeout_ms)?;
        request.validate()?;
        Ok(timeout_ms)
    });
    match checked {
        Ok(timeout_ms) => Ok(ClientRequest { id, timeout_ms, request }),
        Err(error) => Err(reject(&id, error)),
    }
}

fn check_timeout(request: &Request, timeout_ms: Option<u64>) -> Result<(), ControlError> {
    match timeout_ms {
        Some(_) if request.guest_verb().is_none() => Err(bad(format!("{} takes no \"timeout_ms\"", request.name()))),
        Some(ms) if ms == 0 || Duration::from_millis(ms) > MAX_GUEST_TIMEOUT => {
            Err(bad(format!("timeout_ms {ms} is outside 1..={}", MAX_GUEST_TIMEOUT.as_millis())))
        }
        _ => Ok(()),
    }
}

/// Why a request that did not deserialize was refused: an unknown command, or a bad field. A
/// request holding nothing but its `cmd` can fail as an unknown variant only if the `cmd` is.
fn refusal(cmd: &str, error: serde_json::Error) -> ControlError {
    match Request::deserialize(json!({ "cmd": cmd })) {
        Err(unknown) if unknown.to_string().starts_with("unknown variant") => ControlError::new(
            ControlErrorCode::UnknownCommand,
            unknown.to_string().replacen("unknown variant", "unknown command", 1),
        ),
        _ => bad(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crashvisor_abi::control::{FaultKind, MAX_MESSAGE_LEN};
    use crashvisor_abi::lkdtm::{CrashPoint, CrashType};

    fn parse(line: &str) -> Result<ClientRequest, Rejected> {
        parse_request(line.as_bytes())
    }

    fn code(line: &str) -> &'static str {
        parse(line).unwrap_err().error.code.as_str()
    }

    #[test]
    fn parses_the_documented_example() {
        let line = r#"{"id":1,"cmd":"inject","fault":"softlockup","cpu":1,"duration_ms":5000}"#;
        let req = parse(line).unwrap();
        assert_eq!(req.id, json!(1));
        let inject = Request::Inject(Injection::Fault {
            fault: FaultKind::SoftLockup,
            cpu: Some(1),
            duration_ms: Some(5000),
            message: None,
        });
        assert_eq!(req.request, inject);
        assert_eq!(req.guest_timeout(), DEFAULT_GUEST_TIMEOUT);
        assert_eq!(inject.to_line(1), format!("{line}\n"), "the same line back");
    }

    #[test]
    fn lkdtm_injections_are_typed_and_checked_as_the_guest_checks_them() {
        let line =
            r#"{"id":2,"cmd":"inject","lkdtm":"PANIC_IN_HARDIRQ","cpoint":"INT_HARDWARE_ENTRY","count":3,"cpu":1}"#;
        let request = parse(line).unwrap().request;
        let lkdtm = Injection::lkdtm_at(CrashType::PANIC_IN_HARDIRQ, CrashPoint::IntHardwareEntry, Some(3), Some(1));
        assert_eq!(request, Request::Inject(lkdtm.clone()));
        assert_eq!(request.guest_verb(), Some(Verb::Inject));
        assert_eq!(Request::Inject(lkdtm).to_line(2), format!("{line}\n"), "the same line back");
        let refused = |line: &str| parse(line).map(drop).map_err(|e| e.error.code.as_str());
        assert_eq!(refused(r#"{"cmd":"inject","lkdtm":"USERCOPY_KERNEL"}"#), Err("unsupported"));
        assert_eq!(refused(r#"{"cmd":"inject","lkdtm":"BUG","cpoint":"FS_SUBMIT_BH"}"#), Err("unsupported"));
        assert_eq!(refused(r#"{"cmd":"inject","lkdtm":"BUG","cpoint":"TIMERADD","count":0}"#), Err("bad_argument"));
        assert_eq!(refused(r#"{"cmd":"inject","lkdtm":"BUG","fault":"bug"}"#), Err("bad_argument"));
        assert_eq!(refused(r#"{"cmd":"inject","lkdtm":"BUG","timeout_ms":500}"#), Ok(()));
    }

    #[test]
    fn parses_local_commands() {
        assert_eq!(
            parse(r#"{"id":"a","cmd":"nmi","cpu":1}"#).unwrap(),
            ClientRequest { id: json!("a"), timeout_ms: None, request: Request::Nmi { cpu: Some(1), capture: false } }
        );
        assert_eq!(parse(r#"{"cmd":"nmi"}"#).unwrap().request, Request::Nmi { cpu: None, capture: false });
        assert_eq!(parse(r#"{"cmd":"pause"}"#).unwrap().id, Value::Null);
        assert_eq!(parse(r#"{"cmd":"resume"}"#).unwrap().request, Request::Resume {});
        assert_eq!(parse(r#"{"cmd":"status"}"#).unwrap().request, Request::Status {});
        assert_eq!(parse(r#"{"cmd":"shutdown"}"#).unwrap().request, Request::Shutdown {});
        assert_eq!(Request::Shutdown {}.to_line(3), "{\"id\":3,\"cmd\":\"shutdown\"}\n");
    }

    #[test]
    fn guest_commands_keep_their_values_and_timeouts() {
        let request = |line: &str| parse(line).unwrap().request;
        let set = parse(r#"{"cmd":"sysctl_set","name":"kernel.panic","value":10,"timeout_ms":500}"#).unwrap();
        assert_eq!(set.guest_timeout(), Duration::from_millis(500));
        let Request::SysctlSet { value, .. } = set.request else { panic!("{set:?}") };
        assert_eq!(value.text(), "10");
        let Request::SysctlSet { value, .. } = request(r#"{"cmd":"sysctl_set","name":"kernel.watchdog","value":true}"#)
        else {
            panic!("not a sysctl_set")
        };
        assert_eq!(value.text(), "1");
        let kdump = request(r#"{"cmd":"kdump","op":"config","dump_level":31,"final_action":"halt"}"#);
        assert_eq!(
            kdump.to_line(2),
            "{\"id\":2,\"cmd\":\"kdump\",\"op\":\"config\",\"dump_level\":31,\"final_action\":\"halt\"}\n"
        );
        for verb in ["hello", "ps", "uptime", "dmesg"] {
            assert_eq!(request(&format!(r#"{{"cmd":"{verb}"}}"#)).name(), verb);
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
        assert_eq!(code(r#"{"cmd":"uptime","timeout_ms":"1"}"#), "bad_argument");
        assert_eq!(code(r#"{"cmd":"status","timeout_ms":100}"#), "bad_argument");
        assert_eq!(code(r#"{"cmd":"dmesg","since":-5}"#), "bad_argument");
        assert_eq!(code(r#"{"cmd":"kexec","op":"exec","kind":"crash"}"#), "bad_argument");
        assert_eq!(code(r#"{"cmd":"kexec","op":"unload","cmdline":"x"}"#), "bad_argument");
        assert_eq!(code(r#"{"cmd":"kdump","op":"start","dump_level":1}"#), "bad_argument");
        assert_eq!(code(r#"{"cmd":"kdump","op":"config","dump_level":32}"#), "bad_argument");
        assert_eq!(code(r#"{"cmd":"kdump","op":"config","final_action":"explode"}"#), "bad_argument");
        assert_eq!(code(r#"{"cmd":"read_memory","gpa":0,"len":0}"#), "bad_argument");
        assert_eq!(
            code(&format!(r#"{{"cmd":"read_memory","gpa":0,"len":{}}}"#, MAX_MEMORY_ACCESS + 1)),
            "bad_argument"
        );
        assert_eq!(code(r#"{"cmd":"write_memory","gpa":0,"data_hex":""}"#), "bad_argument");
        assert_eq!(code(r#"{"cmd":"write_memory","gpa":0,"data_hex":"zz"}"#), "bad_argument");
        // The id is echoed whenever it was readable.
        assert_eq!(parse(r#"{"id":9,"cmd":"bogus"}"#).unwrap_err().id, json!(9));
        assert_eq!(parse(&"\u{0}".repeat(10)).unwrap_err().id, Value::Null);
        assert!(parse_request(b"\xff\xfe{}").is_err());
    }

    #[test]
    fn refusals_explain_themselves() {
        let message = |line: &str| parse(line).unwrap_err().error.message;
        let unknown = message(r#"{"cmd":"reboot"}"#);
        assert!(unknown.starts_with("unknown command `reboot`") && unknown.contains("`inject`"), "{unknown}");
        assert!(message(r#"{"cmd":"inject","fault":"meltdown"}"#).contains("the choices are softlockup"));
        assert!(message(r#"{"cmd":"status","extra":1}"#).contains("unknown field `extra`"));
    }
}
