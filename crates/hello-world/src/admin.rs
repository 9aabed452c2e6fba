//! The admin port: what an operator may reach and an outsider must not. No Service or load
//! balancer ever exposes it (see ARCHITECTURE.md). Nothing here changes public behaviour
//! until an operator asks.
//!
//! | route | effect |
//! |---|---|
//! | `GET /metrics` | Prometheus text exposition of every metric |
//! | `POST /readyz/disable` | take this replica out of rotation (`/readyz` → 503 "disabled") |
//! | `POST /readyz/enable` | put it back |
//! | `GET /faults` | the current fault injection settings |
//! | `PUT /faults` | `{"error_rate": 0.0–1.0, "latency": "200ms"}`: fail a share of public requests with 500 and/or delay them (probes are exempt) |
//! | `DELETE /faults` | switch fault injection off |
//! | `POST /exit` | simulated crash: the process exits with status 1 at once, without draining |
//!
//! Reads (`GET`, `HEAD`) are open to whoever reaches the port. Every other request needs a
//! credential: with `--admin-token-file`, `Authorization: Bearer <token>` from any peer,
//! loopback included (in a pod, a sidecar shares loopback); without one, only a loopback peer
//! may change anything. A refusal is 401 with `WWW-Authenticate: Bearer` (403 for a remote
//! peer when no token is set, since no credential could help), logged with the peer's address
//! and counted in `admin_requests_refused_total`. The token itself never reaches a log line,
//! an answer or a metric.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::error::ApiError;

/// Exit status of a simulated crash: non-zero, so restart policies treat it as a failure.
pub const CRASH_EXIT_CODE: i32 = 1;

/// The admin router. Its requests carry the peer's address as [`ConnectInfo`] (the admin
/// accept loop in [`crate::server`] adds it); a request without one is treated as remote.
pub fn admin_app(state: AppState) -> Router {
    for refusal in Refusal::ALL {
        state.metrics.admin_refusal_reason(refusal.reason());
    }
    Router::new()
        .route("/metrics", get(metrics))
        .route("/readyz/disable", post(disable))
        .route("/readyz/enable", post(enable))
        .route("/faults", get(faults).put(set_faults).delete(clear_faults))
        .route("/exit", post(exit))
        .fallback(|| async { ApiError::not_found("no admin route for this path") })
        // Outside the routes, so an unknown path learns nothing without a credential either.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .layer(axum::middleware::map_response(crate::error::json_errors))
        .with_state(state)
}

/// Lets reads through and every other request only with a credential (see the module docs).
async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.method() == Method::GET || request.method() == Method::HEAD {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer);
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| bearer_token(value.as_bytes()));
    let refusal = match &state.config.admin_token {
        Some(token) => match presented {
            Some(presented) if token.verify(presented) => None,
            Some(_) => Some(Refusal::WrongToken),
            None => Some(Refusal::MissingToken),
        },
        None if peer.is_some_and(|peer| peer.ip().to_canonical().is_loopback()) => None,
        None => Some(Refusal::NotLoopback),
    };
    let Some(refusal) = refusal else {
        return next.run(request).await;
    };
    state.metrics.admin_request_refused(refusal.reason());
    tracing::warn!(
        peer = peer.map(|peer| peer.to_string()).as_deref().unwrap_or("unknown"),
        method = %request.method(),
        path = request.uri().path(),
        reason = refusal.reason(),
        "admin request refused"
    );
    refusal.into_response()
}

/// The token of an `Authorization` header's value when it is `Bearer <token>` (the scheme in
/// any case, RFC 9110 §11.1); `None` for any other scheme or a token that is not one visible
/// ASCII word.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|byte| *byte == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty() && token.iter().all(u8::is_ascii_graphic)).then_some(token)
}

/// Why an admin request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// A token is configured and the request carried no `Bearer` credential.
    MissingToken,
    /// A token is configured and the request carried another one.
    WrongToken,
    /// No token is configured and the peer is not on loopback.
    NotLoopback,
}

impl Refusal {
    const ALL: [Refusal; 3] = [
        Refusal::MissingToken,
        Refusal::WrongToken,
        Refusal::NotLoopback,
    ];

