//! What the VMM sends: responses (`{"id","ok":true,"result"}` or
//! `{"id","ok":false,"error":{"code","message"}}`) and, interleaved with them, event lines
//! ([`ServerLine`]).

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Event;

crashvisor_abi::names! {
    /// The `code` of an error response (docs/control-protocol.md, "Errors").
    ControlErrorCode {
        /// The line is not a JSON object.
        BadJson = "bad_json",
        /// No such command.
        UnknownCommand = "unknown_command",
        /// A field is missing, unknown, or has a bad value (from the VMM or the guest).
        BadArgument = "bad_argument",
        /// The line exceeds `MAX_LINE_LEN`; it was skipped.
        LineTooLong = "line_too_long",
        /// The VMM already serves its maximum of clients.
        TooManyClients = "too_many_clients",
        /// No machine is running (it is rebooting or has stopped).
        VmUnavailable = "vm_unavailable",
        /// The guest's control channel is not up (no hello yet, paused, panicked or rebooting).
        GuestUnavailable = "guest_unavailable",
        /// The guest did not answer in time.
        GuestTimeout = "guest_timeout",
        /// Too many requests wait for the guest, or the guest said it is busy.
        Busy = "busy",
        /// The VMM or the guest failed.
        Internal = "internal",
        /// The guest does not know the verb.
        UnknownVerb = "unknown_verb",
        /// The guest has no such sysctl.
        UnknownSysctl = "unknown_sysctl",
        /// The guest cannot do this in its configuration.
        Unsupported = "unsupported",
    }
}

impl From<crashvisor_abi::control::ErrorCode> for ControlErrorCode {
    /// The guest's own codes pass through under the same names.
    fn from(code: crashvisor_abi::control::ErrorCode) -> Self {
        use crashvisor_abi::control::ErrorCode;
        match code {
            ErrorCode::UnknownVerb => Self::UnknownVerb,
            ErrorCode::BadArgument => Self::BadArgument,
            ErrorCode::UnknownSysctl => Self::UnknownSysctl,
            ErrorCode::Unsupported => Self::Unsupported,
            ErrorCode::Busy => Self::Busy,
            ErrorCode::Internal => Self::Internal,
        }
    }
}

/// An error response's body: a code for programs, a sentence for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlError {
    /// What kind of failure.
    pub code: ControlErrorCode,
    /// What went wrong.
    pub message: String,
}

impl ControlError {
    /// An error with `code` and `message`.
    pub fn new(code: ControlErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// A `bad_argument` error.
    pub fn bad_argument(message: impl Into<String>) -> Self {
        Self::new(ControlErrorCode::BadArgument, message)
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// The answer to one request: its client's `id` (echoed unchanged; null when the request had
/// none or could not be read that far) and its `result` or error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "WireResponse", try_from = "WireResponse")]
pub struct Response {
    /// The request's id.
    pub id: Value,
    /// The result, or why there is none.
    pub outcome: Result<Value, ControlError>,
}

impl Response {
    /// The response line, with its `\n`.
    pub fn to_line(&self) -> String {
        crate::to_line(self)
    }
}

/// A response as it is spelt.
#[derive(Serialize, Deserialize)]
struct WireResponse {
    #[serde(default)]
    id: Value,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ControlError>,
}

impl From<Response> for WireResponse {
    fn from(response: Response) -> Self {
        let ok = response.outcome.is_ok();
        let (result, error) = match response.outcome {
            Ok(result) => (Some(result), None),
            Err(error) => (None, Some(error)),
        };
        Self { id: response.id, ok, result, error }
    }
}

impl TryFrom<WireResponse> for Response {
    type Error = &'static str;

    fn try_from(wire: WireResponse) -> Result<Self, Self::Error> {
        let outcome = match (wire.ok, wire.result, wire.error) {
            (true, Some(result), None) => Ok(result),
            (false, None, Some(error)) => Err(error),
            _ => return Err("a response has \"ok\": true and a \"result\", or \"ok\": false and an \"error\""),
        };
        Ok(Self { id: wire.id, outcome })
    }
}

/// One line from the VMM: a response (it has `"ok"`) or an event (it has `"event"`).
#[derive(Clone, Debug, PartialEq)]
pub enum ServerLine {
    /// The answer to a request.
    Response(Response),
    /// Something that happened.
    Event(Event),
}

impl ServerLine {
    /// Reads one line (a `\n` may end it).
    pub fn parse(line: &str) -> Result<Self, serde_json::Error> {
        Self::from_value(serde_json::from_str(line)?)
    }

    /// Reads one line already parsed as JSON.
    pub fn from_value(value: Value) -> Result<Self, serde_json::Error> {
        if value.get("event").is_some() {
            serde_json::from_value(value).map(Self::Event)
        } else {
            serde_json::from_value(value).map(Self::Response)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn responses_are_single_json_lines() {
        let ok = Response { id: json!(1), outcome: Ok(json!({"pid": 12})) }.to_line();
        assert_eq!(ok, "{\"id\":1,\"ok\":true,\"result\":{\"pid\":12}}\n");
        let error = ControlError::new(ControlErrorCode::GuestTimeout, "no answer\nin 10 s");
        let err = Response { id: Value::Null, outcome: Err(error.clone()) }.to_line();
        assert_eq!(err.matches('\n').count(), 1);
        let v: Value = serde_json::from_str(&err).unwrap();
        assert_eq!(v["error"]["code"], "guest_timeout");
        assert_eq!(
            ServerLine::parse(&err).unwrap(),
            ServerLine::Response(Response { id: Value::Null, outcome: Err(error) })
        );
        assert_eq!(
            ControlErrorCode::from(crashvisor_abi::control::ErrorCode::UnknownSysctl).as_str(),
            "unknown_sysctl"
        );
    }

    #[test]
    fn malformed_lines_are_refused() {
        for line in [
            "[1]",
            r#"{"id":1,"ok":true}"#,
            r#"{"id":1,"ok":false,"result":{}}"#,
            r#"{"id":1,"ok":false,"error":{"code":"exploded","message":""}}"#,
            r#"{"event":7}"#,
            r#"{"event":"booted"}"#,
            "not json",
        ] {
            assert!(ServerLine::parse(line).is_err(), "{line}");
        }
    }
}
