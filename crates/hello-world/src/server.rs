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
//! [`Server::bind`] takes a [`Config`] whose ports may be 0, so tests bind ephemeral ports and
//! read them back; [`Server::run`] takes the shutdown future, so tests stop it themselves.

use std::convert::Infallible;
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use anyhow::Context;
use axum::response::Response;
use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::api::AppState;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::watchdog::{self, Closing, Progress, Watched};

/// Largest request head (request line + headers) accepted; more is answered 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

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
        let store = crate::store::open(&config, metrics.clone()).await?;
        Self::bind_with_store(config, store, metrics).await
    }

    /// Binds both listeners around a store the caller made.
    pub async fn bind_with_store(
        config: Config,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let public_addr = SocketAddr::new(config.host, config.port);
        let admin_addr = SocketAddr::new(config.host, config.admin_port);
        let public = TcpListener::bind(public_addr)
            .await
            .with_context(|| format!("cannot listen on {public_addr} (--port / HELLO_PORT)"))?;
        let admin = TcpListener::bind(admin_addr).await.with_context(|| {
            format!("cannot listen on {admin_addr} (--admin-port / HELLO_ADMIN_PORT)")
        })?;
        let state = AppState::new(config, store, metrics);
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

        // Readiness follows the store from the first moment: one ping (bounded by the store's
        // call timeout) before declaring ourselves started, then a watcher.
        let reachable = state.store.ping().await.is_ok();
        state.readiness.set_store_reachable(reachable);
        let watcher = tokio::spawn(crate::lifecycle::watch_store(
            state.store.clone(),
            state.readiness.clone(),
        ));

        let (stop_tx, stop_rx) = watch::channel(false);
        // No hyper timer: its header timeout costs a timer per request; ours is per connection
        // (crate::watchdog).
        let mut http = http1::Builder::new();
        http.max_header_size(MAX_HEADER_BYTES).keep_alive(true);
        let public_loop = tokio::spawn(accept_loop(
            public,
            crate::observe::public_app(state.clone()),
            config.header_timeout,
            http.clone(),
            Some(Arc::new(Semaphore::new(config.max_connections))),
            state.metrics.clone(),
            stop_rx.clone(),
        ));
        let admin_loop = tokio::spawn(accept_loop(
            admin,
            TowerToHyperService::new(crate::admin::admin_app(state.clone())),
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

/// Accepts connections until told to stop, then hands back the graceful-shutdown tracker of the
/// connections it started.
async fn accept_loop<S>(
    listener: TcpListener,
    app: S,
    header_timeout: Duration,
    http: http1::Builder,
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
        let connection = http.serve_connection(
            Watched::new(Coalesced::new(TokioIo::new(stream)), progress.clone()),
            Watched::new(app.clone(), progress.clone()),
        );
        let connection = graceful.watch(connection);
        let closing = Closing::new(progress.clone());
        let task = tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
            drop((open, permit, closing));
        });
        let abort = task.abort_handle();
        tokio::spawn(async move {
            if watchdog::watch(progress, header_timeout, abort).await {
                tracing::debug!(%peer, "no progress within the header timeout; closed");
            }
        });
    }
    graceful
}

/// A connection's socket, writing a small answer's pieces (head and body) with one `write`
/// instead of a `writev`: the kernel sends one contiguous buffer measurably cheaper (0.15 µs of
/// server CPU per `GET /`, from `/proc` around `wrk -c64`), and copying a few hundred bytes
/// costs less than the difference. Large bodies still go out vectored, uncopied.
///
/// The pieces are joined in a buffer the connection keeps (at most [`COALESCE_UP_TO`] bytes,
/// sized by the largest small answer so far): a fresh zeroed buffer per write cost a
/// `memset` of its whole length each time.
#[derive(Debug)]
struct Coalesced<T> {
    io: T,
    joined: Vec<u8>,
}

impl<T> Coalesced<T> {
    fn new(io: T) -> Self {
        Self {
            io,
            joined: Vec::new(),
        }
    }
}

/// Largest write that is copied together rather than sent vectored.
const COALESCE_UP_TO: usize = 4096;

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Coalesced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Coalesced<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let total: usize = bufs.iter().map(|buf| buf.len()).sum();
        if bufs.len() > 1 && total <= COALESCE_UP_TO {
            let this = &mut *self;
            this.joined.clear();
            for buf in bufs {
                this.joined.extend_from_slice(buf);
            }
            return Pin::new(&mut this.io).poll_write(cx, &this.joined);
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
