//! What an `inject` request injects: one of the guest kernel's own faults (`fault`, a
//! [`FaultKind`]) or an LKDTM crash type (`lkdtm`, a [`CrashType`]) at an LKDTM crash point, as
//! the guest reads it ([`LkdtmRequest`], docs/lkdtm.md). Both forms are one JSON object; which
//! fields go together is checked as it is read, whether the guest runs the type and point by
//! [`Injection::check`].

use crashvisor_abi::control::{FaultKind, LkdtmRequest, MAX_MESSAGE_LEN};
use crashvisor_abi::lkdtm::{CrashPoint, CrashType};
use serde::{Deserialize, Serialize};

use crate::names::WireName;
use crate::response::ControlError;

/// The two forms of `inject`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "InjectFields", into = "InjectFields")]
pub enum Injection {
    /// `{"fault", "cpu", "duration_ms", "message"}`: a fault of ours, on a new task or in place.
    Fault {
        /// Which fault.
        fault: FaultKind,
        /// The CPU it runs on (default 0).
        cpu: Option<u32>,
        /// How long a lockup lasts (absent: until reboot).
        duration_ms: Option<u64>,
        /// The panic message, at most `MAX_MESSAGE_LEN` bytes.
        message: Option<String>,
    },
    /// `{"lkdtm", "cpoint", "count", "cpu"}`: an LKDTM crash type, at once in a new task
    /// (`DIRECT`, the default) or registered at a crash point to run on its `count`th hit.
    Lkdtm(LkdtmRequest),
}

impl Injection {
    /// An LKDTM crash type run at once on `cpu` (`DIRECT`).
    pub fn lkdtm(kind: CrashType, cpu: Option<u32>) -> Self {
        Self::Lkdtm(LkdtmRequest { kind, point: CrashPoint::Direct, count: None, cpu })
    }

    /// An LKDTM crash type registered at crash point `point`, firing on its `count`th hit
    /// (LKDTM's default when `None`); with `cpu`, only that CPU's hits count.
    pub fn lkdtm_at(kind: CrashType, point: CrashPoint, count: Option<u32>, cpu: Option<u32>) -> Self {
        Self::Lkdtm(LkdtmRequest { kind, point, count, cpu })
    }

    /// What serde cannot check: a message's length, and whether the guest runs an LKDTM type at
    /// its crash point (refused with the guest's own code, `unsupported` or `bad_argument`).
    pub fn check(&self) -> Result<(), ControlError> {
        match self {
            Self::Fault { message: Some(message), .. } if message.len() > MAX_MESSAGE_LEN => {
                Err(ControlError::bad_argument(format!(
                    "the message is {} bytes; the limit is {MAX_MESSAGE_LEN}",
                    message.len()
                )))
            }
            Self::Fault { .. } => Ok(()),
            Self::Lkdtm(request) => request.check().map_err(|e| ControlError::new(e.code().into(), e.to_string())),
        }
    }
}

