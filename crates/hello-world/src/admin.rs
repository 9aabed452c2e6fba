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

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{AppState, read_body};
use crate::error::ApiError;

/// Exit status of a simulated crash: non-zero, so restart policies treat it as a failure.
pub const CRASH_EXIT_CODE: i32 = 1;

pub fn admin_app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/readyz/disable", post(disable))
        .route("/readyz/enable", post(enable))
        .route("/faults", get(faults).put(set_faults).delete(clear_faults))
        .route("/exit", post(exit))
        .fallback(|| async { ApiError::not_found("no admin route for this path") })
        .layer(axum::middleware::map_response(crate::observe::json_errors))
        .with_state(state)
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

/// The most latency fault injection may add: enough for any demo, short of the request timeout.
const MAX_INJECTED_LATENCY: Duration = Duration::from_secs(30);

async fn set_faults(
    State(state): State<AppState>,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let bytes = read_body(body, 4096).await?;
    let settings: FaultSettings = serde_json::from_slice(&bytes).map_err(|err| {
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
    state.faults.set(settings.error_rate, latency);
    tracing::warn!(
        error_rate = settings.error_rate,
        latency_ms = latency.as_millis() as u64,
        "fault injection set"
    );
    Ok(faults_json(&state))
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
