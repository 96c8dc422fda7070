//! The service's end of a VMM's control socket (JSON lines, docs/control-protocol.md, typed by
//! `crashvisor_control`): connect while the VMM starts, send requests, read response and event
//! lines, and turn the VMM's error codes into API errors.

use std::path::Path;
use std::time::Duration;

use axum::http::StatusCode;
use crashvisor_control::{ControlErrorCode, Request, Response, ServerLine};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::error::ApiError;

/// How often a connect is retried while the VMM creates its socket.
const CONNECT_RETRY: Duration = Duration::from_millis(10);

/// A connected control socket.
pub struct ControlConn {
    writer: OwnedWriteHalf,
    lines: Lines<BufReader<OwnedReadHalf>>,
    peer_pid: Option<u32>,
}

impl ControlConn {
    /// Connects to `path`, retrying until the VMM listens (the caller bounds the wait).
    pub async fn connect(path: &Path) -> Self {
        loop {
            if let Ok(stream) = UnixStream::connect(path).await {
                let peer_pid = stream.peer_cred().ok().and_then(|c| c.pid()).and_then(|p| u32::try_from(p).ok());
                let (reader, writer) = stream.into_split();
                return Self { writer, lines: BufReader::new(reader).lines(), peer_pid };
            }
            tokio::time::sleep(CONNECT_RETRY).await;
        }
    }

    /// The process that listens on the socket (`SO_PEERCRED`), if the kernel said.
    pub fn peer_pid(&self) -> Option<u32> {
        self.peer_pid
    }

    /// Sends `request` under `id`.
    pub async fn send(&mut self, id: u64, request: &Request) -> std::io::Result<()> {
        self.writer.write_all(request.to_line(id).as_bytes()).await
    }

    /// The next response or event; `None` at the end of the connection. Lines that are neither
    /// are skipped (with a warning): the VMM never sends them. Cancel safe.
    pub async fn next(&mut self) -> Option<ServerLine> {
        loop {
            match self.lines.next_line().await {
                Ok(Some(line)) => match ServerLine::parse(&line) {
                    Ok(line) => return Some(line),
                    Err(e) => tracing::warn!("the VMM sent a line that is not a response or an event ({e}): {line:?}"),
                },
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!("the control socket failed: {e}");
                    return None;
                }
            }
        }
    }
}

/// A response's outcome: its `result`, or its error as an [`ApiError`].
pub fn outcome(response: Response, command: &str) -> Result<Value, ApiError> {
    response.outcome.map_err(|e| error_for(e.code, &e.message, command))
}

/// The API error for a VMM error `code` (docs/control-protocol.md, "Errors").
pub fn error_for(code: ControlErrorCode, message: &str, command: &str) -> ApiError {
    use ControlErrorCode::*;
    let (status, message) = match code {
        BadArgument | Unsupported => (StatusCode::UNPROCESSABLE_ENTITY, message.to_owned()),
        UnknownCommand | UnknownVerb => {
            (StatusCode::NOT_IMPLEMENTED, format!("this VMM or guest does not support {command:?} yet ({message})"))
        }
        UnknownSysctl => (StatusCode::NOT_FOUND, format!("no such sysctl: {message}")),
        VmUnavailable => {
            (StatusCode::CONFLICT, format!("the VM is not running now (rebooting or stopping): {message}"))
        }
        GuestUnavailable => (
            StatusCode::CONFLICT,
            format!(
                "the guest cannot answer now (booting, paused, panicked or rebooting); retry once it runs: {message}"
            ),
        ),
        GuestTimeout => (StatusCode::GATEWAY_TIMEOUT, format!("the guest did not answer in time: {message}")),
        Busy | TooManyClients => (StatusCode::SERVICE_UNAVAILABLE, format!("the VM is busy; retry: {message}")),
        BadJson | LineTooLong | Internal => {
            tracing::warn!("the VMM failed {command}: {code}: {message}");
            (StatusCode::BAD_GATEWAY, format!("the VMM failed the request ({code}): {message}"))
        }
    };
    let code = if status == StatusCode::NOT_IMPLEMENTED { "not_implemented" } else { code.as_str() };
    ApiError::new(status, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vmm_errors_map_to_statuses() {
        let response = |line: Value| serde_json::from_value::<Response>(line).unwrap();
        let err = |code: &str| {
            let line = json!({"id": 1, "ok": false, "error": {"code": code, "message": "m"}});
            outcome(response(line), "inject").unwrap_err()
        };
        assert_eq!(err("bad_argument").status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(err("guest_unavailable").status, StatusCode::CONFLICT);
        assert_eq!(err("guest_unavailable").code, "guest_unavailable");
        assert_eq!(err("unknown_command").status, StatusCode::NOT_IMPLEMENTED);
        assert_eq!(err("unknown_command").code, "not_implemented");
        assert_eq!(err("unknown_sysctl").status, StatusCode::NOT_FOUND);
        assert_eq!(err("guest_timeout").status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(err("internal").status, StatusCode::BAD_GATEWAY);
        let ok = response(json!({"id": 1, "ok": true, "result": {"pid": 7}}));
        assert_eq!(outcome(ok, "inject").unwrap(), json!({"pid": 7}));
    }
}
