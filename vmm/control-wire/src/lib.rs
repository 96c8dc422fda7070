//! The wire types of a VMM's control socket (`vmm --control PATH`, docs/control-protocol.md),
//! defined once for the VMM that serves it, the crashvisor service and the test harness.
//!
//! A client writes one [`Request`] per line, tagged by `cmd`, with an `id` of its choosing;
//! the VMM answers each with a [`Response`] carrying the same id, and sends every client each
//! [`Event`] as it happens. The guest-facing names (fault kinds, kexec and kdump operations)
//! and limits come from `crashvisor_abi`, the contract with the guest kernel.
//!
//! ```
//! use crashvisor_abi::control::FaultKind;
//! use crashvisor_control::{parse_request, Event, LockupKind, Request, Response, ServerLine};
//!
//! // The client side: a request line...
//! let inject = Request::Inject { fault: FaultKind::SoftLockup, cpu: Some(1), duration_ms: Some(5000), message: None };
//! let line = inject.to_line(1);
//! assert_eq!(line, "{\"id\":1,\"cmd\":\"inject\",\"fault\":\"softlockup\",\"cpu\":1,\"duration_ms\":5000}\n");
//!
//! // ...which the VMM reads back, strictly,
//! let request = parse_request(line.trim_end().as_bytes()).expect("a valid request");
//! assert_eq!(request.request, inject);
//! assert!(parse_request(br#"{"cmd":"inject","fault":"meltdown"}"#).is_err());
//!
//! // and answers; events arrive in between.
//! let answer = Response { id: request.id, outcome: Ok(serde_json::json!({"pid": 7})) };
//! assert!(matches!(ServerLine::parse(&answer.to_line()), Ok(ServerLine::Response(r)) if r == answer));
//! let event = ServerLine::parse(r#"{"event":"lockup_detected","kind":"soft","cpu":1,"arg":22}"#);
//! assert!(matches!(event, Ok(ServerLine::Event(Event::LockupDetected { kind: LockupKind::Soft, cpu: 1, arg: 22 }))));
//! ```
#![deny(missing_docs)]

pub mod event;
pub mod hex;
pub mod names;
pub mod request;
pub mod response;
pub mod status;

pub use event::{CrashInfo, Event, LockupKind, PanicAbout, PanicSource, ResetCause};
pub use names::WireName;
pub use request::{parse_request, ClientRequest, Rejected, Request, SysctlValue};
pub use response::{ControlError, ControlErrorCode, Response, ServerLine};
pub use status::{MachineState, NmiWatchdogStatus, Status};

/// One JSON line of `value`, with its `\n`. The wire types are plain data, so serialising them
/// cannot fail; if it did, the line says so rather than breaking the stream.
fn to_line(value: &impl serde::Serialize) -> String {
    let mut line = serde_json::to_string(value).unwrap_or_else(|e| {
        format!(r#"{{"id":null,"ok":false,"error":{{"code":"internal","message":"cannot encode a line: {e}"}}}}"#)
    });
    line.push('\n');
    line
}
