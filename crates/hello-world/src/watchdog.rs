//! The header timeout, kept per connection instead of per request.
//!
//! A client that opens a connection and never completes a request head (slowloris), or leaves
//! a keep-alive connection idle, must be cut off after `--header-timeout`. hyper can do this
//! itself, but it allocates, registers and cancels a timer for every request (about 1,200
//! instructions of the 17,700 a `GET /` cost before, counted with callgrind). Here each
//! connection counts its progress instead, a counter bump, and a [`watch`] task of its own
//! looks at the count every half timeout and aborts the connection's task when it stalls. A
//! separate task, not a second branch of the connection's: that would be polled on every wake
//! of a busy connection.
//!
//! - progress is a request head parsed (the service was called) or bytes written to the client;
//! - while a request is being handled (from the head until the route answers) the connection is
//!   never cut, however long the route takes: `/delay` and slow stores are the request
//!   timeout's business;
//! - a connection with no progress for two looks in a row, and nothing in hand, is closed:
//!   between one and one and a half header timeouts after its last progress, and exactly one
//!   header timeout after accept for a client that never sends a head. Bytes that trickle in
//!   without completing a head are not progress, which is the point.
//!
//! A client that stops reading a large answer makes no progress either (its writes stall), so
//! it is cut off the same way, which hyper's own timeout does not do.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use hyper::rt::{Read, ReadBufCursor, Write};
use pin_project_lite::pin_project;
use tokio::task::AbortHandle;

/// What one connection has done, written by its [`Watched`] wrappers, read by [`watch`].
#[derive(Debug, Default)]
pub struct Progress {
    /// Bumped on every request head and every write that moved bytes.
    steps: AtomicU64,
    /// Requests called but not yet answered, plus [`CLOSING`] once the watchdog has decided
    /// to close: deciding and refusing new requests are one atomic step, so no request can
    /// slip in between the decision and the abort.
    in_hand: AtomicU64,
    /// Set when the connection's task ends, which wakes the watchdog to end too.
    closed: AtomicBool,
    watchdog: AtomicWaker,
}

/// Set in [`Progress::in_hand`] when the connection is being closed.
const CLOSING: u64 = 1 << 63;

impl Progress {
    fn step(&self) {
        self.steps.fetch_add(1, Ordering::Relaxed);
    }

    /// Resolves once the connection's task has ended.
    async fn closed(&self) {
        std::future::poll_fn(|cx| {
            self.watchdog.register(cx.waker());
            if self.closed.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}

/// Held by a connection's task: when the task ends (or is aborted) its watchdog ends too.
#[derive(Debug)]
pub struct Closing(Arc<Progress>);

impl Closing {
    pub fn new(progress: Arc<Progress>) -> Self {
        Self(progress)
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.watchdog.wake();
    }
}

/// Watches one connection (see the module docs): returns at once when the connection ends,
/// and aborts it when it makes no progress for a header timeout. Returns whether it aborted.
pub async fn watch(
    progress: Arc<Progress>,
    header_timeout: Duration,
    connection: AbortHandle,
) -> bool {
    tokio::select! {
        () = progress.closed() => false,
        () = stalled(&progress, header_timeout) => {
            connection.abort();
            true
        }
    }
}

/// Resolves when the connection has made no progress for a header timeout.
async fn stalled(progress: &Progress, header_timeout: Duration) {
    let look_every = header_timeout / 2;
    let mut last = progress.steps.load(Ordering::Relaxed);
    let mut idle_looks = 0;
    loop {
        tokio::time::sleep(look_every).await;
        let now = progress.steps.load(Ordering::Relaxed);
        if now != last || progress.in_hand.load(Ordering::Acquire) != 0 {
            last = now;
            idle_looks = 0;
            continue;
        }
        idle_looks += 1;
        if idle_looks == 2 {
            let nothing_in_hand =
                progress
                    .in_hand
                    .compare_exchange(0, CLOSING, Ordering::AcqRel, Ordering::Acquire);
            if nothing_in_hand.is_ok() {
                return;
            }
            // A request arrived just now: it is progress.
            idle_looks = 0;
        }
    }
}

/// A connection's I/O or service, reporting progress to its watchdog.
#[derive(Debug, Clone)]
pub struct Watched<T> {
    inner: T,
    progress: Arc<Progress>,
}

impl<T> Watched<T> {
    pub fn new(inner: T, progress: Arc<Progress>) -> Self {
        Self { inner, progress }
    }
}

impl<S, R> hyper::service::Service<R> for Watched<S>
where
    S: hyper::service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Answering<S::Future>;

    fn call(&self, request: R) -> Self::Future {
        self.progress.step();
        let before = self.progress.in_hand.fetch_add(1, Ordering::AcqRel);
        let guard = InHand(self.progress.clone());
        // Once the watchdog has decided to close, the abort is on its way: a request that
        // arrives now is never started, so it cannot be cut off halfway through.
        let closing = before & CLOSING != 0;
        Answering {
            inner: (!closing).then(|| self.inner.call(request)),
            guard,
        }
    }
}

/// Counts a request as in hand until it is answered or dropped.
#[derive(Debug)]
struct InHand(Arc<Progress>);

impl Drop for InHand {
    fn drop(&mut self) {
        self.0.in_hand.fetch_sub(1, Ordering::Relaxed);
        self.0.step();
    }
}

pin_project! {
    /// A request being answered: the connection is not idle meanwhile. `None` for a request
    /// that arrived as the connection was being closed: it waits for the abort.
    pub struct Answering<F> {
        #[pin]
        inner: Option<F>,
        guard: InHand,
    }
}

impl<F: Future> Future for Answering<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project().inner.as_pin_mut() {
            Some(inner) => inner.poll(cx),
            None => Poll::Pending,
        }
    }
}

