//! The host end of the guest's control protocol (`crashvisor_abi::control`): client requests
//! turned into request lines, response lines decoded into JSON, and the table of requests
//! awaiting an answer.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crashvisor_abi::control::{
    self as wire, decode_value, key, parse_u32, parse_u64, Encoded, Line, Verb, MAX_REQUEST_LEN, PROTOCOL_VERSION,
};
use crashvisor_control::{ControlError, ControlErrorCode, Injection, Request};
use serde_json::{Map, Value};

/// A request for the guest, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestRequest {
    /// What to ask.
    pub verb: Verb,
    /// Its arguments, raw bytes (encoded when the line is built).
    pub args: Vec<(&'static str, Vec<u8>)>,
    /// How long to wait for the answer.
    pub timeout: Duration,
}

impl GuestRequest {
    /// What a client's (validated) request asks of the guest, answered within `timeout`; `None`
    /// for the VMM's own commands.
    pub fn from_request(request: &Request, timeout: Duration) -> Option<Self> {
        let verb = request.guest_verb()?;
        let mut args: Vec<(&'static str, Vec<u8>)> = Vec::new();
        let mut arg = |key, value: Option<String>| args.extend(value.map(|v| (key, v.into_bytes())));
        match request {
            Request::Inject(Injection::Fault { fault, cpu, duration_ms, message }) => {
                arg(key::FAULT, Some(fault.as_str().into()));
                arg(key::CPU, Some(cpu.unwrap_or(0).to_string()));
                arg(key::DURATION_MS, duration_ms.map(|ms| ms.to_string()));
                arg(key::MESSAGE, message.clone());
            }
            Request::Inject(Injection::Lkdtm(lkdtm)) => {
                for (key, value) in lkdtm.args() {
                    arg(key, Some(value.to_string()));
                }
            }
            Request::SysctlGet { name } => arg(key::NAME, Some(name.clone())),
            Request::SysctlSet { name, value } => {
                arg(key::NAME, Some(name.clone()));
                arg(key::VALUE, Some(value.text()));
            }
            Request::Dmesg { since } => arg(key::SINCE, Some(since.unwrap_or(0).to_string())),
            Request::Kexec { op, kind, cmdline } => {
                arg(key::OP, Some(op.as_str().into()));
                arg(key::KIND, kind.map(|k| k.as_str().into()));
                arg(key::CMDLINE, cmdline.clone());
            }
            Request::Kdump { op, dump_level, final_action, failure_action } => {
                arg(key::OP, Some(op.as_str().into()));
                arg(key::DUMP_LEVEL, dump_level.map(|l| l.to_string()));
                arg(key::FINAL_ACTION, final_action.map(|a| a.as_str().into()));
                arg(key::FAILURE_ACTION, failure_action.map(|a| a.as_str().into()));
            }
            // hello, ps and uptime take no arguments (the VMM's own commands have no verb).
            _ => {}
        }
        Some(Self { verb, args, timeout })
    }
}

/// The request line for `request` under `id`, with its `\n`.
pub fn request_line(id: u32, request: &GuestRequest) -> Result<String, ControlError> {
    let mut line = format!("{id} {}", request.verb);
    for (key, value) in &request.args {
        // Writing to a String cannot fail.
        let _ = write!(line, " {key}={}", Encoded(value));
    }
    if line.len() > MAX_REQUEST_LEN {
        return Err(ControlError::new(
            ControlErrorCode::BadArgument,
            format!("the request is {} bytes on the wire; the guest takes at most {MAX_REQUEST_LEN}", line.len()),
        ));
    }
    line.push('\n');
    Ok(line)
}

/// Keys whose values are numbers in JSON results.
const NUMERIC_KEYS: &[&str] =
    &[key::PID, key::NS, key::NEXT, key::CPUS, key::VERSION, key::CRASH_SIZE, key::DUMP_LEVEL, key::COUNT];
/// Keys whose values (`0` or `1`) are booleans in JSON results; every other value is a string.
const BOOLEAN_KEYS: &[&str] = &[key::LOADED, key::CRASH_LOADED];

/// Decodes a raw value to text (bytes that are not UTF-8 become U+FFFD).
pub fn decode_text(raw: &str) -> Result<String, wire::ProtocolError> {
    let mut buf = vec![0u8; raw.len()];
    let bytes = decode_value(raw, &mut buf)?;
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// The JSON result of a guest response: `ok` gives an object of its arguments (numbers for
/// `NUMERIC_KEYS`, strings otherwise; the first of duplicate keys wins); `err` gives the
/// guest's error code and message.
pub fn response_result(line: &Line<'_>) -> Result<Value, ControlError> {
    let malformed = |what: &str| {
        ControlError::new(ControlErrorCode::Internal, format!("the guest sent a malformed response: {what}"))
    };
    if line.is_err() {
        let code = line.arg(key::CODE).unwrap_or("internal");
        let message = match line.arg(key::MESSAGE) {
            Some(raw) => decode_text(raw).map_err(|e| malformed(e.as_str()))?,
            None => String::new(),
        };
        return Err(match wire::ErrorCode::from_name(code) {
            Some(code) => ControlError::new(code.into(), message),
            None => ControlError::new(
                ControlErrorCode::Internal,
                format!("the guest failed with unknown code {code:?}: {message}"),
            ),
        });
    }
    if !line.is_ok() {
        return Err(malformed(&format!("status {:?}", line.word)));
    }
    let mut result = Map::new();
    for (key, raw) in line.args() {
        if result.contains_key(key) {
            continue;
        }
        let number = NUMERIC_KEYS.contains(&key).then(|| parse_u64(raw)).flatten();
        let boolean = BOOLEAN_KEYS.contains(&key).then(|| parse_u64(raw)).flatten();
        let value = match (number, boolean) {
            (Some(n), _) => Value::from(n),
            (_, Some(b)) => Value::from(b != 0),
            _ => Value::String(decode_text(raw).map_err(|e| malformed(e.as_str()))?),
        };
        result.insert(key.to_owned(), value);
    }
    Ok(Value::Object(result))
}

/// What the guest's hello line says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The kernel release.
    pub release: String,
    /// CPUs online.
    pub cpus: u32,
}

/// Reads a hello line; refuses other protocol versions.
pub fn parse_hello(line: &Line<'_>) -> Result<Hello, String> {
    let version = line.arg(key::VERSION).and_then(parse_u32);
    if version != Some(PROTOCOL_VERSION) {
        return Err(format!(
            "the guest speaks control protocol version {version:?}; this VMM speaks {PROTOCOL_VERSION}"
        ));
    }
    let release = match line.arg(key::RELEASE) {
        Some(raw) => decode_text(raw).map_err(|e| e.to_string())?,
        None => String::new(),
    };
    let cpus = line.arg(key::CPUS).and_then(parse_u32).unwrap_or(0);
    Ok(Hello { release, cpus })
}

/// Requests sent to the guest and not yet answered, by wire id. `T` is whom to answer.
#[derive(Debug)]
pub struct PendingTable<T> {
    next_id: u32,
    capacity: usize,
    entries: HashMap<u32, (T, Instant)>,
}

impl<T> PendingTable<T> {
    /// An empty table holding at most `capacity` requests.
    pub fn new(capacity: usize) -> Self {
        Self { next_id: 1, capacity, entries: HashMap::new() }
    }

