//! Shared state across real server processes: two `hello-world` binaries share one Redis, as
//! replicas behind a load balancer do, and a Redis that dies, freezes or comes back under a
//! running server, which stays ready throughout: a store outage is not a service outage.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Answer, Ask, Process};
use crate::redis_server::{Persistence, RedisServer};

/// A replica of the service sharing `redis`, ready to serve state.
fn replica(redis: &RedisServer, extra: &[&str]) -> Process {
    let url = redis.url();
    let mut args = vec!["--redis-url", url.as_str()];
    args.extend_from_slice(extra);
    Process::serve(&args, &[])
}

pub(crate) async fn call(
    process: &Process,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    Ask::new(method, &process.url(path))
        .headers(headers)
        .body(Bytes::from(body.to_owned()))
        .await
}

/// Polls `/readyz` until its body says the store is `state` (`reachable`, `unreachable`); fails
/// after 15 s. `/readyz` itself must answer 200 all along: the store is shared, so its outage is
/// no reason for a replica to leave the rotation.
async fn wait_store(process: &Process, state: &str) -> Answer {
    wait_store_status(process, |status| status["state"] == state).await
}

/// Polls `/readyz` until its `store_status` satisfies `wanted`, as [`wait_store`] does.
pub(crate) async fn wait_store_status(
    process: &Process,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = call(process, Method::GET, "/readyz", &[], "").await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "the replica left the rotation: {}",
            answer.text()
        );
        if wanted(&answer.json()["store_status"]) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "the store stayed {}",
            answer.json()["store_status"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many of the process's log lines (JSON, one per line) have this message.
pub(crate) fn logged(process: &Process, message: &str) -> usize {
    process
        .logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["message"] == message)
        .count()
}

/// The state routes while the store cannot serve them: 503 JSON naming the cause, with
/// `Retry-After`, each answered within `bound`.
pub(crate) async fn assert_state_routes_unavailable(
    process: &Process,
    reason: &str,
    bound: Duration,
) {
    for (method, path) in [
        (Method::GET, "/api/counter"),
        (Method::POST, "/api/counter/increment"),
        (Method::GET, "/api/kv/kept"),
        (Method::PUT, "/api/kv/kept"),
        (Method::DELETE, "/api/kv/kept"),
    ] {
        let asked = Instant::now();
        let answer = call(process, method.clone(), path, &[], "v").await;
        let took = asked.elapsed();
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {path}: {}",
            answer.text()
        );
        assert_eq!(answer.header("content-type"), "application/json");
        assert_eq!(answer.header("retry-after"), "1", "{method} {path}");
        let body = answer.json();
        assert_eq!(body["error"], "store unavailable", "{method} {path}");
        assert_eq!(body["reason"], reason, "{method} {path}: {body}");
        assert!(
            took < bound,
            "{method} {path} took {took:?}, not within {bound:?}"
        );
    }
}

