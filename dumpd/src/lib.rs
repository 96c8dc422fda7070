//! Everything about vmcores: reading and validating ELF core files ([`elf`]), writing them in
//! one pass as sparse files ([`writer`]), and keeping them in the crash store ([`store`], with
//! retention); makedumpfile's kdump-compressed format ([`kdump`]); opening either format for
//! reading ([`image::open`]) and converting between them ([`convert`]).
//!
//! A capture, end to end: lay out the headers, write the file from memory, commit it.
//!
//! ```
//! use dumpd::elf::build::{layout, LoadSpec};
//! use dumpd::store::{CrashMeta, CrashStore, Trigger, FILE_VMCORE};
//! use dumpd::writer::{write_vmcore, MemorySource, SourceError};
//!
//! /// 64 KiB of "guest RAM" at address 0, mostly zero.
//! struct Ram(Vec<u8>);
//! impl MemorySource for Ram {
//!     fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), SourceError> {
//!         let bytes = usize::try_from(addr).ok().and_then(|a| self.0.get(a..a + buf.len()));
//!         buf.copy_from_slice(bytes.ok_or(SourceError { addr, len: buf.len() as u64, source: None })?);
//!         Ok(())
//!     }
//! }
//! let mut ram = Ram(vec![0; 0x10000]);
//! ram.0[0x2000] = 0xcc;
//!
//! let core = layout(&[], &[LoadSpec { vaddr: 0xffff_8880_0000_0000, paddr: 0, len: 0x10000 }])?;
//! # let dir = std::env::temp_dir().join(format!("dumpd-lib-doc-{}", std::process::id()));
//! let store = CrashStore::open(&dir)?;
//! let pending = store.begin("vm")?;
//! let file = pending.create_file(FILE_VMCORE)?;
//! let stats = write_vmcore(&file, &core.headers, &core.runs, core.file_size, &ram)?;
//! assert_eq!(stats.zero_pages_skipped, 15);
//! pending.write_meta(&CrashMeta::new(Trigger::OnDemand, "vm", pending.created()))?;
//! let crash = pending.commit()?;
//! println!("{} is ready", crash.path.display());
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub mod analysis;
pub mod atomic;
pub mod convert;
pub mod elf;
pub mod image;
pub mod kdump;
pub mod store;
pub mod writeback;
pub mod writer;

use std::path::PathBuf;

/// An error and its causes on one line, "outer: inner: innermost". A cause whose text the line
/// already holds (some library errors repeat their source) is not repeated.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The crash store used when none is given: `$XDG_DATA_HOME/crashvisor/crash`, else
/// `~/.local/share/crashvisor/crash`, else `./crash`.
pub fn default_crash_dir() -> PathBuf {
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(data).join("crashvisor/crash");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/crashvisor/crash"),
        None => PathBuf::from("crash"),
    }
}

/// A scratch directory for tests, removed when dropped.
#[cfg(test)]
pub(crate) mod test_dir {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};

    pub(crate) struct TestDir(PathBuf);

    impl TestDir {
        pub(crate) fn new(name: &str) -> Self {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("dumpd-test-{name}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("create a test directory");
            Self(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
