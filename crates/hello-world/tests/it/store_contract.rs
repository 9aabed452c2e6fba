//! The store contract, run against both implementations: the in-memory store and a real Redis.
//!
//! Every check is written once against `Arc<dyn Store>`; the `contract!` macro instantiates it
//! per backend, so a behaviour the routes rely on cannot hold for one store and not the other.
//! Redis-only behaviour (passwords, restarts, timeouts, expiry records) follows at the end.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hello_world::store::memory::MemoryStore;
use hello_world::store::redis::{KEY_PREFIX, RedisStore};
use hello_world::store::{
    Condition, IDEMPOTENCY_RETENTION, Increment, Store, StoreError, Version, Written,
};

use crate::redis_server::{Persistence, RedisServer};

/// A per-call timeout generous enough for a loaded test machine.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A store under test, with whatever keeps its backend alive.
struct Backend {
    store: Arc<dyn Store>,
    _server: Option<RedisServer>,
}

/// Room for everything the contract writes.
const MEMORY_BUDGET: usize = 64 << 20;

fn memory() -> Backend {
    Backend {
        store: Arc::new(MemoryStore::new(MEMORY_BUDGET)),
        _server: None,
    }
}

fn redis() -> Backend {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), TIMEOUT).expect("a valid Redis URL");
    Backend {
        store: Arc::new(store),
        _server: Some(server),
    }
}

macro_rules! contract {
    ($($check:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    let backend = super::memory();
                    super::$check(backend.store.clone()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    let backend = super::redis();
                    super::$check(backend.store.clone()).await;
                }
            )*
        }
    };
}

contract!(
    an_absent_key_reads_as_none,
    put_creates_then_replaces_with_a_newer_version,
    versions_come_from_one_sequence_and_never_repeat,
    if_version_writes_only_over_that_version,
    if_exists_writes_only_over_a_present_key,
    if_absent_creates_only,
    delete_honours_its_condition,
    empty_and_binary_values_round_trip,
    counters_start_at_zero_and_count_by_name,
    a_keyed_increment_counts_once_and_replays_its_first_result,
    concurrent_increments_are_all_counted_once,
    concurrent_retries_of_one_key_count_once,
    concurrent_compare_and_set_loops_lose_no_update,
    ping_answers,
);

fn bytes(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

async fn put(store: &dyn Store, key: &str, value: &str, condition: Condition) -> Written {
    store
        .put(key, bytes(value), condition)
        .await
        .expect("the put succeeds")
}

fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, StoreError>,
    expected_current: Option<Version>,
) {
    match result {
        Err(StoreError::ConditionFailed { current }) => assert_eq!(current, expected_current),
        other => {
            panic!("expected ConditionFailed {{ current: {expected_current:?} }}, got {other:?}")
        }
    }
}

async fn an_absent_key_reads_as_none(store: Arc<dyn Store>) {
    assert_eq!(store.get("missing").await.expect("get"), None);
}

async fn put_creates_then_replaces_with_a_newer_version(store: Arc<dyn Store>) {
    let first = put(&*store, "k", "one", Condition::Always).await;
    assert!(first.created);
    let entry = store
        .get("k")
        .await
        .expect("get")
        .expect("present after put");
    assert_eq!(entry.value, bytes("one"));
    assert_eq!(entry.version, first.version);

    let second = put(&*store, "k", "two", Condition::Always).await;
    assert!(!second.created);
    assert!(second.version > first.version);
    let entry = store
        .get("k")
        .await
        .expect("get")
        .expect("present after put");
    assert_eq!(entry.value, bytes("two"));
    assert_eq!(entry.version, second.version);
}

async fn versions_come_from_one_sequence_and_never_repeat(store: Arc<dyn Store>) {
    let a1 = put(&*store, "a", "x", Condition::Always).await.version;
    let b1 = put(&*store, "b", "x", Condition::Always).await.version;
    assert!(
        b1 > a1,
        "a write to another key still advances the sequence"
    );
    assert!(store.delete("a", Condition::Always).await.expect("delete"));
    let a2 = put(&*store, "a", "x", Condition::Always).await;
    assert!(a2.created);
    assert!(
        a2.version > b1,
        "a re-created key never gets an old ETag back"
    );
    // An ETag taken before the delete must not match the re-created key.
    assert_refused(
        store.put("a", bytes("y"), Condition::IfVersion(a1)).await,
        Some(a2.version),
    );
}

