//! The service's end of a VMM's control socket (JSON lines, docs/control-protocol.md): connect
//! while the VMM starts, send requests, read response and event lines, and turn the VMM's error
//! codes into API errors.

use std::path::Path;
use std::time::Duration;

use axum::http::StatusCode;
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
}

impl ControlConn {
    /// Connects to `path`, retrying until the VMM listens (the caller bounds the wait).
    pub async fn connect(path: &Path) -> Self {
        loop {
            if let Ok(stream) = UnixStream::connect(path).await {
                let (reader, writer) = stream.into_split();
                return Self { writer, lines: BufReader::new(reader).lines() };
            }
            tokio::time::sleep(CONNECT_RETRY).await;
        }
    }

    /// Sends one request line.
    pub async fn send(&mut self, request: &Value) -> std::io::Result<()> {
        let mut line = request.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await
    }

    /// The next line as JSON; `None` at the end of the connection. Lines that are not JSON
    /// objects are skipped (with a warning): the VMM never sends them. Cancel safe.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            match self.lines.next_line().await {
                Ok(Some(line)) => match serde_json::from_str::<Value>(&line) {
                    Ok(value) if value.is_object() => return Some(value),
                    _ => tracing::warn!("the VMM sent a line that is not a JSON object: {line:?}"),
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

/// A response line's outcome: its `result`, or its error as an [`ApiError`].
pub fn outcome(response: &Value, command: &str) -> Result<Value, ApiError> {
    if response["ok"].as_bool() == Some(true) {
        return Ok(response["result"].clone());
    }
    let code = response["error"]["code"].as_str().unwrap_or("internal");
    let message = response["error"]["message"].as_str().unwrap_or("");
    Err(error_for(code, message, command))
}

/// The API error for a VMM error `code` (docs/control-protocol.md, "Errors").
pub fn error_for(code: &str, message: &str, command: &str) -> ApiError {
    let (status, message) = match code {
        "bad_argument" => (StatusCode::UNPROCESSABLE_ENTITY, message.to_owned()),
        "unknown_command" | "unknown_verb" => {
            (StatusCode::NOT_IMPLEMENTED, format!("this VMM or guest does not support {command:?} yet ({message})"))
        }
        "unsupported" => (StatusCode::UNPROCESSABLE_ENTITY, message.to_owned()),
        "unknown_sysctl" => (StatusCode::NOT_FOUND, format!("no such sysctl: {message}")),
        "vm_unavailable" => {
            (StatusCode::CONFLICT, format!("the VM is not running now (rebooting or stopping): {message}"))
        }
        "guest_unavailable" => (
            StatusCode::CONFLICT,
            format!(
                "the guest cannot answer now (booting, paused, panicked or rebooting); retry once it runs: {message}"
            ),
        ),
        "guest_timeout" => (StatusCode::GATEWAY_TIMEOUT, format!("the guest did not answer in time: {message}")),
        "busy" | "too_many_clients" => (StatusCode::SERVICE_UNAVAILABLE, format!("the VM is busy; retry: {message}")),
        _ => {
            tracing::warn!("the VMM failed {command}: {code}: {message}");
            (StatusCode::BAD_GATEWAY, format!("the VMM failed the request ({code}): {message}"))
        }
    };
    let code = if status == StatusCode::NOT_IMPLEMENTED { "not_implemented" } else { code };
    ApiError::new(status, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vmm_errors_map_to_statuses() {
        let err = |code: &str| {
            let response = json!({"id": 1, "ok": false, "error": {"code": code, "message": "m"}});
            outcome(&response, "inject").unwrap_err()
        };
        assert_eq!(err("bad_argument").status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(err("guest_unavailable").status, StatusCode::CONFLICT);
        assert_eq!(err("guest_unavailable").code, "guest_unavailable");
        assert_eq!(err("unknown_command").status, StatusCode::NOT_IMPLEMENTED);
        assert_eq!(err("unknown_command").code, "not_implemented");
        assert_eq!(err("unknown_sysctl").status, StatusCode::NOT_FOUND);
        assert_eq!(err("guest_timeout").status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(err("internal").status, StatusCode::BAD_GATEWAY);
        assert_eq!(outcome(&json!({"id": 1, "ok": true, "result": {"pid": 7}}), "inject").unwrap(), json!({"pid": 7}));
    }
}
