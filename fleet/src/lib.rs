//! A fleet's crash store (docs/crash-store.md, "The fleet's store"): the local crash directory
//! becomes a spool, and every crash committed there is shipped to S3-compatible object storage
//! that many hosts share, under `PREFIX/HOST/ID/`, with `meta.json` last as the commit marker.
//!
//! - [`location`]: `s3://BUCKET/PREFIX` and host ids.
//! - [`bucket`]: the store itself (through `object_store`): keys, uploads, listings, reads and
//!   deletes of committed crashes.
//! - [`journal`]: the durable upload journal in the spool, which lets an upload resume after a
//!   restart.
//! - [`uploader`]: the upload queue: checksums, multipart, verification, the commit marker,
//!   retries with backoff, the spool limit and retention in the store.

pub mod bucket;
pub mod checksum;
mod error;
pub mod journal;
pub mod location;
pub mod uploader;

#[cfg(any(test, feature = "test-server"))]
pub mod test_server;

pub use bucket::{FleetBucket, RemoteCrash};
pub use error::FleetError;
pub use location::{default_host_id, validate_host_id, StoreUrl};
pub use uploader::{Backoff, Retrying, SpoolStatus, UploadObserver, Uploaded, Uploader, UploaderConfig};
