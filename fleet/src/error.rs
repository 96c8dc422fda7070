//! Why shipping or reading a crash in the fleet's store failed: each error says what was being
//! done to what.

use std::path::PathBuf;

/// An error of the fleet's crash store.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A request to the object store failed.
    #[error("the crash store could not {action} {key}: {source}")]
    Store {
        /// What was being done.
        action: &'static str,
        /// The object or prefix.
        key: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// The store could not be set up (bad configuration).
    #[error("cannot set up the crash store {url}: {source}")]
    Setup {
        /// The store.
        url: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// A local file-system operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Local {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The local crash store failed.
    #[error(transparent)]
    Spool(#[from] dumpd::store::StoreError),
    /// An object in the store is not what was sent.
    #[error("{key} in the crash store has SHA-256 {found} and {found_len} bytes, not {expected} and {expected_len} bytes as sent")]
    Checksum {
        /// The object.
        key: String,
        /// The checksum sent.
        expected: String,
        /// Its length.
        expected_len: u64,
        /// The checksum found.
        found: String,
        /// Its length.
        found_len: u64,
    },
    /// A crash's `meta.json` cannot be read or written.
    #[error("{what}: {detail}")]
    Meta {
        /// Which meta.json.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// An object read whole (a `meta.json`, a log) is larger than such a file can be.
    #[error("{key} in the crash store is {size} bytes, more than the {limit} bytes such a file may have: it was not written by crashvisor")]
    TooLarge {
        /// The object.
        key: String,
        /// Its length.
        size: u64,
        /// The most read whole.
        limit: u64,
    },
    /// No such crash.
    #[error("no crash {0} in the crash store")]
    NotFound(String),
}

impl FleetError {
    /// A mapper of object store errors for `action` on `key`.
    pub fn store(action: &'static str, key: impl ToString) -> impl FnOnce(object_store::Error) -> Self {
        let key = key.to_string();
        move |source| Self::Store { action, key, source }
    }

    /// A mapper of local I/O errors for `action` on `path`.
    pub fn local(action: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::Local { action, path, source }
    }
}
