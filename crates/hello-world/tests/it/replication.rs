//! Redis replicated under Sentinel, as the stack and the cluster run it: a primary, replicas and
//! Sentinels as real processes on loopback, and `hello-world` binaries that find the primary
//! through the Sentinels (`--redis-sentinel`), follow a failover without a restart, acknowledge a
//! write only once a replica confirmed it, and stay ready while the Sentinels are wrong, missing
//! or at odds, naming the cause in every refused answer.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Answer, Ask, Process, free_port};
use crate::redis_server::RedisServer;
use crate::shared_state::{
    assert_state_routes_unavailable, assert_the_rest_serves, call, logged, wait_store_status,
};

const MASTER: &str = "hello-world";

/// What every Redis of the set runs with, as the stack's do: a primary refuses writes when no
/// replica is in sync (replicas ignore it until promoted).
const REDIS_ARGS: &[&str] = &[
    "--min-replicas-to-write",
    "1",
    "--min-replicas-max-lag",
    "2",
];

/// A primary, its replicas, and Sentinels watching them.
struct Replicated {
    primary: RedisServer,
    replicas: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

impl Replicated {
    /// Starts the set and waits (bounded) until every replica is in sync and every Sentinel
    /// knows every replica, so a failover can happen.
    fn start(replicas: usize, sentinels: usize, quorum: u32) -> Self {
        let primary = RedisServer::start_with_args(REDIS_ARGS);
        let primary_port = primary.port().to_string();
        let replicas: Vec<RedisServer> = (0..replicas)
            .map(|_| {
                let mut args = REDIS_ARGS.to_vec();
                args.extend(["--replicaof", "127.0.0.1", primary_port.as_str()]);
                RedisServer::start_with_args(&args)
            })
            .collect();
        let sentinels = (0..sentinels)
            .map(|_| RedisServer::start_sentinel(MASTER, primary.port(), quorum))
            .collect();
        let set = Self {
            primary,
            replicas,
            sentinels,
        };
        set.wait_until(|set| {
            // Counted by the primary once each replica acknowledged: until then it refuses
            // writes (min-replicas-to-write).
            let in_sync = info_field(&set.primary, "replication", "min_slaves_good_slaves");
            in_sync.as_deref() == Some(set.replicas.len().to_string().as_str())
                && set.sentinels.iter().all(|sentinel| {
                    let known: Vec<redis::Value> = redis::cmd("SENTINEL")
                        .arg("replicas")
                        .arg(MASTER)
                        .query(&mut sentinel.connection())
                        .unwrap_or_default();
                    known.len() == set.replicas.len()
                })
        });
        set
    }

