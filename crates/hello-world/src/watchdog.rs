//! The header timeout, kept per connection instead of per request.
//!
//! A client that opens a connection and never completes a request head (slowloris), or leaves
//! a keep-alive connection idle, must be cut off after `--header-timeout`. hyper can do this
//! itself, but it allocates, registers and cancels a timer for every request (about 1,200
//! instructions of the 17,700 a `GET /` cost before, counted with callgrind). Here each
//! connection counts its progress instead, a counter bump, and [`watch`] races the connection
//! against one sleep that looks at the count every half timeout, dropping the connection when
//! it stalls. In the connection's own task rather than one of its own: counted with callgrind, a
//! request on a new connection costs about 1,700 instructions less (27,300: no second spawn,
//! wake and completion), one on a kept-alive connection about 120 more (15,770: the sleep is
//! polled on each of the connection's wakes), and one task needs no abort handle, no waker and
//! no flag for a request arriving as the connection closes.
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
//!
//! Requests are called only from the connection's own poll (HTTP/2 answers each in a task of
//! its own, but calls the service first), so no request can start between the decision to
//! close and the drop: both happen in one poll of [`watch`].

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use pin_project_lite::pin_project;

/// What one connection has done, written by its [`Watched`] wrappers, read by [`watch`].
#[derive(Debug, Default)]
pub struct Progress {
    /// Bumped on every request head and every write that moved bytes.
    steps: AtomicU64,
    /// Requests called but not yet answered.
    in_hand: AtomicU64,
}

impl Progress {
    fn step(&self) {
        self.steps.fetch_add(1, Ordering::Relaxed);
    }
}

/// Serves `connection` until it ends, or drops it when it makes no progress for a header
/// timeout (see the module docs): `None` then.
pub async fn watch<F: Future>(
    connection: F,
    progress: &Progress,
    header_timeout: Duration,
) -> Option<F::Output> {
    tokio::select! {
        biased;
        done = connection => Some(done),
        () = stalled(progress, header_timeout) => None,
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
            return;
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
        self.progress.in_hand.fetch_add(1, Ordering::AcqRel);
        Answering {
            inner: self.inner.call(request),
            guard: InHand(self.progress.clone()),
        }
    }
}

/// Counts a request as in hand until it is answered or dropped.
#[derive(Debug)]
struct InHand(Arc<Progress>);

impl Drop for InHand {
    fn drop(&mut self) {
        self.0.in_hand.fetch_sub(1, Ordering::Release);
        self.0.step();
    }
}

pin_project! {
    /// A request being answered: the connection is not idle meanwhile.
    pub struct Answering<F> {
        #[pin]
        inner: F,
        guard: InHand,
    }
}

impl<F: Future> Future for Answering<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().inner.poll(cx)
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

    /// A stand-in for a connection that never ends by itself.
    fn connection() -> std::future::Pending<()> {
        std::future::pending()
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_progress_is_dropped_after_one_timeout() {
        let progress = Progress::default();
        let started = tokio::time::Instant::now();
        assert!(
            watch(connection(), &progress, Duration::from_secs(10))
                .await
                .is_none()
        );
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_ends_is_answered_at_once() {
        let progress = Progress::default();
        let started = tokio::time::Instant::now();
        let ended = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            "done"
        };
        assert_eq!(
            watch(ended, &progress, Duration::from_secs(10)).await,
            Some("done")
        );
        assert_eq!(started.elapsed(), Duration::from_secs(1));
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
    async fn progress_and_requests_in_hand_keep_it_open() {
        let progress = Arc::new(Progress::default());
        let started = tokio::time::Instant::now();
        let watchdog = tokio::spawn({
            let progress = progress.clone();
            async move { watch(connection(), &progress, Duration::from_secs(10)).await }
        });
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
        assert!(
            watchdog
                .await
                .expect("the watchdog does not panic")
                .is_none()
        );
        let idle = answered.elapsed();
        assert!(
            idle >= Duration::from_secs(10) && idle <= Duration::from_secs(15),
            "closed {idle:?} after the last answer, {:?} after start",
            started.elapsed()
        );
        assert_eq!(service.inner.0.load(Ordering::Relaxed), 1);
    }
}
