//! A file that appears at its path complete or not at all: written as a hidden temporary file
//! in the same directory, then `fsync`ed and renamed over the path, then the directory is
//! `fsync`ed. Dropped before [`AtomicFile::commit`], the temporary file is removed.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Why an atomic file could not be created or committed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}", path.display())]
pub struct AtomicFileError {
    /// What was being done.
    pub action: &'static str,
    /// The path it was done to.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// `AtomicFileError` for `action` on `path`, as a `map_err` argument.
fn err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AtomicFileError + 'a {
    move |source| AtomicFileError { action, path: path.to_path_buf(), source }
}

/// A file being written; [`AtomicFile::commit`] makes it visible at its path.
#[derive(Debug)]
pub struct AtomicFile {
    file: File,
    temp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl AtomicFile {
    /// Creates the temporary file `.<name>.tmp-<pid>-<n>` beside `path`.
    pub fn create(path: &Path) -> Result<Self, AtomicFileError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = path.file_name().ok_or_else(|| {
            err("write", path)(std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file"))
        })?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let temp = dir.join(format!(".{}.tmp-{}-{n}", name.to_string_lossy(), std::process::id()));
            match OpenOptions::new().read(true).write(true).create_new(true).open(&temp) {
                Ok(file) => return Ok(Self { file, temp, path: path.to_path_buf(), committed: false }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(err("create a temporary file for", path)(e)),
            }
        }
    }

    /// The temporary file, to write into.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Syncs the file, renames it to its path (replacing what was there) and syncs the
    /// directory.
    pub fn commit(mut self) -> Result<(), AtomicFileError> {
        self.file.sync_all().map_err(err("sync", &self.temp))?;
        std::fs::rename(&self.temp, &self.path).map_err(err("rename the temporary file to", &self.path))?;
        self.committed = true;
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        File::open(dir).and_then(|d| d.sync_all()).map_err(err("sync directory", dir))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TestDir;
    use std::io::Write;

    #[test]
    fn appears_only_when_committed() {
        let dir = TestDir::new("atomic");
        let path = dir.path().join("out");
        std::fs::write(&path, b"old").unwrap();
        let atomic = AtomicFile::create(&path).unwrap();
        atomic.file().write_all(b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "the temporary file sits beside it");
        atomic.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let dropped = AtomicFile::create(&path).unwrap();
        dropped.file().write_all(b"partial").unwrap();
        drop(dropped);
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "the temporary file is gone");
        assert!(AtomicFile::create(Path::new("/")).is_err());
        assert!(AtomicFile::create(&dir.path().join("no/such/dir/out")).is_err());
    }
}
