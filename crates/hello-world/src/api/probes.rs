//! Probes: `/healthz` says the process serves (liveness: it touches nothing external, so a
//! store outage never gets healthy replicas restarted); `/readyz` says whether this replica
//! should receive traffic now (readiness: see [`crate::lifecycle::Readiness`]), and how it last
//! found the store. The store's state is in the body whatever the answer, and never decides it:
//! a store outage is not a reason to take every replica out of rotation.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::header;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::AppState;
use crate::error::ApiError;
use crate::store::health::Report;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// `/healthz`'s answer: the process serves.
#[derive(Debug, Serialize, ToSchema)]
struct Alive {
    #[schema(pattern = "^ok$")]
    status: &'static str,
}

/// `/readyz`'s answer while this replica takes traffic, with how it last found the store.
#[derive(Debug, Serialize, ToSchema)]
struct Ready {
    #[schema(pattern = "^ready$")]
    status: &'static str,
    /// The kind of store: `memory` or `redis`.
    #[schema(pattern = "^(memory|redis)$")]
    store: &'static str,
    store_status: Report,
}

/// Liveness: 200 while the process serves; it touches nothing external.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "probes",
    responses((status = 200, description = "The process serves", body = Alive)),
)]
async fn healthz() -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(Alive { status: "ok" }),
    )
        .into_response()
}

/// Readiness of this replica.
///
/// 200 while it should receive traffic, 503 while it starts, drains or is disabled by an
/// operator. The store's state is in the body either way and never decides the answer.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "probes",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "Not ready: `reason` is `starting`, `draining` or `disabled`; `store` and `store_status` as when ready", body = ApiError),
    ),
)]
async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.store.kind();
    let store_status = state.store_health.report();
    match state.readiness.check() {
        Ok(()) => (
            [(header::CACHE_CONTROL, "no-store")],
            Json(Ready {
                status: "ready",
                store,
                store_status,
            }),
        )
            .into_response(),
        Err(reason) => ApiError::unavailable("not ready")
            .with("reason", reason)
            .with("store", store)
            .with("store_status", json!(store_status))
            .into_response(),
    }
}
