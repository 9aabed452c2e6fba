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
//! Metrics and logs name the route template (axum's `MatchedPath`), never the raw path;
//! unmatched paths share the label `unmatched`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version, header};
use http_body_util::BodyExt;
use tower::{Layer, Service};

use crate::api::{self, AppState};
use crate::error::ApiError;
use crate::metrics::InFlight;

pub static X_SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");
pub static X_VERSION: HeaderName = HeaderName::from_static("x-version");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The public application: routes, fallback and middleware, ready to serve.
///
/// `Router::layer` wraps every endpoint (each route and the fallback) after routing, so
/// [`Observe`] sees axum's `MatchedPath` in the request: the route template, or none for the
/// fallback (labelled `unmatched`, so unknown paths cannot mint labels).
pub fn public_app(state: AppState) -> Router {
    api::router()
        .fallback(not_found)
        .layer(ObserveLayer {
            state: state.clone(),
        })
        .with_state(state)
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found("no route for this path").with("path", request.uri().path())
}

/// Wraps an endpoint in [`Observe`].
#[derive(Debug, Clone)]
struct ObserveLayer {
    state: AppState,
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The middleware itself. Hand-written rather than `middleware::from_fn`: this runs on every
/// request, and a plain service costs one allocation (the boxed future) where `from_fn` costs
/// several (benchmarks in `bench/`).
#[derive(Debug, Clone)]
struct Observe<S> {
    inner: S,
    state: AppState,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let seen = Seen {
            started: Instant::now(),
            in_flight: self.state.metrics.in_flight(),
            method: method_label(request.method()),
            route: route_label(request.extensions().get::<MatchedPath>()),
            request_id: request_id(request.headers()),
            uri: request.uri().clone(),
        };
        let refusal = refuse_early(&request, self.state.config.body_limit);
        // Routes' futures own what they need; creating one does not run it, so a refused
        // request is dropped unrun.
        let route = self.inner.call(request);
        let state = self.state.clone();
        Box::pin(async move {
            let response = match refusal {
                Some(refusal) => refusal.into_response(),
                None => answer(&state, &seen, route).await,
            };
            Ok(finish(&state, seen, json_errors(response).await))
        })
    }
}

/// What [`Observe`] keeps of a request for its answer and its log line.
struct Seen {
    started: Instant,
    in_flight: InFlight,
    method: &'static Arc<str>,
    route: Arc<str>,
    request_id: HeaderValue,
    uri: Uri,
}

/// Runs the route under the fault switches and the request timeout.
///
/// Most routes answer on their first poll; only a route that has to wait gets a timer, so the
/// hot path does not register and cancel one per request (bench/RESULTS.md). The deadline
/// still counts from when the request arrived.
async fn answer(
    state: &AppState,
    seen: &Seen,
    route: impl Future<Output = Result<Response, Infallible>>,
) -> Response {
    let is_probe = matches!(seen.uri.path(), "/healthz" | "/readyz");
    if let Some(injected) = state.faults.roll(is_probe).await {
        return injected.into_response();
    }
    let mut route = std::pin::pin!(route);
    let first = std::future::poll_fn(|cx| Poll::Ready(route.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(Ok(response)) => return response,
        Poll::Ready(Err(never)) => match never {},
        Poll::Pending => {}
    }
    let deadline = tokio::time::Instant::from_std(seen.started) + state.config.request_timeout;
    match tokio::time::timeout_at(deadline, route).await {
        Ok(Ok(response)) => response,
        Ok(Err(never)) => match never {},
        Err(_) => ApiError::unavailable("request timed out")
            .with(
                "timeout_ms",
                state.config.request_timeout.as_millis() as u64,
            )
            .into_response(),
    }
}

/// Stamps the answer, records it, logs it.
fn finish(state: &AppState, seen: Seen, mut response: Response) -> Response {
    let Seen {
        started,
        in_flight,
        method,
        route,
        request_id,
        uri,
    } = seen;
    let headers = response.headers_mut();
    headers.insert(X_SERVED_BY.clone(), state.served_by.clone());
    headers.insert(X_VERSION.clone(), HeaderValue::from_static(crate::VERSION));
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());

    let elapsed = started.elapsed();
    let status = response.status();
    state
        .metrics
        .record_request(method, &route, status.as_u16(), elapsed);
    drop(in_flight);
    let slow = elapsed >= state.config.slow_request;
    if state.config.access_log || status.is_server_error() || slow {
        let latency_ms = elapsed.as_micros() as f64 / 1000.0;
        let request_id = request_id.to_str().unwrap_or("");
        if status.is_server_error() || slow {
            tracing::warn!(
                method = method.as_ref(),
                route = route.as_ref(),
                path = uri.path(),
                status = status.as_u16(),
                latency_ms,
                request_id,
                slow,
                "request"
            );
        } else {
            tracing::info!(
                method = method.as_ref(),
                route = route.as_ref(),
                path = uri.path(),
                status = status.as_u16(),
                latency_ms,
                request_id,
                "request"
            );
        }
    }
    response
}

/// The route template as a metric label, interned: templates are few and fixed, so each is
/// allocated once and shared by every request that matches it.
fn route_label(matched: Option<&MatchedPath>) -> Arc<str> {
    static ROUTES: LazyLock<RwLock<HashMap<Box<str>, Arc<str>>>> = LazyLock::new(Default::default);
    let Some(template) = matched.map(MatchedPath::as_str) else {
        return unmatched();
    };
    if let Some(label) = ROUTES
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(template)
    {
        return label.clone();
    }
    ROUTES
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .entry(template.into())
        .or_insert_with(|| Arc::from(template))
        .clone()
}

fn unmatched() -> Arc<str> {
    static UNMATCHED: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    UNMATCHED.get_or_init(|| Arc::from("unmatched")).clone()
}

/// The method as a metric label; unknown methods share one label so clients cannot mint labels.
fn method_label(method: &Method) -> &'static Arc<str> {
    static LABELS: std::sync::OnceLock<[Arc<str>; 9]> = std::sync::OnceLock::new();
    let labels = LABELS.get_or_init(|| {
        [
            "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "other",
        ]
        .map(Arc::from)
    });
    let index = match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        _ => 8,
    };
    &labels[index]
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

fn refuse_early(request: &Request, body_limit: usize) -> Option<ApiError> {
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

/// Gives error answers that are not JSON yet (axum's 405 and extractor rejections) a JSON body,
/// keeping their status and headers such as `Allow`.
pub(crate) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
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
