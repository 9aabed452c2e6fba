//! The middleware every public request passes through: one tower [`Layer`] around the public
//! router, so its order is visible in one place:
//!
//! 1. request id: the caller's `x-request-id` when it is sane, else a fresh one;
//! 2. refusals before any work: HTTP/1.1 without `Host`, or any request with two → 400, a
//!    `Content-Length` above the body limit → 413 at once (the body is never read); a body that
//!    streams past the limit is cut off there, which [`crate::api::read_body`] answers 413.
//!    This is the one place that applies `--body-limit`;
//! 3. the body budget (`--body-budget`): a request with a body reserves its `Content-Length`
//!    (the body limit when it declares none) from one budget shared by all requests, waits
//!    while it is spent, and keeps the reservation until its route has answered, so bodies in
//!    flight stay within it however many clients send at once;
//! 4. fault injection ([`crate::faults`]; never on `/healthz` and `/readyz`);
//! 5. the route, under the request timeout (503 when it runs out, waiting for the body budget
//!    included);
//! 6. every error made JSON ([`crate::error::json_errors`]: axum's own 405s and rejections are
//!    plain text or empty);
//! 7. `x-served-by`, `x-version`, `x-node` (when known), `x-request-id` on the answer; metrics
//!    by route template; the access log line.
//!
//! [`public_app`] installs it with `Router::layer`, which runs it after routing, around each
//! route and the fallback: the route template that metrics and logs name is the one axum
//! matched ([`MatchedPath`]), so every path is matched once, and unmatched paths share the
//! label `unmatched`.
//!
//! This runs on every request, so the common case stays cheap: no timer is armed until the
//! route has to wait (most answer on their first poll), and only the rare cases (a body to
//! read, faults switched on, a refusal, an error body to rewrite) box a future. `cargo xtask ci` holds the
//! whole pipeline to an instruction budget against a bare axum hello world.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, Uri, Version, header};
use http_body::Body as _;
use pin_project_lite::pin_project;
use tokio::sync::Semaphore;
use tower::{Layer, Service};

use crate::api::AppState;
use crate::config::AccessLog;
use crate::error::{ApiError, is_json_or_success, json_errors};
use crate::metrics::{InFlight, MethodLabel, RouteSeries};

pub static X_SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");
pub static X_VERSION: HeaderName = HeaderName::from_static("x-version");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The machine the replica runs on, when the orchestrator says (`NODE_NAME`): with it a client
/// sees requests spread over machines, not only over replicas.
pub static X_NODE: HeaderName = HeaderName::from_static("x-node");

/// The public application: routes, fallback and middleware, ready to serve.
pub fn public_app(state: AppState) -> Router {
    crate::api::router()
        .fallback(not_found)
        .layer(ObserveLayer::new(state.clone()))
        .with_state(state)
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found("no route for this path").with("path", request.uri().path())
}

/// Installs [`Observe`] around a service (see the module docs).
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    shared: Arc<Shared>,
}

