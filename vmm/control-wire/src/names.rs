//! Names on the socket: the guest protocol's (`crashvisor_abi`: fault kinds, kexec and kdump
//! operations, kdump actions, panic detectors) and this crate's own (error codes, lockup kinds,
//! machine states, ...) travel as their wire names, and an unknown name is refused with the list
//! of the known ones. The abi's names take `#[serde(with = "crate::names")]` ([`option`] for optional
//! fields); this crate's implement `Serialize` and `Deserialize` themselves.

use crashvisor_abi::control::{FaultKind, KdumpAction, KdumpOp, KexecKind, KexecOp};
use crashvisor_abi::platform::Detector;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::event::{LockupKind, PanicSource, ResetCause};
use crate::response::ControlErrorCode;
use crate::status::MachineState;

/// A name of the guest↔host contract, spelt on the wire as [`WireName::name`] gives it.
pub trait WireName: Copy + 'static {
    /// What the names name, for error messages ("fault", "kdump action").
    const WHAT: &'static str;

    /// Every value.
    fn all() -> &'static [Self];

    /// The value's wire name.
    fn name(self) -> &'static str;

    /// The value named `name`, or a sentence naming the choices.
    fn parse(name: &str) -> Result<Self, String> {
        Self::all().iter().copied().find(|v| v.name() == name).ok_or_else(|| {
            let names: Vec<&str> = Self::all().iter().map(|v| v.name()).collect();
            format!("unknown {} {name:?}; the choices are {}", Self::WHAT, names.join(", "))
        })
    }
}

macro_rules! wire_names {
    ($($ty:ident: $what:literal, $all:expr;)*) => {$(
        impl WireName for $ty {
            const WHAT: &'static str = $what;

            fn all() -> &'static [Self] {
                $all
            }

            fn name(self) -> &'static str {
                self.as_str()
            }
        }
    )*};
}

wire_names! {
    FaultKind: "fault", FaultKind::ALL;
    KexecOp: "kexec op", KexecOp::ALL;
    KexecKind: "kexec kind", KexecKind::ALL;
    KdumpOp: "kdump op", KdumpOp::ALL;
    KdumpAction: "kdump action", KdumpAction::ALL;
    Detector: "detector", &Detector::ALL;
    ControlErrorCode: "error code", ControlErrorCode::ALL;
    LockupKind: "lockup kind", LockupKind::ALL;
    PanicSource: "panic source", PanicSource::ALL;
    ResetCause: "reset cause", ResetCause::ALL;
    MachineState: "machine state", MachineState::ALL;
}

/// `Serialize` and `Deserialize` by wire name, for this crate's own names.
macro_rules! serde_by_name {
    ($($ty:ident),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serialize(self, serializer)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserialize(deserializer)
            }
        }
    )*};
}

serde_by_name!(ControlErrorCode, LockupKind, PanicSource, ResetCause, MachineState);

/// Writes the value's wire name.
pub fn serialize<T: WireName, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(value.name())
}

/// Reads a wire name.
pub fn deserialize<'de, T: WireName, D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
    T::parse(&String::deserialize(deserializer)?).map_err(D::Error::custom)
}

/// The same for `Option` fields (with `#[serde(default)]`): absent is `None`.
pub mod option {
    use super::*;

    /// Writes the wire name of a present value (skip absent ones with `skip_serializing_if`).
    pub fn serialize<T: WireName, S: Serializer>(value: &Option<T>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.serialize_str(value.name()),
            None => serializer.serialize_none(),
        }
    }

    /// Reads an optional wire name.
    pub fn deserialize<'de, T: WireName, D: Deserializer<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
        Option::<String>::deserialize(deserializer)?.map(|name| T::parse(&name).map_err(D::Error::custom)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_refusals_list_the_choices() {
        assert_eq!(FaultKind::parse("sysrq_crash"), Ok(FaultKind::SysrqCrash));
        assert_eq!(Detector::parse("hardlockup"), Ok(Detector::HardLockup));
        assert_eq!(
            KdumpAction::parse("explode").unwrap_err(),
            "unknown kdump action \"explode\"; the choices are reboot, halt, poweroff"
        );
        assert!(FaultKind::parse("meltdown").unwrap_err().contains("softlockup, hardlockup, hung_task"));
    }
}
