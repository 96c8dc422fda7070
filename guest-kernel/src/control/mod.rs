//! The machine control channel: a kernel thread serving the host's requests on COM2 with the
//! text protocol of `crashvisor_abi::control` (inject faults and LKDTM crash types, sysctls,
//! ps, uptime, dmesg, kexec and kdump).

mod kexec;

use alloc::string::String;
use core::sync::atomic::Ordering;

use crashvisor_abi::control::{
    decode_value, encode_value, key, parse_line, parse_u32, parse_u64, ErrorCode, FaultKind, Line, Verb, HELLO_ID,
    MAX_MESSAGE_LEN, MAX_REQUEST_LEN, PROTOCOL_VERSION,
};
use crashvisor_abi::control::{LkdtmRequest, LkdtmRequestError};
use crashvisor_abi::lkdtm::CrashPoint;
use crashvisor_abi::platform::EventKind;
use crashvisor_abi::serial::COM2_PORT;

use crate::arch::percpu;
use crate::inject::{self, Fault, InjectError};
use crate::serial::{RxQueue, Uart};
use crate::sysctl::{self, SysctlError};
use crate::{platform, printk, procfs, sched, smp, time, uts};

static UART: Uart = Uart::new(COM2_PORT);
static INPUT: RxQueue<4096> = RxQueue::new();

/// Programs COM2 and starts the control thread.
pub fn init() {
    UART.init();
    UART.enable_rx_interrupt();
    sched::spawn("kcontrold", sched::task::Policy::Normal, None, control_thread, 0);
}

/// COM2 interrupt: queue the received bytes for the control thread.
pub fn interrupt() {
    INPUT.fill_from(&UART);
}

/// A response under construction: `<id> ok|err` and `key=value` pairs, values encoded.
pub(super) struct Response {
    line: String,
}

impl Response {
    pub(super) fn ok(id: u32) -> Self {
        Self { line: alloc::format!("{id} ok") }
    }

    pub(super) fn err(id: u32, code: ErrorCode, message: &str) -> Self {
        let mut r = Self { line: alloc::format!("{id} err {}={}", key::CODE, code.as_str()) };
        r.value(key::MESSAGE, message.as_bytes());
        r
    }

    pub(super) fn value(&mut self, name: &str, bytes: &[u8]) -> &mut Self {
        self.line.push(' ');
        self.line.push_str(name);
        self.line.push('=');
        encode_value(bytes, &mut |piece| self.line.push_str(core::str::from_utf8(piece).unwrap_or("")));
        self
    }

    pub(super) fn send(mut self) {
        self.line.push('\n');
        UART.write(self.line.as_bytes());
    }
}

fn control_thread(_: usize) {
    crate::wait_for_init();
    let mut hello = Response { line: alloc::format!("{HELLO_ID} hello") };
    hello_fields(&mut hello);
    hello.send();
    platform::event(EventKind::ControlReady, percpu::cpu_id(), PROTOCOL_VERSION as u16);
    let mut line = alloc::vec::Vec::with_capacity(MAX_REQUEST_LEN);
    let mut overlong = false;
    loop {
        let byte = INPUT.read_byte(&UART);
        if byte != b'\n' {
            if line.len() < MAX_REQUEST_LEN {
                line.push(byte);
            } else {
                overlong = true;
            }
            continue;
        }
        if overlong {
            Response::err(0, ErrorCode::BadArgument, "request longer than MAX_REQUEST_LEN").send();
        } else if line.is_empty() {
            // The host's resynchronisation mark: whatever came before it is finished.
        } else if let Ok(text) = core::str::from_utf8(&line) {
            serve(text);
        }
        line.clear();
        overlong = false;
    }
}

fn hello_fields(r: &mut Response) {
    r.value(key::VERSION, alloc::format!("{PROTOCOL_VERSION}").as_bytes());
    r.value(key::RELEASE, uts::RELEASE.as_bytes());
    r.value(key::CPUS, alloc::format!("{}", percpu::online_count()).as_bytes());
}

fn serve(text: &str) {
    let request = match parse_line(text) {
        Ok(line) => line,
        Err(e) => return Response::err(0, ErrorCode::BadArgument, e.as_str()).send(),
    };
    let id = request.id;
    let Some(verb) = request.verb() else {
        return Response::err(id, ErrorCode::UnknownVerb, request.word).send();
    };
    match verb {
        Verb::Hello => {
            let mut r = Response::ok(id);
            hello_fields(&mut r);
            r.send();
        }
        Verb::Inject => serve_inject(&request),
        Verb::SysctlGet => serve_sysctl(&request, None),
        Verb::SysctlSet => match decoded(&request, key::VALUE) {
            Some(value) => serve_sysctl(&request, Some(&value)),
            None => Response::err(id, ErrorCode::BadArgument, "missing value").send(),
        },
        Verb::Ps => {
            let mut r = Response::ok(id);
            r.value(key::TEXT, procfs::ps().as_bytes());
            r.send();
        }
        Verb::Uptime => {
            let mut r = Response::ok(id);
            r.value(key::NS, alloc::format!("{}", time::now_ns()).as_bytes());
            r.send();
        }
        Verb::Dmesg => {
            let since = request.arg(key::SINCE).map_or(Some(0), parse_u64);
            let Some(since) = since else {
                return Response::err(id, ErrorCode::BadArgument, "since is not a number").send();
            };
            let (text, next) = printk::text_since(since);
            let mut r = Response::ok(id);
            r.value(key::NEXT, alloc::format!("{next}").as_bytes());
            r.value(key::TEXT, text.as_bytes());
            r.send();
        }
        Verb::Kexec => kexec::serve_kexec(&request),
        Verb::Kdump => kexec::serve_kdump(&request),
    }
}

