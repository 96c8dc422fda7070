//! Fleet store benchmark: a 1 GiB vmcore shipped by `crashvisor serve --crash-store` to a local
//! S3 server (s3s-fs on loopback, as the tests use): the upload's rate and the lag from
//! `vmcore_ready` to `vmcore_uploaded`.
//!
//!     cargo build --release --workspace && cargo bench -p crashvisor-benches --bench fleet
//!
//! One VM of 1 GiB takes a host-side dump (an ELF vmcore of 1 GiB apparent size, mostly holes);
//! the service hashes it, sends it in 16 MiB parts, reads every object back to check it and
//! writes `meta.json`. Rate = the crash's bytes / `took_ms` (checksums, upload and read-back);
//! lag = the event's `lag_ms` and, as the harness sees it, the time between the two SSE events.

use std::time::Duration;

use crashvisor_benches::{median, release_binary};
use crashvisor_tests::api::Service;
use crashvisor_tests::TempDir;
use fleet::test_server::S3Server;
use serde_json::json;

const RUNS: usize = 3;
const TIMEOUT: Duration = Duration::from_secs(600);

fn main() {
    release_binary("crashvisor"); // exits with instructions if it has not been built
    let server = S3Server::start("bench");
    let service = Service::start_with_env(
        TempDir::new("bench-fleet"),
        &["--crash-store", "s3://crashes/bench", "--host-id", "bench"],
        &server.env(),
    );
    let mut events = service.events("/v1/events");
    let created = service.post("/v1/vms", &json!({"name": "big", "vcpus": 1, "memory_mib": 1024}));
    assert_eq!(created.status, 201, "{}", created.text());
    events.wait("big", "booted", TIMEOUT);
    let (mut rates, mut lags, mut seen) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let dumped = service.post("/v1/vms/big/actions", &json!({"action": "dump"}));
        assert_eq!(dumped.status, 200, "{}", dumped.text());
        let ready = events.wait("big", "vmcore_ready", TIMEOUT);
        let id = ready.data["id"].as_str().expect("an id").to_owned();
        let done = events.wait_for(
            |e| e.name == "vmcore_uploaded" && e.data["spool_id"] == id.as_str(),
            "vmcore_uploaded",
            TIMEOUT,
        );
        let bytes = done.data["bytes"].as_f64().unwrap_or(0.0);
        let took = done.data["took_ms"].as_f64().unwrap_or(f64::NAN) / 1000.0;
        rates.push(bytes / took / f64::from(1 << 20));
        lags.push(done.data["lag_ms"].as_f64().unwrap_or(f64::NAN));
        seen.push((done.at - ready.at).as_secs_f64() * 1000.0);
        println!("{id}: {bytes} bytes in {took:.2} s");
    }
    println!("upload MB/s (MiB/s), median of {RUNS}: {:.1}", median(&mut rates));
    println!(
        "vmcore_ready → vmcore_uploaded, ms, median: {:.0} (lag_ms), {:.0} (between the SSE events)",
        median(&mut lags),
        median(&mut seen)
    );
}