async fn if_version_writes_only_over_that_version(store: Arc<dyn Store>) {
    assert_refused(
        store.put("k", bytes("v"), Condition::IfVersion(1)).await,
        None,
    );
    assert_eq!(
        store.get("k").await.expect("get"),
        None,
        "a refused put writes nothing"
    );

    let v1 = put(&*store, "k", "one", Condition::Always).await.version;
    let v2 = put(&*store, "k", "two", Condition::IfVersion(v1)).await;
    assert!(!v2.created);
    assert!(v2.version > v1);

    assert_refused(
        store
            .put("k", bytes("stale"), Condition::IfVersion(v1))
            .await,
        Some(v2.version),
    );
    let entry = store.get("k").await.expect("get").expect("present");
    assert_eq!(
        entry.value,
        bytes("two"),
        "a refused put leaves the value alone"
    );
    assert_eq!(entry.version, v2.version);
}

async fn if_exists_writes_only_over_a_present_key(store: Arc<dyn Store>) {
    assert_refused(store.put("k", bytes("v"), Condition::IfExists).await, None);
    assert_eq!(store.get("k").await.expect("get"), None);
    let v1 = put(&*store, "k", "one", Condition::Always).await.version;
    let v2 = put(&*store, "k", "two", Condition::IfExists).await;
    assert!(v2.version > v1);
    assert!(!v2.created);
}

async fn if_absent_creates_only(store: Arc<dyn Store>) {
    let created = put(&*store, "k", "one", Condition::IfAbsent).await;
    assert!(created.created);
    assert_refused(
        store.put("k", bytes("two"), Condition::IfAbsent).await,
        Some(created.version),
    );
    let entry = store.get("k").await.expect("get").expect("present");
    assert_eq!(entry.value, bytes("one"));
}

async fn delete_honours_its_condition(store: Arc<dyn Store>) {
    assert!(
        !store
            .delete("k", Condition::Always)
            .await
            .expect("deleting an absent key")
    );
    assert!(
        !store
            .delete("k", Condition::IfAbsent)
            .await
            .expect("absent is allowed")
    );
    assert_refused(store.delete("k", Condition::IfExists).await, None);
    assert_refused(store.delete("k", Condition::IfVersion(1)).await, None);

    let v1 = put(&*store, "k", "one", Condition::Always).await.version;
    let v2 = put(&*store, "k", "two", Condition::Always).await.version;
    assert_refused(store.delete("k", Condition::IfVersion(v1)).await, Some(v2));
    assert_refused(store.delete("k", Condition::IfAbsent).await, Some(v2));
    assert!(
        store.get("k").await.expect("get").is_some(),
        "a refused delete keeps the key"
    );

    assert!(
        store
            .delete("k", Condition::IfVersion(v2))
            .await
            .expect("matching delete")
    );
    assert_eq!(store.get("k").await.expect("get"), None);

    put(&*store, "k", "three", Condition::Always).await;
    assert!(
        store
            .delete("k", Condition::IfExists)
            .await
            .expect("delete of a present key")
    );
    put(&*store, "k", "four", Condition::Always).await;
    assert!(
        store
            .delete("k", Condition::Always)
            .await
            .expect("unconditional delete")
    );
    assert_eq!(store.get("k").await.expect("get"), None);
}

async fn empty_and_binary_values_round_trip(store: Arc<dyn Store>) {
    let binary: Bytes = (0..=255u8)
        .chain((0..=255u8).rev())
        .collect::<Vec<_>>()
        .into();
    store
        .put("bin", binary.clone(), Condition::Always)
        .await
        .expect("put binary");
    assert_eq!(
        store.get("bin").await.expect("get").expect("present").value,
        binary
    );

    store
        .put("empty", Bytes::new(), Condition::Always)
        .await
        .expect("put empty");
    let entry = store
        .get("empty")
        .await
        .expect("get")
        .expect("an empty value is still a value");
    assert!(entry.value.is_empty());

    let large = Bytes::from(vec![b'x'; 1024 * 1024]);
    store
        .put("large", large.clone(), Condition::Always)
        .await
        .expect("put 1 MiB");
    assert_eq!(
        store
            .get("large")
            .await
            .expect("get")
            .expect("present")
            .value,
        large
    );
}

async fn counters_start_at_zero_and_count_by_name(store: Arc<dyn Store>) {
    assert_eq!(store.counter("hits").await.expect("counter"), 0);
    for expected in 1..=3 {
        let step = store.increment("hits", None).await.expect("increment");
        assert_eq!(
            step,
            Increment {
                value: expected,
                replayed: false
            }
        );
    }
    assert_eq!(store.counter("hits").await.expect("counter"), 3);
    assert_eq!(
        store.counter("other").await.expect("counter"),
        0,
        "counters are independent"
    );
    assert_eq!(
        store
            .increment("other", None)
            .await
            .expect("increment")
            .value,
        1
    );
}

