//! Finding a VM's VMM again after the service restarted: the recorded process must still run
//! (same pid, same start time), the process listening on the VM's control socket must be that
//! process (`SO_PEERCRED`), and it must answer `status`. And finding the crashes it committed
//! to the crash store while no service listened, to announce them.

use std::path::Path;
use std::time::Duration;

use crashvisor_control::{Event, Request, ServerLine, Status};
use dumpd::store::{CrashEntry, CrashStore, FailureRecord};

use super::control::ControlConn;
use super::process::VmmProcess;
use super::record::{Liveness, VmmIdentity};

/// How long an adopted VMM may take to accept the connection and to answer `status`.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The request id of the `status` asked on adoption (the session's own ids start above it).
pub const STATUS_ID: u64 = 0;

/// A VMM found again.
pub struct Adopted {
    /// The process.
    pub process: VmmProcess,
    /// Its control socket, connected.
    pub conn: ControlConn,
    /// What it said to `status`.
    pub status: Status,
    /// Events it sent before that answer, in order (they happened after the connection).
    pub events: Vec<Event>,
}

/// Adopts the VMM recorded as `recorded` (none: the service stopped while starting it) that
/// serves `socket`; or says why not. A VMM that runs but cannot be served is killed: nothing
/// else could ever reach it.
pub async fn adopt(recorded: Option<VmmIdentity>, socket: &Path) -> Result<Adopted, String> {
    if let Some(identity) = recorded {
        if identity.liveness() == Liveness::Ended {
            return Err(format!(
                "the VMM (pid {}) ended while no service ran; its exit status is unknown",
                identity.pid
            ));
        }
    }
    let attempt = tokio::time::timeout(ADOPT_TIMEOUT, connect(recorded, socket)).await;
    let (identity, conn) = match attempt {
        Ok(Ok(found)) => found,
        Ok(Err(reason)) => return Err(kill_unservable(recorded, reason)),
        Err(_) => {
            let reason = match recorded {
                Some(_) => format!("it did not accept a connection on {} within {ADOPT_TIMEOUT:?}", socket.display()),
                None => "no VMM serves its control socket".to_owned(),
            };
            return Err(kill_unservable(recorded, reason));
        }
    };
    let process = match VmmProcess::adopt(identity) {
        Ok(Some(process)) => process,
        Ok(None) => return Err(format!("the VMM (pid {}) ended while the service adopted it", identity.pid)),
        Err(e) => return Err(kill_unservable(Some(identity), format!("cannot hold its process: {e}"))),
    };
    match tokio::time::timeout(ADOPT_TIMEOUT, ask_status(conn)).await {
        Ok(Ok((conn, status, events))) => Ok(Adopted { process, conn, status, events }),
        Ok(Err(reason)) => {
            process.kill();
            Err(format!("the VMM (pid {}) was killed: {reason}", identity.pid))
        }
        Err(_) => {
            process.kill();
            Err(format!("the VMM (pid {}) was killed: it did not answer status within {ADOPT_TIMEOUT:?}", identity.pid))
        }
    }
}

/// Connects to `socket` and checks who listens there.
async fn connect(recorded: Option<VmmIdentity>, socket: &Path) -> Result<(VmmIdentity, ControlConn), String> {
    let conn = ControlConn::connect(socket).await;
    let peer = conn.peer_pid().ok_or("the kernel did not name the process on its control socket")?;
    match recorded {
        Some(identity) if identity.pid == peer => Ok((identity, conn)),
        Some(identity) => Err(format!(
            "another process (pid {peer}) serves its control socket {}, not its VMM (pid {})",
            socket.display(),
            identity.pid
        )),
        None => VmmIdentity::of(peer).map(|identity| (identity, conn)).map_err(|e| e.to_string()),
    }
}

/// Kills the recorded VMM if it still runs (it cannot be served), and says so.
fn kill_unservable(recorded: Option<VmmIdentity>, reason: String) -> String {
    match recorded.map(VmmProcess::adopt) {
        Some(Ok(Some(process))) => {
            process.kill();
            format!("the VMM (pid {}) was killed: {reason}", process.identity().pid)
        }
        _ => reason,
    }
}

/// Sends `status` and reads up to its answer, keeping the events that come first.
async fn ask_status(mut conn: ControlConn) -> Result<(ControlConn, Status, Vec<Event>), String> {
    conn.send(STATUS_ID, &Request::Status {}).await.map_err(|e| format!("cannot send status: {e}"))?;
    let mut events = Vec::new();
    loop {
        match conn.next().await {
            Some(ServerLine::Event(event)) => events.push(event),
            Some(ServerLine::Response(response)) if response.id.as_u64() == Some(STATUS_ID) => {
                let result = response.outcome.map_err(|e| format!("it answered status with {e}"))?;
                let status = serde_json::from_value(result).map_err(|e| format!("its status is unreadable: {e}"))?;
                return Ok((conn, status, events));
            }
            Some(ServerLine::Response(_)) => {}
            None => return Err("it closed its control socket".into()),
        }
    }
}

