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
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{MethodRouter, get};
use http::{HeaderMap, HeaderValue};
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
    /// Every header of the plain-text greeting, stamps included ([`hello`]); cloned for each
    /// answer, which costs far less than inserting them one by one.
    pub greeting_headers: HeaderMap,
    /// The machine's hostname for /api/info, read once: it does not change while we run.
    pub hostname: String,
}

impl AppState {
    pub fn new(config: Config, store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        let served_by = HeaderValue::from_str(&config.instance_name)
            .expect("config validated the instance name as a header value");
        let greeting_headers = hello::greeting_headers(&served_by);
        Self(Arc::new(Shared {
            config,
            readiness: Arc::new(Readiness::new()),
            metrics,
            store,
            faults: Arc::new(Faults::default()),
            started: Instant::now(),
            served_by,
            greeting_headers,
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
    /// The [`Direct`] answer of each template, if it has one (same order as `templates`).
    direct: Vec<Option<Direct>>,
}

/// A `GET` (and `HEAD`) answer made at once from the request's headers: no body, no extractor
/// that can refuse, nothing to wait for. [`crate::observe`] calls it itself rather than through
/// axum's router, which would box the request, insert its path parameters into the request's
/// extensions and clone the state: about 2,400 instructions a `GET /`, measured with callgrind
/// (the commit that added this has the figures).
pub type Direct = fn(&AppState, &HeaderMap) -> Response;

impl Routes {
    /// Adds `endpoint` at `template`; as with axum, methods added to a template twice merge.
    pub fn route(mut self, template: &'static str, endpoint: MethodRouter<AppState>) -> Self {
        self.router = self.router.route(template, endpoint);
        self.add_template(template, None);
        self
    }

    /// Adds `answer` as the `GET` of `template`. The router gets the same answer as an
    /// ordinary handler, so other methods still get their 405 with `Allow`, and the path with
    /// faults switched on still reaches it.
    pub fn direct(mut self, template: &'static str, answer: Direct) -> Self {
        let handler = move |State(state): State<AppState>, request: Request| async move {
            answer(&state, request.headers())
        };
        self.router = self.router.route(template, get(handler));
        self.add_template(template, Some(answer));
        self
    }

    pub fn merge(mut self, other: Routes) -> Self {
        self.router = self.router.merge(other.router);
        for (template, direct) in other.templates.into_iter().zip(other.direct) {
            self.add_template(template, direct);
        }
        self
    }

    fn add_template(&mut self, template: &'static str, direct: Option<Direct>) {
        match self.templates.iter().position(|known| *known == template) {
            Some(index) => self.direct[index] = direct.or(self.direct[index]),
            None => {
                self.templates.push(template);
                self.direct.push(direct);
            }
        }
    }

    /// Every route template, in the order the routes were added, with its direct answer.
    pub fn templates(&self) -> impl Iterator<Item = (&'static str, Option<Direct>)> + '_ {
        self.templates
            .iter()
            .copied()
            .zip(self.direct.iter().copied())
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