/// An `inject` request's fields as they are spelt, before their combination is checked.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectFields {
    #[serde(default, with = "crate::names::option", skip_serializing_if = "Option::is_none")]
    fault: Option<FaultKind>,
    #[serde(default, with = "crate::names::option", skip_serializing_if = "Option::is_none")]
    lkdtm: Option<CrashType>,
    #[serde(default, with = "crate::names::option", skip_serializing_if = "Option::is_none")]
    cpoint: Option<CrashPoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cpu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl TryFrom<InjectFields> for Injection {
    type Error = String;

    fn try_from(f: InjectFields) -> Result<Self, String> {
        match (f.fault, f.lkdtm) {
            (Some(_), None) if f.cpoint.is_some() || f.count.is_some() => {
                Err("\"cpoint\" and \"count\" go with \"lkdtm\", not \"fault\"".into())
            }
            (Some(fault), None) => {
                Ok(Self::Fault { fault, cpu: f.cpu, duration_ms: f.duration_ms, message: f.message })
            }
            (None, Some(_)) if f.duration_ms.is_some() || f.message.is_some() => {
                Err("\"duration_ms\" and \"message\" go with \"fault\", not \"lkdtm\"".into())
            }
            (None, Some(kind)) => Ok(Self::lkdtm_at(kind, f.cpoint.unwrap_or(CrashPoint::Direct), f.count, f.cpu)),
            (Some(_), Some(_)) => Err("give either \"fault\" or \"lkdtm\", not both".into()),
            (None, None) => Err(format!(
                "inject needs a \"fault\" ({}) or an LKDTM crash type in \"lkdtm\" (PANIC, BUG, ...)",
                FaultKind::all().iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

impl From<Injection> for InjectFields {
    fn from(injection: Injection) -> Self {
        let none =
            Self { fault: None, lkdtm: None, cpoint: None, count: None, cpu: None, duration_ms: None, message: None };
        match injection {
            Injection::Fault { fault, cpu, duration_ms, message } => {
                Self { fault: Some(fault), cpu, duration_ms, message, ..none }
            }
            Injection::Lkdtm(LkdtmRequest { kind, point, count, cpu }) => {
                Self { lkdtm: Some(kind), cpoint: Some(point), count, cpu, ..none }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response::ControlErrorCode;
    use serde_json::json;

    fn read(value: serde_json::Value) -> Result<Injection, String> {
        Injection::deserialize(value).map_err(|e| e.to_string())
    }

    #[test]
    fn both_forms_round_trip() {
        let lkdtm = Injection::lkdtm_at(CrashType::PANIC_IN_HARDIRQ, CrashPoint::IntHardwareEntry, Some(3), Some(1));
        let value = json!({"lkdtm": "PANIC_IN_HARDIRQ", "cpoint": "INT_HARDWARE_ENTRY", "count": 3, "cpu": 1});
        assert_eq!(serde_json::to_value(&lkdtm).unwrap(), value);
        assert_eq!(read(value), Ok(lkdtm));
        assert_eq!(read(json!({"lkdtm": "BUG"})), Ok(Injection::lkdtm(CrashType::BUG, None)), "DIRECT by default");
        let fault =
            Injection::Fault { fault: FaultKind::Panic, cpu: None, duration_ms: None, message: Some("m".into()) };
        assert_eq!(read(json!({"fault": "panic", "message": "m"})), Ok(fault));
    }

    #[test]
    fn fields_that_do_not_go_together_are_refused() {
        let refused = |value| read(value).unwrap_err();
        assert!(refused(json!({"fault": "bug", "lkdtm": "BUG"})).contains("not both"));
        assert!(refused(json!({"fault": "panic", "cpoint": "TIMERADD"})).contains("go with \"lkdtm\""));
        assert!(refused(json!({"lkdtm": "SOFTLOCKUP", "duration_ms": 100})).contains("go with \"fault\""));
        assert!(refused(json!({})).contains("softlockup, hardlockup"));
        assert!(refused(json!({"lkdtm": "panic"}))
            .starts_with("unknown LKDTM crash type \"panic\"; the choices are PANIC,"));
        assert!(refused(json!({"lkdtm": "BUG", "cpoint": "NOWHERE"})).starts_with("unknown LKDTM crash point"));
        assert!(refused(json!({"lkdtm": "BUG", "count": -1})).contains("invalid value"));
        assert!(refused(json!({"lkdtm": 7})).contains("invalid type"));
        assert!(refused(json!({"lkdtm": "BUG", "depth": 1})).contains("unknown field `depth`"));
    }

    #[test]
    fn check_refuses_what_the_guest_would_with_its_codes() {
        let code = |injection: Injection| injection.check().map_err(|e| (e.code, e.message));
        let (c, message) = code(Injection::lkdtm(CrashType::USERCOPY_KERNEL, None)).unwrap_err();
        assert_eq!(c, ControlErrorCode::Unsupported);
        assert!(
            message.starts_with("USERCOPY_KERNEL is not supported by this kernel: there is no user space"),
            "{message}"
        );
        let scsi = Injection::lkdtm_at(CrashType::BUG, CrashPoint::ScsiQueueRq, None, None);
        assert_eq!(code(scsi).unwrap_err().0, ControlErrorCode::Unsupported);
        for count in [0, 1 << 31] {
            let at = Injection::lkdtm_at(CrashType::BUG, CrashPoint::Timeradd, Some(count), None);
            assert_eq!(code(at).unwrap_err().0, ControlErrorCode::BadArgument, "count {count}");
        }
        assert_eq!(
            code(Injection::lkdtm_at(CrashType::BUG, CrashPoint::Timeradd, Some(i32::MAX as u32), None)),
            Ok(())
        );
        let long = "x".repeat(MAX_MESSAGE_LEN + 1);
        let fault = Injection::Fault { fault: FaultKind::Panic, cpu: None, duration_ms: None, message: Some(long) };
        assert_eq!(code(fault).unwrap_err().0, ControlErrorCode::BadArgument);
    }
}
