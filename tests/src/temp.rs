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

/// A uniquely named directory in the system's temporary directory, removed with its contents
/// when dropped.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A fresh, empty directory named after `hint`.
    ///
    /// # Panics
    ///
    /// If the directory cannot be created.
    pub fn new(hint: &str) -> Self {
        let path = TempFile::new(hint).path.clone();
        // The `TempFile` removed any leftover file of that name; a leftover directory from a
        // crashed run with the same pid would be stale too.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        Self { path }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's path as a `&str`, for command lines.
    pub fn arg(&self) -> &str {
        self.path.to_str().expect("the temporary directory's path is UTF-8")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
