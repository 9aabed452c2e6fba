//! Binds the public and admin listeners and serves them until shutdown.
//!
//! We run our own accept loop on hyper instead of `axum::serve` because the listener-level
//! defences need it:
//! - a header read timeout (slowloris), kept per connection by [`crate::watchdog`] (hyper's own
//!   needs a timer per request, and `axum::serve` installs none);
//! - a 32 KiB cap on the request head and hyper's 100-header cap (both answered 431);
//! - a connection limit (a semaphore; connections over it are closed at once and counted);
//! - graceful shutdown in the order [`crate::lifecycle`] describes.
//!
//! Each connection speaks HTTP/1.1 or HTTP/2 cleartext as its first bytes say (hyper-util's
//! `auto` connection, which reads the first 24 bytes once per connection), or HTTP/1.1 then
//! HTTP/2 after an `Upgrade: h2c` ([`crate::h2c`]), to the same service. HTTP/2 gets the same
//! limits in its own terms: at most [`MAX_CONCURRENT_STREAMS`] streams at once (more are
//! refused with `REFUSED_STREAM`, which clients retry), a header list of at most
//! [`MAX_HEADER_BYTES`] (431), the same body limit (the middleware's), the same header timeout
//! (the watchdog counts streams and writes as it counts requests), and a bound on streams the
//! client resets before they were served ([`MAX_PENDING_RESETS`], the "rapid reset" attack) and
//! on streams the server resets for the client's errors ([`MAX_ERROR_RESETS`]): past either the
//! connection is closed with GOAWAY (`ENHANCE_YOUR_CALM`).
//!
//! [`Server::bind`] takes a [`Config`] whose ports may be 0, so tests bind ephemeral ports and
//! read them back; [`Server::run`] takes the shutdown future, so tests stop it themselves.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Extension;
use axum::extract::ConnectInfo;
use axum::response::Response;
use http::Request;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::Layer as _;

use crate::api::AppState;
use crate::config::Config;
use crate::h2c::{self, Handoff};
use crate::metrics::Metrics;
use crate::watchdog::{self, Progress, Watched};

/// Largest request head (request line + headers; for HTTP/2, the header list) accepted; more
/// is answered 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Streams one HTTP/2 connection may have open at once (nginx's default).
pub const MAX_CONCURRENT_STREAMS: u32 = 128;

/// Streams an HTTP/2 client may reset before the server took them up, at any one time: a burst
/// of them is the "rapid reset" attack (CVE-2023-44487), work a client makes the server start
/// and at once throws away, which the stream limit does not bound. Past it: GOAWAY.
pub const MAX_PENDING_RESETS: usize = 20;

/// Streams the server may reset for a client's protocol errors on one connection before it
/// closes the connection with GOAWAY (CVE-2025-8671, "made you reset").
pub const MAX_ERROR_RESETS: usize = 256;

/// Two bound listeners and the state they serve.
#[derive(Debug)]
pub struct Server {
    public: TcpListener,
    admin: TcpListener,
    state: AppState,
}

impl Server {
    /// Opens the store the config names and binds both listeners.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let (store, store_health) = crate::store::open(&config, metrics.clone()).await?;
        let public_addr = SocketAddr::new(config.host, config.port);
        let admin_addr = SocketAddr::new(config.host, config.admin_port);
        let public = TcpListener::bind(public_addr)
            .await
            .with_context(|| format!("cannot listen on {public_addr} (--port / HELLO_PORT)"))?;
        let admin = TcpListener::bind(admin_addr).await.with_context(|| {
            format!("cannot listen on {admin_addr} (--admin-port / HELLO_ADMIN_PORT)")
        })?;
        let state = AppState::new(config, store, store_health, metrics);
        Ok(Self {
            public,
            admin,
            state,
        })
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains (see [`crate::lifecycle`]) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            public,
            admin,
            state,
        } = self;
        let config = &state.config;

        // The store's health is reported, not waited for: readiness is this replica's alone.
        let watcher = tokio::spawn(crate::store::health::watch(state.store.clone()));
        // Before the listeners accept, so no gRPC health call sees a status readiness did not set.
        let grpc_health = tokio::spawn(crate::api::grpc::follow_readiness(state.clone()));

        let (stop_tx, stop_rx) = watch::channel(false);
        // No hyper timer: its header timeout costs a timer per request; ours is per connection
        // (crate::watchdog). `writev(false)`: hyper copies an answer's head and body into one
        // buffer and sends it with one `write`, which the kernel handles measurably cheaper for
        // the small answers nearly every request gets than a `writev` of two pieces (0.15 µs of
        // server CPU per `GET /`, from `/proc` around `wrk -c64`).
        let http = Arc::new(Protocols::new());
        let public_app = TowerToHyperService::new(crate::observe::public_app(state.clone()));
        let public_loop = tokio::spawn(accept_loop(
            public,
            move |_| public_app.clone(),
            config.header_timeout,
            http.clone(),
            Some(Arc::new(Semaphore::new(config.max_connections))),
            state.metrics.clone(),
            stop_rx.clone(),
        ));
        // The admin routes decide by the peer's address when no token is set, so each admin
        // connection's requests carry it.
        let admin_app = crate::admin::admin_app(state.clone());
        let admin_loop = tokio::spawn(accept_loop(
            admin,
            move |peer| {
                TowerToHyperService::new(Extension(ConnectInfo(peer)).layer(admin_app.clone()))
            },
            config.header_timeout,
            http,
            None,
            state.metrics.clone(),
            stop_rx,
        ));
        state.readiness.mark_started();
        tracing::info!(
            public = %SocketAddr::new(config.host, config.port),
            admin_port = config.admin_port,
            instance = %config.instance_name,
            version = crate::VERSION,
            store = state.store.kind(),
            "serving"
        );

        shutdown.await;
        state.readiness.mark_draining();
        tracing::info!(
            drain_delay_ms = config.drain_delay.as_millis() as u64,
            "draining: /readyz now answers 503"
        );
        tokio::time::sleep(config.drain_delay).await;

        tracing::info!("closing listeners; waiting for in-flight requests");
        let _ = stop_tx.send(true);
        let public_graceful = public_loop.await.context("public accept loop panicked")?;
        let admin_graceful = admin_loop.await.context("admin accept loop panicked")?;
        let finished = tokio::time::timeout(config.shutdown_timeout, async {
            tokio::join!(public_graceful.shutdown(), admin_graceful.shutdown());
        })
        .await;
        watcher.abort();
        grpc_health.abort();
        match finished {
            Ok(()) => tracing::info!("all requests finished; exiting"),
            Err(_) => tracing::warn!(
                shutdown_timeout_ms = config.shutdown_timeout.as_millis() as u64,
                "shutdown timeout reached with requests still in flight; exiting anyway"
            ),
        }
        Ok(())
    }
}

