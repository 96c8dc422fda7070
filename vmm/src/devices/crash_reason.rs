//! Reading the guest's `CrashReason` (see `crashvisor_abi::platform`) out of guest memory.
//!
//! The structure is untrusted guest data: it is copied out as raw bytes and each field is
//! decoded at its `offset_of!` position and checked; text is bounded and decoded lossily.

use std::mem::offset_of;

use crashvisor_abi::platform::{
    CrashReason, Detector, CRASH_REASON_COMM_LEN, CRASH_REASON_MAGIC, CRASH_REASON_MESSAGE_LEN, CRASH_REASON_VERSION,
};
use crashvisor_klib::le::u32_at;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// A validated crash reason, as the host reports it (`panic` events carry it).
pub use crashvisor_control::CrashInfo;

/// Why a crash reason was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CrashReasonError {
    /// The structure is not entirely inside guest RAM.
    #[error("the crash reason at {0:#x} is not in guest RAM")]
    OutOfRam(u64),
    /// Wrong magic number.
    #[error("the crash reason has magic {0:#x}, expected {CRASH_REASON_MAGIC:#x}")]
    Magic(u32),
    /// Unknown layout version.
    #[error("the crash reason has version {0}, expected {CRASH_REASON_VERSION}")]
    Version(u32),
    /// Unknown detector number.
    #[error("the crash reason names unknown detector {0}")]
    Detector(u32),
    /// Message length beyond the array.
    #[error("the crash reason's message is {0} bytes, longer than {CRASH_REASON_MESSAGE_LEN}")]
    MessageLen(u32),
}

/// Reads and validates the `CrashReason` at guest-physical address `gpa`.
pub fn read(memory: &GuestMemoryMmap, gpa: u64) -> Result<CrashInfo, CrashReasonError> {
    let mut bytes = [0u8; CrashReason::SIZE];
    gpa.checked_add(CrashReason::SIZE as u64).ok_or(CrashReasonError::OutOfRam(gpa))?;
    memory.read_slice(&mut bytes, GuestAddress(gpa)).map_err(|_| CrashReasonError::OutOfRam(gpa))?;
    decode(&bytes)
}

/// Decodes the raw bytes of a `CrashReason`.
pub fn decode(bytes: &[u8; CrashReason::SIZE]) -> Result<CrashInfo, CrashReasonError> {
    let magic = u32_at(bytes, offset_of!(CrashReason, magic));
    if magic != CRASH_REASON_MAGIC {
        return Err(CrashReasonError::Magic(magic));
    }
    let version = u32_at(bytes, offset_of!(CrashReason, version));
    if version != CRASH_REASON_VERSION {
        return Err(CrashReasonError::Version(version));
    }
    let raw_detector = u32_at(bytes, offset_of!(CrashReason, detector));
    let detector = Detector::from_raw(raw_detector).ok_or(CrashReasonError::Detector(raw_detector))?;
    let message_len = u32_at(bytes, offset_of!(CrashReason, message_len));
    if message_len as usize > CRASH_REASON_MESSAGE_LEN {
        return Err(CrashReasonError::MessageLen(message_len));
    }
    let comm_at = offset_of!(CrashReason, comm);
    let comm = &bytes[comm_at..comm_at + CRASH_REASON_COMM_LEN];
    let comm = &comm[..comm.iter().position(|&b| b == 0).unwrap_or(comm.len())];
    let message_at = offset_of!(CrashReason, message);
    let message = &bytes[message_at..message_at + message_len as usize];
    Ok(CrashInfo {
        detector,
        cpu: u32_at(bytes, offset_of!(CrashReason, cpu)),
        pid: u32_at(bytes, offset_of!(CrashReason, pid)),
        comm: text(comm),
        message: text(message),
    })
}

/// Guest text as a string: a UTF-8 sequence cut at the end (the guest truncates messages by
/// bytes) is dropped, other invalid bytes become U+FFFD.
pub(crate) fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(e) if e.error_len().is_none() => String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes the guest would have in memory for `reason` (little-endian, no padding).
    fn bytes_of(r: &CrashReason) -> [u8; CrashReason::SIZE] {
        let mut b = [0u8; CrashReason::SIZE];
        let mut put = |off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_le_bytes());
        put(offset_of!(CrashReason, magic), r.magic);
        put(offset_of!(CrashReason, version), r.version);
        put(offset_of!(CrashReason, detector), r.detector);
        put(offset_of!(CrashReason, cpu), r.cpu);
        put(offset_of!(CrashReason, pid), r.pid);
        put(offset_of!(CrashReason, message_len), r.message_len);
        let c = offset_of!(CrashReason, comm);
        b[c..c + CRASH_REASON_COMM_LEN].copy_from_slice(&r.comm);
        let m = offset_of!(CrashReason, message);
        b[m..m + CRASH_REASON_MESSAGE_LEN].copy_from_slice(&r.message);
        b
    }

    fn sample() -> CrashReason {
        let mut r = CrashReason::new(Detector::SoftLockup, 1, 42);
        r.set_comm(b"sh");
        r.push_message("softlockup: hung tasks \u{e9}".as_bytes());
        r
    }

    #[test]
    fn decodes_a_valid_reason() {
        let info = decode(&bytes_of(&sample())).unwrap();
        assert_eq!(info.detector, Detector::SoftLockup);
        assert_eq!((info.cpu, info.pid), (1, 42));
        assert_eq!(info.comm, "sh");
        assert_eq!(info.message, "softlockup: hung tasks \u{e9}");
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["detector"], "softlockup");
    }

    #[test]
    fn rejects_malformed_reasons() {
        let mut r = sample();
        r.magic = 0;
        assert_eq!(decode(&bytes_of(&r)), Err(CrashReasonError::Magic(0)));
        let mut r = sample();
        r.version = 2;
        assert_eq!(decode(&bytes_of(&r)), Err(CrashReasonError::Version(2)));
        let mut r = sample();
        r.detector = 99;
        assert_eq!(decode(&bytes_of(&r)), Err(CrashReasonError::Detector(99)));
        let mut r = sample();
        r.message_len = 257;
        assert_eq!(decode(&bytes_of(&r)), Err(CrashReasonError::MessageLen(257)));
    }

    #[test]
    fn hostile_text_is_bounded_and_lossy() {
        let mut r = sample();
        r.comm = [0xff; CRASH_REASON_COMM_LEN];
        r.message = [b'x'; CRASH_REASON_MESSAGE_LEN];
        r.message[CRASH_REASON_MESSAGE_LEN - 1] = 0xc3; // a cut two-byte sequence
        r.message_len = CRASH_REASON_MESSAGE_LEN as u32;
        let info = decode(&bytes_of(&r)).unwrap();
        assert_eq!(info.comm.chars().count(), CRASH_REASON_COMM_LEN);
        assert!(info.comm.chars().all(|c| c == '\u{fffd}'));
        assert_eq!(info.message.len(), CRASH_REASON_MESSAGE_LEN - 1);
    }

    #[test]
    fn reads_only_from_ram() {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        memory.write_slice(&bytes_of(&sample()), GuestAddress(0x100)).unwrap();
        assert_eq!(read(&memory, 0x100).unwrap().pid, 42);
        assert_eq!(read(&memory, 0xf00), Err(CrashReasonError::OutOfRam(0xf00)));
        assert_eq!(read(&memory, u64::MAX - 8), Err(CrashReasonError::OutOfRam(u64::MAX - 8)));
    }
}
