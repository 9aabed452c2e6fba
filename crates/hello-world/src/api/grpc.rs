//! The standard gRPC health service, `grpc.health.v1.Health` (`Check` and `Watch`), on the public
//! port over HTTP/2: what Kubernetes' `grpc:` probes, `grpc_health_probe` and every gRPC client
//! ask. tonic-health speaks the protocol; this module keeps what it says equal to readiness
//! ([`crate::lifecycle::Readiness`], the same answer as `/readyz`): `SERVING` while this replica
//! is ready, `NOT_SERVING` while it starts, drains or is disabled by an operator, for the whole
//! server (`""`) and for [`SERVICE`]. Any other name is `NOT_FOUND`; a method the service does
//! not have is `UNIMPLEMENTED` (tonic's answer), and a service we do not serve is 404, which gRPC
//! clients read as `UNIMPLEMENTED` too.

use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::post;
use futures_util::FutureExt as _;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tower::Service as _;

use super::{AppState, Binary};

/// The service name this replica answers for besides `""`.
pub const SERVICE: &str = "hello-world";

/// Both methods of the health service: gRPC calls are `POST /{service}/{method}`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/grpc.health.v1.Health/Check", post(check))
        .route("/grpc.health.v1.Health/Watch", post(watch))
}

/// The health service and the handle that sets what it says.
#[derive(Debug, Clone)]
pub struct Health {
    reporter: HealthReporter,
    server: HealthServer<HealthService>,
}

impl Health {
    /// Says `NOT_SERVING` until [`follow_readiness`] says otherwise: a replica starts unready.
    pub fn new() -> Self {
        let reporter = HealthReporter::new();
        for service in ["", SERVICE] {
            // Nobody else holds the lock yet, so this completes at once.
            let set = reporter.set_service_status(service, ServingStatus::NotServing);
            let _ = set.now_or_never();
        }
        let server = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
        Self { reporter, server }
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

/// gRPC `grpc.health.v1.Health/Check`: whether this replica serves (as `/readyz` says).
///
/// A gRPC call over HTTP/2 (`application/grpc`): the request is a length-prefixed
/// `HealthCheckRequest` message, the answer a `HealthCheckResponse` with `grpc-status` in the
/// trailers. OpenAPI can describe only its HTTP envelope; the messages are protobuf, defined by
/// the standard `grpc/health/v1/health.proto`. The service names answered are `""` and
/// `hello-world`; others are `NOT_FOUND`.
#[utoipa::path(
    post,
    path = "/grpc.health.v1.Health/Check",
    operation_id = "grpc_health_check",
    tag = "grpc",
    request_body(content = inline(Binary), content_type = "application/grpc", description = "A length-prefixed protobuf `HealthCheckRequest`"),
    responses(
        (status = 200, description = "A gRPC answer: a `HealthCheckResponse`, or the error in `grpc-status`", content_type = "application/grpc", body = inline(Binary)),
    ),
)]
async fn check(state: State<AppState>, request: Request) -> Response {
    health(state, request).await
}

/// gRPC `grpc.health.v1.Health/Watch`: a stream of `HealthCheckResponse`s, one at each change.
///
/// As `Check`, but the answer streams: a message now and one each time readiness changes.
#[utoipa::path(
    post,
    path = "/grpc.health.v1.Health/Watch",
    operation_id = "grpc_health_watch",
    tag = "grpc",
    request_body(content = inline(Binary), content_type = "application/grpc", description = "A length-prefixed protobuf `HealthCheckRequest`"),
    responses(
        (status = 200, description = "A gRPC stream of `HealthCheckResponse`s, or the error in `grpc-status`", content_type = "application/grpc", body = inline(Binary)),
    ),
)]
async fn watch(state: State<AppState>, request: Request) -> Response {
    health(state, request).await
}

async fn health(State(state): State<AppState>, request: Request) -> Response {
    let mut server = state.grpc_health.server.clone();
    let answer: Result<_, Infallible> = server.call(request).await;
    match answer {
        Ok(response) => response.map(Body::new),
        Err(never) => match never {},
    }
}

/// Keeps the health service's statuses equal to readiness, from now until the task is dropped.
pub async fn follow_readiness(state: AppState) {
    let mut changes = state.readiness.subscribe();
    let mut said = ServingStatus::NotServing;
    loop {
        let status = match state.readiness.check() {
            Ok(()) => ServingStatus::Serving,
            Err(_) => ServingStatus::NotServing,
        };
        // Only a change is news: every status set is a message on every Watch stream.
        if status != said {
            let reporter = &state.grpc_health.reporter;
            reporter.set_service_status("", status).await;
            reporter.set_service_status(SERVICE, status).await;
            said = status;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}