    /// The label of `admin_requests_refused_total` and the `reason` of the log line and body.
    fn reason(self) -> &'static str {
        match self {
            Refusal::MissingToken => "missing_token",
            Refusal::WrongToken => "wrong_token",
            Refusal::NotLoopback => "not_loopback",
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, message, challenge) = match self {
            Refusal::MissingToken => (
                StatusCode::UNAUTHORIZED,
                "this admin request needs Authorization: Bearer <the token in --admin-token-file>",
                Some(r#"Bearer realm="hello-world admin""#),
            ),
            Refusal::WrongToken => (
                StatusCode::UNAUTHORIZED,
                "the admin token is not the one in --admin-token-file",
                Some(r#"Bearer realm="hello-world admin", error="invalid_token""#),
            ),
            Refusal::NotLoopback => (
                StatusCode::FORBIDDEN,
                "with no --admin-token-file set, admin changes are accepted from loopback only",
                None,
            ),
        };
        let mut response = ApiError::new(status, message)
            .with("reason", self.reason())
            .into_response();
        if let Some(challenge) = challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn disable(State(state): State<AppState>) -> Json<Value> {
    state.readiness.set_disabled(true);
    tracing::warn!("taken out of rotation by the admin port");
    Json(json!({"ready": state.readiness.check().is_ok(), "disabled": true}))
}

async fn enable(State(state): State<AppState>) -> Json<Value> {
    state.readiness.set_disabled(false);
    tracing::info!("put back into rotation by the admin port");
    Json(json!({"ready": state.readiness.check().is_ok(), "disabled": false}))
}

fn faults_json(state: &AppState) -> Json<Value> {
    let latency = state.faults.latency();
    Json(json!({
        "error_rate": state.faults.error_rate(),
        "latency": humantime::format_duration(latency).to_string(),
        "latency_ms": latency.as_millis() as u64,
    }))
}

async fn faults(State(state): State<AppState>) -> Json<Value> {
    faults_json(&state)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultSettings {
    #[serde(default)]
    error_rate: f64,
    #[serde(default)]
    latency: Option<String>,
}

/// The largest fault settings document accepted: a few fields of JSON.
pub const MAX_SETTINGS_BYTES: usize = 4096;

/// The most latency fault injection may add: enough for any demo, short of the request timeout.
const MAX_INJECTED_LATENCY: Duration = Duration::from_secs(30);

async fn set_faults(
    State(state): State<AppState>,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_SETTINGS_BYTES)
        .await
        .map_err(|_| ApiError::payload_too_large(MAX_SETTINGS_BYTES))?;
    let (error_rate, latency) = fault_settings(&bytes)?;
    state.faults.set(error_rate, latency);
    tracing::warn!(
        error_rate,
        latency_ms = latency.as_millis() as u64,
        "fault injection set"
    );
    Ok(faults_json(&state))
}

/// The error rate (0.0–1.0) and added latency (at most 30 s) a `PUT /faults` body asks for;
/// 400 for anything else.
pub fn fault_settings(body: &[u8]) -> Result<(f64, Duration), ApiError> {
    let settings: FaultSettings = serde_json::from_slice(body).map_err(|err| {
        ApiError::bad_request(format!(
            "expected {{\"error_rate\": 0.0-1.0, \"latency\": \"200ms\"}}: {err}"
        ))
    })?;
    if !(0.0..=1.0).contains(&settings.error_rate) {
        return Err(ApiError::bad_request(
            "error_rate must be between 0.0 and 1.0",
        ));
    }
    let latency = match settings.latency.as_deref() {
        None => Duration::ZERO,
        Some(text) => crate::config::duration(text).map_err(ApiError::bad_request)?,
    };
    if latency > MAX_INJECTED_LATENCY {
        return Err(ApiError::bad_request("latency must be at most 30s"));
    }
    Ok((settings.error_rate, latency))
}

async fn clear_faults(State(state): State<AppState>) -> Json<Value> {
    state.faults.set(0.0, Duration::ZERO);
    tracing::info!("fault injection off");
    faults_json(&state)
}

async fn exit() -> impl IntoResponse {
    tracing::warn!(
        code = CRASH_EXIT_CODE,
        "simulated crash requested on the admin port"
    );
    // Answer first, then die: the caller learns the request was taken.
    tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::process::exit(CRASH_EXIT_CODE);
    });
    (
        StatusCode::ACCEPTED,
        Json(json!({"exiting": true, "code": CRASH_EXIT_CODE})),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_credential_is_one_word_after_the_scheme() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer   abc "), Some(&b"abc"[..]));
        assert_eq!(
            bearer_token(b"BEARER a.b-c_d~e+f/g="),
            Some(&b"a.b-c_d~e+f/g="[..])
        );
        for refused in [
            &b""[..],
            b"Bearer",
            b"Bearer ",
            b"Bearerabc",
            b"Basic YWxhZGRpbjpvcGVuc2VzYW1l",
            b"Bearer two words",
            b"Bearer caf\xc3\xa9",
            b" Bearer abc",
        ] {
            assert_eq!(bearer_token(refused), None, "{refused:?}");
        }
    }
}
