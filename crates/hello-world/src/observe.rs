//! The middleware every public request passes through, in one place so its order is visible:
//!
//! 1. request id: the caller's `x-request-id` when it is sane, else a fresh one;
//! 2. refusals before any work: HTTP/1.1 without `Host` → 400, a `Content-Length` above the
//!    body limit → 413 at once (the body is never read);
//! 3. fault injection (admin-controlled; never on `/healthz` and `/readyz`);
//! 4. the route, under the request timeout (503 when it runs out);
//! 5. every error made JSON (axum's own 405s and rejections are plain text or empty);
//! 6. `x-served-by`, `x-version`, `x-request-id` on the answer; metrics by route template;
//!    the access log line.
//!
//! Metrics and logs name the route template, never the raw path; unmatched paths share the
//! label `unmatched`. [`Observe`] wraps the whole router and finds the template itself, in a
//! table built from the same list axum routes with ([`api::Routes`]): wrapping each route
//! instead (`Router::layer`) would box and clone every request through two more services.
//!
//! This runs on every request, so the common case allocates nothing but a fresh request id: a
//! route with a direct answer ([`api::Direct`]: `GET /`, the probes) is answered here without
//! the router, and a route that answers on its first poll with a success or a JSON error is
//! finished in place, without boxing. Anything else (faults switched on, a refusal, an error
//! body to rewrite) takes a boxed slow path, and the request timer is armed only for a route
//! that has to wait.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version, header};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tower::Service;

use crate::api::{self, AppState, Direct};
use crate::error::ApiError;
use crate::metrics::{InFlight, MethodLabel, Metrics, RouteSeries};

pub static X_SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");
pub static X_VERSION: HeaderName = HeaderName::from_static("x-version");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The public application: routes, fallback and middleware, ready to serve.
pub fn public_app(state: AppState) -> Observe {
    let routes = api::routes();
    let table = RouteTable::new(&routes, &state.metrics);
    let router = routes
        .into_router()
        .fallback(not_found)
        .with_state(state.clone());
    Observe {
        router,
        shared: Arc::new(Shared { state, table }),
    }
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found("no route for this path").with("path", request.uri().path())
}

/// Which route template a path belongs to, with each template's metric series and direct
/// answer.
#[derive(Debug)]
struct RouteTable {
    matcher: matchit::Router<usize>,
    routes: Vec<RouteSeries>,
    direct: Vec<Option<Direct>>,
    unmatched: RouteSeries,
}

impl RouteTable {
    fn new(routes: &api::Routes, metrics: &Metrics) -> Self {
        let mut matcher = matchit::Router::new();
        let mut series = Vec::new();
        let mut direct = Vec::new();
        for (index, (template, answer)) in routes.templates().enumerate() {
            matcher
                .insert(template, index)
                .expect("axum accepted the same templates");
            series.push(metrics.route_series(template));
            direct.push(answer);
        }
        Self {
            matcher,
            routes: series,
            direct,
            unmatched: metrics.route_series("unmatched"),
        }
    }

    /// The route a path reaches, or `None` for the fallback.
    fn find(&self, path: &str) -> Option<usize> {
        self.matcher.at(path).ok().map(|found| *found.value)
    }

    fn series(&self, route: Option<usize>) -> &RouteSeries {
        route.map_or(&self.unmatched, |index| &self.routes[index])
    }

    /// The route's direct answer to `method`, if it has one (`GET` and `HEAD` only).
    fn direct(&self, route: Option<usize>, method: &Method) -> Option<Direct> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        self.direct[route?]
    }
}

/// What every request's future needs, behind one reference count.
#[derive(Debug)]
struct Shared {
    state: AppState,
    table: RouteTable,
}

/// The middleware around the public router (see the module docs).
#[derive(Debug, Clone)]
pub struct Observe {
    router: Router,
    shared: Arc<Shared>,
}

