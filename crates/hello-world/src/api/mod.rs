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
//!
//! Routes answer errors with [`ApiError`]; [`crate::observe`] wraps them all.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::routing::MethodRouter;
use http::HeaderValue;
use http_body_util::BodyExt;

use crate::config::Config;
use crate::error::ApiError;
use crate::lifecycle::Readiness;
use crate::metrics::Metrics;
use crate::observe::Faults;
use crate::store::Store;

pub mod counter;
pub mod diagnostics;
pub mod hello;
pub mod info;
pub mod kv;
pub mod probes;

/// What every handler can reach. Cloning is one reference count.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn Store>,
    pub faults: Arc<Faults>,
    /// When the process started serving, for uptime.
    pub started: Instant,
    /// `x-served-by`, built once.
    pub served_by: HeaderValue,
    /// The machine's hostname for /api/info, read once: it does not change while we run.
    pub hostname: String,
}

impl AppState {
    pub fn new(config: Config, store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        let served_by = HeaderValue::from_str(&config.instance_name)
            .expect("config validated the instance name as a header value");
        Self(Arc::new(Shared {
            config,
            readiness: Arc::new(Readiness::new()),
            metrics,
            store,
            faults: Arc::new(Faults::default()),
            started: Instant::now(),
            served_by,
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
pub fn routes() -> Routes {
    Routes::default()
        .merge(hello::routes())
        .merge(probes::routes())
        .merge(info::routes())
        .merge(diagnostics::routes())
        .merge(counter::routes())
        .merge(kv::routes())
}

/// Routes and their templates, built together so the labels [`crate::observe`] gives metrics
/// and logs name exactly the routes axum serves.
#[derive(Debug, Default)]
pub struct Routes {
    router: Router<AppState>,
    templates: Vec<&'static str>,
}

impl Routes {
    /// Adds `endpoint` at `template`; as with axum, methods added to a template twice merge.
    pub fn route(mut self, template: &'static str, endpoint: MethodRouter<AppState>) -> Self {
        self.router = self.router.route(template, endpoint);
        if !self.templates.contains(&template) {
            self.templates.push(template);
        }
        self
    }

    pub fn merge(mut self, other: Routes) -> Self {
        self.router = self.router.merge(other.router);
        for template in other.templates {
            if !self.templates.contains(&template) {
                self.templates.push(template);
            }
        }
        self
    }

    /// Every route template, in the order the routes were added.
    pub fn templates(&self) -> &[&'static str] {
        &self.templates
    }

    pub fn into_router(self) -> Router<AppState> {
        self.router
    }
}

/// Reads a whole body, refusing more than `limit` bytes with 413.
///
/// A `Content-Length` over the limit has already been refused by [`crate::observe`] before the
/// handler ran; this catches chunked bodies that grow past it.
pub async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::payload_too_large(limit))
        }
        Err(err) => Err(ApiError::bad_request(format!(
            "could not read the request body: {err}"
        ))),
    }
}
