//! `/api/info` says which replica answered and what it runs — the point of a load-balanced
//! hello world; `/version` is the short form.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header;
use serde::Serialize;

use super::{AppState, Routes};

pub(crate) fn routes() -> Routes {
    Routes::default()
        .route("/api/info", get(info))
        .route("/version", get(version))
}

#[derive(Debug, Serialize)]
struct Info<'a> {
    instance: &'a str,
    hostname: &'a str,
    version: &'static str,
    commit: &'static str,
    uptime_seconds: f64,
    store: &'static str,
    pod: Option<&'a str>,
    node: Option<&'a str>,
    namespace: Option<&'a str>,
}

async fn info(State(state): State<AppState>) -> Response {
    let downward = &state.config.downward;
    let info = Info {
        instance: &state.config.instance_name,
        hostname: &state.hostname,
        version: crate::VERSION,
        commit: crate::COMMIT,
        uptime_seconds: (state.started.elapsed().as_millis() as f64) / 1000.0,
        store: state.store.kind(),
        pod: downward.pod.as_deref(),
        node: downward.node.as_deref(),
        namespace: downward.namespace.as_deref(),
    };
    ([(header::CACHE_CONTROL, "no-store")], Json(info)).into_response()
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({"version": crate::VERSION, "commit": crate::COMMIT}))
}
