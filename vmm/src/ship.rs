//! `vmm --crash-store`: a VMM run on its own ships its crashes to the fleet's store as the
//! service does (docs/crash-store.md, "The fleet's store"). The upload queue runs on a thread of
//! its own while the VM runs; when the VM ends, the VMM waits (at most `--upload-wait`) for the
//! spool to drain. A crash still waiting then stays in the spool, and the next uploader of that
//! crash directory (a VMM or a service with `--crash-store`) ships it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use dumpd::store::{CrashStore, Retention};
use fleet::{FleetBucket, StoreUrl, Uploader, UploaderConfig};

/// How a lone VMM ships its crashes.
#[derive(Debug, Clone)]
pub struct ShipOptions {
    /// The store.
    pub url: StoreUrl,
    /// This host's id [default: the host name].
    pub host_id: Option<String>,
    /// Keep local copies after upload.
    pub keep_local: bool,
    /// The spool's size limit.
    pub spool_limit: Option<u64>,
    /// Retention on this host's prefix in the store.
    pub retention: Retention,
}

/// The upload queue of a running VMM.
pub struct Shipper {
    uploader: Arc<Uploader>,
    runtime: tokio::runtime::Runtime,
}

/// Starts shipping the crashes of `crash_dir` (those already there included).
pub fn start(crash_dir: &Path, options: ShipOptions) -> anyhow::Result<Shipper> {
    let host = match options.host_id {
        Some(host) => {
            fleet::validate_host_id(&host).map_err(anyhow::Error::msg)?;
            host
        }
        None => fleet::default_host_id().map_err(anyhow::Error::msg)?,
    };
    let bucket = FleetBucket::from_env(&options.url, &host)?;
    let spool =
        CrashStore::open(crash_dir).with_context(|| format!("cannot open the spool {}", crash_dir.display()))?;
    let config = UploaderConfig {
        keep_local: options.keep_local,
        spool_limit: options.spool_limit,
        retention: options.retention,
        poll: Duration::from_millis(500),
        ..UploaderConfig::default()
    };
    let uploader = Arc::new(Uploader::new(Arc::new(bucket), spool, config, Arc::new(()))?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("upload")
        .enable_all()
        .build()
        .context("cannot start the upload queue's runtime")?;
    let queue = uploader.clone();
    runtime.spawn(async move { queue.run().await });
    Ok(Shipper { uploader, runtime })
}

impl Shipper {
    /// Waits at most `wait` for every crash of the spool to be committed in the store, then
    /// stops the queue.
    pub fn finish(self, wait: Duration) {
        let deadline = Instant::now() + wait;
        self.runtime.block_on(async {
            loop {
                match self.uploader.status().await {
                    Ok(status) if status.waiting == 0 => break,
                    Ok(status) if Instant::now() >= deadline => {
                        tracing::warn!(
                            "{} crashes are still waiting in the spool after {wait:?}; the next uploader of this \
                             crash directory ships them",
                            status.waiting
                        );
                        break;
                    }
                    // A crash may leave the spool while it is being read: look again.
                    Err(e) if Instant::now() >= deadline => {
                        tracing::warn!("cannot read the spool to wait for its uploads: {e}");
                        break;
                    }
                    Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        self.runtime.shutdown_background();
    }
}