async fn a_keyed_increment_counts_once_and_replays_its_first_result(store: Arc<dyn Store>) {
    let first = store
        .increment("c", Some("req-1"))
        .await
        .expect("increment");
    assert_eq!(
        first,
        Increment {
            value: 1,
            replayed: false
        }
    );
    let retry = store.increment("c", Some("req-1")).await.expect("retry");
    assert_eq!(
        retry,
        Increment {
            value: 1,
            replayed: true
        }
    );
    assert_eq!(
        store.counter("c").await.expect("counter"),
        1,
        "a retry does not count"
    );

    // Other increments move the counter on; the retry still returns the first result.
    assert_eq!(
        store
            .increment("c", Some("req-2"))
            .await
            .expect("increment")
            .value,
        2
    );
    assert_eq!(
        store.increment("c", None).await.expect("increment").value,
        3
    );
    let late_retry = store.increment("c", Some("req-1")).await.expect("retry");
    assert_eq!(
        late_retry,
        Increment {
            value: 1,
            replayed: true
        }
    );

    // The same key on another counter is another request.
    let elsewhere = store
        .increment("d", Some("req-1"))
        .await
        .expect("increment");
    assert_eq!(
        elsewhere,
        Increment {
            value: 1,
            replayed: false
        }
    );
    assert_eq!(store.counter("c").await.expect("counter"), 3);
}

async fn concurrent_increments_are_all_counted_once(store: Arc<dyn Store>) {
    const TASKS: usize = 50;
    const EACH: usize = 40;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::with_capacity(EACH);
            for i in 0..EACH {
                // Half the tasks use idempotency keys, so both paths race each other.
                let key = (task % 2 == 0).then(|| format!("t{task}-{i}"));
                let step = store
                    .increment("c", key.as_deref())
                    .await
                    .expect("increment");
                assert!(!step.replayed, "every key is fresh");
                seen.push(step.value);
            }
            seen
        }));
    }
    let mut values = HashSet::new();
    for task in tasks {
        for value in task.await.expect("the task finishes") {
            assert!(values.insert(value), "value {value} was handed out twice");
        }
    }
    let total = i64::try_from(TASKS * EACH).expect("small");
    assert_eq!(values, (1..=total).collect::<HashSet<_>>());
    assert_eq!(store.counter("c").await.expect("counter"), total);
}

async fn concurrent_retries_of_one_key_count_once(store: Arc<dyn Store>) {
    store.increment("c", None).await.expect("increment");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.increment("c", Some("same")).await.expect("increment")
        }));
    }
    let mut firsts = 0;
    for task in tasks {
        let step = task.await.expect("the task finishes");
        assert_eq!(step.value, 2, "every retry sees the first result");
        firsts += usize::from(!step.replayed);
    }
    assert_eq!(firsts, 1, "exactly one of the racing requests counted");
    assert_eq!(store.counter("c").await.expect("counter"), 2);
}

async fn concurrent_compare_and_set_loops_lose_no_update(store: Arc<dyn Store>) {
    const LOOPS: u64 = 8;
    const EACH: u64 = 25;
    let mut tasks = Vec::new();
    for _ in 0..LOOPS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for _ in 0..EACH {
                // Read-modify-write until our write lands on the version we read; bounded so a
                // broken store fails the test instead of spinning.
                let mut landed = false;
                for _ in 0..10_000 {
                    let (current, condition) = match store.get("n").await.expect("get") {
                        Some(entry) => {
                            let text = std::str::from_utf8(&entry.value).expect("utf-8");
                            (
                                text.parse::<u64>().expect("a number"),
                                Condition::IfVersion(entry.version),
                            )
                        }
                        None => (0, Condition::IfAbsent),
                    };
                    let next = Bytes::from((current + 1).to_string());
                    match store.put("n", next, condition).await {
                        Ok(_) => {
                            landed = true;
                            break;
                        }
                        Err(StoreError::ConditionFailed { .. }) => conflicts += 1,
                        Err(other) => panic!("unexpected store error: {other}"),
                    }
                    tokio::task::yield_now().await;
                }
                assert!(landed, "a compare-and-set loop never landed");
            }
            conflicts
        }));
    }
    for task in tasks {
        task.await.expect("the task finishes");
    }
    let entry = store.get("n").await.expect("get").expect("present");
    assert_eq!(entry.value, Bytes::from((LOOPS * EACH).to_string()));
}

