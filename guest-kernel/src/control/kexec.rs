//! `kexec` and `kdump` requests: what `kexec -l/-p/-u/-e` and `kdumpctl` do in the shell,
//! for the host.

use alloc::format;

use crashvisor_abi::control::{key, ErrorCode, KdumpOp, KexecKind, KexecOp, Line};

use super::{decoded, Response};
use crate::kexec::kdump;
use crate::kexec::load::{self, Kind};
use crate::kexec::reserve;

fn kind(request: &Line<'_>) -> Result<Kind, Response> {
    match request.arg(key::KIND).map(KexecKind::from_name) {
        None | Some(Some(KexecKind::Normal)) => Ok(Kind::Normal),
        Some(Some(KexecKind::Crash)) => Ok(Kind::Crash),
        Some(None) => Err(Response::err(request.id, ErrorCode::BadArgument, "kind is normal or crash")),
    }
}

fn kexec_status(id: u32) -> Response {
    let mut r = Response::ok(id);
    r.value(key::LOADED, if load::loaded(Kind::Normal) { b"1" } else { b"0" });
    r.value(key::CRASH_LOADED, if load::loaded(Kind::Crash) { b"1" } else { b"0" });
    r.value(key::CRASH_SIZE, format!("{}", reserve::region().map_or(0, |(start, end)| end - start)).as_bytes());
    r
}

/// `kexec op=load|unload|exec|status`.
pub(super) fn serve_kexec(request: &Line<'_>) {
    let id = request.id;
    let Some(op) = request.arg(key::OP).and_then(KexecOp::from_name) else {
        return Response::err(id, ErrorCode::BadArgument, "op is load, unload, exec or status").send();
    };
    match op {
        KexecOp::Load => {
            let kind = match kind(request) {
                Ok(kind) => kind,
                Err(r) => return r.send(),
            };
            let cmdline = decoded(request, key::CMDLINE).unwrap_or_default();
            match load::load(kind, &cmdline) {
                Ok(()) => kexec_status(id).send(),
                Err(e) => Response::err(id, ErrorCode::BadArgument, &format!("{e}")).send(),
            }
        }
        KexecOp::Unload => match kind(request) {
            Ok(kind) => {
                load::unload(kind);
                kexec_status(id).send();
            }
            Err(r) => r.send(),
        },
        KexecOp::Status => kexec_status(id).send(),
        KexecOp::Exec if !load::loaded(Kind::Normal) => {
            Response::err(id, ErrorCode::BadArgument, "no kernel is loaded (kexec op=load first)").send()
        }
        KexecOp::Exec => {
            // The host has its answer before the machine leaves this kernel.
            kexec_status(id).send();
            let error = load::exec_normal();
            crate::pr_err!("kexec: {}", error);
        }
    }
}

fn kdump_status(id: u32) -> Response {
    let config = kdump::config();
    let mut r = Response::ok(id);
    r.value(key::STATE, if kdump::operational() { b"operational" } else { b"not_operational" });
    r.value(key::DUMP_LEVEL, format!("{}", config.dump_level).as_bytes());
    r.value(key::FINAL_ACTION, config.final_action.as_str().as_bytes());
    r.value(key::FAILURE_ACTION, config.failure_action.as_str().as_bytes());
    r
}

/// `kdump op=start|stop|status|config`.
pub(super) fn serve_kdump(request: &Line<'_>) {
    let id = request.id;
    let Some(op) = request.arg(key::OP).and_then(KdumpOp::from_name) else {
        return Response::err(id, ErrorCode::BadArgument, "op is start, stop, status or config").send();
    };
    match op {
        KdumpOp::Start => match kdump::start() {
            Ok(()) => kdump_status(id).send(),
            Err(e) => Response::err(id, ErrorCode::Unsupported, &format!("cannot load the capture kernel: {e}")).send(),
        },
        KdumpOp::Stop => {
            kdump::stop();
            kdump_status(id).send();
        }
        KdumpOp::Status => kdump_status(id).send(),
        KdumpOp::Config => {
            // All or nothing: a bad value leaves the configuration as it was.
            let mut config = kdump::config();
            for name in [key::DUMP_LEVEL, key::FINAL_ACTION, key::FAILURE_ACTION] {
                let Some(value) = decoded(request, name) else { continue };
                if let Err(e) = config.set(name, &value) {
                    return Response::err(id, ErrorCode::BadArgument, e).send();
                }
            }
            kdump::set_config(config);
            kdump_status(id).send();
        }
    }
}
