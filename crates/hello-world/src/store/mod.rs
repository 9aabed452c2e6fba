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
pub mod metered;
pub mod redis;

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

/// The outcome of a successful `put`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The version the value was written with: the new ETag.
    pub version: Version,
    /// True when the key was absent before (HTTP 201), false when a value was replaced (200).
    pub created: bool,
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

    /// Writes `value` if `condition` holds; returns the new version and whether it created the key.
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        condition: Condition,
    ) -> BoxFuture<'a, Result<Written, StoreError>>;

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
/// Every call through the returned store is counted in [`Metrics`](crate::metrics::Metrics).
///
/// Never waits for Redis: a server whose Redis is down at start starts anyway and reports
/// not-ready until the store answers.
pub async fn open(
    config: &crate::config::Config,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    let inner: std::sync::Arc<dyn Store> = match &config.redis_url {
        None => std::sync::Arc::new(memory::MemoryStore::new()),
        Some(url) => {
            let store = redis::RedisStore::connect(url, config.store_timeout)
                .map_err(|err| anyhow::anyhow!("--redis-url / HELLO_REDIS_URL: {err}"))?;
            tracing::info!(address = store.address(), timeout = ?config.store_timeout, "store: redis");
            std::sync::Arc::new(store)
        }
    };
    Ok(std::sync::Arc::new(metered::Metered::new(inner, metrics)))
}