    /// `--redis-sentinel` for these Sentinels.
    fn sentinel_list(&self) -> String {
        self.sentinels
            .iter()
            .map(|sentinel| format!("127.0.0.1:{}", sentinel.port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A `hello-world serve` on this set's Sentinels.
    fn serve(&self, extra: &[&str]) -> Process {
        let sentinels = self.sentinel_list();
        let mut args = vec!["--redis-sentinel", sentinels.as_str()];
        args.extend_from_slice(extra);
        Process::serve(&args, &[])
    }

    /// The port the Sentinels name as the primary now.
    fn named_primary(&self) -> Option<u16> {
        let named: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(MASTER)
            .query(&mut self.sentinels[0].connection())
            .ok()?;
        named.map(|(_, port)| port)
    }

    /// Every server of the set, primary first.
    fn servers(&self) -> impl Iterator<Item = &RedisServer> {
        std::iter::once(&self.primary).chain(&self.replicas)
    }

    /// The server on `port`.
    fn server(&self, port: u16) -> &RedisServer {
        self.servers()
            .find(|server| server.port() == port)
            .expect("a server of the set")
    }

    fn wait_until(&self, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(self) {
            assert!(Instant::now() < deadline, "the Redis set did not settle");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One field of `INFO <section>`, or None when the server does not answer.
fn info_field(server: &RedisServer, section: &str, field: &str) -> Option<String> {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query(&mut server.connection())
        .ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .map(|value| value.trim().to_owned())
}

/// The counter as `server` holds it.
fn counter_on(server: &RedisServer) -> Option<i64> {
    redis::cmd("GET")
        .arg("hello-world:counter:hits")
        .query(&mut server.connection())
        .ok()
        .flatten()
}

/// A counted metric's value on the process's admin port (0 when the series is absent).
async fn metric(process: &Process, series: &str) -> f64 {
    let url = format!("http://127.0.0.1:{}/metrics", process.admin_port);
    let text = Ask::new(Method::GET, &url).await.text();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Calls until the answer is not a 503, as a client told `Retry-After` would: a server that
/// lost its primary answers state routes 503 until it has found the new one. Within 30 s.
async fn until_answered(
    process: &Process,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = call(process, method.clone(), path, headers, "").await;
        if answer.status != StatusCode::SERVICE_UNAVAILABLE {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "{method} {path} still answered 503 after 30 s: {}",
            answer.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A keyed increment, retried with its key until acknowledged; the value it was given.
async fn increment_until_acknowledged(process: &Process, key: &str) -> i64 {
    let answer = until_answered(
        process,
        Method::POST,
        "/api/counter/increment",
        &[("idempotency-key", key)],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{key}: {}", answer.text());
    answer.json()["value"].as_i64().expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_to_the_primary_the_sentinels_name_and_reach_a_replica_before_the_answer() {
    let set = Replicated::start(2, 3, 2);
    let server = set.serve(&[]);
    wait_store_status(&server, |status| status["state"] == "reachable").await;

    for n in 1..=20 {
        let answer = call(&server, Method::POST, "/api/counter/increment", &[], "").await;
        assert_eq!(answer.json(), json!({"value": n}), "{}", answer.text());
        // WAIT 1: when the answer came, at least one replica had the write.
        let on_replicas: Vec<Option<i64>> = set.replicas.iter().map(counter_on).collect();
        assert!(
            on_replicas.contains(&Some(n)),
            "increment {n} acknowledged before any replica had it: {on_replicas:?}"
        );
    }
    let put = call(&server, Method::PUT, "/api/kv/greeting", &[], "hello").await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.text());
    let got = call(&server, Method::GET, "/api/kv/greeting", &[], "").await;
    assert_eq!(got.text(), "hello");
    let info = call(&server, Method::GET, "/api/info", &[], "")
        .await
        .json();
    assert_eq!(info["store"], "redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_primary_killed_during_keyed_increments_loses_none_and_counts_each_once() {
    const WORKERS: usize = 4;
    const EACH: usize = 40;
    let set = Replicated::start(2, 3, 2);
    let servers = Arc::new([set.serve(&[]), set.serve(&[])]);
    for server in servers.iter() {
        wait_store_status(server, |status| status["state"] == "reachable").await;
    }
    let first_primary = set.named_primary().expect("a primary is named");

    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let servers = servers.clone();
            tokio::spawn(async move {
                let mut values = Vec::new();
                for i in 0..EACH {
                    let server = &servers[(worker + i) % 2];
                    let key = format!("w{worker}-i{i}");
                    values.push(increment_until_acknowledged(server, &key).await);
                }
                values
            })
        })
        .collect();
    // A quarter in, the primary dies as its machine would: no goodbye to anyone.
    set.wait_until(|set| counter_on(&set.primary).unwrap_or(0) >= (WORKERS * EACH / 4) as i64);
    let mut set = set;
    set.primary.kill();

    let mut acknowledged = HashSet::new();
    for worker in workers {
        for value in worker.await.expect("the worker finishes") {
            assert!(
                acknowledged.insert(value),
                "value {value} acknowledged twice"
            );
        }
    }
    let total = (WORKERS * EACH) as i64;
    assert_eq!(
        acknowledged,
        (1..=total).collect::<HashSet<_>>(),
        "every acknowledged increment survived the failover, none counted twice"
    );
    // The Sentinel that led the failover tells the others in its next hello (every 2 s): the
    // one asked here may still name the old primary for a moment after the servers moved on.
    set.wait_until(|set| {
        set.named_primary()
            .is_some_and(|port| port != first_primary)
    });
    let new_primary = set.named_primary().expect("a primary is named");
    assert_eq!(counter_on(set.server(new_primary)), Some(total));
    for server in servers.iter() {
        // A server may answer a state route 503 a moment longer while it settles on the new
        // primary, as during any store outage: a client retries, as `Retry-After` tells it.
        let counted = until_answered(server, Method::GET, "/api/counter", &[]).await;
        assert_eq!(counted.json(), json!({"value": total}));
        let ready = call(server, Method::GET, "/readyz", &[], "").await;
        assert_eq!(ready.status, StatusCode::OK, "never left the rotation");
        assert_eq!(logged(server, "store: the Sentinels name this primary"), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_primary_is_left_for_the_new_one_without_a_restart() {
    let set = Replicated::start(2, 1, 1);
    let server = set.serve(&[]);
    wait_store_status(&server, |status| status["state"] == "reachable").await;
    assert_eq!(
        increment_until_acknowledged(&server, "before").await,
        1,
        "the first increment"
    );
    let first_primary = set.named_primary().expect("a primary is named");
    // WAIT 1 promises the write to one replica; a forced failover may promote the other, which
    // may not have read it yet. This test is about the demoted primary, so both have it first.
    set.wait_until(|set| set.replicas.iter().all(|r| counter_on(r) == Some(1)));

    // A planned switch: the Sentinel makes a replica the primary and the old one its replica,
    // which then answers writes with READONLY.
    let _: String = redis::cmd("SENTINEL")
        .arg("failover")
        .arg(MASTER)
        .query(&mut set.sentinels[0].connection())
        .expect("SENTINEL FAILOVER");
    set.wait_until(|set| {
        set.named_primary()
            .is_some_and(|port| port != first_primary)
            && info_field(&set.primary, "replication", "role").as_deref() == Some("slave")
    });

    assert_eq!(increment_until_acknowledged(&server, "after").await, 2);
    let new_primary = set.named_primary().expect("a primary is named");
    assert_eq!(counter_on(set.server(new_primary)), Some(2));
    assert_eq!(
        info_field(&set.primary, "replication", "role").as_deref(),
        Some("slave"),
        "the old primary is a replica now, and took no write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_that_lag_make_writes_503_while_reads_and_everything_else_serve() {
    let set = Replicated::start(1, 1, 1);
    let server = set.serve(&[]);
    wait_store_status(&server, |status| status["state"] == "reachable").await;
    let put = call(&server, Method::PUT, "/api/kv/kept", &[], "v1").await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.text());

    let degraded = "store writes not confirmed by a replica: writes answer 503 until they are";
    let (degraded_before, confirmed_before) = (
        logged(&server, degraded),
        logged(&server, "store writes confirmed again"),
    );
    // The replica freezes: the primary still answers, but no write can be confirmed.
    set.replicas[0].signal("STOP");
    let mut reasons = HashSet::new();
    for _ in 0..5 {
        let asked = Instant::now();
        let write = call(&server, Method::PUT, "/api/kv/kept", &[], "v2").await;
        assert_eq!(
            write.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            write.text()
        );
        assert_eq!(write.header("retry-after"), "1");
        reasons.insert(write.json()["reason"].as_str().unwrap_or("").to_owned());
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "within the store timeout"
        );
        let read = call(&server, Method::GET, "/api/kv/kept", &[], "").await;
        assert_eq!(read.status, StatusCode::OK, "reads still work");
    }
    assert!(
        reasons
            .iter()
            .all(|reason| reason == "not confirmed by a replica" || reason == "no replica in sync"),
        "{reasons:?}"
    );
    let status = wait_store_status(&server, |status| status["state"] == "degraded").await;
    assert!(status.json()["store_status"]["reason"].is_string());
    assert_the_rest_serves(&server).await;
    // The primary recounts its replicas in sync once a second. A write it took on the count from
    // before the freeze, still waiting when the replica came back, would be confirmed, and the
    // next write refused by the recount made before the replica's acknowledgement was read: the
    // replica comes back once the primary counts none in sync and no write waits.
    set.wait_until(|set| {
        info_field(&set.primary, "replication", "min_slaves_good_slaves").as_deref() == Some("0")
            && info_field(&set.primary, "clients", "blocked_clients").as_deref() == Some("0")
    });

    set.replicas[0].signal("CONT");
    wait_store_status(&server, |status| status["state"] == "reachable").await;
    let write = call(&server, Method::PUT, "/api/kv/kept", &[], "v3").await;
    assert_eq!(write.status, StatusCode::OK, "{}", write.text());
    assert_eq!(
        logged(&server, degraded) - degraded_before,
        1,
        "once per change, not per request"
    );
    assert_eq!(
        logged(&server, "store writes confirmed again") - confirmed_before,
        1
    );
    assert!(
        metric(
            &server,
            "store_unavailable_total{reason=\"not confirmed by a replica\"}"
        )
        .await
            + metric(
                &server,
                "store_unavailable_total{reason=\"no replica in sync\"}"
            )
            .await
            >= 5.0
    );
}

/// With the replica frozen, `WRITES` increments wait for it at once, each on its own connection
/// (Redis serves nothing else from a connection blocked in `WAIT`, so on one connection they
/// would wait one after the other), and reads answer while they wait. `server` confirms writes
/// with one replica of `set`, within a wait longer than this takes.
async fn assert_writes_wait_side_by_side_and_reads_never_wait(set: &Replicated, server: &Process) {
    const WRITES: usize = 8;
    wait_store_status(server, |status| status["state"] == "reachable").await;
    assert_eq!(increment_until_acknowledged(server, "before").await, 1);
    let put = call(server, Method::PUT, "/api/kv/kept", &[], "v1").await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.text());

    set.replicas[0].signal("STOP");
    let writes: Vec<_> = (0..WRITES)
        .map(|_| {
            let url = server.url("/api/counter/increment");
            tokio::spawn(async move { Ask::new(Method::POST, &url).await })
        })
        .collect();
    // The primary counts a client blocked in WAIT among its blocked clients.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut waiting = 0;
    while waiting < WRITES {
        waiting = info_field(&set.primary, "clients", "blocked_clients")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counter = call(server, Method::GET, "/api/counter", &[], "").await;
    let kept = call(server, Method::GET, "/api/kv/kept", &[], "").await;
    let answered_while_waiting = writes.iter().all(|write| !write.is_finished());
    set.replicas[0].signal("CONT");
    assert!(
        waiting >= WRITES,
        "only {waiting} of {WRITES} writes waited for the replica at once"
    );
    assert_eq!(counter.status, StatusCode::OK, "{}", counter.text());
    assert_eq!(kept.text(), "v1");
    assert!(
        answered_while_waiting,
        "reads answered only after a write waiting for the replica"
    );

    let mut values = HashSet::new();
    for write in writes {
        let answer = write.await.expect("the write finishes");
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        values.insert(answer.json()["value"].as_i64().expect("a number"));
    }
    assert_eq!(values, (2..=1 + WRITES as i64).collect::<HashSet<_>>());
    assert_eq!(counter_on(&set.replicas[0]), Some(1 + WRITES as i64));
}

/// Long enough for the writes of [`assert_writes_wait_side_by_side_and_reads_never_wait`] to
/// wait out the frozen replica.
const PATIENT: &[&str] = &["--redis-wait-timeout", "8s", "--store-timeout", "10s"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_sentinels_writes_wait_for_the_replica_side_by_side_and_reads_never_wait() {
    let set = Replicated::start(1, 1, 1);
    let server = set.serve(PATIENT);
    assert_writes_wait_side_by_side_and_reads_never_wait(&set, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_url_writes_wait_for_the_replica_side_by_side_and_reads_never_wait() {
    let set = Replicated::start(1, 0, 1);
    let mut args = vec![
        "--redis-url".to_owned(),
        set.primary.url(),
        "--redis-wait-replicas".to_owned(),
        "1".to_owned(),
    ];
    args.extend(PATIENT.iter().map(|arg| (*arg).to_owned()));
    let server = Process::serve(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert_writes_wait_side_by_side_and_reads_never_wait(&set, &server).await;
}

/// A server on bad Sentinel settings: it starts, stays ready, and every state route answers 503
/// naming `reason`, which it logs once and counts.
async fn assert_refused_for(server: &Process, reason: &str) {
    wait_store_status(server, |status| status["reason"] == reason).await;
    assert_state_routes_unavailable(server, reason, Duration::from_secs(2)).await;
    assert_state_routes_unavailable(server, reason, Duration::from_secs(2)).await;
    assert_the_rest_serves(server).await;
    assert_eq!(
        logged(
            server,
            "store unreachable: state routes answer 503 until it answers again"
        ),
        1,
        "logged once, not per request"
    );
    let counted = metric(
        server,
        &format!("store_unavailable_total{{reason=\"{reason}\"}}"),
    )
    .await;
    assert!(counted >= 10.0, "{reason}: counted {counted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_sentinel_address_is_named_in_every_refused_answer() {
    let nobody = format!("127.0.0.1:{}", free_port());
    let server = Process::serve(&["--redis-sentinel", &nobody], &[]);
    assert_refused_for(&server, "sentinel unreachable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_master_name_is_named_in_every_refused_answer() {
    let set = Replicated::start(1, 1, 1);
    let server = set.serve(&["--redis-master-name", "not-monitored"]);
    assert_refused_for(&server, "unknown master name").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_that_name_different_primaries_are_not_followed() {
    // Two Sentinels, each sure of a different primary under the same name: no majority.
    let one = RedisServer::start_with_args(&[]);
    let other = RedisServer::start_with_args(&[]);
    let first = RedisServer::start_sentinel(MASTER, one.port(), 1);
    let second = RedisServer::start_sentinel(MASTER, other.port(), 1);
    let sentinels = format!("127.0.0.1:{},127.0.0.1:{}", first.port(), second.port());
    let server = Process::serve(
        &["--redis-sentinel", &sentinels, "--redis-wait-replicas", "0"],
        &[],
    );
    assert_refused_for(&server, "sentinels disagree").await;
    let written: Option<String> = redis::cmd("GET")
        .arg("hello-world:kv:kept")
        .query(&mut one.connection())
        .expect("GET");
    assert_eq!(written, None, "neither primary was written to");
}
