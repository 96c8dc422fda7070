//! A small HTTP/1.1 client of the service on hyper's own client (already in the binary through
//! axum): JSON requests, error bodies turned into errors, and streamed downloads.

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A client of one service.
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl ApiClient {
    /// A client of the service at `server` (`http://host:port`), sending `token` if given.
    pub fn new(server: &str, token: Option<String>) -> anyhow::Result<Self> {
        let base = server.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") {
            bail!("the server URL must start with http:// (the service speaks plain HTTP; put TLS in front of it), not {base:?}");
        }
        let http = Client::builder(TokioExecutor::new()).build_http();
        Ok(Self { base, token, http })
    }

    /// Sends a request and returns the response head and body stream.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Response<Incoming>> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder().method(method.clone()).uri(&url);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                Full::new(Bytes::from(body.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request.body(body).with_context(|| format!("bad request URL {url}"))?;
        self.http
            .request(request)
            .await
            .with_context(|| format!("cannot reach the service at {} (is `crashvisor serve` running?)", self.base))
    }

    /// Sends a request and returns its JSON body (`null` for 204); an error status becomes an
    /// error with the service's message.
    pub async fn json(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let response = self.send(method.clone(), path, body, &[]).await?;
        let status = response.status();
        let bytes = read_body(response).await?;
        check(status, &bytes, &method, path)?;
        if status == StatusCode::NO_CONTENT || bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).with_context(|| format!("{method} {path} answered with something not JSON"))
    }

    /// Sends a GET and returns its body as text.
    pub async fn text(&self, path: &str) -> anyhow::Result<String> {
        let response = self.send(Method::GET, path, None, &[]).await?;
        let status = response.status();
        let bytes = read_body(response).await?;
        check(status, &bytes, &Method::GET, path)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// The whole body.
pub async fn read_body(response: Response<Incoming>) -> anyhow::Result<Bytes> {
    Ok(response.into_body().collect().await.context("the response broke off")?.to_bytes())
}

/// An error status as an error carrying the service's `{"error": {code, message}}`.
pub fn check(status: StatusCode, body: &[u8], method: &Method, path: &str) -> anyhow::Result<()> {
    if status.is_success() {
        Ok(())
    } else {
        Err(error_of(status, body, method, path))
    }
}

/// The error of a response with an error status.
pub fn error_of(status: StatusCode, body: &[u8], method: &Method, path: &str) -> anyhow::Error {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().map(|v| &v["error"]);
    match error.and_then(|e| Some((e["code"].as_str()?, e["message"].as_str()?))) {
        Some((code, message)) => anyhow!("{method} {path}: {} {code}: {message}", status.as_u16()),
        None => anyhow!("{method} {path}: {status}: {}", String::from_utf8_lossy(body).trim()),
    }
}
