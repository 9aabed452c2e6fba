//! Probes: `/healthz` says the process serves (liveness: it touches nothing external, so a
//! store outage never gets healthy replicas restarted); `/readyz` says whether this replica
//! should receive traffic now (readiness: see [`crate::lifecycle::Readiness`]).

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, header};
use serde_json::json;

use super::{AppState, Routes};
use crate::error::ApiError;

pub(crate) fn routes() -> Routes {
    // Load balancers and orchestrators ask every few seconds: answered directly, without the
    // router.
    Routes::default()
        .direct("/healthz", healthz)
        .direct("/readyz", readyz)
}

fn healthz(_: &AppState, _: &HeaderMap) -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({"status": "ok"})),
    )
        .into_response()
}

fn readyz(state: &AppState, _: &HeaderMap) -> Response {
    match state.readiness.check() {
        Ok(()) => (
            [(header::CACHE_CONTROL, "no-store")],
            Json(json!({"status": "ready"})),
        )
            .into_response(),
        Err(reason) => ApiError::unavailable("not ready")
            .with("reason", reason)
            .into_response(),
    }
}