impl ObserveLayer {
    pub fn new(state: AppState) -> Self {
        let unmatched = state.metrics.route_series("unmatched");
        let stamps = Stamps::new(
            &state.config.instance_name,
            state.config.downward.node.as_deref(),
        );
        // Never below one body of the limit's size, which would wait forever: `config` refuses
        // such a budget, and a `Config` built by hand gets the limit.
        let budget = state.config.body_budget.max(state.config.body_limit);
        let bodies = Semaphore::new(kibibytes(budget) as usize);
        Self {
            shared: Arc::new(Shared {
                state,
                stamps,
                unmatched,
                bodies,
            }),
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// What every request's future needs, behind one reference count.
#[derive(Debug)]
struct Shared {
    state: AppState,
    stamps: Stamps,
    /// The series of paths no route matched, made once.
    unmatched: Arc<RouteSeries>,
    /// The body budget, in KiB: requests with a body hold a reservation of it while they run.
    bodies: Semaphore,
}

impl Shared {
    /// Reserves `kib` of the body budget, waiting (and counted as waiting) while it is spent.
    async fn reserve_body(&self, kib: u32) -> tokio::sync::SemaphorePermit<'_> {
        let _waiting = (self.bodies.available_permits() < kib as usize)
            .then(|| self.state.metrics.body_waiting());
        self.bodies
            .acquire_many(kib)
            .await
            .expect("the body budget is never closed")
    }
}

/// The middleware around one route of the public router (see the module docs).
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let shared = &self.shared;
        let state = &shared.state;
        let route = request.extensions().get::<MatchedPath>();
        let is_probe = route.is_some_and(|route| matches!(route.as_str(), "/healthz" | "/readyz"));
        let series = match route {
            Some(route) => state.metrics.route_series(route.as_str()),
            None => shared.unmatched.clone(),
        };
        let seen = Seen {
            started: Instant::now(),
            in_flight: state.metrics.in_flight(),
            method: MethodLabel::of(request.method()),
            series,
            request_id: request_id(request.headers()),
            uri: request.uri().clone(),
            version: request.version(),
        };
        let body_limit = state.config.body_limit;
        let reservation = body_reservation(&request, body_limit);
        let stage = if let Some(refusal) = refuse_early(&request, body_limit) {
            // The route is never called, so the body is never read.
            Stage::Slow {
                answer: Box::pin(std::future::ready(refusal.into_response())),
            }
        } else if reservation.is_some() || state.faults.active() {
            let faults = state.faults.clone();
            let shared = shared.clone();
            let request_timeout = state.config.request_timeout;
            let started = seen.started;
            // The service that was made ready goes into the future; a clone stays for the next
            // request (tower's rule for calling a service later).
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            Stage::Slow {
                answer: Box::pin(async move {
                    let routed = async {
                        // Held until the route has answered, by when its body has been read.
                        let _reserved = match reservation {
                            Some(kib) => Some(shared.reserve_body(kib).await),
                            None => None,
                        };
                        if let Some(injected) = faults.roll(is_probe).await {
                            return injected.into_response();
                        }
                        match inner.call(limit_body(request, body_limit)).await {
                            Ok(response) => response,
                            Err(never) => match never {},
                        }
                    };
                    let deadline = tokio::time::Instant::from_std(started) + request_timeout;
                    match tokio::time::timeout_at(deadline, routed).await {
                        Ok(response) => json_errors(response).await,
                        Err(_) => timed_out(request_timeout),
                    }
                }),
            }
        } else {
            Stage::Routed {
                route: self.inner.call(limit_body(request, body_limit)),
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

/// What [`Observe`] keeps of a request for its answer and its log line.
struct Seen {
    started: Instant,
    in_flight: InFlight,
    method: MethodLabel,
    series: Arc<RouteSeries>,
    request_id: HeaderValue,
    uri: Uri,
    version: Version,
}

pin_project! {
    /// The answer to one public request.
    pub struct ObserveFuture<F> {
        shared: Arc<Shared>,
        seen: Option<Seen>,
        #[pin]
        stage: Stage<F>,
    }
}

pin_project! {
    #[project = StageProj]
    enum Stage<F> {
        /// The route runs; its timer is armed the first time it has to wait.
        Routed {
            #[pin]
            route: F,
            deadline: Option<Pin<Box<tokio::time::Sleep>>>,
        },
        /// Faults, refusals and error bodies to rewrite: rare, so boxed.
        Slow { answer: BoxFuture<'static, Response> },
    }
}

impl<F> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let response = loop {
            match this.stage.as_mut().project() {
                StageProj::Routed { route, deadline } => {
                    let response = match route.poll(cx) {
                        Poll::Ready(Ok(response)) => response,
                        Poll::Ready(Err(never)) => match never {},
                        Poll::Pending => {
                            let request_timeout = this.shared.state.config.request_timeout;
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

/// How the access log names a request's protocol.
fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

fn timed_out(request_timeout: Duration) -> Response {
    ApiError::unavailable("request timed out")
        .with("timeout_ms", request_timeout.as_millis() as u64)
        .into_response()
}

/// Stamps the answer, records it, logs it.
fn finish(shared: &Shared, seen: Seen, mut response: Response) -> Response {
    let Seen {
        started,
        in_flight,
        method,
        series,
        request_id,
        uri,
        version,
    } = seen;
    let state = &shared.state;
    let headers = response.headers_mut();
    shared.stamps.apply(headers);
    headers.insert(X_REQUEST_ID.clone(), request_id);

    let elapsed = started.elapsed();
    let status = response.status();
    state
        .metrics
        .record_request(&series, method, status.as_u16(), elapsed);
    drop(in_flight);
    let slow = elapsed >= state.config.slow_request;
    let error = status.is_client_error() || status.is_server_error();
    if state.config.access_log == AccessLog::All || error || slow {
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
                    protocol = protocol(version),
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

/// The headers that say who answered, on every answer: `x-served-by`, `x-version`, and
/// `x-node` when the replica knows its machine. Made once from the config.
#[derive(Debug, Clone)]
struct Stamps {
    served_by: HeaderValue,
    node: Option<HeaderValue>,
}

impl Stamps {
    /// Panics unless both are valid header values, which [`crate::config`] checks first.
    fn new(instance: &str, node: Option<&str>) -> Self {
        Self {
            served_by: HeaderValue::from_str(instance)
                .expect("config validated the instance name as a header value"),
            node: node.map(|node| {
                HeaderValue::from_str(node)
                    .expect("config validated the node name as a header value")
            }),
        }
    }

    fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(X_SERVED_BY.clone(), self.served_by.clone());
        headers.insert(X_VERSION.clone(), HeaderValue::from_static(crate::VERSION));
        if let Some(node) = &self.node {
            headers.insert(X_NODE.clone(), node.clone());
        }
    }
}

/// The caller's request id when it is 1–128 visible ASCII characters, else a fresh one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
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

fn refuse_early(request: &Request, body_limit: usize) -> Option<ApiError> {
    // RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, and for any request with more
    // than one (two could name two origins, and a proxy and we might pick different ones).
    let mut hosts = request.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if request.version() == Version::HTTP_11 => {
            return Some(ApiError::bad_request(
                "HTTP/1.1 requests must carry a Host header",
            ));
        }
        (Some(_), Some(_)) => {
            return Some(ApiError::bad_request(
                "a request must carry at most one Host header",
            ));
        }
        _ => {}
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

/// What a request with a body reserves of the body budget, in KiB: its `Content-Length`, or the
/// body limit when it declares none (chunked). `None` for a request without a body.
fn body_reservation(request: &Request, body_limit: usize) -> Option<u32> {
    let body = request.body();
    if body.is_end_stream() {
        return None;
    }
    let length = body
        .size_hint()
        .exact()
        .map_or(body_limit, |exact| exact.min(body_limit as u64) as usize);
    Some(kibibytes(length).max(1))
}

/// Bytes in whole KiB, rounded up: the unit of the body budget, so a reservation fits the
/// semaphore's `u32` for any body limit up to 4 TiB.
fn kibibytes(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// Cuts the request's body off at the body limit. An empty body (nearly every `GET`) is left
/// as it is.
fn limit_body(request: Request, body_limit: usize) -> Request {
    if request.body().is_end_stream() {
        return request;
    }
    request.map(|body| Body::new(http_body_util::Limited::new(body, body_limit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_name_the_machine_only_when_it_is_known() {
        let mut on_a_machine = HeaderMap::new();
        Stamps::new("web.1", Some("node-2")).apply(&mut on_a_machine);
        assert_eq!(on_a_machine[&X_NODE], "node-2");
        assert_eq!(on_a_machine[&X_SERVED_BY], "web.1");
        assert_eq!(on_a_machine[&X_VERSION], crate::VERSION);
        let mut anywhere = HeaderMap::new();
        Stamps::new("web.1", None).apply(&mut anywhere);
        assert!(!anywhere.contains_key(&X_NODE));
        assert_eq!(anywhere[&X_SERVED_BY], "web.1");
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
}
