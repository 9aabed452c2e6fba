//! Routes for poking at the system from outside: answer a chosen status, answer late, show the
//! request's headers, echo the body. Every input is bounded and checked.
//!
//! The echo never lets a browser render what it sends back (echo endpoints are a classic XSS
//! vector): whatever the request's content type, the answer is `application/octet-stream` with
//! `X-Content-Type-Options: nosniff` and a sandboxing CSP.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::{AppState, Routes, read_body};
use crate::error::ApiError;

pub(crate) fn routes() -> Routes {
    Routes::default()
        .route("/status/{code}", get(status))
        .route("/delay/{duration}", get(delay))
        .route("/headers", get(headers))
        .route("/api/echo", post(echo))
}

async fn status(Path(code): Path<String>) -> Result<Response, ApiError> {
    let code: u16 = code
        .parse()
        .ok()
        .filter(|code| (100..=599).contains(code))
        .ok_or_else(|| ApiError::bad_request("status code must be a number from 100 to 599"))?;
    let status =
        StatusCode::from_u16(code).map_err(|_| ApiError::bad_request("invalid status code"))?;
    if status.is_informational() {
        // HTTP allows 1xx only before a final answer; an HTTP/1.1 server cannot end with one.
        return Err(ApiError::bad_request(
            "1xx statuses are informational and cannot be a final response; use 200-599",
        )
        .with("requested", code));
    }
    let reason = status.canonical_reason().unwrap_or("");
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(status.into_response());
    }
    if status.is_client_error() || status.is_server_error() {
        return Ok(ApiError::new(status, format!("{code} {reason} (requested)")).into_response());
    }
    Ok((status, Json(json!({"status": code, "reason": reason}))).into_response())
}

async fn delay(
    State(state): State<AppState>,
    Path(text): Path<String>,
) -> Result<Response, ApiError> {
    let max = state.config.max_delay;
    let wait = crate::config::duration(&text)
        .map_err(|err| ApiError::bad_request(format!("invalid delay '{text}': {err}")))?;
    if wait > max {
        return Err(ApiError::bad_request(format!(
            "delay {} is above the maximum of {}",
            humantime::format_duration(wait),
            humantime::format_duration(max)
        ))
        .with("max_ms", max.as_millis() as u64));
    }
    tokio::time::sleep(wait).await;
    Ok(Json(json!({"delayed_ms": duration_ms(wait)})).into_response())
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

async fn headers(headers: HeaderMap) -> Json<Value> {
    let mut map: BTreeMap<&str, Value> = BTreeMap::new();
    for name in headers.keys() {
        let mut values: Vec<Value> = headers
            .get_all(name)
            .iter()
            .map(|value| Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect();
        let value = if values.len() == 1 {
            values.remove(0)
        } else {
            Value::Array(values)
        };
        map.insert(name.as_str(), value);
    }
    Json(json!({"headers": map}))
}

async fn echo(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(body, state.config.body_limit).await?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; sandbox"),
            ),
        ],
        bytes,
    )
        .into_response())
}
