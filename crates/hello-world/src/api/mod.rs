//! The public port's routes, one file per resource, each with its own `router()`.
//!
//! | route | file |
//! |---|---|
//! | `GET /` (text, or the web page for browsers) | [`hello`] |
//! | `GET /healthz`, `GET /readyz` | [`probes`] |
//! | `GET /api/info`, `GET /version` | [`info`] |
//! | `GET /api/counter`, `POST /api/counter/increment` | [`counter`] |
//! | `GET/PUT/DELETE /api/kv/{key}` | [`kv`] |
//! | `GET /status/{code}`, `GET /delay/{duration}`, `GET /headers`, `POST /api/echo` | [`diagnostics`] |
//! | `POST /grpc.health.v1.Health/Check`, `/Watch` (gRPC, over HTTP/2) | [`grpc`] |
//! | `GET /ws/echo` (WebSocket) | [`ws`] |
//! | `GET /openapi.json`, the description of all of these | [`openapi`] |
//!
//! Routes answer errors with [`ApiError`]; [`crate::observe`] wraps them all (it is installed
//! around this router, never imported by it: dependencies point from the middleware to the
//! routes).

use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use http_body_util::BodyExt;

use crate::config::Config;
use crate::error::ApiError;
use crate::faults::Faults;
use crate::lifecycle::Readiness;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::health::StoreHealth;

pub mod counter;
pub mod diagnostics;
pub mod grpc;
pub mod hello;
pub mod info;
pub mod kv;
pub mod openapi;
pub mod probes;
pub mod ws;

/// What every handler can reach. Cloning is one reference count.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn Store>,
    /// Whether the store answers, as this replica's calls found it (`/readyz`, `/api/info`).
    pub store_health: Arc<StoreHealth>,
    pub faults: Arc<Faults>,
    /// The gRPC health service, kept equal to readiness by [`grpc::follow_readiness`].
    pub grpc_health: grpc::Health,
    /// When the process started serving, for uptime.
    pub started: Instant,
    /// The machine's hostname for /api/info, read once: it does not change while we run.
    pub hostname: String,
    /// The OpenAPI description `/openapi.json` serves, made once: it says this config's limits.
    pub openapi: bytes::Bytes,
}

impl AppState {
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        store_health: Arc<StoreHealth>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let openapi = openapi::document(&config);
        Self(Arc::new(Shared {
            openapi,
            config,
            readiness: Arc::new(Readiness::new()),
            metrics,
            store,
            store_health,
            faults: Arc::new(Faults::default()),
            grpc_health: grpc::Health::new(),
            started: Instant::now(),
            hostname: crate::config::hostname(),
        }))
    }
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Every public route, without the middleware (see [`crate::observe::public_app`]).
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(hello::router())
        .merge(probes::router())
        .merge(info::router())
        .merge(diagnostics::router())
        .merge(counter::router())
        .merge(kv::router())
        .merge(grpc::router())
        .merge(ws::router())
        .merge(openapi::router())
}

/// Bytes of any kind, as the OpenAPI description names `application/octet-stream` (and gRPC)
/// bodies.
#[derive(Debug)]
pub struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl utoipa::ToSchema for Binary {}

/// Reads a whole request body.
///
/// The body limit is applied by the middleware, the one place that does ([`crate::observe`]):
/// a `Content-Length` over it was refused before the route ran, and a body that streams past
/// it (chunked) is cut off there, which this answers 413.
pub async fn read_body(state: &AppState, body: Body) -> Result<bytes::Bytes, ApiError> {
    match body.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) => {
            let cause = err.into_inner();
            if cause.is::<http_body_util::LengthLimitError>() {
                Err(ApiError::payload_too_large(state.config.body_limit))
            } else {
                Err(ApiError::bad_request(format!(
                    "could not read the request body: {cause}"
                )))
            }
        }
    }
}