/// The decoded value of argument `name`, if present and valid UTF-8.
pub(super) fn decoded(request: &Line<'_>, name: &str) -> Option<String> {
    let raw = request.arg(name)?;
    let mut buf = alloc::vec![0u8; raw.len()];
    let bytes = decode_value(raw, &mut buf).ok()?;
    core::str::from_utf8(bytes).ok().map(String::from)
}

fn serve_sysctl(request: &Line<'_>, value: Option<&str>) {
    let id = request.id;
    let Some(name) = decoded(request, key::NAME) else {
        return Response::err(id, ErrorCode::BadArgument, "missing name").send();
    };
    let result = match value {
        None => sysctl::get(&name),
        Some(value) => sysctl::set(&name, value).and_then(|()| sysctl::get(&name)),
    };
    match result {
        Ok(current) => {
            let mut r = Response::ok(id);
            r.value(key::VALUE, current.as_bytes());
            r.send();
        }
        Err(SysctlError::Unknown) => Response::err(id, ErrorCode::UnknownSysctl, &name).send(),
        Err(SysctlError::Invalid) => Response::err(id, ErrorCode::BadArgument, "invalid value").send(),
    }
}

fn serve_inject(request: &Line<'_>) {
    let id = request.id;
    if let Some(lkdtm) = LkdtmRequest::from_line(request) {
        return serve_lkdtm(id, lkdtm);
    }
    let Some(kind) = request.arg(key::FAULT).and_then(FaultKind::from_name) else {
        return Response::err(id, ErrorCode::BadArgument, "missing or unknown fault").send();
    };
    let cpu = match request.arg(key::CPU).map(parse_u32) {
        None => 0,
        Some(Some(cpu)) => cpu as usize,
        Some(None) => return Response::err(id, ErrorCode::BadArgument, "cpu is not a number").send(),
    };
    let duration_ms = match request.arg(key::DURATION_MS).map(parse_u64) {
        None => None,
        Some(Some(ms)) => Some(ms),
        Some(None) => return Response::err(id, ErrorCode::BadArgument, "duration_ms is not a number").send(),
    };
    let mut message = decoded(request, key::MESSAGE).unwrap_or_else(|| String::from("crashvisor injected panic"));
    message.truncate(MAX_MESSAGE_LEN);
    answer_injected(id, cpu, inject::prepare(Fault { kind, cpu, duration_ms, message }));
}

/// Answers with the pid of a prepared fault's task and starts it, or with why it failed.
fn answer_injected(id: u32, cpu: usize, prepared: Result<u32, InjectError>) {
    match prepared {
        Ok(pid) => {
            let mut r = Response::ok(id);
            r.value(key::PID, alloc::format!("{pid}").as_bytes());
            r.send();
            // The fault starts only once the host has its answer.
            inject::release();
        }
        Err(e) => {
            let text = match e {
                InjectError::NoSuchCpu => alloc::format!("cpu {cpu} is not online ({} CPUs)", smp::possible_cpus()),
                InjectError::NeedsTwoCpus => String::from("a deadlock needs two online CPUs"),
                InjectError::NoMemory => String::from("no memory for the fault's thread"),
            };
            let code = if e == InjectError::NoMemory { ErrorCode::Busy } else { ErrorCode::BadArgument };
            Response::err(id, code, &text).send();
        }
    }
}

/// `inject lkdtm=<TYPE> [cpoint=<NAME>] [count=<n>] [cpu=<n>]` (`LkdtmRequest` reads it).
fn serve_lkdtm(id: u32, request: Result<LkdtmRequest, LkdtmRequestError<'_>>) {
    let request = match request {
        Ok(request) => request,
        Err(e) => return Response::err(id, e.code(), &alloc::format!("{e}")).send(),
    };
    let cpu = request.cpu.map(|c| c as usize);
    if request.point == CrashPoint::Direct {
        let cpu = cpu.unwrap_or(0);
        return answer_injected(id, cpu, inject::prepare_lkdtm(request.kind, cpu));
    }
    if let Some(cpu) = cpu.filter(|&c| c >= smp::possible_cpus() || !percpu::of(c).online.load(Ordering::Relaxed)) {
        return Response::err(id, ErrorCode::BadArgument, &alloc::format!("cpu {cpu} is not online")).send();
    }
    let count = request.count.map_or_else(crate::lkdtm::cpoint_count, |c| c as i32);
    match crate::lkdtm::register(request.point, request.kind, Some(count), cpu) {
        Ok(()) => {
            let mut r = Response::ok(id);
            r.value(key::CPOINT, request.point.as_str().as_bytes());
            r.value(key::COUNT, alloc::format!("{count}").as_bytes());
            r.send();
        }
        Err(_) => Response::err(id, ErrorCode::Unsupported, "the crash point is not supported").send(),
    }
}
