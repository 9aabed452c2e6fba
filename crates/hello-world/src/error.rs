//! The one error type at the HTTP boundary: every failure becomes a status and a JSON body
//! `{"error": "<message>", ...}`. Internal causes are logged, never sent to clients.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::store::StoreError;

/// An error answer: a status, a client-facing message, and optional extra JSON fields.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    extra: Map<String, Value>,
    allow: Option<HeaderValue>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            extra: Map::new(),
            allow: None,
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
        err.allow = Some(allow);
        err
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
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

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::ConditionFailed { current } => {
                let err = Self::new(StatusCode::PRECONDITION_FAILED, "precondition failed");
                match current {
                    Some(version) => err.with("current_etag", format!("\"{version}\"")),
                    None => err.with("current_etag", Value::Null),
                }
            }
            StoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "store unavailable");
                Self::unavailable("store unavailable")
            }
            StoreError::Timeout(after) => {
                tracing::warn!(?after, "store call timed out");
                Self::unavailable("store timed out")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.extra;
        body.insert("error".to_owned(), Value::String(self.message));
        body.insert("status".to_owned(), json!(self.status.as_u16()));
        let mut response = (self.status, Json(Value::Object(body))).into_response();
        if let Some(allow) = self.allow {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        response
    }
}
