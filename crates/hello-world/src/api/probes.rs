//! Probes: `/healthz` says the process serves (liveness: it touches nothing external, so a
//! store outage never gets healthy replicas restarted); `/readyz` says whether this replica
//! should receive traffic now (readiness: see [`crate::lifecycle::Readiness`]).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header;
use serde_json::json;

use super::{AppState, Routes};
use crate::error::ApiError;

pub(crate) fn routes() -> Routes {
    Routes::default()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({"status": "ok"})),
    )
        .into_response()
}

async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    match state.readiness.check() {
        Ok(()) => Ok((
            [(header::CACHE_CONTROL, "no-store")],
            Json(json!({"status": "ready"})),
        )
            .into_response()),
        Err(reason) => Err(ApiError::unavailable("not ready").with("reason", reason)),
    }
}