/// What needs no store answers as usual.
pub(crate) async fn assert_the_rest_serves(process: &Process) {
    let root = call(process, Method::GET, "/", &[], "").await;
    assert_eq!(
        (root.status, root.text().as_str()),
        (StatusCode::OK, "Hello World!")
    );
    for path in ["/healthz", "/readyz", "/api/info", "/version", "/headers"] {
        let answer = call(process, Method::GET, path, &[], "").await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.text());
    }
    let echo = call(process, Method::POST, "/api/echo", &[], "still here").await;
    assert_eq!(echo.text(), "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_concurrent_increments_through_two_replicas_are_counted_exactly() {
    const TASKS: usize = 40;
    const EACH: usize = 50;
    let redis = RedisServer::start();
    let replicas = Arc::new([replica(&redis, &[]), replica(&redis, &[])]);
    for process in replicas.iter() {
        wait_store(process, "reachable").await;
    }

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let replicas = replicas.clone();
        tasks.push(tokio::spawn(async move {
            let mut values = Vec::with_capacity(EACH);
            for i in 0..EACH {
                let process = &replicas[(task + i) % 2];
                let answer = call(process, Method::POST, "/api/counter/increment", &[], "").await;
                assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
                values.push(answer.json()["value"].as_i64().expect("a number"));
            }
            values
        }));
    }
    let mut seen = HashSet::new();
    for task in tasks {
        for value in task.await.expect("the task finishes") {
            assert!(seen.insert(value), "value {value} was handed out twice");
        }
    }
    let total = i64::try_from(TASKS * EACH).expect("small");
    assert_eq!(
        seen,
        (1..=total).collect::<HashSet<_>>(),
        "no increment lost, none doubled"
    );
    for process in replicas.iter() {
        let answer = call(process, Method::GET, "/api/counter", &[], "").await;
        assert_eq!(answer.json(), json!({"value": total}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_through_the_other_replica_after_the_first_died_counts_once() {
    let redis = RedisServer::start();
    let mut first = replica(&redis, &[]);
    let second = replica(&redis, &[]);
    wait_store(&first, "reachable").await;
    wait_store(&second, "reachable").await;

    call(&second, Method::POST, "/api/counter/increment", &[], "").await;
    let key = [("idempotency-key", "payment-0001")];
    let answered = call(&first, Method::POST, "/api/counter/increment", &key, "").await;
    assert_eq!(answered.json(), json!({"value": 2}));
    // The replica dies; the client, unsure its request landed, retries through the other one.
    first.child.kill().expect("kill the first replica");
    first.child.wait().expect("reap it");

    let retry = call(&second, Method::POST, "/api/counter/increment", &key, "").await;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(retry.json(), json!({"value": 2}));
    assert_eq!(retry.header("idempotent-replayed"), "true");
    let now = call(&second, Method::GET, "/api/counter", &[], "").await;
    assert_eq!(now.json(), json!({"value": 2}), "the retry counted nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_compare_and_set_loops_over_two_replicas_lose_no_update() {
    const LOOPS: usize = 8;
    const EACH: u64 = 25;
    let redis = RedisServer::start();
    let replicas = Arc::new([replica(&redis, &[]), replica(&redis, &[])]);
    for process in replicas.iter() {
        wait_store(process, "reachable").await;
    }

    let mut tasks = Vec::new();
    for task in 0..LOOPS {
        let replicas = replicas.clone();
        tasks.push(tokio::spawn(async move {
            let mut attempts = 0usize;
            for _ in 0..EACH {
                loop {
                    attempts += 1;
                    assert!(attempts < 20_000, "a compare-and-set loop never landed");
                    // Read through one replica, write through the other.
                    let reader = &replicas[(task + attempts) % 2];
                    let writer = &replicas[(task + attempts + 1) % 2];
                    let read = call(reader, Method::GET, "/api/kv/total", &[], "").await;
                    let (current, condition) = match read.status {
                        StatusCode::OK => {
                            let n: u64 = read.text().parse().expect("a number");
                            (n, ("if-match", read.header("etag").to_owned()))
                        }
                        StatusCode::NOT_FOUND => (0, ("if-none-match", "*".to_owned())),
                        other => panic!("GET answered {other}: {}", read.text()),
                    };
                    let next = (current + 1).to_string();
                    let write = call(
                        writer,
                        Method::PUT,
                        "/api/kv/total",
                        &[(condition.0, condition.1.as_str())],
                        &next,
                    )
                    .await;
                    match write.status {
                        StatusCode::OK | StatusCode::CREATED => break,
                        StatusCode::PRECONDITION_FAILED => continue,
                        other => panic!("PUT answered {other}: {}", write.text()),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("the loop finishes");
    }
    let expected = (LOOPS as u64 * EACH).to_string();
    for process in replicas.iter() {
        let read = call(process, Method::GET, "/api/kv/total", &[], "").await;
        assert_eq!(
            read.text(),
            expected,
            "every read-modify-write landed exactly once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_if_match_through_another_replica_gets_412() {
    let redis = RedisServer::start();
    let a = replica(&redis, &[]);
    let b = replica(&redis, &[]);
    wait_store(&a, "reachable").await;
    wait_store(&b, "reachable").await;

    let v1 = call(&a, Method::PUT, "/api/kv/doc", &[], "one")
        .await
        .header("etag")
        .to_owned();
    let read = call(&b, Method::GET, "/api/kv/doc", &[], "").await;
    assert_eq!(read.header("etag"), v1, "both replicas see one ETag");
    let v2 = call(&b, Method::PUT, "/api/kv/doc", &[("if-match", &v1)], "two").await;
    assert_eq!(v2.status, StatusCode::OK);
    let v2 = v2.header("etag").to_owned();

    let stale = call(&a, Method::PUT, "/api/kv/doc", &[("if-match", &v1)], "lost").await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.json()["current_etag"], v2.as_str());
    assert_eq!(
        call(&a, Method::GET, "/api/kv/doc", &[], "").await.text(),
        "two"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_under_a_running_server_is_a_503_window_on_state_routes_only() {
    let mut redis = RedisServer::start_with(None, Persistence::AppendOnlyAlways);
    let server = replica(&redis, &["--store-timeout", "500ms"]);
    wait_store(&server, "reachable").await;
    for _ in 0..5 {
        let answer = call(&server, Method::POST, "/api/counter/increment", &[], "").await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    call(&server, Method::PUT, "/api/kv/kept", &[], "kept").await;

    redis.kill();
    // The open connection is lost first; every attempt to make a new one is refused.
    let readyz = wait_store_status(&server, |status| {
        status["state"] == "unreachable" && status["reason"] == "connection refused"
    })
    .await;
    assert_eq!(readyz.json()["status"], "ready");
    assert_eq!(readyz.json()["store"], "redis");
    // Refused connections fail at once; the bound is the store timeout, with room for a
    // loaded machine.
    assert_state_routes_unavailable(&server, "connection refused", Duration::from_secs(5)).await;
    assert_the_rest_serves(&server).await;
    let info = call(&server, Method::GET, "/api/info", &[], "")
        .await
        .json();
    assert_eq!(info["store_status"]["state"], "unreachable", "{info}");
    let metrics = Ask::new(
        Method::GET,
        &format!("http://127.0.0.1:{}/metrics", server.admin_port),
    )
    .await
    .text();
    assert!(metrics.contains("\nstore_up 0\n"), "{metrics}");
    // Every failed request and every ping failed too; the log says it once.
    assert_eq!(
        logged(
            &server,
            "store unreachable: state routes answer 503 until it answers again"
        ),
        1
    );

    redis.restart();
    wait_store(&server, "reachable").await;
    assert_eq!(logged(&server, "store reachable again"), 1);
    let counter = call(&server, Method::GET, "/api/counter", &[], "").await;
    assert_eq!(
        counter.json(),
        json!({"value": 5}),
        "every acknowledged increment survived"
    );
    let next = call(&server, Method::POST, "/api/counter/increment", &[], "").await;
    assert_eq!(next.json(), json!({"value": 6}));
    assert_eq!(
        call(&server, Method::GET, "/api/kv/kept", &[], "")
            .await
            .text(),
        "kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_costs_state_routes_the_store_timeout_and_nothing_else() {
    let redis = RedisServer::start();
    let timeout = Duration::from_millis(500);
    let server = replica(&redis, &["--store-timeout", "500ms"]);
    wait_store(&server, "reachable").await;

    // SIGSTOP keeps Redis's sockets open and answers nothing: calls wait out the timeout.
    redis.signal("STOP");
    wait_store(&server, "unreachable").await;
    assert_state_routes_unavailable(&server, "timed out", timeout + Duration::from_secs(3)).await;
    assert_the_rest_serves(&server).await;

    redis.signal("CONT");
    wait_store(&server, "reachable").await;
    let answer = call(&server, Method::POST, "/api/counter/increment", &[], "").await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_redis_is_down_at_start_serves_and_finds_it_when_it_appears() {
    let mut redis = RedisServer::start();
    redis.kill();
    // Process::serve returns once /healthz answers: the server started without its store.
    let server = replica(&redis, &["--store-timeout", "500ms"]);
    let readyz = wait_store(&server, "unreachable").await;
    assert_eq!(readyz.json()["status"], "ready");
    let counter = call(&server, Method::GET, "/api/counter", &[], "").await;
    assert_eq!(counter.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_the_rest_serves(&server).await;

    redis.restart();
    wait_store(&server, "reachable").await;
    let answer = call(&server, Method::POST, "/api/counter/increment", &[], "").await;
    assert_eq!(answer.json(), json!({"value": 1}));
}