async fn ping_answers(store: Arc<dyn Store>) {
    store.ping().await.expect("ping");
    assert!(["memory", "redis"].contains(&store.kind()));
}

// Redis-only behaviour.

#[test]
fn a_malformed_redis_url_is_refused_without_echoing_it() {
    let err = RedisStore::connect("http://:secret@host", TIMEOUT).expect_err("not a redis URL");
    assert!(
        !err.to_string().contains("secret"),
        "the error leaks the password: {err}"
    );
}

#[tokio::test]
async fn a_password_in_the_url_authenticates() {
    let server = RedisServer::start_with(Some("s3cret-pass"), Persistence::None);
    let store = RedisStore::connect(&server.url(), TIMEOUT).expect("a valid URL");
    store.ping().await.expect("ping with the right password");
    assert_eq!(
        store.increment("c", None).await.expect("increment").value,
        1
    );
    assert!(
        !format!("{store:?}").contains("s3cret-pass"),
        "Debug leaks the password"
    );

    let wrong_url = format!("redis://:wrong@127.0.0.1:{}", server.port());
    let wrong = RedisStore::connect(&wrong_url, TIMEOUT).expect("a valid URL");
    match wrong.ping().await {
        Err(err) => assert_eq!(
            err.unavailable_reason(),
            Some("authentication failed"),
            "{err}"
        ),
        other => panic!("a wrong password must not reach Redis, got {other:?}"),
    }
    let anonymous = RedisStore::connect(&format!("redis://127.0.0.1:{}", server.port()), TIMEOUT)
        .expect("a valid URL");
    match anonymous.increment("c", None).await {
        Err(err) => assert_eq!(
            err.unavailable_reason(),
            Some("authentication failed"),
            "{err}"
        ),
        other => panic!("no password, no access; got {other:?}"),
    }
}

#[tokio::test]
async fn every_key_lives_under_the_prefix_and_records_expire() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), TIMEOUT).expect("a valid URL");
    store
        .put("k", bytes("v"), Condition::Always)
        .await
        .expect("put");
    store.increment("c", None).await.expect("increment");
    store.increment("c", Some("req")).await.expect("increment");

    let mut raw = server.connection();
    let keys: Vec<String> = ::redis::cmd("KEYS").arg("*").query(&mut raw).expect("KEYS");
    assert!(!keys.is_empty());
    for key in &keys {
        assert!(key.starts_with(KEY_PREFIX), "{key} is outside {KEY_PREFIX}");
    }
    let record = keys
        .iter()
        .find(|key| key.contains("req"))
        .expect("the idempotency record");
    let ttl: i64 = ::redis::cmd("TTL")
        .arg(record)
        .query(&mut raw)
        .expect("TTL");
    let retention = i64::try_from(IDEMPOTENCY_RETENTION.as_secs()).expect("small");
    assert!(
        (retention - 60..=retention).contains(&ttl),
        "TTL {ttl}, retention {retention}"
    );
    for key in keys.iter().filter(|key| *key != record) {
        let ttl: i64 = ::redis::cmd("TTL").arg(key).query(&mut raw).expect("TTL");
        assert_eq!(ttl, -1, "{key} must not expire");
    }
}

#[tokio::test]
async fn a_redis_that_is_down_at_start_is_found_when_it_comes_up() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();

    let store = RedisStore::connect(&url, Duration::from_millis(500)).expect("no connection yet");
    match store.ping().await {
        Err(err) => assert_eq!(
            err.unavailable_reason(),
            Some("connection refused"),
            "nothing listens on the port: {err}"
        ),
        other => panic!("ping with Redis down must fail, got {other:?}"),
    }
    assert!(store.increment("c", None).await.is_err());

    server.restart();
    wait_until_ping(&store).await;
    assert_eq!(
        store.increment("c", None).await.expect("increment").value,
        1
    );
}

#[tokio::test]
async fn a_restarted_redis_is_reconnected_and_keeps_acknowledged_writes() {
    let mut server = RedisServer::start_with(None, Persistence::AppendOnlyAlways);
    let store = RedisStore::connect(&server.url(), Duration::from_millis(500)).expect("valid");
    for _ in 0..10 {
        store
            .increment("c", Some(&fastrand::u64(..).to_string()))
            .await
            .expect("increment");
    }
    let written = store
        .put("k", bytes("v"), Condition::Always)
        .await
        .expect("put");

    server.kill();
    assert!(store.increment("c", None).await.is_err(), "Redis is gone");
    assert!(store.ping().await.is_err());

    server.restart();
    wait_until_ping(&store).await;
    assert_eq!(
        store.counter("c").await.expect("counter"),
        10,
        "every acknowledged increment"
    );
    let entry = store.get("k").await.expect("get").expect("present");
    assert_eq!(entry.version, written.version);
    // Scripts are gone from the restarted server's cache; the store loads them again.
    let step = store
        .increment("c", Some("after"))
        .await
        .expect("keyed increment");
    assert_eq!(
        step,
        Increment {
            value: 11,
            replayed: false
        }
    );
    let next = store
        .put("k", bytes("w"), Condition::IfVersion(written.version))
        .await;
    assert!(
        next.expect("conditional put").version > written.version,
        "the sequence survived"
    );
}