    /// Number of requests waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records a request answered by `deadline`; returns its wire id, or `None` when full.
    /// Ids count up from 1, skip 0 (the hello line's) and any still in use.
    pub fn insert(&mut self, waiter: T, deadline: Instant) -> Option<u32> {
        if self.entries.len() >= self.capacity {
            return None;
        }
        let mut id = self.next_id;
        while id == wire::HELLO_ID || self.entries.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_id = id.wrapping_add(1);
        self.entries.insert(id, (waiter, deadline));
        Some(id)
    }

    /// Takes the request with wire id `id`, if it waits.
    pub fn take(&mut self, id: u32) -> Option<T> {
        self.entries.remove(&id).map(|(waiter, _)| waiter)
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries.values().map(|(_, d)| *d).min()
    }

    /// Takes every request whose deadline is at or before `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<T> {
        let ids: Vec<u32> = self.entries.iter().filter(|(_, (_, d))| *d <= now).map(|(id, _)| *id).collect();
        ids.into_iter().filter_map(|id| self.take(id)).collect()
    }

    /// Takes every request.
    pub fn drain(&mut self) -> Vec<T> {
        self.entries.drain().map(|(_, (waiter, _))| waiter).collect()
    }

    /// Whether any waiting request satisfies `f`.
    pub fn any(&self, mut f: impl FnMut(&T) -> bool) -> bool {
        self.entries.values().any(|(waiter, _)| f(waiter))
    }

