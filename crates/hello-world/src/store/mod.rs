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
//! - a store without room refuses a write with [`StoreError::Full`] and changes nothing, while
//!   reads and deletes still work;
//! - `increment` with an idempotency key counts once per key within the retention, and a retry
//!   returns the first result.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use self::health::StoreHealth;

pub mod health;
pub mod memory;
pub mod metered;
pub mod redis;

/// A store-wide, strictly increasing version number; the kv ETag.
pub type Version = u64;

/// A version as an HTTP entity tag, `"42"`: the `ETag` of the kv routes and the
/// `current_etag` of a refused conditional write, written the same way by this one function.
pub fn entity_tag(version: Version) -> String {
    format!("\"{version}\"")
}

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
    /// The store has no room for the write: the memory store's budget, or Redis's `maxmemory`,
    /// is used up. Nothing was written; reads and deletes still work, and deletes make room.
    #[error("store full")]
    Full,
    /// The store cannot be reached, or cannot serve anyone: every call fails alike until it
    /// is back. `reason` names the cause in words a client may read ("connection refused");
    /// `detail` is the store's own message, for the log only (it may name hosts).
    #[error("store unavailable ({reason}): {detail}")]
    Unavailable {
        reason: &'static str,
        detail: String,
    },
    /// The store answered this call with an error ("read-only replica", "cannot persist
    /// writes"): it is reachable, this call failed. `reason` and `detail` as above.
    #[error("store call failed ({reason}): {detail}")]
    Failed {
        reason: &'static str,
        detail: String,
    },
    /// The store did not answer within the per-call timeout.
    #[error("store call timed out after {0:?}")]
    Timeout(Duration),
    /// A replicated store could not confirm that the write reached a replica: the primary
    /// refused it for want of a replica in sync, or made it and no replica confirmed it within
    /// the wait (`WAIT`). It is not acknowledged; it may still take effect, so a client retries
    /// with the same idempotency key (a retried increment then counts once). Reads still work.
    #[error("write not replicated ({reason}): {detail}")]
    NotReplicated {
        reason: &'static str,
        detail: String,
    },
}

impl StoreError {
    /// Why the store could not serve the call, in words a client may read; `None` when the
    /// store gave its answer (a precondition that did not hold is one, a full store another).
    pub fn unavailable_reason(&self) -> Option<&'static str> {
        match self {
            StoreError::ConditionFailed { .. } | StoreError::Full => None,
            StoreError::Unavailable { reason, .. }
            | StoreError::Failed { reason, .. }
            | StoreError::NotReplicated { reason, .. } => Some(reason),
            StoreError::Timeout(_) => Some("timed out"),
        }
    }
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

    /// Succeeds when the store answers; keeps [`health::StoreHealth`] current when no request
    /// calls the store.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// Opens the store the configuration names: Redis at a URL, the Redis primary the Sentinels
/// name, else in memory.
/// Every call through the returned store is observed by the returned [`StoreHealth`]: counted
/// in [`Metrics`](crate::metrics::Metrics), and telling whether the store answers.
///
/// Never waits for Redis: a server whose Redis is down at start starts anyway, serves what
/// needs no store, and reports the store unreachable until it answers.
pub async fn open(
    config: &crate::config::Config,
    metrics: Arc<crate::metrics::Metrics>,
) -> anyhow::Result<(Arc<dyn Store>, Arc<StoreHealth>)> {
    let wait = redis::Wait {
        replicas: config.redis_wait_replicas,
        timeout: config.redis_wait_timeout,
    };
    let inner: Arc<dyn Store> = match (&config.redis_url, &config.redis_sentinel) {
        (Some(url), _) => {
            let store = redis::RedisStore::connect(url, config.store_timeout)
                .map_err(|err| anyhow::anyhow!("--redis-url / HELLO_REDIS_URL: {err}"))?
                .with_wait(wait);
            tracing::info!(address = store.address(), timeout = ?config.store_timeout, replicas_to_confirm = wait.replicas, "store: redis");
            Arc::new(store)
        }
        (None, Some(sentinel)) => {
            let store = redis::RedisStore::through_sentinels(
                &sentinel.addresses,
                &sentinel.master_name,
                config.store_timeout,
            )
            .map_err(|err| anyhow::anyhow!("--redis-sentinel / HELLO_REDIS_SENTINEL: {err}"))?
            .with_wait(wait);
            tracing::info!(address = store.address(), timeout = ?config.store_timeout, replicas_to_confirm = wait.replicas, "store: redis through Sentinel");
            Arc::new(store)
        }
        (None, None) => Arc::new(memory::MemoryStore::new(config.store_budget)),
    };
    let health = Arc::new(StoreHealth::new(inner.kind(), metrics));
    let store = Arc::new(metered::Metered::new(inner, health.clone()));
    Ok((store, health))
}
