//! The Redis store: shared state for every replica, and the only file that knows Redis exists.
//!
//! Two ways to find Redis:
//! - **one server** (`--redis-url`): managed, multiplexed connections (the `redis` crate's
//!   `ConnectionManager`, see [`Connections`]) serve all requests and reconnect by themselves
//!   after Redis restarts;
//! - **through Sentinel** (`--redis-sentinel`, `--redis-master-name`): [`Sentinels`] asks every
//!   Sentinel which server is the primary, takes the answer a majority of them give, checks that
//!   the server says it is a primary (`ROLE`), and keeps managed connections to it. When a call
//!   to it fails in a way that says it may no longer be the primary (the connection is refused
//!   or lost, it answers `READONLY` as a replica does, it cannot confirm a write, it does not
//!   answer), that primary and its connections are forgotten and the next call asks the
//!   Sentinels again: a failover is followed without a restart, and a replica is never written
//!   to. The `redis` crate's own `sentinel::SentinelClient` asks the Sentinels one after the
//!   other and takes the first that names a primary, so it cannot tell when they disagree; its
//!   role check connects without a timeout. Asking all of them at once, with the per-call
//!   timeout, is the few lines below.
//!
//! Either way the connections are made lazily, each on its first call, so a server whose Redis
//! is down at start still starts: its state routes answer 503 until Redis answers. Every call,
//! discovery included, is bounded by the per-call timeout and fails fast with
//! [`StoreError::Timeout`] or [`StoreError::Unavailable`] instead of hanging; the latter names
//! the cause in a few words a client may read ([`unavailable`]: "connection refused", "sentinels
//! disagree"...), and keeps Redis's own message for the log.
//!
//! **Replica confirmation.** With [`Wait::replicas`] above 0, every write is sent in one pipeline
//! with `WAIT replicas timeout`, on the same connection: the write is acknowledged only when that
//! many replicas have confirmed it (and everything this connection wrote before it). Otherwise
//! the call fails with [`StoreError::NotReplicated`], answered 503: the write may still take
//! effect, so clients retry with the same idempotency key. A replayed increment writes too (it
//! renews its record), so its `WAIT` also covers the first attempt's write, whichever connection
//! made it. A primary run with `min-replicas-to-write` refuses writes when no replica is in sync
//! (`NOREPLICAS`): the same [`StoreError::NotReplicated`].
//!
//! Redis serves nothing else from a connection while a `WAIT` on it waits, so the writes that
//! end in one take turns on [`WRITE_CONNECTIONS`] connections of their own: that many wait for
//! the replicas side by side, and reads (and writes nobody waits on), on the one shared
//! connection, never queue behind a `WAIT`.
//!
//! Keys, all under [`KEY_PREFIX`]:
//! - `seq`: the store-wide version sequence (INCR), so ETags never repeat for a key;
//! - `kv:<key>`: a hash with the value (`v`) and its version (`ver`), written together;
//! - `counter:<name>`: a counter (INCR);
//! - `idem:<name>:<idempotency key>`: the first result of a keyed increment, expiring after
//!   [`IDEMPOTENCY_RETENTION`](super::IDEMPOTENCY_RETENTION);
//! - `probe`: what a replicated store's ping writes, to learn whether writes are confirmed.
//!
//! Conditional writes and keyed increments are Lua scripts (`EVAL`, so they can share a
//! pipeline with `WAIT`), each one atomic step in Redis whichever replica runs it.
//!
//! Memory: run Redis with `maxmemory` below its container's limit and `maxmemory-policy
//! noeviction` (the Swarm stack and the Kubernetes manifests do). Evicting would silently lose
//! values, the sequence or idempotency records; refusing keeps them, and a refused write is
//! [`StoreError::Full`], answered 507 like the memory store's.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, Cmd, ErrorKind, RedisError, ServerErrorKind, Value};
use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::FuturesUnordered;

use super::{
    Condition, Entry, IDEMPOTENCY_RETENTION, Increment, Store, StoreError, Version, Written,
};

/// Every key this service writes starts with this, so a shared Redis stays tidy.
pub const KEY_PREFIX: &str = "hello-world:";

/// Writes a value with a fresh version if the condition holds.
/// KEYS: kv key, sequence key. ARGV: mode (always|version|exists|absent), expected version, value.
/// Returns {1, new version, created (1|0)} or {0, current version or 0}.
const PUT: &str = r"
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
";