/// A hyper service rather than a tower one: hyper calls it by reference, so a request clones
/// nothing but the router's reference count.
impl<B> hyper::service::Service<http::Request<B>> for Observe
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ObserveFuture;

    fn call(&self, request: http::Request<B>) -> ObserveFuture {
        let shared = &self.shared;
        let route = shared.table.find(request.uri().path());
        let seen = Seen {
            started: Instant::now(),
            in_flight: shared.state.metrics.in_flight(),
            method: MethodLabel::of(request.method()),
            route,
            request_id: request_id(request.headers()),
            uri: request.uri().clone(),
        };
        let state = &shared.state;
        let stage = if let Some(refusal) = refuse_early(&request, state.config.body_limit) {
            // The route's future is never made, so the body is never read.
            Stage::Slow {
                answer: Box::pin(std::future::ready(refusal.into_response())),
            }
        } else if state.faults.active() {
            let is_probe = matches!(request.uri().path(), "/healthz" | "/readyz");
            let faults = state.faults.clone();
            let routed = self.route(request.map(Body::new));
            let timed = with_timeout(state.config.request_timeout, seen.started, routed);
            Stage::Slow {
                answer: Box::pin(async move {
                    match faults.roll(is_probe).await {
                        Some(injected) => injected.into_response(),
                        None => json_errors(timed.await).await,
                    }
                }),
            }
        } else if let Some(answer) = shared.table.direct(route, request.method()) {
            // For HEAD too: hyper sends the headers of the GET and leaves the body out.
            // The body stays hyper's: a direct answer never reads it, so it is not boxed.
            Stage::Answered {
                response: Some(answer(state, request.headers())),
            }
        } else {
            Stage::Routed {
                route: self.route(request.map(Body::new)),
                deadline: None,
            }
        };
        ObserveFuture {
            shared: shared.clone(),
            seen: Some(seen),
            stage,
        }
    }
}

impl Observe {
    fn route(&self, request: Request) -> RouteFuture<Infallible> {
        // The router is always ready (axum documents it), so no `poll_ready` first.
        self.router.clone().call(request)
    }
}

/// What [`Observe`] keeps of a request for its answer and its log line.
struct Seen {
    started: Instant,
    in_flight: InFlight,
    method: MethodLabel,
    route: Option<usize>,
    request_id: HeaderValue,
    uri: Uri,
}

pin_project! {
    /// The answer to one public request (see the module docs for its two paths).
    pub struct ObserveFuture {
        shared: Arc<Shared>,
        seen: Option<Seen>,
        #[pin]
        stage: Stage,
    }
}

pin_project! {
    #[project = StageProj]
    enum Stage {
        /// A direct answer ([`api::Direct`]), made when the request came.
        Answered { response: Option<Response> },
        /// The route runs; its timer is armed the first time it has to wait.
        Routed {
            #[pin]
            route: RouteFuture<Infallible>,
            deadline: Option<Pin<Box<tokio::time::Sleep>>>,
        },
        /// Faults, refusals and error bodies to rewrite: rare, so boxed.
        Slow { answer: BoxFuture<'static, Response> },
    }
}

impl Future for ObserveFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let state = &this.shared.state;
        let response = loop {
            match this.stage.as_mut().project() {
                StageProj::Answered { response } => {
                    let response = response.take().expect("an answer is taken once");
                    if is_json_or_success(&response) {
                        break response;
                    }
                    this.stage.set(Stage::Slow {
                        answer: Box::pin(json_errors(response)),
                    });
                }
                StageProj::Routed { route, deadline } => {
                    let response = match route.poll(cx) {
                        Poll::Ready(Ok(response)) => response,
                        Poll::Ready(Err(never)) => match never {},
                        Poll::Pending => {
                            let request_timeout = state.config.request_timeout;
                            let timer = deadline.get_or_insert_with(|| {
                                let started = this
                                    .seen
                                    .as_ref()
                                    .expect("the request is seen until it is answered")
                                    .started;
                                let at = tokio::time::Instant::from_std(started) + request_timeout;
                                Box::pin(tokio::time::sleep_until(at))
                            });
                            ready!(timer.as_mut().poll(cx));
                            break timed_out(request_timeout);
                        }
                    };
                    if is_json_or_success(&response) {
                        break response;
                    }
                    this.stage.set(Stage::Slow {
                        answer: Box::pin(json_errors(response)),
                    });
                }
                StageProj::Slow { answer } => break ready!(answer.as_mut().poll(cx)),
            }
        };
        let seen = this
            .seen
            .take()
            .expect("an answered future is not polled again");
        Poll::Ready(Ok(finish(this.shared, seen, response)))
    }
}