/// The crashes of VM `vm` in `store` that were committed after it was created
/// (`created_unix_ms`) and are not among `announced`, oldest first, as the VMM announces them.
pub fn missed_vmcores(store: &CrashStore, vm: &str, created_unix_ms: u64, announced: &[String]) -> Vec<Event> {
    match store.list() {
        Ok(entries) => missed(&entries, vm, created_unix_ms, announced),
        Err(e) => {
            tracing::warn!("cannot look for vmcores committed while no service ran: {e}");
            Vec::new()
        }
    }
}

fn missed(entries: &[CrashEntry], vm: &str, created_unix_ms: u64, announced: &[String]) -> Vec<Event> {
    entries
        .iter()
        .filter_map(|entry| {
            let meta = entry.meta.as_ref()?;
            let new = meta.vm == vm && meta.created_unix_ms >= created_unix_ms && !announced.contains(&entry.id);
            new.then(|| Event::VmcoreReady {
                id: entry.id.clone(),
                path: entry.path.display().to_string(),
                size: meta.sizes.vmcore_apparent_bytes,
                on_disk: meta.sizes.vmcore_on_disk_bytes,
            })
        })
        .collect()
}

/// The failed captures of `vm` (created at `created_unix_ms`) recorded after its VMM ended
/// (by a sweep, or by a dump writer that finished alone) and not in `announced`: their keys
/// and reasons, oldest first. Nobody else announces them.
pub fn missed_failures(
    store: &CrashStore,
    vm: &str,
    created_unix_ms: u64,
    announced: &[String],
) -> Vec<(String, String)> {
    match store.failures() {
        Ok(records) => missed_failures_in(&records, vm, created_unix_ms, announced),
        Err(e) => {
            tracing::warn!("cannot look for failed captures recorded after the VMM ended: {e}");
            Vec::new()
        }
    }
}

fn missed_failures_in(
    records: &[FailureRecord],
    vm: &str,
    created_unix_ms: u64,
    announced: &[String],
) -> Vec<(String, String)> {
    // Record times have whole seconds: one in the second the VM was created counts as its own.
    let created_secs = created_unix_ms / 1000 * 1000;
    records
        .iter()
        .filter(|r| r.after_vmm_ended && r.vm == vm && r.unix_ms().is_some_and(|at| at >= created_secs))
        .map(|r| (failure_key(r), r.reason.clone()))
        .filter(|(key, _)| !announced.contains(key))
        .collect()
}

/// What tells a recorded failure apart: its time and reason.
pub fn failure_key(record: &FailureRecord) -> String {
    format!("{} {}", record.time, record.reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dumpd::store::{CrashMeta, Trigger};
    use std::time::{SystemTime, UNIX_EPOCH};

    fn entry(id: &str, vm: &str, created_unix_ms: u64) -> CrashEntry {
        let created = UNIX_EPOCH + Duration::from_millis(created_unix_ms);
        let mut meta = CrashMeta::new(Trigger::Pvpanic, vm, created);
        meta.sizes.vmcore_apparent_bytes = 100;
        CrashEntry { id: id.into(), path: format!("/c/{id}").into(), meta: Some(meta) }
    }

    #[test]
    fn only_this_vms_new_unannounced_crashes_are_missed() {
        let t0 = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let entries = [
            entry("web-old", "web", t0 - 1),
            entry("web-1", "web", t0 + 1),
            entry("web-2", "web", t0 + 2),
            entry("web-x-1", "web-x", t0 + 3),
            CrashEntry { id: "web-3".into(), path: "/c/web-3".into(), meta: None },
        ];
        let missed = missed(&entries, "web", t0, &["web-1".to_owned()]);
        assert_eq!(missed.len(), 1, "{missed:?}");
        let Event::VmcoreReady { id, size, .. } = &missed[0] else { panic!("{missed:?}") };
        assert_eq!((id.as_str(), *size), ("web-2", 100));
    }

    #[test]
    fn only_this_vms_unannounced_failures_recorded_after_its_vmm_ended_are_missed() {
        let t0 = 1_700_000_000_000;
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        let record = |vm: &str, ms: u64, reason: &str| {
            FailureRecord::new(vm, Trigger::OnDemand, reason.into(), at(ms)).after_vmm_ended()
        };
        let announced = record("web", t0 + 2_000, "announced");
        let records = [
            record("web", t0 - 5_000, "an older VM of that name"),
            FailureRecord::new("web", Trigger::OnDemand, "announced by its VMM".into(), at(t0 + 1_000)),
            record("web-x", t0 + 1_000, "another VM"),
            announced.clone(),
            record("web", t0 + 400, "in the second the VM was created"),
            record("web", t0 + 3_000, "swept"),
        ];
        let missed = missed_failures_in(&records, "web", t0 + 500, &[failure_key(&announced)]);
        let reasons: Vec<&str> = missed.iter().map(|(_, reason)| reason.as_str()).collect();
        assert_eq!(reasons, ["in the second the VM was created", "swept"]);
        assert_eq!(missed[1].0, failure_key(&records[5]));
    }

    #[tokio::test]
    async fn a_dead_vmm_is_not_adopted() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let identity = VmmIdentity::of(child.id()).unwrap();
        child.wait().unwrap();
        let reason = adopt(Some(identity), Path::new("/nonexistent.sock")).await.err().unwrap();
        assert!(reason.contains("ended while no service ran"), "{reason}");
    }
}
