//! What the CLI tests share: running the real `dumpd` binary, scratch directories, and a
//! memory source to write test vmcores from.
#![allow(dead_code)] // each test binary uses its own part

use std::path::PathBuf;
use std::process::{Command, Output};

use dumpd::writer::{MemorySource, SourceError};

/// Runs the `dumpd` binary Cargo built for these tests.
pub fn dumpd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dumpd")).args(args).output().expect("the dumpd binary runs")
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A scratch directory, created empty and removed when dropped.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("dumpd-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a scratch directory");
        Self(path)
    }

    /// The path of `name` inside, as a string.
    pub fn join(&self, name: &str) -> String {
        self.0.join(name).to_str().expect("a UTF-8 path").to_owned()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `bytes` of physical memory starting at `base`.
pub struct Ram {
    pub base: u64,
    pub bytes: Vec<u8>,
}

impl Ram {
    /// `len` zero bytes at `base`.
    pub fn zeroed(base: u64, len: usize) -> Self {
        Self { base, bytes: vec![0; len] }
    }

    /// Writes `bytes` at physical address `paddr`.
    pub fn put(&mut self, paddr: u64, bytes: &[u8]) {
        let at = (paddr - self.base) as usize;
        self.bytes[at..at + bytes.len()].copy_from_slice(bytes);
    }
}

impl MemorySource for Ram {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        let at = (addr - self.base) as usize;
        buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
        Ok(())
    }
}
