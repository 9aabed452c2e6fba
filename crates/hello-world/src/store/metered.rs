//! A [`Store`] decorator that reports every operation, its outcome and its duration to an
//! [`Observer`], so metrics see every store call without any store knowing about metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};

use super::{Condition, Entry, Increment, Store, StoreError, Written};

/// A store verb, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Get,
    Put,
    Delete,
    Counter,
    Increment,
    Ping,
}

impl Op {
    pub const ALL: [Op; 6] = [
        Op::Get,
        Op::Put,
        Op::Delete,
        Op::Counter,
        Op::Increment,
        Op::Ping,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Delete => "delete",
            Op::Counter => "counter",
            Op::Increment => "increment",
            Op::Ping => "ping",
        }
    }
}

/// How a store call ended, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    /// The write's condition did not hold: an answer, not a failure of the store.
    Conflict,
    Unavailable,
    Timeout,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::Conflict,
        Outcome::Unavailable,
        Outcome::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Conflict => "conflict",
            Outcome::Unavailable => "unavailable",
            Outcome::Timeout => "timeout",
        }
    }

    /// True when the store failed (unreachable or too slow).
    pub fn is_error(self) -> bool {
        matches!(self, Outcome::Unavailable | Outcome::Timeout)
    }

    fn of<T>(result: &Result<T, StoreError>) -> Self {
        match result {
            Ok(_) => Outcome::Ok,
            Err(StoreError::ConditionFailed { .. }) => Outcome::Conflict,
            Err(StoreError::Unavailable(_)) => Outcome::Unavailable,
            Err(StoreError::Timeout(_)) => Outcome::Timeout,
        }
    }
}

/// Receives one report per finished store call.
pub trait Observer: Send + Sync + std::fmt::Debug + 'static {
    fn observe(&self, op: Op, outcome: Outcome, elapsed: Duration);
}

/// The service's metrics count calls and failures by operation; a conflict is an answer, not a
/// failure.
impl Observer for crate::metrics::Metrics {
    fn observe(&self, op: Op, outcome: Outcome, _elapsed: Duration) {
        self.record_store_operation(op.as_str(), outcome.is_error());
    }
}

/// Wraps a store and reports each of its calls.
#[derive(Debug)]
pub struct Metered {
    inner: Arc<dyn Store>,
    observer: Arc<dyn Observer>,
}

impl Metered {
    pub fn new(inner: Arc<dyn Store>, observer: Arc<dyn Observer>) -> Self {
        Self { inner, observer }
    }

    fn measure<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        call: BoxFuture<'a, Result<T, StoreError>>,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        async move {
            let started = Instant::now();
            let result = call.await;
            self.observer
                .observe(op, Outcome::of(&result), started.elapsed());
            result
        }
        .boxed()
    }
}

impl Store for Metered {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>, StoreError>> {
        self.measure(Op::Get, self.inner.get(key))
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        condition: Condition,
    ) -> BoxFuture<'a, Result<Written, StoreError>> {
        self.measure(Op::Put, self.inner.put(key, value, condition))
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        condition: Condition,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.measure(Op::Delete, self.inner.delete(key, condition))
    }

    fn counter<'a>(&'a self, counter: &'a str) -> BoxFuture<'a, Result<i64, StoreError>> {
        self.measure(Op::Counter, self.inner.counter(counter))
    }

    fn increment<'a>(
        &'a self,
        counter: &'a str,
        idempotency_key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Increment, StoreError>> {
        self.measure(
            Op::Increment,
            self.inner.increment(counter, idempotency_key),
        )
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.measure(Op::Ping, self.inner.ping())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::store::memory::MemoryStore;

    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<(Op, Outcome)>>);

    impl Observer for Recorder {
        fn observe(&self, op: Op, outcome: Outcome, _elapsed: Duration) {
            self.0.lock().expect("not poisoned").push((op, outcome));
        }
    }

    #[tokio::test]
    async fn every_call_is_reported_with_its_outcome() {
        let recorder = Arc::new(Recorder::default());
        let store = Metered::new(Arc::new(MemoryStore::new()), recorder.clone());
        store
            .put("k", Bytes::from_static(b"v"), Condition::Always)
            .await
            .expect("put");
        let refused = store
            .put("k", Bytes::from_static(b"v"), Condition::IfAbsent)
            .await;
        assert!(refused.is_err());
        store.get("k").await.expect("get");
        store.increment("c", None).await.expect("increment");
        store.ping().await.expect("ping");
        assert_eq!(store.kind(), "memory");
        let seen = recorder.0.lock().expect("not poisoned").clone();
        assert_eq!(
            seen,
            vec![
                (Op::Put, Outcome::Ok),
                (Op::Put, Outcome::Conflict),
                (Op::Get, Outcome::Ok),
                (Op::Increment, Outcome::Ok),
                (Op::Ping, Outcome::Ok),
            ]
        );
    }

    #[tokio::test]
    async fn an_unreachable_store_is_reported_as_an_error() {
        let recorder = Arc::new(Recorder::default());
        // Port 1 on loopback: nothing listens there, so the connection is refused.
        let redis = crate::store::redis::RedisStore::connect(
            "redis://127.0.0.1:1",
            Duration::from_millis(200),
        )
        .expect("a valid URL");
        let store = Metered::new(Arc::new(redis), recorder.clone());
        assert!(store.ping().await.is_err());
        let seen = recorder.0.lock().expect("not poisoned").clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, Op::Ping);
        assert!(seen[0].1.is_error(), "{:?}", seen[0].1);
    }
}
