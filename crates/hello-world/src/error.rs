//! The one error type at the HTTP boundary: every failure becomes a status and a JSON body
//! `{"error": "<message>", ...}`. Internal causes are never sent to clients: a store that cannot
//! be reached is answered with the few words [`StoreError::unavailable_reason`] gives, and its
//! own message reaches the log once per outage ([`crate::store::health`]), not once per request.
//!
//! [`json_errors`] gives the few error answers axum makes itself (405, extractor rejections)
//! the same JSON shape; both ports' middleware runs every answer through it.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, SchemaType, Type};

use crate::store::StoreError;
use crate::store::health::PING_INTERVAL;

/// An error answer: a status, a client-facing message, and optional extra JSON fields and
/// headers.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    extra: Map<String, Value>,
    /// Few and rare (`Allow`, `Retry-After`): a list keeps the error small.
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            extra: Map::new(),
            headers: Vec::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds {limit} bytes"),
        )
        .with("limit_bytes", limit)
    }

    /// 405 with the `Allow` header listing what the route accepts.
    pub fn method_not_allowed(allow: HeaderValue) -> Self {
        let mut err = Self::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        if let Ok(text) = allow.to_str() {
            err = err.with("allow", text);
        }
        err.with_header(header::ALLOW, allow)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// Adds a header to the answer.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Adds a field to the JSON body.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

/// The answer to a failed store call. Only the mapping: the failure was logged where it
/// happened ([`crate::store::health`], which observes every call), with the detail this answer
/// leaves out.
impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::ConditionFailed { current } => {
                let err = Self::new(StatusCode::PRECONDITION_FAILED, "precondition failed");
                match current {
                    Some(version) => err.with("current_etag", crate::store::entity_tag(version)),
                    None => err.with("current_etag", Value::Null),
                }
            }
            StoreError::Full => Self::new(StatusCode::INSUFFICIENT_STORAGE, "store full").with(
                "reason",
                "no room for this write; reads and deletes still work, and deleting makes room",
            ),
            StoreError::Unavailable { reason, .. }
            | StoreError::Failed { reason, .. }
            | StoreError::NotReplicated { reason, .. } => Self::store_unavailable(reason),
            StoreError::Timeout(after) => Self::store_unavailable("timed out").with(
                "timeout_ms",
                u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
            ),
        }
    }
}

impl ApiError {
    /// 503 for a call the store could not serve, with the cause and when to try again: the
    /// store is pinged that often, so by then this replica knows whether it is back.
    fn store_unavailable(reason: &'static str) -> Self {
        let retry_after = PING_INTERVAL.as_secs().max(1);
        Self::unavailable("store unavailable")
            .with("reason", reason)
            .with("retry_after_seconds", retry_after)
            .with_header(header::RETRY_AFTER, HeaderValue::from(retry_after))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.extra;
        body.insert("error".to_owned(), Value::String(self.message));
        body.insert("status".to_owned(), json!(self.status.as_u16()));
        let mut response = (self.status, Json(Value::Object(body))).into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// The JSON body every error answer has, as the OpenAPI description names it (`Error`): the
/// message and the status always, and the fields a few errors add ([`ApiError::with`]).
impl utoipa::PartialSchema for ApiError {
    fn schema() -> RefOr<Schema> {
        let field = |kind: Type, description: &str| {
            ObjectBuilder::new()
                .schema_type(kind)
                .description(Some(description))
        };
        ObjectBuilder::new()
            .description(Some(
                "Every error answer: `error` says what went wrong, `status` repeats the HTTP \
                 status; some errors add the fields below, and may add others.",
            ))
            .property(
                "error",
                field(Type::String, "What went wrong, for a person."),
            )
            .required("error")
            .property(
                "status",
                field(Type::Integer, "The HTTP status of the answer.")
                    .minimum(Some(400))
                    .maximum(Some(599)),
            )
            .required("status")
            .property(
                "reason",
                field(
                    Type::String,
                    "Why: the store's state (`connection refused`, `timed out`...), or why this \
                     replica is not ready (`starting`, `draining`, `disabled`).",
                ),
            )
            .property(
                "retry_after_seconds",
                field(Type::Integer, "When to try again; also in `Retry-After`."),
            )
            .property(
                "timeout_ms",
                field(Type::Integer, "The timeout that ran out, in milliseconds."),
            )
            .property(
                "limit_bytes",
                field(Type::Integer, "The size limit a body went past."),
            )
            .property(
                "current_etag",
                ObjectBuilder::new()
                    .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
                    .description(Some(
                        "412: the key's current ETag, or null when it has no value.",
                    )),
            )
            .property(
                "allow",
                field(Type::String, "405: the methods the path accepts."),
            )
            .additional_properties(Some(AdditionalProperties::FreeForm(true)))
            .into()
    }
}

impl utoipa::ToSchema for ApiError {
    fn name() -> std::borrow::Cow<'static, str> {
        "Error".into()
    }
}

/// Whether an answer can go out as it is: anything but an error, or an error that is JSON.
pub fn is_json_or_success(response: &Response) -> bool {
    let status = response.status();
    !(status.is_client_error() || status.is_server_error())
        || response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/json"))
}

/// Gives error answers that are not JSON yet (axum's 405 and extractor rejections) a JSON body,
/// keeping their status and headers such as `Allow`.
pub async fn json_errors(response: Response) -> Response {
    if is_json_or_success(&response) {
        return response;
    }
    let status = response.status();
    let (parts, body) = response.into_parts();
    let text = match http_body_util::Limited::new(body, 4096).collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes())
            .trim()
            .to_owned(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    let mut error = ApiError::new(status, message);
    if status == StatusCode::METHOD_NOT_ALLOWED
        && let Some(allow) = parts.headers.get(header::ALLOW)
    {
        error = ApiError::method_not_allowed(allow.clone());
    }
    let mut rebuilt = error.into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rebuilt
                .headers_mut()
                .entry(name)
                .or_insert_with(|| value.clone());
        }
    }
    *rebuilt.extensions_mut() = parts.extensions;
    rebuilt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bare_errors_become_json_and_keep_allow() {
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
        let response = json_errors(response).await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET,HEAD");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(json["error"], "method not allowed");
        assert_eq!(json["allow"], "GET,HEAD");
    }
}
