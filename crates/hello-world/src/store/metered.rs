//! A [`Store`] decorator that reports every operation, when it started and how it ended to an
//! [`Observer`] (the service's is [`super::health::StoreHealth`]), so metrics and the store's
//! health see every store call without any store knowing about either.

use std::sync::Arc;
use std::time::Instant;

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
    /// True for the verbs that change nothing.
    pub fn is_read(self) -> bool {
        matches!(self, Op::Get | Op::Counter)
    }

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
    /// The store had no room for the write: an answer too.
    Full,
    /// The store could not be reached or used.
    Unavailable,
    /// The store answered this call with an error.
    Failed,
    Timeout,
    /// A write no replica confirmed (see [`StoreError::NotReplicated`]).
    NotReplicated,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::Conflict,
        Outcome::Full,
        Outcome::Unavailable,
        Outcome::Failed,
        Outcome::Timeout,
        Outcome::NotReplicated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Conflict => "conflict",
            Outcome::Full => "full",
            Outcome::Unavailable => "unavailable",
            Outcome::Failed => "failed",
            Outcome::Timeout => "timeout",
            Outcome::NotReplicated => "not_replicated",
        }
    }

    /// True when the store failed (unreachable, too slow, or refused the call).
    pub fn is_error(self) -> bool {
        matches!(
            self,
            Outcome::Unavailable | Outcome::Failed | Outcome::Timeout | Outcome::NotReplicated
        )
    }

    pub fn of(result: Result<(), &StoreError>) -> Self {
        match result {
            Ok(()) => Outcome::Ok,
            Err(StoreError::ConditionFailed { .. }) => Outcome::Conflict,
            Err(StoreError::Full) => Outcome::Full,
            Err(StoreError::Unavailable { .. }) => Outcome::Unavailable,
            Err(StoreError::Failed { .. }) => Outcome::Failed,
            Err(StoreError::Timeout(_)) => Outcome::Timeout,
            Err(StoreError::NotReplicated { .. }) => Outcome::NotReplicated,
        }
    }
}

/// Receives one report per finished store call: its verb, when it started, how it ended.
pub trait Observer: Send + Sync + std::fmt::Debug + 'static {
    fn observe(&self, op: Op, started: Instant, result: Result<(), &StoreError>);
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
                .observe(op, started, result.as_ref().map(|_| ()));
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
    use std::time::Duration;

    use super::*;
    use crate::store::memory::MemoryStore;

    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<(Op, Outcome)>>);

    impl Observer for Recorder {
        fn observe(&self, op: Op, _started: Instant, result: Result<(), &StoreError>) {
            self.0
                .lock()
                .expect("not poisoned")
                .push((op, Outcome::of(result)));
        }
    }

    #[tokio::test]
    async fn every_call_is_reported_with_its_outcome() {
        let recorder = Arc::new(Recorder::default());
        let store = Metered::new(Arc::new(MemoryStore::new(1 << 20)), recorder.clone());
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