impl<T: Read + Unpin> Read for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.progress.step();
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.progress.step();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::service::Service;

    /// A stand-in for a connection's task, which only ends when aborted.
    fn connection() -> tokio::task::JoinHandle<()> {
        tokio::spawn(std::future::pending())
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_progress_is_aborted_after_one_timeout() {
        let progress = Arc::new(Progress::default());
        let connection = connection();
        let started = tokio::time::Instant::now();
        assert!(watch(progress, Duration::from_secs(10), connection.abort_handle()).await);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert!(connection.await.expect_err("aborted").is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_ends_with_its_connection() {
        let progress = Arc::new(Progress::default());
        let connection = connection();
        let watchdog = tokio::spawn(watch(
            progress.clone(),
            Duration::from_secs(10),
            connection.abort_handle(),
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = tokio::time::Instant::now();
        drop(Closing::new(progress));
        assert!(!watchdog.await.expect("the watchdog does not panic"));
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(!connection.is_finished());
    }

    /// A service that counts its calls.
    #[derive(Clone, Default)]
    struct Counting(Arc<AtomicU64>);

    impl hyper::service::Service<()> for Counting {
        type Response = ();
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<(), std::convert::Infallible>>;

        fn call(&self, (): ()) -> Self::Future {
            self.0.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Ok(()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_arrives_as_the_connection_closes_is_never_started() {
        let progress = Arc::new(Progress::default());
        let connection = connection();
        let service = Watched::new(Counting::default(), progress.clone());
        let calls = service.inner.0.clone();
        service.call(()).await.expect("answered");
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert!(
            watch(
                progress.clone(),
                Duration::from_secs(10),
                connection.abort_handle()
            )
            .await
        );
        let late = service.call(());
        assert_eq!(calls.load(Ordering::Relaxed), 1, "the late request ran");
        assert!(
            tokio::time::timeout(Duration::from_secs(60), late)
                .await
                .is_err(),
            "the late request was answered"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn progress_and_requests_in_hand_keep_it_open() {
        let progress = Arc::new(Progress::default());
        let started = tokio::time::Instant::now();
        let connection = connection();
        let watchdog = tokio::spawn(watch(
            progress.clone(),
            Duration::from_secs(10),
            connection.abort_handle(),
        ));
        // A step every 7 s for a minute keeps it open.
        for _ in 0..9 {
            tokio::time::sleep(Duration::from_secs(7)).await;
            progress.step();
        }
        assert!(!watchdog.is_finished());
        // A request in hand for a minute keeps it open too.
        let service = Watched::new(Counting::default(), progress.clone());
        let in_hand = service.call(());
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!watchdog.is_finished());
        drop(in_hand);
        let answered = tokio::time::Instant::now();
        assert!(watchdog.await.expect("the watchdog does not panic"));
        let idle = answered.elapsed();
        assert!(
            idle >= Duration::from_secs(10) && idle <= Duration::from_secs(15),
            "closed {idle:?} after the last answer, {:?} after start",
            started.elapsed()
        );
    }
}