/// How connections are served: HTTP/1.1 or HTTP/2 as the client opens, and HTTP/2 alone for
/// a connection upgraded to it. One place sets the limits of both.
#[derive(Debug)]
struct Protocols {
    auto: auto::Builder<TokioExecutor>,
    upgraded: auto::Builder<TokioExecutor>,
}

impl Protocols {
    fn new() -> Self {
        let mut auto = auto::Builder::new(TokioExecutor::new());
        // hyper's HTTP/1 head limit is its read buffer's size when no other is set, which
        // the auto connection does not let us set: so the buffer is the head's size.
        auto.http1()
            .max_buf_size(MAX_HEADER_BYTES)
            .keep_alive(true)
            .writev(false);
        auto.http2()
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
            .max_local_error_reset_streams(MAX_ERROR_RESETS);
        let upgraded = auto.clone().http2_only();
        Self { auto, upgraded }
    }
}

/// Accepts connections until told to stop, then hands back the graceful-shutdown tracker of the
/// connections it started. `app` makes the service of one connection from its peer's address.
async fn accept_loop<S>(
    listener: TcpListener,
    app: impl Fn(SocketAddr) -> S,
    header_timeout: Duration,
    http: Arc<Protocols>,
    limit: Option<Arc<Semaphore>>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> GracefulShutdown
where
    S: Service<Request<Incoming>, Response = Response, Error = Infallible>,
    S: Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let count_connections = limit.is_some();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match &limit {
            Some(limit) => match limit.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    metrics.connection_rejected();
                    tracing::debug!(%peer, "connection limit reached; closing");
                    drop(stream);
                    continue;
                }
            },
            None => None,
        };
        let _ = stream.set_nodelay(true);
        let open = count_connections.then(|| metrics.connection_opened());
        let progress = Arc::new(Progress::default());
        // Two watchers: a connection upgraded to h2c is two connections in turn.
        let watchers = (graceful.watcher(), graceful.watcher());
        let http = http.clone();
        let app = app(peer);
        tokio::spawn(async move {
            // Pinned here and watched by reference: moved into `watch`, the connection's state
            // (about 2 KiB) would be laid out in this task twice more.
            let connection = std::pin::pin!(serve(stream, app, &http, progress.clone(), watchers));
            match watchdog::watch(connection, &progress, header_timeout).await {
                Some(Ok(())) => {}
                Some(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "connection ended with an error");
                }
                None => tracing::debug!(%peer, "no progress within the header timeout; closed"),
            }
            drop((open, permit));
        });
    }
    graceful
}

/// Serves one connection: HTTP/1.1 or HTTP/2 as it opens, then HTTP/2 if a request upgraded it.
async fn serve<S>(
    stream: tokio::net::TcpStream,
    app: S,
    http: &Protocols,
    progress: Arc<Progress>,
    (watcher, upgraded_watcher): (Watcher, Watcher),
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: Service<Request<Incoming>, Response = Response, Error = Infallible>,
    S: Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    let handoff = Handoff::default();
    let service = Watched::new(h2c::Upgrade::new(app, handoff.clone()), progress.clone());
    let io = Watched::new(TokioIo::new(stream), progress);
    watcher
        .watch(
            http.auto
                .serve_connection_with_upgrades(io, service.clone()),
        )
        .await?;
    if let Some(upgraded) = handoff.into_http2().await {
        // The upgraded connection is the watched one underneath: its writes are still progress.
        upgraded_watcher
            .watch(http.upgraded.serve_connection(upgraded?, service))
            .await?;
    }
    Ok(())
}
