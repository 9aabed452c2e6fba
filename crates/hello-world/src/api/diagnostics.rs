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
use serde::Serialize;
use utoipa::ToSchema;

use axum::Router;

use super::{AppState, Binary, read_body};
use crate::error::ApiError;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/status/{code}", get(status))
        .route("/delay/{duration}", get(delay))
        .route("/headers", get(headers))
        .route("/api/echo", post(echo))
}

/// The body of a `/status/{code}` answer of 200–399 (but 204 and 304, which have none).
#[derive(Debug, Serialize, ToSchema)]
struct Requested {
    #[schema(minimum = 200, maximum = 399)]
    status: u16,
    /// The status's reason phrase, empty for a code that has none.
    reason: &'static str,
}

/// Answers with the status asked for.
///
/// Any of 200–599: 204 and 304 with no body, 4xx and 5xx as an `Error` body (`"500 Internal
/// Server Error (requested)"`), the others as `{"status", "reason"}`. A 1xx cannot be a final
/// HTTP/1.1 answer, so it and anything else is 400.
#[utoipa::path(
    get,
    path = "/status/{code}",
    tag = "diagnostics",
    params(("code" = u16, Path, minimum = 200, maximum = 599, description = "The status to answer with")),
    responses(
        (status = 200, description = "200, or the 2xx or 3xx asked for", body = Requested),
        (status = 204, description = "204 asked for: no body"),
        (status = 304, description = "304 asked for: no body"),
        (status = 400, description = "Not a status of 200–599 (or asked for 400)", body = ApiError),
        (status = "2XX", description = "The 2xx asked for", body = Requested),
        (status = "3XX", description = "The 3xx asked for", body = Requested),
        (status = "4XX", description = "The 4xx asked for", body = ApiError),
        (status = "5XX", description = "The 5xx asked for", body = ApiError),
    ),
)]
async fn status(Path(code): Path<String>) -> Result<Response, ApiError> {
    let status = requested_status(&code)?;
    let code = status.as_u16();
    let reason = status.canonical_reason().unwrap_or("");
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(status.into_response());
    }
    if status.is_client_error() || status.is_server_error() {
        let name = if reason.is_empty() {
            code.to_string()
        } else {
            format!("{code} {reason}")
        };
        return Ok(ApiError::new(status, format!("{name} (requested)")).into_response());
    }
    Ok((
        status,
        Json(Requested {
            status: code,
            reason,
        }),
    )
        .into_response())
}

/// The final status `/status/{code}` asks for: 200–599; 400 for anything else (1xx cannot end
/// an HTTP/1.1 exchange).
pub fn requested_status(code: &str) -> Result<StatusCode, ApiError> {
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
    Ok(status)
}

/// `/delay/{duration}`'s answer.
#[derive(Debug, Serialize, ToSchema)]
struct Delayed {
    /// How long the answer waited, in milliseconds.
    #[schema(minimum = 0)]
    delayed_ms: u64,
}

/// Answers after the time asked for.
///
/// A duration such as `250ms`, `2s` or `1m30s` (a bare number is seconds), at most the
/// server's `--max-delay` (below); anything else is 400.
#[utoipa::path(
    get,
    path = "/delay/{duration}",
    tag = "diagnostics",
    params(("duration" = String, Path, description = "How long to wait: `250ms`, `2s`, `1m30s`", example = "250ms")),
    responses(
        (status = 200, description = "Waited", body = Delayed),
        (status = 400, description = "Not a duration, or above the maximum (`max_ms`)", body = ApiError),
    ),
)]
async fn delay(
    State(state): State<AppState>,
    Path(text): Path<String>,
) -> Result<Response, ApiError> {
    let wait = requested_delay(&text, state.config.max_delay)?;
    tokio::time::sleep(wait).await;
    Ok(Json(Delayed {
        delayed_ms: duration_ms(wait),
    })
    .into_response())
}

/// The wait `/delay/{duration}` asks for, at most `max`; 400 for anything else.
pub fn requested_delay(text: &str, max: Duration) -> Result<Duration, ApiError> {
    let wait = crate::config::duration(text)
        .map_err(|err| ApiError::bad_request(format!("invalid delay '{text}': {err}")))?;
    if wait > max {
        return Err(ApiError::bad_request(format!(
            "delay {} is above the maximum of {}",
            humantime::format_duration(wait),
            humantime::format_duration(max)
        ))
        .with("max_ms", u64::try_from(max.as_millis()).unwrap_or(u64::MAX)));
    }
    Ok(wait)
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `/headers`' answer.
#[derive(Debug, Serialize, ToSchema)]
struct Headers<'a> {
    /// Each header by its lower-case name: its value, or the list of its values when it came
    /// more than once.
    headers: BTreeMap<&'a str, HeaderValues>,
}

/// One header's value, or its values when it came more than once.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
enum HeaderValues {
    One(String),
    Many(Vec<String>),
}

/// The request's headers, as the server received them.
#[utoipa::path(
    get,
    path = "/headers",
    tag = "diagnostics",
    responses((status = 200, description = "The request's headers", body = Headers)),
)]
async fn headers(headers: HeaderMap) -> Response {
    let mut map = BTreeMap::new();
    for name in headers.keys() {
        let mut values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .collect();
        let value = if values.len() == 1 {
            HeaderValues::One(values.remove(0))
        } else {
            HeaderValues::Many(values)
        };
        map.insert(name.as_str(), value);
    }
    Json(Headers { headers: map }).into_response()
}

/// The request's body, sent back.
///
/// Always as `application/octet-stream` with `nosniff` and a sandboxing CSP, whatever the
/// request's content type: an echo must never be rendered as HTML. A body above the server's
/// `--body-limit` (below) is 413.
#[utoipa::path(
    post,
    path = "/api/echo",
    tag = "diagnostics",
    request_body(content = Option<Binary>, content_type = "application/octet-stream", description = "Any bytes, none included"),
    responses(
        (status = 200, description = "The body, as sent", content_type = "application/octet-stream", body = inline(Binary),
            headers(("X-Content-Type-Options" = String, description = "`nosniff`"))),
        (status = 413, description = "The body is above the limit (`limit_bytes`)", body = ApiError),
    ),
)]
async fn echo(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(&state, body).await?;
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
