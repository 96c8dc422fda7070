//! The fleet's store against a real S3 server (s3s-fs on loopback): uploads byte-exact with
//! `meta.json` last, multipart resumed after an interrupted upload, an altered object detected
//! and sent again, a vmcore larger than one read checked and read back in ranges, the store
//! down then back, two hosts in one bucket, ranged reads, deletes, retention on a host's prefix,
//! and a full spool.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dumpd::store::{CrashMeta, CrashStore, Retention, Trigger, FILE_META, FILE_VMCORE, FILE_VMCORE_DMESG};
use fleet::bucket::READ_CHUNK;
use fleet::journal::{FileUpload, Journals};
use fleet::test_server::S3Server;
use fleet::{
    Backoff, FleetBucket, FleetError, Retrying, SpoolStatus, UploadObserver, Uploaded, Uploader, UploaderConfig,
};
use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};

const MIB: usize = 1 << 20;

fn spool(name: &str) -> (std::path::PathBuf, CrashStore) {
    let dir = std::env::temp_dir().join(format!("fleet-spool-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    (dir.clone(), CrashStore::open(&dir).unwrap())
}

/// Bytes that differ everywhere (xorshift), `seed` telling crashes apart.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Commits a crash of `vm` with a vmcore of `len` bytes and a log; returns its id.
fn crash(store: &CrashStore, vm: &str, len: usize, seed: u64) -> String {
    let pending = store.begin(vm).unwrap();
    pending.write_file(FILE_VMCORE, &data(len, seed)).unwrap();
    pending.write_file(FILE_VMCORE_DMESG, format!("Kernel panic - not syncing: crash {seed}\n").as_bytes()).unwrap();
    let mut meta = CrashMeta::new(Trigger::Kdump, vm, pending.created());
    meta.sizes.vmcore_apparent_bytes = len as u64;
    meta.files.vmcore_dmesg = Some(FILE_VMCORE_DMESG.into());
    pending.write_meta(&meta).unwrap();
    pending.commit().unwrap().id
}

fn config() -> UploaderConfig {
    UploaderConfig {
        part_size: 5 * MIB as u64,
        backoff: Backoff { first: Duration::from_millis(200), max: Duration::from_secs(2) },
        poll: Duration::from_millis(200),
        ..UploaderConfig::default()
    }
}

fn uploader(bucket: &Arc<FleetBucket>, store: &CrashStore, config: UploaderConfig, events: &Arc<Events>) -> Uploader {
    Uploader::new(bucket.clone(), store.clone(), config, events.clone()).unwrap()
}

#[derive(Default)]
struct Events {
    uploaded: Mutex<Vec<Uploaded>>,
    retrying: Mutex<Vec<Retrying>>,
    full: Mutex<Vec<SpoolStatus>>,
}

impl UploadObserver for Events {
    fn uploaded(&self, uploaded: &Uploaded) {
        self.uploaded.lock().unwrap().push(uploaded.clone());
    }
    fn retrying(&self, retrying: &Retrying) {
        self.retrying.lock().unwrap().push(retrying.clone());
    }
    fn spool_full(&self, status: &SpoolStatus) {
        self.full.lock().unwrap().push(*status);
    }
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The whole object at `key`, read as downloads read it (ranged GETs).
async fn object(bucket: &FleetBucket, key: &object_store::path::Path) -> Vec<u8> {
    let len = bucket.len(key).await.unwrap().expect("the object exists");
    bucket.get_range(key, 0..len).await.unwrap().try_collect::<Vec<_>>().await.unwrap().concat()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_crash_arrives_byte_exact_and_only_with_its_meta_json() {
    let server = S3Server::start("exact");
    let bucket = Arc::new(server.bucket("fleet", "host-a"));
    let (dir, store) = spool("exact");
    let id = crash(&store, "web-1", 12 * MIB + 12345, 1);
    let vmcore = std::fs::read(dir.join(&id).join(FILE_VMCORE)).unwrap();
    let events = Arc::new(Events::default());
    let up = uploader(&bucket, &store, config(), &events);

    // Files sent, not committed: every object is there but the crash is not listed.
    let (journal, _) = up.stage(&id).await.unwrap();
    assert!(journal.files.values().all(|f| f.upload == FileUpload::Sent));
    assert_eq!(bucket.len(&bucket.key("host-a", &id, FILE_VMCORE)).await.unwrap(), Some(vmcore.len() as u64));
    assert_eq!(bucket.len(&bucket.key("host-a", &id, FILE_META)).await.unwrap(), None);
    assert!(bucket.list(None).await.unwrap().is_empty(), "nothing is visible before meta.json");

    let uploaded = up.ship(&id).await.unwrap();
    assert_eq!(uploaded.url, format!("s3://crashes/fleet/host-a/{id}/"));
    assert!(uploaded.resent.is_empty());
    let stored = object(&bucket, &bucket.key("host-a", &id, FILE_VMCORE)).await;
    assert!(stored == vmcore, "the vmcore in the store is byte-exact");
    let listed = bucket.list(Some("host-a")).await.unwrap();
    assert_eq!(listed.len(), 1);
    let meta = listed[0].meta.as_ref().unwrap();
    assert_eq!((listed[0].id.as_str(), meta.vm.as_str()), (id.as_str(), "web-1"));
    let sums = meta.checksums.as_ref().expect("meta.json records checksums");
    assert_eq!(sums[FILE_VMCORE], sha256_hex(&vmcore));
    assert_eq!(sums.len(), 2, "{sums:?}");
    // Shipped: the local copy and its journal are gone.
    assert!(store.list().unwrap().is_empty());
    assert!(Journals::open(&dir).unwrap().ids().unwrap().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_vmcore_larger_than_one_read_is_checked_and_read_back_in_ranges() {
    let server = S3Server::start("chunks");
    let bucket = Arc::new(server.bucket("fleet", "host-a"));
    let (dir, store) = spool("chunks");
    let len = READ_CHUNK as usize + 3 * MIB + 7;
    let id = crash(&store, "web-1", len, 9);
    let vmcore = std::fs::read(dir.join(&id).join(FILE_VMCORE)).unwrap();
    let events = Arc::new(Events::default());
    let uploaded = uploader(&bucket, &store, config(), &events).ship(&id).await.unwrap();
    assert!(uploaded.resent.is_empty(), "the read-back check passed first time: {:?}", uploaded.resent);

    let key = bucket.key("host-a", &id, FILE_VMCORE);
    assert!(object(&bucket, &key).await == vmcore, "the vmcore read in ranges is byte-exact");
    let read = |range: std::ops::Range<u64>| {
        let bucket = bucket.clone();
        let key = key.clone();
        async move { bucket.get_range(&key, range).await.unwrap().try_collect::<Vec<_>>().await.unwrap().concat() }
    };
    let across = READ_CHUNK - 10..READ_CHUNK + 10;
    assert_eq!(read(across.clone()).await, vmcore[across.start as usize..across.end as usize]);
    assert!(read(5..5).await.is_empty());
    assert_eq!(bucket.sha256(&key).await.unwrap(), (sha256_hex(&vmcore), len as u64));
    // Objects read whole are small files; a vmcore is refused rather than held in memory.
    let refused = bucket.get(&key).await.unwrap_err();
    assert!(matches!(refused, FleetError::TooLarge { size, .. } if size == len as u64), "{refused}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_interrupted_multipart_upload_resumes() {
    let server = S3Server::start("resume");
    let bucket = Arc::new(server.bucket("", "host-a"));
    let (dir, store) = spool("resume");
    let id = crash(&store, "vm", 40 * MIB, 2);
    let events = Arc::new(Events::default());
    let journals = Journals::open(&dir).unwrap();

    // An uploader that stops dead (its task dropped, as in a kill) after two parts.
    let first = uploader(&bucket, &store, config(), &events);
    let shipping = tokio::spawn({
        let id = id.clone();
        async move { first.ship(&id).await }
    });
    let parts_sent = || match journals.load(&id).unwrap().map(|j| j.files[FILE_VMCORE].upload.clone()) {
        Some(FileUpload::Multipart { parts, upload_id, .. }) if parts.len() >= 2 => Some((upload_id, parts.len())),
        _ => None,
    };
    wait_for("two parts sent", Duration::from_secs(60), || parts_sent().is_some()).await;
    shipping.abort();
    let _ = shipping.await;
    let (upload_id, parts) = parts_sent().unwrap();
    assert!(parts < 8, "interrupted mid-upload ({parts} of 8 parts)");

    // A new uploader (a restarted service) resumes the same multipart upload and completes it.
    let second = uploader(&bucket, &store, config(), &events);
    let (journal, _) = second.stage(&id).await.unwrap();
    assert_eq!(journal.files[FILE_VMCORE].upload, FileUpload::Sent);
    let uploaded = second.ship(&id).await.unwrap();
    let stored = object(&bucket, &bucket.key("host-a", &id, FILE_VMCORE)).await;
    assert!(stored == data(40 * MIB, 2), "byte-exact after resuming upload {upload_id}");
    assert_eq!(uploaded.remote_id, id);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_object_altered_before_the_commit_is_detected_and_sent_again() {
    let server = S3Server::start("altered");
    let bucket = Arc::new(server.bucket("p", "host-a"));
    let (dir, store) = spool("altered");
    let id = crash(&store, "vm", 7 * MIB, 3);
    let events = Arc::new(Events::default());
    let up = uploader(&bucket, &store, config(), &events);
    up.stage(&id).await.unwrap();
    // Someone else writes the key behind the uploader's back: same length, other bytes.
    let key = bucket.key("host-a", &id, FILE_VMCORE);
    bucket.put(&key, data(7 * MIB, 99).into()).await.unwrap();

    let uploaded = up.ship(&id).await.unwrap();
    assert_eq!(uploaded.resent, [FILE_VMCORE]);
    assert!(object(&bucket, &key).await == data(7 * MIB, 3), "the right bytes were sent again");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_crash_deleted_from_the_spool_while_it_is_committed_does_not_stay_in_the_store() {
    let server = S3Server::start("delete-race");
    let bucket = Arc::new(server.bucket("", "host-a"));
    let (dir, store) = spool("delete-race");
    let id = crash(&store, "vm", 2 * MIB, 4);
    let events = Arc::new(Events::default());
    let up = Arc::new(uploader(&bucket, &store, config(), &events));
    up.stage(&id).await.unwrap();
    // The store stalls while the uploader reads the files back before the commit; meanwhile
    // the spool's copy is deleted (DELETE /v1/vmcores/ID saw no commit yet).
    server.freeze(true);
    let shipping = tokio::spawn({
        let (up, id) = (up.clone(), id.clone());
        async move { up.ship(&id).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    store.delete(&id).unwrap();
    server.freeze(false);
    let outcome = shipping.await.unwrap();
    let error = outcome.expect_err("a crash deleted during its upload is not reported uploaded").to_string();
    assert!(error.contains("deleted while it was being uploaded"), "{error}");
    assert!(bucket.list(None).await.unwrap().is_empty(), "the store does not keep a deleted crash");
    assert!(bucket.files("host-a", &id).await.unwrap().is_empty(), "nor any of its objects");
    assert!(Journals::open(&dir).unwrap().ids().unwrap().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn the_store_down_then_back_loses_nothing_and_sends_nothing_twice() {
    let mut server = S3Server::start("down");
    let bucket = Arc::new(server.bucket("fleet", "host-a"));
    let (dir, store) = spool("down");
    server.stop();
    let events = Arc::new(Events::default());
    let up = uploader(&bucket, &store, config(), &events);
    let kick = up.kicker();
    let queue = tokio::spawn(async move { up.run().await });
    let ids: Vec<String> = (0..4).map(|i| crash(&store, &format!("vm-{i}"), MIB + i, 10 + i as u64)).collect();
    kick.notify_one();
    wait_for("retries while the store is down", Duration::from_secs(60), || events.retrying.lock().unwrap().len() >= 4)
        .await;
    {
        let retrying = events.retrying.lock().unwrap();
        assert!(retrying.iter().all(|r| ids.contains(&r.id) && !r.error.is_empty()), "{retrying:?}");
        assert!(events.uploaded.lock().unwrap().is_empty());
    }
    server.resume();
    wait_for("every crash uploaded", Duration::from_secs(60), || events.uploaded.lock().unwrap().len() >= 4).await;
    wait_for("the spool drained", Duration::from_secs(10), || store.list().unwrap().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    queue.abort();
    let mut uploaded: Vec<String> = events.uploaded.lock().unwrap().iter().map(|u| u.id.clone()).collect();
    uploaded.sort();
    assert_eq!(uploaded, ids, "each crash once");
    let listed: Vec<String> = bucket.list(None).await.unwrap().into_iter().map(|c| c.id).collect();
    assert_eq!(listed.len(), 4);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn two_hosts_share_a_bucket_with_ranged_reads_deletes_and_retention_per_host() {
    let server = S3Server::start("fleet");
    let a = Arc::new(server.bucket("fleet", "host-a"));
    let b = Arc::new(server.bucket("fleet", "host-b"));
    let (dir_a, store_a) = spool("fleet-a");
    let (dir_b, store_b) = spool("fleet-b");
    let events = Arc::new(Events::default());
    let retention = Retention { max_per_vm: Some(2), max_total_bytes: None };
    let up_a = uploader(&a, &store_a, UploaderConfig { retention, ..config() }, &events);
    let up_b = uploader(&b, &store_b, config(), &events);

    let b_id = crash(&store_b, "db", MIB, 20);
    up_b.ship(&b_id).await.unwrap();
    let mut a_ids = Vec::new();
    for seed in 0..3 {
        let id = crash(&store_a, "web", 2 * MIB, 30 + seed);
        a_ids.push(up_a.ship(&id).await.unwrap().remote_id);
        tokio::time::sleep(Duration::from_millis(1100)).await; // distinct creation seconds
    }
    // Retention kept host-a's two newest of VM web, and never touched host-b.
    let host_a: Vec<String> = a.list(Some("host-a")).await.unwrap().into_iter().map(|c| c.id).collect();
    assert_eq!(host_a, a_ids[1..]);
    let fleet = b.list(None).await.unwrap();
    let hosts: Vec<(&str, &str)> = fleet.iter().map(|c| (c.host.as_str(), c.id.as_str())).collect();
    assert_eq!(hosts.len(), 3);
    assert!(hosts.contains(&("host-b", b_id.as_str())));
    assert!(hosts.contains(&("host-a", a_ids[2].as_str())));

    // Host b reads a range of host a's vmcore with one ranged GET.
    let key = b.key("host-a", &a_ids[2], FILE_VMCORE);
    let chunks: Vec<bytes::Bytes> = b.get_range(&key, 1000..5000).await.unwrap().try_collect().await.unwrap();
    let got: Vec<u8> = chunks.concat();
    assert_eq!(got, data(2 * MIB, 32)[1000..5000]);

    // Deleting removes it from listings and leaves no object behind.
    b.delete("host-a", &a_ids[2]).await.unwrap();
    assert!(b.list(Some("host-a")).await.unwrap().iter().all(|c| c.id != a_ids[2]));
    assert_eq!(b.len(&key).await.unwrap(), None);
    assert!(matches!(b.delete("host-a", &a_ids[2]).await, Err(fleet::FleetError::NotFound(_))));
    std::fs::remove_dir_all(&dir_a).unwrap();
    std::fs::remove_dir_all(&dir_b).unwrap();
}

#[tokio::test]
async fn a_crash_id_the_store_already_holds_gets_a_suffix() {
    let server = S3Server::start("collide");
    let bucket = Arc::new(server.bucket("", "host-a"));
    let (dir, store) = spool("collide");
    let events = Arc::new(Events::default());
    let up = uploader(&bucket, &store, config(), &events);
    // The store holds a crash of this id already (shipped earlier by this host, whose local
    // copy has gone, and the same VM crashed again in the same second).
    let second = crash(&store, "vm", 1000, 41);
    let taken = bucket.key("host-a", &second, FILE_META);
    bucket.put(&taken, std::fs::read(dir.join(&second).join(FILE_META)).unwrap().into()).await.unwrap();
    let first = second.clone();
    let shipped = up.ship(&second).await.unwrap();
    assert_eq!(shipped.remote_id, format!("{first}-1"));
    assert_eq!(bucket.list(None).await.unwrap().len(), 2, "the first crash is not overwritten");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_full_spool_is_reported_and_drops_nothing() {
    let mut server = S3Server::start("full");
    let bucket = Arc::new(server.bucket("", "host-a"));
    let (dir, store) = spool("full");
    server.stop();
    let events = Arc::new(Events::default());
    let up = uploader(&bucket, &store, UploaderConfig { spool_limit: Some(3 * MIB as u64), ..config() }, &events);
    let queue = tokio::spawn(async move { up.run().await });
    let ids: Vec<String> = (0..3).map(|i| crash(&store, "vm", 2 * MIB, 50 + i)).collect();
    wait_for("the spool reported full", Duration::from_secs(30), || !events.full.lock().unwrap().is_empty()).await;
    let full = events.full.lock().unwrap()[0];
    assert!(full.full && full.bytes > 3 * MIB as u64 && full.limit == Some(3 * MIB as u64), "{full:?}");
    assert!(full.waiting >= 2, "{full:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(store.list().unwrap().len(), 3, "no waiting crash is dropped");
    queue.abort();
    assert_eq!(ids.len(), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_local_copy_left_after_its_commit_is_removed_and_not_sent_again() {
    let server = S3Server::start("leftover");
    let bucket = Arc::new(server.bucket("", "host-a"));
    let (dir, store) = spool("leftover");
    let events = Arc::new(Events::default());
    let id = crash(&store, "vm", 1000, 60);
    // Committed in the store, the local copy still there (as after an uploader that ended
    // between the two), or kept on purpose.
    uploader(&bucket, &store, UploaderConfig { keep_local: true, ..config() }, &events).ship(&id).await.unwrap();
    let kept = uploader(&bucket, &store, UploaderConfig { keep_local: true, ..config() }, &events);
    assert_eq!(kept.status().await.unwrap().waiting, 0);
    assert_eq!(store.list().unwrap().len(), 1, "kept with --keep-local");
    // A look at the status changes nothing; the queue of an uploader that does not keep local
    // copies removes it, and sends nothing.
    let queue = Arc::new(uploader(&bucket, &store, config(), &events));
    let status = queue.status().await.unwrap();
    assert_eq!((status.waiting, status.bytes), (0, 16384), "{status:?}");
    assert_eq!(store.list().unwrap().len(), 1, "a status look leaves the spool alone");
    let running = tokio::spawn({
        let queue = queue.clone();
        async move { queue.run().await }
    });
    wait_for("the local copy removed", Duration::from_secs(30), || store.list().unwrap().is_empty()).await;
    running.abort();
    let _ = running.await;
    let status = queue.status().await.unwrap();
    assert_eq!((status.waiting, status.bytes), (0, 0), "{status:?}");
    assert!(Journals::open(&dir).unwrap().ids().unwrap().is_empty());
    assert_eq!(bucket.list(None).await.unwrap().len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}
