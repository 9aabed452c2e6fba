//! The Redis store: shared state for every replica, and the only file that knows Redis exists.
//!
//! One managed, multiplexed connection (the `redis` crate's `ConnectionManager`) serves all
//! requests and reconnects by itself after Redis restarts. It is created lazily, so a server
//! whose Redis is down at start still starts: it reports not-ready until the first `ping`
//! succeeds. Every call is bounded by the per-call timeout and fails fast with
//! [`StoreError::Timeout`] or [`StoreError::Unavailable`] instead of hanging.
//!
//! Keys, all under [`KEY_PREFIX`]:
//! - `seq`: the store-wide version sequence (INCR), so ETags never repeat for a key;
//! - `kv:<key>`: a hash with the value (`v`) and its version (`ver`), written together;
//! - `counter:<name>`: a counter (INCR);
//! - `idem:<name>:<idempotency key>`: the first result of a keyed increment, expiring after
//!   [`IDEMPOTENCY_RETENTION`](super::IDEMPOTENCY_RETENTION).
//!
//! Conditional writes and keyed increments are Lua scripts, so each is one atomic step in Redis
//! whichever replica runs it.

use std::fmt;
use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisError, Script, Value};
use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};

use super::{
    Condition, Entry, IDEMPOTENCY_RETENTION, Increment, Store, StoreError, Version, Written,
};

/// Every key this service writes starts with this, so a shared Redis stays tidy.
pub const KEY_PREFIX: &str = "hello-world:";

/// Writes a value with a fresh version if the condition holds.
/// KEYS: kv key, sequence key. ARGV: mode (always|version|exists|absent), expected version, value.
/// Returns {1, new version, created (1|0)} or {0, current version or 0}.
static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local current = redis.call('HGET', KEYS[1], 'ver')
local mode = ARGV[1]
if (mode == 'version' and current ~= ARGV[2])
    or (mode == 'exists' and not current)
    or (mode == 'absent' and current) then
    return {0, current or 0}
end
local version = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'v', ARGV[3], 'ver', version)
if current then return {1, version, 0} end
return {1, version, 1}
",
    )
});

/// Deletes a key if the condition holds.
/// KEYS: kv key. ARGV: mode, expected version.
/// Returns {1} deleted, {2} already absent, or {0, current version or 0}.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local current = redis.call('HGET', KEYS[1], 'ver')
local mode = ARGV[1]
if (mode == 'version' and current ~= ARGV[2])
    or (mode == 'exists' and not current)
    or (mode == 'absent' and current) then
    return {0, current or 0}
end
if current then
    redis.call('DEL', KEYS[1])
    return {1}
end
return {2}
",
    )
});

/// Increments a counter once per idempotency key and remembers the result.
/// KEYS: counter key, record key. ARGV: retention in seconds.
/// Returns {1, first result} for a replay, or {0, new value}.
static INCREMENT_ONCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local first = redis.call('GET', KEYS[2])
if first then return {1, first} end
local value = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], value, 'EX', ARGV[1], 'NX')
return {0, value}
",
    )
});

/// The Redis-backed [`Store`].
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    timeout: Duration,
    /// `host:port/db`, for logs and Debug: never the password.
    address: String,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("address", &self.address)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The Redis URL could not be understood (the message never repeats the URL, which may hold a
/// password).
#[derive(Debug, thiserror::Error)]
#[error("invalid Redis URL: {0}")]
pub struct InvalidRedisUrl(String);

impl RedisStore {
    /// A store for `url` (`redis://[[user]:password@]host[:port][/db]`) whose every call gives up
    /// after `timeout`.
    ///
    /// It does not connect: the first call (normally the readiness probe's `ping`) does, and
    /// a Redis that is down now only makes calls fail until it is up. Must be called within a
    /// Tokio runtime.
    pub fn connect(url: &str, timeout: Duration) -> Result<Self, InvalidRedisUrl> {
        let client = Client::open(url).map_err(|err| InvalidRedisUrl(err.to_string()))?;
        let info = client.get_connection_info();
        let address = format!("{}/{}", info.addr(), info.redis_settings().db());
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // A connection attempt retries twice within a few hundred milliseconds: enough to
            // ride through a blip, short enough that calls fail fast (503) while Redis is down
            // instead of all waiting out the timeout. The next call after a failed attempt
            // starts a new one, so the readiness probe's ping finds Redis within a second of
            // its return.
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(250))
            .set_number_of_retries(2);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|err| InvalidRedisUrl(err.to_string()))?;
        Ok(Self {
            connection,
            timeout,
            address,
        })
    }

    /// `host:port/db` of the Redis server (no credentials).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Runs one Redis call within the per-call timeout.
    async fn call<T>(
        &self,
        work: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) if err.is_timeout() => Err(StoreError::Timeout(self.timeout)),
            Ok(Err(err)) => Err(StoreError::Unavailable(err.to_string())),
            Err(_elapsed) => Err(StoreError::Timeout(self.timeout)),
        }
    }
}

fn kv_key(key: &str) -> String {
    format!("{KEY_PREFIX}kv:{key}")
}

fn counter_key(counter: &str) -> String {
    format!("{KEY_PREFIX}counter:{counter}")
}

fn record_key(counter: &str, idempotency_key: &str) -> String {
    format!("{KEY_PREFIX}idem:{counter}:{idempotency_key}")
}

fn sequence_key() -> String {
    format!("{KEY_PREFIX}seq")
}