fn timed_out(request_timeout: Duration) -> Response {
    ApiError::unavailable("request timed out")
        .with("timeout_ms", request_timeout.as_millis() as u64)
        .into_response()
}

/// The route under the request timeout, for the slow path.
async fn with_timeout(
    request_timeout: Duration,
    started: Instant,
    route: RouteFuture<Infallible>,
) -> Response {
    let deadline = tokio::time::Instant::from_std(started) + request_timeout;
    match tokio::time::timeout_at(deadline, route).await {
        Ok(Ok(response)) => response,
        Ok(Err(never)) => match never {},
        Err(_) => timed_out(request_timeout),
    }
}

/// Stamps the answer, records it, logs it.
fn finish(shared: &Shared, seen: Seen, mut response: Response) -> Response {
    let Seen {
        started,
        in_flight,
        method,
        route,
        request_id,
        uri,
    } = seen;
    let state = &shared.state;
    let headers = response.headers_mut();
    match headers.get_mut(&X_REQUEST_ID) {
        // Stamped in advance ([`stamp_in_advance`]): only the id is missing.
        Some(id) if *id == UNSET_REQUEST_ID => *id = request_id,
        _ => {
            headers.insert(X_SERVED_BY.clone(), state.served_by.clone());
            headers.insert(X_VERSION.clone(), HeaderValue::from_static(crate::VERSION));
            headers.insert(X_REQUEST_ID.clone(), request_id);
        }
    }

    let elapsed = started.elapsed();
    let status = response.status();
    let series = shared.table.series(route);
    state
        .metrics
        .record_request(series, method, status.as_u16(), elapsed);
    drop(in_flight);
    let slow = elapsed >= state.config.slow_request;
    if state.config.access_log || status.is_server_error() || slow {
        let latency_ms = elapsed.as_micros() as f64 / 1000.0;
        let request_id = response
            .headers()
            .get(&X_REQUEST_ID)
            .and_then(|id| id.to_str().ok())
            .unwrap_or("");
        macro_rules! access_log {
            ($level:ident $(, $field:ident)*) => {
                tracing::$level!(
                    method = method.as_str(),
                    route = series.route(),
                    path = uri.path(),
                    status = status.as_u16(),
                    latency_ms,
                    request_id,
                    $($field,)*
                    "request"
                )
            };
        }
        if status.is_server_error() || slow {
            access_log!(warn, slow);
        } else {
            access_log!(info);
        }
    }
    response
}

/// What `x-request-id` holds in headers stamped in advance until [`finish`] writes the
/// request's own id over it. Not a valid id (ids are visible ASCII), so no caller can send it.
static UNSET_REQUEST_ID: HeaderValue = HeaderValue::from_static("");

/// Puts the stamps every answer carries into headers made once and cloned for each answer
/// (such as [`crate::api::hello`]'s greeting): [`finish`] then writes only the request id,
/// instead of inserting three headers into every answer.
pub(crate) fn stamp_in_advance(headers: &mut HeaderMap, served_by: &HeaderValue) {
    headers.insert(X_SERVED_BY.clone(), served_by.clone());
    headers.insert(X_VERSION.clone(), HeaderValue::from_static(crate::VERSION));
    headers.insert(X_REQUEST_ID.clone(), UNSET_REQUEST_ID.clone());
}

/// The caller's request id when it is 1–128 visible ASCII characters, else a fresh one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(given) = headers.get(&X_REQUEST_ID) {
        let bytes = given.as_bytes();
        if (1..=128).contains(&bytes.len()) && bytes.iter().all(|b| b.is_ascii_graphic()) {
            return given.clone();
        }
    }
    let mut text = [0u8; 16];
    let random = fastrand::u64(..);
    for (index, slot) in text.iter_mut().enumerate() {
        let nibble = (random >> (60 - 4 * index)) & 0xf;
        *slot = b"0123456789abcdef"[nibble as usize];
    }
    HeaderValue::from_bytes(&text).expect("hex digits are a valid header value")
}

