//! The guest's control channel under a busy host: a soak of forwarded requests, one at a time
//! and pipelined, across guest reboots, while the test keeps every host core busy. None may be
//! lost (every request answered, with the answer its kind expects), and the latency under that
//! load is printed.
//!
//! This is the regression test for a lost wake-up in the guest's scheduler: a wake-up from
//! another CPU that landed between a task's "going to sleep" decision and the switch away from
//! it left the task runnable on no run queue. On an idle host that window is a few emulated
//! instructions; with the host's cores busy a vCPU thread can be preempted inside it, and the
//! control thread, woken by the COM2 interrupt, never ran again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crashvisor_tests::{ErrorReply, Vm};
use serde_json::{json, Value};

/// Forwarded requests per boot, half one at a time and half pipelined (three boots).
const REQUESTS_PER_BOOT: usize = 3_400;
/// Requests in flight at once in the pipelined half.
const PIPELINE_DEPTH: usize = 16;
/// How long one answer may take under this load before the test calls it lost: the VMM's own
/// guest timeout (10 s) and then some, so a VMM timeout shows as what it is.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Spinning threads on every host core until dropped.
struct BusyHost {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl BusyHost {
    fn start() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for BusyHost {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One kind of request in the mix, and what its answer must look like.
struct Kind {
    name: &'static str,
    request: fn(usize) -> Value,
    check: fn(&Result<Value, ErrorReply>) -> bool,
}

const KINDS: &[Kind] = &[
    Kind {
        name: "sysctl_get",
        request: |_| json!({"cmd": "sysctl_get", "name": "kernel.hung_task_warnings"}),
        check: |r| r.as_ref().is_ok_and(|v| v["value"].as_str().is_some()),
    },
    Kind {
        name: "sysctl_set good",
        request: |n| json!({"cmd": "sysctl_set", "name": "kernel.hung_task_warnings", "value": 5 + n % 10}),
        check: |r| r.as_ref().is_ok_and(|v| v["value"].as_str().is_some_and(|s| s.parse::<u32>().is_ok())),
    },
    Kind {
        name: "sysctl_set bad value",
        request: |_| json!({"cmd": "sysctl_set", "name": "kernel.hung_task_warnings", "value": "many"}),
        check: |r| matches!(r, Err(e) if e.code == "bad_argument"),
    },
    Kind {
        name: "sysctl_get unknown",
        request: |_| json!({"cmd": "sysctl_get", "name": "kernel.no_such_knob"}),
        check: |r| matches!(r, Err(e) if e.code == "unknown_sysctl"),
    },
    Kind {
        name: "uptime",
        request: |_| json!({"cmd": "uptime"}),
        check: |r| r.as_ref().is_ok_and(|v| v["ns"].as_u64().is_some_and(|ns| ns > 0)),
    },
    Kind {
        name: "ps",
        request: |_| json!({"cmd": "ps"}),
        check: |r| r.as_ref().is_ok_and(|v| v["text"].as_str().is_some_and(|t| t.contains("kcontrold"))),
    },
    Kind {
        name: "dmesg",
        request: |n| json!({"cmd": "dmesg", "since": n % 8}),
        check: |r| r.as_ref().is_ok_and(|v| v["next"].as_u64().is_some() && v["text"].is_string()),
    },
    Kind {
        name: "short fault",
        // A few milliseconds of uninterruptible sleep or of spinning with preemption off:
        // far below any detector's threshold.
        request: |n| {
            let fault = if n % 2 == 0 { "hung_task" } else { "softlockup" };
            json!({"cmd": "inject", "fault": fault, "cpu": n % 2, "duration_ms": 3})
        },
        check: |r| r.as_ref().is_ok_and(|v| v["pid"].as_u64().is_some()),
    },
];

/// Which kind request number `n` is: mostly the cheap ones; `ps` and `dmesg` (whose answers
/// are whole tables and logs, written through the UART by an emulated CPU) every 20th each,
/// and a short fault every 100th (each leaves a dead task in `ps`).
fn kind_of(n: usize) -> &'static Kind {
    let [cheap @ .., ps, dmesg, fault] = KINDS else { unreachable!("KINDS ends with ps, dmesg and the fault") };
    match (n % 100, n % 20) {
        (99, _) => fault,
        (_, 9) => ps,
        (_, 19) => dmesg,
        _ => &cheap[n % cheap.len()],
    }
}

/// Latencies of one mode, in the order they were measured.
#[derive(Default)]
struct Latencies(Vec<Duration>);

impl Latencies {
    fn report(&mut self, mode: &str) {
        self.0.sort();
        let at = |q: f64| self.0[((self.0.len() - 1) as f64 * q).round() as usize];
        eprintln!(
            "{mode}: {} requests, latency median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.0.len(),
            at(0.5).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3,
            at(1.0).as_secs_f64() * 1e3,
        );
    }
}

/// Checks the answer to request `n` (of `kind`), failing the test on a wrong or lost one.
#[track_caller]
fn check(vm: &mut Vm, n: usize, reply: Result<crashvisor_tests::Reply, crashvisor_tests::ControlFailure>) {
    let kind = kind_of(n);
    let outcome = match reply {
        Ok(reply) => reply.outcome,
        Err(failure) => vm.fail(&format!("request {n} ({}) was lost: {failure}", kind.name)),
    };
    if !(kind.check)(&outcome) {
        vm.fail(&format!("request {n} ({}) got an unexpected answer: {outcome:?}", kind.name));
    }
}

fn one_at_a_time(vm: &mut Vm, first: usize, count: usize, latencies: &mut Latencies) {
    for n in first..first + count {
        let sent = Instant::now();
        let reply = vm.control().request((kind_of(n).request)(n), ANSWER_TIMEOUT);
        latencies.0.push(sent.elapsed());
        check(vm, n, reply);
    }
}

fn pipelined(vm: &mut Vm, first: usize, count: usize, latencies: &mut Latencies) {
    let mut in_flight = std::collections::VecDeque::new();
    let mut next = first;
    while next < first + count || !in_flight.is_empty() {
        while next < first + count && in_flight.len() < PIPELINE_DEPTH {
            let id = vm.control().send((kind_of(next).request)(next));
            let id = id.unwrap_or_else(|failure| vm.fail(&failure.to_string()));
            in_flight.push_back((next, id, Instant::now()));
            next += 1;
        }
        let (n, id, sent) = in_flight.pop_front().expect("the loop keeps one in flight");
        let reply = vm.control().response(id, ANSWER_TIMEOUT);
        latencies.0.push(sent.elapsed());
        check(vm, n, reply);
    }
}

/// Panics the guest (`panic=1` reboots it a second later) and waits for its next boot.
fn reboot(vm: &mut Vm, boot: u64) {
    vm.request_ok(json!({"cmd": "inject", "fault": "panic", "cpu": 0, "message": "soak reboot"}));
    vm.wait_event(|e| e.is("rebooting"), "the reboot after the panic", Duration::from_secs(60));
    assert_eq!(vm.wait_booted(), boot + 1);
}

#[test]
fn ten_thousand_requests_on_a_busy_host_across_reboots_none_lost() {
    let mut vm = Vm::start_controlled(&["--vcpus", "2", "--memory", "64", "--cmdline", "panic=1"]);
    assert_eq!(vm.wait_booted(), 1);
    let busy = BusyHost::start();
    let (mut serial, mut piped) = (Latencies::default(), Latencies::default());
    let half = REQUESTS_PER_BOOT / 2;
    for boot in 1..=3u64 {
        let first = (boot as usize - 1) * REQUESTS_PER_BOOT;
        one_at_a_time(&mut vm, first, half, &mut serial);
        pipelined(&mut vm, first + half, REQUESTS_PER_BOOT - half, &mut piped);
        let status = vm.request_ok(json!({"cmd": "status"}));
        assert_eq!(status["guest_control"], json!(true), "boot {boot}: {status}");
        if boot < 3 {
            reboot(&mut vm, boot);
        }
    }
    drop(busy);
    serial.report("one at a time, host busy");
    piped.report(&format!("pipelined {PIPELINE_DEPTH} deep, host busy"));
}

/// The CPU the guest's control thread runs on, from `ps`.
fn control_thread_cpu(vm: &mut Vm) -> u64 {
    let ps = vm.request_ok(json!({"cmd": "ps"}));
    let text = ps["text"].as_str().unwrap_or_default().to_string();
    let row = text.lines().find(|l| l.ends_with("[kcontrold]"));
    let cpu = row.and_then(|l| l.split_whitespace().nth(2)).and_then(|c| c.parse().ok());
    cpu.unwrap_or_else(|| vm.fail(&format!("no kcontrold row in ps:\n{text}")))
}

/// While the CPU of the guest's control thread spins with interrupts off, requests time out
/// and `status` says the guest does not answer; once the spin ends the channel heals by itself
/// (the VMM's probe is answered) and the next request is answered at once.
#[test]
fn status_tells_when_the_guest_stops_answering_and_the_channel_heals() {
    let mut vm = Vm::start_controlled(&["--vcpus", "2", "--memory", "64", "--cmdline", "nowatchdog"]);
    vm.wait_booted();
    let cpu = control_thread_cpu(&mut vm);
    let spin = Duration::from_secs(6);
    let fault = json!({"cmd": "inject", "fault": "hardlockup", "cpu": cpu, "duration_ms": spin.as_millis() as u64});
    vm.request_ok(fault);
    let started = Instant::now();
    // The fault's task is as important as the control thread, so it takes the CPU when the
    // thread blocks or its time slice ends: a request that arrives before then is answered.
    let error = loop {
        match vm.request(json!({"cmd": "uptime", "timeout_ms": 1000})) {
            Ok(_) if started.elapsed() < spin / 2 => continue,
            outcome => break outcome.expect_err("the guest cannot answer"),
        }
    };
    assert_eq!(error.code, "guest_timeout");
    assert_eq!(vm.request_ok(json!({"cmd": "status"}))["guest_control"], json!(false));
    // Healed without any client request: poll the VMM's own status only.
    let healed = loop {
        if vm.request_ok(json!({"cmd": "status"}))["guest_control"] == json!(true) {
            break started.elapsed();
        }
        if started.elapsed() > spin + Duration::from_secs(30) {
            vm.fail("the control channel did not heal after the lockup ended");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("channel answered again {:.1} s after a {:.0} s lockup began", healed.as_secs_f64(), spin.as_secs_f64());
    assert!(healed >= spin - Duration::from_millis(500), "healed after {healed:?}, before the lockup ended");
    let uptime = vm.request_ok(json!({"cmd": "uptime"}));
    assert!(uptime["ns"].as_u64().is_some(), "{uptime}");
}
