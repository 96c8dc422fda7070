//! The OpenAPI document, generated: the paths come from the `#[utoipa::path]` of the handlers
//! the router serves (`utoipa_axum::routes!` registers both at once), the schemas from the types
//! the handlers parse and answer with. This module adds what is the service's as a whole: its
//! description, the bearer token and the error responses that many endpoints share.

use std::sync::LazyLock;

use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::Ref;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi, RefOr};
use utoipa::{IntoResponses, Modify, OpenApi as _, ToResponse, ToSchema};

use crate::error::ErrorBody;

/// The service's description and what all its endpoints share.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "crashvisor",
        description = "Run VMs that crash on purpose and catch every crash as a vmcore. \
                       Errors are {\"error\": {\"code\", \"message\"}}. See docs/api.md."
    ),
    servers((url = "http://127.0.0.1:8080")),
    security(("bearer" = [])),
    components(schemas(ErrorBody), responses(Unauthorized))
)]
struct ServiceDoc;

/// The whole document, as `GET /v1/openapi.json` serves it.
pub fn document() -> OpenApi {
    let (_, paths) = crate::routes::router().split_for_parts();
    let mut document = ServiceDoc::openapi().merge_from(paths);
    BearerToken.modify(&mut document);
    document
}

/// [`document`] as JSON, built once.
pub fn json() -> &'static str {
    static JSON: LazyLock<String> =
        LazyLock::new(|| document().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")));
    &JSON
}

/// A body of raw bytes (a vmcore).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Binary(pub Vec<u8>);

/// 401, on every endpoint that needs the token.
#[derive(ToResponse)]
#[response(description = "A token is required (`Authorization: Bearer <token>`).")]
pub struct Unauthorized(pub ErrorBody);

/// The bearer token scheme, and its 401 on every endpoint that does not opt out of it.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "Required when the service was started with a token (always when it listens beyond loopback).",
            ))
            .build();
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
        for item in openapi.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete];
            for operation in operations.into_iter().flatten().filter(|op| needs_token(op)) {
                let unauthorized = RefOr::Ref(Ref::from_response_name("Unauthorized"));
                operation.responses.responses.insert("401".into(), unauthorized);
            }
        }
    }
}

/// Whether `operation` keeps the document's bearer requirement (`security(())` opts out).
fn needs_token(operation: &Operation) -> bool {
    operation.security.as_ref().is_none_or(|s| !s.iter().all(|r| r == &Default::default()))
}

/// Errors of a request that names a VM and waits for its VMM or guest.
#[derive(IntoResponses)]
pub enum ControlErrors {
    /// 400.
    #[response(status = 400, description = "Malformed request: bad JSON, path, query or header.")]
    BadRequest(ErrorBody),
    /// 404.
    #[response(status = 404, description = "No such VM or sysctl.")]
    NotFound(ErrorBody),
    /// 409.
    #[response(
        status = 409,
        description = "Not now: the VM is not in a state to do this (vm_unavailable, guest_unavailable, vm_not_running)."
    )]
    Conflict(ErrorBody),
    /// 422.
    #[response(
        status = 422,
        description = "A value is invalid or out of range (invalid_argument, bad_argument, unsupported)."
    )]
    Invalid(ErrorBody),
    /// 501.
    #[response(status = 501, description = "This VMM or guest does not support the request (not_implemented).")]
    NotImplemented(ErrorBody),
    /// 502.
    #[response(status = 502, description = "The VMM failed the request.")]
    VmmFailed(ErrorBody),
    /// 503.
    #[response(status = 503, description = "The VM is busy; retry.")]
    Busy(ErrorBody),
    /// 504.
    #[response(status = 504, description = "The guest did not answer in time (guest_timeout).")]
    GuestTimeout(ErrorBody),
}

/// Errors of a request with a JSON body, besides those of its resource.
#[derive(IntoResponses)]
pub enum BodyErrors {
    /// 413.
    #[response(status = 413, description = "The body exceeds 65536 bytes.")]
    TooLarge(ErrorBody),
    /// 415.
    #[response(status = 415, description = "The body is not sent as application/json.")]
    NotJson(ErrorBody),
}

/// Errors of a request that names a VM or a vmcore and answers from the service alone.
#[derive(IntoResponses)]
pub enum LookupErrors {
    /// 400.
    #[response(status = 400, description = "Malformed request: a bad path, query or header.")]
    BadRequest(ErrorBody),
    /// 404.
    #[response(status = 404, description = "No such VM or vmcore.")]
    NotFound(ErrorBody),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Every `$ref` in `value`.
    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref") {
                    out.push(target);
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn the_document_is_openapi_3_1_and_every_reference_resolves() {
        let doc: Value = serde_json::from_str(json()).expect("the document is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["title"], "crashvisor");
        let paths = doc["paths"].as_object().expect("paths");
        assert!(!paths.is_empty());
        let mut operation_ids = std::collections::BTreeSet::new();
        for (path, item) in paths {
            for (method, operation) in item.as_object().expect("a path item") {
                let id = operation["operationId"].as_str().expect("an operationId");
                assert!(operation_ids.insert(id), "operationId {id} is not unique");
                let responses = operation["responses"].as_object().expect("responses");
                assert!(responses.keys().any(|s| s.starts_with('2')), "{method} {path} has no success response");
                let token = operation.get("security") != Some(&serde_json::json!([{}]));
                assert_eq!(responses.contains_key("401"), token, "{method} {path}: 401 iff it needs the token");
            }
        }
        let mut targets = Vec::new();
        refs(&doc, &mut targets);
        assert!(!targets.is_empty());
        for target in targets {
            let pointer = target.strip_prefix('#').expect("a local reference");
            assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
        }
    }
}