/// The script's name for a condition and the version it expects (ignored unless `version`).
fn mode(condition: Condition) -> (&'static str, Version) {
    match condition {
        Condition::Always => ("always", 0),
        Condition::IfVersion(version) => ("version", version),
        Condition::IfExists => ("exists", 0),
        Condition::IfAbsent => ("absent", 0),
    }
}

/// A script's reply that breaks its own contract: Redis is not the one we talk to, or a key was
/// written by something else.
fn malformed(what: &str, reply: &[Value]) -> StoreError {
    StoreError::Unavailable(format!("unexpected reply to {what}: {reply:?}"))
}

/// A number from a script's reply: Lua returns integers, stored strings come back as bulk text.
fn number<T: std::str::FromStr>(value: &Value) -> Option<T> {
    match value {
        Value::Int(n) => n.to_string().parse().ok(),
        Value::BulkString(text) => std::str::from_utf8(text).ok()?.parse().ok(),
        Value::SimpleString(text) => text.parse().ok(),
        _ => None,
    }
}

/// The current version in a refusal: 0 stands for "absent" (versions start at 1).
fn refusal(what: &str, reply: &[Value]) -> StoreError {
    match reply.get(1).and_then(number::<Version>) {
        Some(0) => StoreError::ConditionFailed { current: None },
        Some(current) => StoreError::ConditionFailed {
            current: Some(current),
        },
        None => malformed(what, reply),
    }
}

impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>, StoreError>> {
        async move {
            let mut connection = self.connection.clone();
            let (value, version): (Option<Vec<u8>>, Option<Version>) = self
                .call(
                    ::redis::cmd("HMGET")
                        .arg(kv_key(key))
                        .arg("v")
                        .arg("ver")
                        .query_async(&mut connection),
                )
                .await?;
            Ok(match (value, version) {
                (Some(value), Some(version)) => Some(Entry {
                    value: Bytes::from(value),
                    version,
                }),
                _ => None,
            })
        }
        .boxed()
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        condition: Condition,
    ) -> BoxFuture<'a, Result<Written, StoreError>> {
        async move {
            let mut connection = self.connection.clone();
            let (mode, expected) = mode(condition);
            let reply: Vec<Value> = self
                .call(
                    PUT.key(kv_key(key))
                        .key(sequence_key())
                        .arg(mode)
                        .arg(expected)
                        .arg(value.as_ref())
                        .invoke_async(&mut connection),
                )
                .await?;
            match reply.first().and_then(number::<u8>) {
                Some(1) => {
                    let version = reply.get(1).and_then(number::<Version>);
                    let created = reply.get(2).and_then(number::<u8>);
                    match (version, created) {
                        (Some(version), Some(created)) => Ok(Written {
                            version,
                            created: created == 1,
                        }),
                        _ => Err(malformed("put", &reply)),
                    }
                }
                Some(0) => Err(refusal("put", &reply)),
                _ => Err(malformed("put", &reply)),
            }
        }
        .boxed()
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        condition: Condition,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            let mut connection = self.connection.clone();
            let (mode, expected) = mode(condition);
            let reply: Vec<Value> = self
                .call(
                    DELETE
                        .key(kv_key(key))
                        .arg(mode)
                        .arg(expected)
                        .invoke_async(&mut connection),
                )
                .await?;
            match reply.first().and_then(number::<u8>) {
                Some(1) => Ok(true),
                Some(2) => Ok(false),
                Some(0) => Err(refusal("delete", &reply)),
                _ => Err(malformed("delete", &reply)),
            }
        }
        .boxed()
    }

    fn counter<'a>(&'a self, counter: &'a str) -> BoxFuture<'a, Result<i64, StoreError>> {
        async move {
            let mut connection = self.connection.clone();
            let value: Option<i64> = self
                .call(
                    ::redis::cmd("GET")
                        .arg(counter_key(counter))
                        .query_async(&mut connection),
                )
                .await?;
            Ok(value.unwrap_or(0))
        }
        .boxed()
    }

    fn increment<'a>(
        &'a self,
        counter: &'a str,
        idempotency_key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Increment, StoreError>> {
        async move {
            let mut connection = self.connection.clone();
            let Some(idempotency_key) = idempotency_key else {
                // A plain INCR is already atomic; no script needed.
                let value: i64 = self
                    .call(
                        ::redis::cmd("INCR")
                            .arg(counter_key(counter))
                            .query_async(&mut connection),
                    )
                    .await?;
                return Ok(Increment {
                    value,
                    replayed: false,
                });
            };
            let reply: Vec<Value> = self
                .call(
                    INCREMENT_ONCE
                        .key(counter_key(counter))
                        .key(record_key(counter, idempotency_key))
                        .arg(IDEMPOTENCY_RETENTION.as_secs())
                        .invoke_async(&mut connection),
                )
                .await?;
            let replayed = reply.first().and_then(number::<u8>);
            let value = reply.get(1).and_then(number::<i64>);
            match (replayed, value) {
                (Some(replayed), Some(value)) => Ok(Increment {
                    value,
                    replayed: replayed == 1,
                }),
                _ => Err(malformed("increment", &reply)),
            }
        }
        .boxed()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            let mut connection = self.connection.clone();
            let _: String = self
                .call(::redis::cmd("PING").query_async(&mut connection))
                .await?;
            Ok(())
        }
        .boxed()
    }
}
