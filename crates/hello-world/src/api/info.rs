//! `/api/info` says which replica answered and what it runs — the point of a load-balanced
//! hello world — and how it last found the store; `/version` is the short form.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header;
use serde::Serialize;
use utoipa::ToSchema;

use axum::Router;

use super::AppState;
use crate::store::health::Report;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/info", get(info))
        .route("/version", get(version))
}

/// Which replica answered and what it runs.
#[derive(Debug, Serialize, ToSchema)]
struct Info<'a> {
    /// The instance name (`--instance-name`), also in `x-served-by`.
    instance: &'a str,
    hostname: &'a str,
    version: &'static str,
    /// The source revision, or `unknown`.
    commit: &'static str,
    #[schema(minimum = 0)]
    uptime_seconds: f64,
    /// The kind of store: `memory` or `redis`.
    #[schema(pattern = "^(memory|redis)$")]
    store: &'static str,
    store_status: Report,
    /// The Downward API's `POD_NAME`, when set.
    pod: Option<&'a str>,
    /// The machine (`NODE_NAME`), when set; also in `x-node`.
    node: Option<&'a str>,
    /// The Downward API's `POD_NAMESPACE`, when set.
    namespace: Option<&'a str>,
}

/// What `/version` says.
#[derive(Debug, Serialize, ToSchema)]
struct Version {
    version: &'static str,
    /// The source revision, or `unknown`.
    commit: &'static str,
}

/// Which replica answered, what it runs, and how it last found the store.
#[utoipa::path(
    get,
    path = "/api/info",
    tag = "info",
    responses((status = 200, description = "This replica", body = Info)),
)]
async fn info(State(state): State<AppState>) -> Response {
    let downward = &state.config.downward;
    let info = Info {
        instance: &state.config.instance_name,
        hostname: &state.hostname,
        version: crate::VERSION,
        commit: crate::COMMIT,
        uptime_seconds: (state.started.elapsed().as_millis() as f64) / 1000.0,
        store: state.store.kind(),
        store_status: state.store_health.report(),
        pod: downward.pod.as_deref(),
        node: downward.node.as_deref(),
        namespace: downward.namespace.as_deref(),
    };
    ([(header::CACHE_CONTROL, "no-store")], Json(info)).into_response()
}

/// The version and source revision this replica runs.
#[utoipa::path(
    get,
    path = "/version",
    tag = "info",
    responses((status = 200, description = "The version", body = Version)),
)]
async fn version() -> Json<Version> {
    Json(Version {
        version: crate::VERSION,
        commit: crate::COMMIT,
    })
}