    /// Removes every request `keep` refuses.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.entries.retain(|_, (waiter, _)| keep(waiter));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crashvisor_abi::control::parse_line;
    use crashvisor_control::{parse_request, request::DEFAULT_GUEST_TIMEOUT};
    use serde_json::json;

    fn result(line: &str) -> Result<Value, ControlError> {
        response_result(&parse_line(line).unwrap())
    }

    fn guest(line: &str) -> GuestRequest {
        let request = parse_request(line.as_bytes()).unwrap();
        let timeout = request.guest_timeout();
        GuestRequest::from_request(&request.request, timeout)
            .unwrap_or_else(|| panic!("{request:?} is not for the guest"))
    }

    #[test]
    fn client_requests_become_guest_arguments() {
        let g = guest(r#"{"id":1,"cmd":"inject","fault":"softlockup","cpu":1,"duration_ms":5000}"#);
        assert_eq!(g.verb, Verb::Inject);
        assert_eq!(
            g.args,
            vec![("fault", b"softlockup".to_vec()), ("cpu", b"1".to_vec()), ("duration_ms", b"5000".to_vec()),]
        );
        assert_eq!(g.timeout, DEFAULT_GUEST_TIMEOUT);
        let g = guest(r#"{"cmd":"sysctl_set","name":"kernel.panic","value":10,"timeout_ms":500}"#);
        assert_eq!(g.args[1], ("value", b"10".to_vec()));
        assert_eq!(g.timeout, Duration::from_millis(500));
        let g = guest(r#"{"cmd":"sysctl_set","name":"kernel.watchdog","value":true}"#);
        assert_eq!(g.args[1], ("value", b"1".to_vec()));
        let g = guest(r#"{"cmd":"sysctl_get","name":"kernel.softlockup_panic"}"#);
        assert_eq!(g.args, vec![("name", b"kernel.softlockup_panic".to_vec())]);
        let g = guest(r#"{"cmd":"dmesg"}"#);
        assert_eq!(g.args, vec![("since", b"0".to_vec())]);
        let g = guest(r#"{"cmd":"inject","lkdtm":"PANIC_IN_HARDIRQ","cpoint":"INT_HARDWARE_ENTRY","count":3,"cpu":1}"#);
        assert_eq!(
            request_line(5, &g).unwrap(),
            "5 inject lkdtm=PANIC_IN_HARDIRQ cpoint=INT_HARDWARE_ENTRY count=3 cpu=1\n"
        );
        let g = guest(r#"{"cmd":"inject","lkdtm":"BUG"}"#);
        assert_eq!(g.args, vec![("lkdtm", b"BUG".to_vec()), ("cpoint", b"DIRECT".to_vec())], "DIRECT by default");
        let g = guest(r#"{"cmd":"inject","fault":"panic","message":"a b"}"#);
        assert_eq!(g.args[1], ("cpu", b"0".to_vec()), "cpu defaults to 0");
        assert_eq!(g.args[2], ("message", b"a b".to_vec()));
        for verb in ["hello", "ps", "uptime"] {
            assert_eq!(guest(&format!(r#"{{"cmd":"{verb}"}}"#)).args, vec![]);
        }
        let g = guest(r#"{"cmd":"kdump","op":"config","dump_level":16,"failure_action":"halt"}"#);
        assert_eq!(
            g.args,
            vec![("op", b"config".to_vec()), ("dump_level", b"16".to_vec()), ("failure_action", b"halt".to_vec())]
        );
        assert_eq!(GuestRequest::from_request(&Request::Status {}, DEFAULT_GUEST_TIMEOUT), None);
    }

    #[test]
    fn request_lines_are_encoded() {
        let request = GuestRequest {
            verb: Verb::Inject,
            args: vec![
                ("fault", b"panic".to_vec()),
                ("cpu", b"1".to_vec()),
                ("message", b"out of cheese=100%\n".to_vec()),
            ],
            timeout: Duration::from_secs(1),
        };
        let line = request_line(7, &request).unwrap();
        assert_eq!(line, "7 inject fault=panic cpu=1 message=out%20of%20cheese%3D100%25%0A\n");
        let parsed = parse_line(&line).unwrap();
        assert_eq!(decode_text(parsed.arg("message").unwrap()).unwrap(), "out of cheese=100%\n");
        let huge = GuestRequest {
            verb: Verb::SysctlSet,
            args: vec![("value", vec![b' '; 400])],
            timeout: Duration::from_secs(1),
        };
        assert_eq!(request_line(1, &huge).unwrap_err().code, ControlErrorCode::BadArgument);
    }

    #[test]
    fn ok_responses_become_json_objects() {
        assert_eq!(result("3 ok").unwrap(), json!({}));
        assert_eq!(
            result("3 ok next=42 text=%5B%20%20%20%200.000000%5D%20Linux%0Ahi").unwrap(),
            json!({"next": 42, "text": "[    0.000000] Linux\nhi"})
        );
        assert_eq!(
            result("3 ok value=10 pid=x pid=7").unwrap(),
            json!({"value": "10", "pid": "x"}),
            "value stays text; a non-numeric pid stays text; the first duplicate wins"
        );
        assert_eq!(result("3 ok text=%FF").unwrap(), json!({"text": "\u{fffd}"}));
        assert_eq!(
            result("3 ok cpoint=TIMERADD count=3").unwrap(),
            json!({"cpoint": "TIMERADD", "count": 3}),
            "an LKDTM registration"
        );
    }

    #[test]
    fn err_responses_keep_the_guest_code() {
        let e = result("4 err code=unknown_sysctl message=no%20such%20sysctl").unwrap_err();
        assert_eq!(e.code.as_str(), "unknown_sysctl");
        assert_eq!(e.message, "no such sysctl");
        let e = result("4 err code=exploded").unwrap_err();
        assert_eq!(e.code, ControlErrorCode::Internal);
        assert!(e.message.contains("exploded"));
        let e = result("4 maybe").unwrap_err();
        assert_eq!(e.code, ControlErrorCode::Internal);
    }

    #[test]
    fn hello_lines_are_checked() {
        let hello = parse_line("0 hello version=1 release=6.18.0-crashvisor cpus=2").unwrap();
        assert_eq!(parse_hello(&hello).unwrap(), Hello { release: "6.18.0-crashvisor".into(), cpus: 2 });
        let future = parse_line("0 hello version=2").unwrap();
        assert!(parse_hello(&future).is_err());
        let none = parse_line("0 hello").unwrap();
        assert!(parse_hello(&none).is_err());
    }

    #[test]
    fn the_pending_table_allocates_ids_and_expires() {
        let t0 = Instant::now();
        let mut table = PendingTable::new(2);
        assert_eq!(table.insert("a", t0 + Duration::from_secs(1)), Some(1));
        assert_eq!(table.insert("b", t0 + Duration::from_secs(2)), Some(2));
        assert_eq!(table.insert("c", t0), None, "full");
        assert_eq!(table.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(table.take(1), Some("a"));
        assert_eq!(table.take(1), None);
        assert_eq!(table.expire(t0 + Duration::from_secs(5)), vec!["b"]);
        assert!(table.is_empty());
        // Wrap-around skips 0 and ids in use.
        table.next_id = u32::MAX;
        assert_eq!(table.insert("x", t0), Some(u32::MAX));
        assert_eq!(table.insert("y", t0), Some(1));
        assert!(table.any(|w| *w == "x"));
        table.retain(|w| *w != "x");
        assert!(!table.any(|w| *w == "x"));
        assert_eq!(table.drain(), vec!["y"]);
    }
}
