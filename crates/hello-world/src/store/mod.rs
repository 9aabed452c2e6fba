//! Shared state behind one trait in plain verbs, so any replica can serve any request.
//!
//! Two implementations: [`memory::MemoryStore`], the embedded default (one process), and
//! `redis::RedisStore`, used when a Redis URL is configured. Only `redis.rs` knows Redis exists;
//! the routes see a `dyn Store`.
//!
//! Semantics every implementation holds to (the contract test in `tests/` checks both):
//! - versions come from one store-wide sequence, so an ETag never repeats for a key, even
//!   after a delete and re-create;
//! - `put`/`delete` with a [`Condition`] are atomic compare-and-set operations;
//! - `increment` with an idempotency key counts once per key within the retention, and a retry
//!   returns the first result.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

pub mod memory;

/// A store-wide, strictly increasing version number; the kv ETag.
pub type Version = u64;

/// How long an idempotency key remembers its first result.
pub const IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// A stored value and the version written with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Bytes,
    pub version: Version,
}

/// The precondition of a write, from `If-Match` / `If-None-Match`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Unconditional.
    Always,
    /// `If-Match: "<v>"`: the current version must be exactly this one.
    IfVersion(Version),
    /// `If-Match: *`: the key must exist.
    IfExists,
    /// `If-None-Match: *`: the key must not exist (create-only).
    IfAbsent,
}

/// The outcome of an increment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Increment {
    /// The counter's value right after this increment.
    pub value: i64,
    /// True when the idempotency key had been seen: nothing was counted, `value` is the first result.
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The write's [`Condition`] did not hold; `current` is the version found (None: absent).
    #[error("precondition failed")]
    ConditionFailed { current: Option<Version> },
    /// The store could not be reached or answered with an error.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store did not answer within the per-call timeout.
    #[error("store call timed out after {0:?}")]
    Timeout(Duration),
}

/// The shared-state verbs. Futures are boxed so routes can hold an `Arc<dyn Store>`.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// `"memory"` or `"redis"`, shown by `/api/info`.
    fn kind(&self) -> &'static str;

    /// The value and version of `key`, or None.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>, StoreError>>;

    /// Writes `value` if `condition` holds; returns the new version.
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        condition: Condition,
    ) -> BoxFuture<'a, Result<Version, StoreError>>;

    /// Deletes `key` if `condition` holds; Ok(false) when it was already absent
    /// (and the condition allows absence).
    fn delete<'a>(
        &'a self,
        key: &'a str,
        condition: Condition,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// The current value of `counter` (0 when never incremented).
    fn counter<'a>(&'a self, counter: &'a str) -> BoxFuture<'a, Result<i64, StoreError>>;

    /// Adds one to `counter`. With an idempotency key, the increment and the record of its
    /// result are one atomic step: a retry with the same key returns the first result.
    fn increment<'a>(
        &'a self,
        counter: &'a str,
        idempotency_key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Increment, StoreError>>;

    /// Succeeds when the store answers; drives readiness.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// Opens the store the configuration names: Redis when a URL is given, else in memory.
/// Every call through the returned store is counted in [`Metrics`].
pub async fn open(
    config: &crate::config::Config,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    let inner: std::sync::Arc<dyn Store> = match &config.redis_url {
        None => std::sync::Arc::new(memory::MemoryStore::new()),
        Some(_) => {
            anyhow::bail!("--redis-url / HELLO_REDIS_URL: Redis support is not built in yet")
        }
    };
    Ok(std::sync::Arc::new(Metered { inner, metrics }))
}

/// Counts every call and every failure by operation; a precondition failure is an answer,
/// not a store failure.
#[derive(Debug)]
struct Metered {
    inner: std::sync::Arc<dyn Store>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Metered {
    fn record<T>(&self, operation: &'static str, result: &Result<T, StoreError>) {
        let failed = matches!(
            result,
            Err(StoreError::Unavailable(_) | StoreError::Timeout(_))
        );
        self.metrics.record_store_operation(operation, failed);
    }
}

impl Store for Metered {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>, StoreError>> {
        Box::pin(async move {
            let result = self.inner.get(key).await;
            self.record("get", &result);
            result
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        condition: Condition,
    ) -> BoxFuture<'a, Result<Version, StoreError>> {
        Box::pin(async move {
            let result = self.inner.put(key, value, condition).await;
            self.record("put", &result);
            result
        })
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        condition: Condition,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let result = self.inner.delete(key, condition).await;
            self.record("delete", &result);
            result
        })
    }

    fn counter<'a>(&'a self, counter: &'a str) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            let result = self.inner.counter(counter).await;
            self.record("counter", &result);
            result
        })
    }

    fn increment<'a>(
        &'a self,
        counter: &'a str,
        idempotency_key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Increment, StoreError>> {
        Box::pin(async move {
            let result = self.inner.increment(counter, idempotency_key).await;
            self.record("increment", &result);
            result
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let result = self.inner.ping().await;
            self.record("ping", &result);
            result
        })
    }
}
