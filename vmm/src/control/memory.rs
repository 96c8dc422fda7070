//! `read_memory` and `write_memory`: guest physical memory for test harnesses and debuggers
//! (like QEMU's `pmemsave` or a gdb stub's `m`/`M` packets), bounds-checked through vm-memory.
//! Data travels as lowercase hex; the requests' sizes are checked when they are read
//! (`crashvisor_control::Request::validate`).

use crashvisor_control::{hex, ControlError};
use serde_json::{json, Value};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

fn out_of_ram(gpa: u64, len: usize) -> ControlError {
    ControlError::bad_argument(format!("{len} bytes at guest physical address {gpa:#x} are not all guest RAM"))
}

/// Reads `len` bytes of guest RAM at `gpa`.
pub fn read(memory: &GuestMemoryMmap, gpa: u64, len: usize) -> Result<Value, ControlError> {
    let mut buf = vec![0u8; len];
    memory.read_slice(&mut buf, GuestAddress(gpa)).map_err(|_| out_of_ram(gpa, len))?;
    Ok(json!({ "gpa": gpa, "data_hex": hex::encode(&buf) }))
}

/// Writes the bytes of `data_hex` into guest RAM at `gpa`: all of them, or nothing when they
/// would leave RAM.
pub fn write(memory: &GuestMemoryMmap, gpa: u64, data_hex: &str) -> Result<Value, ControlError> {
    let data = hex::decode(data_hex).map_err(ControlError::bad_argument)?;
    // Check the whole range first: vm-memory may write a prefix before failing.
    if !memory.check_range(GuestAddress(gpa), data.len()) {
        return Err(out_of_ram(gpa, data.len()));
    }
    memory.write_slice(&data, GuestAddress(gpa)).map_err(|_| out_of_ram(gpa, data.len()))?;
    Ok(json!({ "gpa": gpa, "len": data.len() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x2000), (GuestAddress(0x4000), 0x1000)]).unwrap()
    }

    #[test]
    fn writes_and_reads_inside_ram_only() {
        let memory = ram();
        write(&memory, 0x1ffe, "0102").unwrap();
        assert_eq!(read(&memory, 0x1ffe, 2).unwrap()["data_hex"], "0102");
        // Straddling the hole between the regions, or past the end: refused, nothing written.
        assert!(write(&memory, 0x1fff, "0909").is_err());
        assert_eq!(memory.read_obj::<u8>(GuestAddress(0x1fff)).unwrap(), 2);
        assert!(write(&memory, 0x4fff, "0909").is_err());
        assert!(write(&memory, u64::MAX, "09").is_err());
        assert!(write(&memory, u64::MAX - 1, "090909").is_err());
        assert!(read(&memory, 0x3000, 1).is_err());
    }
}