fn refuse_early<B>(request: &http::Request<B>, body_limit: usize) -> Option<ApiError> {
    if request.version() == Version::HTTP_11 && !request.headers().contains_key(header::HOST) {
        return Some(ApiError::bad_request(
            "HTTP/1.1 requests must carry a Host header",
        ));
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    match declared {
        Some(length) if length > body_limit as u64 => Some(ApiError::payload_too_large(body_limit)),
        _ => None,
    }
}

/// Whether an answer can go out as it is: anything but an error, or an error that is JSON.
fn is_json_or_success(response: &Response) -> bool {
    let status = response.status();
    !(status.is_client_error() || status.is_server_error())
        || response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/json"))
}

/// Gives error answers that are not JSON yet (axum's 405 and extractor rejections) a JSON body,
/// keeping their status and headers such as `Allow`.
pub(crate) async fn json_errors(response: Response) -> Response {
    if is_json_or_success(&response) {
        return response;
    }
    let status = response.status();
    let (parts, body) = response.into_parts();
    let text = match http_body_util::Limited::new(body, 4096).collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes())
            .trim()
            .to_owned(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    let mut error = ApiError::new(status, message);
    if status == StatusCode::METHOD_NOT_ALLOWED
        && let Some(allow) = parts.headers.get(header::ALLOW)
    {
        error = ApiError::method_not_allowed(allow.clone());
    }
    let mut rebuilt = error.into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rebuilt
                .headers_mut()
                .entry(name)
                .or_insert_with(|| value.clone());
        }
    }
    *rebuilt.extensions_mut() = parts.extensions;
    rebuilt
}

/// Faults an operator switches on through the admin port, for resilience demos: a share of
/// public requests answered 500, and latency added before each. Both off by default.
#[derive(Debug, Default)]
pub struct Faults {
    /// Share of requests to fail, as `f64` bits (0 = off).
    error_rate: AtomicU64,
    /// Latency to add, in microseconds (0 = off).
    latency_us: AtomicU64,
}

impl Faults {
    pub fn set(&self, error_rate: f64, latency: Duration) {
        self.error_rate
            .store(error_rate.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.store(micros, Ordering::Relaxed);
    }

    pub fn error_rate(&self) -> f64 {
        f64::from_bits(self.error_rate.load(Ordering::Relaxed))
    }

    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us.load(Ordering::Relaxed))
    }

    /// Whether any fault is switched on.
    fn active(&self) -> bool {
        self.error_rate.load(Ordering::Relaxed) != 0 || self.latency_us.load(Ordering::Relaxed) != 0
    }

    /// Applies the configured faults to one request: waits the added latency, then maybe
    /// returns the injected error. Probes are exempt, so faults never get replicas restarted.
    async fn roll(&self, is_probe: bool) -> Option<ApiError> {
        if is_probe {
            return None;
        }
        let latency = self.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let rate = self.error_rate();
        (rate > 0.0 && fastrand::f64() < rate)
            .then(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "injected fault"))
    }
}

/// A body-less answer with `status`, for tests of [`json_errors`].
#[cfg(test)]
fn bare(status: StatusCode) -> Response {
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bare_errors_become_json_and_keep_allow() {
        let mut response = bare(StatusCode::METHOD_NOT_ALLOWED);
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
        let response = json_errors(response).await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET,HEAD");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(json["error"], "method not allowed");
        assert_eq!(json["allow"], "GET,HEAD");
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        let made = request_id(&headers);
        assert_eq!(made.len(), 16);
        assert!(made.as_bytes().iter().all(u8::is_ascii_hexdigit));
    }

    #[tokio::test]
    async fn probes_are_never_faulted() {
        let faults = Faults::default();
        faults.set(1.0, Duration::ZERO);
        assert!(faults.roll(true).await.is_none());
        assert!(faults.roll(false).await.is_some());
    }
}