#[tokio::test]
async fn a_frozen_redis_makes_calls_time_out_instead_of_hanging() {
    let server = RedisServer::start();
    let timeout = Duration::from_millis(300);
    let store = RedisStore::connect(&server.url(), timeout).expect("valid");
    store.ping().await.expect("ping");

    server.signal("STOP");
    // The outer bound is only a guard against a hang; the store must give up on its own.
    let outcome = tokio::time::timeout(Duration::from_secs(30), store.increment("c", None)).await;
    server.signal("CONT");
    match outcome {
        Ok(Err(StoreError::Timeout(after))) => assert_eq!(after, timeout),
        Ok(Err(StoreError::Unavailable { reason, detail })) => {
            // The connection's own response timeout may fire first; it is the same bound.
            assert!(
                detail.to_lowercase().contains("time"),
                "unexpected cause: {reason}: {detail}"
            );
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    wait_until_ping(&store).await;
}

/// A full store, either kind: a write that needs room is refused and leaves nothing, reads
/// still work, and deletes still work and make room for the next write.
async fn a_full_store_refuses_writes_and_deleting_makes_room(store: &dyn Store) {
    let value = Bytes::from(vec![b'v'; 256 << 10]);
    let mut written = Vec::new();
    let refused = loop {
        assert!(
            written.len() < 1000,
            "1000 writes of 256 KiB: the store never filled up"
        );
        let key = format!("fill-{}", written.len());
        match store.put(&key, value.clone(), Condition::Always).await {
            Ok(Written { version, .. }) => written.push((key, version)),
            Err(StoreError::Full) => break key,
            Err(other) => panic!("a write to a filling store failed otherwise: {other}"),
        }
    };
    assert!(written.len() > 1, "the store was full from the start");
    assert_eq!(
        store.get(&refused).await.expect("reads work when full"),
        None,
        "the refused write left nothing"
    );
    let (first, version) = &written[0];
    let entry = store
        .get(first)
        .await
        .expect("reads work when full")
        .expect("a stored value stays");
    assert_eq!((entry.version, entry.value.len()), (*version, value.len()));
    let conflict = store.put(first, value.clone(), Condition::IfAbsent).await;
    assert!(
        matches!(
            conflict,
            Err(StoreError::ConditionFailed { .. } | StoreError::Full)
        ),
        "{conflict:?}"
    );
    for (key, _) in written.iter().take(4) {
        assert!(
            store
                .delete(key, Condition::Always)
                .await
                .expect("deletes work when full"),
            "{key} was there"
        );
    }
    let again = store
        .put(&refused, value, Condition::Always)
        .await
        .expect("the deleted values made room");
    assert!(again.created);
}

#[tokio::test]
async fn a_full_memory_store_refuses_writes_and_deleting_makes_room() {
    let store = MemoryStore::new(4 << 20);
    a_full_store_refuses_writes_and_deleting_makes_room(&store).await;
}

#[tokio::test]
async fn a_redis_at_its_maxmemory_refuses_writes_and_deleting_makes_room() {
    let server = RedisServer::start_with_maxmemory("8mb");
    let store = RedisStore::connect(&server.url(), TIMEOUT).expect("a valid URL");
    a_full_store_refuses_writes_and_deleting_makes_room(&store).await;
    // Redis refused the writes for memory, and evicted nothing to take them.
    let mut raw = server.connection();
    let info: String = ::redis::cmd("INFO")
        .arg("stats")
        .query(&mut raw)
        .expect("INFO");
    assert!(info.contains("evicted_keys:0"), "{info}");
}

/// Polls `ping` until it succeeds, as the readiness loop does; fails after 15 s.
async fn wait_until_ping(store: &RedisStore) {
    let mut last = None;
    for _ in 0..150 {
        match store.ping().await {
            Ok(()) => return,
            Err(err) => last = Some(err),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the store never reconnected; last error: {last:?}");
}