/// Deletes a key if the condition holds.
/// KEYS: kv key. ARGV: mode, expected version.
/// Returns {1} deleted, {2} already absent, or {0, current version or 0}.
const DELETE: &str = r"
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
";

/// Increments a counter once per idempotency key and remembers the result.
/// KEYS: counter key, record key. ARGV: retention in seconds.
/// Returns {1, first result} for a replay, or {0, new value}. A replay renews the record: that
/// write is what makes the `WAIT` after it cover the first attempt's (see the module docs).
const INCREMENT_ONCE: &str = r"
local first = redis.call('GET', KEYS[2])
if first then
    redis.call('EXPIRE', KEYS[2], ARGV[1])
    return {1, first}
end
local value = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], value, 'EX', ARGV[1], 'NX')
return {0, value}
";

/// How many replicas must confirm each write, and how long they get (`WAIT replicas timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// 0: writes are acknowledged when the primary made them.
    pub replicas: u32,
    pub timeout: Duration,
}

impl Wait {
    /// No replica confirmation: one Redis, or replicas only for reads.
    pub const NONE: Wait = Wait {
        replicas: 0,
        timeout: Duration::ZERO,
    };
}

/// How many connections to the primary carry the writes that wait for replicas, taking turns.
/// Each carries one `WAIT` at a time (Redis holds back the rest of that connection's commands),
/// so this many writes are confirmed per replica round trip: enough to keep up with unconfirmed
/// writes on a loopback or in-zone replica (bench/RESULTS.md), few enough that every replica of
/// the service opening this many more connections leaves Redis's client limit far away.
const WRITE_CONNECTIONS: usize = 8;

/// The connections to one Redis server, all managed and made lazily.
struct Connections {
    /// Reads, and writes that no replica must confirm: none of them ever blocks.
    shared: ConnectionManager,
    /// Writes with `WAIT`, on the next one in turn (`next`).
    waiting: Vec<ConnectionManager>,
    next: AtomicUsize,
}

/// What a call does, which decides the connection it goes on.
#[derive(Clone, Copy)]
enum Lane {
    /// Never blocks in Redis: the shared connection.
    Shared,
    /// Ends in `WAIT`: one of the waiting connections.
    Waiting,
}

impl Connections {
    /// `1 + WRITE_CONNECTIONS` lazy connections to the server `client` names.
    fn new(client: &Client, timeout: Duration) -> Result<Self, RedisError> {
        Ok(Self {
            shared: managed(client.clone(), timeout)?,
            waiting: (0..WRITE_CONNECTIONS)
                .map(|_| managed(client.clone(), timeout))
                .collect::<Result<_, _>>()?,
            next: AtomicUsize::new(0),
        })
    }

    fn get(&self, lane: Lane) -> ConnectionManager {
        match lane {
            Lane::Shared => self.shared.clone(),
            Lane::Waiting => {
                let turn = self.next.fetch_add(1, Ordering::Relaxed);
                self.waiting[turn % self.waiting.len()].clone()
            }
        }
    }
}

/// The Redis-backed [`Store`].
#[derive(Clone)]
pub struct RedisStore {
    target: Target,
    timeout: Duration,
    wait: Wait,
    /// `host:port/db`, or the Sentinels and the master name, for logs and Debug: never a
    /// password.
    address: String,
}

