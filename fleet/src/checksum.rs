//! SHA-256 of files and streams, as lowercase hex: the checksums recorded in `meta.json` (and
//! checked by whoever reads a crash back from the store).

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::FleetError;

/// Read size while hashing.
const CHUNK: usize = 1 << 20;

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 and length of the file at `path` (blocking).
pub fn file_sha256(path: &Path) -> Result<(String, u64), FleetError> {
    let mut file = std::fs::File::open(path).map_err(FleetError::local("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(FleetError::local("read", path))?;
        if n == 0 {
            return Ok((hex(&hasher.finalize()), len));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

/// An incremental SHA-256 with the byte count.
#[derive(Default)]
pub struct Hasher {
    sha: Sha256,
    len: u64,
}

impl Hasher {
    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// The hex digest and the length.
    pub fn finish(self) -> (String, u64) {
        (hex(&self.sha.finalize()), self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        let dir = std::env::temp_dir().join(format!("fleet-sum-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("abc");
        std::fs::write(&path, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(file_sha256(&path).unwrap(), (abc.to_owned(), 3));
        let mut h = Hasher::default();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish(), (abc.to_owned(), 3));
        assert!(matches!(file_sha256(&dir.join("missing")), Err(FleetError::Local { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
