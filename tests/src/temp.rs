//! Temporary files removed on drop, with std only.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A uniquely named path in the system's temporary directory, removed when dropped.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
}

impl TempFile {
    /// A fresh path that does not exist yet (for a program to create), named after `hint`.
    pub fn new(hint: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("crashvisor-tests-{}-{n}-{hint}", std::process::id());
        let path = std::env::temp_dir().join(name);
        // A leftover from a crashed run with the same pid would be stale: start clean.
        let _ = std::fs::remove_file(&path);
        Self { path }
    }

    /// A fresh file named after `hint`, holding `contents`.
    ///
    /// # Panics
    ///
    /// If the file cannot be written.
    pub fn with_contents(hint: &str, contents: &[u8]) -> Self {
        let file = Self::new(hint);
        std::fs::write(&file.path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", file.path.display()));
        file
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's path as a `&str`, for command lines.
    pub fn arg(&self) -> &str {
        self.path.to_str().expect("the temporary directory's path is UTF-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