/// Where calls go.
#[derive(Clone)]
enum Target {
    /// One server at a fixed address; the managers reconnect to it.
    Direct(Arc<Connections>),
    /// The primary the Sentinels name, found again whenever it fails.
    Sentinel(Arc<Sentinels>),
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("address", &self.address)
            .field("timeout", &self.timeout)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

/// The Redis URL could not be understood (the message never repeats the URL, which may hold a
/// password).
#[derive(Debug, thiserror::Error)]
#[error("invalid Redis URL: {0}")]
pub struct InvalidRedisUrl(String);

/// How every managed connection of this store behaves: calls bounded by `timeout`, and a
/// connection attempt retried twice within a few hundred milliseconds: enough to ride through a
/// blip, short enough that calls fail fast (503) while Redis is down instead of all waiting out
/// the timeout. The next call after a failed attempt starts a new one, so the store's ping
/// finds Redis within a second of its return.
fn managed(client: Client, timeout: Duration) -> Result<ConnectionManager, RedisError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(250))
        .set_number_of_retries(2);
    ConnectionManager::new_lazy_with_config(client, config)
}

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
        let connections =
            Connections::new(&client, timeout).map_err(|err| InvalidRedisUrl(err.to_string()))?;
        Ok(Self {
            target: Target::Direct(Arc::new(connections)),
            timeout,
            wait: Wait::NONE,
            address,
        })
    }

    /// A store on the primary that the Sentinels at `sentinels` (`host:port` each) name for
    /// `master_name`. Like [`RedisStore::connect`], it connects on the first call.
    pub fn through_sentinels(
        sentinels: &[String],
        master_name: &str,
        timeout: Duration,
    ) -> Result<Self, InvalidRedisUrl> {
        let sentinels = Sentinels::new(sentinels, master_name, timeout)?;
        let address = format!(
            "sentinel {} master {master_name}",
            sentinels
                .sentinels
                .iter()
                .map(|(address, _)| address.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        Ok(Self {
            target: Target::Sentinel(Arc::new(sentinels)),
            timeout,
            wait: Wait::NONE,
            address,
        })
    }

    /// The same store, acknowledging a write only once `wait.replicas` replicas confirmed it.
    pub fn with_wait(self, wait: Wait) -> Self {
        Self { wait, ..self }
    }

    /// `host:port/db` of the Redis server, or the Sentinels and the master name (no
    /// credentials).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Runs one Redis call on the current primary, on `lane`'s connection, discovery included,
    /// within the per-call timeout; forgets the primary when the failure says it may have moved.
    async fn call<T, F, Fut>(&self, lane: Lane, work: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let timed_out = || StoreError::Timeout(self.timeout);
        let (connection, found) = match &self.target {
            Target::Direct(connections) => (connections.get(lane), None),
            Target::Sentinel(sentinels) => {
                let primary = tokio::time::timeout_at(deadline, sentinels.primary())
                    .await
                    .map_err(|_elapsed| timed_out())??;
                (primary.connections.get(lane), Some((sentinels, primary)))
            }
        };
        let result = match tokio::time::timeout_at(deadline, work(connection)).await {
            // The connection's own response timeout is the call's.
            Ok(Err(StoreError::Timeout(_))) | Err(_) => Err(timed_out()),
            Ok(result) => result,
        };
        if let (Err(err), Some((sentinels, primary))) = (&result, found)
            && may_have_moved(err)
        {
            sentinels.forget(&primary);
        }
        result
    }

    /// Sends `command` and, when replicas must confirm writes, `WAIT` after it in the same
    /// pipeline; the command's reply once confirmed.
    async fn write(&self, command: Cmd) -> Result<Value, StoreError> {
        let wait = self.wait;
        let lane = if wait.replicas == 0 {
            Lane::Shared
        } else {
            Lane::Waiting
        };
        self.call(lane, |mut connection| async move {
            if wait.replicas == 0 {
                return command
                    .query_async::<Value>(&mut connection)
                    .await
                    .map_err(|err| classify(&err));
            }
            let timeout_ms = u64::try_from(wait.timeout.as_millis()).unwrap_or(u64::MAX);
            let mut pipeline = ::redis::pipe();
            pipeline
                .add_command(command)
                .cmd("WAIT")
                .arg(wait.replicas)
                .arg(timeout_ms);
            let (reply, confirmed): (Value, i64) = pipeline
                .query_async(&mut connection)
                .await
                .map_err(|err| classify(&err))?;
            if confirmed < i64::from(wait.replicas) {
                return Err(StoreError::NotReplicated {
                    reason: "not confirmed by a replica",
                    detail: format!(
                        "WAIT {} {timeout_ms}: {confirmed} replica(s) confirmed the write",
                        wait.replicas
                    ),
                });
            }
            Ok(reply)
        })
        .await
    }

    /// Sends a read-only command.
    async fn read<T: ::redis::FromRedisValue>(&self, command: Cmd) -> Result<T, StoreError> {
        self.call(Lane::Shared, |mut connection| async move {
            command
                .query_async(&mut connection)
                .await
                .map_err(|err| classify(&err))
        })
        .await
    }
}

/// Whether a failure says the server we call may not be the primary any more (or not
/// reachable as one), so the Sentinels should be asked again.
fn may_have_moved(err: &StoreError) -> bool {
    match err {
        StoreError::Unavailable { .. }
        | StoreError::Timeout(_)
        | StoreError::NotReplicated { .. } => true,
        StoreError::Failed { reason, .. } => *reason == READ_ONLY,
        StoreError::ConditionFailed { .. } | StoreError::Full => false,
    }
}

/// An `EVAL` of `script` with its keys and arguments.
fn eval(script: &str, keys: &[&str]) -> Cmd {
    let mut command = ::redis::cmd("EVAL");
    command.arg(script).arg(keys.len()).arg(keys);
    command
}

/// How soon a failed discovery may be tried again: until then calls fail at once with its
/// reason, so an outage costs each request microseconds, not a round of questions.
const REDISCOVERY_DELAY: Duration = Duration::from_millis(200);

/// How long a primary just found is kept even if a call fails: a burst of failures from calls
/// made before it was found must not send every request back to the Sentinels.
const MIN_PRIMARY_AGE: Duration = Duration::from_millis(100);

/// The Sentinels, and the primary they named last.
struct Sentinels {
    master_name: String,
    /// Each Sentinel's `host:port` and a managed connection to it.
    sentinels: Vec<(String, ConnectionManager)>,
    timeout: Duration,
    known: Mutex<Known>,
    /// The primary last found, kept across failures so the log names each new primary once.
    last_found: Mutex<Option<String>>,
    /// Held while asking the Sentinels: one discovery at a time, the others wait for its answer.
    discovering: tokio::sync::Mutex<()>,
}

/// What this replica knows of the primary.
enum Known {
    Nothing,
    Found(Arc<Primary>),
    /// The last discovery failed, at this time, with this error.
    Failed {
        at: Instant,
        reason: &'static str,
        detail: String,
    },
}

/// A primary the Sentinels named and that said it is one.
struct Primary {
    address: String,
    /// Dropped with the primary when it is forgotten: no call goes to it after that.
    connections: Connections,
    found_at: Instant,
}

/// What one Sentinel said.
enum Answer {
    Names(String),
    DoesNotKnow,
    Unreachable(String),
}

impl Sentinels {
    fn new(
        addresses: &[String],
        master_name: &str,
        timeout: Duration,
    ) -> Result<Self, InvalidRedisUrl> {
        if addresses.is_empty() {
            return Err(InvalidRedisUrl("no Sentinel address".to_owned()));
        }
        let sentinels = addresses
            .iter()
            .map(|address| {
                let client = Client::open(format!("redis://{address}"))
                    .map_err(|err| InvalidRedisUrl(format!("Sentinel {address}: {err}")))?;
                let connection = managed(client, timeout)
                    .map_err(|err| InvalidRedisUrl(format!("Sentinel {address}: {err}")))?;
                Ok((address.clone(), connection))
            })
            .collect::<Result<_, InvalidRedisUrl>>()?;
        Ok(Self {
            master_name: master_name.to_owned(),
            sentinels,
            timeout,
            known: Mutex::new(Known::Nothing),
            last_found: Mutex::new(None),
            discovering: tokio::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Known> {
        // Every critical section assigns or clones whole values: a poisoned lock still guards
        // a consistent state.
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What is known already, if it settles the call: the primary, or a discovery that failed
    /// a moment ago.
    fn settled(&self) -> Option<Result<Arc<Primary>, StoreError>> {
        match &*self.lock() {
            Known::Found(primary) => Some(Ok(primary.clone())),
            Known::Failed { at, reason, detail } if at.elapsed() < REDISCOVERY_DELAY => {
                Some(Err(StoreError::Unavailable {
                    reason,
                    detail: detail.clone(),
                }))
            }
            Known::Failed { .. } | Known::Nothing => None,
        }
    }

    /// The primary, asking the Sentinels when it is not known.
    async fn primary(&self) -> Result<Arc<Primary>, StoreError> {
        if let Some(settled) = self.settled() {
            return settled;
        }
        let _one_at_a_time = self.discovering.lock().await;
        // Another call may have found it while this one waited.
        if let Some(settled) = self.settled() {
            return settled;
        }
        match self.discover().await {
            Ok(primary) => {
                let primary = Arc::new(primary);
                let mut last_found = self
                    .last_found
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if last_found.as_deref() != Some(primary.address.as_str()) {
                    tracing::info!(
                        primary = primary.address,
                        previous = last_found.as_deref(),
                        master_name = self.master_name,
                        "store: the Sentinels name this primary"
                    );
                    *last_found = Some(primary.address.clone());
                }
                drop(last_found);
                *self.lock() = Known::Found(primary.clone());
                Ok(primary)
            }
            Err((reason, detail)) => {
                *self.lock() = Known::Failed {
                    at: Instant::now(),
                    reason,
                    detail: detail.clone(),
                };
                Err(StoreError::Unavailable { reason, detail })
            }
        }
    }

    /// Forgets `primary` (if it is still the one known), so the next call asks the Sentinels.
    fn forget(&self, primary: &Arc<Primary>) {
        if primary.found_at.elapsed() < MIN_PRIMARY_AGE {
            return;
        }
        let mut known = self.lock();
        if let Known::Found(current) = &*known
            && Arc::ptr_eq(current, primary)
        {
            *known = Known::Nothing;
        }
    }

    /// Asks every Sentinel at once; the address a majority of them name, once that server
    /// says it is a primary.
    async fn discover(&self) -> Result<Primary, (&'static str, String)> {
        let majority = self.sentinels.len() / 2 + 1;
        let mut asking: FuturesUnordered<_> = self
            .sentinels
            .iter()
            .map(|(address, connection)| self.ask(address, connection.clone()))
            .collect();
        let mut said: Vec<(String, Answer)> = Vec::new();
        let mut chosen = None;
        while let Some(answer) = asking.next().await {
            said.push(answer);
            let named = |address: &str| {
                said.iter()
                    .filter(|(_, answer)| matches!(answer, Answer::Names(a) if a == address))
                    .count()
            };
            if let Some((_, Answer::Names(address))) = said.last()
                && named(address) >= majority
            {
                chosen = Some(address.clone());
                break;
            }
        }
        drop(asking);
        let detail = || {
            said.iter()
                .map(|(sentinel, answer)| match answer {
                    Answer::Names(address) => format!("{sentinel} names {address}"),
                    Answer::DoesNotKnow => format!("{sentinel} knows no such master"),
                    Answer::Unreachable(err) => format!("{sentinel}: {err}"),
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        let Some(address) = chosen else {
            let mut named: Vec<&str> = said
                .iter()
                .filter_map(|(_, answer)| match answer {
                    Answer::Names(address) => Some(address.as_str()),
                    _ => None,
                })
                .collect();
            named.sort_unstable();
            named.dedup();
            let reachable = said
                .iter()
                .filter(|(_, answer)| !matches!(answer, Answer::Unreachable(_)))
                .count();
            let reason = if named.len() > 1 {
                "sentinels disagree"
            } else if reachable == 0 {
                "sentinel unreachable"
            } else if named.is_empty() {
                "unknown master name"
            } else {
                "too few sentinels answer"
            };
            return Err((reason, format!("master {}: {}", self.master_name, detail())));
        };
        let client = Client::open(format!("redis://{address}"))
            .map_err(|err| ("unexpected reply", format!("{address}: {err}")))?;
        let connections = Connections::new(&client, self.timeout)
            .map_err(|err| ("unreachable", err.to_string()))?;
        let role: Vec<Value> = ::redis::cmd("ROLE")
            .query_async(&mut connections.get(Lane::Shared))
            .await
            .map_err(|err| match classify(&err) {
                StoreError::Unavailable { reason, detail } => {
                    (reason, format!("primary {address}: {detail}"))
                }
                other => ("unexpected reply", format!("primary {address}: {other}")),
            })?;
        match role.first() {
            Some(Value::BulkString(role)) if role == b"master" => Ok(Primary {
                address,
                connections,
                found_at: Instant::now(),
            }),
            other => Err((
                "named primary is not one",
                format!("{address}, named by the Sentinels, says it is {other:?}"),
            )),
        }
    }

    /// One Sentinel's answer to `SENTINEL get-master-addr-by-name`.
    async fn ask(&self, sentinel: &str, mut connection: ConnectionManager) -> (String, Answer) {
        let reply: Result<Option<(String, u16)>, RedisError> = ::redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master_name)
            .query_async(&mut connection)
            .await;
        let answer = match reply {
            Ok(Some((host, port))) if host.contains(':') => {
                Answer::Names(format!("[{host}]:{port}"))
            }
            Ok(Some((host, port))) => Answer::Names(format!("{host}:{port}")),
            Ok(None) => Answer::DoesNotKnow,
            Err(err) => Answer::Unreachable(err.to_string()),
        };
        (sentinel.to_owned(), answer)
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

/// What a replica says to a write; the primary is elsewhere.
const READ_ONLY: &str = "read-only replica";

/// A failed call as the routes see it: the cause in a few words a client may read, and Redis's
/// own message (which may name hosts) for the log. A Redis that cannot be reached or used at
/// all is [`StoreError::Unavailable`]; one that refused this call is [`StoreError::Failed`];
/// a write refused for want of a replica in sync is [`StoreError::NotReplicated`].
fn classify(err: &RedisError) -> StoreError {
    let detail = err.to_string();
    let outage = |reason| StoreError::Unavailable {
        reason,
        detail: detail.clone(),
    };
    let refusal = |reason| StoreError::Failed {
        reason,
        detail: detail.clone(),
    };
    if err.is_timeout() {
        return StoreError::Timeout(Duration::ZERO);
    }
    // A pipeline's error carries the code of the command that failed (the write, before WAIT).
    let code = err.code().map(str::to_owned).or_else(|| {
        let failed = err.clone().into_server_errors()?;
        failed.first().map(|(_, failed)| failed.code().to_owned())
    });
    let code = code.as_deref();
    // Over `maxmemory` with `noeviction`, Redis refuses what would grow its data (from a script
    // too, before it wrote anything) and keeps serving reads and deletes.
    if code == Some("OOM") {
        return StoreError::Full;
    }
    if err.is_connection_refusal() {
        return outage("connection refused");
    }
    if err.is_connection_dropped() {
        return outage("connection lost");
    }
    if err.is_io_error() {
        // Name resolution and routing failures: in Swarm, a service with no running task has
        // no address at all.
        return outage("unreachable");
    }
    match (err.kind(), code) {
        (ErrorKind::AuthenticationFailed, _) | (_, Some("NOAUTH" | "WRONGPASS")) => {
            outage("authentication failed")
        }
        (ErrorKind::Server(ServerErrorKind::BusyLoading), _) => outage("loading its data"),
        (ErrorKind::Server(ServerErrorKind::ReadOnly), _) => refusal(READ_ONLY),
        // `min-replicas-to-write`: the primary sees too few replicas in sync to take a write.
        (_, Some("NOREPLICAS")) => StoreError::NotReplicated {
            reason: "no replica in sync",
            detail: detail.clone(),
        },
        (_, Some("MISCONF")) => refusal("cannot persist writes"),
        _ => refusal("store error"),
    }
}

/// A script's reply that breaks its own contract: Redis is not the one we talk to, or a key was
/// written by something else.
fn malformed(what: &str, reply: &[Value]) -> StoreError {
    StoreError::Failed {
        reason: "unexpected reply",
        detail: format!("unexpected reply to {what}: {reply:?}"),
    }
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
            let mut command = ::redis::cmd("HMGET");
            command.arg(kv_key(key)).arg("v").arg("ver");
            let (value, version): (Option<Vec<u8>>, Option<Version>) = self.read(command).await?;
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
            let (mode, expected) = mode(condition);
            let mut command = eval(PUT, &[&kv_key(key), &sequence_key()]);
            command.arg(mode).arg(expected).arg(value.as_ref());
            let reply = replies("put", self.write(command).await?)?;
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
            let (mode, expected) = mode(condition);
            let mut command = eval(DELETE, &[&kv_key(key)]);
            command.arg(mode).arg(expected);
            let reply = replies("delete", self.write(command).await?)?;
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
            let mut command = ::redis::cmd("GET");
            command.arg(counter_key(counter));
            let value: Option<i64> = self.read(command).await?;
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
            let Some(idempotency_key) = idempotency_key else {
                // A plain INCR is already atomic; no script needed.
                let mut command = ::redis::cmd("INCR");
                command.arg(counter_key(counter));
                let reply = self.write(command).await?;
                return match number::<i64>(&reply) {
                    Some(value) => Ok(Increment {
                        value,
                        replayed: false,
                    }),
                    None => Err(malformed("increment", std::slice::from_ref(&reply))),
                };
            };
            let mut command = eval(
                INCREMENT_ONCE,
                &[&counter_key(counter), &record_key(counter, idempotency_key)],
            );
            command.arg(IDEMPOTENCY_RETENTION.as_secs());
            let reply = replies("increment", self.write(command).await?)?;
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

    /// `PING`; when writes must be confirmed, a confirmed write instead, so the ping also tells
    /// whether writes reach a replica.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            if self.wait.replicas == 0 {
                let _: String = self.read(::redis::cmd("PING")).await?;
            } else {
                let mut command = ::redis::cmd("SET");
                command.arg(format!("{KEY_PREFIX}probe")).arg(1);
                self.write(command).await?;
            }
            Ok(())
        }
        .boxed()
    }
}

/// A script's reply as the list of values it returns.
fn replies(what: &str, reply: Value) -> Result<Vec<Value>, StoreError> {
    match reply {
        Value::Array(values) => Ok(values),
        other => Err(malformed(what, std::slice::from_ref(&other))),
    }
}
